"""Speed benchmarks: samplers against their AR baseline, measured as ratios in one run.

``vargen bench --model cifar10-llamagen --batch 1 16 --sampler ar sjd:window=16 sjd:window=16,coupled=true``
prints a markdown table: forward passes, tokens per forward, mean accepted tokens per step, wall time
per image, and the speed-up over the ``ar`` row of the same batch size, measured in the same process.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import torch


@dataclass
class BenchRow:
    label: str
    batch: int
    forward_passes: float
    tokens_per_forward: float
    mean_accepted: float
    seconds_per_image: float
    sample_nll: float = float("nan")
    tv_bound: float = float("nan")  # per image: the sum over decided slots (a bound on the image TV)
    tv_per_slot: float = float("nan")
    speedup: float = 1.0


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"sjd:window=16,init=vertical"`` -> ("sjd", {"window": 16, "init": "vertical"})."""
    from .cli import parse_value

    name, _, rest = spec.partition(":")
    opts = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        opts[k.strip()] = parse_value(v.strip())
    return name, opts


def random_gpt_b(num_tokens: int = 256, vocab: int = 16384, device="cpu", dtype=torch.float32):
    """A GPT-B-shaped LlamaGen with random weights (the output head random too, not zero)."""
    from .models.llamagen import GPT, gpt_config

    torch.manual_seed(0)
    model = GPT(gpt_config("GPT-B", vocab_size=vocab, block_size=num_tokens, num_classes=1000))
    torch.nn.init.normal_(model.output.weight, std=model.config.initializer_range)
    return model.to(device=device, dtype=dtype).eval()


@torch.no_grad()
def sample_nll_bits(model, cond: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean bits per token of ``tokens`` under the model's own conditional distribution (no CFG,
    temperature 1): a cheap quality proxy -- a lossless sampler matches AR's value up to noise, a
    relaxed rule that accepts unlikely tokens raises it."""
    import math

    import torch.nn.functional as F

    logits = model.logits(cond, tokens)
    return float(F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())) / math.log(2)


def run_bench(model, specs: list[str], batches: list[int], config, seed: int = 0, repeats: int = 1,
              num_classes: int | None = None, quality: bool = False, make_sampler=None, progress=print) -> list[BenchRow]:
    """Every spec at every batch size; ``repeats`` seeds each (all timed, summed); the first plain
    ``ar`` spec of a batch size is the baseline of its speed-up column. ``make_sampler(name, **opts)``
    defaults to ``get_sampler``; a pipeline's ``make_sampler`` adds its drafter and codebook."""
    from .samplers import get_sampler

    make_sampler = make_sampler or get_sampler

    rows: list[BenchRow] = []
    n_cls = num_classes or model.config.num_classes
    for batch in batches:
        cond = torch.arange(batch, device=model.device) % n_cls
        base_time = None
        for spec in specs:
            name, opts = parse_spec(spec)
            sampler = make_sampler(name, **opts)
            sampler.sample(model, cond[:1], config, torch.Generator(model.device).manual_seed(seed))  # warm-up
            runs = []
            for r in range(repeats):
                out = sampler.sample(model, cond, config, torch.Generator(model.device).manual_seed(seed + r))
                nll = sample_nll_bits(model, cond, out.tokens) if quality else float("nan")
                runs.append((out.stats, nll))
            mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
            tvs = [s.mean_tv_bound for s, _ in runs if s.tv_bound is not None]
            slot_tvs = [s.extra["tv_per_decided_slot"] for s, _ in runs if s.tv_bound is not None]
            row = BenchRow(spec, batch,
                           forward_passes=mean([s.forward_passes for s, _ in runs]),
                           tokens_per_forward=mean([s.tokens_per_forward for s, _ in runs]),
                           mean_accepted=mean([s.mean_accepted for s, _ in runs]),
                           seconds_per_image=sum(s.seconds for s, _ in runs) / (batch * repeats),
                           sample_nll=mean([n for _, n in runs]),
                           tv_bound=mean(tvs) if tvs else float("nan"),
                           tv_per_slot=mean(slot_tvs) if slot_tvs else float("nan"))
            if name == "ar" and not opts and base_time is None:
                base_time = row.seconds_per_image
            row.speedup = (base_time / row.seconds_per_image) if base_time else float("nan")
            rows.append(row)
            progress(f"  {spec} batch {batch}: {row.forward_passes:.0f} passes, {row.seconds_per_image:.3f} s/img")
    return rows


def format_table(rows: list[BenchRow]) -> str:
    quality = any(r.sample_nll == r.sample_nll for r in rows)  # any non-NaN
    relaxed = any(r.tv_bound == r.tv_bound for r in rows)
    cols = ["sampler", "batch", "forward passes", "tokens / forward", "mean accepted / step", "s / image",
            "speed-up vs AR"]
    cols += ["sample NLL (bits/token)"] if quality else []
    cols += ["TV / decided slot", "TV bound / image"] if relaxed else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"`{r.label}`", str(r.batch), f"{r.forward_passes:.1f}", f"{r.tokens_per_forward:.2f}",
                 f"{r.mean_accepted:.2f}", f"{r.seconds_per_image:.3f}", f"{r.speedup:.2f}x"]
        cells += [f"{r.sample_nll:.3f}"] if quality else []
        if relaxed:
            cells += [f"{r.tv_per_slot:.4f}", f"{r.tv_bound:.2f}"] if r.tv_bound == r.tv_bound else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    return (f"{dev}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
