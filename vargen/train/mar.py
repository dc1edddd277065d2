"""Training helpers for MAR and its KL VAE (used for the tiny demo models, not for reproducing the paper).

* MAR's loss is ``MAR.forward`` (random order, truncated-normal mask ratio, label dropout, DiffLoss eps-MSE +
  VB on masked positions, ``diffusion_batch_mul`` noise draws); the run loop is
  :func:`vargen.train.common.run_steps`.
* :func:`vae_loss`: reconstruction (L1) + ``kl_weight`` · KL(q || N(0, I)). MAR's VAE was trained with
  LDM's recipe (L1 + LPIPS + KL + PatchGAN); the perceptual and adversarial terms need pretrained
  networks and are left out here.
* :func:`make_optimizer`: AdamW (MAR: lr 8e-4 at batch 2048, betas (0.9, 0.95), wd 0.02); no weight decay on
  norms, biases, embeddings and tokens; the linear warm-up + cosine schedule is ``run_steps``'.
* :class:`EMA` of the weights (MAR evaluates ``model_ema``, decay 0.9999).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..models.mar import MAR
from ..tokenizers.kl import LATENT_SCALE, KLVAE
from .common import EMA, init_from, param_groups


def make_optimizer(model: nn.Module, lr: float = 8e-4, weight_decay: float = 0.02, betas=(0.9, 0.95)):
    """AdamW (MAR's betas and decay); 1-D params, embeddings and tokens get no decay. The schedule is
    :func:`vargen.train.common.lr_at`, set by the one loop."""
    flat = lambda n, p: p.ndim < 2 or "pos_embed" in n or n in ("mask_token", "fake_latent") or "class_emb" in n  # noqa: E731
    return torch.optim.AdamW(param_groups(model, weight_decay, flat), lr=lr, betas=betas)


def vae_loss(vae: KLVAE, images: torch.Tensor, kl_weight: float = 1e-6, generator: torch.Generator | None = None):
    """(total, reconstruction, kl) for images in [-1, 1]; KL is averaged per image."""
    recon, posterior = vae(images, generator)
    rec = (recon - images).abs().mean()
    kl = posterior.kl().mean() / images[0].numel()
    return rec + kl_weight * kl, rec.detach(), kl.detach()


@torch.no_grad()
def latent_scale(vae: KLVAE, images: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """1 / std of posterior samples (how MAR's 0.2325 was obtained for KL-16; no mean shift)."""
    return float(1.0 / vae.encode(images).sample(generator).std())


def store_scale_factor(folder, data: str, images: int = 5000, seed: int = 0, image_size: int = 32) -> float:
    """Measure a KL VAE folder's ``scale_factor`` (:func:`latent_scale` on ``images`` random training images, as
    ``vargen train kl-vae`` does at the end of a run) and write it into its ``config.json`` (for snapshots of
    unfinished runs, :func:`vargen.train.common.snapshot_run`)."""
    from .data import load_images, to_model_range

    path = Path(folder) / "config.json"
    vae = KLVAE.from_folder(folder)
    pool, _, _ = load_images(data, "train", image_size)
    gen = torch.Generator().manual_seed(seed)
    scale = latent_scale(vae, to_model_range(pool[torch.randperm(pool.shape[0], generator=gen)[:images]]), gen)
    meta = json.loads(path.read_text())
    meta["config"]["scale_factor"] = round(scale, 6)
    path.write_text(json.dumps(meta, indent=2))
    return scale


# ------------------------------------------------------------------------------------------------
# Demo-zoo runs (``vargen train kl-vae | mar``): resumable, fp16 export, config.json
# ------------------------------------------------------------------------------------------------


@dataclass
class MARRunArgs:
    """``kind``: ``kl-vae`` (images) or ``mar`` (posterior samples of the ``vae`` folder's latents)."""

    kind: str
    data: str
    out: str
    vae: str | None = None
    init: str | None = None
    steps: int = 2000
    batch_size: int = 64
    lr: float = 8e-4
    warmup: int = 100
    ema: float = 0.999
    kl_weight: float = 1e-6
    seed: int = 0
    image_size: int = 32
    save_every: int = 200
    stop_at: int | None = None
    threads: int = 0
    config: dict = field(default_factory=dict)


def cached_moments(vae_folder: str, data: str, split: str = "train", flips: bool = True, image_size: int = 32):
    """(posterior moments [N, 2C, h, w] fp16, labels [N]) of a split, cached next to the VAE (MAR's
    ``main_cache.py`` does the same with ten-crop; here horizontal flips)."""
    from .data import cached_encoding

    cache = Path(vae_folder) / f"moments-{split}{'-flip' if flips else ''}-{image_size}px.pt"
    vae = KLVAE.from_folder(vae_folder)
    return cached_encoding(cache, lambda x: vae.moments(x).half(), data, split, flips, image_size)


def run_mar_training(args: MARRunArgs) -> Path:
    from ..models.mar import MARConfig
    from ..tokenizers.kl import KLPosterior
    from .common import export_fp16, run_steps, write_config
    from .data import load_images, random_flip, require_data, to_model_range

    if args.kind not in ("kl-vae", "mar"):
        raise ValueError(f"unknown MAR training kind {args.kind!r}")
    if args.kind == "mar" and not args.vae:
        raise ValueError("mar training needs --vae (a trained KL VAE folder)")
    if args.threads:
        torch.set_num_threads(args.threads)
    require_data(args.data)  # before the run folder exists
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    common = dict(steps=args.steps, lr=args.lr, warmup=args.warmup, stop_at=args.stop_at, save_every=args.save_every)

    if args.kind == "kl-vae":
        init_cfg, init_state = {}, None
        if args.init:  # fine-tune: the folder's config is the default of --config, its weights where they fit
            from ..models.checkpoint import read_folder_config, read_state_dict

            init_cfg = {k: v for k, v in read_folder_config(args.init, "kl_vae")["config"].items() if k != "scale_factor"}
            init_state = read_state_dict(Path(args.init) / "model.safetensors")
        cfg = {**init_cfg, **args.config, "resolution": args.image_size}
        vae = KLVAE(**cfg).train()
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
        write_config(out, "kl_vae", plain)  # a snapshot of last.pt loads with it; scale_factor is measured at the end
        if init_state is not None:
            n, total = init_from(vae, init_state)
            print(f"initialised {n} of {total} tensors from {args.init}")
        images, _, _ = load_images(args.data, "train", args.image_size)
        print(f"KL VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M parameters")

        def step_fn(step):
            idx = torch.randint(0, images.shape[0], (args.batch_size,), generator=gen)
            loss, rec, kl = vae_loss(vae, random_flip(to_model_range(images[idx]), gen), args.kl_weight, gen)
            return loss, args.batch_size, {"l1": float(rec), "kl": float(kl)}

        opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
        if not run_steps(out, vae, opt, gen, step_fn, grad_clip=1.0, **common)[0]:
            return out / "last.pt"
        # MAR's convention: tokens are posterior samples times 1 / std (no mean shift), measured on 5,000 images
        probe = to_model_range(images[torch.randperm(images.shape[0], generator=gen)[:5000]])
        scale = latent_scale(vae.eval(), probe, gen)
        export_fp16(vae, out / "model.safetensors")
        write_config(out, "kl_vae", {**plain, "scale_factor": round(scale, 6)})
        return out / "model.safetensors"

    vae_cfg = json.loads((Path(args.vae) / "config.json").read_text())["config"]
    init_cfg, init_state = {}, None
    if args.init:  # fine-tune a MAR: its config is the default of --config, its weights where they fit
        from ..models.checkpoint import read_folder_config, read_state_dict

        init_cfg = read_folder_config(args.init, "mar")["config"]
        init_state = read_state_dict(Path(args.init) / "model.safetensors")
    moments, labels = cached_moments(args.vae, args.data, "train", True, args.image_size)
    cfg = MARConfig.from_dict({**init_cfg, **args.config, "img_size": args.image_size,
                               "vae_stride": 2 ** (len(vae_cfg["ch_mult"]) - 1), "vae_embed_dim": vae_cfg["embed_dim"],
                               "class_num": int(labels.max()) + 1})
    model = MAR(cfg)
    if init_state is not None:
        n, total = init_from(model, init_state)
        print(f"initialised {n} of {total} tensors from {args.init}")
    ema = EMA(model, args.ema) if args.ema > 0 else None
    print(f"MAR: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {moments.shape[0]} latents "
          f"of {cfg.seq_len} tokens x {cfg.token_embed_dim}")
    scale = float(vae_cfg["scale_factor"])

    def step_fn(step):
        idx = torch.randint(0, moments.shape[0], (args.batch_size,), generator=gen)
        latents = KLPosterior.from_moments(moments[idx].float()).sample(gen) * scale
        return model(latents, labels[idx], generator=gen), args.batch_size, {}

    opt = make_optimizer(model, args.lr)
    if not run_steps(out, model, opt, gen, step_fn, grad_clip=3.0, ema=ema, unit="img", **common)[0]:
        return out / "last.pt"
    export_fp16(ema.model if ema is not None else model, out / "model.safetensors")
    config = {k: v for k, v in cfg.__dict__.items() if k != "norm_layer"}
    write_config(out, "mar", config, ema=args.ema)
    return out / "model.safetensors"


__all__ = ["MARRunArgs", "run_mar_training", "make_optimizer", "EMA", "vae_loss", "latent_scale", "LATENT_SCALE",
           "store_scale_factor"]
