"""``vargen generate | bench | train ...`` command line."""
from __future__ import annotations

import argparse
import json
import sys


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train tokenizers, AR models and draft heads (the demo zoo)")
    tsub = p.add_subparsers(dest="what", required=True)

    vq = tsub.add_parser("vq", help="LlamaGen VQ tokenizer")
    vq.add_argument("--data", required=True, help=".tar.gz with split/class/*.jpg, or a folder of class/*.jpg")
    vq.add_argument("--out", required=True)
    vq.add_argument("--steps", type=int, default=4000)
    vq.add_argument("--batch-size", type=int, default=64)
    vq.add_argument("--lr", type=float, default=2e-4)
    vq.add_argument("--warmup", type=int, default=200)
    vq.add_argument("--ema", type=float, default=0.0)
    vq.add_argument("--seed", type=int, default=0)
    vq.add_argument("--image-size", type=int, default=32)
    vq.add_argument("--save-every", type=int, default=500)
    vq.add_argument("--threads", type=int, default=0)
    vq.add_argument("--config", default="{}", help="VQConfig fields as JSON")

    gpt = tsub.add_parser("gpt", help="class-conditional LlamaGen GPT over a trained VQ tokenizer's tokens")
    gpt.add_argument("--data", required=True)
    gpt.add_argument("--vq", required=True, help="folder with the tokenizer's model.safetensors + config.json")
    gpt.add_argument("--out", required=True)
    gpt.add_argument("--steps", type=int, default=5000)
    gpt.add_argument("--batch-size", type=int, default=64)
    gpt.add_argument("--lr", type=float, default=1e-3)
    gpt.add_argument("--weight-decay", type=float, default=0.05)
    gpt.add_argument("--warmup", type=int, default=200)
    gpt.add_argument("--ema", type=float, default=0.0)
    gpt.add_argument("--seed", type=int, default=0)
    gpt.add_argument("--save-every", type=int, default=500)
    gpt.add_argument("--threads", type=int, default=0)
    gpt.add_argument("--config", default="{}", help="GPTConfig fields as JSON (or a preset name under 'preset')")


def _run_train(args) -> int:
    if args.what == "vq":
        from .train.vq import VQTrainArgs, train_vq

        kw = {k: v for k, v in vars(args).items() if k not in ("command", "what")}
        kw["config"] = json.loads(args.config)
        path = train_vq(VQTrainArgs(**kw))
    else:
        from .train.gpt import GPTTrainArgs, train_gpt

        kw = {k: v for k, v in vars(args).items() if k not in ("command", "what")}
        kw["config"] = json.loads(args.config)
        path = train_gpt(GPTTrainArgs(**kw))
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vargen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    args = parser.parse_args(argv)
    if args.command == "train":
        return _run_train(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
