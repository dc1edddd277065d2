"""Generate a class-balanced sample set for FID (the repository entry point of ``vargen.eval.sample``).

    accelerate launch eval/sample.py --model cifar10-llamagen --sampler sjd:window=16 --num-samples 50000 --out DIR
    python eval/sample.py --help
"""
import sys

from vargen.eval.sample import main

if __name__ == "__main__":
    sys.exit(main())
