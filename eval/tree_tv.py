"""Sequence TV of tree verification on the enumerable tiny model (tests/helpers.tiny_gpt: vocabulary 6, 2x2 grid):
the recursive rule (exact) against SJD-PAC's official longest-path choice (acceptance=longest).

    python eval/tree_tv.py --samples 100000

The TV is between the empirical law of the samples and the enumerated one, so the exact rule's value is the
sampling noise at this sample count.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import chi_square_pvalue, exact_distribution, tiny_gpt  # noqa: E402

from vargen.samplers import get_sampler  # noqa: E402
from vargen.samplers.base import SamplingConfig  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=100000)
    args = p.parse_args(argv)
    model = tiny_gpt()
    configs = {"plain": SamplingConfig(temperature=1.0), "cfg 2, top-k 3": SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=3)}
    print("| sampling | tree | rule | sequence TV | chi-square p |\n|---|---|---|---|---|")
    for label, config in configs.items():
        exact = exact_distribution(model, 1, config)
        for options in (dict(window=4, tree_width=4, tree_depth=3, coupled=True), dict(window=4, tree_width=3)):
            for rule in ("exact", "longest"):
                g = torch.Generator().manual_seed(7)
                tokens = get_sampler("sjd", acceptance=rule, **options).sample(
                    model, torch.full((args.samples,), 1), config, g).tokens
                counts: dict = {}
                for row in tokens.tolist():
                    counts[tuple(row)] = counts.get(tuple(row), 0) + 1
                tv = 0.5 * sum(abs(counts.get(k, 0) / args.samples - v) for k, v in exact.items())
                tree = ",".join(f"{k}={v}" for k, v in options.items())
                print(f"| {label} | `{tree}` | {rule} | {tv:.4f} | {chi_square_pvalue(tokens, exact):.2g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
