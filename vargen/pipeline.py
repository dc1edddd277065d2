"""``vargen.load(name_or_path) -> Pipeline``: tokenizer + model + sampling defaults -> images and stats.

One :class:`Pipeline` class serves every model family. What differs per family is one row of
:data:`FAMILIES` (:class:`FamilySpec`): how a ``pipeline.json`` folder is loaded, how outputs are decoded,
the default and baseline samplers, the samplers that apply, the companion models samplers take (a draft
head, CoDe's refiner, CSpD's draft MAR) and the ``SamplingConfig`` fields the family uses.

Companions are loaded once per pipeline (on first use), and samplers -- with their rule caches such as
LANTERN's neighbour table -- are built once per (sampler, options) and reused across ``generate`` calls.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from . import zoo
from .samplers import available_samplers, get_sampler, sampler_options, unknown_sampler_error
from .samplers.base import GenerationOutput, SamplingConfig, Stats
from .samplers.spec import SamplerSpec

CONFIG_FIELDS = tuple(f.name for f in fields(SamplingConfig))
MAX_SEED = 2**63 - 1


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


# ----------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilySpec:
    """What a model family needs from the one Pipeline class.

    build(spec, resolve, dtype) -> (model, tokenizer, companions): ``companions`` maps a name to a module
    or to a zero-argument loader called on first use. decode(pipeline, output) -> image tensor [B, 3, H, W]
    in [-1, 1], one row at a time (so an image never depends on the batch it was generated in).
    companions: sampler -> (option name, companion name) filled in unless the caller gives the option.
    members: ``model=NAME`` -> companion name ("main" is the model itself).
    """

    kind: str
    build: Callable
    decode_row: Callable
    default_sampler: str  # a sampler spec: the best lossless sampler of the family on its demo
    baseline: str
    samplers: tuple[str, ...]
    config_fields: tuple[str, ...]
    companions: dict = field(default_factory=dict)
    members: dict = field(default_factory=dict)
    row_independent_seeds: bool = True  # False: samplers draw from one generator; per-row seeds run row by row
    codebook_rules: bool = False  # fill LANTERN / GSD's codebook from the tokenizer
    conditions: Callable | None = None  # (pipeline, cond) -> the model's condition; None: class ids / names
    own_tokenizer: bool = False  # the model checkpoint holds its image tokenizer (pipeline.json names no tokenizer)
    video: bool = False  # decode_row returns a clip [1, 3, F, H, W] of the context and the generated frames


def _build_llamagen(spec, resolve, dtype):
    from .models.draft_head import DraftHead
    from .models.llamagen import GPT
    from .tokenizers.llamagen_vq import VQModel

    model = GPT.from_folder(resolve(spec["model"]), dtype)
    companions = {}
    if spec.get("draft"):
        path = resolve(spec["draft"])
        companions["draft"] = lambda: DraftHead.from_folder(path)
    return model, VQModel.from_folder(resolve(spec["tokenizer"])), companions


def _decode_llamagen(pipe, tokens, latents):
    _, h, w = pipe.model.grid
    return pipe.tokenizer.decode(tokens.view(tokens.shape[0], h, w))


def _build_var(spec, resolve, dtype):
    from .models.var import VAR
    from .tokenizers.msvq import MultiScaleVQVAE

    vae = MultiScaleVQVAE.from_folder(resolve(spec["tokenizer"]))
    companions = {}
    if spec.get("refiner"):
        path = resolve(spec["refiner"])
        companions["refiner"] = lambda: VAR.from_folder(path, vae, dtype)
    return VAR.from_folder(resolve(spec["model"]), vae, dtype), vae, companions


def _decode_var(pipe, tokens, latents):
    if latents is not None:  # the sampler's own f_hat (with more_smooth it is not a function of the tokens)
        return pipe.tokenizer.fhat_to_img(latents.float())
    return pipe.tokenizer.idx_to_img(tokens)


def _build_mar(spec, resolve, dtype):
    from .models.mar import MAR
    from .tokenizers.kl import KLVAE

    companions = {}
    if spec.get("draft"):
        path = resolve(spec["draft"])
        companions["draft"] = lambda: MAR.from_folder(path, dtype)
    return MAR.from_folder(resolve(spec["model"]), dtype), KLVAE.from_folder(resolve(spec["tokenizer"])), companions


def _decode_mar(pipe, tokens, latents):
    x = latents if latents is not None else tokens
    latent = pipe.model.unpatchify(x.to(pipe.device, next(pipe.model.parameters()).dtype))
    return pipe.tokenizer.tokens_to_images(latent.to(pipe.tokenizer_device, next(pipe.tokenizer.parameters()).dtype))


def _build_cosmos(spec, resolve, dtype):
    from .models.cosmos import CosmosTransformer
    from .tokenizers.cosmos_dv import DiscreteVideoTokenizer

    companions = {}
    if spec.get("draft"):
        path = resolve(spec["draft"])
        companions["draft"] = lambda: CosmosTransformer.from_folder(path, dtype)
    model = CosmosTransformer.from_folder(resolve(spec["model"]), dtype)
    tokenizer = DiscreteVideoTokenizer.from_folder(resolve(spec["tokenizer"]))
    T, H, W = model.config.video_latent_shape
    tc = tokenizer.config
    if tc.latent_frames(tc.pixel_chunk_duration) != T:
        raise ValueError(f"the tokenizer's {tc.pixel_chunk_duration}-frame chunks give {tc.latent_frames(tc.pixel_chunk_duration)} "
                         f"latent frames; the model's clip has {T}")
    return model, tokenizer, companions


def _decode_cosmos(pipe, tokens, latents):
    T, H, W = pipe.model.config.video_latent_shape
    return pipe.tokenizer.decode(tokens.view(tokens.shape[0], T, H, W))


def _cosmos_conditions(pipe, cond):
    """A :class:`~vargen.models.cosmos.VideoCondition`, context tokens ``[B, c*H*W]``, context video
    ``[B, 3, f, H, W]`` in [-1, 1] (encoded as the official pipeline does: padded to a whole chunk by repeating
    its last frame), or -- for a pipeline with a procedural ``scenes`` source -- scene seeds (ints)."""
    from .models.cosmos import VideoCondition

    model = pipe.model
    if isinstance(cond, int) and not isinstance(cond, bool):
        cond = [cond]
    if isinstance(cond, (list, tuple)):
        if not cond:
            raise ValueError("no scenes given: the batch is empty")
        if pipe.scenes is None:
            raise ValueError(f"{pipe.name}: give context frames (a video tensor [B, 3, f, H, W] or a VideoCondition); "
                             "scene seeds apply to the procedural demo pipelines")
        cond = pipe.scene_clips(cond)
    if torch.is_tensor(cond) and cond.is_floating_point():
        cond = VideoCondition(pipe.encode_context(cond))
    if torch.is_tensor(cond):
        cond = VideoCondition(cond)
    if not isinstance(cond, VideoCondition):
        raise ValueError(f"a video pipeline takes scene seeds, context video or a VideoCondition, got {type(cond).__name__}")
    model.check_cond(cond)
    return cond.to(pipe.device)


FAMILIES: dict[str, FamilySpec] = {
    "llamagen": FamilySpec(
        "llamagen", _build_llamagen, _decode_llamagen, default_sampler="sjd:window=16,coupled=true", baseline="ar",
        samplers=("ar", "sjd", "sjd-pac", "gsd", "sd", "lantern", "lantern++", "zipar"),
        config_fields=("temperature", "top_k", "top_p", "cfg_scale", "cfg_interval"),
        companions={"sd": ("draft", "draft"), "lantern": ("draft", "draft"), "lantern++": ("draft", "draft")},
        codebook_rules=True),
    "var": FamilySpec(
        "var", _build_var, _decode_var, default_sampler="var", baseline="var", samplers=("var", "code"),
        config_fields=("temperature", "top_k", "top_p", "cfg_scale", "cfg_schedule", "more_smooth"),
        companions={"code": ("refiner", "refiner")}, members={"drafter": "main", "refiner": "refiner"}),
    "mar": FamilySpec(
        "mar", _build_mar, _decode_mar, default_sampler="mar", baseline="mar", samplers=("mar", "cspd"),
        config_fields=("temperature", "cfg_scale", "cfg_schedule"),
        companions={"cspd": ("draft", "draft")}, members={"target": "main", "draft": "draft"},
        row_independent_seeds=False),
    "cosmos": FamilySpec(
        "cosmos", _build_cosmos, _decode_cosmos, default_sampler="sjd:window=16,init=temporal,coupled=true",
        baseline="ar", samplers=("ar", "sjd", "sjd-pac", "gsd", "sd", "lantern", "lantern++"),
        config_fields=("temperature", "top_k", "top_p"),
        companions={"sd": ("draft", "draft"), "lantern": ("draft", "draft"), "lantern++": ("draft", "draft")},
        codebook_rules=True, conditions=_cosmos_conditions, video=True),
}


def _hf_family(name: str) -> Callable:
    """A function of :mod:`vargen.models.hf.family`, imported on first use (transformers is an optional extra)."""
    def call(*args):
        try:
            from .models.hf import family
        except ImportError as err:
            raise ImportError(f"transformers image LMs need the [hf] extra (pip install -e '.[hf]'): {err}") from None
        return getattr(family, name)(*args)

    return call


# transformers image LMs (vargen.models.hf): every token sampler; sd / lantern take a smaller checkpoint of the family
HF_KINDS = ("janus", "emu3", "chameleon")
for _kind in HF_KINDS:
    FAMILIES[_kind] = FamilySpec(
        _kind, _hf_family("build"), _hf_family("decode_row"), default_sampler="sjd:window=16,coupled=true",
        baseline="ar", samplers=("ar", "sjd", "sjd-pac", "gsd", "sd", "lantern", "lantern++"),
        config_fields=("temperature", "top_k", "top_p", "cfg_scale"),
        companions={"sd": ("draft", "draft"), "lantern": ("draft", "draft"), "lantern++": ("draft", "draft")},
        codebook_rules=True, conditions=_hf_family("prompt_conditions"), own_tokenizer=True)


def register_family(spec: FamilySpec) -> None:
    FAMILIES[spec.kind] = spec


def families_taking(sampler: str) -> list[str]:
    """The family kinds ``sampler`` applies to."""
    return [kind for kind, family in FAMILIES.items() if sampler in family.samplers]


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------


def _frozen(value):
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    try:
        hash(value)
        return value
    except TypeError:
        return ("id", id(value))


class Pipeline:
    """A model with its tokenizer, companions and defaults; ``generate`` turns conditions into images.

    ``generate(cond, sampler=None, seed=0, **options)``: ``options`` may hold the family's
    :class:`SamplingConfig` fields (``cfg_scale=``, ``top_k=``, ...), the sampler's options (``window=``,
    ``init=``, ``acceptance=``, ...) and ``model=`` (a member such as VAR's ``refiner``); anything else is
    an error before any work.
    """

    def __init__(self, family: FamilySpec | str, model, tokenizer, defaults: SamplingConfig | None = None,
                 class_names=None, name: str | None = None, companions: dict | None = None,
                 sampler_options: dict | None = None, benchmark: Sequence[str] = (), scenes: str | None = None):
        self.family = FAMILIES[family] if isinstance(family, str) else family
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = defaults or SamplingConfig()
        self.class_names = list(class_names) if class_names else None
        self.name = name
        self.sampler_options = dict(sampler_options or {})  # per-sampler defaults, e.g. {"code": {"draft_steps": 4}}
        self.benchmark = list(benchmark)  # the sampler specs the benchmark report measures on this model
        if scenes not in (None, *SCENE_SOURCES):
            raise ValueError(f"{name}: unknown scenes source {scenes!r} ({', '.join(SCENE_SOURCES)})")
        self.scenes = scenes  # video demos: integer conditions are seeds of this procedural clip generator
        self._companions = dict(companions or {})
        self._samplers: dict = {}
        self._placement: tuple = (None, None)
        foreign = self.defaults_used_but_foreign()
        if foreign:
            raise ValueError(f"{name}: default(s) {', '.join(foreign)} do not apply to {self.kind} models")

    # -- what the pipeline is --------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.family.kind

    @property
    def default_sampler(self) -> str:
        return self.family.default_sampler

    @property
    def baseline_sampler(self) -> str:
        return self.family.baseline

    @property
    def row_independent_seeds(self) -> bool:
        return self.family.row_independent_seeds

    def applicable_samplers(self) -> tuple[str, ...]:
        return self.family.samplers

    def defaults_used_but_foreign(self) -> list[str]:
        return [f.name for f in fields(SamplingConfig)
                if getattr(self.defaults, f.name) is not None and f.name not in self.family.config_fields]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer_device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(getattr(self.model, "num_classes", 0) or 0)

    def companion(self, name: str):
        """A companion model (loaded on first use, then kept), or None if this pipeline has none."""
        value = self._companions.get(name)
        if callable(value) and not isinstance(value, torch.nn.Module):
            value = value()
            device, dtype = self._placement
            if isinstance(value, torch.nn.Module) and (device is not None or dtype is not None):
                value = value.to(device=device, dtype=dtype)
            self._companions[name] = value
        return value

    def to(self, device=None, dtype=None) -> "Pipeline":
        self.model.to(device=device, dtype=dtype)
        if self.tokenizer is not None:
            self.tokenizer.to(device=device)
        for value in self._companions.values():
            if isinstance(value, torch.nn.Module):
                value.to(device=device, dtype=dtype)
        self._placement = (device or self._placement[0], dtype or self._placement[1])
        self._samplers.clear()
        return self

    def member(self, name: str | None):
        """The model a sampler runs on: the main one, or a named member (``"refiner"``, ``"draft"``)."""
        if name is None or name == "main":
            return self.model
        if name not in self.family.members:
            raise ValueError(f"model={name!r}: this {self.kind} pipeline has {['main', *self.family.members]}")
        key = self.family.members[name]
        found = self.model if key == "main" else self.companion(key)
        if found is None:
            raise ValueError(f"model={name!r}: this pipeline has no {name} model")
        return found

    def class_id(self, c) -> int:
        """A class id from a name or an integer id, checked against the classes (``0 .. num_classes-1``)."""
        n = self.num_classes
        if isinstance(c, str) and not c.strip().lstrip("-").isdigit():
            if not self.class_names or c not in self.class_names:
                raise ValueError(f"unknown class {c!r}; classes: {self.class_names}")
            return self.class_names.index(c)
        if isinstance(c, bool) or not isinstance(c, (int, str)):
            raise ValueError(f"class ids must be integers or class names, got {c!r}")
        cid = int(c)
        if not 0 <= cid < n:
            raise ValueError(f"class id {cid} out of range: this model has {n} classes (0..{n - 1})")
        return cid

    # -- samplers -----------------------------------------------------------------------------------------
    def split_options(self, options: dict[str, Any]) -> tuple[SamplingConfig, dict[str, Any]]:
        """(the call's SamplingConfig over the pipeline's defaults, the sampler options); a config field this
        family does not use is an error."""
        cfg = {k: v for k, v in options.items() if k in CONFIG_FIELDS}
        foreign = [k for k in cfg if k not in self.family.config_fields]
        if foreign:
            raise ValueError(f"{', '.join(foreign)} does not apply to {self.kind} models; their sampling config "
                             f"takes: {', '.join(self.family.config_fields)}")
        rest = {k: v for k, v in options.items() if k not in CONFIG_FIELDS}
        return SamplingConfig(**cfg).with_defaults(self.defaults), rest

    def make_sampler(self, name: str, **options):
        """``get_sampler`` with what this pipeline knows: its per-sampler defaults, its companion model (the
        drafter of ``sd``/``lantern``, CoDe's refiner, CSpD's draft; unless given as an option) and the
        tokenizer codebook for neighbourhood rules. Built once per (name, options), then reused."""
        if name not in self.family.samplers:
            if name not in available_samplers():
                raise unknown_sampler_error(name)
            raise ValueError(f"sampler {name!r} does not apply to a {self.kind.upper()} pipeline; use one of "
                             f"{', '.join(self.family.samplers)}")
        options = {**self.sampler_options.get(name, {}), **options}
        key = (name, tuple(sorted((k, _frozen(v)) for k, v in options.items())))
        if key in self._samplers:
            return self._samplers[key]
        link = self.family.companions.get(name)
        if link is not None and link[0] not in options:
            value = self.companion(link[1])
            if value is not None:
                options[link[0]] = value
        sampler = get_sampler(name, **options)
        rule = getattr(sampler, "rule", None)
        if self.family.codebook_rules and rule is not None and getattr(rule, "codebook", False) is None:
            rule.codebook = self.tokenizer.codebook  # neighbourhoods in the quantiser's geometry
        self._samplers[key] = sampler
        return sampler

    def sampler_defaults(self, name: str, acceptance: str | None = None) -> dict[str, Any]:
        """The options ``name`` runs with on this pipeline when none are given: the sampler's declared defaults
        under this pipeline's ``sampler_options`` (e.g. the VAR demo's ``code`` runs ``draft_steps=4``)."""
        own = self.sampler_options.get(name, {})
        return {key: own.get(key, opt.default) for key, opt in sampler_options(name, acceptance).items()}

    def check_sampler(self, name: str, model: str | None = None, **options):
        """The sampler ``name`` with ``options`` for member ``model``, checked against that model (sizes within
        the model's, companions that match): every error a request can raise, before any work."""
        sampler = self.make_sampler(name, **options)
        target = self.member(model)
        if hasattr(sampler, "check"):
            sampler.check(target)
        return sampler

    @property
    def takes_prompts(self) -> bool:
        """Conditions are prompts (text or prompt token ids), not class ids."""
        return self.family.conditions is not None and not self.family.video

    @property
    def video(self) -> bool:
        return self.family.video

    def scene_clips(self, seeds) -> torch.Tensor:
        """The procedural clips ``[B, 3, F, H, W]`` of scene seeds (one generator per seed), for video demos."""
        from .video import bouncing_shapes

        for s in seeds:
            self.check_seed(s)
        frames = self.tokenizer.config.pixel_chunk_duration
        size = self.model.config.video_latent_shape[1] * self.tokenizer.config.spatial_compression
        return torch.cat([bouncing_shapes(1, torch.Generator().manual_seed(int(s)), frames=frames, size=size)
                          for s in seeds])

    @torch.no_grad()
    def encode_context(self, video: torch.Tensor) -> torch.Tensor:
        """Context video ``[B, 3, f, H, W]`` in [-1, 1] (``f`` up to one tokenizer chunk) -> the tokens of the
        model's ``context_frames`` latent frames ``[B, c*H*W]``; the clip is padded to a whole chunk by repeating
        its last frame, as the official pipeline does."""
        tc, model = self.tokenizer.config, self.model
        T, H, W = model.config.video_latent_shape
        want = (tc.pixel_chunk_duration, H * tc.spatial_compression, W * tc.spatial_compression)
        if video.dim() != 5 or video.shape[1] != 3 or video.shape[3:] != want[1:] or not 1 <= video.shape[2] <= want[0]:
            raise ValueError(f"context video must be [B, 3, f, {want[1]}, {want[2]}] with 1 <= f <= {want[0]}, "
                             f"got {tuple(video.shape)}")
        need = 1 + (model.context_frames - 1) * tc.temporal_compression
        if video.shape[2] < need:
            raise ValueError(f"{model.context_frames} context latent frame(s) need at least {need} video frames, "
                             f"got {video.shape[2]}")
        pad = video[:, :, -1:].expand(-1, -1, want[0] - video.shape[2], -1, -1)
        clip = torch.cat([video, pad], 2).to(self.tokenizer_device)
        return self.tokenizer.encode(clip)[:, : model.context_frames].flatten(1)

    def conditions(self, cond):
        """Class names / ids (a list, or one) -> a LongTensor of checked ids on the model's device; for prompt
        families the family's conversion (strings, token-id lists)."""
        if self.family.conditions is not None:
            return self.family.conditions(self, cond)
        if isinstance(cond, (int, str)):
            cond = [cond]
        if isinstance(cond, (list, tuple)):
            if not cond:
                raise ValueError("no classes given: the batch is empty")
            cond = torch.tensor([self.class_id(c) for c in cond], dtype=torch.long)
        if not torch.is_tensor(cond):
            raise ValueError(f"cond must be class ids or names, got {type(cond).__name__}")
        return cond.to(self.device)

    @staticmethod
    def check_seed(seed) -> None:
        if seed is None:
            return
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")

    @torch.no_grad()
    def generate(self, cond, sampler: str | Any | None = None, seed: int | None = 0, decode: bool = True,
                 per_row_seeds: bool = False, compile: bool = False, **options) -> GenerationOutput:
        """``sampler``: a name (default: the family's, e.g. coupled ``sjd`` for LlamaGen), a
        ``"name:key=value"`` spec, or a sampler instance. ``per_row_seeds``: row ``i`` uses seed ``seed + i``,
        so a row's tokens do not depend on the batch it runs in. ``compile``: token samplers run their target
        step as one compiled graph (same tokens; see :meth:`vargen.samplers.loop.TokenSampler.sample`)."""
        self.check_seed(seed)
        if compile not in (True, False):
            raise ValueError(f"compile must be true or false, got {compile!r}")
        if per_row_seeds and seed is not None and seed + 1000 > MAX_SEED:
            raise ValueError(f"seed {seed} leaves no room for per-row seeds (at most {MAX_SEED - 1000})")
        sampler = sampler or self.default_sampler
        if isinstance(sampler, str) and ":" in sampler:
            spec = SamplerSpec.parse(sampler)
            sampler, options = spec.name, {**spec.options, **options, **({"model": spec.member} if spec.member else {})}
        model = self.member(options.pop("model", None))
        config, sampler_options = self.split_options(options)
        if isinstance(sampler, str):
            sampler = self.make_sampler(sampler, **sampler_options)
        elif sampler_options:
            raise ValueError(f"options {sorted(sampler_options)} given with a sampler instance")
        cond = self.conditions(cond)
        kw = {}
        if compile:
            from .samplers.loop import TokenSampler

            if not isinstance(sampler, TokenSampler):
                raise ValueError(f"compile=True applies to the token samplers (LlamaGen-style models); "
                                 f"{type(sampler).__name__} has no compiled path")
            kw["compile"] = True
        if per_row_seeds and not self.row_independent_seeds:
            return self._generate_row_by_row(cond, sampler, model, config, seed or 0, decode)
        if per_row_seeds:
            generator = [torch.Generator(self.device).manual_seed((seed or 0) + i) for i in range(_batch(cond))]
        else:
            generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        out = sampler.sample(model, cond, config, generator, **kw)
        if self.video:
            out.context = cond.frames
        if decode and self.tokenizer is not None:
            out.images = self.decode(out)
        return out

    def _generate_row_by_row(self, cond, sampler, model, config, seed: int, decode: bool) -> GenerationOutput:
        """For samplers that draw from one generator per call: row i alone with seed + i."""
        rows = [sampler.sample(model, cond[i : i + 1], config, torch.Generator(self.device).manual_seed(seed + i))
                for i in range(cond.shape[0])]
        latents = torch.cat([r.latents for r in rows]) if rows[0].latents is not None else None
        out = GenerationOutput(tokens=torch.cat([r.tokens for r in rows]), stats=_rows_stats([r.stats for r in rows]),
                               latents=latents)
        if decode and self.tokenizer is not None:
            out.images = self.decode(out)
        return out

    @torch.no_grad()
    def decode(self, out: GenerationOutput | torch.Tensor) -> list[Image.Image]:
        """Images of an output (its latents when the sampler computed them, else its tokens), decoded one
        row at a time: an image is the same whatever batch it was generated and decoded in."""
        if torch.is_tensor(out):
            out = GenerationOutput(tokens=out, stats=Stats())
        if self.video:
            return self._decode_video(out)
        images = []
        for i in range(out.tokens.shape[0]):
            lat = out.latents[i : i + 1] if out.latents is not None else None
            tok = out.tokens[i : i + 1].to(self.tokenizer_device)
            images.append(self.family.decode_row(self, tok, lat).float())
        return to_pil(torch.cat(images))

    def _decode_video(self, out: GenerationOutput) -> list[Image.Image]:
        """Clips of an output (context frames + generated frames, one row at a time): sets ``out.videos`` (frames
        per sample) and returns one film strip per sample."""
        if out.context is None:
            raise ValueError("a video output needs its context frames (GenerationOutput.context) to be decoded")
        out.videos = []
        for i in range(out.tokens.shape[0]):
            clip = torch.cat([out.context[i : i + 1], out.tokens[i : i + 1]], 1).to(self.tokenizer_device)
            video = self.family.decode_row(self, clip, None).float()  # [1, 3, F, H, W]
            out.videos.append(to_pil(video[0].transpose(0, 1)))
        return [image_grid(frames, len(frames)) for frames in out.videos]


SCENE_SOURCES = ("bouncing_shapes",)


def _batch(cond) -> int:
    """Rows of a condition: class ids (a tensor) or a batched condition object (``PromptTokens``, ...)."""
    return cond.shape[0] if torch.is_tensor(cond) else cond.batch


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


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

_SPEC_KEYS = {"kind", "model", "tokenizer", "draft", "refiner", "defaults", "class_names", "sampler_options",
              "benchmark", "scenes", "model_options"}


def load_pipeline_folder(folder: Path, dtype: torch.dtype = torch.float32, device="cpu") -> Pipeline:
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
    if spec.get("model_options") and kind not in HF_KINDS:
        raise ValueError(f"{path}: 'model_options' (adapter options such as a grid) apply to transformers image LMs "
                         f"({', '.join(HF_KINDS)}), not to {kind}")
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


def _load_official(name: str, dtype, device, checkpoint=None, tokenizer_checkpoint=None, trusted=False) -> Pipeline:
    from .models.llamagen import GPT, gpt_config, load_gpt_weights
    from .tokenizers.llamagen_vq import VQModel, load_vq_weights, vq_config

    spec = zoo.OFFICIAL[name]
    if spec["kind"] == "cosmos":
        return _load_official_cosmos(name, spec, dtype, device, checkpoint, tokenizer_checkpoint, trusted)
    gpt_args = dict(spec["gpt"])
    model = GPT(gpt_config(gpt_args.pop("preset"), **gpt_args))
    load_gpt_weights(model, zoo.fetch(spec["checkpoint"], checkpoint), trusted=trusted)
    vq_args = dict(spec["vq"])
    vq = VQModel(vq_config(vq_args.pop("preset"), **vq_args))
    load_vq_weights(vq, zoo.fetch(spec["tokenizer_checkpoint"], tokenizer_checkpoint), trusted=trusted)
    pipe = Pipeline("llamagen", model.to(dtype).eval(), vq.eval(), SamplingConfig(**spec["defaults"]), None, name)
    return pipe.to(device)


def _load_official_cosmos(name, spec, dtype, device, checkpoint=None, tokenizer_checkpoint=None,
                          trusted=False) -> Pipeline:
    """A released Cosmos-1.0 AR base model with DV8x16x16. ``tokenizer_checkpoint``: a folder holding the
    tokenizer halves (``encoder.jit`` / ``decoder.jit`` -- read only with ``trusted=True`` -- or their state dicts
    as ``encoder.safetensors`` / ``decoder.safetensors``)."""
    from .models.cosmos import CosmosTransformer, cosmos_config, load_cosmos_weights
    from .tokenizers.cosmos_dv import DV_PRESETS, DVConfig, load_dv_tokenizer

    weights = zoo.fetch(spec["checkpoint"], checkpoint)  # every file is found before the 4B+ model is built
    if tokenizer_checkpoint is not None:
        folder = Path(tokenizer_checkpoint)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer_checkpoint for {name} must be a folder with encoder.jit and decoder.jit "
                                    f"(or encoder.safetensors and decoder.safetensors): {folder}")
        halves = [next((folder / f"{h}{ext}" for ext in (".safetensors", ".jit") if (folder / f"{h}{ext}").is_file()),
                       folder / f"{h}.jit") for h in ("encoder", "decoder")]
    else:
        halves = [zoo.fetch(spec["tokenizer_checkpoint"]), zoo.fetch(spec["decoder_checkpoint"])]
    model = CosmosTransformer(cosmos_config(name, context_frames=spec["context_frames"])).to(dtype)
    load_cosmos_weights(model, weights, trusted=trusted)
    tokenizer = load_dv_tokenizer(DVConfig(**DV_PRESETS["DV8x16x16"]), *map(str, halves), trusted=trusted)
    pipe = Pipeline("cosmos", model.eval(), tokenizer, SamplingConfig(**spec["defaults"]), None, name)
    return pipe.to(device)


def _load_hf(folder: Path, dtype, device, trusted: bool = False) -> Pipeline:
    """A transformers image LM folder (``save_pretrained`` layout) as a pipeline with its official defaults
    (``trusted``: a Chameleon folder's ``vqgan.ckpt`` pickle may be unpickled fully)."""
    model, decoder, companions = _hf_family("build")({"model": str(folder), "trusted": trusted}, Path, dtype)
    pipe = Pipeline(model.family, model, decoder, model.default_sampling, None, Path(folder).name, companions)
    return pipe.to(device)


def load(name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         checkpoint: str | None = None, tokenizer_checkpoint: str | None = None, trusted: bool = False) -> Pipeline:
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
        return _load_official(name, dtype, device, checkpoint, tokenizer_checkpoint, trusted)
    path = Path(name)
    if path.is_dir() and (path / "pipeline.json").is_file():
        return load_pipeline_folder(path, dtype, device)
    from .models.hf.folders import hub_folder, is_hf_folder, is_hub_id  # no transformers import until needed

    if is_hf_folder(path) or (not path.exists() and is_hub_id(name)):
        given = [k for k, v in (("checkpoint", checkpoint), ("tokenizer_checkpoint", tokenizer_checkpoint)) if v]
        if given:
            raise ValueError(f"{', '.join(given)} apply to official names; a transformers folder loads its own "
                             "safetensors weights")
        return _load_hf(path if path.is_dir() else hub_folder(name), dtype, device, trusted)
    known = [n for n in zoo.shipped_names() if zoo.pipeline_kind(n)] + sorted(zoo.OFFICIAL)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.8)
    raise ValueError(
        f"unknown model {name!r}{'; closest: ' + ', '.join(close) if close else ''}: not a shipped demo ({', '.join(n for n in zoo.shipped_names() if zoo.pipeline_kind(n)) or 'none'}), "
        f"not an official name ({', '.join(sorted(zoo.OFFICIAL))}), not a folder with pipeline.json and not a "
        f"transformers folder or hub id of an adapted image LM (Janus, Emu3, Chameleon: Lumina-mGPT / Anole)"
    )
