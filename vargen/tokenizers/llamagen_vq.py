"""LlamaGen's VQ image tokenizer (``tokenizer/tokenizer_image/vq_model.py``), checkpoint-faithful.

A VQGAN-style CNN autoencoder with an l2-normalised codebook: latents and codebook rows are both
normalised before the nearest-neighbour search, so the argmin of squared distance is the max cosine
(research/llamagen.md §5). Key names match the official checkpoints (``vq_ds16_c2i.pt``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.config import OfficialConfig
from .blocks import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm

__all__ = ["VQConfig", "VQModel", "VQ_PRESETS", "vq_config"]


@dataclass
class VQConfig(OfficialConfig):
    """Fields of LlamaGen's VQ ``ModelArgs`` plus the encoder/decoder width and depth."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128
    num_res_blocks: int = 2


    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)


VQ_PRESETS = {
    "VQ-16": dict(encoder_ch_mult=[1, 1, 2, 2, 4], decoder_ch_mult=[1, 1, 2, 2, 4]),
    "VQ-8": dict(encoder_ch_mult=[1, 2, 2, 4], decoder_ch_mult=[1, 2, 2, 4]),
}


def vq_config(preset: str, **overrides: Any) -> VQConfig:
    if preset not in VQ_PRESETS:
        raise ValueError(f"unknown VQ preset {preset!r}; choose from {', '.join(VQ_PRESETS)}")
    return VQConfig(**{**VQ_PRESETS[preset], **overrides})


class Encoder(nn.Module):
    def __init__(self, in_channels=3, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, dropout=0.0, z_channels=256):
        super().__init__()
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_mult = (1,) + tuple(ch_mult)
        self.conv_blocks = nn.ModuleList()
        last = len(ch_mult) - 1
        for i, mult in enumerate(ch_mult):
            block = nn.Module()
            block_in = ch * in_mult[i]
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                block.res.append(ResnetBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
                if i == last:
                    block.attn.append(AttnBlock(block_in))
            if i != last:
                block.downsample = Downsample(block_in)
            self.conv_blocks.append(block)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), AttnBlock(block_in),
                                  ResnetBlock(block_in, block_in, dropout)])
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.conv_blocks:
            for j, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[j](h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, z_channels=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, dropout=0.0, out_channels=3):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), AttnBlock(block_in),
                                  ResnetBlock(block_in, block_in, dropout)])
        self.conv_blocks = nn.ModuleList()
        n = len(ch_mult)
        for i in range(n):
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[n - 1 - i]
            for _ in range(num_res_blocks + 1):
                block.res.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i == 0:
                    block.attn.append(AttnBlock(block_in))
            if i != n - 1:
                block.upsample = Upsample(block_in)
            self.conv_blocks.append(block)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for block in self.conv_blocks:
            for j, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[j](h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_e: int, e_dim: int, beta: float, l2_norm: bool, show_usage: bool):
        super().__init__()
        self.n_e, self.e_dim, self.beta, self.l2_norm = n_e, e_dim, beta, l2_norm
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        if l2_norm:
            self.embedding.weight.data = F.normalize(self.embedding.weight.data, p=2, dim=-1)
        if show_usage:
            self.register_buffer("codebook_used", torch.zeros(65536))

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def forward(self, z: torch.Tensor):
        """``z [B, C, h, w]`` -> (straight-through quantised latent, indices [B, h, w], losses dict)."""
        z = z.permute(0, 2, 3, 1).contiguous()
        if self.l2_norm:
            z = F.normalize(z, p=2, dim=-1)
        flat = z.reshape(-1, self.e_dim)
        book = self.codebook()
        d = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1)[None] - 2 * flat @ book.t()
        idx = d.argmin(dim=1)
        zq = book[idx].view(z.shape)
        losses = {
            "codebook": F.mse_loss(zq, z.detach()),
            "commit": self.beta * F.mse_loss(zq.detach(), z),
        }
        zq = z + (zq - z).detach()
        if self.training and hasattr(self, "codebook_used"):
            n = idx.numel()
            if n < self.codebook_used.numel():
                self.codebook_used.copy_(torch.cat([self.codebook_used[n:], idx.float()]))
        return zq.permute(0, 3, 1, 2).contiguous(), idx.view(z.shape[:3]), losses


class VQModel(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(ch=c.ch, ch_mult=c.encoder_ch_mult, num_res_blocks=c.num_res_blocks,
                               dropout=c.dropout_p, z_channels=c.z_channels)
        self.decoder = Decoder(ch=c.ch, ch_mult=c.decoder_ch_mult, num_res_blocks=c.num_res_blocks,
                               dropout=c.dropout_p, z_channels=c.z_channels)
        self.quantize = VectorQuantizer(c.codebook_size, c.codebook_embed_dim, c.commit_loss_beta,
                                        c.codebook_l2_norm, c.codebook_show_usage)
        self.quant_conv = nn.Conv2d(c.z_channels, c.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.codebook_embed_dim, c.z_channels, 1)

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def pre_quant(self, images: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(images))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``[B, 3, H, W]`` -> token indices ``[B, h, w]`` (raster order)."""
        return self.quantize(self.pre_quant(images))[1]

    def codebook(self) -> torch.Tensor:
        """``[V, d]`` codebook rows in the geometry the quantiser uses (l2-normalised)."""
        return self.quantize.codebook().detach()

    @classmethod
    def from_folder(cls, folder, dtype: torch.dtype = torch.float32) -> "VQModel":
        """A tokenizer saved as ``model.safetensors`` + ``config.json`` (``vargen train vq``, the demo zoo)."""
        from pathlib import Path

        from ..models.checkpoint import load_zoo_folder

        where = str(Path(folder) / "config.json")
        vq = load_zoo_folder(folder, lambda c: cls(VQConfig.from_dict(c, where)), "llamagen_vq",
                             load=lambda model, path: load_vq_weights(model, str(path)),
                             drop=("quantize.codebook_used",))  # kept or dropped by load_vq_weights
        return vq.to(dtype)

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``[B, h, w]`` (or ``[B, h*w]`` for a square grid) -> latent ``[B, d, h, w]``."""
        if indices.dim() == 2:
            side = int(round(indices.shape[1] ** 0.5))
            if side * side != indices.shape[1]:
                raise ValueError(f"cannot lay {indices.shape[1]} tokens out on a square grid; pass [B, h, w]")
            indices = indices.view(indices.shape[0], side, side)
        return self.quantize.codebook()[indices.long()].permute(0, 3, 1, 2).contiguous()

    def decode_latent(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices -> images (nominally [-1, 1], not clamped, as upstream)."""
        return self.decode_latent(self.codes(indices))

    def forward(self, images: torch.Tensor):
        """Training forward: (reconstruction, quantiser losses)."""
        quant, _, losses = self.quantize(self.pre_quant(images))
        return self.decode_latent(quant), losses


def load_vq_weights(model: VQModel, path_or_state, trusted: bool = False) -> VQModel:
    from ..models.checkpoint import load_strict, read_state_dict

    state = path_or_state if isinstance(path_or_state, dict) else read_state_dict(path_or_state, trusted=trusted)
    if "codebook_used" not in dict(model.quantize.named_buffers()):
        state = {k: v for k, v in state.items() if k != "quantize.codebook_used"}
    book = state.get("quantize.embedding.weight")
    c = model.config
    hint = (f"checkpoint codebook {tuple(book.shape) if book is not None else '?'} vs config "
            f"({c.codebook_size}, {c.codebook_embed_dim}); check ch_mult (VQ-16 vs VQ-8), ch and num_res_blocks")
    load_strict(model, state, "LlamaGen VQ", hint=hint)
    return model
