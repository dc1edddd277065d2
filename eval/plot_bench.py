"""Plot a `vargen bench --out` markdown table: step compression and wall-clock speed-up per sampler.

    python eval/plot_bench.py docs/bench_sjd_cifar10.md --out docs/bench_sjd_cifar10.png
"""
from __future__ import annotations

import argparse
from pathlib import Path


def read_table(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip().strip("`") for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = read_table(args.table)
    batches = sorted({r["batch"] for r in rows}, key=int)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) / len(batches) + 2.5))
    speed = next(k for k in rows[0] if k.lower().startswith("speed-up vs"))  # "speed-up vs ar" (or older "AR")
    for ax, key, title in ((axes[0], "tokens / forward", "step compression (tokens per target forward)"),
                           (axes[1], speed, "wall-clock speed-up vs AR (same run)")):
        labels = [r["sampler"] for r in rows if r["batch"] == batches[0]]
        height = 0.8 / len(batches)
        for j, b in enumerate(batches):
            vals = [float(r[key].rstrip("x")) for r in rows if r["batch"] == b]
            ax.barh([i + j * height for i in range(len(vals))], vals, height=height, label=f"batch {b}")
        ax.set_yticks([i + height * (len(batches) - 1) / 2 for i in range(len(labels))], labels, fontsize=8)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
