"""Sampling core shared by every sampler: configuration, the logits chain, outputs and statistics.

The logits chain is applied once, in this order, to produce the *final* probabilities every sampler
(and every acceptance rule) works with:

    CFG mix (raw logits)  ->  / temperature  ->  top-k  ->  top-p  ->  softmax

This matches LlamaGen's ``sample``/``logits_to_probs`` (research/llamagen.md §2.3-2.4). Residuals of
speculative rules are plain arithmetic on these final probabilities; the chain is never re-applied to
a residual (research/sjd_gsd.md, pitfall P5).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

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


@dataclass(frozen=True)
class SamplingConfig:
    """How logits become a distribution. ``None`` fields take the model family's default.

    temperature: 0 means greedy (argmax); otherwise logits are divided by ``max(temperature, 1e-5)``.
    top_k: keep logits >= the k-th largest (ties kept); 0 disables.
    top_p: nucleus filter, HF style (the first token crossing ``top_p`` is kept); 1 disables.
    cfg_scale: classifier-free guidance ``uncond + s * (cond - uncond)`` on raw logits; 1 disables.
    cfg_interval: LlamaGen's interval: output token ``j`` is guided while ``j <= cfg_interval + 1``;
        -1 means always guided.
    cfg_schedule: "constant" (LlamaGen) or "linear" (VAR's ramp over scales).
    more_smooth: VAR's Gumbel-softmax smoothing of the next-scale input (VAR only).
    """

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float | None = None
    cfg_interval: int | None = None
    cfg_schedule: str | None = None
    more_smooth: bool | None = None

    def with_defaults(self, defaults: "SamplingConfig") -> "SamplingConfig":
        """Fill unset fields from ``defaults`` (the model family's), then from library defaults."""
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in merged.items():
            if value is None:
                merged[name] = getattr(defaults, name)
        base = _LIBRARY_DEFAULTS
        for name, value in merged.items():
            if value is None:
                merged[name] = getattr(base, name)
        return replace(self, **merged)

    def reject_unused(self, used: tuple[str, ...], family: str) -> None:
        """``ValueError`` for a field set to something other than its library default that ``family``'s
        samplers do not use (e.g. ``cfg_interval`` on VAR), naming the fields they do use."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in used and value is not None and value != getattr(_LIBRARY_DEFAULTS, f.name):
                raise ValueError(f"{f.name}={value!r} does not apply to {family} samplers; they use: {', '.join(used)}")

    def validate(self, vocab_size: int | None = None, conditional: bool = True) -> None:
        """Raise ``ValueError`` naming the bad field; call before any work starts."""
        for name in ("temperature", "top_p", "cfg_scale"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in ("top_k", "cfg_interval"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.cfg_interval is not None and self.cfg_interval < -1:
            raise ValueError(f"cfg_interval must be -1 (always guided) or >= 0, got {self.cfg_interval}")
        if self.more_smooth is not None and not isinstance(self.more_smooth, bool):
            raise ValueError(f"more_smooth must be true or false, got {self.more_smooth!r}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None:
            if self.top_k < 0:
                raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
            if vocab_size is not None and self.top_k > vocab_size:
                raise ValueError(f"top_k={self.top_k} is larger than the vocabulary ({vocab_size} tokens)")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.cfg_scale is not None:
            if self.cfg_scale < 0:
                raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
            if self.cfg_scale != 1.0 and not conditional:
                raise ValueError("cfg_scale != 1 needs a model with an unconditional branch (classifier-free "
                                 "guidance), and this model has none: use cfg_scale=1")
        if self.cfg_schedule is not None and self.cfg_schedule not in ("constant", "linear"):
            raise ValueError(f"cfg_schedule must be 'constant' or 'linear', got {self.cfg_schedule!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale is not None and self.cfg_scale != 1.0


_LIBRARY_DEFAULTS = SamplingConfig(
    temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0, cfg_interval=-1, cfg_schedule="constant", more_smooth=False
)


# ----------------------------------------------------------------------------------------------
# The logits chain
# ----------------------------------------------------------------------------------------------


def cfg_mix(logits: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Split a ``[2B, ...]`` batch laid out ``[cond; uncond]`` and mix it on raw logits.

    ``scale`` may be a tensor broadcastable to the mixed logits (per-position guidance, e.g. a
    cfg_interval that switches off inside a verification window); a scale of 1 returns ``cond``.
    """
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then top-p over the last dim; removed entries become -inf, kept ones are unchanged."""
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum > top_p
        # shift right: the token that crosses top_p is kept, and so is the first token
        remove_sorted = torch.cat([torch.zeros_like(remove_sorted[..., :1]), remove_sorted[..., :-1]], dim=-1)
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Final float32 probabilities. ``temperature == 0`` gives a one-hot on the argmax (greedy)."""
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    logits = logits / max(temperature, 1e-5)
    return filter_logits(logits, top_k, top_p).softmax(dim=-1)


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per distribution over the last dim, given uniforms ``u`` of shape ``probs.shape[:-1]``.

    Drawing from caller-supplied uniforms keeps the number of generator calls independent of the
    vocabulary and of which rows are active, so that a row's randomness never depends on the other
    rows of its batch (see :class:`RowRandom`).
    """
    lead = probs.shape[:-1]
    flat = probs.reshape(-1, probs.shape[-1]).double()
    cdf = flat.cumsum(dim=-1)
    target = u.reshape(-1, 1).double().to(cdf.device) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, target, right=True)
    # u * total can round onto the end of the CDF: fall back to the last token that has mass
    last_with_mass = (flat > 0).long().cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    return torch.minimum(idx, last_with_mass).reshape(lead)


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
