"""vargen demo: the AR baseline and an accelerated sampler side by side, with the acceptance map.

    vargen app                      # http://127.0.0.1:7860, the shipped demo models, CPU
    python app/app.py --port 8000   # the same without the vargen entry point

One click runs plain AR and the chosen sampler with the same seed and shows both results, their
forward passes, tokens per forward, seconds and the speed-up, and the acceptance map: the token grid
coloured by the forward pass that committed each token, so one sees where speculative decoding helps.

The sampler options are discovered from ``available_samplers()`` and the samplers' own signatures:
known options get a control and are shown only for samplers that take them; anything else goes
through the "more options" box as ``key=value`` pairs.

Tests and other programs can inject ready pipelines: ``build_app({"tiny": pipeline})``.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from vargen import zoo
from vargen.cli import parse_value
from vargen.pipeline import Pipeline, image_grid, load
from vargen.samplers import acceptance as acceptance_rules
from vargen.samplers import available_samplers, get_sampler
from vargen.samplers.base import GenerationOutput, SamplingConfig

log = logging.getLogger("vargen.app")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
BASELINE = "ar"
DEFAULT_SAMPLER = "sjd"
DEFAULT_MODEL = "cifar10-llamagen"
MAX_BATCH = 8
MIN_IMAGE_SIDE = 192  # small demo images are enlarged (nearest neighbour) to at least this size


# ----------------------------------------------------------------------------------------------
# Sampler options: discovered from the samplers, with controls for the ones we know
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionField:
    """A sampler option that gets its own control (shown only when the sampler takes it)."""

    name: str
    label: str
    kind: str  # "int" | "float" | "bool" | "choice"
    default: Any
    info: str = ""
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None


OPTION_FIELDS: tuple[OptionField, ...] = (
    OptionField("window", "window W", "int", 16, "tokens fed per forward: the last committed token + W-1 drafts",
                1, 64, 1),
    OptionField("init", "draft init", "choice", "random", "how fresh drafts are made"),
    OptionField("coupled", "coupled drafts (MC-SJD)", "bool", False,
                "keep a re-drafted token with the maximal-coupling probability"),
    OptionField("acceptance", "acceptance rule", "choice", "exact",
                "exact is lossless; relaxed rules accept more drafts and change the distribution"),
    OptionField("sample_top", "neighbour top-k", "int", 32, "candidates for the *_sample inits"),
    OptionField("k", "neighbourhood size k", "int", 10, "relaxed acceptance: tokens counted as neighbours"),
    OptionField("delta", "relaxation budget δ", "float", 0.1, "relaxed acceptance: total-variation budget",
                0.0, 1.0, 0.01),
    OptionField("draft_steps", "draft steps", "int", 8, "CoDe: scales drawn by the drafter"),
)
FIELD_NAMES = tuple(f.name for f in OPTION_FIELDS)


def rule_names() -> list[str]:
    """Registered acceptance rules (``exact`` first)."""
    listing = getattr(acceptance_rules, "available_rules", None)
    names = list(listing()) if callable(listing) else sorted(acceptance_rules._RULES)
    return sorted(names, key=lambda n: (n != "exact", n))


def option_choices(name: str) -> list[str]:
    if name == "init":
        from vargen.samplers.proposers.jacobi import INITS

        return list(INITS)
    if name == "acceptance":
        return rule_names()
    return []


def _init_defaults(obj) -> dict[str, Any]:
    """Keyword parameters of ``type(obj).__init__`` with the values ``obj`` was built with (when it keeps them)."""
    params = inspect.signature(type(obj).__init__).parameters
    out = {}
    for name, p in params.items():
        if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = None if p.default is p.empty else p.default
        out[name] = getattr(obj, name, default)
    return out


def _takes_extra_keywords(obj) -> bool:
    params = inspect.signature(type(obj).__init__).parameters.values()
    return any(p.kind == p.VAR_KEYWORD for p in params)


def sampler_defaults(sampler: str, acceptance: str | None = None) -> dict[str, Any]:
    """The options ``sampler`` takes, with their defaults: its own keywords, and -- for samplers that pass
    extra keywords to an acceptance rule -- the options of that rule (``acceptance`` or the preset one)."""
    try:
        instance = get_sampler(sampler)
    except Exception:  # a sampler that cannot be built without arguments: only "more options" apply
        return {}
    out = _init_defaults(instance)
    rule = getattr(instance, "rule", None)
    if rule is not None and "acceptance" in out:
        out["acceptance"] = getattr(rule, "name", out.get("acceptance"))
        if _takes_extra_keywords(instance):
            rule = acceptance_rules.get_rule(acceptance) if acceptance else rule
            out.update({k: v for k, v in _init_defaults(rule).items() if k not in out})
    return out


def parse_extra(text: str | None) -> dict[str, Any]:
    """``"key=value, key=value"`` (commas or new lines) -> options; numbers and booleans are converted."""
    out = {}
    for item in (text or "").replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"more options: expected key=value, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        if not key.isidentifier():
            raise ValueError(f"more options: {key!r} is not an option name")
        out[key] = parse_value(value)
    return out


def _as_int(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def collect_options(sampler: str, values: dict[str, Any], extra: str | None = None) -> dict[str, Any]:
    """The keyword options for ``get_sampler(sampler, ...)``: the controls this sampler (and its rule)
    takes, then the "more options" pairs, which win and may name anything."""
    accepted = sampler_defaults(sampler, values.get("acceptance"))
    kinds = {f.name: f.kind for f in OPTION_FIELDS}
    opts = {}
    for name, value in values.items():
        if name in accepted and value is not None:
            opts[name] = _as_int(value) if kinds.get(name) == "int" else value
    opts.update(parse_extra(extra))
    return opts


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class ModelStore:
    """Injected pipelines plus models loaded on demand (zoo names or local folders), a few kept warm."""

    def __init__(self, pipelines: dict[str, Pipeline] | None = None, extra_names: Sequence[str] = (),
                 device: str = "cpu", keep: int = 2):
        self.fixed = dict(pipelines or {})
        self.extra_names = [n for n in extra_names if n not in self.fixed]
        self.device = device
        self.keep = keep
        self.loaded: OrderedDict[str, Pipeline] = OrderedDict()
        self.lock = threading.Lock()

    def names(self) -> list[str]:
        # token-model pipelines only: the app's acceptance maps and samplers are LlamaGen's
        token_models = [n for n in zoo.shipped_names() if zoo.pipeline_kind(n) == "llamagen"] + sorted(zoo.OFFICIAL)
        listed = list(self.fixed) + self.extra_names + token_models
        return list(dict.fromkeys(listed))

    def default_name(self) -> str | None:
        names = self.names()
        if self.fixed or self.extra_names:
            return names[0]
        if DEFAULT_MODEL in names:
            return DEFAULT_MODEL
        shipped = zoo.shipped_names()
        return shipped[0] if shipped else (names[0] if names else None)

    def get(self, name: str | None) -> Pipeline:
        name = (name or "").strip()
        if not name:
            raise ValueError("choose a model: a zoo name or a local folder with pipeline.json")
        if name in self.fixed:
            return self.fixed[name]
        with self.lock:
            if name not in self.loaded:
                self.loaded[name] = load(name, device=self.device)
                while len(self.loaded) > self.keep:
                    self.loaded.popitem(last=False)
            self.loaded.move_to_end(name)
            return self.loaded[name]


def num_classes(pipe: Pipeline) -> int:
    if pipe.class_names:
        return len(pipe.class_names)
    return int(getattr(pipe.model.config, "num_classes", 0) or getattr(pipe.model, "num_classes", 0))


def class_choices(pipe: Pipeline) -> list[tuple[str, str]]:
    names = pipe.class_names or [str(i) for i in range(num_classes(pipe))]
    return [(f"{i}: {n}" if n != str(i) else n, str(i)) for i, n in enumerate(names)]


def resolve_class(pipe: Pipeline, label) -> int:
    """A class id from an id, a name, or a dropdown label ``"3: cat"``; out of range is a ``ValueError``."""
    text = str(label).strip() if label is not None else ""
    if not text:
        raise ValueError("choose a class")
    if ":" in text and text.split(":", 1)[0].strip().lstrip("-").isdigit():
        text = text.split(":", 1)[0].strip()
    n = num_classes(pipe)
    if text.lstrip("-").isdigit():
        cid = int(text)
    else:
        cid = pipe.class_id(text)
    if not 0 <= cid < n:
        raise ValueError(f"class {cid} is out of range: this model has {n} classes (0..{n - 1})")
    return cid


def model_defaults(pipe: Pipeline) -> SamplingConfig:
    return SamplingConfig().with_defaults(pipe.defaults)


def describe(pipe: Pipeline) -> str:
    t, h, w = pipe.model.grid
    frames = f"{t} x " if t > 1 else ""
    return (f"{frames}{h} x {w} tokens, vocabulary {pipe.model.vocab_size}, {num_classes(pipe)} classes, "
            f"device {pipe.device}")


# ----------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One sampler's result on a request."""

    sampler: str
    options: dict[str, Any]
    output: GenerationOutput


def build_sampler(name: str, options: dict[str, Any]):
    if name not in available_samplers():
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(available_samplers())}")
    try:
        return get_sampler(name, **options)
    except TypeError as err:  # an option the sampler does not take
        raise ValueError(f"{name}: {err}") from None


def check_request(pipe: Pipeline, config: dict[str, Any], batch_size, seed) -> tuple[int, int, SamplingConfig]:
    """Validate what does not depend on the sampler; raises ``ValueError`` before any work."""
    if batch_size is None or not 1 <= int(batch_size) <= MAX_BATCH:
        raise ValueError(f"batch size must be between 1 and {MAX_BATCH}, got {batch_size}")
    if seed is None or int(seed) < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed}")
    cfg, _ = pipe.split_options({k: v for k, v in config.items() if v is not None})
    cfg.validate(vocab_size=pipe.model.vocab_size, conditional=getattr(pipe.model, "conditional", True))
    return int(batch_size), int(seed), cfg


def run_sampler(pipe: Pipeline, name: str, sampler, class_id: int, batch: int, seed: int,
                config: dict[str, Any], options: dict[str, Any]) -> Run:
    try:
        out = pipe.generate([class_id] * batch, sampler=sampler, seed=seed, per_row_seeds=True,
                            **{k: v for k, v in config.items() if v is not None})
    except AttributeError as err:  # a sampler for another model family (VAR, MAR) on this model
        log.warning("%s on %s: %s", name, type(pipe.model).__name__, err)
        raise ValueError(f"sampler {name!r} does not work with this model ({type(pipe.model).__name__}): "
                         f"it needs a different model family") from None
    return Run(name, options, out)


# ----------------------------------------------------------------------------------------------
# Rendering: images, the acceptance map, the statistics
# ----------------------------------------------------------------------------------------------

# viridis at 9 stops: early passes dark blue, late passes yellow
_PALETTE = [(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142), (31, 158, 137),
            (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37)]


def colour(x: float) -> tuple[int, int, int]:
    """The palette at ``x`` in [0, 1], linearly interpolated."""
    x = min(max(x, 0.0), 1.0) * (len(_PALETTE) - 1)
    i = min(int(x), len(_PALETTE) - 2)
    t = x - i
    a, b = _PALETTE[i], _PALETTE[i + 1]
    return tuple(round(a[c] + t * (b[c] - a[c])) for c in range(3))


def enlarge(image: Image.Image, min_side: int = MIN_IMAGE_SIDE) -> Image.Image:
    factor = max(1, -(-min_side // min(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def acceptance_map(token_step: torch.Tensor, width: int, relaxed: torch.Tensor | None = None,
                   cell: int = 12) -> Image.Image:
    """One row's token grid coloured by the forward pass that committed each token.

    Tokens committed by the same pass form one region (no border between them); a white dot marks a
    token accepted only by a relaxed rule.
    """
    steps = token_step.detach().cpu().long().view(-1, width)
    flags = relaxed.detach().cpu().bool().view(-1, width) if relaxed is not None else None
    rows, cols = steps.shape
    first, last = int(steps.min()), int(steps.max())
    span = max(last - first, 1)
    img = Image.new("RGB", (cols * cell + 1, rows * cell + 1), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r in range(rows):
        for c in range(cols):
            s = int(steps[r, c])
            x0, y0 = c * cell, r * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=colour((s - first) / span))
            if c == 0 or int(steps[r, c - 1]) != s:
                draw.line([x0, y0, x0, y0 + cell], fill=(255, 255, 255))
            if r == 0 or int(steps[r - 1, c]) != s:
                draw.line([x0, y0, x0 + cell, y0], fill=(255, 255, 255))
            if flags is not None and flags[r, c]:
                m, rad = cell // 2, max(1, cell // 5)
                draw.ellipse([x0 + m - rad, y0 + m - rad, x0 + m + rad, y0 + m + rad], fill=(255, 255, 255))
    draw.line([0, rows * cell, cols * cell, rows * cell], fill=(255, 255, 255))
    draw.line([cols * cell, 0, cols * cell, rows * cell], fill=(255, 255, 255))
    return img


def with_legend(image: Image.Image, first: int, last: int) -> Image.Image:
    """Add a colour bar from the first to the last forward pass under ``image``."""
    text_h = max(12, image.width // 20)
    try:
        font = ImageFont.load_default(size=text_h)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    bar_h = max(8, text_h // 2)
    out = Image.new("RGB", (image.width, image.height + bar_h + text_h + 10), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    y = image.height + 4
    for x in range(image.width):
        draw.line([x, y, x, y + bar_h], fill=colour(x / max(image.width - 1, 1)))
    draw.text((0, y + bar_h + 1), f"pass {first}", fill=(0, 0, 0), font=font)
    label = f"pass {last}"
    draw.text((image.width - draw.textlength(label, font=font), y + bar_h + 1), label, fill=(0, 0, 0), font=font)
    return out


def acceptance_maps(run: Run, grid: tuple[int, int, int]) -> Image.Image | None:
    """Every row's acceptance map side by side, with one legend; ``None`` when the sampler reports none."""
    stats = run.output.stats
    if stats.token_step is None:
        return None
    width = grid[-1]
    cell = max(4, 2 * MIN_IMAGE_SIDE // max(grid[-2], width))
    relaxed = stats.relaxed
    maps = [acceptance_map(stats.token_step[b], width, None if relaxed is None else relaxed[b], cell)
            for b in range(stats.token_step.shape[0])]
    grid_img = image_grid(maps, cols=min(4, len(maps)))
    return with_legend(grid_img, int(stats.token_step.min()), int(stats.token_step.max()))


def gallery(run: Run) -> list[Image.Image]:
    return [enlarge(im) for im in run.output.images or []]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def stats_table(base: Run, fast: Run | None) -> str:
    """Markdown: forward passes, tokens per forward, mean accepted, seconds, and the speed-ups."""
    b = base.output.stats
    head = f"| | {base.sampler} (baseline) |"
    rows = [
        ("forward passes", str(b.forward_passes)),
        ("tokens / forward", f"{b.tokens_per_forward:.2f}"),
        ("mean accepted / step", f"{b.mean_accepted:.2f}"),
        ("seconds", f"{b.seconds:.2f}"),
    ]
    if fast is None:
        lines = [head, "|---|---:|"] + [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines)
    f = fast.output.stats
    values = [str(f.forward_passes), f"{f.tokens_per_forward:.2f}", f"{f.mean_accepted:.2f}", f"{f.seconds:.2f}"]
    speed = [_ratio(b.forward_passes, f.forward_passes), "", "", _ratio(b.seconds, f.seconds)]
    lines = [head + f" {fast.sampler} | speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v} | {fv} | {s} |" for (k, v), fv, s in zip(rows, values, speed)]
    relaxed = f.relaxed
    if relaxed is not None and bool(relaxed.any()):
        lines.append(f"\n{int(relaxed.sum())} tokens were accepted by relaxation (white dots on the map).")
    return "\n".join(lines)


def stats_json(pipe_name: str, class_id: int, seed: int, base: Run, fast: Run | None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": pipe_name, "class_id": class_id, "seed": seed,
                           "baseline": {"sampler": base.sampler, **base.output.stats.summary()}}
    if fast is not None:
        fs, bs = fast.output.stats, base.output.stats
        out["sampler"] = {"sampler": fast.sampler, "options": fast.options, **fs.summary()}
        if fs.relaxed is not None:
            out["sampler"]["relaxed_tokens"] = int(fs.relaxed.sum())
        out["speedup_forward_passes"] = round(bs.forward_passes / fs.forward_passes, 4) if fs.forward_passes else None
        out["speedup_seconds"] = round(bs.seconds / fs.seconds, 4) if fs.seconds > 0 else None
    return out


# ----------------------------------------------------------------------------------------------
# The Gradio app
# ----------------------------------------------------------------------------------------------

INTRO = """# vargen: fast visual autoregressive sampling
Runs plain **AR** (one token per forward pass) and the chosen **sampler** with the same seed. Lossless
samplers (SJD with the exact rule) draw from the same distribution as AR, so the two images differ sample
by sample, not in quality. The **acceptance map** colours each token by the forward pass that committed it
(dark: early, yellow: late); tokens committed together by one pass form one region. A white dot marks a token
accepted only by a relaxed rule."""


def _user_error(err: Exception):
    import gradio as gr

    return gr.Error(str(err), title="Invalid input", print_exception=False)


def _unexpected_error(err: Exception, what: str):
    import gradio as gr

    log.exception("%s failed", what)
    return gr.Error(f"{what} failed: {type(err).__name__}: {err}", print_exception=False)


USER_ERRORS = (ValueError, FileNotFoundError)


def _option_control(f: OptionField, shown: dict[str, Any]):
    """The control of one option: visible with the sampler's default when ``shown`` has it."""
    import gradio as gr

    value = shown.get(f.name, f.default)
    common = dict(label=f.label, info=f.info or None, visible=f.name in shown)
    if f.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if f.kind == "choice":
        return gr.Dropdown(choices=option_choices(f.name), value=value, allow_custom_value=True, **common)
    precision = 0 if f.kind == "int" else None
    if f.minimum is not None and f.maximum is not None:
        return gr.Slider(f.minimum, f.maximum, value=value, step=f.step, precision=precision, **common)
    return gr.Number(value=value, precision=precision, **common)


def rule_defaults(rule: str) -> dict[str, Any]:
    return _init_defaults(acceptance_rules.get_rule(rule))


def other_options_hint(defaults: dict[str, Any]) -> str:
    """The options without a control, as ``key=default`` pairs (the "more options" placeholder)."""
    simple = (int, float, str, bool)  # a None default (a model, say) cannot be typed in
    pairs = [f"{k}={v}" for k, v in defaults.items() if k not in FIELD_NAMES and isinstance(v, simple)]
    return ", ".join(pairs) if pairs else "key=value, key=value"


def option_updates(sampler: str, acceptance: str | None = None) -> list:
    """Show the controls this sampler (with rule ``acceptance``) takes and hide the others; the last update
    lists its other options in the "more options" box. A new sampler resets every control to its default;
    a new rule resets only the rule's own options."""
    import gradio as gr

    defaults = sampler_defaults(sampler, acceptance)
    reset = rule_defaults(acceptance) if acceptance else defaults
    updates = []
    for f in OPTION_FIELDS:
        if f.name not in defaults:
            updates.append(gr.update(visible=False))
        elif acceptance is None or (f.name in reset and f.name != "acceptance"):
            updates.append(gr.update(visible=True, value=defaults[f.name]))
        else:
            updates.append(gr.update(visible=True))
    return updates + [gr.update(placeholder=other_options_hint(defaults))]


def build_app(pipelines: dict[str, Pipeline] | None = None, models: Sequence[str] = (), device: str = "cpu",
              concurrency: int = 1, max_queue: int = 16):
    """The Gradio Blocks app. ``pipelines``: ready pipelines by name (listed first); ``models``: more
    names or folders to list; the zoo's models are always listed."""
    import gradio as gr

    store = ModelStore(pipelines, models, device)
    first = store.default_name()
    first_pipe = _try_load(store, first)
    defaults = model_defaults(first_pipe) if first_pipe else SamplingConfig().with_defaults(SamplingConfig())
    samplers = available_samplers()

    def on_model(model):
        try:
            pipe = store.get(model)
        except USER_ERRORS as err:
            raise _user_error(err) from None
        except Exception as err:
            raise _unexpected_error(err, f"loading {model}") from None
        d = model_defaults(pipe)
        choices = class_choices(pipe)
        return (gr.update(choices=choices, value=choices[0][1] if choices else None), d.cfg_scale, d.temperature,
                d.top_k, d.top_p, describe(pipe))

    def on_options(sampler, rule=None):
        try:
            return option_updates(sampler, rule)
        except USER_ERRORS as err:
            raise _user_error(err) from None

    # the API's parameter names are these names: one per control, in the order of ``inputs`` below
    def generate(model, class_label, sampler, window, init, coupled, acceptance, sample_top, k, delta,
                 draft_steps, more_options="", seed=0, cfg_scale=None, temperature=None, top_k=None, top_p=None,
                 batch_size=1, progress=gr.Progress()):
        values = dict(window=window, init=init, coupled=coupled, acceptance=acceptance, sample_top=sample_top,
                      k=k, delta=delta, draft_steps=draft_steps)
        config = dict(cfg_scale=cfg_scale, temperature=temperature, top_k=_as_int(top_k), top_p=top_p)
        try:
            progress(0.0, desc=f"loading {model}")
            pipe = store.get(model)
            class_id = resolve_class(pipe, class_label)
            batch, seed, _ = check_request(pipe, config, batch_size, seed)
            options = collect_options(sampler, values, more_options)
            fast_sampler = build_sampler(sampler, options)  # bad options fail here, before any work
            name = str(model).strip()
            progress(0.05, desc=f"{BASELINE} baseline")
            base = run_sampler(pipe, BASELINE, get_sampler(BASELINE), class_id, batch, seed, config, {})
            yield gallery(base), None, None, stats_table(base, None), stats_json(name, class_id, seed, base, None)
            progress(0.5, desc=sampler)
            fast = run_sampler(pipe, sampler, fast_sampler, class_id, batch, seed, config, options)
            progress(0.95, desc="acceptance map")
            yield (gallery(base), gallery(fast), acceptance_maps(fast, pipe.model.grid), stats_table(base, fast),
                   stats_json(name, class_id, seed, base, fast))
        except gr.Error:
            raise
        except USER_ERRORS as err:
            raise _user_error(err) from None
        except Exception as err:
            raise _unexpected_error(err, f"{sampler} on {model}") from None

    with gr.Blocks(title="vargen: fast visual AR sampling") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                model = gr.Dropdown(store.names(), value=first, label="model", allow_custom_value=True,
                                    info="a zoo model, or the path of a local folder with pipeline.json")
                model_info = gr.Markdown(describe(first_pipe) if first_pipe else "", label="model info")
                classes = class_choices(first_pipe) if first_pipe else []
                class_label = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="class",
                                          allow_custom_value=True, info="a class id or name")
                sampler = gr.Dropdown(samplers, value=DEFAULT_SAMPLER if DEFAULT_SAMPLER in samplers else samplers[0],
                                      label="sampler", info=f"compared with the {BASELINE} baseline")
                with gr.Group():
                    shown = sampler_defaults(sampler.value)
                    controls = [_option_control(f, shown) for f in OPTION_FIELDS]
                extra = gr.Textbox("", label="more options", placeholder=other_options_hint(shown),
                                   info="any other sampler option, passed through as is")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="seed", minimum=0)
                    batch_size = gr.Slider(1, MAX_BATCH, value=1, step=1, precision=0, label="batch size")
                cfg_scale = gr.Slider(0.0, 10.0, value=defaults.cfg_scale, step=0.1, label="CFG scale",
                                      info="1 disables guidance")
                temperature = gr.Slider(0.0, 2.0, value=defaults.temperature, step=0.05, label="temperature",
                                        info="0 is greedy")
                with gr.Row():
                    top_k = gr.Number(defaults.top_k, precision=0, minimum=0, label="top-k", info="0 disables")
                    top_p = gr.Slider(0.01, 1.0, value=defaults.top_p, step=0.01, label="top-p",
                                      info="1 disables")
                run = gr.Button("Generate", variant="primary")
            with gr.Column(scale=2):
                with gr.Row():
                    base_images = gr.Gallery(label=f"baseline: {BASELINE}", columns=2, height=320,
                                             object_fit="contain", elem_id="baseline")
                    fast_images = gr.Gallery(label="accelerated sampler", columns=2, height=320,
                                             object_fit="contain", elem_id="accelerated")
                    amap = gr.Image(label="acceptance map", type="pil",
                                    height=320, format="png", elem_id="acceptance-map")
                table = gr.Markdown(label="speed-up")
                with gr.Accordion("statistics (JSON)", open=False):
                    raw = gr.JSON(label="statistics")

        config_outputs = [class_label, cfg_scale, temperature, top_k, top_p, model_info]
        model.change(on_model, [model], config_outputs, api_name="model_info", concurrency_id="model")
        sampler.input(on_options, [sampler], [*controls, extra], api_name="sampler_options", queue=False,
                      api_visibility="undocumented")
        acceptance = controls[FIELD_NAMES.index("acceptance")]
        acceptance.input(on_options, [sampler, acceptance], [*controls, extra], api_name="rule_options",
                         queue=False, api_visibility="undocumented")
        inputs = [model, class_label, sampler, *controls, extra, seed, cfg_scale, temperature, top_k, top_p,
                  batch_size]
        assert list(inspect.signature(generate).parameters)[3: 3 + len(controls)] == list(FIELD_NAMES)
        run.click(generate, inputs, [base_images, fast_images, amap, table, raw], api_name="generate",
                  concurrency_id="model")
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    return demo


def _try_load(store: ModelStore, name: str | None) -> Pipeline | None:
    """The first model, loaded eagerly when that needs no download (so the form starts filled in)."""
    if name is None or not (name in store.fixed or zoo.shipped_path(name) or name in store.extra_names):
        return None
    try:
        return store.get(name)
    except Exception as err:  # shown again, readably, when the user generates
        log.warning("could not load %s: %s", name, err)
        return None


# ----------------------------------------------------------------------------------------------
# Command line: `vargen app` and `python app/app.py`
# ----------------------------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"interface to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--share", action="store_true",
                   help="also open a public gradio.live link (needs internet; anyone with the link can use it)")
    p.add_argument("--model", action="append", default=[], metavar="NAME_OR_FOLDER",
                   help="a model to list first (zoo name or folder with pipeline.json); repeatable")
    p.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--concurrency", type=int, default=1, help="generations run at the same time (default 1)")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting in the queue (default 16)")
    return p


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``vargen app`` on the ``vargen`` command's subparsers."""
    p = subparsers.add_parser("app", help="start the Gradio demo (AR vs an accelerated sampler, acceptance map)",
                              description=__doc__.split("\n\n")[0])
    return configure_parser(p)


def run_cli(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the app needs gradio: pip install 'vargen[app]'", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo = build_app(models=args.model, device=args.device, concurrency=args.concurrency,
                     max_queue=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python app/app.py", description=__doc__.split("\n\n")[0]))
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
