"""Cosmos discrete video tokenizer (DV, Cosmos Tokenizer, arXiv 2501.03575), checkpoint-faithful.

Video ``[B, 3, T, H, W]`` in ``[-1, 1]`` (T = 1 + k * temporal compression) -> FSQ indices ``[B, t, h, w]``
and back. The network is the released ``CausalDiscreteVideoTokenizer`` with the factorised encoder and
decoder: a Haar wavelet patcher, causal 3-D convolutions factorised into a (1,3,3) spatial and a (3,1,1)
temporal conv (time padded at the front by repeating the first frame, so frame ``t`` never sees frames
after it), per-frame GroupNorm(1 group), hybrid down/upsampling (strided conv + average pooling), spatial
and causal temporal self-attention in the middle stages, and finite scalar quantisation (FSQ, Mentzer et
al., arXiv 2309.15505).

Key names are those of the released ``encoder.jit`` / ``decoder.jit`` state dicts, buffers included
(``encoder.*``, ``quant_conv.*``, ``quantizer.*``; ``inv_quant.quantizer.*``, ``post_quant_conv.*``,
``decoder.*``), so both files load strictly. A clip longer than ``chunk_frames`` is encoded chunk by chunk,
as the official wrapper does.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.config import OfficialConfig

__all__ = ["DVConfig", "DiscreteVideoTokenizer", "FSQuantizer", "HaarPatcher3D", "HaarUnpatcher3D",
           "DV_PRESETS", "load_dv_tokenizer"]


@dataclass
class DVConfig(OfficialConfig):
    """The tokenizer's official constructor arguments (``CausalDiscreteVideoTokenizer`` + FACTORIZED
    encoder/decoder + FSQ) and the wrapper's chunk length."""

    channels: int = 128
    channels_mult: list[int] = field(default_factory=lambda: [2, 4, 4])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [32])
    resolution: int = 1024
    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 16
    z_factor: int = 1
    embedding_dim: int = 6
    levels: list[int] = field(default_factory=lambda: [8, 8, 8, 5, 5, 5])
    patch_size: int = 4
    patch_method: str = "haar"
    spatial_compression: int = 16
    temporal_compression: int = 8
    legacy_mode: bool = False
    dropout: float = 0.0
    num_groups: int = 1
    pixel_chunk_duration: int = 33  # frames encoded together (the wrapper's chunk); 1 + k * temporal_compression

    # accepted and ignored: they only choose the official module classes
    IGNORED = ("name", "quantizer", "encoder", "decoder", "formulation", "latent_ch", "is_bf16",
               "latent_chunk_duration", "max_enc_batch_size", "max_dec_batch_size", "compression_ratio")

    def validate(self) -> None:
        if self.patch_method != "haar":
            raise ValueError(f"patch_method {self.patch_method!r}: only the released 'haar' patcher is implemented")
        for name in ("patch_size", "spatial_compression", "temporal_compression"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name}={v} must be a power of two")
        n = len(self.channels_mult)
        for axis in ("spatial", "temporal"):
            downs = self.downs(axis)
            if not 0 <= downs <= n:
                raise ValueError(f"{axis}_compression / patch_size needs {downs} downsamplings; "
                                 f"channels_mult has {n} levels")
        if (self.pixel_chunk_duration - 1) % self.temporal_compression:
            raise ValueError(f"pixel_chunk_duration={self.pixel_chunk_duration} must be 1 + k * "
                             f"temporal_compression ({self.temporal_compression})")

    def downs(self, axis: str) -> int:
        comp = self.spatial_compression if axis == "spatial" else self.temporal_compression
        return int(math.log2(comp)) - int(math.log2(self.patch_size))

    @property
    def vocab_size(self) -> int:
        return math.prod(self.levels)

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.temporal_compression


# The released DV8x16x16 (Cosmos-1.0 Autoregressive); the wrapper encodes 33-frame chunks.
DV_PRESETS = {"DV8x16x16": dict(channels=128, channels_mult=[2, 4, 4], num_res_blocks=2, z_channels=16,
                                embedding_dim=6, levels=[8, 8, 8, 5, 5, 5], patch_size=4,
                                spatial_compression=16, temporal_compression=8, pixel_chunk_duration=33)}


# ------------------------------------------------------------------------------------------------
# FSQ
# ------------------------------------------------------------------------------------------------


class FSQuantizer(nn.Module):
    """Finite scalar quantisation over ``levels`` (one integer grid per channel). The first channel is the
    least significant digit of the index. Buffers as released: ``_levels``, ``_basis``, ``implicit_codebook``."""

    def __init__(self, levels: list[int]):
        super().__init__()
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int32))
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1] + list(levels[:-1])), 0).to(torch.int32))
        self.register_buffer("implicit_codebook", self.indices_to_codes(torch.arange(math.prod(levels))))

    @property
    def vocab_size(self) -> int:
        return self.implicit_codebook.shape[0]

    def bound(self, z: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        """Squash ``z [..., d]`` into each channel's range: ``tanh(z + atanh(offset/half)) * half - offset``,
        ``half = (L - 1)(1 + eps)/2``, offset 0.5 for an even ``L`` (so rounding lands on L integers)."""
        levels = self._levels.to(z.device)
        half = (levels - 1) * (1 + eps) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0).to(z.device)
        return torch.tanh(z + torch.atanh(offset / half)) * half - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Codes in [-1, 1]: ``round(bound(z)) / (L // 2)`` (round half to even), with a straight-through
        gradient for training."""
        b = self.bound(z)
        rounded = b + (torch.round(b) - b).detach()
        return rounded / (self._levels // 2)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        half = self._levels // 2
        return ((codes * half + half).float() * self._basis).sum(-1).round().long()

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """``[...] -> [..., d]`` float32 codes."""
        digits = (indices.long()[..., None] // self._basis.long()) % self._levels.long()
        half = self._levels // 2
        return ((digits - half) / half).float()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [B, d, T, H, W] -> (indices [B, T, H, W], codes [B, d, T, H, W])``."""
        codes = self.quantize(z.movedim(1, -1))
        return self.codes_to_indices(codes.detach()), codes.movedim(-1, 1)


class InvQuantizer(nn.Module):
    """Indices -> codes, the decoder side (``inv_quant.quantizer.*`` keys)."""

    def __init__(self, levels: list[int]):
        super().__init__()
        self.quantizer = FSQuantizer(levels)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.quantizer.indices_to_codes(indices).movedim(-1, 1)


# ------------------------------------------------------------------------------------------------
# Haar wavelet patching (one level: a 2x2x2 transform, subbands [lll, llh, ..., hhh] over (t, h, w))
# ------------------------------------------------------------------------------------------------


def _haar_split(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Low and high bands of stride-2 pairs along ``dim`` (an odd length is reflect-padded at the end)."""
    if x.shape[dim] % 2:
        x = torch.cat([x, x.narrow(dim, x.shape[dim] - 2, 1)], dim)
    a = x.unflatten(dim, (-1, 2))
    even, odd = a.select(dim + 1, 0), a.select(dim + 1, 1)
    return (even + odd) / math.sqrt(2), (even - odd) / math.sqrt(2)


def _haar_merge(low: torch.Tensor, high: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.stack([low + high, low - high], dim + 1).flatten(dim, dim + 1) / math.sqrt(2)


class HaarPatcher3D(nn.Module):
    """``log2(p)`` levels of a 3-D Haar transform after repeating frame 0 ``p`` times (so the first frame is a
    whole temporal patch). Each level orders subbands t-major and divides by ``2 * sqrt(2)``."""

    def __init__(self, patch_size: int, with_size_buffer: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.register_buffer("wavelets", torch.full((2,), 1 / math.sqrt(2)))
        self.register_buffer("_arange", torch.arange(2))
        if with_size_buffer:
            self.register_buffer("patch_size_buffer", torch.full((1,), patch_size, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :, :1].repeat_interleave(self.patch_size, 2), x[:, :, 1:]], 2)
        for _ in range(int(math.log2(self.patch_size))):
            bands = [x]
            for dim in (2, 3, 4):  # t, then h, then w: each band splits into (low, high)
                bands = [b for band in bands for b in _haar_split(band, dim)]
            x = torch.cat(bands, 1) / (2 * math.sqrt(2))
        return x


class HaarUnpatcher3D(HaarPatcher3D):
    """The inverse: merge w, then h, then t per level, times ``2 * sqrt(2)``; drop the ``p - 1`` repeats."""

    def __init__(self, patch_size: int):
        super().__init__(patch_size, with_size_buffer=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(int(math.log2(self.patch_size))):
            bands = list(x.chunk(8, 1))
            for dim in (4, 3, 2):
                bands = [_haar_merge(bands[i], bands[i + 1], dim) for i in range(0, len(bands), 2)]
            x = bands[0] * (2 * math.sqrt(2))
        return x[:, :, self.patch_size - 1:]


# ------------------------------------------------------------------------------------------------
# Causal 3-D building blocks (official module and parameter names)
# ------------------------------------------------------------------------------------------------


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def repeat_first_frame(x: torch.Tensor, n: int = 1) -> torch.Tensor:
    return torch.cat([x[:, :, :1].expand(-1, -1, n, -1, -1), x], 2) if n > 0 else x


class CausalConv3d(nn.Module):
    """A conv whose time axis is padded at the front with copies of the first frame (``kt - 1`` of them, one
    fewer for a time stride of 2) and whose space axes are zero-padded by ``padding``."""

    def __init__(self, chan_in: int, chan_out: int, kernel_size=3, stride: int = 1, time_stride: int = 1,
                 padding: int = 1):
        super().__init__()
        kt, kh, kw = kernel_size if isinstance(kernel_size, tuple) else (kernel_size,) * 3
        self.time_pad = (kt - 1) + (1 - time_stride)
        self.padding = padding
        self.conv3d = nn.Conv3d(chan_in, chan_out, (kt, kh, kw), stride=(time_stride, stride, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = repeat_first_frame(x, self.time_pad)
        p = self.padding
        return self.conv3d(F.pad(x, (p, p, p, p, 0, 0)) if p else x)


def factorized_conv(chan_in: int, chan_out: int) -> nn.Sequential:
    """(1,3,3) spatial conv, then (3,1,1) causal temporal conv."""
    return nn.Sequential(CausalConv3d(chan_in, chan_out, (1, 3, 3), padding=1),
                         CausalConv3d(chan_out, chan_out, (3, 1, 1), padding=0))


class CausalNormalize(nn.Module):
    """GroupNorm with one group, eps 1e-6, over each frame separately (time folded into the batch)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        y = self.norm(x.transpose(1, 2).reshape(B * T, C, H, W))
        return y.reshape(B, T, C, H, W).transpose(1, 2)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = CausalNormalize(in_channels)
        self.conv1 = factorized_conv(in_channels, out_channels)
        self.norm2 = CausalNormalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = factorized_conv(out_channels, out_channels)
        self.nin_shortcut = (CausalConv3d(in_channels, out_channels, 1, padding=0)
                             if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.nin_shortcut(x) + h


class _AttnBase(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = CausalNormalize(channels)
        self.q, self.k, self.v, self.proj_out = (CausalConv3d(channels, channels, 1, padding=0) for _ in range(4))


class SpatialAttention(_AttnBase):
    """Self-attention over the pixels of each frame (scale ``1/sqrt(C)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        B, C, T, H, W = x.shape
        q, k, v = (m(h).permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(y.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3))


class TemporalAttention(_AttnBase):
    """Causal self-attention over the frames of each pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        B, C, T, H, W = x.shape
        q, k, v = (m(h).permute(0, 3, 4, 2, 1).reshape(B * H * W, T, C) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.proj_out(y.reshape(B, H, W, T, C).permute(0, 4, 3, 1, 2))


def attention_pair(channels: int) -> nn.Sequential:
    return nn.Sequential(SpatialAttention(channels), TemporalAttention(channels))


class HybridDownsample(nn.Module):
    """Spatial: zero-pad right/bottom, stride-2 (1,3,3) conv + 2x2 average pool. Temporal: repeat frame 0,
    time-stride-2 (3,1,1) conv + average pool of 2. Then a 1x1x1 conv."""

    def __init__(self, channels: int, spatial: bool, temporal: bool):
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        if spatial:
            self.conv1 = CausalConv3d(channels, channels, (1, 3, 3), stride=2, padding=0)
        if temporal:
            self.conv2 = CausalConv3d(channels, channels, (3, 1, 1), time_stride=2, padding=0)
        if spatial or temporal:
            self.conv3 = CausalConv3d(channels, channels, 1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            x = F.pad(x, (0, 1, 0, 1, 0, 0))
            x = self.conv1(x) + F.avg_pool3d(x, (1, 2, 2), (1, 2, 2))
        if self.temporal:
            x = repeat_first_frame(x)
            x = self.conv2(x) + F.avg_pool3d(x, (2, 1, 1), (2, 1, 1))
        return self.conv3(x) if self.spatial or self.temporal else x


class HybridUpsample(nn.Module):
    """Temporal: repeat each frame twice and drop the first copy (when T > 1), plus a causal (3,1,1) conv
    of that. Spatial: nearest x2 plus a (1,3,3) conv of that. Then a 1x1x1 conv."""

    def __init__(self, channels: int, spatial: bool, temporal: bool):
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        if temporal:
            self.conv1 = CausalConv3d(channels, channels, (3, 1, 1), padding=0)
        if spatial:
            self.conv2 = CausalConv3d(channels, channels, (1, 3, 3), padding=1)
        if spatial or temporal:
            self.conv3 = CausalConv3d(channels, channels, 1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal and x.shape[2] > 1:
            x = x.repeat_interleave(2, dim=2)[:, :, 1:]
        if self.temporal:
            x = self.conv1(x) + x
        if self.spatial:
            x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
            x = self.conv2(x) + x
        return self.conv3(x) if self.spatial or self.temporal else x


class _Level(nn.Module):
    """One resolution level: ``block`` (resblocks), ``attn`` (where the nominal resolution asks for it) and an
    optional ``downsample`` / ``upsample``."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


def _middle(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = attention_pair(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


def _run_middle(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: DVConfig):
        super().__init__()
        p, ch, mult = cfg.patch_size, cfg.channels, cfg.channels_mult
        self.patcher3d = HaarPatcher3D(p)
        self.conv_in = factorized_conv(cfg.in_channels * p ** 3, ch)
        res, block_in = cfg.resolution // p, ch
        self.down = nn.ModuleList()
        for i, m in enumerate(mult):
            level = _Level()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, ch * m, cfg.dropout))
                block_in = ch * m
                if res in cfg.attn_resolutions:
                    level.attn.append(attention_pair(block_in))
            if i != len(mult) - 1:
                level.downsample = HybridDownsample(block_in, i < cfg.downs("spatial"), i < cfg.downs("temporal"))
                res //= 2
            self.down.append(level)
        self.mid = _middle(block_in, cfg.dropout)
        self.norm_out = CausalNormalize(block_in)
        self.conv_out = factorized_conv(block_in, cfg.z_factor * cfg.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.patcher3d(x))
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = _run_middle(self.mid, h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: DVConfig):
        super().__init__()
        p, ch, mult, n = cfg.patch_size, cfg.channels, cfg.channels_mult, len(cfg.channels_mult)
        block_in = ch * mult[-1]
        res = (cfg.resolution // p) // 2 ** (n - 1)
        self.conv_in = factorized_conv(cfg.z_channels, block_in)
        self.mid = _middle(block_in, cfg.dropout)
        ups_s, ups_t = cfg.downs("spatial"), cfg.downs("temporal")
        levels = []
        for i in reversed(range(n)):
            level = _Level()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, ch * mult[i], cfg.dropout))
                block_in = ch * mult[i]
                if res in cfg.attn_resolutions:
                    level.attn.append(attention_pair(block_in))
            if i != 0:
                r = n - i - 1  # this upsampling mirrors the encoder's downsampling at level r
                temporal = r < ups_t if cfg.legacy_mode else 0 < r < ups_t + 1
                spatial = temporal or (r < ups_s and ups_s > ups_t)
                level.upsample = HybridUpsample(block_in, spatial, temporal)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = CausalNormalize(block_in)
        self.conv_out = factorized_conv(block_in, cfg.out_channels * p ** 3)
        self.unpatcher3d = HaarUnpatcher3D(p)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_middle(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.unpatcher3d(self.conv_out(swish(self.norm_out(h))))


# ------------------------------------------------------------------------------------------------
# The tokenizer
# ------------------------------------------------------------------------------------------------


class DiscreteVideoTokenizer(nn.Module):
    """Encoder half (``encoder``, ``quant_conv``, ``quantizer``) and decoder half (``inv_quant``,
    ``post_quant_conv``, ``decoder``) under the released key names."""

    def __init__(self, config: DVConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        self.encoder = Encoder(cfg)
        self.quant_conv = CausalConv3d(cfg.z_factor * cfg.z_channels, cfg.embedding_dim, 1, padding=0)
        self.quantizer = FSQuantizer(cfg.levels)
        self.inv_quant = InvQuantizer(cfg.levels)
        self.post_quant_conv = CausalConv3d(cfg.embedding_dim, cfg.z_channels, 1, padding=0)
        self.decoder = Decoder(cfg)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def device(self) -> torch.device:
        return self.quant_conv.conv3d.weight.device

    def check_video(self, video: torch.Tensor) -> None:
        cfg = self.config
        if not torch.is_tensor(video) or video.dim() != 5 or video.shape[1] != cfg.in_channels:
            got = tuple(video.shape) if torch.is_tensor(video) else type(video).__name__
            raise ValueError(f"video must be [B, {cfg.in_channels}, T, H, W] in [-1, 1], got {got}")
        T, H, W = video.shape[2:]
        if T % cfg.pixel_chunk_duration:
            raise ValueError(f"{T} frames: the tokenizer encodes chunks of {cfg.pixel_chunk_duration} frames "
                             f"(1 + k * {cfg.temporal_compression}); pad the clip (the official pipeline repeats "
                             f"its last frame)")
        s = cfg.spatial_compression
        if H % s or W % s:
            raise ValueError(f"frames of {H}x{W}: height and width must be multiples of {s}")

    def pre_quant(self, video: torch.Tensor) -> torch.Tensor:
        """Encoder + ``quant_conv`` of one chunk: ``[B, embedding_dim, t, h, w]`` (the FSQ input)."""
        return self.quant_conv(self.encoder(video))

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W]`` in [-1, 1] -> FSQ indices ``[B, t, h, w]`` (chunks of ``pixel_chunk_duration``
        frames encoded independently, as the official wrapper does)."""
        self.check_video(video)
        n = self.config.pixel_chunk_duration
        chunks = video.to(self.quant_conv.conv3d.weight.dtype).split(n, dim=2)
        return torch.cat([self.quantizer(self.pre_quant(c))[0] for c in chunks], dim=1)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(codes))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """FSQ indices ``[B, t, h, w]`` -> video ``[B, C, T, H, W]`` (not clamped), chunk by chunk."""
        if indices.dim() != 4:
            raise ValueError(f"indices must be [B, t, h, w], got {tuple(indices.shape)}")
        if int(indices.min()) < 0 or int(indices.max()) >= self.vocab_size:
            raise ValueError(f"token ids must be in 0..{self.vocab_size - 1}")
        n = self.config.latent_frames(self.config.pixel_chunk_duration)
        if indices.shape[1] % n:
            raise ValueError(f"{indices.shape[1]} latent frames: decoding takes chunks of {n}")
        dtype = self.post_quant_conv.conv3d.weight.dtype
        return torch.cat([self.decode_codes(self.inv_quant(c).to(dtype)) for c in indices.split(n, dim=1)], dim=2)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: ``(reconstruction, indices)`` with straight-through FSQ codes (one chunk)."""
        indices, codes = self.quantizer(self.pre_quant(video))
        return self.decode_codes(codes), indices

    def codebook(self) -> torch.Tensor:
        """``[V, embedding_dim]``: each token's FSQ code (the quantiser's geometry)."""
        return self.quantizer.implicit_codebook

    # -- loading ------------------------------------------------------------------------------------
    def encoder_half(self) -> nn.Sequential:
        """The modules of the released ``encoder.jit`` under its key names (a view; shares the weights)."""
        return nn.Sequential(OrderedDict(encoder=self.encoder, quant_conv=self.quant_conv, quantizer=self.quantizer))

    def decoder_half(self) -> nn.Sequential:
        """The modules of the released ``decoder.jit`` under its key names."""
        return nn.Sequential(OrderedDict(inv_quant=self.inv_quant, post_quant_conv=self.post_quant_conv,
                                         decoder=self.decoder))

    def load_halves(self, encoder_state: dict[str, torch.Tensor] | None = None,
                    decoder_state: dict[str, torch.Tensor] | None = None) -> "DiscreteVideoTokenizer":
        """Strictly load the released ``encoder.jit`` and/or ``decoder.jit`` state dicts into their half."""
        from ..models.checkpoint import load_strict

        if encoder_state is not None:
            load_strict(self.encoder_half(), encoder_state, "DV encoder")
        if decoder_state is not None:
            load_strict(self.decoder_half(), decoder_state, "DV decoder")
        return self

    @classmethod
    def from_folder(cls, folder, dtype: torch.dtype = torch.float32) -> "DiscreteVideoTokenizer":
        from ..models.checkpoint import load_zoo_folder

        return load_zoo_folder(folder, lambda c: cls(DVConfig.from_dict(c)), expected="cosmos_dv").to(dtype)


def load_dv_tokenizer(config: DVConfig | dict, encoder: str | dict | None = None, decoder: str | dict | None = None,
                      trusted: bool = False) -> DiscreteVideoTokenizer:
    """A DV tokenizer from the released halves' state dicts (paths to safetensors / weights-only pickles, or
    dicts). TorchScript ``.jit`` files: convert with ``torch.jit.load(path).state_dict()`` once, then save
    as safetensors (loading TorchScript runs its code)."""
    from ..models.checkpoint import read_state_dict

    cfg = config if isinstance(config, DVConfig) else DVConfig.from_dict(config)
    tok = DiscreteVideoTokenizer(cfg)
    read = lambda s: s if s is None or isinstance(s, dict) else read_state_dict(s, trusted=trusted)  # noqa: E731
    return tok.load_halves(read(encoder), read(decoder)).eval().requires_grad_(False)
