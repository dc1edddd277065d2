"""MAR: masked autoregressive image generation with a diffusion head (Li et al. 2024, arXiv 2406.11838).

Layout and key names follow LTH14/mar (research/cspd_mar.md §1):

* **Encoder** (MAE style): tokens -> ``z_proj``; ``buffer_size`` leading slots hold the class embedding;
  learned position embedding; ``z_proj_ln``; masked positions are *dropped*; ViT blocks; ``encoder_norm``.
* **Decoder**: ``decoder_embed``; scatter back into a full sequence of ``mask_token``; position embedding;
  ViT blocks; ``decoder_norm``; drop the buffer; add ``diffusion_pos_embed_learned``. The result at
  position i is the condition z_i of the diffusion head.
* **DiffLoss** (``MAR.diffloss``): an AdaLN MLP predicting [eps | v] for a 1000-step cosine DDPM with
  learned-range variance (Nichol & Dhariwal 2021, eq. 15); sampling uses ``num_sampling_steps`` respaced
  ancestral steps with MAR's temperature on the noise; CFG mixes the eps channels only.

Every random draw (masking ratio, orders, label drop, diffusion noise) comes from a caller-supplied
``torch.Generator`` or from caller-supplied tensors. Only dropout (training) uses torch's global RNG.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import class_ids
from .checkpoint import load_strict, read_state_dict
from .config import OfficialConfig
from .schedulers import IDDPMScheduler

# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass
class MARConfig(OfficialConfig):
    """The official ``MAR(...)`` constructor arguments, by their official names.

    ``norm_layer`` is accepted for compatibility and ignored: every official factory uses
    ``LayerNorm(eps=1e-6)``. ``grad_checkpointing`` is accepted and only affects training memory.
    """

    img_size: int = 256
    vae_stride: int = 16
    patch_size: int = 1
    encoder_embed_dim: int = 1024
    encoder_depth: int = 16
    encoder_num_heads: int = 16
    decoder_embed_dim: int = 1024
    decoder_depth: int = 16
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_layer: Any = None
    vae_embed_dim: int = 16
    mask_ratio_min: float = 0.7
    label_drop_prob: float = 0.1
    class_num: int = 1000
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    buffer_size: int = 64
    diffloss_d: int = 3
    diffloss_w: int = 1024
    num_sampling_steps: str = "100"
    diffusion_batch_mul: int = 4
    grad_checkpointing: bool = False

    @property
    def seq_h(self) -> int:
        return self.img_size // self.vae_stride // self.patch_size

    @property
    def seq_len(self) -> int:
        return self.seq_h * self.seq_h

    @property
    def token_embed_dim(self) -> int:
        return self.vae_embed_dim * self.patch_size**2


# The official factories; DiffLoss sizes are those of the README evaluation commands.
PRESETS: dict[str, dict[str, Any]] = {
    "mar_base": dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, decoder_embed_dim=768,
                     decoder_depth=12, decoder_num_heads=12, diffloss_d=6, diffloss_w=1024),
    "mar_large": dict(encoder_embed_dim=1024, encoder_depth=16, encoder_num_heads=16, decoder_embed_dim=1024,
                      decoder_depth=16, decoder_num_heads=16, diffloss_d=8, diffloss_w=1280),
    "mar_huge": dict(encoder_embed_dim=1280, encoder_depth=20, encoder_num_heads=16, decoder_embed_dim=1280,
                     decoder_depth=20, decoder_num_heads=16, diffloss_d=12, diffloss_w=1536),
}


def preset(name: str, **overrides: Any) -> MARConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown MAR preset {name!r}; available: {', '.join(PRESETS)}")
    return MARConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------
# DiffLoss network (the schedule is vargen.models.schedulers.IDDPMScheduler)
# ----------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (original-scale) timesteps: cosine half first, then sine half."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """The DiffLoss network: (x_t, t, z) -> [eps | v], 2C channels."""

    def __init__(self, in_channels: int, width: int, out_channels: int, z_channels: int, depth: int):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.res_blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                         self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Rows laid out [cond; uncond]; both halves see the cond half's x. Only eps is guided."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, c)
        eps, rest = out[:, : self.in_channels], out[:, self.in_channels:]
        cond, uncond = eps.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)


class DiffLoss(nn.Module):
    """MAR's diffusion head: ``net`` plus the training (1000-step) and sampling (respaced) schedules."""

    def __init__(self, target_channels: int, z_channels: int, depth: int, width: int, num_sampling_steps: str):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, 2 * target_channels, z_channels, depth)
        self.train_scheduler = IDDPMScheduler()  # all 1000 steps: the training loss
        self.scheduler = IDDPMScheduler.create(str(num_sampling_steps))  # respaced: sampling

    @property
    def num_sampling_steps(self) -> int:
        return self.scheduler.num_timesteps

    # -- training -------------------------------------------------------------------------------
    def forward(self, target: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss: eps MSE + variational bound for the learned variance (IDDPM hybrid loss)."""
        d = self.train_scheduler
        t = torch.randint(0, d.num_timesteps, (target.shape[0],), device=target.device, generator=generator)
        noise = torch.randn(target.shape, device=target.device, dtype=target.dtype, generator=generator)
        loss = self.loss_terms(target, z, t, noise)
        if mask is not None:
            return (loss * mask).sum() / mask.sum()
        return loss.mean()

    def loss_terms(self, x0: torch.Tensor, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        d = self.train_scheduler
        x_t = d.add_noise(x0, noise, t)
        eps, v = self.net(x_t, d.timestep_map.to(t.device)[t], z).split(self.in_channels, dim=1)
        mse = (noise - eps).square().mean(-1)
        # the VB term trains only the variance: eps is frozen inside it (IDDPM §3.1)
        true_mean, true_log_var = d.q_posterior(x0, x_t, t)
        mean, log_var, _ = d.p_mean_variance(x_t, t, eps.detach(), v)
        kl = 0.5 * (-1.0 + log_var - true_log_var + torch.exp(true_log_var - log_var)
                    + (true_mean - mean).square() * torch.exp(-log_var))
        nll = -_discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        vb = torch.where(t[:, None] == 0, nll, kl).mean(-1) / math.log(2.0)
        return mse + vb

    # -- the network as the samplers call it ---------------------------------------------------
    def predict(self, x: torch.Tensor, index: torch.Tensor, c: torch.Tensor, cfg: float | torch.Tensor = 1.0,
                guided: bool | None = None) -> torch.Tensor:
        """``[eps | v]`` at sampling indices ``index`` [R] (the scheduler's spaced steps). Guided (default:
        ``cfg != 1``) rows are [cond; uncond] and ``c`` carries both conditions; ``cfg`` may be a per-row
        tensor [R/2, 1]."""
        t = self.scheduler.timestep_map.to(x.device)[index]
        guided = (cfg != 1.0) if guided is None else guided
        w = self.net.input_proj.weight.dtype  # reduced-precision weights: the chain itself stays in float32
        if w != x.dtype:
            x, c = x.to(w), c.to(w)
            cfg = cfg.to(w) if torch.is_tensor(cfg) else cfg
            out = self.net.forward_with_cfg(x, t, c, cfg) if guided else self.net(x, t, c)
            return out.float()
        return self.net.forward_with_cfg(x, t, c, cfg) if guided else self.net(x, t, c)


def _approx_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """IDDPM's decoder NLL term (bins of width 2/255 on [-1, 1]), used as-is by MAR at t = 0."""
    centered, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus = _approx_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


# ----------------------------------------------------------------------------------------------
# Transformer (timm ViT Block layout and key names)
# ----------------------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN ViT block (timm ``Block`` with qkv bias, no layer-scale, no drop-path)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------------------------
# MAR
# ----------------------------------------------------------------------------------------------


class MAR(nn.Module):
    """MAR with official key names. ``condition(tokens, mask, labels)`` gives z; ``diffloss`` is the head."""

    def __init__(self, config: MARConfig | None = None, **kwargs: Any):
        super().__init__()
        if config is None:
            config = MARConfig.from_dict(kwargs)
        elif kwargs:
            raise ValueError("pass either a MARConfig or constructor keywords, not both")
        if config.encoder_embed_dim % config.encoder_num_heads or config.decoder_embed_dim % config.decoder_num_heads:
            raise ValueError("embed dims must be divisible by the number of heads")
        self.config = cfg = config
        self.seq_h = self.seq_w = cfg.seq_h
        self.seq_len = cfg.seq_len
        self.token_embed_dim = cfg.token_embed_dim
        self.num_classes = cfg.class_num
        self.buffer_size = cfg.buffer_size
        D, Dd = cfg.encoder_embed_dim, cfg.decoder_embed_dim
        blocks = lambda dim, depth, heads: nn.ModuleList(  # noqa: E731
            Block(dim, heads, cfg.mlp_ratio, cfg.attn_dropout, cfg.proj_dropout) for _ in range(depth))

        self.class_emb = nn.Embedding(cfg.class_num, D)
        self.fake_latent = nn.Parameter(torch.zeros(1, D))
        self.z_proj = nn.Linear(self.token_embed_dim, D)
        self.z_proj_ln = nn.LayerNorm(D, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + self.buffer_size, D))
        self.encoder_blocks = blocks(D, cfg.encoder_depth, cfg.encoder_num_heads)
        self.encoder_norm = nn.LayerNorm(D, eps=1e-6)

        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + self.buffer_size, Dd))
        self.decoder_blocks = blocks(Dd, cfg.decoder_depth, cfg.decoder_num_heads)
        self.decoder_norm = nn.LayerNorm(Dd, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, Dd))
        self.initialize_weights()

        self.diffloss = DiffLoss(self.token_embed_dim, Dd, cfg.diffloss_d, cfg.diffloss_w, cfg.num_sampling_steps)
        self.diffusion_batch_mul = cfg.diffusion_batch_mul

    def initialize_weights(self) -> None:
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- checkpoints ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, config: MARConfig | str = "mar_base", ema: bool = True) -> "MAR":
        """Build a preset (or config) and load an official ``checkpoint-last.pth`` strictly (EMA by default)."""
        model = cls(preset(config) if isinstance(config, str) else config)
        return model.load_checkpoint(path, ema=ema)

    @classmethod
    def from_folder(cls, folder, dtype: torch.dtype = torch.float32) -> "MAR":
        """A MAR saved as ``model.safetensors`` + ``config.json`` (``vargen train mar``, the demo zoo)."""
        from .checkpoint import load_zoo_folder

        return load_zoo_folder(folder, lambda c: cls(MARConfig.from_dict(c)), expected="mar").to(dtype)

    def load_checkpoint(self, path: str, ema: bool = True, trusted: bool = False) -> "MAR":
        prefer = ("model_ema", "model") if ema else ("model", "model_ema")
        load_strict(self, read_state_dict(path, prefer=prefer, trusted=trusted), "MAR",
                    hint="the checkpoint's size does not match this config: mar_base/large/huge need "
                         "preset('mar_base'|'mar_large'|'mar_huge') (DiffLoss 6x1024, 8x1280, 12x1536)")
        return self

    # -- layout ---------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] latents -> [B, L, C·p·p] tokens (channel-major within a patch)."""
        B, C, H, W = x.shape
        p = self.config.patch_size
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, (H // p) * (W // p), C * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B, p, C, h = x.shape[0], self.config.patch_size, self.config.vae_embed_dim, self.seq_h
        x = x.reshape(B, h, h, C, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(B, C, h * p, h * p)

    # -- the transformer ------------------------------------------------------------------------
    def class_embedding(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        if labels is None:
            return self.fake_latent.expand(batch, -1)
        self.check_labels(labels)
        return self.class_emb(labels)

    @property
    def device(self) -> torch.device:
        return self.class_emb.weight.device

    def check_labels(self, labels) -> torch.Tensor:
        """Class ids ``0 .. num_classes-1`` as a LongTensor (``ValueError`` otherwise)."""
        return class_ids(labels, self.num_classes, self.device)

    def forward_mae_encoder(self, x: torch.Tensor, mask: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        x = self.z_proj(x.to(self.z_proj.weight.dtype))
        B, L, D = x.shape
        x = torch.cat([class_embedding[:, None].expand(B, self.buffer_size, D).to(x.dtype), x], dim=1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        keep = torch.cat([mask.new_zeros(B, self.buffer_size), mask], dim=1) == 0
        x = x[keep].reshape(B, -1, D)  # drop masked positions (equal counts per row)
        for blk in self.encoder_blocks:
            x = blk(x)
        return self.encoder_norm(x)

    def forward_mae_decoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        B = x.shape[0]
        keep = torch.cat([mask.new_zeros(B, self.buffer_size), mask], dim=1) == 0
        full = self.mask_token.to(x.dtype).expand(B, keep.shape[1], -1).clone()
        full[keep] = x.reshape(-1, x.shape[-1])
        x = full + self.decoder_pos_embed_learned
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return x[:, self.buffer_size:] + self.diffusion_pos_embed_learned

    def condition(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None,
                  cfg: bool = False) -> torch.Tensor:
        """z [B, L, D'] for every position (encoder + decoder). 1 in ``mask`` = still to generate.

        ``cfg=True`` returns [2B, L, D']: rows [0, B) with ``labels``, rows [B, 2B) with the learned
        null class (``fake_latent``), same tokens and mask. ``labels=None`` means unconditional.
        """
        B, L, C = tokens.shape
        if L != self.seq_len or C != self.token_embed_dim:
            raise ValueError(f"tokens must be [B, {self.seq_len}, {self.token_embed_dim}], got {tuple(tokens.shape)}")
        if mask.shape != (B, L):
            raise ValueError(f"mask must be [B, L] = [{B}, {L}], got {tuple(mask.shape)}")
        counts = mask.sum(-1)
        if B and not bool((counts == counts[0]).all()):
            raise ValueError("every row must have the same number of masked positions (MAR's encoder drops them)")
        if labels is not None and labels.shape[0] != B:
            raise ValueError(f"got {labels.shape[0]} labels for {B} rows")
        mask = mask.to(tokens.dtype)
        emb = self.class_embedding(labels, B)
        if cfg:
            tokens, mask = torch.cat([tokens, tokens]), torch.cat([mask, mask])
            emb = torch.cat([emb, self.fake_latent.expand(B, -1)])
        return self.forward_mae_decoder(self.forward_mae_encoder(tokens, mask, emb), mask)

    def memory_per_row(self, tokens_per_step: int) -> int:
        """Bytes one row (a CFG row is another) needs (``ContinuousModel.memory_per_row``): one encoder + decoder pass
        over the buffer and every position (one layer's activations at a time, attention scores in float32), the
        latents and z it keeps, and the diffusion head over ``tokens_per_step`` tokens; an upper bound."""
        cfg = self.config
        S, width = self.seq_len + self.buffer_size, max(cfg.encoder_embed_dim, cfg.decoder_embed_dim)
        heads = max(cfg.encoder_num_heads, cfg.decoder_num_heads)
        itemsize = self.fake_latent.dtype.itemsize
        layer = S * (7 * width + 3 * round(width * cfg.mlp_ratio)) * itemsize + heads * S * S * 4
        kept = S * width * itemsize * 3 + self.seq_len * self.token_embed_dim * 4 * 4  # x, z; tokens and masks
        head = tokens_per_step * (8 * cfg.diffloss_w + 8 * self.token_embed_dim) * 4
        return int(layer + kept + head)

    # -- training -------------------------------------------------------------------------------
    def sample_orders(self, batch: int, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
        """One random generation order (a permutation of 0..L-1) per row."""
        device = device or self.fake_latent.device
        gdev = generator.device if generator is not None else "cpu"
        return torch.stack([torch.randperm(self.seq_len, generator=generator, device=gdev)
                            for _ in range(batch)]).to(device)

    def mask_ratio(self, generator: torch.Generator | None = None) -> float:
        """One masking ratio per batch: N(1, 0.25²) truncated to [mask_ratio_min, 1] (inverse-CDF draw)."""
        u = torch.rand((), dtype=torch.float64, generator=generator)
        normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
        lo = normal.cdf(torch.tensor((self.config.mask_ratio_min - 1.0) / 0.25, dtype=torch.float64))
        hi = normal.cdf(torch.tensor(0.0, dtype=torch.float64))
        return float(1.0 + 0.25 * normal.icdf(lo + u * (hi - lo)))

    def forward(self, latents: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
                orders: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss for VAE latents ``[B, C, h, w]`` (already scaled by 0.2325) and labels."""
        self.check_labels(labels)
        x = self.patchify(latents)
        B, L, _ = x.shape
        target = x.detach()
        if orders is None:
            orders = self.sample_orders(B, generator, x.device)
        num_masked = int(math.ceil(L * self.mask_ratio(generator)))
        mask = torch.zeros(B, L, device=x.device).scatter(-1, orders[:, :num_masked], 1.0)
        emb = self.class_emb(labels)
        if self.training and self.config.label_drop_prob > 0:  # label dropout trains the CFG null class
            gdev = generator.device if generator is not None else "cpu"
            drop = (torch.rand(B, generator=generator, device=gdev) < self.config.label_drop_prob).to(x.device)
            emb = torch.where(drop[:, None], self.fake_latent.expand(B, -1), emb)
        z = self.forward_mae_decoder(self.forward_mae_encoder(x, mask, emb), mask)
        m = self.diffusion_batch_mul
        return self.diffloss(target.reshape(B * L, -1).repeat(m, 1), z.reshape(B * L, -1).repeat(m, 1),
                             mask.reshape(B * L).repeat(m), generator=generator)


def load_mar(path: str, name: str = "mar_base", ema: bool = True) -> MAR:
    """``mar_base`` / ``mar_large`` / ``mar_huge`` from an official checkpoint (EMA weights by default)."""
    return MAR.from_pretrained(path, name, ema=ema).eval()


__all__ = ["MARConfig", "MAR", "DiffLoss", "PRESETS", "preset", "load_mar"]
