"""Loading pipelines: a shipped demo name, an official name, a folder with ``pipeline.json``, or a transformers image
LM folder / hub id. Each family module builds its own parts (:mod:`vargen.families`)."""
from __future__ import annotations

import difflib
import importlib
from dataclasses import fields, replace
from pathlib import Path

import torch

from . import zoo
from .families import FAMILIES
from .models.config import check_fields, describe
from .pipeline import Pipeline
from .samplers import checked_options
from .samplers.base import SamplingConfig
from .samplers.spec import SamplerSpec

__all__ = ["load", "load_pipeline_folder"]

_SPEC_KEYS = {"kind", "model", "tokenizer", "draft", "refiner", "defaults", "class_names", "sampler_options",
              "benchmark", "scenes", "model_options"}


_FOLDER_KEYS = ("model", "tokenizer", "draft", "refiner")


def _must(path, key: str, what: str, value) -> ValueError:
    return ValueError(f"{path}: field {key!r} must be {what}, got {describe(value)}")


def check_pipeline_spec(spec: dict, path) -> None:
    """The declared types of a ``pipeline.json``, checked before anything loads; errors name the file and the field.

    kind, model, tokenizer, draft, refiner, scenes: non-empty strings (folder names; ``scenes`` a source name);
    defaults: an object of :class:`vargen.config.SamplingConfig` fields, typed by its annotations; class_names: a
    non-empty list of non-empty strings (its length is checked against the model, :func:`check_class_names`);
    sampler_options: an object of objects (sampler -> its declared options, typed and
    in range); benchmark: a list of sampler spec strings that parse; model_options: an object."""
    for key in ("kind", *_FOLDER_KEYS, "scenes"):
        value = spec.get(key)
        if value is None:
            continue
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"{path}: field {key!r} must not be empty")
        if not isinstance(value, str):
            what = "a family name (a string)" if key == "kind" else (
                "a scenes source name (a string)" if key == "scenes" else "a string (a folder name)")
            raise _must(path, key, what, value)
    if "defaults" in spec:
        defaults = spec["defaults"]
        if not isinstance(defaults, dict):
            raise _must(path, "defaults", "an object of sampling settings", defaults)
        known = {f.name for f in fields(SamplingConfig)}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise ValueError(f"{path}: field 'defaults' has unknown settings {unknown}; known: {sorted(known)}")
        check_fields(SamplingConfig, defaults, f"{path}: defaults", ranges=False, required=False)
        try:
            SamplingConfig(**defaults).validate()
        except ValueError as err:
            raise ValueError(f"{path}: defaults: {err}") from None
    if "class_names" in spec:
        names = spec["class_names"]
        if not isinstance(names, list) or not names:
            raise _must(path, "class_names", "a non-empty list of strings (one per class)", names)
        bad = next((n for n in names if not isinstance(n, str) or not n.strip()), None)
        if bad is not None:
            raise ValueError(f"{path}: field 'class_names' must hold non-empty strings, got {describe(bad)}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{path}: field 'class_names' repeats {dupes}")
    if "sampler_options" in spec:
        options = spec["sampler_options"]
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            raise _must(path, "sampler_options", "an object of objects (sampler name -> its options)", options)
        for name, given in options.items():
            try:
                checked_options(name, given)
            except ValueError as err:
                raise ValueError(f"{path}: field 'sampler_options': {err}") from None
    if "model_options" in spec and not isinstance(spec["model_options"], dict):
        raise _must(path, "model_options", "an object", spec["model_options"])
    if "benchmark" in spec:
        bench = spec["benchmark"]
        if not isinstance(bench, list) or not all(isinstance(b, str) and b.strip() for b in bench):
            raise _must(path, "benchmark", "a list of sampler specs (strings)", bench)
        for text in bench:
            try:
                SamplerSpec.parse(text)
            except ValueError as err:
                raise ValueError(f"{path}: field 'benchmark': {err}") from None


def check_class_names(names, model, path) -> None:
    """``class_names`` has one name per class of the built model (a class-conditional model's ``num_classes``)."""
    if names is None:
        return
    count = getattr(model, "num_classes", None)
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise ValueError(f"{path}: field 'class_names' is given but the model is not class-conditional")
    if len(names) != count:
        raise ValueError(f"{path}: field 'class_names' has {len(names)} names but the model has {count} classes")


def load_pipeline_folder(folder: Path, dtype: torch.dtype = torch.float32, device="cpu"):
    """A folder with ``pipeline.json`` naming its model, tokenizer and companions (paths relative to the
    folder's parent, as in the zoo)."""
    path = Path(folder) / "pipeline.json"
    spec = zoo.read_json(path)
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; a pipeline.json takes {sorted(_SPEC_KEYS)}")
    check_pipeline_spec(spec, path)
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

    scenes = spec.get("scenes")
    if scenes is not None and scenes not in family.scene_sources:
        raise ValueError(f"{path}: field 'scenes' names {scenes!r}, not a scenes source of {kind} models "
                         f"({', '.join(family.scene_sources) or 'none'})")
    for key in _FOLDER_KEYS:  # every named part is there before anything is built (a draft is read on first use)
        if spec.get(key) and not resolve(spec[key]).is_dir():
            raise ValueError(f"{path}: field {key!r} names {resolve(spec[key])}, which is not a folder (a relative "
                             f"name is read from {root})")
    model, tokenizer, companions = family.build(spec, resolve, dtype)
    try:  # over the model's own (a transformers image LM's official) defaults
        defaults = replace(getattr(model, "default_sampling", None) or SamplingConfig(), **spec.get("defaults", {}))
    except TypeError as err:
        raise ValueError(f"{path}: bad defaults: {err}") from None
    check_class_names(spec.get("class_names"), model, path)
    pipe = Pipeline(family, model, tokenizer, defaults, spec.get("class_names"), Path(folder).name, companions,
                    spec.get("sampler_options"), spec.get("benchmark", ()), spec.get("scenes"))
    return pipe.to(device)


def load(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         checkpoint: str | None = None, tokenizer_checkpoint: str | None = None, trusted: bool = False,
         max_memory: int | str | None = None):
    """A pipeline from a shipped demo name, an official name, a local folder with ``pipeline.json``, or a
    transformers image LM (a ``save_pretrained`` folder, or a hub id such as ``deepseek-community/Janus-Pro-1B``).

    ``trusted=True`` allows official ``.pt`` files that are more than tensors to be unpickled fully (they
    can run code; see :mod:`vargen.models.checkpoint`). ``max_memory``: what one ``generate`` call may use
    (bytes or ``"8GB"``; default: 80 % of what the device has available; :mod:`vargen.budget`). The first call also
    picks torch's CPU threads for this process (``vargen.runtime.ensure_threads``)."""
    from .budget import parse_bytes
    from .runtime import check_device, check_dtype, ensure_threads

    ensure_threads()
    device, dtype = check_device(device), check_dtype(dtype)
    max_memory = None if max_memory is None else parse_bytes(max_memory)
    pipe = _load(name_or_path, device, dtype, checkpoint, tokenizer_checkpoint, trusted)
    pipe.max_memory = max_memory
    return pipe


def _load(name_or_path, device, dtype, checkpoint, tokenizer_checkpoint, trusted):
    name = str(name_or_path)
    given = [k for k, v in (("checkpoint", checkpoint), ("tokenizer_checkpoint", tokenizer_checkpoint)) if v]
    if given and name not in zoo.OFFICIAL:  # a demo or folder reads its own weights: the file would be ignored
        raise ValueError(f"{'/'.join(given)} applies to the official names ({', '.join(sorted(zoo.OFFICIAL))}), "
                         f"not to {name!r}, which loads its own weights")
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
