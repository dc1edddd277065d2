"""LlamaGen GPT (Sun et al. 2024, arXiv 2406.06525), checkpoint-faithful, with a static K/V cache.

Key names, shapes and numerics follow the official ``autoregressive/models/gpt.py`` so released
checkpoints load with ``strict=True``. Differences from upstream are in the inference plumbing only:

* the K/V cache is vargen's static per-row :class:`~vargen.decode.KVCache` allocated once (never part of the
  state dict), and a forward runs a :class:`~vargen.decode.DecodePlan` (a chain window, a token tree, scattered
  positions) over it, so a row can verify drafts in one forward and roll back by moving a pointer (rejected
  entries are masked and later overwritten, nothing is copied);
* positions are per row, so rows of a batch advance independently (speculative decoding).

2-D RoPE (research/llamagen.md §1.7): interleaved channel pairs; the first ``hd/4`` pairs rotate by
the row, the last ``hd/4`` by the column; condition positions get an all-zero cos/sin table, so their
queries and keys are exactly zero and conditions reach image tokens through the values only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..decode import (DecodePlan, KVCache, LineEviction, LineSlots, add_first_query_attention_, attention_mask,
                      layer_views, prefix_plan, write_rows_)
from .base import TextCondition, class_ids
from .config import OfficialConfig
from .memory import decoder_row_bytes
from .parts import OutputHeadPlacement

__all__ = ["GPTConfig", "GPT", "KVCache", "GPT_PRESETS", "gpt_config", "attention_mask", "TextCondition"]


@dataclass
class GPTConfig(OfficialConfig):
    """LlamaGen's ``ModelArgs`` field by field (official names and defaults)."""

    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    caption_dim: int = 2048
    class_dropout_prob: float = 0.1
    model_type: str = "c2i"
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256
    max_batch_size: int = 32
    max_seq_len: int = 2048

    IGNORED = ("flash_if_available", "use_flash", "compile")  # flags that only choose a kernel

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    def validate(self) -> None:
        if self.model_type not in ("c2i", "t2i"):
            raise ValueError(f"model_type must be 'c2i' or 't2i', got {self.model_type!r}")
        if self.dim % self.n_head:
            raise ValueError(f"dim={self.dim} is not divisible by n_head={self.n_head}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim={self.head_dim} must be a multiple of 4 for 2-D RoPE")
        if self.grid_size**2 != self.block_size:
            raise ValueError(f"block_size={self.block_size} must be a perfect square (raster grid)")
        if self.n_kv_head not in (None, self.n_head):
            raise ValueError("n_kv_head != n_head (GQA) is not used by any released LlamaGen model")


# Size presets (research/llamagen.md §1.3). ``gpt_config("GPT-B", vocab_size=..., ...)`` adds task fields.
GPT_PRESETS: dict[str, dict[str, Any]] = {
    "GPT-B": dict(n_layer=12, n_head=12, dim=768),
    "GPT-L": dict(n_layer=24, n_head=16, dim=1024),
    "GPT-XL": dict(n_layer=36, n_head=20, dim=1280),
    "GPT-XXL": dict(n_layer=48, n_head=24, dim=1536),
    "GPT-XXXL": dict(n_layer=48, n_head=40, dim=2560),
    "GPT-1B": dict(n_layer=22, n_head=32, dim=2048),
    "GPT-3B": dict(n_layer=24, n_head=32, dim=3200),
    "GPT-7B": dict(n_layer=32, n_head=32, dim=4096),
}


def gpt_config(preset: str, **overrides: Any) -> GPTConfig:
    if preset not in GPT_PRESETS:
        raise ValueError(f"unknown GPT preset {preset!r}; choose from {', '.join(GPT_PRESETS)}")
    return GPTConfig(**{**GPT_PRESETS[preset], **overrides})


# ----------------------------------------------------------------------------------------------
# Building blocks (official module and parameter names)
# ----------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in float32, cast back to the input dtype *before* the learned scale (as upstream)
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


def ffn_hidden_dim(cfg: GPTConfig) -> int:
    hidden = int(2 * (4 * cfg.dim) / 3)
    if cfg.ffn_dim_multiplier is not None:
        hidden = int(cfg.ffn_dim_multiplier * hidden)
    return cfg.multiple_of * ((hidden + cfg.multiple_of - 1) // cfg.multiple_of)


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = ffn_hidden_dim(cfg)
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of ``x [B, S, H, hd]`` by ``rope [B or 1, S, hd/2, 2]`` (cos, sin), in float32:
    the pair (a, b) is the complex number a + ib, multiplied by cos + i sin -- written in real arithmetic
    (``(a cos - b sin, a sin + b cos)``, what the complex product computes) so that ``torch.compile`` can
    generate code for it."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = rope[..., 0].float().unsqueeze(2), rope[..., 1].float().unsqueeze(2)  # broadcast over heads
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(3).type_as(x)


def build_rope_2d(grid: int, head_dim: int, cls_token_num: int, base: float = 10000) -> torch.Tensor:
    """``[cls_token_num + grid², head_dim/2, 2]`` table: zero rows for conditions, then raster cells."""
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    coords = torch.arange(grid, dtype=torch.float32)
    angle_r = torch.outer(coords, inv_freq)  # [grid, hd/4]
    angles = torch.cat(
        [angle_r[:, None, :].expand(grid, grid, -1), angle_r[None, :, :].expand(grid, grid, -1)], dim=-1
    ).reshape(grid * grid, half)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return torch.cat([torch.zeros(cls_token_num, half, 2), table])


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout_p = cfg.attn_dropout_p
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)

    def forward(self, x, rope, mask=None, kv=None, write=None, probe=None):
        """``kv``: this layer's (k_cache, v_cache) ``[B, H, L, hd]``; ``write``: (rows, positions).
        Attention reads the first ``mask.shape[-1]`` cache positions. ``probe [B, L]``: the first query's
        attention probabilities, summed over heads, are added to it (K/V eviction scores)."""
        B, S, _ = x.shape
        q, k, v = self.wqkv(x).split(self.n_head * self.head_dim, dim=-1)
        q = apply_rope(q.view(B, S, self.n_head, self.head_dim), rope).transpose(1, 2)
        k = apply_rope(k.view(B, S, self.n_head, self.head_dim), rope).transpose(1, 2)
        v = v.view(B, S, self.n_head, self.head_dim).transpose(1, 2)
        if kv is not None:
            k_cache, v_cache = kv
            rows, pos = write  # [B, S]: this call's keys go to per-row positions, in place, shapes fixed
            write_rows_(k_cache, rows, pos, k)
            write_rows_(v_cache, rows, pos, v)
            L = mask.shape[-1]
            k, v = (k_cache, v_cache) if L == k_cache.shape[2] else (k_cache[:, :, :L], v_cache[:, :, :L])
        if probe is not None:
            add_first_query_attention_(probe, q, k, mask)
        dropout = self.attn_dropout_p if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif S <= 2 and q.device.type == "cpu" and torch.compiler.is_compiling():
            # a decode step on the CPU: written out, inductor fuses it into one loop nest, ~4x cheaper than the
            # flash kernel's call for one query against the whole static cache (measured on the demo model)
            scores = (q @ k.to(q.dtype).transpose(-1, -2)) * self.head_dim ** -0.5
            y = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v.to(q.dtype)
        else:
            y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, dropout_p=dropout)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(B, S, -1)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, rope, mask=None, kv=None, write=None, probe=None):
        h = x + self.attention(self.attention_norm(x), rope, mask, kv, write, probe)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class embedding with an extra null row (index ``num_classes``) for CFG."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """T5 caption features -> model width; ``uncond_embedding`` is the learned null caption."""

    def __init__(self, in_channels: int, dim: int, dropout_prob: float, token_num: int = 120):
        super().__init__()
        self.cap_proj = MLP(in_channels, dim, dim)
        self.register_buffer("uncond_embedding", torch.randn(token_num, in_channels) / in_channels**0.5)
        self.dropout_prob = dropout_prob

    def forward(self, caption: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        if drop is not None:
            caption = torch.where(drop[:, None, None], self.uncond_embedding.to(caption.dtype), caption)
        return self.cap_proj(caption)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class GPT(OutputHeadPlacement, nn.Module):
    """LlamaGen ``Transformer``; implements :class:`vargen.models.base.TokenModel`."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        if cfg.model_type == "c2i":
            self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout_prob)
        else:
            self.cls_embedding = CaptionEmbedder(cfg.caption_dim, cfg.dim, cfg.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # not a buffer: never in the state dict (as upstream)
        self.rope = build_rope_2d(cfg.grid_size, cfg.head_dim, cfg.cls_token_num, cfg.rope_base)
        self.init_weights()

    # -- TokenModel attributes ------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def grid(self) -> tuple[int, int, int]:
        g = self.config.grid_size
        return (1, g, g)

    @property
    def num_tokens(self) -> int:
        return self.config.block_size

    @property
    def conditional(self) -> bool:
        return True

    @property
    def num_classes(self) -> int:
        """Class ids ``0 .. num_classes-1`` (c2i); 0 for a text-conditional model."""
        return self.config.num_classes if self.config.model_type == "c2i" else 0

    def init_weights(self) -> None:
        """Upstream's training initialisation: N(0, 0.02) everywhere, zero output head."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
        nn.init.zeros_(self.output.weight)

    def _rope(self, positions: torch.Tensor) -> torch.Tensor:
        if self.rope.device != positions.device:
            self.rope = self.rope.to(positions.device)
        # positions past the grid only occur in fixed-shape speculative windows that overrun the end;
        # their outputs are never used and, being later in the sequence, cannot affect earlier ones
        return self.rope[positions.clamp(max=self.rope.shape[0] - 1)]

    # -- conditions -------------------------------------------------------------------------------
    def check_cond(self, cond) -> int:
        """Validate a condition before any work (``ValueError`` naming the problem); returns its batch size.

        c2i: a 1-D integer tensor of class ids ``0 .. num_classes-1`` (the null class is internal to CFG).
        t2i: a :class:`~vargen.models.base.TextCondition` (or bare features ``[B, T, caption_dim]``).
        """
        cfg = self.config
        if cfg.model_type == "c2i":
            if not torch.is_tensor(cond):
                raise ValueError(f"a class-conditional model takes a 1-D integer tensor of class ids, got {type(cond).__name__}")
            return class_ids(cond, cfg.num_classes).shape[0]
        cond = self._text(cond)
        if cond.features.dim() != 3 or cond.features.shape[-1] != cfg.caption_dim:
            raise ValueError(f"a text-conditional model takes caption features [B, T, {cfg.caption_dim}], "
                             f"got {tuple(cond.features.shape)}")
        if cond.features.shape[1] != cfg.cls_token_num:
            raise ValueError(f"caption features have {cond.features.shape[1]} tokens; this model's prefix holds "
                             f"cls_token_num={cfg.cls_token_num}")
        if cond.batch == 0:
            raise ValueError("no captions given: the batch is empty")
        return cond.batch

    @staticmethod
    def _text(cond) -> TextCondition:
        return cond if isinstance(cond, TextCondition) else TextCondition(cond)

    def null_cond(self, cond):
        """The unconditional counterpart of ``cond`` (null class / learned null caption, same mask)."""
        if self.config.model_type == "c2i":
            return torch.full_like(cond, self.config.num_classes)
        cond = self._text(cond)
        null = torch.zeros_like(cond.features) + self.cls_embedding.uncond_embedding.to(cond.features.dtype)
        return TextCondition(null, cond.mask)

    def guidance_cond(self, cond):
        """``[cond; null]`` for classifier-free guidance (one batched forward)."""
        if self.config.model_type == "c2i":
            return torch.cat([cond, self.null_cond(cond)])
        return self._text(cond).cat(self.null_cond(cond))

    def embed_cond(self, cond, drop: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.model_type == "t2i":
            cond = self._text(cond).features
        return self.cls_embedding(cond, drop)[:, : self.config.cls_token_num]

    def _cond_mask(self, cond) -> torch.Tensor | None:
        return self._text(cond).mask if self.config.model_type == "t2i" else None

    # -- HiddenStateModel: what a draft head reads ----------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_embeddings(tokens)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden).float()

    # -- teacher forcing / training -----------------------------------------------------------------
    def logits(self, cond, tokens: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: ``[B, block_size, V]`` where entry ``i`` predicts ``tokens[:, i]``.

        ``tokens`` holds ``block_size`` (or ``block_size - 1``) tokens; the last is never fed.
        ``drop`` [B] bool replaces conditions by the null condition (CFG dropout in training).
        """
        T = self.config.cls_token_num
        tokens = tokens[:, : self.config.block_size - 1]
        h = torch.cat([self.embed_cond(cond, drop), self.tok_embeddings(tokens)], dim=1)
        h = self.tok_dropout(h)
        S = h.shape[1]
        rope = self._rope(torch.arange(S, device=h.device))[None]
        mask = None
        cond_mask = self._cond_mask(cond)
        if cond_mask is not None:
            mask = attention_mask(torch.arange(S, device=h.device).expand(h.shape[0], S),
                                  self._key_valid(cond_mask, S), S)[:, None]
        for layer in self.layers:
            h = layer(h, rope, mask)
        return self.output(self.norm(h))[:, T - 1 :].float()

    def forward(self, tokens: torch.Tensor, plan: DecodePlan, cache: KVCache, return_hidden: bool = False):
        """Cached decode (``TokenModel.forward``): runs ``tokens [B, n]`` as ``plan`` says (a chain window, the nodes
        of a token tree, scattered positions: :mod:`vargen.decode.plan`) and returns logits ``[B, n, V]`` (entry
        ``i`` predicts what follows token ``i``); with ``return_hidden`` also the final-norm hidden states."""
        return self._run(self.tok_embeddings(plan.tokens(tokens)), plan, cache, return_hidden)

    # -- TokenModel: cache protocol ---------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                  eviction: LineEviction | None = None) -> KVCache:
        """Allocate once for ``batch`` rows and ``max_len`` image tokens (default: the whole grid).

        ``eviction``: a :class:`~vargen.decode.LineEviction` policy: the cache then holds ``budget + line + window``
        image slots instead of ``max_len`` positions (``window = max_len - num_tokens``, the longest forward a
        sampler makes), and complete lines are evicted down to the budget.
        """
        cfg = self.config
        max_len = cfg.block_size if max_len is None else max_len
        slots = None
        if eviction is not None:
            eviction.check(self.num_tokens)
            window = max(max_len - self.num_tokens, 1)
            L = cfg.cls_token_num + min(eviction.budget + eviction.line + window, max_len)
            slots = LineSlots(eviction, cfg.n_layer, batch, L - cfg.cls_token_num, self.device)
        else:
            L = cfg.cls_token_num + max_len
            L = (L + 7) // 8 * 8  # round up as upstream
        return KVCache.allocate(batch, cfg.n_layer, cfg.n_head, L, cfg.head_dim, dtype or self.dtype, self.device,
                                prefix=cfg.cls_token_num, eviction=slots)

    def memory_per_row(self, cond, fed: int, max_len: int) -> int:
        """Bytes one row needs: its cache for ``max_len`` image tokens and one forward of ``fed`` tokens
        (:func:`~vargen.models.memory.decoder_row_bytes`; an upper bound, ``TokenModel.memory_per_row``)."""
        cfg = self.config
        return decoder_row_bytes(layers=cfg.n_layer, dim=cfg.dim, heads=cfg.n_head, kv_heads=cfg.n_head,
                                 head_dim=cfg.head_dim, ffn=ffn_hidden_dim(cfg), vocab=cfg.vocab_size,
                                 slots=cfg.cls_token_num + max_len + 8, fed=max(fed, cfg.cls_token_num),
                                 itemsize=self.dtype.itemsize)

    def prefill(self, cond, cache: KVCache, return_hidden: bool = False):
        """Write the condition prefix; returns logits ``[B, V]`` for image token 0 (and its hidden state).

        A t2i :class:`TextCondition` mask (left padding) hides padded caption positions from every
        query except itself (upstream forces the mask diagonal on).
        """
        T = self.config.cls_token_num
        cache.key_valid.fill_(True)
        if cache.eviction is not None:
            cache.eviction.reset_()
        cond_mask = self._cond_mask(cond)
        if cond_mask is not None:
            cache.key_valid[:, :T] = cond_mask.bool()
        out = self._run(self.embed_cond(cond), prefix_plan(cache, T, keys=T), cache, return_hidden)
        if return_hidden:
            return out[0][:, -1], out[1][:, -1]
        return out[:, -1]

    def _key_valid(self, cond_mask: torch.Tensor, L: int) -> torch.Tensor:
        valid = torch.ones(cond_mask.shape[0], L, dtype=torch.bool, device=cond_mask.device)
        valid[:, : cond_mask.shape[1]] = cond_mask.bool()
        return valid

    def _run(self, h: torch.Tensor, plan: DecodePlan, cache: KVCache, return_hidden: bool = False):
        """The layers over the plan's entries ``h [B, m, dim]``: K/V written where the plan (or an evicting cache)
        says, attention under its mask."""
        rope = self._rope(plan.positions)
        views = layer_views(plan, cache)
        h = self.tok_dropout(h)
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, views.mask(i), cache.layer(i), views.write(i), views.probe(i))
        views.finish()
        hidden = self.norm(h)
        logits = plan.read(self.output(hidden).float())
        return (logits, plan.read(hidden)) if return_hidden else logits

    def codebook(self) -> torch.Tensor:
        """Token embeddings for neighbourhood rules; the pipeline replaces this by the VQ codebook."""
        return self.tok_embeddings.weight.detach()

    @classmethod
    def from_folder(cls, folder, dtype: torch.dtype = torch.float32) -> "GPT":
        """A GPT saved as ``model.safetensors`` + ``config.json`` (``vargen train gpt``, the demo zoo)."""
        from .checkpoint import load_zoo_folder

        build = lambda c: cls(GPTConfig.from_dict(c))  # noqa: E731
        return load_zoo_folder(folder, build, expected="llamagen_gpt", drop=("freqs_cis",)).to(dtype)


def infer_gpt_shape(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What a LlamaGen state dict implies: layers, width, vocabulary, classes, task."""
    layers = {int(k.split(".")[1]) for k in state if k.startswith("layers.")}
    out: dict[str, Any] = {"n_layer": max(layers) + 1 if layers else 0}
    if "tok_embeddings.weight" in state:
        out["vocab_size"], out["dim"] = state["tok_embeddings.weight"].shape
    if "cls_embedding.embedding_table.weight" in state:
        out["model_type"] = "c2i"
        out["label_rows"] = state["cls_embedding.embedding_table.weight"].shape[0]
    elif "cls_embedding.cap_proj.fc1.weight" in state:
        out["model_type"] = "t2i"
        out["caption_dim"] = state["cls_embedding.cap_proj.fc1.weight"].shape[1]
    for name, preset in GPT_PRESETS.items():
        if preset["n_layer"] == out.get("n_layer") and preset["dim"] == out.get("dim"):
            out["preset"] = name
    return out


def load_gpt_weights(model: GPT, path_or_state, trusted: bool = False) -> GPT:
    """Load an official checkpoint (``.pt`` with model/module/state_dict wrappers, or safetensors) strictly;
    pickles weights-only unless ``trusted`` (:mod:`vargen.models.checkpoint`)."""
    from .checkpoint import load_strict, read_state_dict

    state = path_or_state if isinstance(path_or_state, dict) else read_state_dict(path_or_state, trusted=trusted)
    implied = infer_gpt_shape(state)
    cfg = model.config
    hint = (f"the checkpoint looks like {implied.get('preset', 'a custom size')} "
            f"(n_layer={implied.get('n_layer')}, dim={implied.get('dim')}, vocab={implied.get('vocab_size')}, "
            f"{implied.get('model_type', '?')}) but the config is n_layer={cfg.n_layer}, dim={cfg.dim}, "
            f"vocab={cfg.vocab_size}, {cfg.model_type}")
    load_strict(model, state, "LlamaGen GPT", hint=hint, drop=("freqs_cis",))
    return model
