"""The model protocols samplers talk to: everything a sampler or a draft head may touch is named here.

* :class:`TokenModel`: raster or any-order next-token models (LlamaGen, transformers image LMs, video).
  :class:`HiddenStateModel` adds what an EAGLE-style draft head needs from its target.
* :class:`ScaleModel`: next-scale models (VAR): one forward per scale over a pre-allocated cache.
* :class:`ContinuousModel`: continuous-token models with a diffusion head (MAR).

``vargen.testing`` checks a model against these (``check_token_model`` etc.); a model written from this
file alone samples with every sampler of its kind (``tests/test_protocols.py`` has such a toy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["TokenModel", "HiddenStateModel", "ScaleModel", "ContinuousModel", "TextCondition", "class_ids"]


def class_ids(labels, num_classes: int, device=None, allow_null: bool = False) -> torch.Tensor:
    """Class ids as a 1-D LongTensor, checked: integers (a tensor or a list; no floats or bools) in
    ``0 .. num_classes-1`` (``allow_null`` also admits ``num_classes``, the CFG null class, for internal use)."""
    if isinstance(labels, (list, tuple)):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in labels):
            raise ValueError(f"class ids must be integers, got {list(labels)!r}")
        labels = torch.tensor(labels, dtype=torch.long)
    if not torch.is_tensor(labels) or labels.dtype not in (torch.int32, torch.int64) or labels.dim() != 1:
        got = f"a {labels.dtype} tensor of shape {tuple(labels.shape)}" if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"class ids must be a 1-D integer tensor (or a list of ints), got {got}")
    if labels.numel() == 0:
        raise ValueError("no class ids given: the batch is empty")
    hi = num_classes if allow_null else num_classes - 1
    bad = (labels < 0) | (labels > hi)
    if bool(bad.any()):
        raise ValueError(f"class id(s) {labels[bad].tolist()} out of range: this model has {num_classes} classes "
                         f"(0..{num_classes - 1})")
    return labels.to(device=device, dtype=torch.long) if device is not None else labels.long()


@dataclass
class TextCondition:
    """Text-encoder features with their padding mask: ``features [B, T, D]``, ``mask [B, T]`` (1 = a real
    token, 0 = padding; LlamaGen's t2i captions are left-padded)."""

    features: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self):
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.features.shape[:2]):
            raise ValueError(f"caption mask {tuple(self.mask.shape)} does not match the features "
                             f"{tuple(self.features.shape)} (expected [B, T])")

    @property
    def batch(self) -> int:
        return self.features.shape[0]

    def to(self, device) -> "TextCondition":
        return TextCondition(self.features.to(device), None if self.mask is None else self.mask.to(device))

    def cat(self, other: "TextCondition") -> "TextCondition":
        mask = None
        if self.mask is not None or other.mask is not None:
            ones = lambda c: torch.ones(c.features.shape[:2], dtype=torch.bool, device=c.features.device)  # noqa: E731
            mask = torch.cat([(self.mask if self.mask is not None else ones(self)).bool(),
                              (other.mask if other.mask is not None else ones(other)).bool()])
        return TextCondition(torch.cat([self.features, other.features]), mask)


@runtime_checkable
class TokenModel(Protocol):
    """A next-token image model with a static K/V cache.

    Positions are counted in image tokens: token ``t`` of a row sits at position ``t``; the model keeps
    whatever condition prefix it needs in front of that internally.

    Attributes: ``vocab_size``; ``grid = (T, H, W)`` of the token layout (T = 1 for images);
    ``num_tokens`` (= T*H*W, the tokens one sample has); ``conditional`` (False: ``cond`` is only a batch
    size and CFG does not apply); ``device``; optional ``guidable`` (default ``conditional``): False for a
    conditional model without an unconditional branch (Cosmos), which then takes no CFG.

    Conditions (opaque to samplers):

    * ``check_cond(cond) -> B`` validates a condition (``ValueError`` naming the problem, before any
      work) and returns its batch size;
    * ``guidance_cond(cond)`` is the ``2B``-row condition ``[cond; unconditional]`` of classifier-free
      guidance (rows ``B + i`` are the unconditional counterpart of row ``i``).

    Decoding, over vargen's decode layer (:mod:`vargen.decode`):

    * ``new_cache(batch, max_len, eviction=None) -> KVCache`` allocates the static per-row cache once for ``max_len``
      image tokens per row (:class:`vargen.decode.KVCache`: its ``prefix`` condition slots, its ``row_width`` when a
      structural token follows every image row); ``eviction``: a :class:`vargen.decode.LineEviction` policy (LineAR,
      a fixed budget of image-token K/V), or a ``ValueError`` saying why this model cannot evict;
    * ``prefill(cond, cache)`` writes the condition and returns logits ``[B, V]`` for token 0;
    * ``forward(tokens [B, n], plan, cache)`` runs the fed tokens as the :class:`vargen.decode.DecodePlan` says -- a
      chain window, the nodes of a token tree, tokens at scattered positions, with forced structural entries -- and
      returns logits ``[B, n, V]`` (entry ``i`` predicts what follows token ``i``). The sampler side builds plans
      (:func:`vargen.decode.chain_plan` etc.); a model embeds ``plan.tokens(tokens)`` (its structural token where
      ``plan.forced``), gives entries the sequence positions ``plan.positions``, writes K/V and attends per layer as
      :func:`vargen.decode.layer_views` says (the plan's slots and mask, or an evicting cache's), and returns
      ``plan.read(...)`` of its outputs. A row's position is its ``start``: entries at or beyond it from earlier calls
      are stale, masked and later overwritten, never read (this is the rollback: nothing is copied).
    * ``codebook() -> [V, d]``: token embeddings in the geometry the tokenizer's quantiser uses
      (neighbourhood rules such as LANTERN).
    * ``memory_per_row(cond, fed, max_len) -> int``: an upper bound of the bytes one cache row needs (a guidance row
      is another row): its cache for ``max_len`` image tokens after ``cond``'s prefix, and one forward of ``fed``
      entries with its logits (:func:`vargen.models.memory.decoder_row_bytes` computes it from a decoder's shapes).
      Samplers add what they hold themselves; :mod:`vargen.budget` refuses or splits a call before any work.

    Optional: ``logits(cond, tokens [B, num_tokens]) -> [B, num_tokens, V]``, teacher forcing (entry ``i``
    predicts token ``i``), used by the reference loop and the conformance checks;
    ``frame_before(cond) -> [B, H*W] | None``: the tokens of the frame just before token 0 when the condition
    holds one (video continuation from context frames), for proposers that draft from the previous frame.
    ``vargen.testing.check_token_model`` checks every plan kind against plain decoding and teacher forcing.
    """

    vocab_size: int
    grid: tuple[int, int, int]
    num_tokens: int
    conditional: bool
    device: torch.device

    def check_cond(self, cond: Any) -> int: ...

    def guidance_cond(self, cond: Any) -> Any: ...

    def new_cache(self, batch: int, max_len: int | None = None) -> Any: ...

    def prefill(self, cond: Any, cache: Any) -> torch.Tensor: ...

    def forward(self, tokens: torch.Tensor, plan: Any, cache: Any) -> torch.Tensor: ...

    def codebook(self) -> torch.Tensor: ...

    def memory_per_row(self, cond: Any, fed: int, max_len: int) -> int: ...


@runtime_checkable
class HiddenStateModel(TokenModel, Protocol):
    """A :class:`TokenModel` whose features an EAGLE-style draft head learns to predict.

    * ``hidden_size``: width of the final-norm hidden states;
    * ``forward(..., return_hidden=True) -> (logits, hidden [B, n, hidden_size])`` (and ``prefill``
      likewise), hidden state ``i`` being the one the logits of entry ``i`` are computed from;
    * ``embed(tokens [B, n]) -> [B, n, hidden_size]``: the input token embedding;
    * ``head(hidden [B, n, hidden_size]) -> logits [B, n, V]``: the output projection.
    """

    hidden_size: int

    def embed(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def head(self, hidden: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ScaleModel(Protocol):
    """A next-scale model (VAR): one forward per scale over a pre-allocated K/V cache.

    Tokens of scale ``k`` (side ``patch_nums[k]``) sit at positions ``begin_ends[k]`` of the
    ``L = sum(pn**2)`` sequence; a token attends to its own scale and every coarser one.

    * ``num_classes``: labels ``0 .. num_classes-1``; ``num_classes`` itself is the null (CFG) class.
      ``Cvae``: channels of the continuous next-scale inputs.
    * ``check_labels(labels) -> labels`` validates (``ValueError``) and returns them as a LongTensor.
    * ``condition(labels [B]) -> cond``: everything derived from the labels once per call (class
      embedding, the shared AdaLN projection). CFG is a doubled batch ``[labels; null]``.
    * ``new_cache(batch, dtype=None, length=None) -> cache``: K/V for the first ``length`` positions
      (default all ``L``), allocated once, in the compute dtype; forwards write into it.
    * ``forward_scales(cond, inputs, cache, first, last, logits_from=None) -> logits | None``: runs
      scales ``first .. last-1`` in one pass (block-causal mask when it spans several scales),
      writes their K/V, and returns logits ``[B, n, V]`` for the positions from scale ``logits_from`` on
      (``None``: no head at all, e.g. a prefill). ``inputs`` are the continuous next-scale inputs
      ``[B, n, Cvae]`` of those scales (scale 0 is the class start token and takes no input). Optional:
      ``pruning=`` a :class:`vargen.models.var_pruning.TokenPruning` (FastVAR); samplers pass it only when the
      user asked for pruning, so a model without it is called as before. Optional: ``new_cache(batch,
      budget=KVBudget, chunk=n)``, a cache that keeps per layer and head a budget of earlier scales' K/V
      (:mod:`vargen.models.var_kv`, HACK / ScaleKV), asked for only when the user sets ``kv_budget``; its layers
      need the attention weights of the scale in flight, so the model's attention runs the eviction.
    * ``quantizer``: the tokenizer's multi-scale quantiser (``ValueError`` when none is attached) (``embedding``, ``Cvae``, ``v_patch_nums``,
      ``full_size``, ``add_scale``, ``next_input``), shared by drafter and refiner in CoDe.
    * ``memory_per_row() -> int``: an upper bound of the bytes one row (a CFG row is another row) of a whole
      next-scale call needs: the cache of every scale and the activations and logits of the largest scale's forward.
    """

    patch_nums: tuple[int, ...]
    begin_ends: list[tuple[int, int]]
    num_classes: int
    vocab_size: int
    Cvae: int
    device: torch.device

    @property
    def quantizer(self) -> Any: ...

    def check_labels(self, labels: torch.Tensor) -> torch.Tensor: ...

    def condition(self, labels: torch.Tensor) -> Any: ...

    def new_cache(self, batch: int, dtype: torch.dtype | None = None, length: int | None = None) -> Any: ...

    def forward_scales(self, cond: Any, inputs: torch.Tensor | None, cache: Any, first: int, last: int,
                       logits_from: int | None = None) -> torch.Tensor | None: ...

    def memory_per_row(self) -> int: ...


@runtime_checkable
class ContinuousModel(Protocol):
    """A continuous-token model with a diffusion head (MAR).

    * ``seq_len`` tokens of ``token_embed_dim`` channels; class labels in ``[0, num_classes)``; ``device``.
    * ``check_labels(labels)`` raises ``ValueError`` for labels outside that range.
    * ``condition(tokens [B, L, C], mask [B, L], labels [B] | None, cfg=False) -> z [B or 2B, L, D]``:
      one encoder + decoder pass; 1 in ``mask`` = still to generate; ``cfg=True`` appends null-class rows.
    * ``sample_orders(batch, generator, device) -> [B, L]``: one random generation order per row.
    * ``diffloss``: the diffusion head: ``predict(x, index, c, cfg) -> [eps | v]`` (its network at the
      scheduler's spaced indices), ``scheduler`` (an ``IDDPMScheduler`` with diffusers' interface, respaced
      for sampling), ``in_channels`` and ``num_sampling_steps``; ``vargen.samplers.diffusion_head`` runs the
      ancestral loop over them with caller-supplied noise.
    * ``memory_per_row(tokens_per_step) -> int``: an upper bound of the bytes one row (a CFG row is another) needs: one
      encoder + decoder pass and the diffusion head over ``tokens_per_step`` tokens.
    """

    seq_len: int
    token_embed_dim: int
    num_classes: int
    diffloss: Any
    device: torch.device

    def condition(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None,
                  cfg: bool = False) -> torch.Tensor: ...

    def sample_orders(self, batch: int, generator: Any = None, device: Any = None) -> torch.Tensor: ...

    def check_labels(self, labels: torch.Tensor) -> None: ...

    def memory_per_row(self, tokens_per_step: int) -> int: ...
