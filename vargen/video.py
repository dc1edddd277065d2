"""Video for the video pipelines: files (animated GIF through Pillow, always; mp4 through torchvision's PyAV writer,
when PyAV is installed), context frames read from image / GIF files, and the procedural clips of the video demo
(:func:`bouncing_shapes`), both its training data and the conditions of its pipeline."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence

__all__ = ["save_gif", "save_mp4", "mp4_available", "read_context", "bouncing_shapes"]


def save_gif(frames: list[Image.Image], path: str | Path, fps: float = 8.0) -> None:
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)


def mp4_available() -> bool:
    try:
        import av  # noqa: F401
        import torchvision.io  # noqa: F401
    except ImportError:
        return False
    return True


def save_mp4(frames: list[Image.Image], path: str | Path, fps: float = 8.0) -> None:
    """H.264 through torchvision (PyAV); :func:`mp4_available` tells whether it can run."""
    import numpy as np
    from torchvision.io import write_video

    video = torch.from_numpy(np.stack([np.asarray(f.convert("RGB")) for f in frames]))
    write_video(str(path), video, fps=fps)


def read_context(path: str | Path, max_frames: int, size: tuple[int, int]) -> torch.Tensor:
    """Frames of an image or animated GIF as ``[3, f, H, W]`` in [-1, 1] (at most ``max_frames``), each resized
    (shorter side) and centre-cropped to ``size = (H, W)``, as the official pipeline prepares its input."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"context file not found: {path}")
    try:
        image = Image.open(path)
        frames = [f.convert("RGB") for f in ImageSequence.Iterator(image)][:max_frames]
    except OSError as err:
        raise ValueError(f"{path}: not an image or GIF Pillow can read ({err})") from None
    H, W = size
    out = []
    for f in frames:
        scale = max(H / f.height, W / f.width)
        f = f.resize((max(W, round(f.width * scale)), max(H, round(f.height * scale))), Image.BICUBIC)
        left, top = (f.width - W) // 2, (f.height - H) // 2
        f = f.crop((left, top, left + W, top + H))
        out.append(torch.from_numpy(np.asarray(f, dtype=np.float32).copy()))
    return (torch.stack(out).permute(3, 0, 1, 2) / 127.5 - 1).clamp(-1, 1)


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
    drawn back to front with soft (one-pixel) edges, over a background gradient. A pure function of ``generator``:
    the data set is this function, nothing is downloaded or stored."""
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
