"""Per-row K/V writes into a static cache, shared by every token model's cache."""
from __future__ import annotations

import torch

__all__ = ["write_rows_"]


def write_rows_(cache: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``values [B, H, S, D]`` into ``cache [B, H, L, D]`` in place at per-row positions ``pos [B, S]``
    (``rows [B, S]``: each entry's row), shapes fixed: ``index_put`` when compiling (inductor re-inplaces it; a
    ``scatter_`` is copied, measured), ``scatter_`` eagerly (the cheaper kernel there)."""
    if torch.compiler.is_compiling():
        cache[rows, :, pos] = values.transpose(1, 2).to(cache.dtype)
    else:
        index = pos[:, None, :, None].expand(-1, cache.shape[1], -1, cache.shape[3])
        cache.scatter_(2, index, values.to(cache.dtype))
