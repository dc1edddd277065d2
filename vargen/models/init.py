"""Weight initialisation of untrained models (the test toys and the tiny benchmark models)."""
from __future__ import annotations

import torch

__all__ = ["trained_like_init_"]


@torch.no_grad()
def trained_like_init_(named_parameters, generator: torch.Generator) -> None:
    """Random weights with peaked (trained-like) output distributions, in place: norms near 1, other 1-D parameters
    near 0, embeddings N(0, 1), matrices N(0, 1 / fan_in). Default inits (0.02 std) make every distribution nearly
    uniform, so draft acceptance on them says nothing; tests and the tiny benchmark models use this."""
    for name, p in sorted(named_parameters, key=lambda item: item[0]):
        if p.dim() == 1:
            p.copy_((1 if "norm" in name else 0) + 0.1 * torch.randn(p.shape, generator=generator))
        elif "embed" in name:
            p.copy_(torch.randn(p.shape, generator=generator))
        else:
            p.copy_(torch.randn(p.shape, generator=generator) / p.shape[1] ** 0.5)
