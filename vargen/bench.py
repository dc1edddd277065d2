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


def run_bench(model, specs: list[str], batches: list[int], config, seed: int = 0, repeats: int = 1,
              num_classes: int | None = None, progress=print) -> list[BenchRow]:
    from .samplers import get_sampler

    rows: list[BenchRow] = []
    n_cls = num_classes or model.config.num_classes
    for batch in batches:
        cond = torch.arange(batch, device=model.device) % n_cls
        base_time = None
        for spec in specs:
            name, opts = parse_spec(spec)
            sampler = get_sampler(name, **opts)
            sampler.sample(model, cond[:1], config, torch.Generator(model.device).manual_seed(seed))  # warm-up
            best = None
            for r in range(repeats):
                g = torch.Generator(model.device).manual_seed(seed + r)
                out = sampler.sample(model, cond, config, g)
                if best is None or out.stats.seconds < best.seconds:
                    best = out.stats
            row = BenchRow(spec, batch, best.forward_passes, best.tokens_per_forward, best.mean_accepted,
                           best.seconds / batch)
            if name == "ar" and not opts:
                base_time = row.seconds_per_image
            row.speedup = (base_time / row.seconds_per_image) if base_time else float("nan")
            rows.append(row)
            progress(f"  {spec} batch {batch}: {row.forward_passes:.0f} passes, {row.seconds_per_image:.3f} s/img")
    return rows


def format_table(rows: list[BenchRow]) -> str:
    head = ("| sampler | batch | forward passes | tokens / forward | mean accepted / step | s / image | speed-up vs AR |\n"
            "|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| `{r.label}` | {r.batch} | {r.forward_passes:.0f} | {r.tokens_per_forward:.2f} | "
                     f"{r.mean_accepted:.2f} | {r.seconds_per_image:.3f} | {r.speedup:.2f}x |")
    return "\n".join(lines)


def machine_line() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    return (f"{dev}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
