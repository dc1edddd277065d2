"""Train the video demo: a Cosmos discrete video tokenizer (DV) and a Cosmos-architecture AR transformer over
its tokens, both on the procedural clips of :mod:`vargen.train.video_data`.

The DV is trained with an L1 + L2 reconstruction loss through FSQ's straight-through rounding (Cosmos adds
perceptual and adversarial terms that need pretrained networks; they are left out offline). The transformer
is trained with next-token cross-entropy on whole token clips (raster order, t then h then w), as the
video-to-video Cosmos models are: every position but the first predicts its successor.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import export_fp16, param_groups, run_steps, write_config
from .video_data import bouncing_shapes

__all__ = ["DVTrainArgs", "train_dv", "CosmosTrainArgs", "train_cosmos", "encode_clips"]


@dataclass
class DVTrainArgs:
    out: str
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 100
    seed: int = 0
    save_every: int = 100
    stop_at: int | None = None
    threads: int = 0
    chroma_weight: float = field(default=0.0, metadata={"help": "weight of an extra L2 term on each pixel's chroma "
                                                                "(colour minus its channel mean): the tokenizer "
                                                                "otherwise learns shape and brightness first and "
                                                                "colour last"})
    config: dict = field(default_factory=dict)


def chroma(x: torch.Tensor) -> torch.Tensor:
    """Each pixel's colour minus its mean over the colour channels (``[B, C, ...]``)."""
    return x - x.mean(1, keepdim=True)


def train_dv(args: DVTrainArgs) -> Path:
    from ..runtime import configure_threads
    from ..tokenizers.cosmos_dv import DiscreteVideoTokenizer, DVConfig

    configure_threads(args.threads)
    out = Path(args.out)
    cfg = DVConfig.from_dict(args.config)
    torch.manual_seed(args.seed)
    model = DiscreteVideoTokenizer(cfg)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)

    def step_fn(step):
        x = bouncing_shapes(args.batch_size, gen, frames=cfg.pixel_chunk_duration)
        recon, _ = model(x)
        l1 = (recon - x).abs().mean()
        mse = F.mse_loss(recon, x)
        loss = l1 + mse
        if args.chroma_weight:
            loss = loss + args.chroma_weight * F.mse_loss(chroma(recon), chroma(x))
        return loss, args.batch_size, {"mse": mse.item()}

    done, _ = run_steps(out, model, opt, gen, step_fn, steps=args.steps, lr=args.lr, warmup=args.warmup,
                        stop_at=args.stop_at, save_every=args.save_every, grad_clip=1.0, unit="clip")
    if not done:
        return out / "last.pt"
    export_fp16(model, out / "model.safetensors")
    write_config(out, "cosmos_dv", cfg.to_dict())
    return out / "model.safetensors"


@torch.no_grad()
def encode_clips(tokenizer, n: int, seed: int, batch_size: int = 64) -> torch.Tensor:
    """Token clips ``[n, t*h*w]`` of ``n`` procedural clips (seeded) encoded by ``tokenizer``."""
    gen = torch.Generator().manual_seed(seed)
    frames = tokenizer.config.pixel_chunk_duration
    out = []
    for i in range(0, n, batch_size):
        clips = bouncing_shapes(min(batch_size, n - i), gen, frames=frames)
        out.append(tokenizer.encode(clips.to(tokenizer.quant_conv.conv3d.weight.dtype)).flatten(1))
    return torch.cat(out)


@dataclass
class CosmosTrainArgs:
    out: str
    tokenizer: str = "bouncing-dv"
    clips: int = 20000
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.05
    seed: int = 0
    save_every: int = 100
    stop_at: int | None = None
    threads: int = 0
    config: dict = field(default_factory=dict)


def train_cosmos(args: CosmosTrainArgs) -> Path:
    from ..models.cosmos import CosmosConfig, CosmosTransformer
    from ..runtime import configure_threads
    from ..zoo import shipped_path
    from ..tokenizers.cosmos_dv import DiscreteVideoTokenizer

    configure_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "tokens.pt"
    if cache.exists():
        tokens = torch.load(cache, weights_only=True)
    else:
        tok = DiscreteVideoTokenizer.from_folder(shipped_path(args.tokenizer) or Path(args.tokenizer))
        tokens = encode_clips(tok, args.clips, seed=args.seed + 1)
        torch.save(tokens, cache)
    cfg = CosmosConfig.from_dict(args.config)
    if tokens.shape[1] != cfg.num_video_tokens:
        raise ValueError(f"the tokenizer gives {tokens.shape[1]} tokens per clip; the config's "
                         f"video_latent_shape {cfg.video_latent_shape} holds {cfg.num_video_tokens}")
    torch.manual_seed(args.seed)
    model = CosmosTransformer(cfg)
    model.init_weights()
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay, lambda n, p: p.ndim < 2 or "tok_embeddings" in n),
                            lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)

    def step_fn(step):
        seq = tokens[torch.randint(0, tokens.shape[0], (args.batch_size,), generator=gen)]
        logits = model.logits_all(seq[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))
        return loss, args.batch_size, {}

    done, _ = run_steps(out, model, opt, gen, step_fn, steps=args.steps, lr=args.lr, warmup=args.warmup,
                        stop_at=args.stop_at, save_every=args.save_every, grad_clip=1.0, unit="clip")
    if not done:
        return out / "last.pt"
    export_fp16(model, out / "model.safetensors")
    write_config(out, "cosmos_ar", cfg.to_dict())
    (out / "train_info.json").write_text(json.dumps({"clips": int(tokens.shape[0]), "tokens_per_clip": int(tokens.shape[1])}))
    return out / "model.safetensors"


@torch.no_grad()
def video_psnr(tokenizer, clips: int = 256, seed: int = 10_000, batch_size: int = 32) -> dict:
    """Reconstruction PSNR (dB, frames on the [0, 1] scale, clamped) of ``clips`` held-out procedural clips (seeds
    the training never drew: training uses seed 0's stream), and the share of the vocabulary they use."""
    gen = torch.Generator().manual_seed(seed)
    frames = tokenizer.config.pixel_chunk_duration
    mse, used = [], torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    for i in range(0, clips, batch_size):
        x = bouncing_shapes(min(batch_size, clips - i), gen, frames=frames)
        idx = tokenizer.encode(x)
        used[idx.flatten()] = True
        r = tokenizer.decode(idx).float().clamp(-1, 1)
        mse.append(((r - x) / 2).pow(2).flatten(1).mean(1))
    mse = torch.cat(mse)
    return {"psnr_db": float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()), "clips": clips,
            "vocab_usage": float(used.float().mean())}


@torch.no_grad()
def video_nll_bits(model, tokenizer, clips: int = 256, seed: int = 10_000, batch_size: int = 32) -> dict:
    """Bits per generated token of held-out clips under the model (teacher forcing, context frames given), next to
    the entropy of the clips' own unigram token distribution."""
    import math

    from ..models.cosmos import VideoCondition

    tokens = encode_clips(tokenizer, clips, seed, batch_size)
    P = model.context_frames * model.frame_tokens
    total, n = 0.0, 0
    for i in range(0, clips, batch_size):
        seq = tokens[i : i + batch_size]
        logits = model.logits(VideoCondition(seq[:, :P]), seq[:, P:])
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), seq[:, P:].flatten(), reduction="sum"))
        n += seq[:, P:].numel()
    counts = torch.bincount(tokens[:, P:].flatten(), minlength=model.vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return {"bits_per_token": total / n / math.log(2), "unigram_bits": float(-(p * p.log2()).sum()), "clips": clips}
