"""``vargen train ...``: one subcommand per trainer, its flags generated from the trainer's arguments dataclass.

A flag is ``--field-name`` for every field (required when the field has no default), typed by the field's
annotation, with the help text of :data:`HELP` (fields of the same name mean the same in every trainer)
or the field's own ``metadata["help"]``. ``config`` fields take JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import typing
from pathlib import Path

HELP = {
    "data": ".tar.gz with split/class/*.jpg, or a folder of class/*.jpg",
    "out": "run folder: last.pt (resumable checkpoint, resumed automatically) and the fp16 export (model.safetensors "
           "+ config.json); default $VARGEN_RUNS or ~/.cache/vargen-runs/<command>-<hash of the flags>",
    "steps": "optimisation steps (the length of the learning-rate schedule)",
    "batch_size": "images (or sequences) per step",
    "lr": "peak learning rate (after the warm-up)",
    "warmup": "linear warm-up steps",
    "warmup_frac": "fraction of the run spent in the linear warm-up",
    "weight_decay": "AdamW weight decay (weight matrices only)",
    "ema": "EMA decay of the exported weights (0: export the raw weights)",
    "seed": "seed of the initialisation and of the data order",
    "save_every": "write the resumable checkpoint every N steps",
    "stop_at": "end this run after this step (resumable; the schedule keeps its length)",
    "threads": "torch CPU threads (0: automatic from the free cores)",
    "image_size": "image side in pixels",
    "config": "model constructor fields as JSON, e.g. '{\"dim\": 128}'",
    "vq": "folder of the trained VQ tokenizer (model.safetensors + config.json)",
    "vqvae": "folder of the trained multi-scale VQVAE",
    "vae": "folder of the trained KL VAE",
    "model": "the target: a pipeline name (e.g. cifar10-llamagen) or a GPT folder",
    "teacher": "folder of the model to distil from (CoDe's drafter)",
    "init": "folder of the model to start from (without it: a fresh one from --config); for tokenizers every "
            "tensor of the same name and shape is copied (a LlamaGen VQ folder also starts a multi-scale VQVAE)",
    "draft_steps": "CoDe: distil on scales >= this one (0: all scales)",
    "temperature": "distillation temperature T",
    "alpha": "alpha * KD + (1 - alpha) * CE",
    "restart_every": "every N steps re-seed unused codes with encoder latents (0: never)",
    "kl_weight": "weight of KL(q || N(0, I)) against the L1 reconstruction",
    "tokens": ".pt with tokens [N, L] and labels [N] (default: self-distillation samples of the target)",
    "samples": "self-distillation sequences sampled from the target",
    "grad_accum": "micro-batches per optimisation step",
    "feature_noise": "width of the uniform noise on the input features (EAGLE)",
    "ce_weight": "weight of the cross-entropy term against the feature regression",
    "cfg_dropout": "fraction of sequences trained on the unconditional (null-condition) features",
    "clip_value": "gradient value clipping",
    "device": "torch device",
    "export": "also write the export here (e.g. vargen/zoo/cifar10-features)",
    "epochs": "passes over the training set",
    "momentum": "SGD Nesterov momentum",
    "label_smoothing": "cross-entropy label smoothing",
    "tokenizer": "the DV tokenizer: a zoo name or a folder (model.safetensors + config.json)",
    "clips": "procedural clips encoded once (cached in OUT/tokens.pt) as the training set",
    "limit": "use only the first N training images (0: all; smoke tests)",
    "test_limit": "evaluate on the first N test images (0: all)",
}


def _trainers():
    from .cosmos import CosmosTrainArgs, DVTrainArgs, train_cosmos, train_dv
    from .draft_head import DraftHeadTrainArgs, train_draft_head
    from .features import FeatureTrainArgs, train_features
    from .gpt import GPTTrainArgs, train_gpt
    from .mar import MARRunArgs, run_mar_training
    from .var import VARRunArgs, run_var_training
    from .vq import VQTrainArgs, train_vq

    var_common = ("data", "out", "steps", "batch_size", "lr", "warmup", "seed", "image_size", "save_every", "stop_at",
                  "threads", "config")
    return {  # name: (args class, runner, help, fixed fields, fields shown (None: all), default overrides)
        "vq": (VQTrainArgs, train_vq, "LlamaGen VQ tokenizer", {}, None, {}),
        "gpt": (GPTTrainArgs, train_gpt, "class-conditional LlamaGen GPT over a trained VQ tokenizer's tokens", {}, None, {}),
        "draft-head": (DraftHeadTrainArgs, train_draft_head, "EAGLE-style draft head for speculative decoding (LANTERN)",
                       {}, None, {}),
        "features": (FeatureTrainArgs, train_features, "small CIFAR-10 feature network for FID/KID/PR/IS", {}, None, {}),
        "var-vqvae": (VARRunArgs, run_var_training, "VAR's multi-scale VQVAE", {"kind": "vqvae"},
                      var_common + ("restart_every", "init"), dict(steps=2000, lr=3e-4, batch_size=32)),
        "var": (VARRunArgs, run_var_training, "class-conditional VAR over a trained multi-scale VQVAE's tokens",
                {"kind": "var"}, var_common + ("vqvae", "init"), dict(steps=2000, lr=1e-3, batch_size=64)),
        "code-refiner": (VARRunArgs, run_var_training, "CoDe refiner specialisation: distil a drafter on the late scales",
                         {"kind": "code-refiner"}, var_common + ("vqvae", "teacher", "init", "draft_steps", "temperature",
                                                                 "alpha"), dict(steps=500, lr=3e-4, batch_size=64)),
        "kl-vae": (MARRunArgs, run_mar_training, "MAR's KL VAE (L1 + KL; no LPIPS/GAN offline)", {"kind": "kl-vae"},
                   ("data", "out", "init", "steps", "batch_size", "lr", "warmup", "kl_weight", "seed", "image_size",
                    "save_every", "stop_at", "threads", "config"), dict(steps=2000, lr=3e-4, batch_size=32)),
        "mar": (MARRunArgs, run_mar_training, "class-conditional MAR over a trained KL VAE's latents", {"kind": "mar"},
                ("data", "out", "vae", "init", "steps", "batch_size", "lr", "warmup", "ema", "seed", "image_size",
                 "save_every", "stop_at", "threads", "config"), dict(steps=2000, lr=8e-4, batch_size=64)),
        "cosmos-dv": (DVTrainArgs, train_dv, "Cosmos discrete video tokenizer on procedural bouncing-shape clips", {},
                      None, {}),
        "cosmos": (CosmosTrainArgs, train_cosmos, "Cosmos-architecture video AR transformer over a DV tokenizer's tokens",
                   {}, None, {}),
    }


REQUIRED_PER_COMMAND = {"var": ("vqvae",), "code-refiner": ("vqvae", "teacher"), "mar": ("vae",)}


def _flag_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    return base if base in (int, float, str) else None


def add_dataclass_args(p: argparse.ArgumentParser, cls, include=None, defaults=None, required=()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if include is not None and f.name not in include:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help") or HELP.get(f.name, "")
        default = (defaults or {}).get(f.name, f.default)
        if f.name == "out":  # every run has a folder; without --out one under runs_root() named by its flags
            p.add_argument(flag, default=None, help=help_text)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING or f.name in required:
            p.add_argument(flag, required=True, type=_flag_type(hints[f.name]), help=help_text)
        elif f.name == "config":
            p.add_argument(flag, default="{}", help=help_text)
        elif hints[f.name] is bool:
            p.add_argument(flag, action="store_true", help=help_text)
        else:
            shown = "" if default is None else f" (default {default})"
            p.add_argument(flag, type=_flag_type(hints[f.name]), default=default, help=help_text + shown)


def add_cli(sub) -> None:
    p = sub.add_parser("train", help="train tokenizers, AR models and draft heads (how the demo zoo was made)",
                       description="Training runs of the demo zoo; every run is resumable from OUT/last.pt.")
    tsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    for name, (cls, _, help_text, fixed, include, defaults) in _trainers().items():
        q = tsub.add_parser(name, help=help_text, description=help_text)
        shown = [f.name for f in dataclasses.fields(cls) if f.name not in fixed and (include is None or f.name in include)]
        add_dataclass_args(q, cls, shown, defaults, REQUIRED_PER_COMMAND.get(name, ()))


RUN_ONLY = ("out", "stop_at", "save_every", "threads", "device")  # flags that do not change what a run computes


def default_out(what: str, kw: dict):
    """``runs_root()/<what>-<8 hex digits of the other flags>``: the same command finds (and resumes) its own run;
    another schedule, data or model gets another folder (``--stop-at``, ``--save-every``, ``--threads`` and
    ``--device`` do not count)."""
    import hashlib

    from .common import runs_root

    key = json.dumps({k: v for k, v in sorted(kw.items()) if k not in RUN_ONLY}, sort_keys=True, default=str)
    return runs_root() / f"{what}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def run_cli(args) -> int:
    cls, runner, _, fixed, _, _ = _trainers()[args.what]
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in vars(args).items() if k in names}
    if "config" in kw:
        try:
            kw["config"] = json.loads(kw["config"])
        except json.JSONDecodeError as err:
            raise ValueError(f"--config is not valid JSON: {err}") from None
        if not isinstance(kw["config"], dict):
            raise ValueError("--config must be a JSON object of constructor fields")
    for k, v in kw.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0 and k not in ("seed",):
            raise ValueError(f"--{k.replace('_', '-')} must be >= 0, got {v}")
    if kw.get("out") and Path(kw["out"]).exists() and not Path(kw["out"]).is_dir():
        raise ValueError(f"--out {kw['out']} exists and is not a folder; give a folder for the run")
    command = "vargen " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
    if "out" in names and kw.get("out") is None:
        kw["out"] = str(default_out(args.what, kw))
        print(f"run folder {kw['out']} (no --out given)")
    run_args = cls(**fixed, **kw)
    path = runner(run_args, command) if args.what == "features" else runner(run_args)
    print(f"wrote {path}")
    return 0
