"""Named models: the small demo models shipped in this folder, and official checkpoints by name.

A shipped entry is a folder ``vargen/zoo/<name>/`` holding ``model.safetensors`` (fp16), ``config.json``
and ``TRAINING.md`` (the exact command that trained it). A pipeline entry ``pipeline.json`` names the
model, its tokenizer and the sampling defaults.

Official checkpoints are downloaded through ``huggingface_hub`` when a network exists; a local file
is always accepted (``vargen.load(name, checkpoint=..., tokenizer_checkpoint=...)``). Offline, the
error names the file and where to get it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent

# Official LlamaGen class-conditional checkpoints (research/llamagen.md §3); sampling defaults of
# the official demo (cfg 4.0, top-k 2000).
_LLAMAGEN_HUB = "FoundationVision/LlamaGen"
OFFICIAL: dict[str, dict] = {}
for _size, _res in [("B", 256), ("B", 384), ("L", 256), ("L", 384), ("XL", 384), ("XXL", 384), ("3B", 384)]:
    OFFICIAL[f"llamagen-c2i-{_size}-{_res}"] = {
        "kind": "llamagen",
        "gpt": {"preset": f"GPT-{_size}", "block_size": (_res // 16) ** 2, "num_classes": 1000, "vocab_size": 16384},
        "checkpoint": {"repo": _LLAMAGEN_HUB, "file": f"c2i_{_size}_{_res}.pt"},
        "vq": {"preset": "VQ-16", "codebook_size": 16384, "codebook_embed_dim": 8},
        "tokenizer_checkpoint": {"repo": _LLAMAGEN_HUB, "file": "vq_ds16_c2i.pt"},
        "defaults": {"cfg_scale": 4.0, "top_k": 2000, "top_p": 1.0, "temperature": 1.0},
    }


# Official Cosmos-1.0 Autoregressive base models (video continuation) with the DV8x16x16 tokenizer, and the sampling
# of the official inference commands (temperature 1, top-p 0.8 for 4B and 0.9 for 12B). The tokenizer ships as
# TorchScript (encoder.jit / decoder.jit), whose state dicts vargen reads only when trusted (loading runs its code).
_DV_HUB = "nvidia/Cosmos-1.0-Tokenizer-DV8x16x16"
for _size, _top_p in [("4B", 0.8), ("12B", 0.9)]:
    OFFICIAL[f"Cosmos-1.0-Autoregressive-{_size}"] = {
        "kind": "cosmos",
        "checkpoint": {"repo": f"nvidia/Cosmos-1.0-Autoregressive-{_size}", "file": "model.pt"},
        "tokenizer_checkpoint": {"repo": _DV_HUB, "file": "encoder.jit"},
        "decoder_checkpoint": {"repo": _DV_HUB, "file": "decoder.jit"},
        "context_frames": 2,  # the official video input: 9 frames, i.e. 2 latent frames of context
        "defaults": {"temperature": 1.0, "top_p": _top_p},
    }


def shipped_names() -> list[str]:
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "pipeline.json").is_file() or (p / "config.json").is_file())


def available() -> list[str]:
    return shipped_names() + sorted(OFFICIAL)


def pipeline_kind(name: str) -> str | None:
    """The ``kind`` of a shipped pipeline (``llamagen``, ``var``, ``mar``); None for other entries."""
    path = ZOO_DIR / name / "pipeline.json"
    return read_json(path).get("kind") if path.is_file() else None


def shipped_path(name: str) -> Path | None:
    path = ZOO_DIR / name
    return path if path.is_dir() else None


def fetch(spec: dict, local: str | os.PathLike | None = None) -> Path:
    """A checkpoint file: the user's local path, the hub cache, or a download when a network exists."""
    if local is not None:
        local = Path(local)
        if local.is_dir():
            raise IsADirectoryError(f"checkpoint {local} is a folder; give the checkpoint file in it")
        if not local.is_file():
            raise FileNotFoundError(f"checkpoint not found: {local}")
        return local
    url = f"https://huggingface.co/{spec['repo']}/resolve/main/{spec['file']}"
    from huggingface_hub import hf_hub_download

    return from_hub(lambda **kw: hf_hub_download(spec["repo"], spec["file"], **kw), spec["file"],
                    f"Download it from {url} and pass its path (checkpoint=... / tokenizer_checkpoint=..., or "
                    f"--checkpoint on the CLI).")


def from_hub(download, what: str, how: str) -> Path:
    """``download(local_files_only=...)`` (a huggingface_hub call): the hub cache first, no network needed, then
    the hub where a network exists; offline or refused, ``FileNotFoundError`` naming ``what`` and ``how`` to get
    it by hand."""
    try:
        return Path(download(local_files_only=True))
    except Exception:  # not cached
        pass
    try:
        if not _hub_reachable():
            raise ConnectionError("no network")
        return Path(download(local_files_only=False))
    except Exception as err:  # offline, or the hub refused
        raise FileNotFoundError(f"could not get {what} ({type(err).__name__}). {how}") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick DNS + TCP check, so that offline users get the error at once instead of retries."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def read_json(path: Path) -> dict:
    """A JSON file; a malformed one is a ``ValueError`` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


# config.json "type" -> the class whose from_folder loads it
FOLDER_TYPES = {
    "llamagen_gpt": "vargen.models.llamagen:GPT",
    "llamagen_vq": "vargen.tokenizers.llamagen_vq:VQModel",
    "llamagen_draft_head": "vargen.models.draft_head:DraftHead",
    "var_vqvae": "vargen.tokenizers.msvq:MultiScaleVQVAE",
    "var": "vargen.models.var:VAR",
    "kl_vae": "vargen.tokenizers.kl:KLVAE",
    "mar": "vargen.models.mar:MAR",
    "cosmos_dv": "vargen.tokenizers.cosmos_dv:DiscreteVideoTokenizer",
    "cosmos_ar": "vargen.models.cosmos:CosmosTransformer",
}
TOKENIZER_TYPES = ("llamagen_vq", "var_vqvae", "kl_vae")


def folder_class(folder, expected: tuple[str, ...] | None = None):
    """The class of a model folder (by its ``config.json`` type), checked against ``expected`` types."""
    import importlib

    from ..models.checkpoint import read_folder_config

    kind = read_folder_config(folder, expected or tuple(FOLDER_TYPES))["type"]
    module, name = FOLDER_TYPES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_folder(folder, expected: tuple[str, ...] | None = None, **kwargs):
    """A model or tokenizer folder (``config.json`` + ``model.safetensors``) by its type: ``Class.from_folder``."""
    return folder_class(folder, expected).from_folder(folder, **kwargs)
