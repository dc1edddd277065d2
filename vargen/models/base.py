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
    """A next-scale model (VAR): one forward per scale over a pre-allocated K/V cache.

    Tokens of scale ``k`` (side ``patch_nums[k]``) sit at positions ``begin_ends[k]`` of the
    ``L = sum(pn**2)`` sequence; a token attends to its own scale and every coarser one.

    * ``num_classes``: labels ``0 .. num_classes-1``; ``num_classes`` itself is the null (CFG) class.
    * ``condition(labels [B]) -> cond``: everything derived from the labels once per call
      (class embedding, the shared AdaLN projection). CFG is a doubled batch ``[labels; null]``.
    * ``new_cache(batch, dtype=None) -> cache``: K/V for all ``L`` positions, allocated once, in the
      compute dtype; forwards write into it, nothing is concatenated.
    * ``forward_scales(cond, inputs, cache, first, last, logits_from=None) -> logits | None``: runs
      scales ``first .. last-1`` in one pass (block-causal mask when it spans several scales),
      writes their K/V, and returns logits ``[B, n, V]`` for the positions from scale
      ``logits_from`` on (``None``: no head at all, e.g. a prefill). ``inputs`` are the continuous
      next-scale inputs ``[B, n, Cvae]`` of those scales (scale 0 is the class start token and
      takes no input).
    * ``quantizer``: the tokenizer's multi-scale quantiser (codebook lookup, phi refinement, f_hat
      accumulation and next-scale inputs), shared by drafter and refiner in CoDe.
    """

    patch_nums: tuple[int, ...]
    num_classes: int
    vocab_size: int

    @property
    def quantizer(self) -> Any: ...

    def condition(self, labels: torch.Tensor) -> Any: ...

    def new_cache(self, batch: int, dtype: torch.dtype | None = None) -> Any: ...

    def forward_scales(self, cond: Any, inputs: torch.Tensor | None, cache: Any, first: int, last: int,
                       logits_from: int | None = None) -> torch.Tensor | None: ...


@runtime_checkable
class ContinuousModel(Protocol):
    """A continuous-token model with a diffusion head (MAR).

    * ``seq_len`` tokens of ``token_embed_dim`` channels; class labels in ``[0, num_classes)``.
    * ``condition(tokens [B, L, C], mask [B, L], labels [B] | None, cfg=False) -> z [B or 2B, L, D]``:
      one encoder + decoder pass; 1 in ``mask`` = still to generate; ``cfg=True`` appends null-class rows.
    * ``diffloss.sample(z_rows, temperature, cfg, noise=, step_noise=, generator=, trace=, keep_inputs=)``:
      the diffusion head with caller-supplied noise (or draws from the caller's generator);
      ``diffloss.reverse_step`` and ``diffloss.path_log_prob`` expose the reverse Gaussians.
    * ``sample_orders(batch, generator, device)`` and ``check_labels(labels)`` (raises ``ValueError``).
    """

    seq_len: int
    token_embed_dim: int
    num_classes: int
    diffloss: Any

    def condition(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None,
                  cfg: bool = False) -> torch.Tensor: ...

    def sample_orders(self, batch: int, generator: Any = None, device: Any = None) -> torch.Tensor: ...

    def check_labels(self, labels: torch.Tensor) -> None: ...
