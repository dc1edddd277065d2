"""How logits become a distribution: :class:`SamplingConfig`, the settings every sampler and every model family's
defaults are written in. A leaf module (it imports nothing from vargen), so models state their official defaults
without depending on the samplers that apply them (``vargen.samplers.base`` re-exports it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

__all__ = ["SamplingConfig"]


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
