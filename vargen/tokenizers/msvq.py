"""VAR's multi-scale residual VQVAE (``vae_ch160v4096z32.pth``), official key names.

Encoder/decoder are the LDM "vq-f16" convnets (channel multipliers (1,1,2,2,4), 2 res-blocks per
level in the encoder, 3 in the decoder, self-attention at the lowest resolution and in the middle).
The quantiser works over scales ``v_patch_nums`` (VAR paper, Alg. 1/2): starting from the residual
``r = f`` and ``f_hat = 0``, each scale area-downsamples ``r`` to ``pn x pn``, picks the nearest
codes, bicubic-upsamples their embeddings back to full size, refines them with a phi convolution
``phi(h) = (1 - rho) h + rho conv(h)`` and adds the result to ``f_hat`` (and removes it from ``r``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import Downsample, ResnetBlock, Upsample, group_norm

__all__ = ["VQVAEConfig", "MultiScaleVQVAE", "MultiScaleQuantizer"]


# ------------------------------------------------------------------------------------------------
# Encoder / decoder (LDM vq-f16 layout)
# ------------------------------------------------------------------------------------------------


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with one fused 1x1 ``qkv`` conv (VAR's key layout)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        w = torch.bmm(q.transpose(1, 2), k).mul_(C**-0.5).softmax(dim=2)  # [B, HW(q), HW(k)]
        h = torch.bmm(v, w.transpose(1, 2)).view(B, C, H, W)
        return x + self.proj_out(h)


CH_MULT = (1, 1, 2, 2, 4)  # fixed inside the official VQVAE class (vq-f16); configurable here for small demos


class Encoder(nn.Module):
    def __init__(self, ch: int, z_channels: int, dropout: float, num_res_blocks: int = 2, ch_mult=CH_MULT):
        super().__init__()
        mults = tuple(ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        widths = [ch * m for m in (1,) + mults]
        for level in range(len(mults)):
            stage = nn.Module()
            w_in, w_out = widths[level], widths[level + 1]
            stage.block = nn.ModuleList([ResnetBlock(w_in if i == 0 else w_out, w_out, dropout) for i in range(num_res_blocks)])
            last = level == len(mults) - 1
            stage.attn = nn.ModuleList([AttnBlock(w_out) for _ in range(num_res_blocks)] if last else [])
            if not last:
                stage.downsample = Downsample(w_out)
            self.down.append(stage)
        w = widths[-1]
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetBlock(w, w, dropout), AttnBlock(w), ResnetBlock(w, w, dropout)
        self.norm_out = group_norm(w)
        self.conv_out = nn.Conv2d(w, z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, z_channels: int, dropout: float, num_res_blocks: int = 2, ch_mult=CH_MULT):
        super().__init__()
        mults = tuple(ch_mult)
        w = ch * mults[-1]
        self.conv_in = nn.Conv2d(z_channels, w, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetBlock(w, w, dropout), AttnBlock(w), ResnetBlock(w, w, dropout)
        stages = []
        for level in reversed(range(len(mults))):  # built coarse -> fine, stored fine -> coarse (official order)
            stage = nn.Module()
            w_out = ch * mults[level]
            stage.block = nn.ModuleList([ResnetBlock(w if i == 0 else w_out, w_out, dropout) for i in range(num_res_blocks + 1)])
            w = w_out
            last = level == len(mults) - 1
            stage.attn = nn.ModuleList([AttnBlock(w) for _ in range(num_res_blocks + 1)] if last else [])
            if level != 0:
                stage.upsample = Upsample(w)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = group_norm(w)
        self.conv_out = nn.Conv2d(w, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ------------------------------------------------------------------------------------------------
# Multi-scale residual quantiser
# ------------------------------------------------------------------------------------------------


class Phi(nn.Conv2d):
    """phi(h) = (1 - rho) * h + rho * conv3x3(h)  (VAR §3.2, "quant_resi")."""

    def __init__(self, channels: int, rho: float):
        super().__init__(channels, channels, 3, padding=1)
        self.rho = abs(rho)

    def forward(self, h):
        return h.mul(1 - self.rho) + super().forward(h).mul_(self.rho)


def _phi_ticks(n: int) -> np.ndarray:
    """Where each of ``n`` shared phis sits on [0, 1]; scale k uses the phi nearest to k/(K-1)."""
    return np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n) if n == 4 else np.linspace(1 / 2 / n, 1 - 1 / 2 / n, n)


class _PhiList(nn.Module):  # share_quant_resi >= 2: key names quant_resi.qresi_ls.{i}
    def __init__(self, phis):
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)


class _PhiNonShared(nn.ModuleList):  # share_quant_resi == 0: key names quant_resi.{i}
    pass


class _PhiShared(nn.Module):  # share_quant_resi == 1: key names quant_resi.qresi
    def __init__(self, phi):
        super().__init__()
        self.qresi = phi


class MultiScaleQuantizer(nn.Module):
    """The official ``VectorQuantizer2``: shared codebook, residual quantisation over scales."""

    def __init__(self, vocab_size: int, Cvae: int, using_znorm: bool, beta: float = 0.25, default_qresi_counts: int = 0,
                 v_patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), quant_resi: float = 0.5,
                 share_quant_resi: int = 4):
        super().__init__()
        self.vocab_size, self.Cvae, self.using_znorm, self.beta = vocab_size, Cvae, using_znorm, beta
        self.v_patch_nums = tuple(v_patch_nums)
        make = lambda: Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()  # noqa: E731
        if share_quant_resi == 0:
            phis = [make() for _ in range(default_qresi_counts or len(self.v_patch_nums))]
            self.quant_resi, self._phis = _PhiNonShared(phis), phis
        elif share_quant_resi == 1:
            phis = [make()]
            self.quant_resi, self._phis = _PhiShared(phis[0]), phis
        else:
            phis = [make() for _ in range(share_quant_resi)]
            self.quant_resi, self._phis = _PhiList(phis), phis
        K = len(self.v_patch_nums)
        ticks = _phi_ticks(len(phis))
        self.phi_index = [int(np.argmin(np.abs(ticks - (k / (K - 1) if K > 1 else 0.0)))) for k in range(K)]
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(K, vocab_size))  # training statistics only
        self.embedding = nn.Embedding(vocab_size, Cvae)

    # -- building blocks, shared by the tokenizer and the samplers --------------------------------

    @property
    def full_size(self) -> int:
        return self.v_patch_nums[-1]

    def phi(self, si: int, h: torch.Tensor) -> torch.Tensor:
        return self._phis[self.phi_index[si]](h)

    def nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Code index of each row (Euclidean, or cosine when ``using_znorm``)."""
        E = self.embedding.weight.float()
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(E.T, dim=0), dim=1)
        d = z_NC.square().sum(1, keepdim=True) + E.square().sum(1)
        return torch.argmin(d.addmm_(z_NC, E.T, alpha=-2, beta=1), dim=1)

    def upsample(self, si: int, h_BChw: torch.Tensor) -> torch.Tensor:
        """Bicubic upsampling of a scale's code map to full size (not on the last scale)."""
        if si == len(self.v_patch_nums) - 1:
            return h_BChw
        return F.interpolate(h_BChw, size=(self.full_size, self.full_size), mode="bicubic")

    def add_scale(self, f_hat: torch.Tensor, si: int, h_BChw: torch.Tensor) -> torch.Tensor:
        """``f_hat += phi_si(up(h))`` in place; ``h_BChw`` is the scale's (soft) code map [B, Cvae, pn, pn]."""
        return f_hat.add_(self.phi(si, self.upsample(si, h_BChw.float())))

    def next_input(self, f_hat: torch.Tensor, si_next: int) -> torch.Tensor:
        """The transformer's continuous input for scale ``si_next``: f_hat area-downsampled, [B, pn*pn, Cvae]."""
        pn = self.v_patch_nums[si_next]
        x = f_hat if pn == self.full_size else F.interpolate(f_hat, size=(pn, pn), mode="area")
        return x.flatten(2).transpose(1, 2)

    def idx_to_h(self, idx_Bl: torch.Tensor) -> torch.Tensor:
        B, l = idx_Bl.shape
        pn = round(l**0.5)
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn)

    # -- whole-pyramid routines -------------------------------------------------------------------

    def f_to_idx_or_fhat(self, f_BChw: torch.Tensor, to_fhat: bool) -> list[torch.Tensor]:
        """Residual quantisation of ``f`` over all scales: per scale, the indices [B, pn*pn] or the running f_hat."""
        f = f_BChw.detach().float()
        B, C, H, W = f.shape
        if H != self.full_size or W != self.full_size:
            raise ValueError(f"latent is {H}x{W} but the last patch size is {self.full_size}")
        rest, f_hat, out = f.clone(), torch.zeros_like(f), []
        K = len(self.v_patch_nums)
        for si, pn in enumerate(self.v_patch_nums):
            z = rest if si == K - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
            idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, C))
            h = self.phi(si, self.upsample(si, self.embedding(idx.view(B, pn, pn)).permute(0, 3, 1, 2)))
            f_hat.add_(h)
            rest.sub_(h)
            out.append(f_hat.clone() if to_fhat else idx.view(B, pn * pn))
        return out

    def idx_to_fhat(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Final f_hat [B, Cvae, H, W] from all scales' indices."""
        B = idx_list[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(B, self.Cvae, self.full_size, self.full_size, dtype=torch.float32)
        for si, idx in enumerate(idx_list):
            self.add_scale(f_hat, si, self.idx_to_h(idx))
        return f_hat

    def idx_to_var_input(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input [B, L - first_l, Cvae]: f_hat after scales 1..k, downsampled to scale k+1."""
        B = idx_list[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(B, self.Cvae, self.full_size, self.full_size, dtype=torch.float32)
        inputs = []
        for si in range(len(self.v_patch_nums) - 1):
            self.add_scale(f_hat, si, self.idx_to_h(idx_list[si]))
            inputs.append(self.next_input(f_hat, si + 1))
        return torch.cat(inputs, dim=1)

    def forward(self, f_BChw: torch.Tensor):
        """Training pass: straight-through f_hat, VQ loss (codebook + beta * commitment), averaged over scales."""
        f = f_BChw.float()
        B, C, H, W = f.shape
        rest, f_hat = f.detach().clone(), torch.zeros_like(f)
        loss = f.new_zeros(())
        K = len(self.v_patch_nums)
        for si, pn in enumerate(self.v_patch_nums):
            z = rest if si == K - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
            idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, C))
            if self.training:  # code usage per scale, as upstream keeps it (dead-code restarts read it)
                hits = torch.bincount(idx, minlength=self.vocab_size).float()
                self.ema_vocab_hit_SV[si].mul_(0.99).add_(hits, alpha=0.01)
            h = self.phi(si, self.upsample(si, self.embedding(idx.view(B, pn, pn)).permute(0, 3, 1, 2)))
            f_hat = f_hat + h
            rest = rest - h.detach()
            loss = loss + F.mse_loss(f_hat.detach(), f).mul(self.beta) + F.mse_loss(f_hat, f.detach())
        f_hat_st = (f_hat.detach() - f.detach()) + f  # straight-through estimator
        return f_hat_st, loss / K


# ------------------------------------------------------------------------------------------------
# The VQVAE
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VQVAEConfig:
    """The official ``VQVAE`` constructor arguments (defaults: ``vae_ch160v4096z32`` except ``ch``)."""

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 128
    dropout: float = 0.0
    beta: float = 0.25
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    default_qresi_counts: int = 0
    v_patch_nums: tuple = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    test_mode: bool = True
    ch_mult: tuple = CH_MULT  # not an official argument (upstream hard-codes vq-f16); the demo uses (1, 2, 2)


VAE_CH160V4096Z32 = VQVAEConfig(ch=160)  # the released `vae_ch160v4096z32.pth`


class MultiScaleVQVAE(nn.Module):
    """Images in [-1, 1] <-> per-scale token indices, with VAR's official state-dict layout."""

    def __init__(self, config: VQVAEConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = VQVAEConfig(**kwargs)
        elif kwargs:
            raise ValueError("pass either a VQVAEConfig or keyword arguments, not both")
        if config.ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm with 32 groups), got {config.ch}")
        self.config = config
        self.V, self.Cvae, self.vocab_size = config.vocab_size, config.z_channels, config.vocab_size
        self.encoder = Encoder(config.ch, config.z_channels, config.dropout, ch_mult=config.ch_mult)
        self.decoder = Decoder(config.ch, config.z_channels, config.dropout, ch_mult=config.ch_mult)
        self.quantize = MultiScaleQuantizer(
            config.vocab_size, config.z_channels, config.using_znorm, config.beta, config.default_qresi_counts,
            config.v_patch_nums, config.quant_resi, config.share_quant_resi,
        )
        ks = config.quant_conv_ks
        self.quant_conv = nn.Conv2d(self.Cvae, self.Cvae, ks, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(self.Cvae, self.Cvae, ks, padding=ks // 2)
        self.downsample = 2 ** (len(config.ch_mult) - 1)
        if config.test_mode:
            self.eval().requires_grad_(False)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.quantize.v_patch_nums

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    def codebook(self) -> torch.Tensor:
        return self.quantize.embedding.weight

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous latent f = quant_conv(encoder(x)) that the quantiser receives."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"expected images [B, 3, {self.image_size}, {self.image_size}], got {tuple(images.shape)}")
        return self.quant_conv(self.encoder(images))

    def img_to_idx(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images in [-1, 1] -> list over scales of indices [B, pn*pn] (row-major)."""
        return self.quantize.f_to_idx_or_fhat(self.encode_latent(images), to_fhat=False)

    def img_to_fhat(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Running f_hat after each scale (list of [B, Cvae, H, W])."""
        return self.quantize.f_to_idx_or_fhat(self.encode_latent(images), to_fhat=True)

    def idx_to_var_input(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.quantize.idx_to_var_input(self._check_idx(idx_list))

    def idx_to_fhat(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.quantize.idx_to_fhat(self._check_idx(idx_list))

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decoder on the final latent, clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def idx_to_img(self, idx_list: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """All scales' indices (a list, or the concatenated [B, L]) -> images in [-1, 1]."""
        return self.fhat_to_img(self.idx_to_fhat(self.split_tokens(idx_list) if torch.is_tensor(idx_list) else idx_list))

    def img_to_reconstructed_img(self, images: torch.Tensor) -> torch.Tensor:
        return self.fhat_to_img(self.img_to_fhat(images)[-1])

    def split_tokens(self, tokens_BL: torch.Tensor) -> list[torch.Tensor]:
        """[B, L] concatenated scales -> list of [B, pn*pn]."""
        sizes = [pn * pn for pn in self.patch_nums]
        if tokens_BL.shape[-1] != sum(sizes):
            raise ValueError(f"expected {sum(sizes)} tokens per row for patch_nums {self.patch_nums}, got {tokens_BL.shape[-1]}")
        return list(tokens_BL.split(sizes, dim=-1))

    def forward(self, images: torch.Tensor):
        """Training pass: (reconstruction, vq_loss)."""
        f_hat, vq_loss = self.quantize(self.encode_latent(images))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss

    def _check_idx(self, idx_list):
        if len(idx_list) != len(self.patch_nums):
            raise ValueError(f"expected {len(self.patch_nums)} scales of indices, got {len(idx_list)}")
        for pn, idx in zip(self.patch_nums, idx_list):
            if idx.shape[-1] != pn * pn:
                raise ValueError(f"scale {pn}x{pn} needs {pn * pn} indices per row, got {idx.shape[-1]}")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size):
                raise ValueError(f"token index out of range [0, {self.vocab_size})")
        return idx_list

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # like upstream: the usage-statistics buffer is replaced when its number of scales differs
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.quantize.ema_vocab_hit_SV.shape:
            state_dict = {**state_dict, key: self.quantize.ema_vocab_hit_SV.clone()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_checkpoint(cls, path, config: VQVAEConfig | None = None, trusted: bool = False,
                        **kwargs) -> "MultiScaleVQVAE":
        """Build and strictly load (``.pth``/``.pt``/``.safetensors``); default config is vae_ch160v4096z32."""
        from vargen.models.var import load_state_dict_file, load_strict

        model = cls(config or (VQVAEConfig(**kwargs) if kwargs else VAE_CH160V4096Z32))
        load_strict(model, load_state_dict_file(path, trusted, prefer=("vae_wo_ddp",)), what=str(path))
        return model

    @classmethod
    def from_folder(cls, folder, dtype: torch.dtype = torch.float32) -> "MultiScaleVQVAE":
        """A VQVAE saved as ``model.safetensors`` + ``config.json`` (``vargen train var-vqvae``, the demo zoo)."""
        from vargen.models.checkpoint import load_zoo_folder

        def build(cfg):
            cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
            return cls(VQVAEConfig(**{**cfg, "test_mode": True}))

        return load_zoo_folder(folder, build, expected="var_vqvae", config_class=VQVAEConfig,
                               ignore_shape=("ema_vocab_hit_SV",)).to(dtype)
