"""MAR's KL-regularised VAE (``AutoencoderKL``, KL-16): images in [-1, 1] <-> continuous latents.

The LDM encoder/decoder layout with MAR's choices (research/cspd_mar.md §1.1): GroupNorm(32, eps 1e-6),
swish, asymmetric (0,1,0,1) padding before each stride-2 conv, attention in the encoder at the
``encoder_attn_resolutions`` levels and in both mid blocks, none in the decoder's up path, a 1×1
``quant_conv`` producing [mean | logvar] and a 1×1 ``post_quant_conv``. MAR's tokens are
``posterior.sample() * LATENT_SCALE`` and images are ``decode(tokens / LATENT_SCALE)``.

Key names are the official ones, so ``kl16.ckpt`` (a pickle whose ``"model"`` entry is the state dict)
loads with ``strict=True``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.checkpoint import load_strict, read_state_dict
from .blocks import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm

LATENT_SCALE = 0.2325  # 1 / std of the KL-16 latents over ImageNet, no mean shift (MAR issues #2, #100)


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (maybe empty) and a resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, attn_resolutions: tuple[int, ...],
                 resolution: int, z_channels: int, in_channels: int = 3, dropout: float = 0.0, double_z: bool = True):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        res, block_in = resolution, ch
        in_mult = (1, *ch_mult)
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            block_in, block_out = ch * in_mult[i], ch * mult
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(block_in, dropout)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, attn_resolutions: tuple[int, ...],
                 resolution: int, z_channels: int, out_ch: int = 3, dropout: float = 0.0):
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout)
        levels: list[_Level] = []
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # up[0] is the full-resolution level, as in the checkpoint
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class KLPosterior:
    """Diagonal Gaussian q(latent | image); ``logvar`` is clamped to [-30, 20] as in LDM."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> "KLPosterior":
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(-30.0, 20.0))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over C, H, W: one value per image."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class KLVAE(nn.Module):
    """MAR's ``AutoencoderKL(embed_dim, ch_mult)``; ``ch``/``num_res_blocks``/``resolution`` default to KL-16's."""

    def __init__(self, embed_dim: int = 16, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), use_variational: bool = True,
                 ckpt_path: str | None = None, *, ch: int = 128, num_res_blocks: int = 2, resolution: int = 256,
                 encoder_attn_resolutions: tuple[int, ...] = (16,), decoder_attn_resolutions: tuple[int, ...] = (),
                 dropout: float = 0.0, scale_factor: float = LATENT_SCALE):
        super().__init__()
        ch_mult = tuple(ch_mult)
        self.embed_dim = embed_dim
        self.scale_factor = scale_factor  # token = posterior sample * scale_factor (KL-16: 0.2325)
        self.use_variational = use_variational
        self.stride = 2 ** (len(ch_mult) - 1)
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, tuple(encoder_attn_resolutions), resolution, embed_dim,
                               dropout=dropout)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, tuple(decoder_attn_resolutions), resolution, embed_dim,
                               dropout=dropout)
        self.quant_conv = nn.Conv2d(2 * embed_dim, (2 if use_variational else 1) * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)
        if ckpt_path is not None:
            self.load_checkpoint(ckpt_path)

    @classmethod
    def from_folder(cls, folder, dtype: torch.dtype = torch.float32) -> "KLVAE":
        """A KL VAE saved as ``model.safetensors`` + ``config.json`` (``vargen train kl-vae``, the demo zoo)."""
        from ..models.checkpoint import load_zoo_folder

        return load_zoo_folder(folder, lambda c: cls(**c), expected="kl_vae", config_class=cls).to(dtype)

    def load_checkpoint(self, path: str, trusted: bool = False) -> "KLVAE":
        """Strictly load ``kl16.ckpt`` (unwrapping its ``"model"`` entry) or a plain state dict."""
        load_strict(self, read_state_dict(path, trusted=trusted), "KLVAE",
                    hint="kl16.ckpt needs KLVAE(embed_dim=16, ch_mult=(1, 1, 2, 2, 4)); get it from MAR's "
                         "util/download.py (download_pretrained_vae)")
        return self

    def moments(self, images: torch.Tensor) -> torch.Tensor:
        """``[mean | logvar]`` along channels (what MAR's ``main_cache.py`` stores)."""
        moments = self.quant_conv(self.encoder(images))
        if not self.use_variational:
            moments = torch.cat([moments, torch.ones_like(moments)], dim=1)
        return moments

    def encode(self, images: torch.Tensor) -> KLPosterior:
        return KLPosterior.from_moments(self.moments(images))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latents))

    def images_to_tokens(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """MAR token latents ``[B, embed_dim, h, w]``: a posterior sample times ``scale_factor``."""
        return self.encode(images).sample(generator) * self.scale_factor

    def tokens_to_images(self, tokens: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from MAR token latents."""
        return self.decode(tokens / self.scale_factor)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        posterior = self.encode(images)
        return self.decode(posterior.sample(generator)), posterior
