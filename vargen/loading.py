"""Loading pipelines: a shipped demo name, an official name, a folder with ``pipeline.json``, or a transformers image
LM folder / hub id. Each family module builds its own parts (:mod:`vargen.families`)."""
from __future__ import annotations

import difflib
import importlib
from dataclasses import replace
from pathlib import Path

import torch

from . import zoo
from .families import FAMILIES
from .pipeline import Pipeline
from .samplers.base import SamplingConfig

__all__ = ["load", "load_pipeline_folder"]

_SPEC_KEYS = {"kind", "model", "tokenizer", "draft", "refiner", "defaults", "class_names", "sampler_options",
              "benchmark", "scenes", "model_options"}


def load_pipeline_folder(folder: Path, dtype: torch.dtype = torch.float32, device="cpu"):
    """A folder with ``pipeline.json`` naming its model, tokenizer and companions (paths relative to the
    folder's parent, as in the zoo)."""
    path = Path(folder) / "pipeline.json"
    spec = zoo.read_json(path)
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; a pipeline.json takes {sorted(_SPEC_KEYS)}")
    kind = spec.get("kind")
    if kind not in FAMILIES:
        raise ValueError(f"{path}: kind {kind!r} is not a known family ({', '.join(FAMILIES)})")
    family = FAMILIES[kind]
    if spec.get("model_options") and not family.model_options:
        takers = [k for k, f in FAMILIES.items() if f.model_options]
        raise ValueError(f"{path}: 'model_options' (adapter options such as a grid) apply to transformers image LMs "
                         f"({', '.join(takers)}), not to {kind}")
    for key in ("model",) if family.own_tokenizer else ("model", "tokenizer"):
        if not spec.get(key):
            raise ValueError(f"{path}: {key!r} is missing")
    if family.own_tokenizer and spec.get("tokenizer"):
        raise ValueError(f"{path}: a {kind} model decodes with its own VQ; drop 'tokenizer'")
    root = Path(folder).parent

    def resolve(name):
        p = Path(name)
        return p if p.is_absolute() else root / name

    model, tokenizer, companions = family.build(spec, resolve, dtype)
    try:  # over the model's own (a transformers image LM's official) defaults
        defaults = replace(getattr(model, "default_sampling", None) or SamplingConfig(), **spec.get("defaults", {}))
    except TypeError as err:
        raise ValueError(f"{path}: bad defaults: {err}") from None
    pipe = Pipeline(family, model, tokenizer, defaults, spec.get("class_names"), Path(folder).name, companions,
                    spec.get("sampler_options"), spec.get("benchmark", ()), spec.get("scenes"))
    return pipe.to(device)


def load(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         checkpoint: str | None = None, tokenizer_checkpoint: str | None = None, trusted: bool = False):
    """A pipeline from a shipped demo name, an official name, a local folder with ``pipeline.json``, or a
    transformers image LM (a ``save_pretrained`` folder, or a hub id such as ``deepseek-community/Janus-Pro-1B``).

    ``trusted=True`` allows official ``.pt`` files that are more than tensors to be unpickled fully (they
    can run code; see :mod:`vargen.models.checkpoint`). The first call also picks torch's CPU threads for
    this process (``vargen.runtime.ensure_threads``)."""
    from .runtime import check_device, ensure_threads

    ensure_threads()
    device = check_device(device)
    name = str(name_or_path)
    shipped = zoo.shipped_path(name)
    if shipped is not None and (shipped / "pipeline.json").is_file():
        return load_pipeline_folder(shipped, dtype, device)
    if name in zoo.OFFICIAL:
        spec = zoo.OFFICIAL[name]
        load_official = importlib.import_module(f"vargen.families.{spec['kind']}").load_official
        model, tokenizer, defaults = load_official({**spec, "name": name}, dtype, checkpoint, tokenizer_checkpoint,
                                                   trusted)
        return Pipeline(spec["kind"], model, tokenizer, defaults, None, name).to(device)
    path = Path(name)
    if path.is_dir() and (path / "pipeline.json").is_file():
        return load_pipeline_folder(path, dtype, device)
    from .models.hf.folders import hub_folder, is_hf_folder, is_hub_id  # no transformers import until needed

    if is_hf_folder(path) or (not path.exists() and is_hub_id(name)):
        given = [k for k, v in (("checkpoint", checkpoint), ("tokenizer_checkpoint", tokenizer_checkpoint)) if v]
        if given:
            raise ValueError(f"{', '.join(given)} apply to official names; a transformers folder loads its own "
                             "safetensors weights")
        from .families.hf import load_folder

        folder = path if path.is_dir() else hub_folder(name)
        model, decoder, companions = load_folder(folder, dtype, trusted)
        return Pipeline(model.family, model, decoder, model.default_sampling, None, Path(folder).name,
                        companions).to(device)
    known = [n for n in zoo.shipped_names() if zoo.pipeline_kind(n)] + sorted(zoo.OFFICIAL)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.8)
    raise ValueError(
        f"unknown model {name!r}{'; closest: ' + ', '.join(close) if close else ''}: not a shipped demo ({', '.join(n for n in zoo.shipped_names() if zoo.pipeline_kind(n)) or 'none'}), "
        f"not an official name ({', '.join(sorted(zoo.OFFICIAL))}), not a folder with pipeline.json and not a "
        f"transformers folder or hub id of an adapted image LM (Janus, Emu3, Chameleon: Lumina-mGPT / Anole)"
    )
