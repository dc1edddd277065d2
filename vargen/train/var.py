"""Training helpers for the VAR family: the multi-scale VQVAE, class-conditional VAR, and CoDe's
specialised drafter / refiner fine-tuning (used for the small demo zoo; tested on tiny runs only).

* VQVAE: upstream's tokenizer-training code is unreleased (research/var_code.md §4); here it is the
  quantiser's own loss (codebook + beta * commitment, averaged over scales, straight-through f_hat)
  plus an L2/L1 pixel reconstruction. No perceptual or GAN loss.
* VAR: per-token cross-entropy over all L positions with uniform weight 1/L, labels dropped to the
  null class with probability ``cond_drop_rate`` (CFG training), AdamW (betas 0.9/0.95, weight
  decay 0.05 on matrices only), linear warm-up then cosine decay.
* CoDe (research/var_code.md §2.3): the drafter is fine-tuned with cross-entropy on its scales
  1..N only; the refiner is distilled from the large model's logits with
  ``KL(softmax(t/T) || softmax(s/T)) * T**2`` (batch mean over tokens), first on all scales
  (``draft_steps=0``), then only on scales N+1..K.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

from .common import init_from, param_groups, run_steps

__all__ = [
    "vqvae_loss", "var_inputs", "var_loss", "code_drafter_loss", "distillation_kl", "code_refiner_loss",
    "make_optimizer", "train_vqvae", "train_var", "train_code_refiner",
]


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def restart_dead_codes(vae, images: torch.Tensor, generator: torch.Generator, fraction: float = 0.03) -> int:
    """Re-seed codes whose usage (the quantiser's EMA of hits per step, all scales) fell below ``fraction``
    of the mean with random encoder latents of ``images`` (the dead-code restarts of e.g. Dhariwal et
    al. 2020, Jukebox §2.2, and Zeghidour et al. 2021, SoundStream §3.3). Returns how many were restarted."""
    q = vae.quantize
    usage = q.ema_vocab_hit_SV.sum(0)
    dead = (usage < fraction * usage.mean()).nonzero().squeeze(1)
    if dead.numel() == 0:
        return 0
    f = vae.encode_latent(images).float()
    rows = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
    pick = torch.randint(0, rows.shape[0], (dead.numel(),), generator=generator)
    q.embedding.weight[dead] = rows[pick].to(q.embedding.weight.dtype)
    q.ema_vocab_hit_SV[:, dead] = q.ema_vocab_hit_SV.mean(1, keepdim=True)  # a grace period before the next check
    return int(dead.numel())


def vqvae_loss(vae, images: torch.Tensor, l1_weight: float = 0.0):
    """(loss, parts) for one batch of images in [-1, 1]."""
    recon, vq = vae(images)
    rec = F.mse_loss(recon, images) + (l1_weight * F.l1_loss(recon, images) if l1_weight else 0.0)
    return rec + vq, {"recon": float(rec.detach()), "vq": float(vq.detach())}


@torch.no_grad()
def var_inputs(vae, images: torch.Tensor):
    """Targets [B, L] and teacher-forcing inputs [B, L - first_l, Cvae] from images (frozen VQVAE)."""
    idx = vae.img_to_idx(images)
    return torch.cat(idx, dim=1), vae.idx_to_var_input(idx)


def _scale_slice(model, first_scale: int, last_scale: int | None = None) -> slice:
    last_scale = len(model.patch_nums) if last_scale is None else last_scale
    return slice(model.begin_ends[first_scale][0], model.begin_ends[last_scale - 1][1])


def var_loss(model, labels, targets_BL, x_BLCv, generator=None, positions: slice | None = None) -> torch.Tensor:
    """Cross-entropy of teacher-forced logits (label dropout happens inside ``model`` in train mode)."""
    logits = model(labels, x_BLCv, generator=generator)
    positions = positions or slice(None)
    return F.cross_entropy(logits[:, positions].reshape(-1, logits.shape[-1]), targets_BL[:, positions].reshape(-1))


def code_drafter_loss(drafter, labels, targets_BL, x_BLCv, draft_steps: int, generator=None) -> torch.Tensor:
    """CoDe drafter specialisation: ground-truth cross-entropy on scales 0..N-1 only."""
    return var_loss(drafter, labels, targets_BL, x_BLCv, generator, _scale_slice(drafter, 0, draft_steps))


def distillation_kl(student_logits, teacher_logits, T: float = 1.0) -> torch.Tensor:
    """``KL(p_teacher^T || p_student^T) * T**2``, averaged over tokens (rows of the flattened logits)."""
    V = student_logits.shape[-1]
    log_s = F.log_softmax(student_logits.reshape(-1, V).float() / T, dim=-1)
    log_t = F.log_softmax(teacher_logits.reshape(-1, V).float() / T, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * T**2


def code_refiner_loss(refiner, teacher, labels, x_BLCv, draft_steps: int, T: float = 1.0, targets_BL=None,
                      alpha: float = 1.0, generator=None) -> torch.Tensor:
    """CoDe refiner specialisation: distil the teacher's logits on scales N..K-1 (``draft_steps=0``: all).

    ``alpha < 1`` mixes in ground-truth cross-entropy: ``alpha * KD + (1 - alpha) * CE``. Label dropout
    uses one shared draw so teacher and student see the same (possibly null) labels.
    """
    if not 0 <= draft_steps < len(refiner.patch_nums):
        raise ValueError(f"draft_steps must be in 0..{len(refiner.patch_nums) - 1}, got {draft_steps}")
    if tuple(refiner.patch_nums) != tuple(teacher.patch_nums):
        raise ValueError("refiner and teacher have different patch_nums")
    labels = refiner.check_labels(labels)
    if refiner.training and refiner.config.cond_drop_rate > 0:
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < refiner.config.cond_drop_rate
        labels = torch.where(drop, torch.full_like(labels, refiner.num_classes), labels)
    pos = _scale_slice(refiner, draft_steps)
    K = len(refiner.patch_nums)
    with torch.no_grad():
        t_logits = teacher.forward_scales(teacher.condition(labels), x_BLCv, None, 0, K, logits_from=0)[:, pos]
    s_logits = refiner.forward_scales(refiner.condition(labels), x_BLCv, None, 0, K, logits_from=0)[:, pos]
    loss = distillation_kl(s_logits, t_logits, T)
    if alpha < 1:
        if targets_BL is None:
            raise ValueError("alpha < 1 mixes in cross-entropy and needs targets_BL")
        ce = F.cross_entropy(s_logits.reshape(-1, s_logits.shape[-1]), targets_BL[:, pos].reshape(-1))
        loss = alpha * loss + (1 - alpha) * ce
    return loss


# ------------------------------------------------------------------------------------------------
# Optimiser and schedule
# ------------------------------------------------------------------------------------------------


def make_optimizer(model, lr: float = 1e-4, weight_decay: float = 0.05, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not on biases, gains, embeddings of positions)."""
    flat = lambda name, p: p.ndim < 2 or "pos_" in name or "scale_mul" in name  # noqa: E731
    return torch.optim.AdamW(param_groups(model, weight_decay, flat), lr=lr, betas=betas)


def _loop(model, batches: Iterable, steps: int, lr: float, warmup: int, grad_clip: float, loss_fn) -> list[float]:
    """An in-memory run of :func:`vargen.train.common.run_steps` over ``batches`` (cycled); the losses."""
    batches = list(batches)

    def step_fn(step):
        return loss_fn(batches[step % len(batches)]), 1, {}

    _, losses = run_steps(None, model, make_optimizer(model, lr), torch.Generator(), step_fn, steps=steps, lr=lr,
                          warmup=warmup, grad_clip=grad_clip, final_ratio=0.0, progress=False)
    return losses


def train_vqvae(vae, batches: Iterable, steps: int, lr: float = 2e-4, warmup: int = 0, grad_clip: float = 2.0) -> list[float]:
    vae.train().requires_grad_(True)
    losses = _loop(vae, batches, steps, lr, warmup, grad_clip, lambda b: vqvae_loss(vae, b[0])[0])
    vae.eval().requires_grad_(False)
    return losses


def train_var(model, vae, batches: Iterable, steps: int, lr: float = 1e-4, warmup: int = 0, grad_clip: float = 2.0,
              draft_steps: int | None = None, generator=None) -> list[float]:
    """Class-conditional VAR training; ``draft_steps=N`` gives CoDe's drafter specialisation (CE on scales < N)."""
    vae.eval()

    def loss_fn(batch):
        images, labels = batch
        targets, x = var_inputs(vae, images)
        if draft_steps is not None:
            return code_drafter_loss(model, labels, targets, x, draft_steps, generator)
        return var_loss(model, labels, targets, x, generator)

    model.train()
    losses = _loop(model, batches, steps, lr, warmup, grad_clip, loss_fn)
    model.eval()
    return losses


def train_code_refiner(refiner, teacher, vae, batches: Iterable, steps: int, draft_steps: int, T: float = 1.0,
                       lr: float = 1e-4, warmup: int = 0, grad_clip: float = 2.0, alpha: float = 1.0, generator=None) -> list[float]:
    """CoDe refiner specialisation by distillation from ``teacher`` on scales >= draft_steps (0: all scales)."""
    vae.eval()
    teacher.eval()

    def loss_fn(batch):
        images, labels = batch
        targets, x = var_inputs(vae, images)
        return code_refiner_loss(refiner, teacher, labels, x, draft_steps, T, targets, alpha, generator)

    refiner.train()
    losses = _loop(refiner, batches, steps, lr, warmup, grad_clip, loss_fn)
    refiner.eval()
    return losses


# ------------------------------------------------------------------------------------------------
# Demo-zoo runs (``vargen train var-vqvae | var | code-refiner``): resumable, fp16 export, config.json
# ------------------------------------------------------------------------------------------------



@dataclass
class VARRunArgs:
    """One training run. ``kind``: ``vqvae`` (images), ``var`` (tokens of ``vqvae``), ``code-refiner``
    (distil ``teacher`` into the model initialised from ``init`` on scales >= ``draft_steps``)."""

    kind: str
    data: str
    out: str
    vqvae: str | None = None
    teacher: str | None = None
    init: str | None = None
    draft_steps: int = 0
    temperature: float = 1.0
    alpha: float = 1.0
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    warmup: int = 100
    seed: int = 0
    image_size: int = 32
    save_every: int = 200
    stop_at: int | None = None
    threads: int = 0
    restart_every: int = 0
    config: dict = field(default_factory=dict)


def cached_scale_tokens(vae, vqvae_folder: str, data: str, split: str = "train", flips: bool = True,
                        image_size: int = 32):
    """(all scales' indices [N, L] int16, labels [N]) of a split by ``vae``, cached next to the tokenizer."""
    from .data import cached_encoding

    cache = Path(vqvae_folder) / f"scale-tokens-{split}{'-flip' if flips else ''}-{image_size}px.pt"
    encode = lambda x: torch.cat(vae.img_to_idx(x), dim=1).to(torch.int16)  # noqa: E731
    return cached_encoding(cache, encode, data, split, flips, image_size)


def _tokenizer_init(folder: str | None) -> tuple[dict | None, dict]:
    """(state dict, config) of a tokenizer folder to start from: a multi-scale VQVAE (its config is the default
    of the new run's) or a LlamaGen VQ (weights only, mapped by :func:`_llamagen_to_msvq`)."""
    if not folder:
        return None, {}
    from ..models.checkpoint import read_folder_config, read_state_dict

    meta = read_folder_config(folder, ("var_vqvae", "llamagen_vq"))
    state = read_state_dict(Path(folder) / "model.safetensors")
    if meta["type"] == "llamagen_vq":
        for key in [key for key in state if key.endswith((".q.weight", ".q.bias"))]:  # fuse q, k, v into qkv
            stem, kind = key.rsplit(".q.", 1)
            state[f"{stem}.qkv.{kind}"] = torch.cat([state.pop(f"{stem}.{n}.{kind}") for n in "qkv"])
        return state, {}
    return state, {k: v for k, v in meta["config"].items() if k != "test_mode"}


def _llamagen_to_msvq(key: str, levels: int) -> str | None:
    """A LlamaGen VQ key -> the multi-scale VQVAE key of the same layer, levels aligned at full resolution
    (encoder block i = down.i; decoder block i of ``levels`` = up.(levels - 1 - i); mid 0/1/2 = block_1 /
    attn_1 / block_2). Layers without a counterpart of the same shape (the quantiser, the latent convolutions,
    the extra coarse levels) are left to :func:`init_from`'s name and shape check."""
    import re

    if key.startswith(("quantize.", "quant_conv.", "post_quant_conv.")):  # another quantiser's latent space
        return None
    key = key.replace("encoder.conv_blocks.", "encoder.down.").replace(".res.", ".block.")
    key = re.sub(r"\.mid\.0\.", ".mid.block_1.", key)
    key = re.sub(r"\.mid\.1\.", ".mid.attn_1.", key)
    key = re.sub(r"\.mid\.2\.", ".mid.block_2.", key)
    m = re.match(r"decoder\.conv_blocks\.(\d+)\.(.*)", key)
    return f"decoder.up.{levels - 1 - int(m.group(1))}.{m.group(2)}" if m else key


def build_vqvae(config: dict, init: str | None = None):
    """(a trainable multi-scale VQVAE, its config) from constructor fields, optionally started from the
    tokenizer folder ``init``: a multi-scale VQVAE (its config is the default of ``config``; a codebook of another
    size starts with the old codes) or LlamaGen's VQ (the layers of the same name and shape, levels aligned at
    full resolution)."""
    from ..tokenizers.msvq import MultiScaleVQVAE, VQVAEConfig

    init_state, init_cfg = _tokenizer_init(init)
    cfg = {**init_cfg, **config, "test_mode": False}
    cfg = VQVAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    vae = MultiScaleVQVAE(cfg).train().requires_grad_(True)
    if init_state is not None:
        levels = len({k.split(".")[2] for k in init_state if k.startswith("decoder.conv_blocks.")})
        rename = (lambda k: _llamagen_to_msvq(k, levels)) if levels else None  # noqa: E731
        n, total = init_from(vae, init_state, rename)
        book, old = vae.quantize.embedding.weight, init_state.get("quantize.embedding.weight")
        if rename is None and old is not None and old.shape != book.shape and old.shape[1] == book.shape[1]:
            with torch.no_grad():  # a larger (smaller) codebook starts with the old codes (the first ones)
                book[: old.shape[0]] = old[: book.shape[0]].to(book.dtype)
            n += 1
        print(f"initialised {n} of {total} tensors from {init}")
    return vae, cfg


def run_var_training(args: VARRunArgs) -> Path:
    """Train one member of the VAR demo family; returns the exported ``model.safetensors`` (or ``last.pt``)."""
    from ..models.var import VAR, VARConfig
    from ..tokenizers.msvq import MultiScaleVQVAE
    from .common import export_fp16, write_config
    from .data import load_images, random_flip, require_data, to_model_range

    if args.kind not in ("vqvae", "var", "code-refiner"):
        raise ValueError(f"unknown VAR training kind {args.kind!r}")
    if args.kind != "vqvae" and not args.vqvae:
        raise ValueError(f"{args.kind} training needs --vqvae (a trained multi-scale VQVAE folder)")
    if args.threads:
        torch.set_num_threads(args.threads)
    require_data(args.data)  # before the run folder exists
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    common = dict(steps=args.steps, lr=args.lr, warmup=args.warmup, stop_at=args.stop_at, save_every=args.save_every)

    if args.kind == "vqvae":
        vae, cfg = build_vqvae(args.config, args.init)
        write_config(out, "var_vqvae", {**asdict(cfg), "test_mode": True})  # a snapshot of last.pt loads with it
        images, _, _ = load_images(args.data, "train", args.image_size)
        print(f"VQVAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M parameters, scales {cfg.v_patch_nums}")

        def step_fn(step):
            idx = torch.randint(0, images.shape[0], (args.batch_size,), generator=gen)
            x = random_flip(to_model_range(images[idx]), gen)
            if args.restart_every and step >= args.warmup and step % args.restart_every == 0:
                parts_restart = restart_dead_codes(vae, x, gen)
            else:
                parts_restart = 0
            loss, parts = vqvae_loss(vae, x)
            return loss, args.batch_size, {**parts, "restarted": float(parts_restart)}

        opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
        if not run_steps(out, vae, opt, gen, step_fn, grad_clip=2.0, **common)[0]:
            return out / "last.pt"
        export_fp16(vae, out / "model.safetensors")
        write_config(out, "var_vqvae", {**asdict(cfg), "test_mode": True})
        return out / "model.safetensors"

    vae = MultiScaleVQVAE.from_folder(args.vqvae)
    tokens, labels = cached_scale_tokens(vae, args.vqvae, args.data, "train", True, args.image_size)
    if args.init:
        model = VAR.from_folder(args.init)
        model.requires_grad_(True)
    else:
        cfg = VARConfig.from_kwargs(**{**args.config, "num_classes": int(labels.max()) + 1, "vocab_size": vae.vocab_size,
                                       "Cvae": vae.Cvae, "patch_nums": vae.patch_nums})
        model = VAR(cfg)
    model.attach_vae(vae)
    print(f"VAR: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {tokens.shape[0]} sequences "
          f"of {tokens.shape[1]} tokens")
    teacher = None
    if args.kind == "code-refiner":
        if not args.teacher:
            raise ValueError("code-refiner training needs --teacher (the drafter folder)")
        teacher = VAR.from_folder(args.teacher, vae)

    def step_fn(step):
        idx = torch.randint(0, tokens.shape[0], (args.batch_size,), generator=gen)
        t, y = tokens[idx].long(), labels[idx]
        x = vae.idx_to_var_input(vae.split_tokens(t))
        if teacher is None:
            loss = var_loss(model, y, t, x, gen)
        else:
            loss = code_refiner_loss(model, teacher, y, x, args.draft_steps, args.temperature, t, args.alpha, gen)
        return loss, t.numel(), {}

    opt = make_optimizer(model, args.lr)
    if not run_steps(out, model, opt, gen, step_fn, grad_clip=2.0, unit="tok", **common)[0]:
        return out / "last.pt"
    export_fp16(model, out / "model.safetensors")
    extra = {"distilled_from": args.teacher, "draft_steps": args.draft_steps} if teacher is not None else {}
    write_config(out, "var", asdict(model.config), **extra)
    return out / "model.safetensors"
