"""How many tokens each verification step commits, per sampler, at batch 1 (a markdown table).

    python eval/acceptance_lengths.py --model cifar10-llamagen --images 30 --out docs/acceptance_lengths.md \
        --samplers sjd:window=16 sjd:window=16,coupled=true sjd-pac:window=46

Image ``i`` is class ``i % classes`` with seed ``1000 + i`` (one image per call, so every row is a batch-1 run).
"tokens / forward" counts the prefill; the histogram is over the verification steps (the share of steps that
committed 1, 2, 3, ... tokens: a step commits its accepted drafts plus one token).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def measure(pipe, spec: str, images: int) -> dict:
    hist = torch.zeros(pipe.model.num_tokens + 1, dtype=torch.long)
    forwards = tokens = 0
    t0 = time.perf_counter()
    for i in range(images):
        out = pipe.generate([i % pipe.num_classes], sampler=spec, seed=1000 + i, decode=False)
        forwards += out.stats.forward_passes
        tokens += int(out.stats.tokens.sum())
        steps = torch.stack(out.stats.accepted)[1:, 0]  # the prefill's token 0 is not a step
        hist += torch.bincount(steps, minlength=hist.numel())[: hist.numel()]
    return dict(spec=spec, tokens_per_forward=tokens / forwards, forwards=forwards / images, hist=hist,
                seconds=time.perf_counter() - t0)


def table(rows: list[dict], buckets: int = 6) -> str:
    head = [f"{k}" for k in range(1, buckets)] + [f">={buckets}"]
    lines = ["| sampler | tokens / forward | forwards / image | " + " | ".join(f"steps committing {h}" for h in head)
             + " |", "|---|---|---|" + "---|" * len(head)]
    for r in rows:
        h = r["hist"].double()
        share = h / h.sum()
        cells = [f"{float(share[k]):.3f}" for k in range(1, buckets)] + [f"{float(share[buckets:].sum()):.3f}"]
        lines.append(f"| `{r['spec']}` | {r['tokens_per_forward']:.2f} | {r['forwards']:.1f} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar10-llamagen")
    p.add_argument("--images", type=int, default=30)
    p.add_argument("--samplers", nargs="+", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="markdown file (default: print)")
    args = p.parse_args(argv)
    import vargen

    torch.set_num_threads(args.threads)
    pipe = vargen.load(args.model)
    rows = []
    for spec in args.samplers:
        rows.append(measure(pipe, spec, args.images))
        print(f"{spec}: {rows[-1]['tokens_per_forward']:.3f} tokens / forward", file=sys.stderr, flush=True)
    text = (f"Batch 1, {args.images} images of `{args.model}` (image i: class i % {pipe.num_classes}, seed 1000 + i), "
            f"model defaults.\n\nCommand: `python eval/acceptance_lengths.py {' '.join(argv or sys.argv[1:])}`\n\n"
            + table(rows) + "\n")
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
