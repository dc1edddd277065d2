"""``vargen.load(name_or_path) -> Pipeline``: tokenizer + model + sampling defaults -> images and stats.

One :class:`Pipeline` class serves every model family; what differs per family is its
:class:`~vargen.families.FamilySpec` (``vargen/families/<kind>.py``): how a ``pipeline.json`` folder is loaded, how
outputs are decoded, conditions, the default and baseline samplers and the ``SamplingConfig`` fields the family
uses. The samplers that apply follow from what samplers declare (their model protocol), and a sampler's companion
option (``draft``, ``refiner``) is filled from the pipeline's companion of that name.

Companions are loaded once per pipeline (on first use), and samplers -- with their rule caches such as
LANTERN's neighbour table -- are built once per (sampler, options) and reused across ``generate`` calls.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Sequence

import torch
from PIL import Image

from . import families
from .families import FamilySpec, families_taking  # noqa: F401  (families_taking: re-exported)
from .families.classes import class_id
from .images import to_pil
from .samplers import available_samplers, get_sampler, sampler_class, sampler_options, unknown_sampler_error
from .samplers.base import GenerationOutput, SamplingConfig, Stats
from .samplers.spec import SamplerSpec

CONFIG_FIELDS = tuple(f.name for f in fields(SamplingConfig))
MAX_SEED = 2**63 - 1


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
        self.family = families.family(family) if isinstance(family, str) else family
        self.model = model
        self.tokenizer = tokenizer
        self.defaults = defaults or SamplingConfig()
        self.class_names = list(class_names) if class_names else None
        self.name = name
        self.sampler_options = dict(sampler_options or {})  # per-sampler defaults, e.g. {"code": {"draft_steps": 4}}
        self.benchmark = list(benchmark)  # the sampler specs the benchmark report measures on this model
        if scenes not in (None, *self.family.scene_sources):
            known = ", ".join(self.family.scene_sources) or "none"
            raise ValueError(f"{name}: unknown scenes source {scenes!r} ({known})")
        self.scenes = scenes  # video demos: integer conditions are seeds of this procedural clip generator
        self._companions = dict(companions or {})
        self._samplers: dict = {}
        self._placement: tuple = (None, None)
        used = self.family.config_fields
        foreign = [f for f in CONFIG_FIELDS if getattr(self.defaults, f) is not None and f not in used]
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

    def applicable_samplers(self) -> tuple[str, ...]:
        return self.family.samplers

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer_device(self) -> torch.device:
        weight = next(self.tokenizer.parameters(), None)  # a tokenizer without weights runs where the model does
        return self.device if weight is None else weight.device

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
        return class_id(self, c)

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
        link = getattr(sampler_class(name), "COMPANION", None)  # the option a pipeline's companion fills in
        if link is not None and link not in options:
            value = self.companion(link)
            if value is not None:
                options[link] = value
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
        return self.family.takes_prompts

    @property
    def video(self) -> bool:
        return self.family.video

    def conditions(self, cond):
        """The model's condition for ``cond`` (class names / ids; prompts; scenes or context video), checked."""
        return self.family.conditions(self, cond)

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
            twice = sorted(set(spec.options) & set(options)) + (["model"] if spec.member and "model" in options else [])
            if twice:
                raise ValueError(f"option {', '.join(map(repr, twice))} given twice: in the sampler spec {sampler!r} "
                                 "and as a keyword; give it once")
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
                raise ValueError(f"compile=True applies to the token samplers (next-token models); "
                                 f"{type(sampler).__name__} has no compiled path")
            kw["compile"] = True
        if per_row_seeds and not self.family.row_independent_seeds:
            return self._generate_row_by_row(cond, sampler, model, config, seed or 0, decode)
        if per_row_seeds:
            generator = [torch.Generator(self.device).manual_seed((seed or 0) + i) for i in range(_batch(cond))]
        else:
            generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        out = sampler.sample(model, cond, config, generator, **kw)
        if self.family.context is not None:  # what precedes the generated tokens (video: the context frames)
            out.context = self.family.context(cond)
        if decode and self.tokenizer is not None:
            out.images = self.decode(out)
        return out

    def _generate_row_by_row(self, cond, sampler, model, config, seed: int, decode: bool) -> GenerationOutput:
        """For samplers that draw from one generator per call: row i alone with seed + i."""
        rows = [sampler.sample(model, cond[i : i + 1], config, torch.Generator(self.device).manual_seed(seed + i))
                for i in range(cond.shape[0])]
        latents = torch.cat([r.latents for r in rows]) if rows[0].latents is not None else None
        out = GenerationOutput(tokens=torch.cat([r.tokens for r in rows]), stats=Stats.concat([r.stats for r in rows]),
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
        if self.family.decode is not None:  # e.g. video: clips of the context and the generated frames
            return self.family.decode(self, out)
        images = []
        for i in range(out.tokens.shape[0]):
            lat = out.latents[i : i + 1] if out.latents is not None else None
            tok = out.tokens[i : i + 1].to(self.tokenizer_device)
            images.append(self.family.decode_row(self, tok, lat).float())
        return to_pil(torch.cat(images))


def _batch(cond) -> int:
    """Rows of a condition: class ids (a tensor) or a batched condition object (``PromptTokens``, ...)."""
    return cond.shape[0] if torch.is_tensor(cond) else cond.batch


def load(name_or_path, **kwargs) -> Pipeline:
    """:func:`vargen.loading.load`: a demo or official name, a pipeline folder, a transformers folder or hub id."""
    from .loading import load as _load

    return _load(name_or_path, **kwargs)
