"""Sampling core shared by every sampler: randomness per row, outputs and statistics.

The configuration (:class:`~vargen.config.SamplingConfig`) and the logits chain (:mod:`vargen.distributions`)
live in leaf modules that models and kernels use too; they are re-exported here, where samplers import them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..config import SamplingConfig
from ..distributions import cfg_mix, filter_logits, logits_to_probs, sample_from_probs
from .stats import Stats

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
# Outputs (the statistics, :class:`~vargen.samplers.stats.Stats`, have their own module)
# ----------------------------------------------------------------------------------------------


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
            self.peak = None  # not measured off CUDA: unknown, not 0
        self.seconds = time.perf_counter() - self.start
