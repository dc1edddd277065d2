"""vargen: fast sampling for visual autoregressive image generators -- generate, benchmark, measure, FID, app, train.

Samplers are written in one grammar everywhere: NAME:key=value,key=value ("vargen samplers" lists every sampler
and its options). Errors in what you typed are one "error:" line and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

EPILOG = """examples:
  vargen generate --sampler sjd:window=16,coupled=true --class-id cat ship --out out
  vargen generate --model cifar10-var --sampler code:draft_steps=4 --out out-var
  vargen bench --model cifar10-llamagen --batch 1 --sampler ar sjd:window=16 sjd:window=16,coupled=true
  vargen models
  vargen samplers --model cifar10-var
"""

CONFIG_FLAGS = (  # SamplingConfig fields as flags: (flag, type, help)
    ("--temperature", float, "softmax temperature; 0 is greedy (default: the model's)"),
    ("--top-k", int, "keep the k most likely tokens; 0 disables (token and VAR models)"),
    ("--top-p", float, "nucleus sampling mass in (0, 1]; 1 disables (token and VAR models)"),
    ("--cfg-scale", float, "classifier-free guidance scale; 1 disables (default: the model's)"),
    ("--cfg-interval", int, "LlamaGen: guide output tokens 0..interval+1 only; -1 always (token models)"),
)


def _add_config_flags(p) -> None:
    for flag, typ, help_text in CONFIG_FLAGS:
        p.add_argument(flag, type=typ, help=help_text)


def _config_options(args) -> dict:
    names = [f[0][2:].replace("-", "_") for f in CONFIG_FLAGS]
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _add_runtime_flags(p) -> None:
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads, at most the usable cores; 0 picks them from the free cores "
                        "(VARGEN_THREADS also sets it)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory one sampling call may use, e.g. 8GB or 512MiB (default: 80%% of what the device has "
                        "available); larger batches run in chunks, options that cannot fit one image are refused")


def _setup(args) -> None:
    from .runtime import check_device, configure_threads

    configure_threads(args.threads)
    check_device(args.device)
    if getattr(args, "max_memory", None) is not None:
        from .budget import parse_bytes

        parse_bytes(args.max_memory)  # a bad size fails before anything loads


def _add_model_flags(p, default_model: str = "cifar10-llamagen") -> None:
    from .catalog import model_help

    p.add_argument("--model", default=default_model, help=model_help(default_model))
    p.add_argument("--checkpoint", help="local official GPT checkpoint (offline use of official names)")
    p.add_argument("--tokenizer-checkpoint", help="local official VQ checkpoint (offline use of official names)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling of the checkpoint files (they can run code: only for files you trust)")


def _load(args):
    from .pipeline import load

    return load(args.model, device=args.device, checkpoint=args.checkpoint,
                tokenizer_checkpoint=args.tokenizer_checkpoint, trusted=args.trust_checkpoint,
                max_memory=args.max_memory)


# ----------------------------------------------------------------------------------------------
# vargen generate
# ----------------------------------------------------------------------------------------------


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate images and print sampling statistics",
                       description="Generate images into --out (one PNG each; video models: one GIF, and mp4 where "
                                   "PyAV is installed, per clip), each written as soon as it is decoded, with a "
                                   "progress bar on stderr; then print the sampling statistics. Image i uses the "
                                   "generator seeded with --seed + i, so it does not depend on the batch it ran in. "
                                   "--out gets a manifest.json naming the run (model, sampler and options, seed, "
                                   "conditions, count): a folder of another run is refused, --resume finishes an "
                                   "interrupted run (the files an uninterrupted one writes), --overwrite replaces it; "
                                   "other files in the folder are left alone. --grid PNG also writes a grid of the "
                                   "first images.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_flags(p)
    p.add_argument("--sampler", help="sampler spec NAME:key=value,... (default: the model's; coupled SJD for LlamaGen, "
                                     "var, mar); `vargen samplers` lists them")
    p.add_argument("--class-id", nargs="+", default=None, help="class ids or names (default: every class once)")
    _add_prompt_flags(p, "for checkpoints without tokenizer files")
    p.add_argument("--scene", nargs="+", type=int, default=None,
                   help="video demos: seeds of procedural scenes whose first frame is the context (default 0..7)")
    p.add_argument("--context", nargs="+", default=None, metavar="FILE",
                   help="video models: context frames, one image or GIF per clip (resized and centre-cropped)")
    p.add_argument("--per-class", "--per-prompt", dest="per_class", type=int, default=1,
                   help="images per class id or prompt (default 1)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per sampling call; more run in chunks (default 32; the first image runs alone, so it "
                        "is written within seconds)")
    p.add_argument("--seed", type=int, default=0, help="seed of image 0 (image i uses seed + i; default 0)")
    p.add_argument("--out", default="out", help="folder for the samples and manifest.json (default out)")
    p.add_argument("--grid", metavar="PNG", help="also write a grid of the first images (10 per class, 100 in all; "
                                                 "video: film strips) to this .png, e.g. beside --out")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="finish the run in --out (same manifest): keep the files written, write the others")
    again.add_argument("--overwrite", action="store_true",
                       help="delete the samples and manifest in --out first (other files stay)")
    p.add_argument("--compile", action="store_true",
                   help="token samplers: run the decode step as one torch.compile graph (same images; the first "
                        "call compiles, a few seconds to a minute)")
    _add_config_flags(p)
    _add_runtime_flags(p)


def _prepare_out(path: str) -> Path:
    if not path.strip():  # Path("") is the current folder
        raise ValueError(f"--out must name a folder, got {path!r}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {folder}: cannot create it ({err.strerror})") from None
    return folder


def _add_prompt_flags(p, ids_note: str) -> None:
    from .catalog import PROMPT_FAMILIES

    p.add_argument("--prompt", nargs="+", default=None, help=f"text prompts, for text-to-image models ({PROMPT_FAMILIES})")
    p.add_argument("--prompt-ids", nargs="+", default=None, metavar="IDS",
                   help=f"prompts as comma-separated token ids (e.g. 0,17,42,98), each ending where the image "
                        f"starts; {ids_note}")


def _cli_prompts(args) -> list | None:
    """--prompt strings or --prompt-ids lists (None: neither given)."""
    if args.prompt is not None and args.prompt_ids is not None:
        raise ValueError("give --prompt or --prompt-ids, not both")
    if args.prompt is not None:
        if any(not p.strip() for p in args.prompt):
            raise ValueError("--prompt: an empty prompt")
        return list(args.prompt)
    if args.prompt_ids is None:
        return None
    rows = []
    for text in args.prompt_ids:
        try:
            rows.append([int(t) for t in text.split(",")])
        except ValueError:
            raise ValueError(f"--prompt-ids {text!r}: expected comma-separated integers such as 0,17,42") from None
    return rows


def _slug(prompt, length: int = 40) -> str:
    """A file-name piece for a prompt (text or token ids)."""
    text = prompt if isinstance(prompt, str) else "ids-" + "-".join(map(str, prompt[-4:]))
    slug = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return "-".join(filter(None, slug.split("-")))[:length] or "prompt"


GRID_PER_CLASS, GRID_MAX = 10, 100  # --grid: the first 10 images of each class, 100 in all


@dataclass
class _Job:
    """What ``vargen generate`` writes: one condition, file-name label and set of files per sample."""

    conds: list  # per sample, its condition (a class id, a prompt, a scene seed, a context clip)
    labels: list[str]
    conditions: dict  # how the manifest names them
    suffixes: tuple[str, ...]  # the files of one sample: ("png",); video ("gif", "mp4") or ("gif",)
    unit: str  # "img" / "clip"


def _run_generate(args) -> int:
    import time

    _setup(args)
    for name in ("per_class", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.sampler is not None and not args.sampler.strip():
        raise ValueError("--sampler must be a sampler spec such as ar or sjd:window=16, got ''")
    prompts = _cli_prompts(args)
    if args.grid is not None and (Path(args.grid).suffix.lower() != ".png" or Path(args.grid).is_dir()):
        raise ValueError(f"--grid takes the path of a .png file, got {args.grid!r}")
    t0 = time.perf_counter()
    folder = _prepare_out(args.out)
    pipe = _load(args)
    job = _video_job(args, pipe, prompts) if pipe.video else _image_job(args, pipe, prompts)
    pipe.check_seed(args.seed)
    sampler = args.sampler or pipe.default_sampler
    return _stream(args, pipe, job, folder, sampler, t0)


MAX_IMAGES = 1_000_000  # one run's samples: its lists of conditions and names are built before the first image


def _per_class(args, conditions: int) -> int:
    """--per-class, bounded so that the run's list of images is one that can be built."""
    conditions = max(conditions, len(args.prompt or args.prompt_ids or ()))
    if args.per_class * max(conditions, 1) > MAX_IMAGES:
        raise ValueError(f"--per-class {args.per_class} x {conditions} conditions is more than {MAX_IMAGES} images "
                         "in one run; use a smaller --per-class and several --out folders")
    return args.per_class


def _image_job(args, pipe, prompts) -> _Job:
    if args.scene is not None or args.context is not None:
        raise ValueError(f"--scene / --context: {args.model} is not a video model")
    n = _per_class(args, pipe.num_classes if args.class_id is None else len(args.class_id))
    if pipe.takes_prompts:
        if args.class_id is not None:
            raise ValueError(f"--class-id: {args.model} is a text-to-image model; give --prompt or --prompt-ids")
        if prompts is None:
            raise ValueError(f"{args.model} is a text-to-image model: give --prompt (or --prompt-ids)")
        return _Job([p for p in prompts for _ in range(n)], [_slug(p) for p in prompts for _ in range(n)],
                    {"prompts": prompts}, ("png",), "img")
    if prompts is not None:
        raise ValueError(f"--prompt / --prompt-ids: {args.model} is class-conditional; give --class-id")
    ids = list(range(pipe.num_classes)) if args.class_id is None else [pipe.class_id(c) for c in args.class_id]
    names = [pipe.class_names[c] if pipe.class_names else str(c) for c in ids]
    return _Job([c for c in ids for _ in range(n)], [name for name in names for _ in range(n)], {"class_ids": ids},
                ("png",), "img")


def _video_job(args, pipe, prompts) -> _Job:
    """Video pipelines: one GIF (and mp4 where PyAV is installed) per clip; a grid holds film strips."""
    import hashlib

    from .video import mp4_available, read_context

    if prompts is not None or args.class_id is not None:
        raise ValueError(f"{args.model} is a video model: give --scene seeds or --context files")
    if args.scene is not None and args.context is not None:
        raise ValueError("give --scene or --context, not both")
    given = len(args.context if args.context is not None else args.scene if args.scene is not None else range(8))
    n, suffixes = _per_class(args, given), ("gif", "mp4") if mp4_available() else ("gif",)
    if args.context is not None:
        tc, (_, H, W) = pipe.tokenizer.config, pipe.model.config.video_latent_shape
        size = (H * tc.spatial_compression, W * tc.spatial_compression)
        clips = [read_context(f, tc.pixel_chunk_duration, size) for f in args.context]
        if len({c.shape[1] for c in clips}) > 1:
            raise ValueError("--context files give different frame counts; use files with the same number of frames")
        files = [{"file": Path(f).name, "sha256": hashlib.sha256(Path(f).read_bytes()).hexdigest()}
                 for f in args.context]
        return _Job([c for c in clips for _ in range(n)], [Path(f).stem for f in args.context for _ in range(n)],
                    {"context": files}, suffixes, "clip")
    if pipe.scenes is None:
        raise ValueError(f"{args.model} has no procedural scenes: give --context files")
    scenes = args.scene if args.scene is not None else list(range(8))
    return _Job([s for s in scenes for _ in range(n)], [f"scene-{s}" for s in scenes for _ in range(n)],
                {"scenes": scenes}, suffixes, "clip")


def _stream(args, pipe, job: _Job, folder: Path, sampler: str, t0: float) -> int:
    """Sample ``job`` in chunks (the first image, then --batch-size at a time), each file written (atomically) as soon
    as its chunk is decoded; chunks already written (--resume) are skipped, so the chunks, and the files, are those of
    an uninterrupted run."""
    import time

    from tqdm import tqdm

    from .outputs import check_folder, clear, remove_partial, write_manifest
    from .samplers.spec import SamplerSpec

    count, options = len(job.conds), _config_options(args)
    width = max(4, len(str(count - 1)))  # 0000_cat.png; 000123_cat.png for a million

    def names(i: int) -> list[str]:
        return [f"{i:0{width}d}_{job.labels[i]}.{s}" for s in job.suffixes]

    manifest = {"command": "vargen generate", "vargen": _version(), "model": args.model,
                "checkpoint": args.checkpoint, "tokenizer_checkpoint": args.tokenizer_checkpoint,
                "device": pipe.device.type, "sampler": str(SamplerSpec.parse(sampler)), "config": options,
                "seed": args.seed, "seeding": "sample i uses seed + i", **job.conditions, "per_class": args.per_class,
                "count": count, "batch_size": args.batch_size,
                "files": [f"{{index:0{width}d}}_{{label}}.{s}" for s in job.suffixes]}
    check_folder(folder, manifest, args.resume, args.overwrite)
    done = bytearray(count) if args.overwrite else _written(folder, count, names)
    runs = _runs(done, args.batch_size)
    totals, frames, written = _StatsTotal(), None, 0
    _check_job(pipe, job, args, sampler, options)
    bar = None  # opened once the first chunk ran, so an error is one line without a bar
    try:
        for start, out in _chunks(pipe, job, runs, args, sampler, options):
            if bar is None:
                bar = tqdm(total=count, initial=sum(done), unit=job.unit, file=sys.stderr, dynamic_ncols=True)
                if args.overwrite:
                    clear(folder)
                write_manifest(folder, manifest)
            rows = out.videos if pipe.video else out.images
            for j, row in enumerate(rows):
                if not done[start + j]:
                    _save(row, [folder / name for name in names(start + j)])
                    written += 1
                    bar.update()
            frames = len(out.videos[0]) if pipe.video else None
            totals.add(out.stats)
    finally:
        if bar is not None:
            bar.close()
    remove_partial(folder)  # writes a killed run left unfinished
    if not all(_written(folder, count, names)):
        raise ValueError(f"--out {folder}: sample files went missing while the run wrote them; run again with --resume")
    if args.grid:
        _write_grid(Path(args.grid), folder, job, args.per_class, names, video=pipe.video)
    what = "videos" if pipe.video else "images"
    summary = {"model": args.model, "sampler": sampler, what: count, f"{what}_written": written,
               **({"frames": frames} if frames else {}), **totals.summary(),
               "total_seconds_with_loading": round(time.perf_counter() - t0, 3)}
    print(json.dumps(summary, indent=2))
    kept = f", {count - written} kept from the earlier run" if written < count else ""
    files = " and ".join({"png": "PNGs", "gif": "GIFs", "mp4": "mp4s"}[s] for s in job.suffixes)
    note = " (no mp4: PyAV is not installed)" if pipe.video and "mp4" not in job.suffixes else ""
    grid = f"; the grid of the first ones to {args.grid}" if args.grid else ""
    print(f"wrote {written} {files} to {folder}{kept}{note}{grid}")
    return 0


def _check_job(pipe, job: _Job, args, sampler: str, options: dict) -> None:
    """Every check of the whole run before any work (its chunks are checked again as they start): conditions, seeds,
    sampler options and memory. A --batch-size over what fits in memory is refused, not shrunk, so that a resumed run
    splits its chunks where the first run did."""
    import torch

    conds = torch.stack(job.conds[:1]) if torch.is_tensor(job.conds[0]) else job.conds  # context clips: the first
    pipe.generate_iter(conds, sampler=sampler, seed=args.seed, batch_size=args.batch_size, compile=args.compile,
                       **options)  # checks when called; nothing runs
    fit = pipe.rows_that_fit(conds, sampler, **options)
    if args.batch_size > fit:
        raise ValueError(f"--batch-size {args.batch_size}: at most {fit} images fit in memory at once here "
                         f"(vargen.budget{', --max-memory' if args.max_memory else ''}); give --batch-size {fit} or less")


def _written(folder: Path, count: int, names) -> bytearray:
    """Per sample, 1 where all its files exist; a sample file this run would not write is an error."""
    from .outputs import sample_files, sample_index

    found = bytearray(count)
    for path in sample_files(folder):
        i = sample_index(path.name)
        if i >= count or path.name not in names(i):
            raise ValueError(f"--out {folder}: {path.name} is not a file of this run; use a new --out, or "
                             f"--overwrite to delete the samples there")
        found[i] += 1
    want = len(names(0))
    return bytearray(int(f == want) for f in found)


def _runs(done: bytearray, batch_size: int) -> list[list[int]]:
    """``[start, stop)`` of consecutive chunks with a sample to write, each run one generate_iter call. The chunks:
    the first sample alone (on disk within seconds, whatever --batch-size; a run of its own), then --batch-size at
    a time."""
    bounds, runs = [0, *range(1, len(done), batch_size), len(done)], []
    for a, b in zip(bounds, bounds[1:]):
        if all(done[a:b]):
            continue
        if runs and runs[-1][1] == a and runs[-1][0] != 0:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    return runs


def _chunks(pipe, job: _Job, runs, args, sampler: str, options: dict):
    """``(index of its first sample, GenerationOutput)`` per chunk of each run; run ``[a, b)`` starts at seed + a.
    Context clips (tensors) go one chunk per call, stacked there: generate_iter converts a tensor as a whole."""
    import torch

    for a, b in runs:
        tensors = torch.is_tensor(job.conds[a])
        for c in range(a, b, args.batch_size if tensors else b - a):
            stop = min(c + args.batch_size, b) if tensors else b
            part = torch.stack(job.conds[c:stop]) if tensors else job.conds[c:stop]
            for out in pipe.generate_iter(part, sampler=sampler, seed=args.seed + c, batch_size=args.batch_size,
                                          compile=args.compile, **options):
                yield c, out
                c += len(out.images)


def _save(row, paths: list[Path]) -> None:
    """One sample's files: a PNG, or a GIF (and mp4) of a clip's frames; each under a temporary name, renamed."""
    from .outputs import atomic_write
    from .video import save_gif, save_mp4

    writers = {".png": lambda p: row.save(p), ".gif": lambda p: save_gif(row, p), ".mp4": lambda p: save_mp4(row, p)}
    for path in paths:
        atomic_write(path, writers[path.suffix])


def _write_grid(path: Path, folder: Path, job: _Job, per_class: int, names, video: bool) -> None:
    """The first GRID_PER_CLASS samples of each class (GRID_MAX in all), read back from their files, one row per
    class (video: one film strip per clip), saved to ``path``."""
    from itertools import islice

    from PIL import Image, ImageSequence

    from .images import image_grid
    from .outputs import atomic_write

    picks = islice((i for i in range(len(job.conds)) if i % per_class < GRID_PER_CLASS), GRID_MAX)
    tiles = []
    for i in picks:
        with Image.open(folder / names(i)[0]) as im:
            frames = [f.convert("RGB") for f in ImageSequence.Iterator(im)]
        tiles.append(image_grid(frames, len(frames)))
    cols = 1 if video else min(GRID_PER_CLASS, per_class) if per_class > 1 else min(GRID_PER_CLASS, len(tiles))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, image_grid(tiles, cols).save)


class _StatsTotal:
    """The run's sampling statistics in flat memory: each chunk's Stats without its per-step and per-token figures
    (accepted tokens per step, the acceptance map: megabytes per thousand images; the tokens per image stay, 8 bytes
    each), joined by Stats.concat every 64 chunks; the mean accepted tokens per step (Stats.mean_accepted of the whole
    run) from running sums."""

    def __init__(self):
        self.parts, self.accepted, self.steps = [], 0.0, 0

    def add(self, stats) -> None:
        from dataclasses import replace

        import torch

        from .samplers.stats import Stats

        if stats.reports_acceptance and stats.accepted:
            acc = torch.stack([a.float().cpu() for a in stats.accepted])
            self.accepted, self.steps = self.accepted + float(acc[acc > 0].sum()), self.steps + int((acc > 0).sum())
        self.parts.append(replace(stats, accepted=[], token_step=None, relaxed=None))
        if len(self.parts) == 64:
            self.parts = [Stats.concat(self.parts)]

    def summary(self) -> dict:
        from .samplers.stats import Stats

        if not self.parts:
            return {}
        return {**Stats.concat(self.parts).summary(),
                "mean_accepted": round(self.accepted / self.steps, 4) if self.steps else None}


# ----------------------------------------------------------------------------------------------
# vargen bench
# ----------------------------------------------------------------------------------------------


_DEFAULT_SHAPES = ["random-gpt-b", "random-gpt-l", "random-gpt-xl"]


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="samplers against their family's baseline: passes, tokens per forward, speed-up",
                       description="Time samplers on one model, interleaved, after a warm-up each; speed-ups are "
                                   "against the family's baseline (ar, var, mar) of the same batch size.")
    p.add_argument("--model", default="cifar10-llamagen",
                   help="a pipeline (demo name, folder or hub id), or random-gpt-b / random-gpt-l / random-gpt-xl / "
                        "random-janus-pro-1b / random-janus-pro-7b (official shapes with random weights), "
                        "random-tiny-janus / random-tiny-emu3 / random-tiny-lumina (2-layer models of each adapter)")
    p.add_argument("--sampler", nargs="+", help="sampler specs NAME:key=value,... (default: the baseline and the "
                                                "model's default sampler)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 1; --suite gpu: 1 16)")
    p.add_argument("--compile", choices=("off", "on", "both"),
                   help="token samplers: time the eager path (off), the compiled decode step (on), or both, each row "
                        "against eager ar (default off; --suite gpu: on)")
    p.add_argument("--forward", action="store_true",
                   help="also time one cached decode forward of 1 and 16 tokens per row, eager and (with --compile "
                        "on/both) compiled")
    p.add_argument("--suite", choices=("gpu",),
                   help="gpu: the decode step of GPT-B/L/XL shapes with random weights against the bandwidth floor, "
                        "and sjd/sd speed-ups (use with --device; --model is ignored)")
    p.add_argument("--shapes", nargs="+", default=_DEFAULT_SHAPES,
                   help="--suite gpu: the shapes (default random-gpt-b random-gpt-l random-gpt-xl)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs (seeds) per entry; times are summed (default 1)")
    p.add_argument("--quality", action="store_true",
                   help="add the mean NLL of the samples under the model (bits/token), a quality proxy (token models)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first run (default 0)")
    p.add_argument("--num-tokens", type=int, default=None,
                   help="image tokens of the random-* shapes (default 256; Janus-Pro shapes 576)")
    p.add_argument("--num-layers", type=int, default=None,
                   help="decoder layers of a random transformers shape (default: all of the checkpoint's)")
    _add_prompt_flags(p, "round-robin over the batch; the random transformers shapes default to a synthetic one")
    p.add_argument("--out", help="also write the markdown table to this file")
    _add_config_flags(p)
    _add_runtime_flags(p)


def _run_bench(args) -> int:
    from .eval.bench import (RANDOM_HF_SHAPES, RANDOM_SHAPES, TINY_SHAPES, format_table, machine_line, random_pipeline,
                             run_bench)
    from .pipeline import load

    _setup(args)
    if args.out and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name for the table")
    if args.suite == "gpu":
        return _run_gpu_suite(args)
    if args.shapes != _DEFAULT_SHAPES:
        raise ValueError("--shapes applies to --suite gpu")
    if args.num_tokens is not None and args.num_tokens < 1:
        raise ValueError(f"--num-tokens must be >= 1, got {args.num_tokens}")
    args.batch, args.compile = args.batch or [1], args.compile or "off"
    prompts = _cli_prompts(args)
    if args.model in RANDOM_SHAPES or args.model in RANDOM_HF_SHAPES or args.model in TINY_SHAPES:
        tokens = args.num_tokens or (576 if args.model in RANDOM_HF_SHAPES else 256)
        pipe = random_pipeline(args.model, tokens, device=args.device, num_layers=args.num_layers)
        pipe.max_memory = args.max_memory
    else:
        for flag, value in (("--num-layers", args.num_layers), ("--num-tokens", args.num_tokens)):
            if value is not None:
                raise ValueError(f"{flag} applies to the random-* shapes")
        pipe = load(args.model, device=args.device, max_memory=args.max_memory)
    specs = args.sampler or list(dict.fromkeys([pipe.baseline_sampler, pipe.default_sampler]))
    print(f"model {args.model}; {machine_line()}")
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    rows = run_bench(pipe, specs, args.batch, _config_options(args), seed=args.seed, repeats=args.repeats,
                     quality=args.quality, compile_modes=modes, prompts=prompts)
    table = format_table(rows)
    if args.forward:
        from .eval.bench import format_forward_table, forward_table

        table += "\n\n" + format_forward_table(forward_table(pipe, args.batch, modes, _config_options(args),
                                                             prompts=prompts))
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"model `{args.model}`, {machine_line()}\n\n{table}\n")
    return 0


def _run_gpu_suite(args) -> int:
    from .eval.bench import RANDOM_SHAPES, machine_line
    from .eval.gpu_suite import format_suite, run_gpu_suite

    unknown = [s for s in args.shapes if s not in RANDOM_SHAPES]
    if unknown:
        raise ValueError(f"--shapes: unknown {', '.join(unknown)}; choose from {', '.join(RANDOM_SHAPES)}")
    if args.compile == "both":
        raise ValueError("--suite gpu times eager and compiled itself: --compile on (default) or off")
    print(f"suite gpu; {machine_line()}")
    rows, line = run_gpu_suite(args.shapes, args.batch or [1, 16], args.device, args.num_tokens or 256,
                               compile=args.compile != "off")
    table = f"{line}\n\n{format_suite(rows)}"
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"{machine_line()}\n\n{table}\n")
    return 0


# ----------------------------------------------------------------------------------------------
# vargen samplers
# ----------------------------------------------------------------------------------------------


def _add_samplers(sub) -> None:
    p = sub.add_parser("samplers", help="list the samplers, the families they apply to, and their options",
                       description="Every registered sampler with the model families it applies to, or one sampler "
                                   "with its options (type, range, default, help). With --model: the samplers of that "
                                   "pipeline and the defaults it runs them with.")
    p.add_argument("name", nargs="?", help="a sampler to describe with its options")
    p.add_argument("--acceptance", help="with NAME: also list this acceptance rule's options")
    p.add_argument("--model", help="a pipeline (demo name, folder, ...): show its default sampler and the option "
                                   "defaults it runs, which can differ from the sampler's own (e.g. cifar10-var's "
                                   "code runs draft_steps 4)")


def _run_samplers(args) -> int:
    from .samplers import available_samplers, sampler_class

    if args.name:
        sampler_class(args.name)  # an unknown name: "unknown sampler ...; did you mean ...?"
    if args.model:
        return _run_pipeline_samplers(args)
    if not args.name:
        _print_sampler_table(available_samplers())
        print("\n`vargen samplers NAME` lists a sampler's options; `--model NAME` the defaults a pipeline runs")
        return 0
    _print_options(args.name, _declared_defaults(args.name, args.acceptance), args.acceptance)
    return 0


def _applies_to(sampler: str) -> str:
    from .catalog import family_label
    from .pipeline import families_taking

    return ", ".join(family_label(k) for k in families_taking(sampler)) or "custom models only"


def _print_sampler_table(names) -> None:
    from .samplers import sampler_summary

    width = max(map(len, names))
    print(f"{'sampler':<{width}}  applies to")
    for name in names:
        print(f"{name:<{width}}  {_applies_to(name)}")
        summary = sampler_summary(name)
        if summary:
            print(f"{'':<{width}}    {summary}")


def _declared_defaults(name: str, acceptance: str | None) -> dict:
    from .samplers import sampler_options

    return {key: opt.default for key, opt in sampler_options(name, acceptance).items()}


def _print_options(name: str, defaults: dict, acceptance: str | None = None, header: str = "") -> None:
    """One sampler's options with the defaults given; where these differ from the sampler's own, both."""
    from dataclasses import replace

    from .samplers import sampler_options

    print(f"{name}: applies to {_applies_to(name)}{header}")
    options = sampler_options(name, acceptance)
    if not options:
        print("  (no options)")
    for key, opt in options.items():
        line = replace(opt, default=defaults[key]).describe()
        if defaults[key] != opt.default:
            line += f" (this pipeline's default; the sampler's own is {opt.default!r})"
        print(f"  {line}")


def _run_pipeline_samplers(args) -> int:
    from .catalog import family_label
    from .pipeline import load

    pipe = load(args.model)
    names = pipe.applicable_samplers()
    if args.name and args.name not in names:
        raise ValueError(f"sampler {args.name!r} does not apply to {args.model} ({family_label(pipe.kind)}); it "
                         f"takes {', '.join(names)}")
    print(f"{args.model} ({family_label(pipe.kind)}): default sampler {pipe.default_sampler}, baseline "
          f"{pipe.baseline_sampler}\n")
    for name in [args.name] if args.name else names:
        _print_options(name, pipe.sampler_defaults(name, args.acceptance), args.acceptance)
        print()
    return 0


# ----------------------------------------------------------------------------------------------
# vargen models
# ----------------------------------------------------------------------------------------------


def _add_models(sub) -> None:
    sub.add_parser("models", help="list the models: shipped demos, official names, transformers image LMs",
                   description="The shipped demo pipelines (offline, with their size on disk), the official names "
                               "(what each downloads, and whether it is in the local cache), and the transformers "
                               "image LMs vargen adapts. Any of them goes to --model.")


def _run_models(args) -> int:
    from .catalog import HUB_EXAMPLES, PROMPT_FAMILIES, demos, family_label, officials

    print("Shipped demos (in the package; work offline):")
    rows = [(d.name, family_label(d.kind), f"{d.megabytes:.1f} MB", "parts: " + ", ".join(d.parts)) for d in demos()]
    _print_rows(rows)
    print("\nOfficial names (downloaded from the Hugging Face hub where a network exists; offline from the hub cache "
          "or from local files: --checkpoint / --tokenizer-checkpoint):")
    rows = [(o.name, family_label(o.kind), "cached, offline" if o.cached else "downloads",
             "; ".join(f"{repo}/{file}" for repo, file in o.downloads)) for o in officials()]
    _print_rows(rows)
    print(f"\ntransformers image LMs ({PROMPT_FAMILIES}; the [hf] extra): a save_pretrained folder (offline), or a "
          "hub id that downloads where a network exists, e.g.:")
    _print_rows([(repo, family_label(kind)) for repo, kind in HUB_EXAMPLES.items()])
    return 0


def _print_rows(rows) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[-1])


# ----------------------------------------------------------------------------------------------
# vargen measure
# ----------------------------------------------------------------------------------------------


def _add_measure(sub) -> None:
    p = sub.add_parser("measure", help="quality checks of the demo models on a dataset split",
                       description="Tokenizer reconstruction PSNR and codebook use, or a GPT's held-out bits per token.")
    msub = p.add_subparsers(dest="what", required=True)
    ps = msub.add_parser("psnr", help="tokenizer reconstruction PSNR (dB) and codebook usage")
    ps.add_argument("--tokenizer", default="cifar10-vq",
                    help="zoo name or folder with model.safetensors + config.json (LlamaGen VQ, VAR VQVAE or KL VAE)")
    nl = msub.add_parser("nll", help="held-out bits per token of a GPT vs a unigram baseline")
    nl.add_argument("--model", default="cifar10-llamagen", help="a LlamaGen pipeline (default cifar10-llamagen)")
    nl.add_argument("--unigram-every", type=int, default=5,
                    help="fit the unigram baseline on every N-th training image (default 5: 10,000 images)")
    for q in (ps, nl):
        q.add_argument("--data", required=True, help=".tar.gz with split/class/*.jpg, or a folder")
        q.add_argument("--split", default="test", help="dataset split (default test)")
        q.add_argument("--limit", type=int, help="only the first N images")
        q.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: automatic)")


def _zoo_or_folder(name: str) -> Path:
    from . import zoo

    path = zoo.shipped_path(name) or Path(name)
    if not (path / "config.json").is_file():
        raise ValueError(f"{name!r} is neither a shipped zoo entry nor a folder with config.json")
    return path


def _check_archive(data: str) -> None:
    """--data: a folder, or a file that is a tar archive (.tar.gz), named when it is not one."""
    import tarfile

    if Path(data).is_file() and not tarfile.is_tarfile(data):
        raise ValueError(f"--data {data}: not a tar archive (.tar.gz with split/class/*.jpg); give one or a folder")


def _run_measure(args) -> int:
    import torch

    from .runtime import configure_threads

    configure_threads(args.threads)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    _check_archive(args.data)
    if args.what == "psnr":
        from .train.vq import evaluate_psnr, load_tokenizer_folder

        tok = load_tokenizer_folder(_zoo_or_folder(args.tokenizer))
        result = evaluate_psnr(tok, args.data, args.split, limit=args.limit)
    else:
        from .pipeline import load
        from .train.gpt import nll_bits_per_token, tokenize_split, unigram_bits_per_token

        if args.unigram_every < 1:
            raise ValueError(f"--unigram-every must be >= 1, got {args.unigram_every}")
        pipe = load(args.model)
        if pipe.family.protocol != "token" or pipe.takes_prompts or pipe.video or not hasattr(pipe.model, "logits"):
            raise ValueError("measure nll needs a class-conditional image token model with teacher forcing (a "
                             f"LlamaGen pipeline); {args.model} is {pipe.kind}")
        test_tokens, test_labels = tokenize_split(pipe.tokenizer, args.data, args.split, flips=False, limit=args.limit)
        train_tokens, _ = tokenize_split(pipe.tokenizer, args.data, "train", flips=False, every=args.unigram_every)
        result = {
            "model_bits_per_token": nll_bits_per_token(pipe.model, test_tokens, test_labels),
            "unigram_bits_per_token": unigram_bits_per_token(train_tokens, test_tokens, pipe.model.vocab_size),
            "uniform_bits_per_token": float(torch.tensor(float(pipe.model.vocab_size)).log2()),
            "sequences": int(test_tokens.shape[0]),
            "unigram_fit_images": int(train_tokens.shape[0]),
        }
    print(json.dumps({"split": args.split, **result}, indent=2))
    return 0


# ----------------------------------------------------------------------------------------------
# vargen app (vargen.app; the only command that imports gradio)
# ----------------------------------------------------------------------------------------------


def _add_app(sub) -> None:
    p = sub.add_parser("app", help="start the web app: a baseline and an accelerated sampler side by side",
                       description="Start the Gradio app (needs the [app] extra: pip install 'vargen[app]'): pick a "
                                   "model, a class, prompt or scene and a sampler; one click shows the baseline's and "
                                   "the sampler's images, the acceptance map, forward passes and the wall-clock ratio.")
    add_app_flags(p)


def add_app_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=7860, help="TCP port, 1..65535 (default 7860)")
    p.add_argument("--share", action="store_true",
                   help="also open a public gradio.live link (needs internet; anyone with the link can use it)")
    p.add_argument("--model", action="append", default=[], metavar="NAME_OR_FOLDER",
                   help="a model to list first (zoo name or folder with pipeline.json); repeatable")
    p.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads, at most the usable cores (0: automatic from the free cores)")
    p.add_argument("--concurrency", type=int, default=1, help="generations run at the same time (default 1)")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting in the queue (default 16)")
    return p


def _run_app(args) -> int:
    for name in ("port", "concurrency", "max_queue"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.port > 65535:
        raise ValueError(f"--port must be a TCP port in 1..65535, got {args.port}")
    from . import zoo
    from .models.hf.folders import is_hub_id

    for name in args.model:  # a name that can never load is an error now, not a log line once the server runs
        if not (zoo.shipped_path(name) or name in zoo.OFFICIAL or Path(name).is_dir() or is_hub_id(name)):
            raise ValueError(f"--model {name!r}: not a shipped demo, an official name, a folder or a hub id "
                             "(owner/name); `vargen models` lists them")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ImportError("the app needs gradio, from the [app] extra: pip install 'vargen[app]'") from None
    from .app import serve

    _setup(args)
    return serve(args)


# ----------------------------------------------------------------------------------------------
# vargen train
# ----------------------------------------------------------------------------------------------


def _add_train(sub) -> None:
    from .train.cli import add_cli

    add_cli(sub)


def _run_train(args) -> int:
    from .train.cli import run_cli

    return run_cli(args)


COMMANDS = {"generate": (_add_generate, _run_generate), "bench": (_add_bench, _run_bench),
            "models": (_add_models, _run_models), "samplers": (_add_samplers, _run_samplers),
            "measure": (_add_measure, _run_measure),
            "train": (_add_train, _run_train), "app": (_add_app, _run_app)}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vargen")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from .eval.cli import add_cli as add_fid_cli

    parser = argparse.ArgumentParser(prog="vargen", description=__doc__.strip(), epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vargen {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands (vargen COMMAND --help for each)")
    for name in ("generate", "bench", "models", "samplers", "measure"):
        COMMANDS[name][0](sub)
    add_fid_cli(sub)
    for name in ("app", "train"):
        COMMANDS[name][0](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fid":
            from .eval.cli import run_cli as run_fid

            return run_fid(args)
        return COMMANDS[args.command][1](args)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        hint = "" if "extra" in str(err) else \
            " (install the extra it belongs to, e.g. pip install -e '.[app]' or '.[eval]')"
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
