"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al., 2024), official key names.

A class-conditional GPT-2-like transformer with AdaLN over the token pyramid of the multi-scale
VQVAE. Scale ``k`` holds ``patch_nums[k]**2`` tokens; token i attends to token j iff
``scale(j) <= scale(i)`` (block-causal). Inputs are continuous: scale 0 is the class start token,
scale k > 0 sees the running latent f_hat (after scales < k) area-downsampled to its side.

What differs from upstream, on purpose (research/var_code.md §3): no global init monkey-patching,
no label dropout outside training, a K/V cache allocated once (no ``torch.cat`` per scale) in the
compute dtype, the AdaLN projections computed once per call, no device-bound generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import class_ids
from .checkpoint import load_strict as _load_strict
from .config import OfficialConfig
from .memory import decoder_row_bytes
from .var_kv import BudgetedLayer, BudgetedScaleCache, KVBudget
from .var_pruning import BlockPruning, TokenPruning, gather_tokens

__all__ = ["VARConfig", "VAR", "VAR_PRESETS", "ScaleKVCache", "load_state_dict_file", "load_strict"]

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass(frozen=True)
class VARConfig(OfficialConfig):
    """The official ``VAR`` constructor arguments by their official names.

    ``vocab_size`` and ``Cvae`` come from the VQVAE upstream (``vae_local``); ``flash_if_available``
    and ``fused_if_available`` only pick kernels there and are accepted and ignored here.
    """

    num_classes: int = 1000
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    cond_drop_rate: float = 0.1
    attn_l2_norm: bool = False
    patch_nums: tuple = PATCH_NUMS_256
    flash_if_available: bool = True
    fused_if_available: bool = True
    vocab_size: int = 4096
    Cvae: int = 32

    def __post_init__(self):
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "VARConfig":
        """``"d16" | "d20" | "d24" | "d30" | "d36"`` (also ``"var_d16"``), as the official builder makes them."""
        key = name.lower().removeprefix("var_").removeprefix("var-").removesuffix(".pth")
        if key not in VAR_PRESETS:
            raise ValueError(f"unknown VAR preset {name!r}; known: {', '.join(sorted(VAR_PRESETS))}")
        return replace(VAR_PRESETS[key], **overrides)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "VARConfig":
        """From an official constructor call's keyword arguments (``vae_local`` is not accepted: pass vocab/Cvae)."""
        return cls.from_dict(kwargs)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], **overrides) -> "VARConfig":
        """Read the architecture off an official state dict (depth, width, heads, classes, scales);
        ``KeyError`` naming a missing key when it is not a VAR state dict."""
        blocks = [int(k.split(".")[1]) for k in sd if k.startswith("blocks.")]
        if not blocks:
            raise KeyError("blocks.0.*")
        depth = 1 + max(blocks)
        C = sd["pos_start"].shape[-1]
        l2 = "blocks.0.attn.scale_mul_1H11" in sd
        heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if l2 else depth  # builder: heads = depth
        counts = torch.bincount(sd["lvl_1L"].flatten().long()).tolist()
        kw: dict[str, Any] = dict(
            num_classes=sd["class_emb.weight"].shape[0] - 1, depth=depth, embed_dim=C, num_heads=heads,
            mlp_ratio=sd["blocks.0.ffn.fc1.weight"].shape[0] / C, shared_aln="shared_ada_lin.1.weight" in sd,
            attn_l2_norm=l2, patch_nums=tuple(round(c**0.5) for c in counts),
            vocab_size=sd["head.weight"].shape[0], Cvae=sd["word_embed.weight"].shape[1],
        )
        kw.update(overrides)
        return cls(**kw)


def _builder(depth: int, shared_aln: bool = False, patch_nums=PATCH_NUMS_256) -> VARConfig:
    # the official builder: width 64*depth, heads = depth, stochastic depth 0.1*depth/24, l2-normalised attention
    return VARConfig(depth=depth, embed_dim=64 * depth, num_heads=depth, drop_path_rate=0.1 * depth / 24,
                     shared_aln=shared_aln, attn_l2_norm=True, patch_nums=patch_nums)


VAR_PRESETS = {f"d{d}": _builder(d) for d in (16, 20, 24, 30)}
VAR_PRESETS["d36"] = _builder(36, shared_aln=True, patch_nums=PATCH_NUMS_512)


# ------------------------------------------------------------------------------------------------
# Blocks (official module and parameter names)
# ------------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep.div_(1 - self.p)


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int, drop: float):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(C, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, C)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SelfAttention(nn.Module):
    """Fused qkv without bias + learnable q/v biases; optional per-head l2-normalised q, k with a learned temperature."""

    def __init__(self, C: int, num_heads: int, attn_drop: float, proj_drop: float, attn_l2_norm: bool):
        super().__init__()
        self.num_heads, self.head_dim, self.attn_l2_norm = num_heads, C // num_heads, attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100.0)  # temperature capped at 100
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.proj = nn.Linear(C, C)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop
        self.record: list | None = None  # calibration (var_kv.attention_recorded): attention probabilities per forward

    def forward(self, x, mask=None, kv=None, start: int = 0, scatter: tuple[torch.Tensor, int] | None = None):
        """``kv``: this layer's (K, V) cache views [B, H, L, hd]; the chunk's K/V are written at ``start``.
        ``scatter = (positions [B, n], span)``: the chunk is a subset of a ``span``-token scale (token pruning); its
        K/V go to ``start + positions`` and the rest of the span is zeroed (masked by the caller)."""
        B, n, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        q, k, v = F.linear(x, self.mat_qkv.weight, bias).view(B, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp())
            k = F.normalize(k, dim=-1)
        if isinstance(kv, BudgetedLayer):  # HACK / ScaleKV: held entries + this chunk, then the eviction
            out = kv.attend(q, k, v, mask, self.scale)
            return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, n, C).to(x.dtype)))
        if kv is not None and scatter is not None:
            K, V = kv
            positions, span = scatter
            index = positions[:, None, :, None].expand(-1, self.num_heads, -1, self.head_dim)
            for cache, new in ((K, k), (V, v)):
                cache[:, :, start:start + span].zero_().scatter_(2, index, new.to(cache.dtype))
            k, v = K[:, :, :start + span], V[:, :, :start + span]
            q = q.to(k.dtype)
        elif kv is not None:
            K, V = kv
            K[:, :, start:start + n] = k
            V[:, :, start:start + n] = v
            k, v = K[:, :, :start + n], V[:, :, :start + n]
            q = q.to(k.dtype)
        if mask is not None:
            mask = mask.to(q.dtype)
        if self.record is not None:
            scores = (q.float() @ k.float().transpose(-1, -2)) * self.scale
            self.record.append((scores if mask is None else scores + mask.float()).softmax(-1).mean(0))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0,
                                             scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, n, C).to(x.dtype)))


class AdaLNSelfAttn(nn.Module):
    """x += g1 * Attn(LN(x)(1+s1)+b1);  x += g2 * FFN(LN(x)(1+s2)+b2), the six vectors from the class embedding."""

    def __init__(self, C: int, num_heads: int, mlp_ratio: float, norm_eps: float, shared_aln: bool, drop: float,
                 attn_drop: float, drop_path: float, attn_l2_norm: bool):
        super().__init__()
        self.C = C
        self.attn = SelfAttention(C, num_heads, attn_drop, drop, attn_l2_norm)
        self.ffn = FFN(C, round(C * mlp_ratio), drop)
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def modulation(self, cond_or_gss: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(gamma1, gamma2, scale1, scale2, shift1, shift2), each [B, 1, C]; computed once per call."""
        if self.shared_aln:
            return (self.ada_gss + cond_or_gss).unbind(2)
        return self.ada_lin(cond_or_gss).view(-1, 1, 6, self.C).unbind(2)

    def forward(self, x, mod, mask=None, kv=None, start: int = 0, prune: BlockPruning | None = None):
        g1, g2, s1, s2, b1, b2 = mod
        norm1 = lambda h: self.ln_wo_grad(h).mul(s1.add(1)).add_(b1)  # noqa: E731
        norm2 = lambda h: self.ln_wo_grad(h).mul(s2.add(1)).add_(b2)  # noqa: E731
        if prune is not None and prune.prunes:  # FastVAR (inference only: no drop-path): pivotal tokens only
            keep = prune.pivotal(x)
            out = self.attn(norm1(gather_tokens(x, keep)), prune.mask(keep, start), kv, start,
                            scatter=(keep, x.shape[1])).mul_(g1)
            x = x + prune.fill("attn", out, keep)
            keep = prune.pivotal(x)
            return x + prune.fill("ffn", self.ffn(norm2(gather_tokens(x, keep))).mul(g2), keep)
        out = self.attn(norm1(x), mask, kv, start).mul_(g1)
        if prune is not None:
            prune.save("attn", out)
        x = x + self.drop_path(out)
        out = self.ffn(norm2(x)).mul(g2)
        if prune is not None:
            prune.save("ffn", out)
        return x + self.drop_path(out)


class SharedAdaLin(nn.Linear):
    def forward(self, cond_BD):
        return super().forward(cond_BD).view(-1, 1, 6, self.weight.shape[0] // 6)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, norm_eps: float):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x, cond_BD):
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


@dataclass
class ScaleKVCache:
    """K and V of every layer for all L positions, allocated once: ``k, v`` are [depth, B, H, L, hd]."""

    k: torch.Tensor
    v: torch.Tensor
    filled: int = 0  # positions written so far

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def layer(self, i: int):
        return self.k[i], self.v[i]


@dataclass
class VARCondition:
    """What one call derives from its labels: class embeddings [B, C] and every AdaLN modulation."""

    cond_BD: torch.Tensor
    block_mods: list
    labels: torch.Tensor

    @property
    def batch(self) -> int:
        return self.cond_BD.shape[0]


class VAR(nn.Module):
    """Class-conditional next-scale transformer. ``VAR(labels, x_BLCv_wo_first_l) -> logits [B, L, V]``."""

    def __init__(self, config: VARConfig | None = None, vae=None, init: bool = True, **kwargs):
        super().__init__()
        if config is None:
            config = VARConfig.from_kwargs(**kwargs)
        elif kwargs:
            raise ValueError("pass either a VARConfig or keyword arguments, not both")
        self.config = c = config
        self.patch_nums = c.patch_nums
        self.num_classes, self.vocab_size, self.V, self.Cvae = c.num_classes, c.vocab_size, c.vocab_size, c.Cvae
        self.depth, self.C, self.num_heads = c.depth, c.embed_dim, c.num_heads
        self.L = sum(pn * pn for pn in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        bounds = [0]
        for pn in self.patch_nums:
            bounds.append(bounds[-1] + pn * pn)
        self.begin_ends = list(zip(bounds[:-1], bounds[1:]))
        C = self.C

        self.word_embed = nn.Linear(self.Cvae, C)
        self.class_emb = nn.Embedding(self.num_classes + 1, C)  # the last row is the null class (CFG)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if c.shared_aln else nn.Identity()
        dpr = [c.drop_path_rate * i / max(c.depth - 1, 1) for i in range(c.depth)]  # linear stochastic-depth rule
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(C, c.num_heads, c.mlp_ratio, c.norm_eps, c.shared_aln, c.drop_rate, c.attn_drop_rate, dpr[i], c.attn_l2_norm)
            for i in range(c.depth)
        ])
        level = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).view(1, self.L, 1)
        self.register_buffer("lvl_1L", level[:, :, 0].contiguous())  # scale id of every position
        # block-causal additive mask (kept because the released checkpoints contain it)
        self.register_buffer("attn_bias_for_masking", torch.where(level >= level.transpose(1, 2), 0.0, -torch.inf).view(1, 1, self.L, self.L))
        self.head_nm = AdaLNBeforeHead(C, c.norm_eps)
        self.head = nn.Linear(C, self.V)
        if init:
            self.init_weights()
        self._vae = (None,)
        if vae is not None:
            self.attach_vae(vae)

    # -- tokenizer link (kept out of the state dict, like upstream's proxy tuple) --------------------

    def attach_vae(self, vae) -> "VAR":
        """Link the multi-scale VQVAE whose latents this model predicts (needed for sampling)."""
        q = vae.quantize
        if (q.vocab_size, q.Cvae) != (self.V, self.Cvae):
            raise ValueError(f"VQVAE has vocab {q.vocab_size} x Cvae {q.Cvae}, this VAR expects {self.V} x {self.Cvae}")
        if tuple(q.v_patch_nums) != tuple(self.patch_nums):
            raise ValueError(f"VQVAE patch_nums {tuple(q.v_patch_nums)} differ from VAR patch_nums {self.patch_nums}")
        self._vae = (vae,)
        return self

    @property
    def vae(self):
        return self._vae[0]

    @property
    def quantizer(self):
        if self._vae[0] is None:
            raise ValueError("this VAR has no VQVAE attached: build it with VAR(config, vae=...) or call model.attach_vae(vqvae)")
        return self._vae[0].quantize

    # -- init (local, never patches torch.nn globally) ----------------------------------------------

    @torch.no_grad()
    def init_weights(self, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1.0):
        """Upstream's ``init_weights`` defaults as used by its trainer (std sqrt(1/3C), tiny AdaLN gates)."""
        std = (1 / self.C / 3) ** 0.5 if init_std < 0 else init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * self.depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
            if block.shared_aln:
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                lin = block.ada_lin[-1]
                lin.weight[2 * self.C:].mul_(init_adaln)
                lin.weight[: 2 * self.C].mul_(init_adaln_gamma)
                lin.bias.zero_()

    # -- the ScaleModel interface ---------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.class_emb.weight.device

    def check_labels(self, labels, allow_null: bool = False) -> torch.Tensor:
        """Class ids ``0 .. num_classes-1`` as a LongTensor on the model's device (``ValueError`` otherwise);
        ``allow_null`` also admits ``num_classes``, the CFG null class (internal use)."""
        return class_ids(labels, self.num_classes, self.device, allow_null)

    def condition(self, labels: torch.Tensor) -> VARCondition:
        labels = self.check_labels(labels, allow_null=True)
        cond_BD = self.class_emb(labels)
        gss = self.shared_ada_lin(cond_BD)
        return VARCondition(cond_BD, [b.modulation(gss) for b in self.blocks], labels)

    def compute_dtype(self) -> torch.dtype:
        dev = self.class_emb.weight.device
        if torch.is_autocast_enabled(dev.type):
            return torch.get_autocast_dtype(dev.type)
        return self.class_emb.weight.dtype

    def new_cache(self, batch: int, dtype: torch.dtype | None = None, length: int | None = None,
                  budget: KVBudget | None = None, chunk: int | None = None) -> ScaleKVCache | BudgetedScaleCache:
        """K/V for ``length`` positions (default all L; CoDe's drafter only needs its first N scales).

        ``budget``: HACK / ScaleKV budgets (:mod:`.var_kv`): the cache then holds the budgeted earlier entries plus
        ``chunk`` slots for the scales one forward runs (default: the largest scale within ``length``)."""
        length = self.L if length is None else int(length)
        if not 0 < length <= self.L:
            raise ValueError(f"cache length must be in 1..{self.L}, got {length}")
        dev = self.class_emb.weight.device
        dtype = dtype or self.compute_dtype()
        if budget is not None:
            largest = max(e - b for b, e in self.begin_ends if e <= length)
            return BudgetedScaleCache(budget, self.depth, batch, self.num_heads, self.C // self.num_heads,
                                      max(largest, chunk or 0), self.begin_ends, dtype, dev, length)
        shape = (self.depth, batch, self.num_heads, length, self.C // self.num_heads)
        return ScaleKVCache(torch.empty(shape, device=dev, dtype=dtype), torch.empty(shape, device=dev, dtype=dtype))

    def memory_per_row(self) -> int:
        """Bytes one row of a whole call needs (``ScaleModel.memory_per_row``): the cache of every scale, the
        largest scale's forward (a forward of all scales at once when a sampler teacher-forces, the prefill of
        several scales at most L) and its logits; an upper bound."""
        return decoder_row_bytes(layers=self.depth, dim=self.C, heads=self.num_heads, kv_heads=self.num_heads,
                                 head_dim=self.C // self.num_heads, ffn=round(self.C * self.config.mlp_ratio) + 6 * self.C,
                                 vocab=self.V, slots=self.L, fed=self.L, itemsize=self.compute_dtype().itemsize)

    def embed(self, cond: VARCondition, inputs: torch.Tensor | None, first: int, last: int) -> torch.Tensor:
        """Token embeddings of scales first..last-1: start token (scale 0) / word_embed(inputs), plus level and position."""
        a, b = self.begin_ends[first][0], self.begin_ends[last - 1][1]
        B = cond.batch
        parts = []
        if first == 0:
            parts.append(cond.cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1))
        n_in = b - max(a, self.first_l)
        if n_in > 0:
            if inputs is None or inputs.shape[:2] != (B, n_in) or inputs.shape[-1] != self.Cvae:
                got = None if inputs is None else tuple(inputs.shape)
                raise ValueError(f"scales {first}..{last - 1} need inputs [{B}, {n_in}, {self.Cvae}], got {got}")
            parts.append(self.word_embed(inputs.to(self.word_embed.weight.dtype)))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return x + (self.lvl_embed(self.lvl_1L[:, a:b]) + self.pos_1LC[:, a:b])

    def forward_scales(self, cond: VARCondition, inputs: torch.Tensor | None, cache: ScaleKVCache | None, first: int,
                       last: int, logits_from: int | None = None,
                       pruning: TokenPruning | None = None) -> torch.Tensor | None:
        """Run scales ``first..last-1`` in one pass (see :class:`vargen.models.base.ScaleModel`); ``pruning``:
        FastVAR's cached token pruning for this generation (:mod:`vargen.models.var_pruning`)."""
        if not 0 <= first < last <= len(self.patch_nums):
            raise ValueError(f"bad scale range {first}..{last} for {len(self.patch_nums)} scales")
        a, b = self.begin_ends[first][0], self.begin_ends[last - 1][1]
        budgeted = isinstance(cache, BudgetedScaleCache)
        if budgeted:
            if pruning is not None:
                raise ValueError("FastVAR pruning and a K/V budget do not combine (yet): use one of them")
            if cache.batch != cond.batch or a != cache.filled:
                raise ValueError(f"a budgeted cache runs its scales in order: scale {first} starts at {a}, the cache "
                                 f"is filled up to {cache.filled} ({cache.batch} rows, the condition {cond.batch})")
            cache.begin(first, last)
        elif cache is not None:
            if cache.batch != cond.batch:
                raise ValueError(f"cache holds {cache.batch} rows but the condition has {cond.batch}")
            if a > cache.filled:
                raise ValueError(f"scale {first} starts at position {a} but the cache is filled only up to {cache.filled}")
            if b > cache.k.shape[3]:
                raise ValueError(f"scales up to {last - 1} need {b} cache positions; this cache holds {cache.k.shape[3]}")
        elif first != 0:
            raise ValueError("without a cache the pass must start at scale 0")
        x = self.embed(cond, inputs, first, last)
        mask = self.attn_bias_for_masking[0, 0, a:b, a if budgeted else 0:b] if last - first > 1 else None
        for i, block in enumerate(self.blocks):
            prune = None if pruning is None else pruning.block(i, first, last, self.begin_ends, self.patch_nums)
            x = block(x, cond.block_mods[i], mask, cache.layer(i) if cache is not None else None, a, prune)
        if cache is not None:
            cache.filled = b
        if logits_from is None:
            return None
        return self.get_logits(x[:, self.begin_ends[logits_from][0] - a:], cond.cond_BD)

    def get_logits(self, h: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        # upstream runs the head in float32 (under autocast); here in the weights' dtype when they are not
        return self.head(self.head_nm(h.float(), cond_BD).to(self.head.weight.dtype)).float()

    def forward(self, labels: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Teacher forcing: logits [B, L, V]; entry i predicts token i. Labels are dropped to the null
        class with probability ``cond_drop_rate`` only in training mode (CFG training). As upstream, the
        null class ``num_classes`` itself is a valid label here."""
        labels = self.check_labels(labels, allow_null=True)
        if self.training and self.config.cond_drop_rate > 0:
            drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.config.cond_drop_rate
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.forward_scales(self.condition(labels), x_BLCv_wo_first_l, None, 0, len(self.patch_nums), logits_from=0)

    # -- checkpoints ------------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder, vae=None, dtype: torch.dtype = torch.float32) -> "VAR":
        """A VAR saved as ``model.safetensors`` + ``config.json`` (``vargen train var``); ``vae`` is attached."""
        from .checkpoint import load_zoo_folder

        model = load_zoo_folder(folder, lambda c: cls(VARConfig.from_kwargs(**c), init=False), expected="var").to(dtype)
        return model.attach_vae(vae) if vae is not None else model

    @classmethod
    def from_checkpoint(cls, path, config: VARConfig | str | None = None, vae=None, trusted: bool = False) -> "VAR":
        """Strictly load ``var_d{16,20,24,30,36}.pth`` (or a .pt / .safetensors / trainer checkpoint).

        ``config``: a VARConfig, a preset name, or None to read the architecture off the file.
        """
        sd = load_state_dict_file(path, trusted=trusted)
        if isinstance(config, str):
            config = VARConfig.preset(config)
        if config is None:
            try:
                config = VARConfig.from_state_dict(sd)
            except KeyError as e:
                raise ValueError(f"{path} does not look like a VAR checkpoint (no {e.args[0]!r})") from None
        with torch.device("meta"):  # no allocation or init for weights that are about to be replaced
            model = cls(config, init=False)
        load_strict(model, sd, what=str(path), assign=True)
        if vae is not None:
            model.attach_vae(vae)
        return model.eval()


# ------------------------------------------------------------------------------------------------
# Checkpoint files
# ------------------------------------------------------------------------------------------------



def load_state_dict_file(path, trusted: bool = False, prefer: tuple[str, ...] = ("var_wo_ddp",)) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle, unwrapping trainer wrappers
    (``{"trainer": {"var_wo_ddp": ...}}``, ``state_dict``, ``model``, ``module.`` prefixes); pickles
    load weights-only unless ``trusted`` (:mod:`vargen.models.checkpoint`)."""
    from .checkpoint import read_state_dict

    return read_state_dict(path, prefer=prefer, trusted=trusted,
                           missing_hint="the official VAR/VQVAE weights are on the Hugging Face repo FoundationVision/var "
                                        "(var_d16.pth ... var_d36.pth, vae_ch160v4096z32.pth)")


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], what: str = "checkpoint", assign: bool = False) -> None:
    """The shared strict loader; VQVAE training statistics (``ema_vocab_hit_SV``) may differ in shape."""
    _load_strict(model, sd, f"{type(model).__name__} ({what})", assign=assign, ignore_shape=("ema_vocab_hit_SV",))
