"""Distil an EAGLE-style draft head from a LlamaGen target (research/lantern.md §5).

Data: the target's own samples (self-distillation, default; drawn with the pipeline's sampling
defaults) or dataset tokens (a ``.pt`` file with ``tokens [N, L]`` and ``labels [N]``, e.g. the GPT
trainer's ``tokens-train-flip.pt``). For each sequence the frozen target is teacher-forced once
through its cached path to get final-norm features ``f_0..f_{L-1}`` and logits; a fraction
``cfg_dropout`` of rows use the null condition, so the head also learns the uncond half of CFG.

Loss (EAGLE-1): ``SmoothL1(f_hat_{t+1}, f_{t+1}) + ce_weight * CE(softmax(target logits at t+1),
log_softmax(output(f_hat_{t+1})))`` over ``t = 0..L-2``, with input features perturbed by uniform noise
``(U - 0.5) * feature_noise``. The noise scale is an explicit setting (the official trainer divides by
the sequence length, which silently changes it per model); the default 0.27 is what that formula gives
LlamaGen's 375-token sequences (0.2 * 512 / 375).

Optimisation: AdamW (lr 1e-4 in the official run, betas 0.9/0.95), linear warm-up for 3 % of steps then
linear decay, gradient-value clipping 0.5, and gradient accumulation that really accumulates: one
optimiser step per ``grad_accum`` micro-batches, each loss scaled by ``1 / grad_accum``.
Output: ``model.safetensors`` (fp16) + ``config.json`` in ``out``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..decode import chain_plan
from ..models.draft_head import DraftHead, DraftHeadConfig, head_config_json
from .common import export_fp16, run_steps


@dataclass
class DraftHeadTrainArgs:
    model: str
    out: str
    tokens: str | None = None
    samples: int = 2048
    steps: int = 2000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_frac: float = 0.03
    feature_noise: float = 0.27
    ce_weight: float = 0.1
    cfg_dropout: float = 0.1
    clip_value: float = 0.5
    seed: int = 0
    device: str = "cpu"
    threads: int = 0


def load_target(name: str, device: str = "cpu"):
    """(GPT, sampling defaults) from a pipeline name / folder, or a GPT folder (``config.json`` + weights)."""
    folder = Path(name)
    if folder.is_dir() and not (folder / "pipeline.json").is_file() and (folder / "config.json").is_file():
        from ..models.llamagen import GPT
        from ..samplers.base import SamplingConfig

        return GPT.from_folder(folder).to(device), SamplingConfig()
    from ..pipeline import load

    pipe = load(name, device=device)
    return pipe.model.float().eval(), pipe.defaults


@torch.no_grad()
def self_samples(model, defaults, n: int, generator: torch.Generator, batch: int = 256):
    """``n`` sequences sampled by the target (plain AR, its defaults), with uniformly drawn labels."""
    from ..samplers.loop import ARSampler

    labels = torch.randint(0, model.config.num_classes, (n,), generator=generator)
    out = []
    for i in range(0, n, batch):
        y = labels[i : i + batch].to(model.device)
        out.append(ARSampler().sample(model, y, defaults, generator=generator if model.device.type == "cpu" else None)
                   .tokens.cpu())
    return torch.cat(out), labels


@torch.no_grad()
def target_features(model, labels: torch.Tensor, tokens: torch.Tensor, drop: torch.Tensor):
    """Teacher-forced final-norm features and logits ``[B, L, *]`` of the frozen target (cached path)."""
    cond = torch.where(drop, model.null_cond(labels), labels)
    cache = model.new_cache(tokens.shape[0], tokens.shape[1] + 1)
    model.prefill(cond, cache)
    start = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    logits, hidden = model(tokens, chain_plan(cache, start, tokens.shape[1]), cache, return_hidden=True)
    return hidden.float(), logits.float()


def head_loss(head: DraftHead, model, hidden, logits, tokens, noise: float, ce_weight: float,
              generator: torch.Generator | None = None):
    """EAGLE loss on pairs ``(f_t + noise, x_{t+1}) -> f_{t+1}`` for ``t = 0..L-2``; returns (loss, parts)."""
    L = tokens.shape[1]
    feats = hidden[:, :-1]
    if noise > 0:
        feats = feats + (torch.rand(feats.shape, generator=generator, device=feats.device) - 0.5) * noise
    t = torch.arange(L - 1, device=tokens.device)
    pred_logits, pred = head(model, feats, tokens[:, 1:], t)
    reg = F.smooth_l1_loss(pred.float(), hidden[:, 1:])
    ce = -(logits[:, 1:].softmax(-1) * pred_logits.log_softmax(-1)).sum(-1).mean()
    return reg + ce_weight * ce, {"reg": float(reg.detach()), "ce": float(ce.detach())}


def accumulate_gradients(head: DraftHead, model, micro_batches, noise: float, ce_weight: float,
                         generator: torch.Generator | None = None) -> dict:
    """Zero the head's gradients, then accumulate ``mean`` of the micro-batch losses into them
    (each backward scaled by ``1 / len(micro_batches)``): equal-size micro-batches give exactly the
    gradient of one batch holding them all."""
    head.zero_grad(set_to_none=True)
    parts = {}
    for labels, tokens, drop in micro_batches:
        hidden, logits = target_features(model, labels, tokens, drop)
        loss, parts = head_loss(head, model, hidden, logits, tokens, noise, ce_weight, generator)
        (loss / len(micro_batches)).backward()
    return parts


def train_draft_head(args: DraftHeadTrainArgs) -> Path:
    """EAGLE's recipe: AdamW, linear warm-up over ``warmup_frac`` of the run then linear decay to zero,
    gradient value clipping; resumable from ``out/last.pt``."""
    from ..runtime import configure_threads

    configure_threads(args.threads)
    if args.grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {args.grad_accum}")
    if args.tokens and not Path(args.tokens).is_file():
        raise ValueError(f"--tokens {args.tokens}: no such file")
    if not args.tokens and args.samples < 1:  # was torch.cat's "expected a non-empty list of Tensors"
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    out = Path(args.out)
    model, defaults = load_target(args.model, args.device)
    model.requires_grad_(False)
    gen = torch.Generator().manual_seed(args.seed)
    if args.tokens:
        blob = torch.load(args.tokens, weights_only=True)
        tokens, labels = blob["tokens"].long(), blob["labels"].long()
    else:
        tokens, labels = self_samples(model, defaults, args.samples, gen)
    if tokens.shape[1] != model.num_tokens:
        raise ValueError(f"token sequences have length {tokens.shape[1]}, the model generates {model.num_tokens}")
    torch.manual_seed(args.seed)
    head = DraftHead(DraftHeadConfig.from_target(model.config)).to(args.device)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def step_fn(step):
        micro = []
        for _ in range(args.grad_accum):
            idx = torch.randint(0, tokens.shape[0], (args.batch_size,), generator=gen)
            drop = torch.rand(args.batch_size, generator=gen) < args.cfg_dropout
            micro.append((labels[idx].to(args.device), tokens[idx].to(args.device), drop.to(args.device)))
        parts = accumulate_gradients(head, model, micro, args.feature_noise, args.ce_weight, gen)
        return None, args.batch_size * args.grad_accum * tokens.shape[1], parts  # back-propagated per micro-batch

    run_steps(out, head, opt, gen, step_fn, steps=args.steps, lr=args.lr, warmup=max(1, int(args.warmup_frac * args.steps)),
              save_every=max(1, args.steps // 4), grad_clip=args.clip_value, clip="value", unit="tok", final_ratio=0.0,
              decay="linear")
    export_fp16(head, out / "model.safetensors")
    (out / "config.json").write_text(head_config_json(
        head, target=str(args.model), steps=args.steps, feature_noise=args.feature_noise, ce_weight=args.ce_weight,
        data=args.tokens or f"{args.samples} self-samples"))
    return out / "model.safetensors"
