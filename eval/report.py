"""The benchmark report over the demo models (the repository entry point of ``vargen.eval.report``).

    python eval/report.py --models cifar10-llamagen cifar10-var cifar10-mar --num-samples 5000 --out docs/benchmarks.md
    python eval/report.py --help
"""
import sys

from vargen.eval.report import main

if __name__ == "__main__":
    sys.exit(main())
