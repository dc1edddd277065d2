"""``vargen generate | bench | train ...`` command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
    vq.add_argument("--stop-at", type=int, help="end this run after this step (resumable; schedule unchanged)")
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
    gpt.add_argument("--stop-at", type=int, help="end this run after this step (resumable; schedule unchanged)")
    gpt.add_argument("--image-size", type=int, default=32)
    gpt.add_argument("--threads", type=int, default=0)
    gpt.add_argument("--config", default="{}", help="GPTConfig fields as JSON (or a preset name under 'preset')")

    from .train.draft_head import add_cli as add_draft_head_cli

    add_draft_head_cli(tsub)

    from .train.features import add_cli as add_features_cli

    add_features_cli(tsub)

    from .train.var import add_cli as add_var_cli

    add_var_cli(tsub)

    from .train.mar import add_cli as add_mar_cli

    add_mar_cli(tsub)


def _run_train(args) -> int:
    if args.what == "features":
        from .train.features import run_cli as run_features

        return run_features(args)
    if args.what in ("var-vqvae", "var", "code-refiner"):
        from .train.var import run_cli as run_var

        return run_var(args)
    if args.what in ("kl-vae", "mar"):
        from .train.mar import run_cli as run_mar

        return run_mar(args)
    if args.what == "draft-head":
        from .train.draft_head import run_cli

        return run_cli(args)
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


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _sampler_options(args) -> dict:
    opts = {}
    for name in ("window", "init", "acceptance"):
        if getattr(args, name, None) is not None:
            opts[name] = getattr(args, name)
    if getattr(args, "coupled", False):
        opts["coupled"] = True
    for item in getattr(args, "opt", None) or []:
        if "=" not in item:
            raise SystemExit(f"--opt expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        opts[k.replace("-", "_")] = parse_value(v)
    return opts


def _config_options(args) -> dict:
    return {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "cfg_scale", "cfg_interval")
            if getattr(args, k, None) is not None}


def _add_sampling_args(p) -> None:
    p.add_argument("--sampler", help="ar | sjd | sd | lantern | gsd (LlamaGen), var | code (VAR), mar | cspd (MAR); "
                                     "default: the model's (sjd, var, mar)")
    p.add_argument("--window", type=int, help="SJD window W (tokens per forward)")
    p.add_argument("--init", help="SJD draft init: random | horizontal | vertical | horizontal_sample | vertical_sample")
    p.add_argument("--coupled", action="store_true", help="MC-SJD coupled drafts")
    p.add_argument("--acceptance", help="acceptance rule (exact, ...)")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="any other sampler option")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--cfg-scale", type=float)
    p.add_argument("--cfg-interval", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate images and print sampling statistics")
    p.add_argument("--model", default="cifar10-llamagen", help="demo zoo name, official name, or folder")
    p.add_argument("--checkpoint", help="local official GPT checkpoint (offline use of official names)")
    p.add_argument("--tokenizer-checkpoint", help="local official VQ checkpoint")
    p.add_argument("--class-id", nargs="+", default=None,
                   help="class ids or names (default: every class once)")
    p.add_argument("--per-class", type=int, default=1, help="images per class id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out", help="folder for the PNGs")
    _add_sampling_args(p)


def _run_generate(args) -> int:
    import time

    import torch

    from .pipeline import image_grid, load

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = load(args.model, device=args.device, checkpoint=args.checkpoint,
                tokenizer_checkpoint=args.tokenizer_checkpoint)
    if args.class_id is None:
        ids = list(range(pipe.num_classes))
    else:
        ids = [pipe.class_id(c) for c in args.class_id]
    ids = [i for i in ids for _ in range(args.per_class)]
    out = pipe.generate(ids, sampler=args.sampler, seed=args.seed, **_config_options(args), **_sampler_options(args))
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    names = pipe.class_names
    for i, (cid, img) in enumerate(zip(ids, out.images)):
        label = names[cid] if names else str(cid)
        img.save(folder / f"{i:04d}_{label}.png")
    cols = args.per_class if args.per_class > 1 else min(10, len(ids))  # one row per class
    image_grid(out.images, cols).save(folder / "grid.png")
    summary = {"model": args.model, "sampler": args.sampler or pipe.default_sampler, "images": len(ids), **out.stats.summary(),
               "total_seconds_with_loading": round(time.perf_counter() - t0, 3)}
    print(json.dumps(summary, indent=2))
    print(f"wrote {len(ids)} images and grid.png to {folder}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="AR vs accelerated samplers: passes, tokens per forward, wall time, speed-up")
    p.add_argument("--model", default="cifar10-llamagen",
                   help="demo zoo name or folder, or 'random-gpt-b' (GPT-B shape, random weights)")
    p.add_argument("--sampler", nargs="+", default=["ar", "sjd:window=16"],
                   help="specs like ar sjd:window=16,init=vertical,coupled=true (the first 'ar' is the baseline)")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=1, help="timed runs (seeds) per entry; times are summed")
    p.add_argument("--quality", action="store_true",
                   help="add the mean NLL of the samples under the model (bits/token), a quality proxy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-tokens", type=int, default=256, help="grid size for random-gpt-b")
    p.add_argument("--out", help="also write the markdown table to this file")
    for name, typ in (("--temperature", float), ("--top-k", int), ("--top-p", float), ("--cfg-scale", float)):
        p.add_argument(name, type=typ)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)


def _run_bench(args) -> int:
    import torch

    from .bench import format_table, machine_line, random_gpt_b, run_bench
    from .samplers.base import SamplingConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = _config_options(args)
    if args.model == "random-gpt-b":
        model = random_gpt_b(args.num_tokens, device=args.device)
        config = SamplingConfig(**{"cfg_scale": 4.0, "top_k": 2000, **overrides})
        make_sampler = None
    else:
        from .pipeline import load

        pipe = load(args.model, device=args.device)
        model = pipe.model
        config, _ = pipe.split_options(overrides)
        make_sampler = pipe.make_sampler
    print(f"model {args.model}; {machine_line()}; config {config}")
    rows = run_bench(model, args.sampler, args.batch, config, seed=args.seed, repeats=args.repeats,
                     quality=args.quality, make_sampler=make_sampler)
    table = format_table(rows)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"model `{args.model}`, {machine_line()}\n\n{table}\n")
    return 0


def _add_measure(sub) -> None:
    p = sub.add_parser("measure", help="quality checks of the demo models on a dataset split")
    msub = p.add_subparsers(dest="what", required=True)
    ps = msub.add_parser("psnr", help="tokenizer reconstruction PSNR (dB) and codebook usage")
    ps.add_argument("--tokenizer", default="cifar10-vq",
                    help="zoo name or folder with model.safetensors + config.json (LlamaGen VQ, VAR VQVAE or KL VAE)")
    nl = msub.add_parser("nll", help="held-out bits per token of a GPT vs a unigram baseline")
    nl.add_argument("--model", default="cifar10-llamagen")
    nl.add_argument("--unigram-every", type=int, default=5,
                    help="fit the unigram baseline on every N-th training image (default 5: 10,000 images)")
    for q in (ps, nl):
        q.add_argument("--data", required=True, help=".tar.gz with split/class/*.jpg, or a folder")
        q.add_argument("--split", default="test")
        q.add_argument("--limit", type=int, help="only the first N images")
        q.add_argument("--threads", type=int, default=0)


def _zoo_or_folder(name: str) -> Path:
    from . import zoo

    path = zoo.shipped_path(name) or Path(name)
    if not (path / "config.json").is_file():
        raise ValueError(f"{name!r} is neither a shipped zoo entry nor a folder with config.json")
    return path


def _run_measure(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "psnr":
        from .train.vq import evaluate_psnr, load_tokenizer_folder

        tok = load_tokenizer_folder(_zoo_or_folder(args.tokenizer))
        result = evaluate_psnr(tok, args.data, args.split, limit=args.limit)
    else:
        from .pipeline import load
        from .train.gpt import nll_bits_per_token, tokenize_split, unigram_bits_per_token

        pipe = load(args.model)
        test_tokens, test_labels = tokenize_split(pipe.tokenizer, args.data, args.split, flips=False)
        train_tokens, _ = tokenize_split(pipe.tokenizer, args.data, "train", flips=False, every=args.unigram_every)
        if args.limit:
            test_tokens, test_labels = test_tokens[: args.limit], test_labels[: args.limit]
        result = {
            "model_bits_per_token": nll_bits_per_token(pipe.model, test_tokens, test_labels),
            "unigram_bits_per_token": unigram_bits_per_token(train_tokens, test_tokens, pipe.model.vocab_size),
            "uniform_bits_per_token": float(torch.tensor(float(pipe.model.vocab_size)).log2()),
            "sequences": int(test_tokens.shape[0]),
            "unigram_fit_images": int(train_tokens.shape[0]),
        }
    print(json.dumps({"split": args.split, **result}, indent=2))
    return 0


_APP_ERROR = ("`vargen app` runs app/app.py from the repository checkout, and this vargen was installed without "
              "it: git clone the repository and run `pip install -e '.[app]'` there")


def _load_app():
    """``app/app.py`` of the repository checkout (the app is not part of the wheel), or ``None``."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "app" / "app.py"
    if not path.is_file():
        return None
    if "vargen_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("vargen_app", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["vargen_app"] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules["vargen_app"]


def _add_app(sub) -> None:
    module = _load_app()
    if module is not None:
        module.add_cli(sub)
    else:
        sub.add_parser("app", help="start the Gradio demo (needs the repository checkout)")


def _run_app(args) -> int:
    module = _load_app()
    if module is None:
        print(f"error: {_APP_ERROR}", file=sys.stderr)
        return 2
    return module.run_cli(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vargen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_bench(sub)
    _add_train(sub)
    _add_measure(sub)
    from .eval.cli import add_cli as add_fid_cli

    add_fid_cli(sub)
    _add_app(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return _run_generate(args)
        if args.command == "bench":
            return _run_bench(args)
        if args.command == "measure":
            return _run_measure(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "train":
        return _run_train(args)
    if args.command == "app":
        return _run_app(args)
    if args.command == "fid":
        from .eval.cli import run_cli as run_fid

        return run_fid(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
