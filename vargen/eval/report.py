"""One benchmark report: every sampler on every demo model, quality and speed, tables and plots.

    python eval/report.py --models cifar10-llamagen --num-samples 10000 --features cifar10-features \
        --mode clean --reference cifar10-train --out docs/benchmarks.md
    python -m vargen.eval.report ...      # the same

For each model and sampler it generates ``--num-samples`` class-balanced images into
``WORK/<model>/<sampler>/`` with eval/sample.py's per-index seeds (resumable; a folder filled earlier
by ``accelerate launch eval/sample.py`` with the same seed is reused, with its summary.json), scores
them against the reference (FID, KID, precision/recall, IS with the chosen feature network and mode),
and times every sampler with :mod:`vargen.eval.bench` (batched and at batch 1). Random-weight official shapes
(``--shapes GPT-B:256``) add the cost of one forward pass per sampler. It writes a markdown page
(machine, versions, the command) and two plots next to it: the speed-up vs quality frontier and the
tokens accepted per decoding step.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import torch

from . import sample as sm
from .bench import time_sampler


def slug(text: str) -> str:
    """A file-name-safe form of a model name, folder or sampler spec."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in (Path(text).name or text))


@dataclass
class Row:
    model: str
    sampler: str
    images: int = 0
    forward_passes: float = 0.0
    tokens_per_forward: float | None = None  # None: not measured
    mean_accepted: float | None = None  # None: meaningless for the family (var, code, mar: a fixed schedule)
    seconds_per_image: float = 0.0  # timed in the report process (see timed_batch), not during generation
    generation_seconds_per_image: float = 0.0  # from the generation run's summary (may have shared the machine)
    draft_forward_passes: float = 0.0
    draft_acceptance_rate: float | None = None  # CSpD: accepted / drafted tokens
    kv_cache_bytes_per_image: int = 0  # static K/V cache allocated per image (VAR family; on CPU the only memory figure)
    latency_batch1: float | None = None
    quality: dict = field(default_factory=dict)
    baseline: str = "ar"  # the sampler of this model that speed-ups and "FID vs baseline" refer to
    fid_vs_baseline: float | None = None  # FID between this sampler's images and the baseline sampler's
    accepted_per_step: list = field(default_factory=list)
    speedup: float | None = None
    latency_speedup: float | None = None
    error: str | None = None


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def working_samplers(pipe, specs: list[str]) -> tuple[list[str], dict[str, str]]:
    """The specs that apply to this model (checked against it, no work); the others with the reason."""
    from vargen.samplers.spec import SamplerSpec

    ok, skipped = [], {}
    for text in specs:
        try:
            spec = SamplerSpec.parse(text)
            pipe.check_sampler(spec.name, spec.member, **spec.options)
            ok.append(text)
        except ValueError as err:
            skipped[text] = str(err).splitlines()[0][:160]
    return ok, skipped


def generate(pipe, spec: str, folder: Path, num_samples: int, batch_size: int, seed: int, overrides: dict) -> dict:
    """Fill ``folder`` with ``num_samples`` images (skipping existing ones) and return its summary."""
    from vargen.samplers.spec import SamplerSpec

    parsed = SamplerSpec.parse(spec)
    name, opts = parsed.name, dict(parsed.options, **({"model": parsed.member} if parsed.member else {}))
    n_classes = pipe.num_classes
    labels = sm.labels_for(num_samples, n_classes)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(num_samples) if not sm.png_path(folder, i).is_file()]
    summary_path = folder / "summary.json"
    if not todo and summary_path.is_file():
        return json.loads(summary_path.read_text())
    t0 = time.perf_counter()
    args = SimpleNamespace(batch_size=batch_size, seed=seed)
    records = sm.generate_indices(pipe, name, todo, labels, args, folder, **overrides, **opts)
    summary = {"sampler": spec, "seed": seed, "num_samples": num_samples, "batch_size": batch_size,
               "seeding": "per image" if pipe.family.row_independent_seeds else "per batch",
               **sm.summarize([{"process": 0, "skipped": num_samples - len(todo), "assigned": num_samples,
                                "wall_seconds": time.perf_counter() - t0, "batches": records}])}
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def measure_model(model_name: str, specs: list[str], opts) -> tuple[list[Row], dict[str, str]]:
    from vargen.eval import compute_fid
    from vargen.pipeline import load

    pipe = load(model_name, device=opts.device)
    specs = [s for s in (specs or pipe.benchmark or default_samplers()) if s not in opts.skip]
    ok, skipped = working_samplers(pipe, specs)
    rows, folders = [], {}
    for spec in ok:
        folder = folders[spec] = Path(opts.work_dir) / slug(model_name) / slug(spec)
        s = generate(pipe, spec, folder, opts.num_samples, opts.batch_size, opts.seed, opts.overrides)
        row = Row(model_name, spec, baseline=pipe.baseline_sampler,
                  images=s.get("images_generated", 0) + s.get("images_skipped_existing", 0),
                  forward_passes=s.get("forward_passes_per_image", 0.0), tokens_per_forward=s.get("tokens_per_forward"),
                  mean_accepted=s.get("mean_accepted"), generation_seconds_per_image=s.get("sampler_seconds_per_image", 0.0),
                  draft_forward_passes=s.get("draft_forward_passes_per_image", 0.0),
                  draft_acceptance_rate=s.get("draft_acceptance_rate"),
                  accepted_per_step=s.get("accepted_per_step", []))
        res = compute_fid(folder, opts.reference, features=opts.features, mode=opts.mode, device=opts.device,
                          weights=opts.weights, verbose=False)
        row.quality = {"fid": res.fid, "kid": res.kid, "precision": res.precision, "recall": res.recall,
                       "is": res.inception_score, "label": res.label, "n_ref": res.n_b}
        rows.append(row)
        opts.progress(f"{model_name} {spec}: FID {res.fid:.3f} ({res.label}, mode={opts.mode}), "
                      f"{row.forward_passes:.1f} passes/image")
    base = next((r for r in rows if r.sampler == pipe.baseline_sampler), None)
    for row in rows if base is not None else []:
        if row is not base:
            row.fid_vs_baseline = compute_fid(folders[row.sampler], folders[base.sampler], features=opts.features,
                                              mode=opts.mode, device=opts.device, weights=opts.weights,
                                              verbose=False).fid
    for row in rows:  # all timings of a model back to back in this process, after its samples exist
        row.seconds_per_image, row.kv_cache_bytes_per_image = timed_batch(
            pipe, row.sampler, opts.batch_size, opts.seed, opts.overrides, opts.timing_repeats)
    if opts.latency:
        for row in rows:
            row.latency_batch1 = latency(pipe, row.sampler, opts.seed, opts.overrides)
    add_speedups(rows, pipe.baseline_sampler)
    return rows, skipped


def floor_row(source: str, opts) -> dict:
    """FID of ``num_samples`` real images (evenly spaced over ``source``, e.g. CIFAR-10 train) against
    the reference: the score a perfect sampler would get at this sample count (FID is biased in N)."""
    from vargen.eval import compute_fid
    from vargen.eval.stats import dataset_spec
    from vargen.train.data import load_images

    folder = Path(opts.work_dir) / f"floor-{slug(source)}-{opts.num_samples}"
    if not sm.png_path(folder, opts.num_samples - 1).is_file():
        spec = dataset_spec(source)
        if spec is None:
            raise ValueError(f"--floor expects cifar10-train / cifar10-test / archive@split, got {source!r}")
        images = load_images(spec[0], spec[1], None)[0]
        step = max(1, images.shape[0] // opts.num_samples)
        folder.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        for i in range(opts.num_samples):
            sm.save_png(Image.fromarray(images[i * step].permute(1, 2, 0).numpy()), sm.png_path(folder, i))
    res = compute_fid(folder, opts.reference, features=opts.features, mode=opts.mode, device=opts.device,
                      weights=opts.weights, verbose=False)
    opts.progress(f"floor {source}: FID {res.fid:.3f}")
    return {"source": source, "images": opts.num_samples, "fid": res.fid, "kid": res.kid, "precision": res.precision,
            "recall": res.recall, "is": res.inception_score}


def timed_batch(pipe, spec: str, batch: int, seed: int, overrides: dict, repeats: int = 2) -> tuple[float, int]:
    """Best-of-``repeats`` sampling seconds per image for one class-balanced batch (decode excluded), after a
    warm-up run, and the K/V cache bytes per image of that run that hold tokens at its peak (``kv_bytes_used``:
    FastVAR leaves the skipped tokens' slots empty, a HACK / ScaleKV budget measures its peak; else the static
    cache the sampler allocates, LineAR's budgeted one included) (``vargen.eval.bench.time_sampler``)."""
    from vargen.samplers.spec import SamplerSpec

    seconds = time_sampler(pipe, spec, batch, seed, overrides, repeats)
    s = SamplerSpec.parse(spec)
    labels = [i % pipe.num_classes for i in range(batch)]
    stats = pipe.generate(labels, sampler=s.name, seed=seed, per_row_seeds=pipe.family.row_independent_seeds, decode=False,
                          **overrides, **s.options, **({"model": s.member} if s.member else {})).stats
    held = stats.kv_bytes_used if stats.kv_bytes_used is not None else stats.kv_cache_bytes
    return seconds, (held or 0) // batch


def latency(pipe, spec: str, seed: int, overrides: dict, repeats: int = 3) -> float:
    """Best-of-``repeats`` sampling seconds for one image (batch 1, class 0, decode excluded), after a warm-up."""
    return time_sampler(pipe, spec, 1, seed, overrides, repeats)


def add_speedups(rows: list[Row], baseline: str = "ar") -> None:
    base = next((r for r in rows if r.sampler == baseline), None)
    for r in rows:
        if base is not None and r.seconds_per_image > 0:
            r.speedup = base.seconds_per_image / r.seconds_per_image
        if base is not None and base.latency_batch1 and r.latency_batch1:
            r.latency_speedup = base.latency_batch1 / r.latency_batch1


def measure_shapes(shapes: list[str], specs: list[str], opts) -> list[dict]:
    """Cost per forward pass of each sampler on random-weight official shapes (``random-gpt-b:256``), batch 1."""
    from .bench import random_pipeline, run_bench

    out = []
    for shape in shapes:
        name, _, tokens = shape.partition(":")
        pipe = random_pipeline(name.lower() if name.lower().startswith("random-") else f"random-{name.lower()}",
                               int(tokens or 256), device=opts.device)
        for b in run_bench(pipe, specs, [1], opts.overrides, seed=opts.seed, progress=lambda *_: None):
            out.append({"shape": shape, "sampler": b.label, "forward_passes": b.forward_passes,
                        "seconds_per_forward": b.seconds_per_image / max(1.0, b.forward_passes),
                        "seconds_per_image": b.seconds_per_image, "speedup": b.speedup})
        opts.progress(f"shape {shape}: {len(specs)} samplers")
        del pipe
    return out


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def versions() -> str:
    names = ["vargen", "torch", "clean-fid", "accelerate", "numpy", "scipy"]
    found = []
    for n in names:
        try:
            found.append(f"{n} {metadata.version(n)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found) + f", python {platform.python_version()}"


def _fmt(x, spec=".3f") -> str:
    return "–" if x is None else format(x, spec)


def quality_table(rows: list[Row]) -> str:
    """One table per model (its samplers share a baseline)."""
    head = ("| sampler | images | FID | FID vs baseline | KID | precision | recall | IS | forward passes / image | "
            "draft passes / image | tokens / forward | accepted / step | draft acceptance | s / image (batched) | "
            "images / s | speed-up vs baseline | K/V cache / image | s / image (batch 1) | latency speed-up |")
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        out += [f"### {model} (baseline `{mine[0].baseline}`)\n", head, "|" + "---|" * 19]
        for r in mine:
            q = r.quality
            kv = f"{r.kv_cache_bytes_per_image / 2**10:.0f} KiB" if r.kv_cache_bytes_per_image else "–"
            ips = 1 / r.seconds_per_image if r.seconds_per_image else None
            out.append(
                f"| `{r.sampler}` | {r.images} | {_fmt(q.get('fid'))} | {_fmt(r.fid_vs_baseline)} | "
                f"{_fmt(q.get('kid'), '.5f')} | {_fmt(q.get('precision'))} | {_fmt(q.get('recall'))} | "
                f"{_fmt(q.get('is'), '.2f')} | {r.forward_passes:.1f} | {r.draft_forward_passes:.1f} | "
                f"{_fmt(r.tokens_per_forward, '.2f')} | {_fmt(r.mean_accepted, '.2f')} | {_fmt(r.draft_acceptance_rate)} | "
                f"{r.seconds_per_image:.4f} | {_fmt(ips, '.1f')} | {_fmt(r.speedup, '.2f')}x | {kv} | "
                f"{_fmt(r.latency_batch1, '.4f')} | {_fmt(r.latency_speedup, '.2f')}x |")
        out.append("")
    return "\n".join(out)


def shapes_table(shape_rows: list[dict]) -> str:
    lines = ["| shape (random weights) | sampler | forward passes | ms / forward | s / image | speed-up vs AR |",
             "|---|---|---|---|---|---|"]
    for r in shape_rows:
        lines.append(f"| {r['shape']} | `{r['sampler']}` | {r['forward_passes']:.0f} | "
                     f"{r['seconds_per_forward'] * 1000:.2f} | {r['seconds_per_image']:.3f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def step_compression(rows: list[Row], r: Row) -> float:
    base = next((b for b in rows if b.model == r.model and b.sampler == r.baseline), None)
    return base.forward_passes / r.forward_passes if base is not None and r.forward_passes else 0.0


def plot(rows: list[Row], out_dir: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    label = rows[0].quality.get("label", "") if rows else ""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, (xlabel, speed) in zip(axes, [("speed-up vs AR (wall time per image, batched)", lambda r: r.speedup or 0),
                                          ("step compression (AR forward passes / forward passes)",
                                           lambda r: step_compression(rows, r))]):
        for model in dict.fromkeys(r.model for r in rows):
            pts = [r for r in rows if r.model == model and r.quality.get("fid") is not None]
            ax.scatter([speed(r) for r in pts], [r.quality["fid"] for r in pts], label=slug(model))
            for r in pts:
                ax.annotate(r.sampler, (speed(r), r.quality["fid"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("FID (lower is better)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"speed vs quality: {label}", fontsize=9)
    fig.tight_layout()
    paths.append(out_dir / f"{stem}_frontier.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r in rows:
        if r.accepted_per_step:
            ax.plot(range(len(r.accepted_per_step)), r.accepted_per_step, label=f"{slug(r.model)} {r.sampler}", lw=1)
    ax.set_xlabel("decoding step (forward pass)")
    ax.set_ylabel("tokens accepted (mean over rows still generating)")
    ax.set_title("accepted tokens per step", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / f"{stem}_accepted.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_markdown(path: Path, rows: list[Row], skipped: dict, shape_rows: list[dict], plots: list[Path],
                   opts, command: str, floor: dict | None = None) -> None:
    from .bench import machine_line

    label = rows[0].quality.get("label", "") if rows else ""
    n_ref = rows[0].quality.get("n_ref") if rows else None
    parts = [
        "# Benchmarks\n",
        f"Generated by `eval/report.py` on {time.strftime('%Y-%m-%d %H:%M')}.\n",
        f"- Command: `{command}`",
        f"- Machine: {machine_line()}",
        f"- Versions: {versions()}",
        f"- Quality: {opts.num_samples} samples per sampler (class-balanced, per-index seeds from seed {opts.seed}; "
        f"MAR pipelines seed each batch of {opts.batch_size} from its first index, see eval/README.md) "
        f"against `{opts.reference}` ({n_ref} images); features: **{label}**; mode=`{opts.mode}`. "
        f"KID, precision/recall (k=3) and IS use the same features.",
        f"- Speed: sampling seconds per image for one class-balanced batch of {opts.batch_size} (best of "
        f"{opts.timing_repeats} runs after a warm-up, decode excluded), and latency at batch 1 (class 0, best of 3 "
        f"after a warm-up); all timings of a model run back to back in this process after its samples were made, "
        f"so the speed-ups (against the model's baseline row) are ratios measured in one run. K/V cache / image "
        f"is the target's static cache, CFG rows included (token samplers: as allocated, LineAR's `kv_budget` "
        f"sizes it; VAR family: the part holding tokens at the peak: FastVAR's skipped tokens write none, a HACK / "
        f"ScaleKV `kv_budget` holds every layer's kept entries plus one layer's scale in flight; CPU runs report no "
        f"peak memory).",
        f"- Sampling options: {json.dumps(opts.overrides) if opts.overrides else 'the model defaults'}.\n",
        "## Quality and speed\n",
        "\"FID vs baseline\" compares a sampler's images with the baseline sampler's images of the same model "
        "(`ar`, `var` with the drafter, `mar` with the target): how far an accelerated sampler moves the output "
        "distribution. Speed-ups are against the same baseline.\n",
        quality_table(rows) + "\n",
    ]
    if floor:
        parts += [f"Floor: {floor['images']} real images of `{floor['source']}` (evenly spaced) against the reference "
                  f"score FID **{floor['fid']:.3f}** (KID {_fmt(floor['kid'], '.5f')}, precision {_fmt(floor['precision'])}, "
                  f"recall {_fmt(floor['recall'])}, IS {_fmt(floor['is'], '.2f')}) with the same features: what a perfect "
                  f"sampler would get at this sample count.\n"]
    if opts.skip:
        parts += [f"Left out of this run (`--skip`): {', '.join(f'`{x}`' for x in sorted(opts.skip))}.\n"]
    if skipped:
        parts += ["Samplers that do not run on a model (another model family or missing pieces):\n"]
        parts += [f"- {m}: `{s}`: {why}" for m, d in skipped.items() for s, why in d.items()]
        parts.append("")
    if shape_rows:
        parts += ["## Cost per forward pass, official shapes with random weights (batch 1)\n",
                  "Random weights give near-uniform distributions, so acceptance here is not meaningful; "
                  "the table shows what one forward pass costs for each sampler's window.\n",
                  shapes_table(shape_rows) + "\n"]
    parts += ["## Plots\n"] + [f"![{p.stem}]({p.name})\n" for p in plots]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def default_samplers() -> list[str]:
    from vargen.samplers import available_samplers

    return ["ar"] + [s for s in available_samplers() if s != "ar"]


def run_report(models: list[str], samplers: list[str] | None = None, num_samples: int = 1000,
               reference: str = "cifar10-train", features="cifar10-features", mode: str = "clean",
               out: str | Path = "docs/benchmarks.md", work_dir: str | Path = "runs/report", batch_size: int = 50,
               seed: int = 0, shapes: list[str] | None = None, shape_samplers: list[str] | None = None,
               latency: bool = True, device: str = "cpu", weights=None, overrides: dict | None = None,
               command: str | None = None, progress=print, floor: str | None = None, timing_repeats: int = 2,
               skip: list[str] | None = None) -> dict:
    opts = SimpleNamespace(skip=set(skip or ()), timing_repeats=timing_repeats, num_samples=num_samples, reference=reference, features=features, mode=mode,
                           work_dir=work_dir, batch_size=batch_size, seed=seed, latency=latency, device=device,
                           weights=weights, overrides=overrides or {}, progress=progress)
    rows, skipped = [], {}
    floor_result = floor_row(floor, opts) if floor else None
    for m in models:
        r, s = measure_model(m, samplers, opts)
        rows += r
        if s:
            skipped[m] = s
    shape_rows = measure_shapes(shapes or [], shape_samplers or ["ar", "sjd:window=16"], opts)
    out = Path(out)
    plots = plot(rows, out.parent, out.stem) if rows else []
    command = command or "python eval/report.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_markdown(out, rows, skipped, shape_rows, plots, opts, command, floor_result)
    result = {"rows": [r.__dict__ for r in rows], "floor": floor_result, "skipped": skipped, "shapes": shape_rows,
              "plots": [str(p) for p in plots], "markdown": str(out)}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    progress(f"wrote {out} and {', '.join(p.name for p in plots)}")
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="eval/report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cifar10-llamagen"], help="zoo names or pipeline folders")
    p.add_argument("--samplers", nargs="+", help="sampler specs (default: each model's pipeline.json 'benchmark' list)")
    p.add_argument("--skip", nargs="+", default=[], help="sampler specs to leave out of the models' benchmark lists")
    p.add_argument("--floor", help="real-image floor: e.g. cifar10-train (num-samples images scored like a sampler)")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--reference", default="cifar10-train", help="folder, dataset name, .npz images or stats")
    p.add_argument("--features", default="cifar10-features", help="cifar10-features | inception | clip")
    p.add_argument("--mode", default="clean", choices=["clean", "legacy_tensorflow"])
    p.add_argument("--weights", help="Inception weights file (or cifar10-features folder)")
    p.add_argument("--out", default="docs/benchmarks.md")
    p.add_argument("--work-dir", default="runs/report", help="generated samples (resumable)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shapes", nargs="*", default=[], help="random-weight shapes PRESET:TOKENS, e.g. gpt-b:256")
    p.add_argument("--shape-samplers", nargs="+", default=["ar", "sjd:window=16"])
    p.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency runs")
    p.add_argument("--timing-repeats", type=int, default=2, help="timed batches per sampler (best is kept)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    for name, typ in (("--temperature", float), ("--top-k", int), ("--top-p", float), ("--cfg-scale", float)):
        p.add_argument(name, type=typ)
    return p.parse_args(argv)


def main(argv=None) -> int:
    from vargen.runtime import configure_threads

    args = parse_args(argv)
    try:
        configure_threads(args.threads)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    overrides = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "cfg_scale") if getattr(args, k) is not None}
    try:
        run_report(args.models, args.samplers, args.num_samples, args.reference, args.features, args.mode, args.out,
                   args.work_dir, args.batch_size, args.seed, args.shapes, args.shape_samplers, not args.no_latency,
                   args.device, args.weights, overrides, floor=args.floor, timing_repeats=args.timing_repeats, skip=args.skip)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
