"""Small pieces the token-model files share."""
from __future__ import annotations

import torch

__all__ = ["OutputHeadPlacement"]


class OutputHeadPlacement:
    """``device`` and ``dtype`` of a model read off its output head (``self.output``), ``hidden_size`` (what a draft
    head reads) off its config's ``dim``."""

    @property
    def hidden_size(self) -> int:
        return self.config.dim

    @property
    def device(self) -> torch.device:
        return self.output.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.output.weight.dtype
