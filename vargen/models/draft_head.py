"""EAGLE-style draft head for LlamaGen (Li et al. 2024, EAGLE; as used by LANTERN, research/lantern.md §2.1).

The head predicts the target's next final-norm hidden state ("feature") from the current one:

    f_hat_{t+1} = Layer(fc([f_t ; E(x_{t+1})]))        logits for x_{t+2} = target.output(f_hat_{t+1})

``f_t`` is the target's final-norm hidden state at token ``t`` (it predicts ``x_{t+1}``), ``E`` the
target's (frozen) token embedding, ``fc`` a ``2h -> h`` linear with bias, ``Layer`` one LlamaGen decoder
layer with 2-D RoPE at the position of ``f_t``, and ``output`` the target's (frozen) head. Only ``fc``
and the layer are the head's own weights; the embedding and output head are read from the target at
call time, so a head file is small and always matches its target.

Inference keeps a static per-row K/V cache for the one layer (``HeadCache``); positions are indexed by
``t`` (the position of the feature), stale entries beyond a query are masked, never read.

The head talks to its target only through :class:`~vargen.models.base.HiddenStateModel`
(``embed``, ``head``, ``hidden_size``, ``vocab_size``, ``grid``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .llamagen import GPTConfig, TransformerBlock, attention_mask, build_rope_2d

__all__ = ["DraftHeadConfig", "DraftHead", "HeadCache"]


@dataclass
class DraftHeadConfig:
    dim: int
    n_head: int
    vocab_size: int
    grid_size: int
    cls_token_num: int = 1
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_base: float = 10000

    @classmethod
    def from_target(cls, cfg: GPTConfig) -> "DraftHeadConfig":
        return cls(dim=cfg.dim, n_head=cfg.n_head, vocab_size=cfg.vocab_size, grid_size=cfg.grid_size,
                   cls_token_num=cfg.cls_token_num, multiple_of=cfg.multiple_of,
                   ffn_dim_multiplier=cfg.ffn_dim_multiplier, norm_eps=cfg.norm_eps, rope_base=cfg.rope_base)

    def layer_config(self) -> GPTConfig:
        return GPTConfig(dim=self.dim, n_layer=1, n_head=self.n_head, multiple_of=self.multiple_of,
                         ffn_dim_multiplier=self.ffn_dim_multiplier, norm_eps=self.norm_eps,
                         attn_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, token_dropout_p=0.0)


@dataclass
class HeadCache:
    k: torch.Tensor  # [B, H, L, hd]
    v: torch.Tensor

    @property
    def max_positions(self) -> int:
        return self.k.shape[2]


class DraftHead(nn.Module):
    def __init__(self, config: DraftHeadConfig):
        super().__init__()
        self.config = config
        self.fc = nn.Linear(2 * config.dim, config.dim, bias=True)
        self.layer = TransformerBlock(config.layer_config())
        head_dim = config.dim // config.n_head
        self.rope = build_rope_2d(config.grid_size, head_dim, config.cls_token_num, config.rope_base)

    def check_target(self, target) -> None:
        """``ValueError`` unless ``target`` is a HiddenStateModel of this head's width, vocabulary and grid."""
        c = self.config
        for name in ("embed", "head", "hidden_size"):
            if not hasattr(target, name):
                raise ValueError(f"a draft head needs a target with hidden states (HiddenStateModel); "
                                 f"{type(target).__name__} has no {name!r}")
        mine = (c.dim, c.vocab_size, (1, c.grid_size, c.grid_size))
        theirs = (target.hidden_size, target.vocab_size, tuple(target.grid))
        if mine != theirs:
            raise ValueError(
                f"draft head (dim={c.dim}, vocab={c.vocab_size}, grid={c.grid_size}x{c.grid_size}) does not match the "
                f"target (dim={theirs[0]}, vocab={theirs[1]}, grid={theirs[2][1]}x{theirs[2][2]})")

    @classmethod
    def from_folder(cls, folder, device=None, dtype=None) -> "DraftHead":
        """A head saved by ``vargen train draft-head``: ``config.json`` + ``model.safetensors``."""
        from .checkpoint import load_zoo_folder

        head = load_zoo_folder(folder, lambda c: cls(DraftHeadConfig(**c)), expected="llamagen_draft_head",
                               config_class=DraftHeadConfig)
        return head.to(device=device, dtype=dtype or torch.float32)

    def _rope(self, t: torch.Tensor) -> torch.Tensor:
        if self.rope.device != t.device:
            self.rope = self.rope.to(t.device)
        return self.rope[(t + self.config.cls_token_num).clamp(0, self.rope.shape[0] - 1)]

    def new_cache(self, batch: int, max_len: int) -> HeadCache:
        c = self.config
        w = self.fc.weight
        shape = (batch, c.n_head, max_len, c.dim // c.n_head)
        return HeadCache(torch.zeros(shape, dtype=w.dtype, device=w.device),
                         torch.zeros(shape, dtype=w.dtype, device=w.device))

    def forward(self, target, features: torch.Tensor, next_tokens: torch.Tensor, t: torch.Tensor,
                cache: HeadCache | None = None):
        """``features [B, n, h]`` (``f_t``), ``next_tokens [B, n]`` (``x_{t+1}``) at feature positions ``t``:
        ``[n]`` (teacher forcing, causal, no cache) or ``[B, n]`` with a cache. Returns
        ``(logits [B, n, V] for x_{t+2}, predicted features [B, n, h])``."""
        emb = target.embed(next_tokens).to(features.dtype)
        x = self.fc(torch.cat([features, emb], dim=-1))
        if cache is None:
            h = self.layer(x, self._rope(t)[None])
        else:
            B, n = next_tokens.shape
            rows = torch.arange(B, device=x.device)[:, None].expand(B, n)
            valid = torch.ones(B, cache.max_positions, dtype=torch.bool, device=x.device)
            mask = attention_mask(t, valid, cache.max_positions)[:, None]
            h = self.layer(x, self._rope(t), mask, (cache.k, cache.v), (rows, t))
        return target.head(h), h


def head_config_json(head: DraftHead, **extra) -> str:
    return json.dumps({"type": "llamagen_draft_head", "config": asdict(head.config), **extra}, indent=2)
