"""Pieces every training loop shares: schedule, EMA, resumable checkpoints, progress line."""
from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm


def cosine_lr(step: int, total: int, base: float, warmup: int = 0, final_ratio: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``final_ratio * base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


class EMA:
    """Exponential moving average of a model's parameters (kept in float32)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - self.decay)


def save_checkpoint(path: Path, **state: Any) -> None:
    """Atomic save (write then rename), so an interrupted run never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def resume(path: Path, model: nn.Module, opt, gen: torch.Generator, ema: "EMA | None" = None) -> int:
    """Restore a run saved by :func:`save_run` (model, optimiser, data-order RNG, EMA); the step to continue from."""
    ckpt = load_checkpoint(path)
    if ckpt is None:
        return 0
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    gen.set_state(ckpt["rng"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.model.load_state_dict(ckpt["ema"])
    print(f"resumed from {path} at step {ckpt['step']}")
    return ckpt["step"]


def save_run(path: Path, step: int, model: nn.Module, opt, gen: torch.Generator, ema: "EMA | None" = None) -> None:
    save_checkpoint(path, model=model.state_dict(), opt=opt.state_dict(), step=step, rng=gen.get_state(),
                    ema=ema.model.state_dict() if ema is not None else None)


class Progress:
    """A tqdm bar showing loss and throughput (items per second)."""

    def __init__(self, total: int, start: int, unit: str):
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=5.0)
        self.unit = unit
        self.t0 = time.perf_counter()
        self.items = 0

    def update(self, items: int, **metrics: float) -> None:
        self.items += items
        rate = self.items / max(1e-9, time.perf_counter() - self.t0)
        self.bar.set_postfix({**{k: f"{v:.4f}" for k, v in metrics.items()}, f"{self.unit}/s": f"{rate:.0f}"},
                             refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def export_fp16(model: nn.Module, path: Path, drop: tuple[str, ...] = ()) -> None:
    """Save a state dict as fp16 safetensors (float tensors only are cast)."""
    from safetensors.torch import save_file

    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items() if k not in drop}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
