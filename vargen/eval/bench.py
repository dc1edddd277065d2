"""Speed benchmarks through the pipeline: every sampler against its family's baseline, as ratios in one run.

    vargen bench --model cifar10-llamagen --batch 1 16 --sampler ar sjd:window=16 sjd:window=16,coupled=true
    vargen bench --model cifar10-var --sampler var code:draft_steps=4

Runs are interleaved (repeat 1 of every sampler, then repeat 2, ...) after one warm-up each, so a drift in
machine load touches every row alike; the speed-up column is measured against the family's baseline row
(``ar``, ``var``, ``mar``) of the same batch size. The benchmark report (:mod:`vargen.eval.report`) times its
samplers with :func:`time_sampler` too.
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass

import torch

from ..models.hf.random import RANDOM_HF_SHAPES, TINY_SHAPES
from ..samplers.spec import SamplerSpec

__all__ = ["BenchRow", "run_bench", "time_sampler", "format_table", "machine_line", "random_pipeline", "RANDOM_SHAPES",
           "RANDOM_HF_SHAPES", "TINY_SHAPES"]


@dataclass
class BenchRow:
    label: str
    batch: int
    forward_passes: float
    tokens_per_forward: float | None  # None: not measured
    mean_accepted: float | None  # None: meaningless for the family (var, code, mar run a fixed schedule)
    seconds_per_image: float
    sample_nll: float = float("nan")
    tv_bound: float = float("nan")  # per image: the sum over decided slots (a bound on the image TV)
    tv_per_slot: float = float("nan")
    speedup: float = float("nan")
    baseline: str = ""


RANDOM_SHAPES = {"random-gpt-b": "GPT-B", "random-gpt-l": "GPT-L", "random-gpt-xl": "GPT-XL"}


def random_pipeline(name: str, num_tokens: int = 256, vocab: int = 16384, device="cpu", dtype=torch.float32,
                    num_layers: int | None = None):
    """A LlamaGen-family pipeline around an official shape with random weights (the output head random too,
    not zero), no tokenizer: the cost of a forward pass, not image quality. ``name``: ``random-gpt-b`` etc., or a
    transformers shape (``random-janus-pro-1b``: :mod:`vargen.models.hf.random`, ``num_layers`` of its decoder)."""
    from ..models.llamagen import GPT, gpt_config
    from ..pipeline import Pipeline
    from ..samplers.base import SamplingConfig

    if name in RANDOM_HF_SHAPES or name in TINY_SHAPES:
        from ..models.hf import image_lm
        from ..models.hf.family import ImageDecoder
        from ..models.hf.random import random_janus, random_tiny

        if name in TINY_SHAPES:
            if num_layers is not None:
                raise ValueError("--num-layers applies to the official transformers shapes, not the tiny ones")
            model, prompt = random_tiny(name, num_tokens)
        else:
            from ..models.hf.random import SYNTHETIC_PROMPT

            model, prompt = image_lm(random_janus(name, num_layers, num_tokens)), SYNTHETIC_PROMPT
        model = model.to(device=device, dtype=dtype)
        model.synthetic_prompt = prompt  # what bench runs when given no prompts
        return Pipeline(model.family, model, ImageDecoder(model), model.default_sampling, name=name)  # GSD: the VQ
    if num_layers is not None:
        raise ValueError("--num-layers applies to the transformers shapes (random-janus-pro-1b, ...)")
    if name not in RANDOM_SHAPES:
        raise ValueError(f"unknown random shape {name!r}; choose from {', '.join(RANDOM_SHAPES)}")
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or math.isqrt(num_tokens) ** 2 != num_tokens:
        raise ValueError(f"--num-tokens must be a square number of tokens (a raster grid), got {num_tokens}")
    torch.manual_seed(0)
    model = GPT(gpt_config(RANDOM_SHAPES[name], vocab_size=vocab, block_size=num_tokens, num_classes=1000))
    torch.nn.init.normal_(model.output.weight, std=model.config.initializer_range)
    model = model.to(device=device, dtype=dtype).eval()
    return Pipeline("llamagen", model, None, SamplingConfig(cfg_scale=4.0, top_k=2000), name=name)


@torch.no_grad()
def sample_nll_bits(model, cond: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean bits per token of ``tokens`` under the model's own conditional distribution (no CFG,
    temperature 1): a cheap quality proxy -- a lossless sampler matches AR's value up to noise, a
    relaxed rule that accepts unlikely tokens raises it."""
    import torch.nn.functional as F

    logits = model.logits(cond, tokens)
    return float(F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())) / math.log(2)


def batch_conditions(pipe, batch: int, prompts: list | None = None, repeat: int = 0) -> list:
    """``batch`` conditions: class ids round-robin over the classes, or for prompt models ``prompts`` round-robin
    (strings or token-id lists; a random transformers shape has a synthetic prompt); for video demos, scene
    seeds, new ones for every repeat (``repeat * batch ..``), so that repeats average over scenes."""
    if pipe.video:
        if prompts:
            raise ValueError(f"{pipe.name or pipe.kind} is a video model: prompts do not apply")
        return list(range(repeat * batch, (repeat + 1) * batch))
    if not pipe.takes_prompts:
        if prompts:
            raise ValueError(f"{pipe.name or pipe.kind} is class-conditional: prompts do not apply")
        return [i % max(1, pipe.num_classes) for i in range(batch)]
    if not prompts:
        if getattr(pipe.model, "synthetic_prompt", None) is not None:  # a random transformers shape
            prompts = [pipe.model.synthetic_prompt]
        else:
            raise ValueError(f"{pipe.name or pipe.kind} is a text-to-image model: give prompts "
                             "(--prompt or --prompt-ids)")
    return [prompts[i % len(prompts)] for i in range(batch)]


def _run(pipe, spec: SamplerSpec, labels: list, seed: int, overrides: dict, compile: bool = False):
    options = dict(spec.options, **({"model": spec.member} if spec.member else {}))
    if compile:
        options["compile"] = True
    return pipe.generate(labels, sampler=spec.name, seed=seed, per_row_seeds=pipe.family.row_independent_seeds,
                         decode=False, **overrides, **options)


def time_sampler(pipe, spec: str, batch: int, seed: int = 0, overrides: dict | None = None, repeats: int = 2) -> float:
    """Best-of-``repeats`` sampling seconds per image for one class-balanced batch (decode excluded), after a
    warm-up run."""
    s = SamplerSpec.parse(spec)
    labels = [i % pipe.num_classes for i in range(batch)]
    _run(pipe, s, labels[:1], seed, overrides or {})
    return min(_run(pipe, s, labels, seed + 1 + r, overrides or {}).stats.seconds for r in range(repeats)) / batch


def run_bench(pipe, specs: list[str], batches: list[int], overrides: dict | None = None, seed: int = 0,
              repeats: int = 1, quality: bool = False, progress=print,
              compile_modes: tuple = (False,), prompts: list | None = None) -> list[BenchRow]:
    """Every spec at every batch size through ``pipe.generate`` (any family); ``repeats`` seeds each, the
    runs of all specs interleaved, times summed. Speed-ups are against the family's baseline spec (``ar``,
    ``var``, ``mar`` without options, eager) of the same batch size, when it is among the specs.
    ``compile_modes``: each spec eager (False) and/or compiled (True, rows labelled ``+compile``)."""
    overrides = overrides or {}
    specs_parsed = [SamplerSpec.parse(s) for s in specs]
    for p in specs_parsed:  # every spec is checked against the pipeline before any timing
        pipe.make_sampler(p.name, **p.options)
        pipe.member(p.member)
    if True in compile_modes and pipe.baseline_sampler != "ar":
        raise ValueError(f"--compile applies to token models; {pipe.kind} has no compiled path")
    parsed = [(p, c) for c in compile_modes for p in specs_parsed]
    label = lambda p, c: f"{p} +compile" if c else str(p)  # noqa: E731
    for b in batches:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 4096:
            raise ValueError(f"batch sizes must be integers in 1..4096, got {b!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if quality and not hasattr(pipe.model, "logits"):
        raise ValueError(f"--quality needs a token model with teacher forcing; {pipe.kind} has none")
    batch_conditions(pipe, 1, prompts)  # prompts given to a class model, or missing for a prompt model: an error now
    rows: list[BenchRow] = []
    for batch in batches:
        labels = batch_conditions(pipe, batch, prompts)
        for p, c in parsed:
            _run(pipe, p, labels, seed, overrides, c)  # warm-up at this batch (and the compiled shapes)
        runs = {label(p, c): [] for p, c in parsed}
        for r in range(repeats):
            conds = batch_conditions(pipe, batch, prompts, r) if pipe.video else labels
            for p, c in parsed:
                out = _run(pipe, p, conds, seed + r, overrides, c)
                nll = sample_nll_bits(pipe.model, pipe.conditions(conds), out.tokens) if quality else float("nan")
                runs[label(p, c)].append((out.stats, nll))
        base_time = None
        for p, c in parsed:
            stats = runs[label(p, c)]
            mean = lambda xs: None if any(x is None for x in xs) else sum(xs) / len(xs)  # noqa: E731
            relaxed = [s for s, _ in stats if s.tv_bound is not None]
            row = BenchRow(label(p, c), batch,
                           forward_passes=mean([s.forward_passes for s, _ in stats]),
                           tokens_per_forward=mean([s.tokens_per_forward for s, _ in stats]),
                           mean_accepted=mean([s.mean_accepted for s, _ in stats]),
                           seconds_per_image=sum(s.seconds for s, _ in stats) / (batch * repeats),
                           sample_nll=mean([n for _, n in stats]),
                           tv_bound=mean([s.mean_tv_bound for s in relaxed]) if relaxed else float("nan"),
                           tv_per_slot=mean([s.tv_per_decided_slot for s in relaxed]) if relaxed else float("nan"),
                           baseline=pipe.baseline_sampler)
            if p.name == pipe.baseline_sampler and not p.options and not p.member and not c and base_time is None:
                base_time = row.seconds_per_image
            rows.append(row)
            progress(f"  {label(p, c)} batch {batch}: {row.forward_passes:.0f} passes, {row.seconds_per_image:.4f} s/image")
        for row in rows[-len(parsed):]:
            row.speedup = base_time / row.seconds_per_image if base_time and row.seconds_per_image > 0 else float("nan")
    return rows


def forward_table(pipe, batches: list[int], compile_modes=(False,), overrides: dict | None = None,
                  widths=(1, 16), prompts: list | None = None) -> list[tuple]:
    """``(batch, tokens, eager ms, compiled ms or None)`` of one cached decode forward (CFG rows included), with
    the cost model of ``window="auto"`` (:func:`vargen.samplers.autotune.forward_costs`)."""
    from ..samplers.autotune import forward_costs
    from ..samplers.session import resolve_config

    if pipe.baseline_sampler != "ar":
        raise ValueError(f"--forward times token models; {pipe.kind} has none")
    config = resolve_config(pipe.model, pipe.split_options(dict(overrides or {}))[0])
    out = []
    for batch in batches:
        cond = pipe.conditions(batch_conditions(pipe, batch, prompts))
        eager = forward_costs(pipe.model, cond, config, list(widths), compiled=False, repeats=21)
        compiled = forward_costs(pipe.model, cond, config, list(widths), True, 21) if True in compile_modes else {}
        out += [(batch, w, 1e3 * eager[w], 1e3 * compiled[w] if compiled else None) for w in widths]
    return out


def format_forward_table(rows: list[tuple]) -> str:
    lines = ["| batch | tokens per row | eager ms / forward | compiled ms / forward | compiled speed-up |",
             "|---|---|---|---|---|"]
    for batch, w, eager, compiled in rows:
        c = f"{compiled:.3f}" if compiled is not None else "-"
        ratio = f"{eager / compiled:.2f}x" if compiled else "-"
        lines.append(f"| {batch} | {w} | {eager:.3f} | {c} | {ratio} |")
    return "\n".join(lines)


def format_table(rows: list[BenchRow]) -> str:
    quality = any(r.sample_nll == r.sample_nll for r in rows)  # any non-NaN
    relaxed = any(r.tv_bound == r.tv_bound for r in rows)
    timed = any(r.speedup == r.speedup for r in rows)
    base = rows[0].baseline if rows else "baseline"
    cols = ["sampler", "batch", "forward passes", "tokens / forward", "mean accepted / step", "s / image"]
    cols += [f"speed-up vs {base}"] if timed else []
    cols += ["sample NLL (bits/token)"] if quality else []
    cols += ["TV / decided slot", "TV bound / image"] if relaxed else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"`{r.label}`", str(r.batch), f"{r.forward_passes:.1f}", _cell(r.tokens_per_forward),
                 _cell(r.mean_accepted), f"{r.seconds_per_image:.4f}"]
        cells += [f"{r.speedup:.2f}x" if r.speedup == r.speedup else "-"] if timed else []
        cells += [f"{r.sample_nll:.3f}"] if quality else []
        if relaxed:
            cells += [f"{r.tv_per_slot:.4f}", f"{r.tv_bound:.2f}"] if r.tv_bound == r.tv_bound else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if not timed and rows:
        lines.append(f"\n(no speed-up column: the baseline `{base}` was not among the samplers)")
    return "\n".join(lines)


def machine_line() -> str:
    from importlib import metadata

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    try:
        version = metadata.version("vargen")
    except metadata.PackageNotFoundError:
        version = "?"
    return (f"{dev}, {torch.get_num_threads()} torch threads, vargen {version}, torch {torch.__version__}, "
            f"python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")


def _cell(value: float | None) -> str:
    """A table cell: two decimals, or an en dash for a figure the sampler does not have."""
    return "–" if value is None else f"{value:.2f}"
