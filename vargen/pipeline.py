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
from .samplers.base import GenerationOutput, SamplingConfig, Stats

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

    kind = "llamagen"
    default_sampler = "sjd"
    baseline_sampler = "ar"  # what speed-ups and "quality vs baseline" are measured against
    members: dict[str, str] = {}  # generate(..., model=NAME) runs the sampler on another model of the pipeline
    row_independent_seeds = True  # per_row_seeds runs batched (one generator per row inside the sampler)
    samplers: tuple[str, ...] | None = None  # the samplers that apply (None: any registered one)
    companions: dict[str, str] = {"sd": "draft", "lantern": "draft"}  # sampler -> option filled from this attribute

    def __init__(self, model, tokenizer, defaults: SamplingConfig | None = None, class_names=None,
                 name: str | None = None, draft=None, sampler_options: dict | None = None):
        self.draft = draft  # default drafter (a draft-head folder or model) for "sd" / "lantern"
        self.sampler_options = dict(sampler_options or {})  # per-sampler default options, e.g. {"mar": {"num_iter": 16}}
        self.benchmark: list[str] = []  # the sampler specs eval/report.py measures on this model (pipeline.json)
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = defaults or SamplingConfig()
        self.class_names = list(class_names) if class_names else None
        self.name = name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(getattr(self.model, "num_classes", 0) or 0)

    def to(self, device=None, dtype=None) -> "Pipeline":
        self.model.to(device=device, dtype=dtype)
        if self.tokenizer is not None:
            self.tokenizer.to(device=device)
        for attr in set(self.companions.values()):  # drafter / refiner modules (a draft-head folder stays a path)
            if isinstance(getattr(self, attr, None), torch.nn.Module):
                getattr(self, attr).to(device=device, dtype=dtype)
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
    def generate(self, cond, sampler: str | Any | None = None, seed: int | None = 0, decode: bool = True,
                 per_row_seeds: bool = False, **options) -> GenerationOutput:
        """``sampler``: a name (default: the pipeline's, e.g. ``sjd`` for LlamaGen) or a sampler instance."""
        sampler = sampler or self.default_sampler
        model = self.member(options.pop("model", None))
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
        out = sampler.sample(model, cond, config, generator)
        if decode and self.tokenizer is not None:
            out.images = self.decode(out.tokens)
        return out

    def member(self, name: str | None):
        """The model a sampler runs on: the main one, or a named member (``"refiner"``, ``"draft"``)."""
        if name is None or name == "main":
            return self.model
        if name not in self.members:
            raise ValueError(f"model={name!r}: this {self.kind} pipeline has {['main', *self.members] }")
        found = getattr(self, self.members[name])
        if found is None:
            raise ValueError(f"model={name!r}: this pipeline has no {name} model")
        return found

    def make_sampler(self, name: str, **options):
        """``get_sampler`` with what this pipeline knows: its per-sampler defaults, its companion model
        (the drafter of ``sd``/``lantern``, CoDe's refiner, CSpD's draft; unless given as an option) and the
        tokenizer codebook for neighbourhood rules (LANTERN, GSD)."""
        if self.samplers is not None and name not in self.samplers:
            raise ValueError(f"sampler {name!r} does not apply to a {self.kind.upper()} pipeline; use one of {self.samplers}")
        options = {**self.sampler_options.get(name, {}), **options}
        attr = self.companions.get(name)
        if attr is not None and attr not in options and getattr(self, attr, None) is not None:
            options[attr] = getattr(self, attr)
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


class ScalePipeline(Pipeline):
    """VAR (next-scale) drafter + multi-scale VQVAE, with a default refiner for CoDe (``sampler="code"``)."""

    kind = "var"
    default_sampler = "var"
    baseline_sampler = "var"
    members = {"drafter": "model", "refiner": "refiner"}
    samplers = ("var", "code")
    companions = {"code": "refiner"}

    def __init__(self, model, tokenizer, defaults=None, class_names=None, name=None, refiner=None, sampler_options=None):
        super().__init__(model, tokenizer, defaults, class_names, name, None, sampler_options)
        self.refiner = refiner

    def decode(self, tokens: torch.Tensor) -> list[Image.Image]:
        with torch.no_grad():
            images = self.tokenizer.idx_to_img(tokens.to(self.tokenizer_device))
        return to_pil(images.float())


def _rows_stats(parts: list[Stats]) -> Stats:
    """Stats of rows sampled one call each, as one batch: passes and seconds add up, per-row tensors
    concatenate, numeric counters add up (rates are recomputed by whoever reads the counters)."""
    extra: dict[str, Any] = {}
    for p in parts:
        for k, v in p.extra.items():
            extra[k] = extra.get(k, 0) + v if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    cat = lambda name: torch.cat([getattr(p, name) for p in parts]) if getattr(parts[0], name) is not None else None  # noqa: E731
    return Stats(forward_passes=sum(p.forward_passes for p in parts),
                 draft_forward_passes=sum(p.draft_forward_passes for p in parts), tokens=cat("tokens"),
                 token_step=cat("token_step"), seconds=sum(p.seconds for p in parts),
                 peak_memory_bytes=max(p.peak_memory_bytes for p in parts), extra=extra)


class MARPipeline(Pipeline):
    """MAR target + KL VAE, with a default draft MAR for continuous speculative decoding (``sampler="cspd"``)."""

    kind = "mar"
    default_sampler = "mar"
    baseline_sampler = "mar"
    members = {"target": "model", "draft": "draft"}
    row_independent_seeds = False  # MAR's samplers draw from one generator: per_row_seeds runs row by row
    samplers = ("mar", "cspd")
    companions = {"cspd": "draft"}

    @torch.no_grad()
    def generate(self, cond, sampler=None, seed: int | None = 0, decode: bool = True, per_row_seeds: bool = False,
                 **options) -> GenerationOutput:
        """MAR's samplers draw from one generator; ``per_row_seeds`` therefore runs the rows one by one
        (row i with seed + i), so a row's image does not depend on its batch."""
        if not per_row_seeds:
            return super().generate(cond, sampler, seed, decode, False, **options)
        if isinstance(cond, (int, str)):
            cond = [cond]
        rows = [super(MARPipeline, self).generate([c], sampler, (seed or 0) + i, False, False, **options)
                for i, c in enumerate(list(cond))]
        out = GenerationOutput(tokens=torch.cat([r.tokens for r in rows]), stats=_rows_stats([r.stats for r in rows]))
        if decode:
            out.images = self.decode(out.tokens)
        return out

    def decode(self, tokens: torch.Tensor) -> list[Image.Image]:
        with torch.no_grad():
            latents = self.model.unpatchify(tokens.to(self.device, next(self.model.parameters()).dtype))
            images = self.tokenizer.tokens_to_images(latents.to(self.tokenizer_device, next(self.tokenizer.parameters()).dtype))
        return to_pil(images.float())


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _load_pipeline_json(folder: Path, dtype: torch.dtype, device) -> Pipeline:
    spec = zoo.read_json(folder / "pipeline.json")
    root = folder.parent

    def resolve(name):
        p = Path(name)
        return p if p.is_absolute() else root / name

    pipe = _build_from_spec(spec, resolve, folder, dtype).to(device)
    pipe.benchmark = list(spec.get("benchmark", []))
    return pipe


def _build_from_spec(spec: dict, resolve, folder: Path, dtype: torch.dtype) -> Pipeline:
    common = dict(defaults=SamplingConfig(**spec.get("defaults", {})), class_names=spec.get("class_names"),
                  name=folder.name, sampler_options=spec.get("sampler_options"))
    if spec["kind"] == "var":
        from .train.var import load_msvq_folder, load_var_folder

        vae = load_msvq_folder(resolve(spec["tokenizer"]))
        refiner = load_var_folder(resolve(spec["refiner"]), vae, dtype) if spec.get("refiner") else None
        return ScalePipeline(load_var_folder(resolve(spec["model"]), vae, dtype), vae, refiner=refiner, **common)
    if spec["kind"] == "mar":
        from .train.mar import load_kl_folder, load_mar_folder

        draft = load_mar_folder(resolve(spec["draft"]), dtype) if spec.get("draft") else None
        target = load_mar_folder(resolve(spec["model"]), dtype)
        for m in (target, draft):  # pred-x0 clamp of the diffusion heads (see Diffusion.p_mean_variance)
            if m is not None:
                m.diffloss.clip_x0 = spec.get("clip_x0")
        return MARPipeline(target, load_kl_folder(resolve(spec["tokenizer"])), draft=draft, **common)
    if spec["kind"] != "llamagen":
        raise ValueError(f"{folder}: pipeline kind {spec['kind']!r} is not loadable by this version (llamagen, var, mar)")
    from .models.llamagen import load_gpt_folder
    from .tokenizers.llamagen_vq import load_vq_folder

    model = load_gpt_folder(resolve(spec["model"]), dtype)
    vq = load_vq_folder(resolve(spec["tokenizer"]))
    draft = str(resolve(spec["draft"])) if spec.get("draft") else None
    return Pipeline(model, vq, draft=draft, **common)


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
    """A pipeline from a shipped demo name, an official name, or a local folder with ``pipeline.json``.

    The first call also picks torch's CPU threads for this process (``vargen.runtime.ensure_threads``)."""
    from .runtime import ensure_threads

    ensure_threads()
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
