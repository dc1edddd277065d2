"""Cosmos-1.0 Autoregressive (NVIDIA, "Cosmos World Foundation Model Platform", arXiv 2501.03575), checkpoint-faithful.

A Llama-style decoder over discrete video tokens (the DV tokenizer's FSQ indices, raster order t, h, w):
pre-norm blocks with QK-norm (one RMSNorm over ``head_dim`` shared by all heads), GQA, SwiGLU, untied
embedding and output, and a 3-D RoPE applied half-split (rotation pairs ``(j, j + head_dim/2)``) whose
angle vector is ``[t * f_t, h * f_s, w * f_s]`` (the 12B/13B scale it with YaRN). The Video2World models
add cross-attention to text-encoder features in every layer, a sin-cos absolute position table (stored in
bfloat16, added before *every* layer) and a ``<bov>`` token at position 0 whose RoPE and absolute rows are
zero; their input embedding has extra rows for ``<bov>`` (the vocabulary rounded up to 64), the output
layer does not.

Released ``model.pt`` files are flat dicts with a ``model.`` prefix; ``_extra_state`` entries
(TransformerEngine FP8 state) are dropped and the rest loads strictly (:func:`load_cosmos_weights`).

As a :class:`~vargen.models.base.TokenModel`: the condition is the context (the first ``context_frames``
latent frames of the clip, and for Video2World the text features), written once by ``prefill``; the
sampled grid is the remaining ``(T - context_frames, H, W)`` frames, and ``frame_before(cond)`` hands the
last context frame to proposers (the temporal Jacobi init). Rows keep per-row positions in a static cache
(rollback moves a pointer); cross-attention keys and values are computed once per call, at the prefill.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..decode import (DecodePlan, KVCache, LineEviction, LineSlots, add_first_query_attention_, layer_views,
                      prefix_plan, write_rows_)
from .base import TextCondition
from .config import OfficialConfig
from .memory import decoder_row_bytes
from .parts import OutputHeadPlacement
from .llamagen import RMSNorm

__all__ = ["CosmosConfig", "CosmosTransformer", "VideoCondition", "COSMOS_PRESETS",
           "cosmos_config", "load_cosmos_weights", "rope_3d_table", "sincos_3d_table"]


@dataclass
class CosmosConfig(OfficialConfig):
    """The official ``ModelConfig`` fields (names and meaning), plus the tokenizer config's ``training_type``
    ("video_to_video", or "text_to_video" for Video2World: a ``<bov>`` token first) and vargen's
    ``context_frames`` (latent frames given as the condition; the official pipeline uses 1 or 2)."""

    dim: int = 4096
    n_layers: int = 16
    n_heads: int = 32
    n_kv_heads: int | None = 8
    head_dim: int | None = None
    vocab_size: int = 64000
    ffn_hidden_size: int = 14336
    norm_eps: float = 1e-5
    rope_theta: float = 500000
    apply_abs_pos_emb: bool = False
    max_batch_size: int = 1
    max_seq_len: int = 12800
    fuse_qkv: bool = False
    causal_mask: bool = True
    norm_type: str = "rmsnorm"
    precision: str = "bfloat16"
    use_qk_normalization: bool = True
    apply_yarn: bool = False
    yarn_scale: float | None = None
    yarn_beta_fast: float | None = None
    yarn_beta_slow: float | None = None
    original_seq_len: int = 8192
    rope_dim: str = "3D"
    pytorch_rope_version: str = "v2"
    original_latent_shape: list[int] | None = None
    pad_to_multiple_of: int | None = 64
    insert_cross_attn: bool = False
    insert_cross_attn_every_k_layers: int = 1
    context_dim: int = 1024
    num_video_frames: int = 33
    video_height: int = 640
    video_width: int = 1024
    video_latent_shape: list[int] = field(default_factory=lambda: [5, 40, 64])
    training_type: str = "video_to_video"
    context_frames: int = 1

    # official fields that do not change the network (paths, the multimodal encoder of other models)
    IGNORED = ("tokenizer", "ckpt_dir", "ckpt_path", "vision_encoder", "vision_encoder_in_channels", "mm_projector")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def bov(self) -> bool:
        return self.training_type == "text_to_video"

    @property
    def num_video_tokens(self) -> int:
        return math.prod(self.video_latent_shape)

    @property
    def embedding_rows(self) -> int:
        """Video2World's loader adds ``<bov>`` and rounds the input embedding up to a multiple of 64."""
        return (self.vocab_size + 1 + 63) // 64 * 64 if self.bov else self.vocab_size

    def validate(self) -> None:
        checks = {
            "rope_dim": (self.rope_dim, ("3D",)), "pytorch_rope_version": (self.pytorch_rope_version, ("v2",)),
            "norm_type": (self.norm_type, ("rmsnorm",)), "training_type": (self.training_type,
                                                                          ("video_to_video", "text_to_video")),
            "use_qk_normalization": (self.use_qk_normalization, (True,)), "causal_mask": (self.causal_mask, (True,)),
            "fuse_qkv": (self.fuse_qkv, (False,)),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: the released Cosmos-1.0 AR models use {allowed[0]!r} "
                                 f"(the only setting implemented)")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")
        if self.head_size % 2:
            raise ValueError(f"head_dim={self.head_size} must be even")
        if len(self.video_latent_shape) != 3:
            raise ValueError(f"video_latent_shape must be [T, H, W], got {self.video_latent_shape}")
        if not self.bov and self.context_frames < 1:
            raise ValueError("a video_to_video model needs context_frames >= 1 (its first token has no predecessor)")
        if not 0 <= self.context_frames < self.video_latent_shape[0]:
            raise ValueError(f"context_frames={self.context_frames} must leave frames to generate "
                             f"(the clip has {self.video_latent_shape[0]} latent frames)")
        if self.insert_cross_attn and self.insert_cross_attn_every_k_layers != 1:
            raise ValueError("insert_cross_attn_every_k_layers != 1 is not used by any released model")
        if self.apply_yarn and not (self.yarn_scale and self.yarn_beta_fast and self.yarn_beta_slow
                                    and self.original_latent_shape):
            raise ValueError("apply_yarn needs yarn_scale, yarn_beta_fast, yarn_beta_slow and original_latent_shape")
        if self.rows_needed > self.max_seq_len:
            raise ValueError(f"max_seq_len={self.max_seq_len} < {self.rows_needed} positions of a whole clip")

    @property
    def rows_needed(self) -> int:
        return self.num_video_tokens + int(self.bov)


_BASE = dict(dim=4096, n_layers=16, n_heads=32, n_kv_heads=8, ffn_hidden_size=14336, vocab_size=64000,
             video_latent_shape=[5, 40, 64], num_video_frames=33, pad_to_multiple_of=64)
_LARGE = dict(_BASE, dim=5120, n_layers=40, head_dim=128, apply_yarn=True, yarn_scale=2, yarn_beta_fast=4,
              yarn_beta_slow=1, original_latent_shape=[3, 40, 64])
_V2W = dict(apply_abs_pos_emb=True, insert_cross_attn=True, context_dim=1024, training_type="text_to_video",
            max_seq_len=12864)
COSMOS_PRESETS: dict[str, dict[str, Any]] = {
    "Cosmos-1.0-Autoregressive-4B": dict(_BASE, max_seq_len=12800),
    "Cosmos-1.0-Autoregressive-5B-Video2World": dict(_BASE, **_V2W),
    "Cosmos-1.0-Autoregressive-12B": dict(_LARGE, max_seq_len=12800),
    "Cosmos-1.0-Autoregressive-13B-Video2World": dict(_LARGE, **_V2W),
}


def cosmos_config(preset: str, **overrides: Any) -> CosmosConfig:
    if preset not in COSMOS_PRESETS:
        raise ValueError(f"unknown Cosmos preset {preset!r}; choose from {', '.join(COSMOS_PRESETS)}")
    return CosmosConfig(**{**COSMOS_PRESETS[preset], **overrides})


# ------------------------------------------------------------------------------------------------
# Position tables
# ------------------------------------------------------------------------------------------------


def _table_rows(cfg: CosmosConfig, body: torch.Tensor) -> torch.Tensor:
    """Prepend the zero ``<bov>`` row (text_to_video) and zero-pad to ``pad_to_multiple_of`` (and at least
    ``max_seq_len`` rows, so every cache position has a row)."""
    rows = [torch.zeros(1, body.shape[1], dtype=body.dtype)] if cfg.bov else []
    table = torch.cat(rows + [body])
    n = table.shape[0]
    if cfg.pad_to_multiple_of:
        n = -(-n // cfg.pad_to_multiple_of) * cfg.pad_to_multiple_of
    n = max(n, cfg.max_seq_len)
    return torch.cat([table, torch.zeros(n - table.shape[0], table.shape[1], dtype=table.dtype)])


def _grid_coords(shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T, H, W = shape
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    return t.flatten(), h.flatten(), w.flatten()


def _yarn(freqs: torch.Tensor, scale: float, beta_fast: float, beta_slow: float, length: int) -> torch.Tensor:
    """YaRN (arXiv 2309.00071) frequency blend: high frequencies (many turns over ``length``) keep their value,
    low ones are divided by ``scale``, a linear ramp between ``2 pi beta_slow / L`` and ``2 pi beta_fast / L``."""
    hi, lo = 2 * math.pi * beta_fast / length, 2 * math.pi * beta_slow / length
    m = ((freqs - lo) / (hi - lo)).clamp(0, 1)
    return freqs * ((1 - m) / scale + m)


def rope_3d_table(cfg: CosmosConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[rows, head_dim]`` per sequence position: ``head_dim/2`` angles ``[t f_t, h f_s, w f_s]``
    (``dim_s = floor(head_dim/6) * 2``, ``dim_t = head_dim - 2 dim_s``, ``f = theta^(-2k/dim)``) repeated for
    the two halves. YaRN uses the original latent height for the spatial and its frame count for the
    temporal frequencies (the official code's choice; the width is unused), and no attention scale."""
    hd = cfg.head_size
    dim_s = hd // 6 * 2
    dim_t = hd - 2 * dim_s
    f_s = 1.0 / cfg.rope_theta ** (torch.arange(0, dim_s, 2)[: dim_s // 2].float() / dim_s)
    f_t = 1.0 / cfg.rope_theta ** (torch.arange(0, dim_t, 2)[: dim_t // 2].float() / dim_t)
    if cfg.apply_yarn:
        T0, H0, _ = cfg.original_latent_shape
        f_s = _yarn(f_s, cfg.yarn_scale, cfg.yarn_beta_fast, cfg.yarn_beta_slow, H0)
        f_t = _yarn(f_t, cfg.yarn_scale, cfg.yarn_beta_fast, cfg.yarn_beta_slow, T0)
    t, h, w = _grid_coords(cfg.video_latent_shape)
    angles = torch.cat([torch.outer(t.float(), f_t), torch.outer(h.float(), f_s), torch.outer(w.float(), f_s)], 1)
    table = _table_rows(cfg, torch.cat([angles, angles], 1))
    return table.cos(), table.sin()


def sincos_3d_table(cfg: CosmosConfig) -> torch.Tensor:
    """Video2World's absolute positions ``[rows, dim]``: per axis ``[sin(p w), cos(p w)]`` with
    ``w_k = 10000^(-k / (n/2))``, axes ``[t, h, w]`` over ``dim_t = dim - 2 dim_s``, ``dim_s = floor(dim/6) * 2``;
    computed in float64 and stored in bfloat16 as the official module does."""
    dim_s = cfg.dim // 6 * 2
    dim_t = cfg.dim - 2 * dim_s

    def axis(pos: torch.Tensor, n: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(n // 2, dtype=torch.float64) / (n / 2))
        out = torch.outer(pos.double(), omega)
        return torch.cat([out.sin(), out.cos()], 1)

    t, h, w = _grid_coords(cfg.video_latent_shape)
    return _table_rows(cfg, torch.cat([axis(t, dim_t), axis(h, dim_s), axis(w, dim_s)], 1)).to(torch.bfloat16)


def rotate_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x cos + rotate_half(x) sin`` with ``rotate_half([a, b]) = [-b, a]`` over the halves of the last dim."""
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], dim=-1) * sin


# ------------------------------------------------------------------------------------------------
# Modules (official names)
# ------------------------------------------------------------------------------------------------


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Attention(nn.Module):
    """Self- or cross-attention with QK-norm and GQA (KV head ``j`` serves query heads ``j*n_rep .. (j+1)*n_rep-1``)."""

    def __init__(self, cfg: CosmosConfig, kv_dim: int | None = None):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.kv_heads, cfg.head_size
        self.wq = nn.Linear(cfg.dim, self.n_heads * self.hd, bias=False)
        self.wk = nn.Linear(kv_dim or cfg.dim, self.n_kv * self.hd, bias=False)
        self.wv = nn.Linear(kv_dim or cfg.dim, self.n_kv * self.hd, bias=False)
        self.wo = nn.Linear(self.n_heads * self.hd, cfg.dim, bias=False)
        self.q_norm = RMSNorm(self.hd, 1e-5)  # the Attention defaults, whatever norm_eps says
        self.k_norm = RMSNorm(self.hd, 1e-5)

    def project_kv(self, src: torch.Tensor, cos=None, sin=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, n_kv, S, hd]`` keys (normed, rotated when ``cos`` is given) and values."""
        B, S, _ = src.shape
        k = self.k_norm(self.wk(src).view(B, S, self.n_kv, self.hd))
        v = self.wv(src).view(B, S, self.n_kv, self.hd)
        if cos is not None:
            k = rotate_half_split(k, cos, sin)
        return k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, cos=None, sin=None,
               causal: bool = False, probe: torch.Tensor | None = None) -> torch.Tensor:
        """``mask``: bool, True = attend (None with ``causal``: plain causal self-attention). ``probe [B, L]``: the
        first query's attention probabilities, summed over heads, are added to it (K/V eviction scores)."""
        B, S, _ = x.shape
        q = self.q_norm(self.wq(x).view(B, S, self.n_heads, self.hd))
        if cos is not None:
            q = rotate_half_split(q, cos, sin)
        rep = self.n_heads // self.n_kv
        k, v = k.to(q.dtype).repeat_interleave(rep, dim=1), v.to(q.dtype).repeat_interleave(rep, dim=1)
        if probe is not None:
            add_first_query_attention_(probe, q.transpose(1, 2), k, mask)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.wo(y.transpose(1, 2).reshape(B, S, -1))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: CosmosConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        if cfg.insert_cross_attn:
            self.cross_attention = Attention(cfg, kv_dim=cfg.context_dim)
            self.cross_attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden_size)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, cos, sin, mask, kv=None, write=None, cross=None, probe=None):
        """``kv``: this layer's cache ``(k, v)`` and ``write`` = ``(rows, positions)``; without them the keys
        are this call's own (teacher forcing, causal). ``cross``: ``(k, v, mask)`` of the context."""
        h = self.attention_norm(x)
        k, v = self.attention.project_kv(h, cos, sin)
        if kv is not None:
            rows, pos = write
            write_rows_(kv[0], rows, pos, k)
            write_rows_(kv[1], rows, pos, v)
            L = mask.shape[-1]
            k, v = kv[0][:, :, :L], kv[1][:, :, :L]
        h = x + self.attention.attend(h, k, v, mask, cos, sin, causal=True, probe=probe)
        if cross is not None:
            ck, cv, cmask = cross
            h = h + self.cross_attention.attend(self.cross_attention_norm(h), ck, cv, cmask)
        return h + self.feed_forward(self.ffn_norm(h))


# ------------------------------------------------------------------------------------------------
# Conditions and cache
# ------------------------------------------------------------------------------------------------


@dataclass
class VideoCondition:
    """The context of a clip: ``frames [B, c*H*W]`` token ids of the first ``c`` latent frames (raster order),
    and for Video2World the text-encoder features (``text.mask``: 1 for real tokens; None attends to every
    row, as the official pipeline does with its zero-padded T5 features)."""

    frames: torch.Tensor
    text: TextCondition | None = None

    @property
    def batch(self) -> int:
        return self.frames.shape[0]

    def to(self, device) -> "VideoCondition":
        return VideoCondition(self.frames.to(device), None if self.text is None else self.text.to(device))


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


class CosmosTransformer(OutputHeadPlacement, nn.Module):
    """Cosmos-1.0 AR ``Transformer`` (state-dict keys without the ``model.`` prefix); a :class:`TokenModel`
    (and :class:`HiddenStateModel`) over the frames after the context."""

    def __init__(self, config: CosmosConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        self.tok_embeddings = nn.Embedding(cfg.embedding_rows, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # not buffers: never in the state dict (as upstream)
        self.rope_cos, self.rope_sin = rope_3d_table(cfg)
        self.abs_pos = sincos_3d_table(cfg) if cfg.apply_abs_pos_emb else None

    def init_weights(self, std: float = 0.02) -> None:
        """Training initialisation for the demo (N(0, std) weights, unit norms)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)

    # -- TokenModel attributes ------------------------------------------------------------------------
    family = "cosmos"

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def context_frames(self) -> int:
        return self.config.context_frames

    @property
    def grid(self) -> tuple[int, int, int]:
        T, H, W = self.config.video_latent_shape
        return (T - self.context_frames, H, W)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def frame_tokens(self) -> int:
        _, H, W = self.config.video_latent_shape
        return H * W

    @property
    def prefix_len(self) -> int:
        """Sequence positions before generated token 0: ``<bov>`` (Video2World) and the context frames."""
        return int(self.config.bov) + self.context_frames * self.frame_tokens

    @property
    def bov_id(self) -> int | None:
        return self.config.vocab_size if self.config.bov else None

    conditional = True
    guidable = False  # no unconditional branch was trained: cfg_scale must stay 1

    # -- conditions -------------------------------------------------------------------------------------
    def as_condition(self, cond) -> VideoCondition:
        return cond if isinstance(cond, VideoCondition) else VideoCondition(cond)

    def check_cond(self, cond) -> int:
        """A :class:`VideoCondition` (or, without cross-attention, the context tokens alone): ``frames`` of
        ``context_frames * H * W`` ids in ``0 .. vocab_size-1`` per row; text features ``[B, L, context_dim]``
        exactly when the model has cross-attention. Returns the batch size."""
        cfg = self.config
        if not isinstance(cond, VideoCondition) and not torch.is_tensor(cond):
            raise ValueError(f"a Cosmos model takes a VideoCondition (context frame tokens [B, "
                             f"{self.prefix_len - int(cfg.bov)}]), got {type(cond).__name__}")
        cond = self.as_condition(cond)
        frames = cond.frames
        want = self.context_frames * self.frame_tokens
        if frames.dtype not in (torch.int32, torch.int64) or frames.dim() != 2 or frames.shape[1] != want:
            raise ValueError(f"context frames must be an integer tensor [B, {want}] ({self.context_frames} latent "
                             f"frame(s) of {self.frame_tokens} tokens), got {frames.dtype} {tuple(frames.shape)}")
        if frames.shape[0] == 0:
            raise ValueError("no context given: the batch is empty")
        if want and (int(frames.min()) < 0 or int(frames.max()) >= cfg.vocab_size):
            raise ValueError(f"context token ids must be in 0..{cfg.vocab_size - 1}")
        if cfg.insert_cross_attn:
            if cond.text is None:
                raise ValueError("this Video2World model needs text features (VideoCondition.text)")
            feats = cond.text.features
            if feats.dim() != 3 or feats.shape[0] != frames.shape[0] or feats.shape[2] != cfg.context_dim:
                raise ValueError(f"text features must be [{frames.shape[0]}, L, {cfg.context_dim}], "
                                 f"got {tuple(feats.shape)}")
        elif cond.text is not None:
            raise ValueError("this model has no cross-attention: it takes no text features")
        return frames.shape[0]

    def guidance_cond(self, cond):
        raise ValueError("Cosmos-1.0 Autoregressive has no unconditional branch: use cfg_scale=1")

    def frame_before(self, cond) -> torch.Tensor | None:
        """``[B, H*W]``: the latent frame just before generated token 0 (the last context frame), or None."""
        if self.context_frames == 0:
            return None
        return self.as_condition(cond).frames[:, -self.frame_tokens:]

    # -- HiddenStateModel ---------------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_embeddings(tokens)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden).float()

    def codebook(self) -> torch.Tensor:
        """Token embeddings of the video tokens; the pipeline replaces this by the DV tokenizer's FSQ codes."""
        return self.tok_embeddings.weight[: self.vocab_size].detach()

    # -- the network ---------------------------------------------------------------------------------------
    def _tables(self, positions: torch.Tensor):
        if self.rope_cos.device != positions.device:
            self.rope_cos, self.rope_sin = self.rope_cos.to(positions.device), self.rope_sin.to(positions.device)
            if self.abs_pos is not None:
                self.abs_pos = self.abs_pos.to(positions.device)
        # positions past the table only occur in fixed-shape windows that overrun the clip; unused outputs
        pos = positions.clamp(max=self.rope_cos.shape[0] - 1)
        cos, sin = self.rope_cos[pos][:, :, None], self.rope_sin[pos][:, :, None]  # [B, S, 1, hd]
        return cos, sin, None if self.abs_pos is None else self.abs_pos[pos]

    def _run(self, h, positions, cross=None, return_hidden=False, plan: DecodePlan | None = None,
             cache: KVCache | None = None):
        """The layers at sequence ``positions [B, S]``: causal over this call's own keys (teacher forcing), or --
        with a ``plan`` -- over the cache, K/V written and attention masked where the plan (or an evicting cache)
        says."""
        cos, sin, abs_pos = self._tables(positions)
        views = None if plan is None else layer_views(plan, cache)
        for i, layer in enumerate(self.layers):
            if abs_pos is not None:
                h = h + abs_pos.to(h.dtype)
            c = None if cross is None else (*cross[0][i], cross[1])
            if views is None:
                h = layer(h, cos.to(h.dtype), sin.to(h.dtype), None, cross=c)
            else:
                h = layer(h, cos.to(h.dtype), sin.to(h.dtype), views.mask(i), cache.layer(i), views.write(i), c,
                          views.probe(i))
        if views is not None:
            views.finish()
        hidden = self.norm(h)
        logits = self.output(hidden).float()
        if plan is not None:
            logits, hidden = plan.read(logits), plan.read(hidden)
        return (logits, hidden) if return_hidden else logits

    def _cross(self, text: TextCondition | None):
        """Per-layer context K/V and the ``[B, 1, 1, Lc]`` mask (None: attend to every context row)."""
        if not self.config.insert_cross_attn:
            return None
        feats = text.features.to(self.dtype)
        kv = [layer.cross_attention.project_kv(feats) for layer in self.layers]
        mask = None if text.mask is None else text.mask.bool()[:, None, None, :]
        return kv, mask

    def forward_sequence(self, tokens: torch.Tensor, text: TextCondition | None = None) -> torch.Tensor:
        """The official ``Transformer.forward`` on whole sequences at positions ``0 .. S-1`` (``<bov>`` included
        where the model has one): logits ``[B, S, V]``, entry ``i`` predicting element ``i + 1``."""
        B, S = tokens.shape
        positions = torch.arange(S, device=tokens.device).expand(B, S)
        return self._run(self.tok_embeddings(tokens), positions, self._cross(text))

    def logits_all(self, tokens: torch.Tensor, text: TextCondition | None = None) -> torch.Tensor:
        """Training: :meth:`forward_sequence`."""
        return self.forward_sequence(tokens, text)

    def logits(self, cond, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing over the generated grid: ``[B, num_tokens, V]``, entry ``i`` predicting ``tokens[:, i]``."""
        cond = self.as_condition(cond)
        prefix = self._prefix_ids(cond)
        seq = torch.cat([prefix, tokens[:, : self.num_tokens - 1].to(prefix.device)], 1)
        out = self.forward_sequence(seq, cond.text)
        return out[:, prefix.shape[1] - 1:]

    def _prefix_ids(self, cond: VideoCondition) -> torch.Tensor:
        frames = cond.frames.to(self.device).long()
        if self.config.bov:
            bov = torch.full((frames.shape[0], 1), self.bov_id, dtype=torch.long, device=frames.device)
            frames = torch.cat([bov, frames], 1)
        return frames

    # -- TokenModel: the cache protocol ------------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                  eviction: LineEviction | None = None) -> KVCache:
        """Static K/V for ``batch`` rows: the prefix plus ``max_len`` generated tokens (default the grid);
        ``eviction``: ``budget + line + window`` image slots instead (LineAR, as in ``GPT.new_cache``)."""
        cfg = self.config
        max_len = self.num_tokens if max_len is None else max_len
        slots = None
        if eviction is not None:
            eviction.check(self.num_tokens)
            n = min(eviction.budget + eviction.line + max(max_len - self.num_tokens, 1), max_len)
            L = self.prefix_len + n
            slots = LineSlots(eviction, cfg.n_layers, batch, n, self.device)
        else:
            L = (self.prefix_len + max_len + 7) // 8 * 8
        return KVCache.allocate(batch, cfg.n_layers, cfg.kv_heads, L, cfg.head_size, dtype or self.dtype, self.device,
                                prefix=self.prefix_len, eviction=slots)

    def memory_per_row(self, cond, fed: int, max_len: int) -> int:
        """Bytes one row needs: its cache for the context and ``max_len`` generated tokens (and the cross-attention
        K/V of the text), one forward of ``fed`` tokens (the prefill's context at least); an upper bound."""
        cfg = self.config
        cross = 0
        text = getattr(cond, "text", None)
        if cfg.insert_cross_attn and text is not None:
            cross = text.features.shape[1]
        return decoder_row_bytes(layers=cfg.n_layers, dim=cfg.dim, heads=cfg.n_heads, kv_heads=cfg.kv_heads,
                                 head_dim=cfg.head_size, ffn=cfg.ffn_hidden_size, vocab=cfg.vocab_size,
                                 slots=self.prefix_len + max_len + 8, fed=max(fed, self.prefix_len),
                                 itemsize=self.dtype.itemsize, cross_slots=cross)

    def prefill(self, cond, cache: KVCache, return_hidden: bool = False):
        """Write ``<bov>`` and the context frames (and the context's cross-attention K/V); returns the logits
        ``[B, V]`` of generated token 0."""
        cond = self.as_condition(cond)
        if cache.eviction is not None:
            cache.eviction.reset_()
        crossed = self._cross(cond.text)
        if crossed is not None:
            cache.cross, cache.cross_mask = crossed
        prefix = self._prefix_ids(cond)
        P = prefix.shape[1]
        out = self._decode(self.tok_embeddings(prefix), prefix_plan(cache, P, keys=P), cache, return_hidden)
        if return_hidden:
            return out[0][:, -1], out[1][:, -1]
        return out[:, -1]

    def forward(self, tokens: torch.Tensor, plan: DecodePlan, cache: KVCache, return_hidden: bool = False):
        """Cached decode over a :class:`~vargen.decode.DecodePlan`: logits ``[B, n, V]`` (entry ``i`` predicts what
        follows token ``i``)."""
        return self._decode(self.tok_embeddings(plan.tokens(tokens)), plan, cache, return_hidden)

    def _decode(self, h, plan: DecodePlan, cache: KVCache, return_hidden: bool):
        cross = None if cache.cross is None else (cache.cross, cache.cross_mask)
        return self._run(h, plan.positions, cross, return_hidden, plan, cache)

    # -- loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder, dtype: torch.dtype = torch.float32) -> "CosmosTransformer":
        from .checkpoint import load_zoo_folder

        return load_zoo_folder(folder, lambda c: cls(CosmosConfig.from_dict(c)), expected="cosmos_ar").to(dtype)


def load_cosmos_weights(model: CosmosTransformer, path_or_state, trusted: bool = False) -> CosmosTransformer:
    """A released ``model.pt`` (flat dict, ``model.`` prefix, bf16) or safetensors, loaded as the official loader
    does: ``checkpoint["model"]`` when present, the ``model.`` prefix stripped, ``_extra_state`` keys dropped,
    then strictly. Pickles are read weights-only unless ``trusted``."""
    from .checkpoint import load_strict, read_state_dict

    state = path_or_state if isinstance(path_or_state, dict) else read_state_dict(path_or_state, trusted=trusted)
    if isinstance(state.get("model"), dict):
        state = state["model"]
    state = {k.removeprefix("model."): v for k, v in state.items() if "_extra_state" not in k}
    cfg = model.config
    emb = state.get("tok_embeddings.weight")
    hint = ""
    if emb is not None:
        hint = (f"the checkpoint's embedding is {tuple(emb.shape)}; this config expects "
                f"({cfg.embedding_rows}, {cfg.dim}) (Video2World checkpoints have the <bov> rows: "
                f"training_type='text_to_video')")
    load_strict(model, {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in state.items()},
                "Cosmos transformer", hint=hint)
    return model
