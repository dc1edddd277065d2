"""``vargen fid``: FID / KID / precision-recall / IS of samples against a reference, statistics, .npz export.

    vargen fid SAMPLES REFERENCE --features inception --mode clean
    vargen fid samples/ cifar10-train --features cifar10-features --mode clean --json out.json
    vargen fid --make-stats cifar10-test --features cifar10-features --mode clean --out ref.npz
    vargen fid --export-npz samples/ --out samples.npz      # ADM evaluator input (arr_0)

SAMPLES / REFERENCE: a folder (recursive; ImageNet-style class folders work), ``cifar10-train`` /
``cifar10-test``, ``archive@split``, an ADM ``.npz`` (images under ``arr_0``) or a statistics ``.npz``.
Every number is printed with its feature network and mode. Inception weights are never downloaded:
pass ``--inception-weights`` or set ``$VARGEN_INCEPTION`` (the error names the file and its URL).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("sources", nargs="*", help="SAMPLES REFERENCE (two sources), or one with --make-stats/--export-npz")
    p.add_argument("--features", default="inception", help="inception | clip | cifar10-features")
    p.add_argument("--mode", choices=["clean", "legacy_tensorflow"],
                   help="clean-fid resize mode, required for scores and statistics (numbers of different modes "
                        "are not comparable)")
    p.add_argument("--inception-weights", help="path of inception-2015-12-05.pt (or the cifar10-features folder)")
    p.add_argument("--device", default="cpu", help="torch device of the feature network (default cpu)")
    p.add_argument("--batch-size", type=int, default=100, help="images per feature batch (default 100)")
    p.add_argument("--image-size", type=int, help="centre-crop + resize folder images to this side (ADM preprocessing)")
    p.add_argument("--cache-dir", help="statistics cache (default ~/.cache/vargen/fid-stats)")
    p.add_argument("--make-stats", action="store_true", help="write the statistics of one source to --out")
    p.add_argument("--export-npz", action="store_true", help="pack one folder of samples into --out (arr_0)")
    p.add_argument("--out", help="output file for --make-stats / --export-npz")
    p.add_argument("--json", help="also write the result as JSON")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: automatic from the free cores)")


def add_cli(subparsers) -> None:
    """``vargen fid ...`` on the main command line."""
    import argparse

    p = subparsers.add_parser("fid", help="FID/KID/precision-recall/IS through clean-fid (explicit mode)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)


def _run(args) -> int:
    import torch

    from . import compute_fid, export_npz, get_extractor
    from .stats import check_source, compute_stats

    from ..runtime import configure_threads

    configure_threads(args.threads)
    for source in args.sources:  # a missing folder is named before any weights are looked for
        check_source(source)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.export_npz:
        out = export_npz(args.sources[0], args.out)
        print(f"wrote {out}")
        return 0
    if args.make_stats:
        ext = get_extractor(args.features, args.mode, args.device, args.inception_weights)
        stats = compute_stats(args.sources[0], ext, args.mode, batch_size=args.batch_size, size=args.image_size)
        stats.save(args.out)
        print(f"wrote {args.out}: {stats.count} images, {ext.label}, mode={args.mode}")
        return 0
    if len(args.sources) != 2:
        raise ValueError("give two sources: SAMPLES REFERENCE")
    result = compute_fid(*args.sources, features=args.features, mode=args.mode, device=args.device,
                         weights=args.inception_weights, cache_dir=args.cache_dir, batch_size=args.batch_size,
                         size=args.image_size)
    if args.json:
        Path(args.json).write_text(json.dumps({**result.to_dict(), "samples": args.sources[0],
                                               "reference": args.sources[1]}, indent=2) + "\n")
    return 0


def run_cli(args) -> int:
    """Run ``vargen fid``; bad input and missing weights print one ``error:`` line and return 2."""
    if (args.make_stats or args.export_npz) and (len(args.sources) != 1 or not args.out):
        print("error: --make-stats / --export-npz take one source and --out", file=sys.stderr)
        return 2
    if args.mode is None and not args.export_npz:
        print("error: --mode is required: clean or legacy_tensorflow (numbers of different modes are not comparable)",
              file=sys.stderr)
        return 2
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
