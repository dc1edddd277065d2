"""What every trainer shares: the learning-rate schedule, weight-decay groups, EMA, resumable checkpoints,
the progress line, and the one optimisation loop :func:`run_steps` every ``vargen train`` run goes through."""
from __future__ import annotations

import copy
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm


def lr_at(step: int, total: int, base: float, warmup: int = 0, final_ratio: float = 0.1, decay: str = "cosine") -> float:
    """The one schedule: linear warm-up over ``warmup`` steps, then ``decay`` ("cosine" or "linear") from
    ``base`` to ``final_ratio * base`` at step ``total`` (the one-cycle of the feature net is
    ``final_ratio=0``; EAGLE's linear decay is ``decay="linear", final_ratio=0``)."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * t)) if decay == "cosine" else 1.0 - t
    return base * (final_ratio + (1 - final_ratio) * shape)


def param_groups(model: nn.Module, weight_decay: float, flat=lambda name, p: p.ndim < 2) -> list[dict]:
    """AdamW groups: weight decay on weight matrices, none on the parameters ``flat(name, p)`` names
    (by default 1-D ones: biases and norm gains; trainers add embeddings and tokens)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if flat(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


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
    """A run's own checkpoint (tensors, numbers and state dicts only: read weights-only)."""
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


SAVE_MINUTES = 10.0  # every run also checkpoints at least this often (wall clock), whatever its save_every


def runs_root() -> Path:
    """Where ``vargen train`` keeps run folders when ``--out`` is not given: ``$VARGEN_RUNS`` or
    ``~/.cache/vargen-runs`` (outside any work tree, so a run survives a fresh checkout on the same machine)."""
    return Path(os.environ.get("VARGEN_RUNS") or Path.home() / ".cache" / "vargen-runs")


def resume(path: Path, model: nn.Module, opt, gen: torch.Generator, ema: "EMA | None" = None) -> int:
    """Restore a run saved by :func:`save_run` (model, optimiser, data-order RNG, torch's global RNG, EMA);
    the step to continue from."""
    ckpt = load_checkpoint(path)
    if ckpt is None:
        return 0
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    gen.set_state(ckpt["rng"])
    if ckpt.get("torch_rng") is not None:  # absent in checkpoints written before it was saved
        torch.set_rng_state(ckpt["torch_rng"])
    if ema is not None and ckpt.get("ema") is not None:
        ema.model.load_state_dict(ckpt["ema"])
    print(f"resumed from {path} at step {ckpt['step']}")
    return ckpt["step"]


def save_run(path: Path, step: int, model: nn.Module, opt, gen: torch.Generator, ema: "EMA | None" = None) -> None:
    save_checkpoint(path, model=model.state_dict(), opt=opt.state_dict(), step=step, rng=gen.get_state(),
                    torch_rng=torch.get_rng_state(), ema=ema.model.state_dict() if ema is not None else None)


def init_from(model: nn.Module, state: dict[str, torch.Tensor], rename=None) -> tuple[int, int]:
    """Start ``model`` from another model's weights where they fit: every tensor of ``state`` (after
    ``rename(key) -> key or None``) whose name and shape match one of ``model``'s is copied; the rest of
    ``model`` keeps its initialisation. Returns (tensors copied, tensors of ``model``)."""
    own = model.state_dict()
    copied = {}
    for k, v in state.items():
        k = rename(k) if rename is not None else k
        if k is not None and k in own and own[k].shape == v.shape:
            copied[k] = v.to(own[k].dtype)
    model.load_state_dict({**own, **copied})
    return len(copied), len(own)


class _Interrupt:
    """SIGTERM / SIGINT during :func:`run_steps` finish the current step, checkpoint and stop (a ``kill``
    of a background run loses no work); a second signal acts as usual."""

    def __init__(self):
        self.hit = False
        self.old = {}

    def __enter__(self):
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals stay as they are
            self.old = {}
        return self

    def _handle(self, sig, frame):
        self.hit = True
        signal.signal(sig, self.old.get(sig, signal.SIG_DFL))

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        return False


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


def run_steps(out: Path | None, model: nn.Module, opt, gen: torch.Generator, step_fn, *, steps: int, lr: float,
              warmup: int = 0, stop_at: int | None = None, save_every: int = 500, grad_clip: float = 1.0,
              clip: str = "norm", ema: "EMA | None" = None, unit: str = "img", final_ratio: float = 0.1,
              decay: str = "cosine", on_save=None, progress: bool = True,
              save_minutes: float | None = None) -> tuple[bool, list[float]]:
    """The one optimisation loop. Resume from ``out/last.pt`` (``out=None``: an in-memory run), then per step set
    the learning rate (:func:`lr_at`), call ``step_fn(step) -> (loss, items, metrics)`` -- ``loss=None`` when
    ``step_fn`` already back-propagated (gradient accumulation) -- clip the gradients (``clip``: "norm" or
    "value"), step, update the EMA, and checkpoint every ``save_every`` steps, at least every ``save_minutes``
    of wall clock (default :data:`SAVE_MINUTES`), at the end and on SIGTERM / SIGINT (then ``on_save(step,
    loss)``). Returns (all ``steps`` done, this run's losses); ``stop_at`` ends a run early, schedule unchanged."""
    step = resume(out / "last.pt", model, opt, gen, ema) if out is not None else 0
    bar = Progress(steps, step, unit) if progress else None
    model.train()
    end = min(steps, stop_at or steps)
    losses: list[float] = []
    save_s = 60.0 * (SAVE_MINUTES if save_minutes is None else save_minutes)
    last_save, saved_step = time.monotonic(), step
    with _Interrupt() as interrupt:
        while step < end:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr, warmup, final_ratio, decay)
            opt.zero_grad(set_to_none=True)
            loss, items, metrics = step_fn(step)
            if loss is not None:
                loss.backward()
                metrics = {"loss": float(loss.detach()), **metrics}
            if grad_clip:
                params = [p for p in model.parameters() if p.grad is not None]
                if clip == "value":
                    torch.nn.utils.clip_grad_value_(params, grad_clip)
                else:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            if ema is not None:
                ema.update(model)
            step += 1
            losses.append(metrics.get("loss", float("nan")))
            if bar is not None:
                bar.update(items, **metrics)
            timed = time.monotonic() - last_save >= save_s
            if out is not None and (step % save_every == 0 or step == end or timed or interrupt.hit):
                save_run(out / "last.pt", step, model, opt, gen, ema)
                now = time.monotonic()
                recent = losses[-(step - saved_step):]
                line = (f"step {step}/{steps}: checkpointed {out / 'last.pt'}; mean loss {sum(recent) / len(recent):.5f} "
                        f"over steps {saved_step}-{step}, {60 * (step - saved_step) / max(1e-9, now - last_save):.1f} "
                        "steps/min")
                if bar is not None:  # a line of its own in a log, not appended to the bar's
                    bar.bar.write(line, file=sys.stderr)
                else:
                    print(line, flush=True)
                last_save, saved_step = now, step
                if on_save is not None:
                    on_save(step, losses[-1])
            if interrupt.hit:
                print(f"interrupted: checkpointed step {step}" if out is not None else "interrupted")
                break
    if bar is not None:
        bar.close()
    model.eval()
    if step < steps:
        print(f"stopped at step {step} of {steps}; run again to resume")
        return False, losses
    return True, losses


def write_config(out: Path, kind: str, config: dict, **extra: Any) -> None:
    import json

    (out / "config.json").write_text(json.dumps({"type": kind, "config": config, **extra}, indent=2))


def snapshot_run(run: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """The model of a run folder's ``last.pt`` (its EMA when it keeps one) as a zoo folder: fp16
    ``model.safetensors`` + the run's ``config.json`` (written when the run starts) with ``"step"`` added, so
    ``vargen measure psnr --tokenizer DEST`` and ``vargen.load`` read an unfinished run."""
    import json

    from safetensors.torch import save_file

    run, dest = Path(run), Path(dest)
    ckpt = load_checkpoint(run / "last.pt")
    if ckpt is None or not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} has no last.pt and config.json to snapshot")
    state = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()},
              str(dest / "model.safetensors"))
    meta = json.loads((run / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**meta, "step": ckpt["step"]}, indent=2))
    return dest
