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


def run_steps(out: Path, model: nn.Module, opt, gen: torch.Generator, step_fn, *, steps: int, lr: float,
              warmup: int = 0, stop_at: int | None = None, save_every: int = 500, grad_clip: float = 1.0,
              ema: "EMA | None" = None, unit: str = "img", final_ratio: float = 0.1) -> bool:
    """The shared optimisation loop: resume from ``out/last.pt``, then per step set the cosine lr, call
    ``step_fn(step) -> (loss, items, metrics)``, clip, step, update the EMA, checkpoint every
    ``save_every`` steps. Returns True once all ``steps`` are done (False when ``stop_at`` ended it early)."""
    step = resume(out / "last.pt", model, opt, gen, ema)
    bar = Progress(steps, step, unit)
    model.train()
    end = min(steps, stop_at or steps)
    while step < end:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, lr, warmup, final_ratio)
        loss, items, metrics = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if ema is not None:
            ema.update(model)
        step += 1
        bar.update(items, loss=loss.item(), **metrics)
        if step % save_every == 0 or step == end:
            save_run(out / "last.pt", step, model, opt, gen, ema)
    bar.close()
    model.eval()
    if step < steps:
        print(f"stopped at step {step} of {steps}; run again to resume")
        return False
    return True


def write_config(out: Path, kind: str, config: dict, **extra: Any) -> None:
    import json

    (out / "config.json").write_text(json.dumps({"type": kind, "config": config, **extra}, indent=2))
