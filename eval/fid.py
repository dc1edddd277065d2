"""``python eval/fid.py ...``: the same as ``vargen fid ...`` (see vargen/eval/cli.py for the options).

    python eval/fid.py SAMPLES REFERENCE --features inception --mode clean
    python eval/fid.py samples/ cifar10-train --features cifar10-features --mode clean
    python eval/fid.py --make-stats cifar10-test --features cifar10-features --mode clean --out ref.npz
    python eval/fid.py --export-npz samples/ --out samples.npz
"""
from __future__ import annotations

import argparse
import sys

from vargen.eval.cli import __doc__ as CLI_DOC
from vargen.eval.cli import add_arguments, run_cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="eval/fid.py", description=CLI_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
