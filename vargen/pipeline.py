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

from dataclasses import dataclass, fields
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from . import families
from .budget import Footprint, MemoryBudget, human_bytes, parse_bytes
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
        self._max_memory: int | None = None
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

    @property
    def max_memory(self) -> int | None:
        """Bytes a ``generate`` call may plan to use (None: 80 % of what the device has available when it starts);
        set it as ``8 * 2**30`` or ``"8GiB"`` (:mod:`vargen.budget`)."""
        return self._max_memory

    @max_memory.setter
    def max_memory(self, value) -> None:
        self._max_memory = None if value is None else parse_bytes(value)

    @torch.no_grad()
    def generate(self, cond, sampler: str | Any | None = None, seed: int | None = 0, decode: bool = True,
                 per_row_seeds: bool = False, compile: bool = False, **options) -> GenerationOutput:
        """``sampler``: a name (default: the family's, e.g. coupled ``sjd`` for LlamaGen), a
        ``"name:key=value"`` spec, or a sampler instance. ``per_row_seeds``: row ``i`` uses seed ``seed + i``,
        so a row's tokens do not depend on the batch it runs in. ``compile``: token samplers run their target
        step as one compiled graph (same tokens; see :meth:`vargen.samplers.loop.TokenSampler.sample`).

        Work and memory are bounded before anything runs (:mod:`vargen.budget`, ``max_memory``): a batch larger
        than what fits runs in chunks with ``per_row_seeds`` (the same images) and is refused without it; options
        that do not fit even one image are refused."""
        _check_flags(decode=decode, per_row_seeds=per_row_seeds)
        self.check_seed(seed)
        if per_row_seeds and seed is not None and seed + 1000 > MAX_SEED:
            raise ValueError(f"seed {seed} leaves no room for per-row seeds (at most {MAX_SEED - 1000})")
        call = self._prepare(sampler, compile, options)
        given, cond = cond, self.conditions(cond)
        rows, batch = self._fitting_rows(call, cond), _batch(cond)
        if batch <= rows:
            return self._run(call, cond, seed, per_row_seeds, decode)
        need = (f"a batch of {batch} images needs about {human_bytes(batch * call.footprint.per_row)} ({call.what}: "
                f"{human_bytes(call.footprint.per_row)} per image), more than this call may use; {rows} fit at once")
        if not per_row_seeds or not isinstance(given, (list, tuple, torch.Tensor)):
            raise ValueError(f"{need}: pass a list of conditions with per_row_seeds=True to run it in chunks (the same "
                             "images whatever the chunks), use generate_iter, or set max_memory")
        return _concat([self._run(call, self.conditions(given[i : i + rows]), (seed or 0) + i, True, decode)
                        for i in range(0, batch, rows)])

    def generate_iter(self, cond, sampler: str | Any | None = None, seed: int | None = 0, batch_size: int | None = None,
                      decode: bool = True, compile: bool = False, **options) -> Iterator[GenerationOutput]:
        """``generate(cond, per_row_seeds=True)`` in chunks of at most ``batch_size`` images (None, or more than fit
        in memory: as many as fit), each yielded as soon as it is done: image ``i`` of ``cond`` uses seed ``seed + i``
        (None: a random first seed; ``generate`` takes None as 0 there), so an image's random numbers do not depend
        on the chunking (its tokens neither, wherever the model's arithmetic does not change with the batch size; on
        some CPUs its last bit does) and memory stays flat for any count. Everything is checked when this is called,
        before the first chunk runs (conditions, sampler, options, memory); conditions are converted chunk by chunk."""
        _check_flags(decode=decode)
        if "per_row_seeds" in options:
            raise ValueError("generate_iter always seeds per image (image i uses seed + i): drop per_row_seeds")
        if torch.is_tensor(cond) and cond.dim() == 0:
            raise ValueError("generate_iter takes a sequence of conditions (a list or a tensor with a batch dimension), "
                             "got a 0-d tensor")
        if isinstance(cond, (str, int)) or not hasattr(cond, "__len__") or not hasattr(cond, "__getitem__"):
            raise ValueError(f"generate_iter takes a sequence of conditions (a list or a tensor), got {type(cond).__name__}")
        n = len(cond)
        if n == 0:
            raise ValueError("no conditions given: the list is empty")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if seed is None:
            seed = int(torch.randint(0, MAX_SEED - n, ()).item())
        self.check_seed(seed)
        if seed + n - 1 > MAX_SEED:
            raise ValueError(f"seed {seed} leaves no room for {n} per-image seeds (at most {MAX_SEED - n + 1})")
        call = self._prepare(sampler, compile, options)
        distinct = _distinct(cond)
        sample = self.conditions(distinct if distinct is not None else cond)  # every condition checked now
        size = min(batch_size or n, self._fitting_rows(call, sample), n)
        converted = None if distinct is not None or not torch.is_tensor(sample) else sample

        def chunks():
            for i in range(0, n, size):
                with torch.no_grad():
                    part = converted[i : i + size] if converted is not None else self.conditions(cond[i : i + size])
                    yield self._run(call, part, seed + i, True, decode)

        return chunks()

    def rows_that_fit(self, cond, sampler: str | Any | None = None, **options) -> int:
        """How many images ``generate(cond, sampler, **options)`` runs at once within the memory budget; every check
        ``generate`` makes before any work (``ValueError`` when not even one image fits), without running anything."""
        call = self._prepare(sampler, False, dict(options))
        distinct = _distinct(cond)
        return self._fitting_rows(call, self.conditions(distinct if distinct is not None else cond))

    def _prepare(self, sampler, compile: bool, options: dict) -> "_Call":
        """The sampler, member model, config and keywords of a call, every option checked."""
        _check_flags(compile=compile)
        if sampler == "":
            raise ValueError(f"sampler must be a name such as {self.default_sampler!r} or None (the default), got ''")
        sampler = self.default_sampler if sampler is None else sampler
        if isinstance(sampler, str) and ":" in sampler:
            spec = SamplerSpec.parse(sampler)
            twice = sorted(set(spec.options) & set(options)) + (["model"] if spec.member and "model" in options else [])
            if twice:
                raise ValueError(f"option {', '.join(map(repr, twice))} given twice: in the sampler spec {sampler!r} "
                                 "and as a keyword; give it once")
            sampler, options = spec.name, {**spec.options, **options, **({"model": spec.member} if spec.member else {})}
        what = _describe(sampler, options)
        model = self.member(options.pop("model", None))
        config, sampler_options = self.split_options(options)
        if isinstance(sampler, str):
            sampler = self.make_sampler(sampler, **sampler_options)
        else:
            self._check_instance(sampler)
            if sampler_options:
                raise ValueError(f"options {sorted(sampler_options)} given with a sampler instance")
        kw = {}
        if compile:
            from .samplers.loop import TokenSampler

            if not isinstance(sampler, TokenSampler):
                raise ValueError(f"compile=True applies to the token samplers (next-token models); "
                                 f"{type(sampler).__name__} has no compiled path")
            kw["compile"] = True
        return _Call(sampler, model, config, kw, what)

    def _check_instance(self, sampler) -> None:
        """A sampler given as an object: one with a ``sample`` method, and not a registered sampler of another
        family (a VAR sampler on a LlamaGen pipeline)."""
        if not callable(getattr(sampler, "sample", None)):
            raise ValueError(f"sampler must be a name, a 'name:key=value' spec or a sampler instance, "
                             f"got {type(sampler).__name__} {sampler!r}")
        mine = tuple(sampler_class(n) for n in self.family.samplers)
        foreign = [n for n in available_samplers() if n not in self.family.samplers
                   and type(sampler) is sampler_class(n)]
        if foreign and not isinstance(sampler, mine):
            raise ValueError(f"sampler {foreign[0]!r} ({type(sampler).__name__}) does not apply to a "
                             f"{self.kind.upper()} pipeline; use one of {', '.join(self.family.samplers)}")

    def _fitting_rows(self, call: "_Call", cond) -> int:
        """How many images of ``cond``'s kind fit the memory budget at once (a sampler without a ``footprint``:
        unbounded); ``ValueError`` naming the sampler's options when not one does."""
        if not hasattr(call.sampler, "footprint"):
            return 2**62
        if hasattr(call.sampler, "check"):
            call.sampler.check(call.model)
        call.footprint = call.sampler.footprint(call.model, cond, call.config)
        return MemoryBudget(self.device, self.max_memory).rows(call.footprint, call.what)

    def _run(self, call: "_Call", cond, seed: int | None, per_row_seeds: bool, decode: bool) -> GenerationOutput:
        """One sampling call over converted conditions that fit the budget."""
        sampler, model, config = call.sampler, call.model, call.config
        if per_row_seeds and not self.family.row_independent_seeds:
            return self._generate_row_by_row(cond, sampler, model, config, seed or 0, decode)
        if per_row_seeds:
            generator = [torch.Generator(self.device).manual_seed((seed or 0) + i) for i in range(_batch(cond))]
        else:
            generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        out = sampler.sample(model, cond, config, generator, **call.kw)
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
        if not isinstance(out, GenerationOutput):
            raise ValueError(f"decode takes a GenerationOutput or a tensor of tokens (generate(..., decode=False)), "
                             f"got {type(out).__name__}")
        _check_tokens(out, self)
        if self.family.decode is not None:  # e.g. video: clips of the context and the generated frames
            return self.family.decode(self, out)
        images = []
        for i in range(out.tokens.shape[0]):
            lat = out.latents[i : i + 1] if out.latents is not None else None
            tok = out.tokens[i : i + 1].to(self.tokenizer_device)
            images.append(self.family.decode_row(self, tok, lat).float())
        return to_pil(torch.cat(images))


@dataclass
class _Call:
    """A checked call: the sampler, member model, config, sampler keywords, its description for errors and (once
    measured) its footprint per image."""

    sampler: Any
    model: Any
    config: SamplingConfig
    kw: dict
    what: str
    footprint: Footprint | None = None


def _check_flags(**flags) -> None:
    """Switches such as ``decode=`` are True or False: a string like "no" would otherwise read as true."""
    for name, value in flags.items():
        if value not in (True, False) or not isinstance(value, (bool, int)):
            raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_tokens(out: GenerationOutput, pipe: Pipeline) -> None:
    """What ``decode`` is given when it holds no latents: a tensor with one row per image of the model's token count;
    integer codes of the codebook for a discrete model (``vocab_size``), [images, seq_len, token_embed_dim] numbers for
    a continuous one (MAR). Else torch's shape or index errors, or on a GPU a device assert."""
    if out.latents is not None:
        return
    tokens, model = out.tokens, pipe.model
    if not torch.is_tensor(tokens):
        raise ValueError(f"decode takes a GenerationOutput or a tensor of tokens, got tokens of type {type(tokens).__name__}")
    shape, vocab = tuple(tokens.shape), getattr(model, "vocab_size", None)
    discrete = isinstance(vocab, int)
    if tokens.dim() < 2 or not shape[0] or discrete == tokens.is_floating_point() or tokens.dtype == torch.bool:
        want = "an integer tensor [images, tokens]" if discrete else "a float tensor [images, tokens, channels]"
        raise ValueError(f"decode takes {want} from generate(..., decode=False), got a {tokens.dtype} tensor of "
                         f"shape {shape}")
    n = getattr(model, "num_tokens", None) if discrete else getattr(model, "seq_len", None)
    if pipe.family.decode is None and isinstance(n, int) and shape[1] != n:
        raise ValueError(f"decode takes {n} tokens per image for this model, got a tensor of shape {shape}")
    if discrete and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"decode takes token ids in 0..{vocab - 1}, got values in {int(tokens.min())}..{int(tokens.max())}")
    width = getattr(model, "token_embed_dim", None)
    if not discrete and isinstance(width, int) and (tokens.dim() != 3 or shape[2] != width):
        raise ValueError(f"decode takes [images, {n}, {width}] latents for this model, got a tensor of shape {shape}")


def _describe(sampler, options: dict) -> str:
    """``sjd:tree_width=1024`` -- the sampler as the user named it, for errors."""
    name = sampler if isinstance(sampler, str) else type(sampler).__name__
    given = ",".join(f"{k}={v}" for k, v in options.items() if k != "model" and not hasattr(v, "forward"))
    return f"{name}:{given}" if given else name


def _distinct(cond) -> list | None:
    """The distinct conditions of a list of hashable ones (class ids or names, prompts, scene seeds), in order; None
    for anything else (a tensor, token-id lists), which is checked as a whole."""
    if not isinstance(cond, (list, tuple)):
        return None
    try:
        return list({(type(c), c): c for c in cond}.values())  # 3 and 3.0, 1 and True are checked apart
    except TypeError:
        return None


def _concat(outputs: list[GenerationOutput]) -> GenerationOutput:
    """One output of chunks run one after the other."""
    first = outputs[0]
    cat = lambda name: None if getattr(first, name) is None else torch.cat([getattr(o, name) for o in outputs])  # noqa: E731
    join = lambda name: None if getattr(first, name) is None else [x for o in outputs for x in getattr(o, name)]  # noqa: E731
    return GenerationOutput(tokens=cat("tokens"), stats=Stats.concat([o.stats for o in outputs]),
                            images=join("images"), latents=cat("latents"), videos=join("videos"), context=cat("context"))


def _batch(cond) -> int:
    """Rows of a condition: class ids (a tensor) or a batched condition object (``PromptTokens``, ...)."""
    return cond.shape[0] if torch.is_tensor(cond) else cond.batch


def load(name_or_path, **kwargs) -> Pipeline:
    """:func:`vargen.loading.load`: a demo or official name, a pipeline folder, a transformers folder or hub id."""
    from .loading import load as _load

    return _load(name_or_path, **kwargs)
