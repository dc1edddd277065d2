"""A procedural video data set for the video demo: coloured discs and rotating squares that bounce off the
walls of a 32x32 frame over a background gradient. Every clip is a pure function of its generator, so the
"data set" is the generator and nothing is downloaded or stored.
"""
from __future__ import annotations

import math

import torch

__all__ = ["bouncing_shapes"]


def _bounce(p0: torch.Tensor, v: torch.Tensor, t: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Position at times ``t`` of a point moving at ``v`` from ``p0`` and reflecting off ``lo`` and ``hi``
    (a triangle wave of period ``2 (hi - lo)``)."""
    span = hi - lo
    u = torch.remainder(p0 - lo + v * t, 2 * span)
    return lo + span - (u - span).abs()


def bouncing_shapes(n: int, generator: torch.Generator, frames: int = 17, size: int = 32,
                    max_shapes: int = 3) -> torch.Tensor:
    """``n`` clips ``[n, 3, frames, size, size]`` in [-1, 1]: 1..``max_shapes`` shapes (disc or square, a
    square spinning at its own rate) with random colours, radii 3..7 px and speeds up to 2 px per frame,
    drawn back to front with soft (one-pixel) edges."""
    g = generator
    rand = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    t = torch.arange(frames, dtype=torch.float32)[None, None, :]  # [1, 1, T]
    top, bottom = rand(n, 3, 1, 1, 1) * 0.6 - 0.9, rand(n, 3, 1, 1, 1) * 0.6 - 0.9
    ramp = torch.linspace(0, 1, size)[None, None, None, :, None]
    video = (top + (bottom - top) * ramp).expand(n, 3, frames, size, size).clone()
    count = torch.randint(1, max_shapes + 1, (n,), generator=g)
    S = max_shapes
    radius = 3 + 4 * rand(n, S, 1)
    lo, hi = radius, size - 1 - radius
    speed, heading = 2 * rand(n, S, 1), 2 * math.pi * rand(n, S, 1)
    cx = _bounce(lo + (hi - lo) * rand(n, S, 1), speed * torch.cos(heading), t, lo, hi)  # [n, S, T]
    cy = _bounce(lo + (hi - lo) * rand(n, S, 1), speed * torch.sin(heading), t, lo, hi)
    angle = 2 * math.pi * rand(n, S, 1) + (rand(n, S, 1) - 0.5) * 0.6 * t
    square = rand(n, S) < 0.5
    colour = rand(n, S, 3) * 2 - 1
    colour = colour / colour.abs().amax(-1, keepdim=True).clamp_min(1e-3)  # saturated: one channel at +-1
    ys = torch.arange(size, dtype=torch.float32)[:, None]
    xs = torch.arange(size, dtype=torch.float32)[None, :]
    for j in range(S):
        dx = xs - cx[:, j, :, None, None]  # [n, T, H, W]
        dy = ys - cy[:, j, :, None, None]
        c, s = torch.cos(angle[:, j, :, None, None]), torch.sin(angle[:, j, :, None, None])
        box = torch.maximum((c * dx + s * dy).abs(), (c * dy - s * dx).abs())
        dist = torch.where(square[:, j, None, None, None], box, torch.sqrt(dx * dx + dy * dy))
        alpha = (radius[:, j, :, None, None] - dist + 0.5).clamp(0, 1) * (j < count)[:, None, None, None]
        video = video + alpha[:, None] * (colour[:, j, :, None, None, None] - video)
    return video.clamp(-1, 1)
