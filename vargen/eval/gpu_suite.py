"""``vargen bench --suite gpu``: the decode step of the official LlamaGen shapes against the memory-bandwidth floor.

For GPT-B / GPT-L / GPT-XL with random weights at each batch size it measures

* ms per decode step (one token per row, CFG rows included, cache half full): eager, compiled (inductor), and on
  CUDA compiled under CUDA graphs;
* the bandwidth floor of that step, ``(bytes of weights + bytes of K/V read) / peak bandwidth``, and the fraction
  of it the fastest mode reaches (``floor / measured``). Peak bandwidth: the vendor figure of known GPUs, else a
  measured device copy (stated in the output);
* the wall-clock speed-up per image over ``ar`` of ``sjd``, coupled ``sjd`` and ``sd`` (a random EAGLE head), in
  the chosen compile mode, beside each one's step compression (AR forwards / forwards), so the share of the
  compression the wall clock keeps is visible. Random weights give near-uniform predictions, so the compression
  itself is not representative of a trained model -- the shapes are what is measured.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from ..samplers.base import synced_clock

__all__ = ["SuiteRow", "run_gpu_suite", "format_suite", "peak_bandwidth"]

# vendor peak memory bandwidth, bytes/s (HBM; SXM parts)
_PEAK = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.039e12, "L40S": 0.864e12, "4090": 1.008e12, "A10G": 0.6e12}


@dataclass
class SuiteRow:
    shape: str
    batch: int
    params_m: float
    ms: dict  # mode -> ms per decode step
    floor_ms: float
    fraction: float
    speedups: dict  # sampler -> (wall-clock speed-up, step compression)


def peak_bandwidth(device) -> tuple[float, str]:
    """(bytes/s, where the number comes from)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in _PEAK.items():
            if key in name:
                return value, f"{name} vendor peak"
    x = torch.empty(64 << 20, dtype=torch.float32, device=device)  # 256 MiB, read and written once per copy
    y = torch.empty_like(x)
    return 2 * x.numel() * x.element_size() / _time(lambda: y.copy_(x), device, repeats=5), "measured copy"


def _time(fn, device, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = synced_clock(device)
        fn()
        times.append(synced_clock(device) - t0)
    return statistics.median(times)


def _step_ms(pipe, batch: int, mode: str) -> float:
    from ..samplers.compiled import compile_step
    from ..samplers.session import TokenSession, resolve_config

    model, dev = pipe.model, torch.device(pipe.model.device)
    config = resolve_config(model, pipe.defaults)
    session = TokenSession(model, torch.arange(batch, device=dev) % model.num_classes, config,
                           extra_positions=1, static=mode != "eager")
    session.prefill()
    tokens = torch.zeros(batch, 1, dtype=torch.long, device=dev)
    start = torch.full((batch,), model.num_tokens // 2, dtype=torch.long, device=dev)
    run = session.run
    if mode != "eager":
        run = compile_step(session.run, dev, cudagraphs=mode == "cuda graphs")
    kv_len = None if mode != "eager" else model.num_tokens // 2 + 1
    return 1e3 * _time(lambda: run(tokens, start, kv_len), dev, repeats=20 if dev.type == "cuda" else 7)


def _floor_ms(pipe, batch: int, bandwidth: float) -> float:
    model = pipe.model
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    from ..samplers.session import resolve_config

    rows = 2 * batch if resolve_config(model, pipe.defaults).uses_cfg else batch
    kv_heads = cfg.n_kv_head or cfg.n_head
    element = next(model.parameters()).element_size()
    kv = 2 * cfg.n_layer * rows * (cfg.cls_token_num + model.num_tokens // 2) * kv_heads * cfg.head_dim * element
    return 1e3 * (weights + kv) / bandwidth


def _speedups(pipe, batch: int, compile: bool, seed: int = 0) -> dict:
    from ..models.draft_head import DraftHead, DraftHeadConfig

    torch.manual_seed(0)
    head = DraftHead(DraftHeadConfig.from_target(pipe.model.config)).to(pipe.model.device)
    labels = [i % pipe.num_classes for i in range(batch)]
    window = min(16, pipe.model.num_tokens)
    specs = {"ar": {}, "sjd": dict(window=window), "sjd coupled": dict(window=window, coupled=True),
             "sd": dict(draft=head, gamma=min(4, pipe.model.num_tokens))}
    runs = {}
    for label, options in specs.items():  # warm-up (and compilation) first, then the timed runs
        name = label.split()[0]
        pipe.generate(labels, sampler=name, seed=seed, decode=False, compile=compile, **options)
    for label, options in specs.items():
        out = pipe.generate(labels, sampler=label.split()[0], seed=seed + 1, decode=False, compile=compile, **options)
        runs[label] = out.stats
    ar = runs["ar"]
    return {label: (ar.seconds / s.seconds, ar.forward_passes / s.forward_passes)
            for label, s in runs.items() if label != "ar"}


def run_gpu_suite(shapes, batches, device="cuda", num_tokens: int = 256, compile: bool = True,
                  dtype=torch.float16, progress=print) -> tuple[list[SuiteRow], str]:
    """The rows, and a line naming the bandwidth source."""
    from .bench import random_pipeline

    dev = torch.device(device)
    if dev.type == "cpu":
        dtype = torch.float32  # reduced-precision GEMMs on CPU are emulated, not a measurement of anything
    bandwidth, source = peak_bandwidth(dev)
    modes = ["eager"] + (["compiled"] if compile else []) + (["cuda graphs"] if compile and dev.type == "cuda" else [])
    rows = []
    for shape in shapes:
        pipe = random_pipeline(shape, num_tokens, device=dev, dtype=dtype)
        params = sum(p.numel() for p in pipe.model.parameters()) / 1e6
        for batch in batches:
            ms = {m: _step_ms(pipe, batch, m) for m in modes}
            floor = _floor_ms(pipe, batch, bandwidth)
            speed = _speedups(pipe, batch, compile)
            rows.append(SuiteRow(shape, batch, params, ms, floor, floor / min(ms.values()), speed))
            progress(f"  {shape} batch {batch}: " + ", ".join(f"{m} {v:.2f} ms" for m, v in ms.items()))
        del pipe
    return rows, f"peak bandwidth {bandwidth / 1e9:.0f} GB/s ({source}), {str(dtype).replace('torch.', '')} weights"


def format_suite(rows: list[SuiteRow]) -> str:
    modes = list(rows[0].ms) if rows else []
    samplers = list(rows[0].speedups) if rows else []
    cols = ["shape", "params", "batch"] + [f"{m} ms/step" for m in modes] + ["bandwidth floor ms", "of floor"]
    cols += [f"{s} speed-up (compression)" for s in samplers]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.shape, f"{r.params_m:.0f}M", str(r.batch)] + [f"{r.ms[m]:.2f}" for m in modes]
        cells += [f"{r.floor_ms:.3f}", f"{100 * r.fraction:.0f}%"]
        cells += [f"{r.speedups[s][0]:.2f}x ({r.speedups[s][1]:.2f}x)" for s in samplers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
