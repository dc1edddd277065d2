"""One request of the app: a model, a condition, a sampler with options -> the baseline and the sampler run with
the same seed, and what to say about them. No gradio here: the web page and the API both call :func:`prepare`,
:func:`run` and :func:`verdict`."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

from .. import catalog
from ..pipeline import Pipeline, load
from ..samplers import available_samplers, sampler_options
from ..samplers.base import GenerationOutput, SamplingConfig
from ..samplers.spec import Option, SamplerSpec

DEFAULT_MODEL = "cifar10-llamagen"
MAX_BATCH = 8
CONFIG_NAMES = ("cfg_scale", "temperature", "top_k", "top_p")
# per-request limits on top of the options' own ranges (one request must not hold the server for minutes)
REQUEST_LIMITS = {"num_iter": 64, "max_tries": 200, "sample_top": 256, "k": 1024, "group_size": 256, "num_draft": 64}


# ----------------------------------------------------------------------------------------------
# Sampler options: every option that can be typed in, one control each
# ----------------------------------------------------------------------------------------------


def option_catalogue() -> dict[str, Option]:
    """Every option a registered sampler (with any acceptance rule) declares that can be typed in, by name (the
    first declaration of a name gives its control)."""
    from ..samplers.acceptance import available_rules

    out: dict[str, Option] = {}
    for name in available_samplers():
        rules = [None] + (available_rules() if "acceptance" in sampler_options(name) else [])
        for rule in rules:
            for opt in sampler_options(name, rule).values():
                if opt.text and opt.kind != "object" and opt.name not in out:
                    out[opt.name] = opt
    return out


CATALOGUE = option_catalogue()
OPTION_NAMES = tuple(CATALOGUE)


def default_spec(pipe: Pipeline) -> SamplerSpec:
    """The sampler the app compares with the baseline at first: the pipeline's default (the CLI's), or -- where
    that is the baseline itself (VAR, MAR) -- the first other sampler that applies."""
    spec = SamplerSpec.parse(pipe.default_sampler)
    if spec.name != pipe.baseline_sampler:
        return spec
    others = [s for s in pipe.applicable_samplers() if s != pipe.baseline_sampler]
    return SamplerSpec(others[0]) if others else spec


def shown_options(pipe: Pipeline | None, sampler: str, acceptance: str | None = None) -> dict[str, Any]:
    """The typed-in options ``sampler`` takes, with the values it runs with on ``pipe``: its declared defaults under
    the pipeline's own, and for the pipeline's default sampler the options of its spec (coupled SJD's)."""
    if pipe is None:
        values = {k: o.default for k, o in sampler_options(sampler, acceptance).items()}
    else:
        values = pipe.sampler_defaults(sampler, acceptance)
        spec = default_spec(pipe)
        if spec.name == sampler:
            values.update({k: v for k, v in spec.options.items() if k in values})
    return {k: v for k, v in values.items() if k in CATALOGUE}


def parse_sampler(text: str | None, pipe: Pipeline) -> SamplerSpec:
    """A sampler name or spec ``name:key=value``; empty: the app's default for ``pipe``."""
    text = str(text or "").strip()
    if not text:
        return default_spec(pipe)
    spec = SamplerSpec.parse(text)
    if spec.name not in pipe.applicable_samplers():
        raise ValueError(f"sampler {spec.name!r} does not apply to this {catalog.family_label(pipe.kind)} model; "
                         f"choose one of {', '.join(pipe.applicable_samplers())}")
    return spec


def collect_options(sampler: str, values: dict[str, Any], extra: str | None = None) -> dict[str, Any]:
    """The sampler's options from the controls (only those it takes; empty controls are left out), then ``extra``
    in the option grammar (``key=value,key=value``), which wins. Everything is typed and range-checked here."""
    declared = sampler_options(sampler, values.get("acceptance") or None)
    opts = {}
    for name, value in values.items():
        value = control_value(name, value)
        if name in declared and value is not None and value != "":
            opts[name] = declared[name].convert(value, sampler)
    text = (extra or "").replace("\n", ",").strip().strip(",")
    if text:
        opts.update(SamplerSpec.parse(f"{sampler}:{text}").options)
    return within_limits(opts)


def control_value(name: str, value):
    """A control's value as the sampler option: text boxes hold text (empty: not given); number boxes may hand an
    integer over as 8.0."""
    kind = CATALOGUE[name].kind if name in CATALOGUE else None
    if isinstance(value, str) and kind != "str":
        return value.strip() or None
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def within_limits(opts: dict[str, Any]) -> dict[str, Any]:
    for name, limit in REQUEST_LIMITS.items():
        if isinstance(opts.get(name), (int, float)) and opts[name] > limit:
            raise ValueError(f"{name}={opts[name]} is over this app's per-request limit ({limit})")
    return opts


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Files:
    """Local checkpoint files of an official name (empty: the hub cache, or a download)."""

    checkpoint: str = ""
    tokenizer_checkpoint: str = ""
    trusted: bool = False

    def given(self) -> bool:
        return bool(self.checkpoint.strip() or self.tokenizer_checkpoint.strip())


def files_hint(name: str) -> str:
    """How to get an official model's files, in the app's words (its path boxes, not the CLI's flags)."""
    off = catalog.official(name)
    links = ", ".join(f"{file} ({url})" for (_, file), url in zip(off.downloads, off.urls()))
    folder = " (the folder holding encoder.jit and decoder.jit)" if len(off.downloads) > 2 else ""
    return (f"{name} needs {links}. Download them, give the model file under 'checkpoint' and the tokenizer{folder} "
            f"under 'tokenizer checkpoint'; TorchScript .jit files also need 'trust these files'.")


class ModelStore:
    """Injected pipelines plus models loaded on demand (zoo names, official names, local folders), a few kept warm."""

    def __init__(self, pipelines: dict[str, Pipeline] | None = None, extra_names: Sequence[str] = (),
                 device: str = "cpu", keep: int = 2):
        self.fixed = dict(pipelines or {})
        self.extra_names = [n for n in extra_names if n not in self.fixed]
        self.device = device
        self.keep = keep
        self.loaded: OrderedDict[tuple, Pipeline] = OrderedDict()
        self.lock = threading.Lock()

    def names(self) -> list[str]:
        officials = [o.name for o in catalog.officials()]
        return list(dict.fromkeys([*self.fixed, *self.extra_names, *catalog.demo_names(), *officials]))

    def default_name(self) -> str | None:
        if self.fixed or self.extra_names:
            return self.names()[0]
        return DEFAULT_MODEL if DEFAULT_MODEL in self.names() else next(iter(self.names()), None)

    def ready(self, name: str) -> bool:
        """Loads without a download or files to give: injected, shipped, a local folder, or cached."""
        official = catalog.official(name)
        return official.cached if official is not None else True

    def get(self, name: str | None, files: Files = Files()) -> Pipeline:
        name = (name or "").strip()
        if not name:
            raise ValueError("choose a model: a demo name, an official name or a local folder with pipeline.json")
        if name in self.fixed:
            return self.fixed[name]
        key = (name, files)
        with self.lock:
            if key not in self.loaded:
                self.loaded[key] = self._load(name, files)
                while len(self.loaded) > self.keep:
                    self.loaded.popitem(last=False)
            self.loaded.move_to_end(key)
            return self.loaded[key]

    def _load(self, name: str, files: Files) -> Pipeline:
        if catalog.official(name) is None:
            if files.given():
                raise ValueError(f"checkpoint paths apply to official names; {name} loads its own files")
            return load(name, device=self.device)
        try:
            return load(name, device=self.device, checkpoint=files.checkpoint.strip() or None,
                        tokenizer_checkpoint=files.tokenizer_checkpoint.strip() or None, trusted=files.trusted)
        except FileNotFoundError as err:
            missing = str(err).split(". Download")[0]  # the loader's own advice names CLI flags the app has not got
            raise ValueError(f"{missing}. {files_hint(name)}") from None


# ----------------------------------------------------------------------------------------------
# Conditions: a class, a prompt or a scene, whatever the pipeline takes
# ----------------------------------------------------------------------------------------------


def condition_kind(pipe: Pipeline) -> str:
    """``"class"``, ``"prompt"``, ``"scene"`` (procedural video demos) or ``"context"`` (a video to continue)."""
    if pipe.video:
        return "scene" if pipe.scenes is not None else "context"
    return "prompt" if pipe.takes_prompts else "class"


def condition_choices(pipe: Pipeline) -> list[tuple[str, str]]:
    """Dropdown choices (label, value) for class and scene pipelines."""
    if condition_kind(pipe) == "scene":
        return [(f"scene {i}", str(i)) for i in range(8)]
    names = pipe.class_names or [str(i) for i in range(pipe.num_classes)]
    return [(f"{i}: {n}" if n != str(i) else n, str(i)) for i, n in enumerate(names)]


def resolve_condition(pipe: Pipeline, value) -> int | str:
    """What ``pipe.generate`` takes for one row: a class id (from an id, a name or a label ``"3: cat"``), a scene
    seed or a prompt. Bad input is a ``ValueError`` before any work."""
    text = str(value).strip() if value is not None else ""
    kind = condition_kind(pipe)
    if kind == "context":
        raise ValueError(f"{pipe.name} continues a context video, which this app does not take: run "
                         f"`vargen generate --model {pipe.name} --context clip.gif`")
    if kind == "prompt":
        if not text:
            raise ValueError("write a prompt")
        return text
    if ":" in text and text.split(":", 1)[0].strip().lstrip("-").isdigit():
        text = text.split(":", 1)[0].strip()
    if kind == "scene":
        if not text.lstrip("-").isdigit():
            raise ValueError(f"a scene is an integer seed, got {text!r}")
        pipe.check_seed(int(text))
        return int(text)
    if not text:
        raise ValueError("choose a class")
    return pipe.class_id(text)


def describe(pipe: Pipeline) -> str:
    takes = {"class": f"{pipe.num_classes} classes", "prompt": "text prompts",
             "scene": "procedural scenes to continue", "context": "a context video"}[condition_kind(pipe)]
    return (f"{catalog.family_label(pipe.kind)}, {takes}; baseline `{pipe.baseline_sampler}`, default "
            f"`{pipe.default_sampler}`; device {pipe.device}")


# ----------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------


@dataclass
class Request:
    pipe: Pipeline
    model: str
    condition: int | str
    sampler: str
    options: dict[str, Any]
    config: dict[str, Any]
    seed: int
    batch: int


@dataclass
class Run:
    """One sampler's result on a request."""

    sampler: str
    options: dict[str, Any]
    output: GenerationOutput = field(repr=False)

    @property
    def stats(self):
        return self.output.stats


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def api_text(value, name: str) -> str:
    """A text parameter of the keyword API as sent (JSON): a string, null for empty; anything else is a
    ``ValueError`` naming the parameter."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {_shown(value)}")
    return value


def api_flag(value, name: str) -> bool:
    """A true / false parameter of the keyword API (null: false)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_shown(value)}")
    return value


def api_condition(value):
    """The ``condition`` parameter: a class id or name, a prompt or a scene seed (null: the default)."""
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return "" if value is None else value
    raise ValueError(f"condition must be a class id or name, a prompt or a scene seed, got {_shown(value)}")


def _integer(value, name: str) -> int:
    if value is None or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{name} must be an integer, got {value}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def prepare(pipe: Pipeline, model: str, condition, sampler: SamplerSpec, options: dict[str, Any],
            config: dict[str, Any], seed, batch_size) -> Request:
    """Check everything a request can get wrong (condition, batch, seed, config, options against the model) before
    any work."""
    batch = _integer(batch_size, "batch size")
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch size must be an integer from 1 to {MAX_BATCH}, got {batch_size}")
    seed = _integer(seed, "seed")
    pipe.check_seed(seed)
    cond = resolve_condition(pipe, condition)
    config = {k: v for k, v in config.items() if v is not None and v != ""}
    if "top_k" in config:
        config["top_k"] = _integer(config["top_k"], "top_k")
    config = {k: v for k, v in config.items() if k in pipe.family.config_fields}
    cfg, _ = pipe.split_options(config)
    cfg.validate(vocab_size=getattr(pipe.model, "vocab_size", None), conditional=True)
    options = within_limits({**sampler.options, **options})
    pipe.check_sampler(sampler.name, **options)  # bad options and sizes past the model fail here
    pipe.rows_that_fit([cond], sampler.name, **options, **config)  # and options too large for memory (vargen.budget)
    return Request(pipe, model, cond, sampler.name, options, config, seed, batch)


def run(request: Request, sampler: str | None = None) -> Run:
    """The request's sampler (or ``sampler``, e.g. the baseline, with its own defaults)."""
    name = sampler or request.sampler
    options = request.options if sampler is None else {}
    out = request.pipe.generate([request.condition] * request.batch, sampler=name, seed=request.seed,
                                per_row_seeds=True, **request.config, **options)
    return Run(name, options, out)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def verdict(request: Request, base: Run, fast: Run) -> str:
    """A plain sentence: how many forward passes and how much wall-clock time the sampler saved, and -- when it was
    slower -- why (the device, the batch, the window, few accepted tokens)."""
    b, f = base.stats, fast.stats
    passes = (f"{f.forward_passes} forward passes where `{base.sampler}` took {b.forward_passes} "
              f"({_ratio(b.forward_passes, f.forward_passes)} fewer)")
    clock = f"{f.seconds:.2f} s against {b.seconds:.2f} s"
    if f.seconds <= b.seconds:
        return f"`{fast.sampler}` took {passes} and was **{_ratio(b.seconds, f.seconds)} faster** ({clock})."
    why = " ".join(slow_reasons(request, fast))
    return f"`{fast.sampler}` took {passes} but was **{_ratio(f.seconds, b.seconds)} slower** ({clock}). {why}"


def slow_reasons(request: Request, fast: Run) -> list[str]:
    window = fast.options.get("window", request.pipe.sampler_defaults(fast.sampler).get("window"))
    reasons = []
    if request.pipe.device.type == "cpu":
        reasons.append("On a CPU a forward pass over n tokens costs about n one-token passes, so fewer passes save "
                       "little time; on a GPU the extra tokens of a pass come almost free.")
    if isinstance(window, int) and window > 8:
        reasons.append(f"A smaller window (window=4 or 8 instead of {window}) costs less per pass here.")
    if request.batch > 1:
        reasons.append(f"At batch {request.batch} each step waits for the row that accepts the fewest tokens; "
                       "batch 1 shows the speed-up best.")
    if fast.stats.tokens_per_forward and fast.stats.tokens_per_forward < 1.5:
        reasons.append(f"It committed only {fast.stats.tokens_per_forward:.2f} tokens per forward pass, so the "
                       "drafts cost more than they saved.")
    return reasons or ["The demo models are tiny, so the fixed cost of each step (Python, kernel launches) "
                       "outweighs the passes saved."]


def stats_table(base: Run, fast: Run | None) -> str:
    """Markdown: forward passes, tokens per forward, mean accepted, seconds, and the ratios."""
    b = base.stats
    head = f"| | {base.sampler} (baseline) |"

    def num(x):  # None: the family has no such figure
        return "–" if x is None else f"{x:.2f}"

    rows = [("forward passes", str(b.forward_passes)), ("tokens / forward", num(b.tokens_per_forward)),
            ("mean accepted / step", num(b.mean_accepted)), ("seconds", f"{b.seconds:.2f}")]
    if fast is None:
        return "\n".join([head, "|---|---:|"] + [f"| {k} | {v} |" for k, v in rows])
    f = fast.stats
    values = [str(f.forward_passes), num(f.tokens_per_forward), num(f.mean_accepted), f"{f.seconds:.2f}"]
    speed = [_ratio(b.forward_passes, f.forward_passes), "", "", _ratio(b.seconds, f.seconds)]
    lines = [head + f" {fast.sampler} | speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v} | {fv} | {s} |" for (k, v), fv, s in zip(rows, values, speed)]
    if f.relaxed is not None and bool(f.relaxed.any()):
        lines.append(f"\n{int(f.relaxed.sum())} tokens were accepted by relaxation (white dots on the map); "
                     f"TV bound per image {f.mean_tv_bound:.3f}.")
    return "\n".join(lines)


def summary(run: Run) -> dict[str, Any]:
    out = {"sampler": run.sampler, "options": run.options, **run.stats.summary()}
    if run.stats.relaxed is not None:
        out["relaxed_tokens"] = int(run.stats.relaxed.sum())
    return out


def stats_json(request: Request, base: Run, fast: Run | None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": request.model, "condition": request.condition, "seed": request.seed,
                           "batch_size": request.batch, "baseline": summary(base)}
    if fast is not None:
        fs, bs = fast.stats, base.stats
        out["accelerated"] = summary(fast)
        out["speedup_forward_passes"] = round(bs.forward_passes / fs.forward_passes, 4) if fs.forward_passes else None
        out["speedup_seconds"] = round(bs.seconds / fs.seconds, 4) if fs.seconds > 0 else None
    return out


def model_defaults(pipe: Pipeline) -> SamplingConfig:
    return SamplingConfig().with_defaults(pipe.defaults)
