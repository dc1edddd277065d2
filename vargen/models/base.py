"""The three model protocols samplers talk to. Samplers never touch a model's internals.

* :class:`TokenModel`: raster or any-order next-token models (LlamaGen, transformers image LMs).
* :class:`ScaleModel`: next-scale models (VAR): one forward per scale over a pre-allocated cache.
* :class:`ContinuousModel`: continuous-token models with a diffusion head (MAR).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class TokenModel(Protocol):
    """A next-token image model with a static K/V cache.

    Positions are counted in image tokens: token ``t`` of a row sits at position ``t``; the model
    keeps whatever condition prefix it needs in front of that internally.

    * ``new_cache(batch, max_len)`` allocates the cache once (``max_len`` image tokens).
    * ``prefill(cond, cache)`` writes the condition and returns logits ``[B, V]`` for token 0.
    * ``forward(tokens [B, n], start [B], cache)`` writes K/V of ``tokens`` at per-row positions
      ``start .. start+n-1`` and returns logits ``[B, n, V]``; entry ``i`` predicts token
      ``start + i + 1``. Stale entries beyond a row's position are masked, never read.
    * ``rollback(cache, length [B])`` moves each row's pointer back; nothing is copied.
    * ``grid``: ``(T, H, W)`` of the token layout (T = 1 for images).
    * ``codebook()``: ``[V, d]`` token embeddings in the geometry the tokenizer's quantiser uses.
    """

    vocab_size: int
    grid: tuple[int, int, int]

    def new_cache(self, batch: int, max_len: int | None = None) -> Any: ...

    def prefill(self, cond: Any, cache: Any) -> torch.Tensor: ...

    def forward(self, tokens: torch.Tensor, start: torch.Tensor, cache: Any) -> torch.Tensor: ...

    def rollback(self, cache: Any, length: torch.Tensor) -> None: ...


@runtime_checkable
class ScaleModel(Protocol):
    """A next-scale model (VAR): ``patch_nums`` and one cached forward per scale."""

    patch_nums: tuple[int, ...]


@runtime_checkable
class ContinuousModel(Protocol):
    """A continuous-token model with a diffusion head (MAR)."""

    def condition(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...
