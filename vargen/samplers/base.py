"""Sampling core shared by every sampler: randomness per row, outputs and statistics.

The configuration (:class:`~vargen.config.SamplingConfig`) and the logits chain (:mod:`vargen.distributions`)
live in leaf modules that models and kernels use too; they are re-exported here, where samplers import them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import SamplingConfig
from ..distributions import cfg_mix, filter_logits, logits_to_probs, sample_from_probs

__all__ = [
    "SamplingConfig",
    "Stats",
    "GenerationOutput",
    "cfg_mix",
    "filter_logits",
    "logits_to_probs",
    "sample_from_probs",
    "RowRandom",
    "StepTimer",
]


class RowRandom:
    """All randomness of a sampling call, drawn per row.

    ``generator`` is one ``torch.Generator`` (draws for the whole batch at once), a list with one
    generator per row (each row then gets exactly the numbers it would get alone, whatever the other
    rows do), or ``None`` (the global RNG). Every draw returns a ``[B, *shape]`` float64 tensor.
    """

    def __init__(self, generator, batch: int, device: torch.device | str):
        self.batch = batch
        self.device = torch.device(device)
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch:
                raise ValueError(f"got {len(generator)} generators for a batch of {batch} rows")
            self.per_row = list(generator)
            self.shared = None
        else:
            self.per_row = None
            self.shared = generator

    def rand(self, *shape: int) -> torch.Tensor:
        if self.per_row is None:
            gen = self.shared
            dev = gen.device if gen is not None else self.device
            return torch.rand(self.batch, *shape, generator=gen, device=dev, dtype=torch.float64).to(self.device)
        rows = [torch.rand(*shape, generator=g, device=g.device, dtype=torch.float64) for g in self.per_row]
        return torch.stack(rows).to(self.device)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """Uniform integers in ``[0, high)`` from the same per-row streams."""
        return (self.rand(*shape) * high).long().clamp_(max=high - 1)


# ----------------------------------------------------------------------------------------------
# Outputs and statistics
# ----------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """What every sampler reports; the CLI, app, benchmarks and FID scripts read this one object.

    forward_passes: target-model forward calls (prefill included).
    draft_forward_passes: forward calls of a drafter (draft model or head), counted separately.
    tokens: tokens generated per row ([B] tensor) -- or per image for non-token models.
    accepted: per step, a [B] tensor of tokens committed by that step (0 for finished rows).
    token_step: [B, L], the index of the forward pass that committed each token (acceptance map).
    relaxed: [B, L] bool, tokens accepted by a relaxed rule that the exact rule would have rejected
        in that draw (LANTERN / GSD), when the rule reports it.
    tv_bound: [B] float64, per row the sum over the slots a lossy rule decided of the total-variation
        distance between the law of the token the slot committed and the exact ``p``: a bound on the
        TV distance between the sampler's image distribution and the exact one (None for exact rules).
    seconds / peak_memory_bytes: wall time and peak accelerator memory of the sampling call.
    extra: sampler-specific counters (acceptance rates, passes per model, ...).
    """

    forward_passes: int = 0
    draft_forward_passes: int = 0
    tokens: torch.Tensor | None = None
    accepted: list[torch.Tensor] = field(default_factory=list)
    token_step: torch.Tensor | None = None
    relaxed: torch.Tensor | None = None
    tv_bound: torch.Tensor | None = None
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_forward(self) -> float:
        """Mean tokens per row divided by target forward passes (prefill included)."""
        if self.tokens is None or self.forward_passes == 0:
            return 0.0
        return float(self.tokens.float().mean()) / self.forward_passes

    @property
    def mean_accepted(self) -> float:
        """Mean tokens committed per decoding step, over rows still generating at that step."""
        if not self.accepted:
            return 0.0
        acc = torch.stack([a.float().cpu() for a in self.accepted])
        active = acc > 0
        return float(acc[active].mean()) if active.any() else 0.0

    @property
    def mean_tv_bound(self) -> float:
        """Mean over rows of the per-row TV bound (independent of the batch size); NaN for exact rules."""
        return float(self.tv_bound.double().mean()) if self.tv_bound is not None else float("nan")

    def summary(self) -> dict[str, Any]:
        out = {
            "forward_passes": self.forward_passes,
            "draft_forward_passes": self.draft_forward_passes,
            "tokens_per_row": float(self.tokens.float().mean()) if self.tokens is not None else 0.0,
            "tokens_per_forward": round(self.tokens_per_forward, 4),
            "mean_accepted": round(self.mean_accepted, 4),
            "seconds": round(self.seconds, 4),
            "peak_memory_bytes": int(self.peak_memory_bytes),
        }
        if self.tv_bound is not None:
            out["mean_tv_bound"] = self.mean_tv_bound
        for k, v in self.extra.items():
            out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
        return out


@dataclass
class GenerationOutput:
    """``tokens``: [B, L] in generation order (raster for LlamaGen; [B, L, C] continuous for MAR);
    ``latents``: what the tokenizer decodes, when the sampler computed it (VAR's final ``f_hat``, which with
    ``more_smooth`` is not a function of the tokens; MAR's tokens); ``images``: PIL images when decoded (for
    video, one film strip of the frames per sample); ``videos``: per sample, its frames as PIL images (video
    pipelines); ``context``: the condition's tokens that precede ``tokens`` in the clip (video continuation:
    the context frames), set by video pipelines."""

    tokens: torch.Tensor
    stats: Stats
    images: list | None = None
    latents: torch.Tensor | None = None
    videos: list | None = None
    context: torch.Tensor | None = None


def synced_clock(device) -> float:
    """``time.perf_counter()`` after the device has finished its queued work (CUDA is asynchronous)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StepTimer:
    """Measures wall time and peak memory of a sampling call (synchronising the device at the ends)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def __enter__(self) -> "StepTimer":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = 0
        self.seconds = time.perf_counter() - self.start
