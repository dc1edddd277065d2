"""Training helpers for MAR and its KL VAE (used for the tiny demo models, not for reproducing the paper).

* :func:`mar_train_step`: MAR's loss (random order, truncated-normal mask ratio, label dropout, DiffLoss
  eps-MSE + VB on masked positions, ``diffusion_batch_mul`` noise draws) and one AdamW step.
* :func:`vae_loss`: reconstruction (L1) + ``kl_weight`` · KL(q || N(0, I)). MAR's VAE was trained with
  LDM's recipe (L1 + LPIPS + KL + PatchGAN); the perceptual and adversarial terms need pretrained
  networks and are left out here.
* :func:`make_optimizer`: AdamW (MAR: lr 8e-4 at batch 2048, betas (0.9, 0.95), wd 0.02) with linear
  warm-up and cosine decay; no weight decay on norms, biases, embeddings and tokens.
* :class:`EMA` of the weights (MAR evaluates ``model_ema``, decay 0.9999).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..models.mar import MAR
from .common import EMA
from ..tokenizers.kl import LATENT_SCALE, KLVAE


def make_optimizer(model: nn.Module, lr: float = 8e-4, weight_decay: float = 0.02, betas=(0.9, 0.95),
                   warmup_steps: int = 0, total_steps: int = 1, min_lr: float = 0.0):
    """AdamW plus a warm-up + cosine ``LambdaLR``; 1-D params, embeddings and tokens get no decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        flat = p.ndim < 2 or "pos_embed" in name or name in ("mask_token", "fake_latent") or "class_emb" in name
        (no_decay if flat else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return (min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))) / lr

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def mar_train_step(model: MAR, optimizer, latents: torch.Tensor, labels: torch.Tensor,
                   generator: torch.Generator | None = None, scheduler=None, ema: EMA | None = None,
                   grad_clip: float = 3.0) -> float:
    """One MAR update on scaled VAE latents ``[B, C, h, w]``; returns the loss."""
    model.train()
    loss = model(latents, labels, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if ema is not None:
        ema.update(model)
    return float(loss.detach())


def vae_loss(vae: KLVAE, images: torch.Tensor, kl_weight: float = 1e-6, generator: torch.Generator | None = None):
    """(total, reconstruction, kl) for images in [-1, 1]; KL is averaged per image."""
    recon, posterior = vae(images, generator)
    rec = (recon - images).abs().mean()
    kl = posterior.kl().mean() / images[0].numel()
    return rec + kl_weight * kl, rec.detach(), kl.detach()


def vae_train_step(vae: KLVAE, optimizer, images: torch.Tensor, kl_weight: float = 1e-6,
                   generator: torch.Generator | None = None, scheduler=None) -> float:
    vae.train()
    loss, _, _ = vae_loss(vae, images, kl_weight, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())


@torch.no_grad()
def latent_scale(vae: KLVAE, images: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """1 / std of posterior samples (how MAR's 0.2325 was obtained for KL-16; no mean shift)."""
    return float(1.0 / vae.encode(images).sample(generator).std())


__all__ = ["make_optimizer", "EMA", "mar_train_step", "vae_loss", "vae_train_step", "latent_scale", "LATENT_SCALE"]
