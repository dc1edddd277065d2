"""The TokenModel protocol on the public API of transformers' decoder models.

transformers' caches keep one write position for the whole batch (``StaticLayer.cumulative_length``), while
vargen's samplers advance every row independently (a row that accepted five drafts is five tokens ahead of one that
accepted none). So the adapter brings :class:`RowCache`, a ``transformers.Cache`` whose ``update`` writes each row's
keys at that row's own positions into buffers allocated once and returns the whole buffers, and calls the decoder
with per-row ``position_ids`` and a 4-D additive attention mask (transformers passes a 4-D mask to the attention as
it is: ``masking_utils`` treats it as already prepared). Stale entries beyond a row's position are masked, then
overwritten, never read. Nothing of transformers' modelling code is copied: an adapter names the model's public
modules (decoder, prompt embedding, image embedding, image head) and its classifier-free guidance.

Image sequences with structural tokens (Emu3's end-of-line token after every row of image tokens) keep them out of
the samplers' sight: a model's ``row_end_id`` is written into the sequence by the adapter itself, after the last
token of each row, and the logits that predict the next row's first token are read at it. The token is certain, so
this is the model's own law, and every sampler stays lossless with no draft or verification slot spent on it; a
window's row ends vary per row, so the decoder input has ``n + ceil(n / W)`` slots, the unused ones written to a
scratch position no real query sees.

Prompts are :class:`PromptTokens`, left-padded. Positions follow transformers' convention for left padding
(``cumsum(mask) - 1``): a row's first real prompt token is at RoPE position 0 whatever its padding.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from ...decode import (DecodePlan, KVCache, LayerViews, LineEviction, LineSlots, layer_views, prefix_plan,
                       sequence_length, write_rows_)
from ..memory import decoder_row_bytes
from .attention import layer_masks, use_layer_masks

__all__ = ["PromptTokens", "RowCache", "HFImageLM"]


@dataclass
class PromptTokens:
    """Prompt token ids of a transformers image LM, left-padded: ``ids [B, T]``, ``mask [B, T]`` (1: a real token;
    None: no padding). The prompt ends where the image starts (with the model's begin-of-image tokens)."""

    ids: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self):
        if not torch.is_tensor(self.ids) or self.ids.dim() != 2 or self.ids.dtype not in (torch.int32, torch.int64):
            got = (f"{self.ids.dtype} tensor of shape {tuple(self.ids.shape)}" if torch.is_tensor(self.ids)
                   else type(self.ids).__name__)
            raise ValueError(f"prompt ids must be a [batch, length] integer tensor, got a {got}")
        if self.ids.numel() == 0:
            raise ValueError("the prompt batch is empty")
        if self.mask is None:
            self.mask = torch.ones_like(self.ids, dtype=torch.bool)
        if tuple(self.mask.shape) != tuple(self.ids.shape):
            raise ValueError(f"prompt mask {tuple(self.mask.shape)} does not match the ids {tuple(self.ids.shape)}")
        self.mask = self.mask.bool()
        if not bool(self.mask[:, -1].all()):
            raise ValueError("prompts must be left-padded: the last position of every row is a real token")
        if bool((self.mask[:, 1:].int() < self.mask[:, :-1].int()).any()):
            raise ValueError("prompts must be left-padded: padding only before the first real token")

    @property
    def batch(self) -> int:
        return self.ids.shape[0]

    @classmethod
    def from_lists(cls, rows: list[list[int]], pad_id: int) -> "PromptTokens":
        """Left-pad token-id lists into one batch."""
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, T - len(r):] = True
        return cls(ids, mask)

    def to(self, device) -> "PromptTokens":
        return PromptTokens(self.ids.to(device), self.mask.to(device))

    def left_pad(self, length: int, pad_id: int) -> "PromptTokens":
        """The same prompts left-padded to ``length`` positions."""
        extra = length - self.ids.shape[1]
        if extra < 0:
            raise ValueError(f"prompts of {self.ids.shape[1]} positions do not fit in {length}")
        if extra == 0:
            return self
        ids = torch.full((self.batch, extra), pad_id, dtype=self.ids.dtype, device=self.ids.device)
        pad = torch.zeros_like(ids, dtype=torch.bool)
        return PromptTokens(torch.cat([ids, self.ids], 1), torch.cat([pad, self.mask], 1))

    def cat(self, other: "PromptTokens", pad_id: int | None = None) -> "PromptTokens":
        """Both batches in one, the shorter left-padded with ``pad_id`` (needed only when the lengths differ)."""
        T = max(self.ids.shape[1], other.ids.shape[1])
        if pad_id is None and other.ids.shape[1] != self.ids.shape[1]:
            raise ValueError("prompts of different lengths batch only with a pad token id")
        a, b = self.left_pad(T, pad_id), other.left_pad(T, pad_id)
        return PromptTokens(torch.cat([a.ids, b.ids]), torch.cat([a.mask, b.mask]))


def _cache_base():
    from transformers.cache_utils import Cache

    return Cache


class RowCache(_cache_base()):
    """The ``transformers.Cache`` face of a :class:`~vargen.decode.KVCache`: ``update`` writes each row's keys where
    the current forward's plan says (``views``, set by the adapter before each decoder call) into buffers allocated
    at the prefill's first call of each layer, and returns the first ``read`` slots of the whole buffers."""

    def __init__(self, kv: KVCache):
        if "layers" in inspect.signature(_cache_base().__init__).parameters:
            super().__init__(layers=[])
        else:  # transformers 4.x: a Cache holds no layer list
            super().__init__()
        self.kv = kv
        self.views: LayerViews | None = None
        self.read = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        kv = self.kv
        if layer_idx == len(kv.k):  # the prefill's call allocates this layer's buffers
            B, H, _, D = key_states.shape
            kv.k.append(key_states.new_zeros(B, H, kv.length, D))
            kv.v.append(value_states.new_zeros(B, H, kv.length, value_states.shape[-1]))
        k, v = kv.layer(layer_idx)
        rows, slots = self.views.write(layer_idx)
        write_rows_(k, rows, slots, key_states)
        write_rows_(v, rows, slots, value_states)
        if self.read == kv.length:
            return k, v
        return k[:, :, : self.read], v[:, :, : self.read]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv.prefix


class HFImageLM(nn.Module):
    """A transformers image LM as a :class:`vargen.models.base.TokenModel` (and ``HiddenStateModel``).

    A subclass passes the transformers model, its decoder (called with ``inputs_embeds``) and its grid and image
    vocabulary, and implements ``embed(tokens)`` (image tokens to decoder inputs; models whose image tokens are
    text-vocabulary rows call ``use_vocabulary_images``), ``embed_prompt(ids)`` where the text embedding is not it,
    ``head(hidden)`` (image logits), ``unconditional(prompt)`` (its CFG counterpart), ``decode(tokens)``, and
    ``codebook()`` where its quantiser is not plain L2; it sets ``pad_id`` (left padding of prompt batches).
    """

    conditional = True
    family = "hf"
    _layer_masks = False  # the decoder's attention goes through vargen's per-layer masks (an evicting cache exists)
    row_end_id: int | None = None  # a structural token after every image row (Emu3's end-of-line), or None

    def __init__(self, hf_model, decoder, grid: tuple[int, int, int], vocab_size: int, hidden_size: int):
        super().__init__()
        self.hf = hf_model
        self.decoder = decoder
        self._grid = tuple(int(g) for g in grid)
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        params = inspect.signature(decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers 5.x renamed it

    @property
    def grid(self) -> tuple[int, int, int]:
        return self._grid

    def embed_prompt(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf.get_input_embeddings()(ids)

    # -- image tokens that are rows of the text vocabulary (Emu3, Chameleon) --------------------------------------
    def use_vocabulary_images(self, ids: torch.Tensor) -> None:
        """Image token ``k`` is text token ``ids[k]``: embedded by the text embedding, scored by those LM-head rows."""
        self.register_buffer("image_ids", ids, persistent=False)
        lo, K = int(ids[0]), len(ids)
        self._image_rows = slice(lo, lo + K) if torch.equal(ids, torch.arange(lo, lo + K)) else None

    def embed_vocabulary_images(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed_prompt(self.image_ids[tokens])

    def vocabulary_image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # the whole text head, then the image columns: a GEMM on the row slice of the head's weight came out wrong
        # under the compiled step (torch 2.14 inductor, freezing + the CPU GEMM template on a view with a storage
        # offset; eager was right)
        logits = self.hf.lm_head(hidden)
        return logits[..., self._image_rows] if self._image_rows is not None else logits[..., self.image_ids]

    @property
    def num_tokens(self) -> int:
        t, h, w = self._grid
        return t * h * w

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    # -- conditions ---------------------------------------------------------------------------------------------------
    def check_cond(self, cond) -> int:
        if not isinstance(cond, PromptTokens):
            raise ValueError(f"a {type(self).__name__} takes PromptTokens (left-padded prompt ids), got "
                             f"{type(cond).__name__}")
        vocab = self.hf.get_input_embeddings().num_embeddings
        bad = cond.mask & ((cond.ids < 0) | (cond.ids >= vocab))
        if bool(bad.any()):  # the one host sync of the check
            raise ValueError(f"prompt token ids {sorted(set(cond.ids[bad].tolist()))[:8]} out of range: the text "
                             f"vocabulary has {vocab} tokens")
        return cond.batch

    def guidance_cond(self, cond: PromptTokens) -> PromptTokens:
        """``[cond; unconditional]`` rows for classifier-free guidance (the shorter side left-padded)."""
        return cond.cat(self.unconditional(cond), self.pad_id)

    def unconditional(self, cond: PromptTokens) -> PromptTokens:
        raise NotImplementedError

    def codebook(self) -> torch.Tensor:
        """The VQ codebook (plain L2 nearest neighbour, as Emu3's and Chameleon's quantisers)."""
        return self.hf.model.vqmodel.quantize.embedding.weight.detach().float()

    # -- decoding -----------------------------------------------------------------------------------------------------
    @property
    def _row_width(self) -> int | None:
        """Image tokens per row when an end-of-line token follows every row (else None)."""
        return self._grid[2] if self.row_end_id is not None else None

    def _seq_len(self, n: int) -> int:
        """Sequence entries of image tokens ``0..n-1`` (with the row ends after each complete row)."""
        return sequence_length(n, self._row_width)

    def new_cache(self, batch: int, max_len: int | None = None, eviction=None) -> KVCache:
        """A :class:`~vargen.decode.KVCache` sized at the prefill (the prompt length is known there), for ``max_len``
        image tokens; with row ends, a scratch slot (unused entries of a window) and room for the forced row ends of
        a token tree. ``eviction``: LineAR's fixed budget (:class:`~vargen.decode.LineEviction`); an evicting cache
        holds different positions per layer, so the decoder's attention then takes per-layer masks through
        transformers' attention interface (:mod:`.attention`)."""
        n = self.num_tokens if max_len is None else max_len
        width = self._row_width
        image_slots = self._seq_len(n) + ((1 + n - self.num_tokens) if width else 0)
        slots = None
        if eviction is not None:
            eviction, image_slots = self._line_eviction(eviction, n)
            slots = LineSlots(eviction, len(self.decoder.layers), batch, image_slots, self.device)
            if not self._layer_masks:
                use_layer_masks(self.decoder)
                self._layer_masks = True
        kv = KVCache([], [], torch.ones(batch, 0, dtype=torch.bool, device=self.device), row_width=width,
                     eviction=slots, extra={"image_slots": image_slots})
        kv.extra["transformers"] = RowCache(kv)
        return kv

    def memory_per_row(self, cond, fed: int, max_len: int) -> int:
        """Bytes one row needs: its cache for the prompt and ``max_len`` image tokens (row ends included), one
        forward of ``fed`` entries (the prompt at the prefill) with the whole text head's logits; an upper bound."""
        c = self.decoder.config
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        prompt = cond.ids.shape[1] if isinstance(cond, PromptTokens) else 0
        slots = prompt + self._seq_len(max_len) + max_len + 8  # row ends and the tree's room counted generously
        return decoder_row_bytes(layers=c.num_hidden_layers, dim=c.hidden_size, heads=heads,
                                 kv_heads=getattr(c, "num_key_value_heads", None) or heads, head_dim=head_dim,
                                 ffn=c.intermediate_size, vocab=self.hf.lm_head.out_features, slots=slots,
                                 fed=max(fed + -(-fed // self._grid[2]), prompt), itemsize=self.dtype.itemsize,
                                 layer_masks=self._layer_masks)

    def _line_eviction(self, policy: LineEviction, n: int) -> tuple[LineEviction, int]:
        """The policy over this model's sequence and the image slots it needs for ``n`` image tokens: with row ends a
        line is a row and its end token, and the budget counts the end tokens of its complete rows too."""
        W, w = self._grid[2], max(n - self.num_tokens, 1)  # w: the longest window a sampler feeds
        window = w
        if self.row_end_id is not None:
            policy = LineEviction(policy.budget + policy.budget // W, W + 1, policy.anchor, policy.recent_lines)
            window = w + -(-w // W)  # its entries, row ends included
        tokens = self._seq_len(self.num_tokens)
        policy.check(tokens)
        return policy, min(policy.budget + policy.line + window, tokens + window)

    def prefill(self, cond: PromptTokens, cache: KVCache, return_hidden: bool = False):
        """Run the prompt; logits ``[B, V]`` for image token 0 (and its hidden state)."""
        cond = cond.to(self.device)
        B, T = cond.ids.shape
        if B != cache.batch:
            raise ValueError(f"a cache for {cache.batch} rows got a prompt batch of {B}")
        length = T + cache.extra["image_slots"]
        if cache.eviction is None:
            length = (length + 7) // 8 * 8
        else:  # the slot tables' masks span the prefix and the image slots exactly
            cache.eviction.reset_()
        cache.key_valid = torch.ones(B, length, dtype=torch.bool, device=self.device)
        cache.key_valid[:, :T] = cond.mask
        cache.prefix, cache.pads = T, T - cond.mask.sum(1)
        cache.k.clear()
        cache.v.clear()
        logits, hidden = self._run(self.embed_prompt(cond.ids), prefix_plan(cache, T), cache)
        return (logits[:, -1], hidden[:, -1]) if return_hidden else logits[:, -1]

    def forward(self, tokens: torch.Tensor, plan: DecodePlan, cache: KVCache, return_hidden: bool = False):
        """``TokenModel.forward``: image ``tokens [B, n]`` run as ``plan`` says (:mod:`vargen.decode.plan`; the
        structural row ends are the plan's forced entries); logits ``[B, n, V]``."""
        h = self.embed(plan.tokens(tokens))
        if plan.forced is not None:
            row_end = torch.full((1, 1), self.row_end_id, dtype=torch.long, device=h.device)
            h = torch.where(plan.forced[..., None], self.embed_prompt(row_end), h)
        logits, hidden = self._run(h, plan, cache)
        return (logits, hidden) if return_hidden else logits

    def _run(self, h: torch.Tensor, plan: DecodePlan, cache: KVCache):
        """The decoder over the plan's entries, with a 4-D additive mask (passed to the attention as it is) and
        per-row positions counting real tokens (left padding: ``cumsum(mask) - 1``)."""
        B, m = plan.slots.shape
        views = layer_views(plan, cache)
        if views.per_layer:  # per-layer masks through the attention interface; this mask only has their shape
            if not self._layer_masks:
                use_layer_masks(self.decoder)
                self._layer_masks = True
            L = views.mask(0).shape[-1]
            mask = torch.zeros(B, 1, m, L, dtype=h.dtype, device=h.device)
        else:
            L = plan.mask.shape[-1]
            mask = torch.zeros(B, 1, m, L, dtype=h.dtype, device=h.device).masked_fill(~plan.mask,
                                                                                      torch.finfo(h.dtype).min)
        row = cache.extra["transformers"]
        row.views, row.read = views, L
        with layer_masks(views):
            out = self.decoder(inputs_embeds=h, attention_mask=mask,
                               position_ids=(plan.positions - cache.pads[:, None]).clamp(min=0),
                               use_cache=True, **{self._cache_kw: row})
        views.finish()
        hidden = out.last_hidden_state
        return plan.read(self.head(hidden).float()), plan.read(hidden)

    def logits(self, cond: PromptTokens, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing ``[B, num_tokens, V]`` (entry ``i`` predicts token ``i``) in one uncached decoder call with
        transformers' own 2-D mask handling: an independent check of the cached path."""
        cond = cond.to(self.device)
        B, T = cond.ids.shape
        N = tokens.shape[1]
        image = self.embed(tokens[:, :-1])
        at = torch.arange(N, device=tokens.device)
        if self.row_end_id is not None:  # row ends after every complete row, as the model's sequence has them
            at = at + at // self._grid[2]  # sequence index of each token
            ids = torch.full((B, self._seq_len(N - 1)), self.row_end_id, dtype=torch.long, device=tokens.device)
            image = self.embed_prompt(ids).index_copy(1, at[:-1], image)
        h = torch.cat([self.embed_prompt(cond.ids), image], dim=1)
        mask = torch.cat([cond.mask, torch.ones(B, image.shape[1], dtype=torch.bool, device=h.device)], dim=1)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.decoder(inputs_embeds=h, attention_mask=mask.long(), position_ids=positions, use_cache=False)
        return self.head(out.last_hidden_state[:, T - 1 + at]).float()  # entry t: the position before token t
