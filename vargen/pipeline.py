"""``vargen.load(name_or_path) -> Pipeline``: tokenizer + model + sampling defaults -> images and stats."""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from . import zoo
from .samplers import get_sampler
from .samplers.base import GenerationOutput, SamplingConfig

CONFIG_FIELDS = {f.name for f in fields(SamplingConfig)}


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` in [-1, 1] -> PIL images (clamped, as the official samplers do)."""
    arr = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def image_grid(images: Sequence[Image.Image], cols: int) -> Image.Image:
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


class Pipeline:
    """A token model (LlamaGen-style) with its tokenizer and defaults.

    ``generate(cond, sampler="sjd", seed=0, **options)``: ``options`` may hold
    :class:`SamplingConfig` fields (``cfg_scale=``, ``top_k=``, ...) and sampler options
    (``window=``, ``init=``, ``coupled=``, ``acceptance=``, ...); anything else is an error.
    """

    def __init__(self, model, tokenizer, defaults: SamplingConfig | None = None, class_names=None,
                 name: str | None = None, draft=None):
        self.draft = draft  # default drafter (a draft-head folder or model) for "sd" / "lantern"
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = defaults or SamplingConfig()
        self.class_names = list(class_names) if class_names else None
        self.name = name

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device=None, dtype=None) -> "Pipeline":
        self.model.to(device=device, dtype=dtype)
        if self.tokenizer is not None:
            self.tokenizer.to(device=device)
        return self

    def class_id(self, c: int | str) -> int:
        if isinstance(c, str) and not c.isdigit():
            if not self.class_names or c not in self.class_names:
                raise ValueError(f"unknown class {c!r}; classes: {self.class_names}")
            return self.class_names.index(c)
        return int(c)

    def split_options(self, options: dict[str, Any]) -> tuple[SamplingConfig, dict[str, Any]]:
        cfg = {k: v for k, v in options.items() if k in CONFIG_FIELDS}
        rest = {k: v for k, v in options.items() if k not in CONFIG_FIELDS}
        return SamplingConfig(**cfg).with_defaults(self.defaults), rest

    @torch.no_grad()
    def generate(self, cond, sampler: str | Any = "sjd", seed: int | None = 0, decode: bool = True,
                 per_row_seeds: bool = False, **options) -> GenerationOutput:
        config, sampler_options = self.split_options(options)
        if isinstance(sampler, str):
            sampler = self.make_sampler(sampler, **sampler_options)
        elif sampler_options:
            raise ValueError(f"options {sorted(sampler_options)} given with a sampler instance")
        if isinstance(cond, (int, str)):
            cond = [cond]
        if isinstance(cond, (list, tuple)):
            cond = torch.tensor([self.class_id(c) for c in cond], device=self.device)
        cond = cond.to(self.device)
        if per_row_seeds:  # row i uses seed + i, independent of the batch it runs in
            generator = [torch.Generator(self.device).manual_seed((seed or 0) + i) for i in range(cond.shape[0])]
        else:
            generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        out = sampler.sample(self.model, cond, config, generator)
        if decode and self.tokenizer is not None:
            out.images = self.decode(out.tokens)
        return out

    def make_sampler(self, name: str, **options):
        """``get_sampler`` with what this pipeline knows: its default drafter for ``sd``/``lantern``
        (unless ``draft=`` is given) and the tokenizer codebook for neighbourhood rules (LANTERN, GSD)."""
        if name in ("sd", "lantern") and "draft" not in options and self.draft is not None:
            options["draft"] = self.draft
        sampler = get_sampler(name, **options)
        rule = getattr(sampler, "rule", None)
        if rule is not None and getattr(rule, "codebook", False) is None and self.tokenizer is not None:
            rule.codebook = self.tokenizer.codebook  # neighbourhoods in the quantiser's geometry
        return sampler

    def decode(self, tokens: torch.Tensor) -> list[Image.Image]:
        _, h, w = self.model.grid
        dtype = next(self.tokenizer.parameters()).dtype
        with torch.no_grad():
            images = self.tokenizer.decode(tokens.view(tokens.shape[0], h, w).to(self.tokenizer_device))
        return to_pil(images.to(dtype=torch.float32))

    @property
    def tokenizer_device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _load_pipeline_json(folder: Path, dtype: torch.dtype, device) -> Pipeline:
    spec = zoo.read_json(folder / "pipeline.json")
    root = folder.parent

    def resolve(name):
        p = Path(name)
        return p if p.is_absolute() else root / name

    if spec["kind"] != "llamagen":
        raise ValueError(f"{folder}: pipeline kind {spec['kind']!r} is not loadable by this version")
    from .models.llamagen import load_gpt_folder
    from .tokenizers.llamagen_vq import load_vq_folder

    model = load_gpt_folder(resolve(spec["model"]), dtype)
    vq = load_vq_folder(resolve(spec["tokenizer"]))
    draft = str(resolve(spec["draft"])) if spec.get("draft") else None
    pipe = Pipeline(model, vq, SamplingConfig(**spec.get("defaults", {})), spec.get("class_names"), folder.name, draft)
    return pipe.to(device)


def _load_official(name: str, dtype, device, checkpoint=None, tokenizer_checkpoint=None) -> Pipeline:
    from .models.llamagen import GPT, gpt_config, load_gpt_weights
    from .tokenizers.llamagen_vq import VQModel, load_vq_weights, vq_config

    spec = zoo.OFFICIAL[name]
    gpt_args = dict(spec["gpt"])
    model = GPT(gpt_config(gpt_args.pop("preset"), **gpt_args))
    load_gpt_weights(model, zoo.fetch(spec["checkpoint"], checkpoint))
    vq_args = dict(spec["vq"])
    vq = VQModel(vq_config(vq_args.pop("preset"), **vq_args))
    load_vq_weights(vq, zoo.fetch(spec["tokenizer_checkpoint"], tokenizer_checkpoint))
    pipe = Pipeline(model.to(dtype).eval(), vq.eval(), SamplingConfig(**spec["defaults"]), None, name)
    return pipe.to(device)


def load(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         checkpoint: str | None = None, tokenizer_checkpoint: str | None = None) -> Pipeline:
    """A pipeline from a shipped demo name, an official name, or a local folder with ``pipeline.json``."""
    name = str(name_or_path)
    shipped = zoo.shipped_path(name)
    if shipped is not None and (shipped / "pipeline.json").is_file():
        return _load_pipeline_json(shipped, dtype, device)
    if name in zoo.OFFICIAL:
        return _load_official(name, dtype, device, checkpoint, tokenizer_checkpoint)
    path = Path(name)
    if path.is_dir() and (path / "pipeline.json").is_file():
        return _load_pipeline_json(path, dtype, device)
    raise ValueError(
        f"unknown model {name!r}: not a shipped demo ({', '.join(zoo.shipped_names()) or 'none'}), not an official "
        f"name ({', '.join(sorted(zoo.OFFICIAL))}) and not a folder with pipeline.json"
    )
