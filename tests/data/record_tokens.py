"""Record (or check) the tokens every shipped pipeline gives with every applicable sampler at fixed seeds.

    python tests/data/record_tokens.py            # writes tests/data/pipeline_tokens.safetensors
    python tests/data/record_tokens.py --check    # compares against it (what tests/test_token_regression.py does)

The recording was made at commit 7842a7b (before the decode layer of "Decode plans"), so a refactor of the models'
attention, caches or pipelines that changes a single token fails the check. Cases: ``CASES`` below (shipped demos
and tiny random transformers image LMs; eager, and compiled for the token samplers named in ``COMPILED``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
RECORD = HERE / "pipeline_tokens.safetensors"

# (pipeline, sampler spec): every applicable sampler with the pipeline's defaults, and the option variants that take
# other code paths (trees, K/V eviction, temporal drafts, pruning, budgets)
CASES = {
    "cifar10-llamagen": ["ar", "sjd", "sjd:window=16,coupled=true", "sjd-pac", "sjd:init=vertical,window=8",
                         "gsd:window=8", "sd", "sd:tree_width=4", "lantern", "lantern++", "zipar:window=4",
                         "ar:kv_budget=96", "sjd:window=8,kv_budget=96", "sjd-pac:acceptance=longest"],
    "bouncing-cosmos": ["ar", "sjd:window=16,init=temporal,coupled=true", "sjd-pac:init=temporal", "gsd:window=8"],
    "cifar10-var": ["var", "code", "var:model=refiner", "var:prune_scales=2,prune_ratio=0.5,prune_from_layer=1",
                    "var:kv_budget=48,kv_policy=hack"],
    "cifar10-mar": ["mar", "cspd", "mar:diffusion_end=5"],
    "random-tiny-janus": ["ar", "sjd:window=8,coupled=true", "sjd-pac:window=8", "gsd:window=8"],
    "random-tiny-emu3": ["ar", "sjd:window=8,coupled=true", "sjd:window=8,acceptance=lantern,k=8"],
    "random-tiny-lumina": ["ar", "sjd:window=8,coupled=true"],
}
COMPILED = {
    "cifar10-llamagen": ["ar", "sjd:window=16,coupled=true", "sjd-pac"],
    "bouncing-cosmos": ["sjd:window=16,init=temporal,coupled=true"],
    "random-tiny-emu3": ["sjd:window=8,coupled=true"],
}
CONDITIONS = {"cifar10-llamagen": [0, 7], "bouncing-cosmos": [3], "cifar10-var": [1, 8], "cifar10-mar": [2]}


def tiny_pipeline(name: str):
    from vargen.models.hf.random import random_tiny
    from vargen.pipeline import Pipeline

    lm, prompt = random_tiny(name, num_tokens=64, codes=64)
    codebook = SimpleNamespace(codebook=lm.codebook)  # no VQ decoder: tokens only; GSD / LANTERN read the codebook
    return Pipeline(lm.family, lm, codebook, lm.default_sampling, None, name), [prompt, prompt[:-3] + prompt[-2:]]


def run_case(name: str, spec: str, compiled: bool) -> torch.Tensor:
    import vargen

    config = {}
    if name.startswith("random-tiny"):
        pipe, cond = tiny_pipeline(name)
        config = {"top_k": 16}  # the official defaults' top-k (Emu3: 2048) exceed the tiny vocabulary
    else:
        pipe, cond = vargen.load(name), CONDITIONS[name]
    out = pipe.generate(cond, sampler=spec, seed=11, per_row_seeds=True, decode=False, compile=compiled, **config)
    return out.tokens.detach().cpu().contiguous()


def keys():
    for name, specs in CASES.items():
        for spec in specs:
            yield name, spec, False
    for name, specs in COMPILED.items():
        for spec in specs:
            yield name, spec, True


def key_of(name: str, spec: str, compiled: bool) -> str:
    return f"{name}|{spec}|{'compiled' if compiled else 'eager'}"


def main(argv=None) -> int:
    from safetensors.torch import load_file, save_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the recording instead of writing it")
    ap.add_argument("--only", default=None, help="only cases whose key contains this text")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    record = load_file(RECORD) if args.check else {}
    out, bad = {}, []
    for name, spec, compiled in keys():
        key = key_of(name, spec, compiled)
        if args.only and args.only not in key:
            continue
        tokens = run_case(name, spec, compiled)
        out[key] = tokens
        if args.check:
            same = key in record and torch.equal(record[key], tokens)
            print(("same     " if same else "DIFFERENT"), key, flush=True)
            bad += [] if same else [key]
        else:
            print("recorded", key, tuple(tokens.shape), flush=True)
    if not args.check:
        save_file(out, RECORD)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
