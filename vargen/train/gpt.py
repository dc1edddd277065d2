"""Train a class-conditional LlamaGen GPT on the tokens of a trained VQ tokenizer.

LlamaGen's recipe (research/llamagen.md §1.9): cross-entropy over all image tokens with input
``[class] + tokens[:-1]``, class dropout to the null class for CFG, AdamW (betas 0.9/0.95, wd 0.05),
gradient clipping 1.0, a cosine schedule; the training set is tokenised once, with horizontal flips
as the augmentation (upstream pre-extracts ten-crop + flip codes).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.llamagen import GPT, GPTConfig, gpt_config
from ..tokenizers.llamagen_vq import VQConfig, VQModel
from .common import EMA, export_fp16, param_groups, run_steps
from .data import load_images, to_model_range


@dataclass
class GPTTrainArgs:
    data: str
    vq: str
    out: str
    steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 200
    ema: float = 0.0
    seed: int = 0
    save_every: int = 500
    stop_at: int | None = None  # end this run early (checkpointed), keeping the schedule of ``steps``
    threads: int = 0
    image_size: int = 32
    config: dict = field(default_factory=dict)


@torch.no_grad()
def tokenize_split(vq: VQModel, data: str, split: str, flips: bool, batch_size: int = 500, image_size: int = 32,
                   every: int = 1, limit: int | None = None):
    """(tokens [N, h*w], labels [N]) for a split (every ``every``-th image, the first ``limit`` of those); with
    ``flips`` the mirrored images are appended. Only the images kept are encoded."""
    images, labels, _ = load_images(data, split, image_size)
    images, labels = images[::every][:limit], labels[::every][:limit]
    out = []
    for flip in ((False, True) if flips else (False,)):
        for i in range(0, images.shape[0], batch_size):
            x = to_model_range(images[i : i + batch_size])
            out.append(vq.encode(x.flip(-1) if flip else x).flatten(1))
    return torch.cat(out), labels.repeat(2 if flips else 1)


def cached_tokens(vq_folder: str, data: str, split: str, flips: bool, image_size: int = 32):
    cache = Path(vq_folder) / f"tokens-{split}{'-flip' if flips else ''}-{image_size}px.pt"
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return blob["tokens"], blob["labels"]
    tokens, labels = tokenize_split(VQModel.from_folder(vq_folder), data, split, flips, image_size=image_size)
    torch.save({"tokens": tokens, "labels": labels}, cache)
    return tokens, labels


def build_config(cfg: dict, vq: VQConfig, num_classes: int, grid: int) -> GPTConfig:
    cfg = dict(cfg)
    preset = cfg.pop("preset", None)
    base = dict(vocab_size=vq.codebook_size, num_classes=num_classes, block_size=grid * grid, cls_token_num=1)
    base.update(cfg)
    return gpt_config(preset, **base) if preset else GPTConfig(**base)


def nll_bits_per_token(model: GPT, tokens: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Mean negative log-likelihood in bits per token under teacher forcing (conditional)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, tokens.shape[0], batch_size):
            t, y = tokens[i : i + batch_size], labels[i : i + batch_size]
            logits = model.logits(y, t)
            total += F.cross_entropy(logits.flatten(0, 1), t.flatten(), reduction="sum").item()
            count += t.numel()
    return total / count / math.log(2)


def unigram_bits_per_token(train_tokens: torch.Tensor, test_tokens: torch.Tensor, vocab: int) -> float:
    """Baseline: add-one-smoothed token frequencies of the training set, scored on the test set."""
    counts = torch.bincount(train_tokens.flatten(), minlength=vocab).double() + 1
    logp = (counts / counts.sum()).log2()
    return float(-logp[test_tokens.flatten()].mean())


def train_gpt(args: GPTTrainArgs) -> Path:
    from ..runtime import configure_threads

    configure_threads(args.threads)
    out = Path(args.out)
    vq_meta = json.loads((Path(args.vq) / "config.json").read_text())
    vq_cfg = VQConfig.from_dict(vq_meta["config"])
    tokens, labels = cached_tokens(args.vq, args.data, "train", flips=True, image_size=args.image_size)
    grid = math.isqrt(tokens.shape[1])
    num_classes = int(labels.max()) + 1
    cfg = build_config(args.config, vq_cfg, num_classes, grid)
    torch.manual_seed(args.seed)
    model = GPT(cfg)
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    ema = EMA(model, args.ema) if args.ema > 0 else None
    gen = torch.Generator().manual_seed(args.seed)
    print(f"GPT: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{tokens.shape[0]} sequences of {tokens.shape[1]} tokens")

    def step_fn(step):
        idx = torch.randint(0, tokens.shape[0], (args.batch_size,), generator=gen)
        t, y = tokens[idx], labels[idx]
        drop = torch.rand(args.batch_size, generator=gen) < cfg.class_dropout_prob
        logits = model.logits(y, t, drop=drop)
        return F.cross_entropy(logits.flatten(0, 1), t.flatten()), t.numel(), {}

    done, _ = run_steps(out, model, opt, gen, step_fn, steps=args.steps, lr=args.lr, warmup=args.warmup,
                        stop_at=args.stop_at, save_every=args.save_every, grad_clip=1.0, ema=ema, unit="tok")
    if not done:
        return out / "last.pt"
    final = ema.model if ema is not None else model
    export_fp16(final, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps({"type": "llamagen_gpt", "config": cfg.to_dict()}, indent=2))
    return out / "model.safetensors"
