"""Train LlamaGen's VQ tokenizer: reconstruction (L2) + codebook + commitment losses.

LlamaGen's recipe also adds LPIPS and a PatchGAN; both need pretrained networks that cannot be
downloaded offline, so they are left out (research/llamagen.md §5.5). The demo tokenizer therefore
optimises PSNR directly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..tokenizers.llamagen_vq import VQConfig, VQModel
from .common import EMA, export_fp16, run_steps
from .data import load_images, random_flip, to_model_range


@dataclass
class VQTrainArgs:
    data: str
    out: str
    steps: int = 4000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 200
    ema: float = 0.0
    seed: int = 0
    image_size: int = 32
    save_every: int = 500
    stop_at: int | None = None  # end this run early (checkpointed), keeping the schedule of ``steps``
    threads: int = 0
    config: dict = field(default_factory=dict)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image for images in [-1, 1] (computed on the [0, 1] scale, clamped)."""
    a = (a.clamp(-1, 1) + 1) / 2
    b = (b.clamp(-1, 1) + 1) / 2
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def train_vq(args: VQTrainArgs) -> Path:
    from ..runtime import configure_threads

    configure_threads(args.threads)
    out = Path(args.out)
    cfg = VQConfig.from_dict(args.config)
    torch.manual_seed(args.seed)
    model = VQModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    ema = EMA(model, args.ema) if args.ema > 0 else None
    gen = torch.Generator().manual_seed(args.seed)
    images, _, _ = load_images(args.data, "train", args.image_size)

    def step_fn(step):
        idx = torch.randint(0, images.shape[0], (args.batch_size,), generator=gen)
        x = random_flip(to_model_range(images[idx]), gen)
        recon, q = model(x)
        rec = F.mse_loss(recon, x)
        return rec + q["codebook"] + q["commit"], args.batch_size, {"rec": rec.item()}

    done, _ = run_steps(out, model, opt, gen, step_fn, steps=args.steps, lr=args.lr, warmup=args.warmup,
                        stop_at=args.stop_at, save_every=args.save_every, grad_clip=1.0, ema=ema, unit="img")
    if not done:
        return out / "last.pt"
    final = ema.model if ema is not None else model
    export_fp16(final, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps({"type": "llamagen_vq", "config": cfg.to_dict()}, indent=2))
    return out / "model.safetensors"


def load_tokenizer_folder(folder):
    """Any demo-zoo tokenizer folder by its ``config.json`` type: LlamaGen VQ, VAR's multi-scale VQVAE, MAR's KL VAE."""
    from ..zoo import TOKENIZER_TYPES, load_folder

    return load_folder(folder, TOKENIZER_TYPES)


def _reconstruct(model, x: torch.Tensor):
    """(reconstruction, code indices or None): VQ tokenizers quantise; the KL VAE decodes its posterior mean."""
    if isinstance(model, VQModel):
        idx = model.encode(x)
        return model.decode(idx), idx.flatten()
    if hasattr(model, "img_to_idx"):  # VAR's multi-scale VQVAE: all scales' indices
        idx = model.img_to_idx(x)
        return model.idx_to_img(idx), torch.cat(idx, dim=1).flatten()
    return model.decode(model.encode(x).mode()).clamp(-1, 1), None


@torch.no_grad()
def evaluate_psnr(model, data: str, split: str = "test", image_size: int = 32, batch_size: int = 250,
                  limit: int | None = None) -> dict[str, float]:
    """Mean reconstruction PSNR (dB) over a split, and codebook usage for VQ tokenizers."""
    images, _, _ = load_images(data, split, image_size)
    if limit:
        images = images[:limit]
    model.eval()
    size = getattr(getattr(model, "config", None), "codebook_size", None) or getattr(model, "vocab_size", None)
    vals, used = [], torch.zeros(size or 1, dtype=torch.bool)
    dtype = next(model.parameters()).dtype
    for i in range(0, images.shape[0], batch_size):
        x = to_model_range(images[i : i + batch_size]).to(dtype)
        recon, idx = _reconstruct(model, x)
        if idx is not None:
            used[idx] = True
        vals.append(psnr(recon.float(), x.float()))
    out = {"psnr_db": float(torch.cat(vals).mean()), "images": int(images.shape[0])}
    if size:
        out["codebook_usage"] = float(used.float().mean())
    return out
