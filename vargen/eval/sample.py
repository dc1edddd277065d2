"""Generate a class-balanced sample set for FID, on any number of processes.

    accelerate launch eval/sample.py --model cifar10-llamagen --sampler sjd:window=16 --num-samples 50000 --out DIR
    accelerate launch --multi_gpu --num_processes 2 eval/sample.py --cpu ...   # two CPU processes (gloo)
    python eval/sample.py ...                                                 # one process, no launcher

On CPU, accelerate (1.x) starts several processes only through torchrun (``--multi_gpu``, which also
works without GPUs) or mpirun (``--cpu --mpirun_hostfile``); plain ``accelerate launch --cpu
--num_processes 2`` starts one process, and this script says so.

- Global index ``i`` in ``0..N-1`` has class ``i % num_classes`` (balanced when N is a multiple of the
  number of classes) and its own generator seeded with ``seed * 1_000_000_007 + i``: an image depends
  on its index and seed only, not on the number of processes or the batch it runs in.
- The index list is split across processes with ``PartialState().split_between_processes``; each
  writes ``DIR/{i:06d}.png``. Existing files are skipped, so an interrupted run resumes.
- Per-process statistics (forward passes, tokens per forward, accepted tokens, time) are gathered
  with ``gather_object`` into ``DIR/summary.json`` by the main process; a resumed run adds its batches to
  the earlier runs' and the summary counts every PNG in the folder.
- The first run writes ``DIR/manifest.json`` (model, sampler spec, sampling options, seed, number of
  samples and classes, dtype, and for per-batch-seeded families the batch size); a run whose manifest
  differs refuses to resume into the folder (``--force`` overrides), so two runs are never mixed.

What an image depends on: for token and VAR models its index and seed (per-row seeds, row-by-row decoding);
``--batch-size`` and the number of processes change a file only through the last-bit rounding of batched
matrix products, which can flip a sampled token (seen on a CPU whose GEMM path depends on the row count: 1 of
6 images between batch sizes 4 and 6). MAR's samplers draw from
one generator per call, so a MAR image also depends on its batch (seeded with its first index; recorded
in the manifest as ``seeding: per batch``).

``python eval/sample.py`` (the repository script) and ``python -m vargen.eval.sample`` are the same.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from vargen.outputs import atomic_write, differences, read_manifest, write_manifest

SEED_STRIDE = 1_000_000_007


def row_seed(seed: int, index: int) -> int:
    return seed * SEED_STRIDE + index


def labels_for(num_samples: int, num_classes: int) -> list[int]:
    return [i % num_classes for i in range(num_samples)]


def png_path(out: Path, index: int) -> Path:
    return out / f"{index:06d}.png"


def save_png(img, path: Path) -> None:
    """Write then rename, so an interrupted run never leaves a truncated PNG that would be skipped."""
    atomic_write(path, img.save)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="eval/sample.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="demo zoo name, official name, or folder with pipeline.json")
    p.add_argument("--sampler", default=None, help="sampler spec NAME:key=value,... (default: the model's baseline)")
    p.add_argument("--num-samples", type=int, default=50000, help="images to generate (default 50000)")
    p.add_argument("--out", required=True, help="folder of the PNGs, manifest.json and summary.json")
    p.add_argument("--batch-size", type=int, default=32, help="images per sampling call, per process (default 32)")
    p.add_argument("--seed", type=int, default=0, help="global seed; image i uses seed * 1000000007 + i")
    p.add_argument("--num-classes", type=int, help="use classes 0..N-1 (default: all of the pipeline's)")
    p.add_argument("--checkpoint", help="local official GPT checkpoint (offline use of official names)")
    p.add_argument("--tokenizer-checkpoint", help="local official VQ checkpoint")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of the checkpoints")
    for name, typ in (("--temperature", float), ("--top-k", int), ("--top-p", float), ("--cfg-scale", float)):
        p.add_argument(name, type=typ, help=f"sampling config {name[2:]} (default: the model's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--cpu", action="store_true", help="run on CPU even where CUDA exists (gloo between processes)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: automatic)")
    p.add_argument("--summary", help="where to write the JSON summary (default: OUT/summary.json)")
    p.add_argument("--force", action="store_true", help="resume into a folder made with another manifest anyway")
    return p.parse_args(argv)


def load_pipeline(args, device):
    from vargen.pipeline import load

    dtype = getattr(torch, args.dtype)
    return load(args.model, device=device, dtype=dtype, checkpoint=args.checkpoint,
                tokenizer_checkpoint=args.tokenizer_checkpoint, trusted=args.trust_checkpoint)


def check_args(args, pipe) -> None:
    """Every argument against the pipeline, before any work (``ValueError`` naming the problem)."""
    for name in ("num_samples", "batch_size"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.num_classes is not None and not 1 <= args.num_classes <= pipe.num_classes:
        raise ValueError(f"--num-classes must be in 1..{pipe.num_classes} (the model's classes), got {args.num_classes}")
    pipe.check_seed(args.seed)
    if row_seed(args.seed, args.num_samples) > 2**63 - 1:
        raise ValueError(f"--seed {args.seed} is too large for per-image seeds (seed * {SEED_STRIDE} + index must fit 63 bits)")


def manifest_for(args, pipe, spec, config: dict) -> dict:
    """What the images of a folder depend on; a resumed run must match it."""
    out = {"model": str(args.model), "sampler": str(spec), "config": config, "seed": args.seed,
           "num_samples": args.num_samples, "num_classes": args.num_classes or pipe.num_classes, "dtype": args.dtype,
           "seeding": "per image" if pipe.family.row_independent_seeds else "per batch"}
    if not pipe.family.row_independent_seeds:
        out["batch_size"] = args.batch_size  # a MAR image depends on its batch
    return out


def check_manifest(out: Path, manifest: dict, force: bool) -> None:
    """Write ``manifest.json`` on the first run; refuse a different one (unless ``force``)."""
    old = read_manifest(out)
    if old is not None:
        diff = differences(old, manifest)
        if diff and not force:
            raise ValueError(f"{out} holds samples of another run ({diff}); use a new --out, or --force to mix them")
        if not diff:
            return
    elif any(out.glob("*.png")) and not force:
        raise ValueError(f"{out} already holds PNGs but no manifest.json: it was not made by this script; "
                         f"use a new --out, or --force")
    write_manifest(out, manifest)


def contiguous_batches(indices: list[int], size: int):
    """Runs of consecutive indices, at most ``size`` long (gaps come from files that already exist)."""
    batch: list[int] = []
    for i in indices:
        if batch and (i != batch[-1] + 1 or len(batch) == size):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def generate_indices(pipe, sampler: str, indices: list[int], labels: list[int], args, out: Path,
                     **options) -> list[dict]:
    """Sample, decode and save ``indices``; one stats record per batch.

    A batch is a run of consecutive indices starting at ``i0``: ``Pipeline.generate(...,
    seed=row_seed(seed, i0), per_row_seeds=True)`` gives its row ``j`` the generator seeded with
    ``row_seed(seed, i0 + j)``, i.e. every image gets the seed of its own global index.

    Pipelines whose samplers draw from one generator per call (``row_independent_seeds = False``:
    MAR) would have to run row by row for that; they run whole batches seeded with ``row_seed(seed,
    i0)`` instead, so an image depends on its batch (same files only for the same batch boundaries).
    """
    per_row = pipe.family.row_independent_seeds
    records = []
    for chunk in contiguous_batches(indices, args.batch_size):
        t0 = time.perf_counter()
        result = pipe.generate([labels[i] for i in chunk], sampler=sampler, seed=row_seed(args.seed, chunk[0]),
                               per_row_seeds=per_row, **options)
        for i, img in zip(chunk, result.images):
            save_png(img, png_path(out, i))
        s = result.stats
        acc = torch.stack([a.float().cpu() for a in s.accepted]) if s.accepted else torch.zeros(0, len(chunk))
        records.append({"rows": len(chunk), "forward_passes": s.forward_passes,
                        "draft_forward_passes": s.draft_forward_passes,
                        "tokens_per_row": float(s.tokens.float().mean()) if s.tokens is not None else None,
                        "tokens_per_forward": s.tokens_per_forward, "mean_accepted": s.mean_accepted,
                        "sampler_seconds": s.seconds, "seconds": time.perf_counter() - t0,
                        "peak_memory_bytes": s.peak_memory_bytes,
                        "kv_cache_bytes": s.kv_cache_bytes or 0,  # None: the sampler keeps no K/V cache (MAR)
                        # CSpD's draft counts (the token loop's acceptance is not aggregated here)
                        "drafted": s.cspd.drafted if s.cspd is not None else 0,
                        "accepted_drafts": s.cspd.accepted_drafts if s.cspd is not None else 0,
                        "accepted_sum": acc.sum(1).tolist(), "accepted_rows": (acc > 0).sum(1).tolist()})
    return records


def accepted_curve(records: list[dict]) -> list[float]:
    """Mean tokens committed at decoding step k (over rows still generating), for every k."""
    steps = max((len(r["accepted_sum"]) for r in records), default=0)
    total, rows = [0.0] * steps, [0] * steps
    for r in records:
        for k, (a, n) in enumerate(zip(r["accepted_sum"], r["accepted_rows"])):
            total[k] += a
            rows[k] += n
    return [round(t / n, 4) if n else 0.0 for t, n in zip(total, rows)]


def summarize(per_process: list[dict]) -> dict:
    """Totals over processes; rates weighted by rows (each image of a batch shares its passes)."""
    records = [r for p in per_process for r in p["batches"]]
    images = sum(r["rows"] for r in records)
    out = {"processes": len(per_process), "images_generated": images,
           "images_skipped_existing": sum(p["skipped"] for p in per_process),
           "wall_seconds": round(max(p["wall_seconds"] for p in per_process), 3)}
    if images:
        w = lambda key: sum(r[key] * r["rows"] for r in records) / images  # noqa: E731

        def wn(key, digits):  # None (not measured, or meaningless for the family) stays None
            if any(r[key] is None for r in records):
                return None
            return round(w(key), digits)

        peaks = [r["peak_memory_bytes"] for r in records if r["peak_memory_bytes"] is not None]
        out.update({
            "forward_passes_per_image": round(w("forward_passes"), 3),
            "draft_forward_passes_per_image": round(w("draft_forward_passes"), 3),
            "tokens_per_forward": wn("tokens_per_forward", 4),
            "mean_accepted": wn("mean_accepted", 4),
            "sampler_seconds_per_image": round(sum(r["sampler_seconds"] for r in records) / images, 5),
            "images_per_second": round(images / max(1e-9, out["wall_seconds"]), 3),
            "peak_memory_bytes": max(peaks) if peaks else None,  # None: not measured (CPU)
            "kv_cache_bytes_per_image": max(r.get("kv_cache_bytes", 0) // r["rows"] for r in records),
            "draft_acceptance_rate": (round(sum(r.get("accepted_drafts", 0) for r in records)
                                            / sum(r.get("drafted", 0) for r in records), 4)
                                      if sum(r.get("drafted", 0) for r in records) else None),
            "accepted_per_step": accepted_curve(records),
        })
    out["per_process"] = [{k: v for k, v in p.items() if k != "batches"} for p in per_process]
    return out


def warn_single_cpu_launch() -> None:
    """`accelerate launch --cpu --num_processes N` without mpirun starts one process: say so."""
    env = os.environ
    if (env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_PORT" in env
            and not any(k in env for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))):
        print("note: `accelerate launch --cpu --num_processes N` starts a single process unless run through mpirun; "
              "for N CPU processes use `accelerate launch --multi_gpu --num_processes N eval/sample.py --cpu ...` "
              "(torchrun, gloo)", file=sys.stderr)


def run(argv=None) -> int:
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from vargen.runtime import configure_threads
    from vargen.samplers.spec import SamplerSpec

    args = parse_args(argv)
    configure_threads(args.threads)
    warn_single_cpu_launch()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    state = PartialState(cpu=args.cpu or not torch.cuda.is_available())
    t_start = time.perf_counter()
    pipe = load_pipeline(args, state.device)
    check_args(args, pipe)
    spec = SamplerSpec.parse(args.sampler or pipe.baseline_sampler)
    name, options = spec.name, dict(spec.options, **({"model": spec.member} if spec.member else {}))
    # unknown samplers, options and member models fail here, before any work
    pipe.check_sampler(name, spec.member, **spec.options)
    overrides = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "cfg_scale") if getattr(args, k) is not None}
    config, _ = pipe.split_options(overrides)
    num_classes = args.num_classes or pipe.num_classes
    labels = labels_for(args.num_samples, num_classes)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        check_manifest(out, manifest_for(args, pipe, spec, overrides), args.force)
    state.wait_for_everyone()

    with state.split_between_processes(list(range(args.num_samples))) as mine:
        todo = [i for i in mine if not png_path(out, i).is_file()]
        records = generate_indices(pipe, name, todo, labels, args, out, **overrides, **options)
    mine_summary = {"process": state.process_index, "device": str(state.device), "assigned": len(mine),
                    "skipped": len(mine) - len(todo), "wall_seconds": time.perf_counter() - t_start,
                    "batches": records}
    gathered = gather_object([mine_summary])
    state.wait_for_everyone()
    if state.is_main_process:
        path = Path(args.summary) if args.summary else out / "summary.json"
        earlier = json.loads(path.read_text()).get("runs", []) if path.is_file() else []
        runs = earlier + [sorted(gathered, key=lambda p: p["process"])]
        summary = {"model": args.model, "sampler": str(spec), "config": {k: v for k, v in vars(config).items()},
                   "num_samples": args.num_samples, "num_classes": num_classes, "seed": args.seed,
                   "batch_size": args.batch_size, "command": " ".join(sys.argv),
                   "seeding": "per image" if pipe.family.row_independent_seeds else "per batch",
                   "machine": f"{platform.node()} {platform.machine()}, torch {torch.__version__}",
                   "images_in_folder": sum(1 for _ in out.glob("[0-9]*.png")),
                   **summarize([p for r in runs for p in r]), "runs": runs}
        path.write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: v for k, v in summary.items() if k not in ("per_process", "accepted_per_step", "runs")},
                         indent=2))
    state.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # tear the process group down before the interpreter exits: gloo's threads otherwise abort
        # the main process ("terminate called without an active exception")
        torch.distributed.destroy_process_group()
    return 0


def main(argv=None) -> int:
    try:
        return run(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
