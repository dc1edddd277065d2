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

from ..kv import TokenTree, keep_path_, tree_window_mask, write_rows_

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
    """Per-row static K/V for a transformers decoder: one ``[B, H_kv, L, D]`` buffer pair per layer, allocated at the
    prefill (``L`` = prompt length + image positions, rounded up to 8). Before each decoder call the adapter sets
    ``write = (rows [B, n], positions [B, n])`` and ``read`` (how many positions attention reads)."""

    def __init__(self, batch: int, max_len: int):
        if "layers" in inspect.signature(_cache_base().__init__).parameters:
            super().__init__(layers=[])
        else:  # transformers 4.x: a Cache holds no layer list
            super().__init__()
        self.batch, self.max_len = batch, max_len
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.prompt_len = 0
        self.positions = 0
        self.key_valid: torch.Tensor | None = None  # [B, L] False at prompt padding
        self.pads: torch.Tensor | None = None  # [B] left padding of each row (RoPE position = sequence position - pads)
        self.write: tuple[torch.Tensor, torch.Tensor] | None = None
        self.read = 0

    def start(self, prompt_mask: torch.Tensor) -> None:
        """Size the cache for a prompt ``[B, T]`` (the prefill calls this)."""
        B, T = prompt_mask.shape
        if B != self.batch:
            raise ValueError(f"a cache for {self.batch} rows got a prompt batch of {B}")
        self.prompt_len, self.positions = T, (T + self.max_len + 7) // 8 * 8
        self.key_valid = torch.ones(B, self.positions, dtype=torch.bool, device=prompt_mask.device)
        self.key_valid[:, :T] = prompt_mask
        self.pads = T - prompt_mask.sum(1)
        self.k, self.v = [], []

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx == len(self.k):  # the prefill's call allocates this layer's buffers
            B, H, _, D = key_states.shape
            self.k.append(key_states.new_zeros(B, H, self.positions, D))
            self.v.append(value_states.new_zeros(B, H, self.positions, value_states.shape[-1]))
        k, v = self.k[layer_idx], self.v[layer_idx]
        rows, pos = self.write
        write_rows_(k, rows, pos, key_states)
        write_rows_(v, rows, pos, value_states)
        if self.read == self.positions:
            return k, v
        return k[:, :, : self.read], v[:, :, : self.read]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prompt_len


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
    def _seq_len(self, n: int) -> int:
        """Sequence entries of image tokens ``0..n-1`` (with the row ends after each complete row)."""
        return n + n // self._grid[2] if self.row_end_id is not None else n

    def new_cache(self, batch: int, max_len: int | None = None) -> RowCache:
        n = self.num_tokens if max_len is None else max_len
        return RowCache(batch, self._seq_len(n) + (self.row_end_id is not None))  # + the scratch position

    def prefill(self, cond: PromptTokens, cache: RowCache, return_hidden: bool = False):
        """Run the prompt; logits ``[B, V]`` for image token 0 (and its hidden state)."""
        cond = cond.to(self.device)
        cache.start(cond.mask)
        B, T = cond.ids.shape
        seq = torch.arange(T, device=self.device)[None].expand(B, T)
        logits, hidden = self._run(self.embed_prompt(cond.ids), seq, cache, None)
        return (logits[:, -1], hidden[:, -1]) if return_hidden else logits[:, -1]

    @property
    def tree_attention(self) -> bool:
        """Token trees need one decoder slot per node: not with row-end tokens between image rows."""
        return self.row_end_id is None

    def forward(self, tokens: torch.Tensor, start: torch.Tensor, cache: RowCache, kv_len: int | None = None,
                return_hidden: bool = False, tree: TokenTree | None = None):
        """``TokenModel.forward``: image ``tokens [B, n]`` at per-row positions ``start [B]`` (or the nodes of a
        ``tree`` rooted at ``start``, see :class:`vargen.models.kv.TokenTree`); logits ``[B, n, V]``."""
        n = tokens.shape[1]
        read = None if kv_len is None else cache.prompt_len + self._seq_len(kv_len)
        t = start[:, None] + torch.arange(n, device=tokens.device)  # image token indices [B, n]
        if tree is not None:
            if not self.tree_attention:
                raise ValueError(f"{type(self).__name__} puts row-end tokens between image rows: token-tree drafts "
                                 "are not supported for it")
            logits, hidden = self._run(self.embed(tokens), cache.prompt_len + t, cache, read, tree)
        elif self.row_end_id is None:
            logits, hidden = self._run(self.embed(tokens), cache.prompt_len + t, cache, read)
        else:
            logits, hidden = self._run_with_row_ends(tokens, t, start, cache, read)
        return (logits, hidden) if return_hidden else logits

    def keep_path(self, cache: RowCache, start: torch.Tensor, nodes: torch.Tensor) -> None:
        """After a tree forward at ``start [B]``: move the K/V of ``nodes [B, D]`` (depths ``1 .. D``) to the slots
        of their positions ``start+1 .. start+D``."""
        keep_path_((*cache.k, *cache.v), cache.prompt_len + start, nodes)

    def _run_with_row_ends(self, tokens, t, start, cache: RowCache, read):
        """Tokens at image indices ``t`` with a row end after each row's last token, in ``n + ceil(n / W)`` decoder
        slots; the logits that predict token ``t + 1`` are read at the row end where ``t`` ends a row."""
        B, n = tokens.shape
        W = self._grid[2]
        m = n + -(-n // W)  # at most ceil(n / W) row ends among n consecutive indices
        ends = t % W == W - 1
        slot = torch.arange(n, device=t.device) + t // W - (start // W)[:, None]  # + row ends before t in the window
        drop = torch.full_like(slot, m)  # column m is cut off: the scatter target of "no row end here"
        eol_slot = torch.where(ends, slot + 1, drop)
        seq = cache.prompt_len + t + t // W
        pos = torch.full((B, m + 1), cache.positions - 1, dtype=torch.long, device=t.device)  # unused: the scratch
        pos = pos.scatter(1, slot, seq).scatter(1, eol_slot, seq + 1)[:, :m]
        h_tok = self.embed(tokens)
        eol = self.embed_prompt(torch.full((1, 1), self.row_end_id, dtype=torch.long, device=t.device))  # [1, 1, D]
        D = h_tok.shape[-1]
        h = eol.expand(B, m + 1, D).scatter(1, slot[..., None].expand(-1, -1, D), h_tok)[:, :m]
        logits, hidden = self._run(h, pos, cache, read)
        out = torch.where(ends, slot + 1, slot)
        pick = lambda x: x.gather(1, out[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
        return pick(logits), pick(hidden)

    def _run(self, h: torch.Tensor, seq: torch.Tensor, cache: RowCache, read: int | None,
             tree: TokenTree | None = None):
        """``seq [B, n]``: the decoder slots of ``h``; a ``tree`` gives node ``i`` (at slot ``seq[:, 0] + i``) the
        position of its depth and its ancestors' keys."""
        B, n = seq.shape
        L = cache.positions if read is None else min(read, cache.positions)
        keys = torch.arange(L, device=h.device)
        position = seq
        if tree is None:
            valid = cache.key_valid[:, None, :L] | (keys == seq[:, :, None])  # a padded query sees itself
            visible = (keys <= seq[:, :, None]) & valid
        else:
            visible = tree_window_mask(seq[:, 0], tree, cache.key_valid, L)
            position = seq[:, :1] + tree.tensors(h.device)["depth"][None]
        mask = torch.zeros(B, 1, n, L, dtype=h.dtype, device=h.device).masked_fill(~visible[:, None],
                                                                                      torch.finfo(h.dtype).min)
        cache.write, cache.read = (torch.arange(B, device=h.device)[:, None].expand(B, n), seq), L
        out = self.decoder(inputs_embeds=h, attention_mask=mask,
                           position_ids=(position - cache.pads[:, None]).clamp(min=0),
                           use_cache=True, **{self._cache_kw: cache})
        hidden = out.last_hidden_state
        return self.head(hidden).float(), hidden

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
