"""One static K/V cache for every token model: per-row slots, writes by scatter on fixed shapes, rollback by pointer.

Rows keep no pointer here: the caller's per-row ``start`` is the position, and entries at or beyond it from earlier
calls are stale -- masked by every plan (:mod:`.plan`) and overwritten later, never read. Nothing is ever copied to
roll back. Keys are stored after the model's position encoding, so a slot's content does not depend on where the
slot is.

A model's sequence is ``prefix`` condition slots, then the image tokens in raster order; models whose sequences put a
structural token after every image row (Emu3's and Lumina-mGPT's end-of-line) set ``row_width``, and image token
``t`` then sits at ``prefix + t + t // row_width``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .eviction import LineSlots

__all__ = ["KVCache", "write_rows_", "move_rows_", "sequence_length"]


def sequence_length(n: int, row_width: int | None) -> int:
    """Sequence slots of image tokens ``0 .. n-1`` and the row ends of their complete rows (``row_width``: tokens per
    row when an end-of-line token follows every row, else None)."""
    return n + (n // row_width if row_width else 0)


def write_rows_(cache: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``values [B, H, S, D]`` into ``cache [B, H, L, D]`` in place at per-row positions ``pos [B, S]``
    (``rows [B, S]``: each entry's row), shapes fixed: ``index_put`` when compiling (inductor re-inplaces it; a
    ``scatter_`` is copied, measured), ``scatter_`` eagerly (the cheaper kernel there)."""
    if torch.compiler.is_compiling():
        cache[rows, :, pos] = values.transpose(1, 2).to(cache.dtype)
    else:
        index = pos[:, None, :, None].expand(-1, cache.shape[1], -1, cache.shape[3])
        cache.scatter_(2, index, values.to(cache.dtype))


def move_rows_(cache: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
    """Copy the entries at per-row positions ``src [B, S]`` of ``cache [B, H, L, D]`` to ``dst [B, S]`` (all read
    before any is written)."""
    index = src[:, None, :, None].expand(-1, cache.shape[1], -1, cache.shape[3])
    rows = torch.arange(cache.shape[0], device=cache.device)[:, None].expand_as(dst)
    write_rows_(cache, rows, dst, cache.gather(2, index))


@dataclass
class KVCache:
    """Per-layer K/V ``[B, H_kv, L, D]`` (separate tensors: a compiled step writes each in place).

    ``key_valid [B, L]``: False at padded condition slots (left-padded captions and prompts); ``prefix``: slots
    before image token 0; ``row_width``: image tokens per row when a structural token follows every row (else
    None); ``pads [B]``: left padding of each row (a model whose positions count real tokens only subtracts it);
    ``eviction``: the slot tables of an evicting cache (:class:`~.eviction.LineSlots`, LineAR), whose image slots
    follow the ``prefix`` condition slots; ``cross`` / ``cross_mask``: per-layer cross-attention K/V of the condition
    and its mask (Cosmos Video2World), computed once at the prefill.

    A cache may be allocated lazily (``k`` and ``v`` empty until the prefill's first layer call, for models that
    learn their K/V shapes there): ``length`` is its number of slots either way. ``extra``: what a model keeps with
    its cache (the transformers adapters: the image slots to allocate at the prefill, and the ``transformers.Cache``
    face of the cache).
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    key_valid: torch.Tensor
    prefix: int = 0
    row_width: int | None = None
    pads: torch.Tensor | None = None
    eviction: LineSlots | None = None
    cross: list | None = None
    cross_mask: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def allocate(cls, batch: int, layers: int, kv_heads: int, length: int, head_dim: int, dtype, device,
                 prefix: int = 0, **kw) -> "KVCache":
        shape = (batch, kv_heads, length, head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
                   torch.ones(batch, length, dtype=torch.bool, device=device), prefix, **kw)

    @property
    def batch(self) -> int:
        return self.key_valid.shape[0]

    @property
    def length(self) -> int:
        """Slots per row (what attention reads at most)."""
        return self.key_valid.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    def seq(self, index: torch.Tensor) -> torch.Tensor:
        """The sequence slot of image token ``index`` (after the prefix, with the row ends before it)."""
        if self.row_width is None:
            return self.prefix + index
        return self.prefix + index + torch.div(index, self.row_width, rounding_mode="floor")

    def seq_len(self, n: int) -> int:
        """Sequence slots of image tokens ``0 .. n-1`` and the row ends of their complete rows."""
        return sequence_length(n, self.row_width)

    def keys_for(self, kv_len: int | None) -> int:
        """How many slots a forward reads when no row passes image token ``kv_len`` (a host-side bound)."""
        if kv_len is None:
            return self.length
        return min(self.prefix + self.seq_len(kv_len), self.length)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[i], self.v[i]
