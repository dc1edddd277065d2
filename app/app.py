"""vargen demo: a model family's baseline and an accelerated sampler side by side, with the acceptance map.

    vargen app                      # http://127.0.0.1:7860, the shipped demo models, CPU
    python app/app.py --port 8000   # the same without the vargen entry point

One click runs the model's baseline (``ar`` for LlamaGen, ``var`` for VAR, ``mar`` for MAR) and the chosen
sampler with the same seed and shows both results, their forward passes, tokens per forward, seconds and the
speed-up, and the acceptance map: the token grid coloured by the forward pass that committed each token.

Everything goes through the pipeline (``vargen.load(name).generate``): the sampler list is the model's
applicable samplers, and the option controls are the samplers' declared options (type, range, help), shown
for the samplers that take them; "more options" takes anything else in the one option grammar
(``key=value,key=value``). Each request is bounded (batch, and the options' declared and per-request limits)
before any work, and the queue is bounded too.

Tests and other programs can inject ready pipelines: ``build_app({"tiny": pipeline})``.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import sys
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from vargen import zoo
from vargen.pipeline import Pipeline, image_grid, load
from vargen.samplers import available_samplers, sampler_options
from vargen.samplers.base import GenerationOutput, SamplingConfig
from vargen.samplers.spec import Option, SamplerSpec

log = logging.getLogger("vargen.app")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MODEL = "cifar10-llamagen"
MAX_BATCH = 8
VIDEO_KINDS = ("cosmos",)  # pipeline kinds shown in the video tab
MIN_IMAGE_SIDE = 192  # small demo images are enlarged (nearest neighbour) to at least this size
# per-request limits on top of the options' own ranges (one request must not hold the server for minutes)
REQUEST_LIMITS = {"num_iter": 64, "max_tries": 200, "sample_top": 256, "k": 1024, "group_size": 256, "num_draft": 64}


# ----------------------------------------------------------------------------------------------
# Sampler options: the declared options of every sampler, one control per name
# ----------------------------------------------------------------------------------------------


def _rule_names() -> list[str]:
    from vargen.samplers.acceptance import available_rules

    return available_rules()


def option_catalogue() -> dict[str, Option]:
    """Every option any registered sampler (with any rule) declares and that can be typed in, by name (the
    first declaration of a name gives its control)."""
    out: dict[str, Option] = {}
    for name in available_samplers():
        rules = [None] + (_rule_names() if "acceptance" in sampler_options(name) else [])
        for rule in rules:
            for opt in sampler_options(name, rule).values():
                if opt.text and opt.kind != "object" and opt.name not in out:
                    out[opt.name] = opt
    return out


CATALOGUE = option_catalogue()
OPTION_NAMES = tuple(CATALOGUE)


def sampler_defaults(sampler: str, acceptance: str | None = None, pipe: Pipeline | None = None) -> dict[str, Any]:
    """The typed-in options ``sampler`` takes (with rule ``acceptance``), with their defaults: the declared
    ones, overridden by the pipeline's own per-sampler defaults (e.g. CoDe's ``draft_steps`` of the demo)."""
    own = pipe.sampler_options.get(sampler, {}) if pipe is not None else {}
    return {k: own.get(k, o.default) for k, o in sampler_options(sampler, acceptance).items() if k in CATALOGUE}


def collect_options(sampler: str, values: dict[str, Any], extra: str | None = None) -> dict[str, Any]:
    """The sampler's options from the controls (only those it takes; empty controls are left out), then the
    "more options" text in the option grammar, which wins. Everything is typed and range-checked here."""
    declared = sampler_options(sampler, values.get("acceptance") or None)
    opts = {}
    for name, value in values.items():
        value = _control_value(name, value)
        if name in declared and value is not None and value != "":
            opts[name] = declared[name].convert(value, sampler)
    text = (extra or "").replace("\n", ",").strip().strip(",")
    if text:
        spec = SamplerSpec.parse(f"{sampler}:{text}")
        opts.update(spec.options)
    return within_limits(opts)


def within_limits(opts: dict[str, Any]) -> dict[str, Any]:
    """``opts``, after checking the per-request limits of this demo."""
    for name, limit in REQUEST_LIMITS.items():
        if isinstance(opts.get(name), (int, float)) and opts[name] > limit:
            raise ValueError(f"{name}={opts[name]} is over this demo's per-request limit ({limit})")
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

    def names(self, video: bool = False) -> list[str]:
        """Pipelines of one tab: image models, or (``video``) video models."""
        shipped = [n for n in zoo.shipped_names() if zoo.pipeline_kind(n)]
        injected = [n for n, p in self.fixed.items() if p.video == video]
        official = [n for n in sorted(zoo.OFFICIAL) if (zoo.OFFICIAL[n]["kind"] in VIDEO_KINDS) == video]
        if video:
            return list(dict.fromkeys(injected + [n for n in shipped if zoo.pipeline_kind(n) in VIDEO_KINDS] + official))
        shipped = [n for n in shipped if zoo.pipeline_kind(n) not in VIDEO_KINDS]
        return list(dict.fromkeys(injected + self.extra_names + shipped + official))

    def default_name(self, video: bool = False) -> str | None:
        names = self.names(video)
        if video:
            return names[0] if names else None
        if self.fixed or self.extra_names:
            return names[0] if names else None
        return DEFAULT_MODEL if DEFAULT_MODEL in names else (names[0] if names else None)

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


def class_choices(pipe: Pipeline) -> list[tuple[str, str]]:
    names = pipe.class_names or [str(i) for i in range(pipe.num_classes)]
    return [(f"{i}: {n}" if n != str(i) else n, str(i)) for i, n in enumerate(names)]


def resolve_class(pipe: Pipeline, label) -> int:
    """A class id from an id, a name, or a dropdown label ``"3: cat"``; out of range is a ``ValueError``."""
    text = str(label).strip() if label is not None else ""
    if not text:
        raise ValueError("choose a class")
    if ":" in text and text.split(":", 1)[0].strip().lstrip("-").isdigit():
        text = text.split(":", 1)[0].strip()
    return pipe.class_id(text)


def model_defaults(pipe: Pipeline) -> SamplingConfig:
    return SamplingConfig().with_defaults(pipe.defaults)


def describe(pipe: Pipeline) -> str:
    m = pipe.model
    if pipe.kind == "var":
        layout = f"scales {'/'.join(map(str, m.patch_nums))}"
    elif pipe.kind == "mar":
        layout = f"{m.seq_h} x {m.seq_w} continuous tokens of {m.token_embed_dim}"
    else:
        t, h, w = m.grid
        layout = f"{f'{t} x ' if t > 1 else ''}{h} x {w} tokens"
    return (f"{pipe.kind} model: {layout}, vocabulary {getattr(m, 'vocab_size', '-')}, {pipe.num_classes} classes, "
            f"device {pipe.device}; baseline `{pipe.baseline_sampler}`")


# ----------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One sampler's result on a request."""

    sampler: str
    options: dict[str, Any]
    output: GenerationOutput


def check_request(pipe: Pipeline, config: dict[str, Any], batch_size, seed) -> tuple[int, int]:
    """Validate what does not depend on the sampler; raises ``ValueError`` before any work."""
    if batch_size is None or isinstance(batch_size, bool) or not 1 <= int(batch_size) <= MAX_BATCH \
            or int(batch_size) != batch_size:
        raise ValueError(f"batch size must be an integer from 1 to {MAX_BATCH}, got {batch_size}")
    if seed is None or int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed}")
    pipe.check_seed(int(seed))
    cfg, _ = pipe.split_options(config)
    cfg.validate(vocab_size=getattr(pipe.model, "vocab_size", None), conditional=True)
    return int(batch_size), int(seed)


def run_sampler(pipe: Pipeline, name: str, class_id: int, batch: int, seed: int, config: dict[str, Any],
                options: dict[str, Any]) -> Run:
    out = pipe.generate([class_id] * batch, sampler=name, seed=seed, per_row_seeds=True, **config, **options)
    return Run(name, options, out)


# ----------------------------------------------------------------------------------------------
# Rendering: images, the acceptance map, the statistics
# ----------------------------------------------------------------------------------------------

# viridis at 10 stops: early passes dark blue, late passes yellow
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


def map_grid(pipe: Pipeline) -> tuple[int, int] | None:
    """(rows, cols) of the token layout the acceptance map draws; None where tokens are not one grid (VAR)."""
    if pipe.kind == "mar":
        return pipe.model.seq_h, pipe.model.seq_w
    if hasattr(pipe.model, "grid"):
        t, h, w = pipe.model.grid
        return t * h, w
    return None


def acceptance_maps(run: Run, pipe: Pipeline) -> Image.Image | None:
    """Every row's acceptance map side by side, with one legend; ``None`` when there is no token grid."""
    stats, grid = run.output.stats, map_grid(pipe)
    if stats.token_step is None or grid is None or stats.token_step.shape[1] != grid[0] * grid[1]:
        return None
    height, width = grid
    cell = max(4, 2 * MIN_IMAGE_SIDE // max(height, width))
    relaxed = stats.relaxed
    maps = [acceptance_map(stats.token_step[b], width, None if relaxed is None else relaxed[b], cell)
            for b in range(stats.token_step.shape[0])]
    return with_legend(image_grid(maps, cols=min(4, len(maps))), int(stats.token_step.min()), int(stats.token_step.max()))


def gallery(run: Run) -> list[Image.Image]:
    return [enlarge(im) for im in run.output.images or []]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def stats_table(base: Run, fast: Run | None) -> str:
    """Markdown: forward passes, tokens per forward, mean accepted, seconds, and the speed-ups."""
    b = base.output.stats
    head = f"| | {base.sampler} (baseline) |"
    rows = [("forward passes", str(b.forward_passes)), ("tokens / forward", f"{b.tokens_per_forward:.2f}"),
            ("mean accepted / step", f"{b.mean_accepted:.2f}"), ("seconds", f"{b.seconds:.2f}")]
    if fast is None:
        return "\n".join([head, "|---|---:|"] + [f"| {k} | {v} |" for k, v in rows])
    f = fast.output.stats
    values = [str(f.forward_passes), f"{f.tokens_per_forward:.2f}", f"{f.mean_accepted:.2f}", f"{f.seconds:.2f}"]
    speed = [_ratio(b.forward_passes, f.forward_passes), "", "", _ratio(b.seconds, f.seconds)]
    lines = [head + f" {fast.sampler} | speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v} | {fv} | {s} |" for (k, v), fv, s in zip(rows, values, speed)]
    relaxed = f.relaxed
    if relaxed is not None and bool(relaxed.any()):
        lines.append(f"\n{int(relaxed.sum())} tokens were accepted by relaxation (white dots on the map); "
                     f"TV bound per image {f.mean_tv_bound:.3f}.")
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


def run_video(pipe: Pipeline, name: str, scene: int, seed: int, config: dict[str, Any],
              options: dict[str, Any]) -> Run:
    out = pipe.generate([scene], sampler=name, seed=seed, per_row_seeds=True, **config, **options)
    return Run(name, options, out)


def video_file(run: Run, folder, label: str) -> str:
    """The run's clip as an animated GIF (frames enlarged) in ``folder``; returns its path."""
    from pathlib import Path

    from vargen.video import save_gif

    path = Path(folder) / f"{label}.gif"
    save_gif([enlarge(f) for f in run.output.videos[0]], path)
    return str(path)


# ----------------------------------------------------------------------------------------------
# The Gradio app
# ----------------------------------------------------------------------------------------------

INTRO = """# vargen: fast visual autoregressive sampling
Runs the model's **baseline** (AR, VAR or MAR) and the chosen **sampler** with the same seed. Lossless
samplers draw from the same distribution as the baseline, so the images differ sample by sample, not in
quality. The **acceptance map** colours each token by the forward pass that committed it (dark: early,
yellow: late); a white dot marks a token accepted only by a relaxed rule."""

USER_ERRORS = (ValueError, FileNotFoundError)
CONFIG_CONTROLS = ("cfg_scale", "temperature", "top_k", "top_p")


def _user_error(err: Exception):
    import gradio as gr

    return gr.Error(str(err), title="Invalid input", print_exception=False)


@contextmanager
def reported(what: str):
    """Errors of a request as the app shows them: bad input as a readable "Invalid input", anything else logged and
    shown as "``what`` failed"; Gradio's own errors pass through."""
    import gradio as gr

    try:
        yield
    except gr.Error:
        raise
    except USER_ERRORS as err:
        raise _user_error(err) from None
    except Exception as err:
        raise _unexpected_error(err, what) from None


def _unexpected_error(err: Exception, what: str):
    import gradio as gr

    log.exception("%s failed", what)
    return gr.Error(f"{what} failed: {type(err).__name__}: {err}", print_exception=False)


def _text_value(opt: Option, value):
    if isinstance(value, tuple):
        return "/".join(map(str, value))
    return value


def _option_control(opt: Option, shown: dict[str, Any]):
    """The control of one declared option: visible with the sampler's default when ``shown`` has it."""
    import gradio as gr

    value = shown.get(opt.name, opt.default)
    common = dict(label=opt.name, info=opt.help, visible=opt.name in shown, elem_id=f"opt-{opt.name}")
    if opt.kind == "bool" and not opt.optional:
        return gr.Checkbox(value=bool(value), **common)
    if opt.choices:
        return gr.Dropdown(choices=list(opt.choices), value=value, allow_custom_value=True, **common)  # checked by the option
    if opt.kind in ("int", "float") and not opt.optional:  # ranges are checked by the option itself, with its message
        return gr.Number(value=value, precision=0 if opt.kind == "int" else None, **common)
    return gr.Textbox(value="" if value is None else str(_text_value(opt, value)),
                      placeholder="none" if opt.optional else "", **common)


def option_updates(sampler: str, acceptance: str | None = None, keep_values: bool = False,
                   pipe: Pipeline | None = None) -> list:
    """Show the controls ``sampler`` (with rule ``acceptance``) takes, with their defaults, and hide the others."""
    import gradio as gr

    defaults = sampler_defaults(sampler, acceptance, pipe)
    updates = []
    for name in OPTION_NAMES:
        if name not in defaults:
            updates.append(gr.update(visible=False))
        elif keep_values and name in ("acceptance",):
            updates.append(gr.update(visible=True))
        else:
            value = defaults[name]
            updates.append(gr.update(visible=True, value=_text_value(CATALOGUE[name], value) if value is not None
                                     else (None if CATALOGUE[name].kind in ("int", "float") else "")))
    return updates


def _control_value(name: str, value):
    """A control's value as the sampler option (Textboxes hold text; empty means "not given"; number boxes
    may hand an integer over as 8.0)."""
    kind = CATALOGUE[name].kind if name in CATALOGUE else None
    if isinstance(value, str) and kind != "str":
        return value.strip() or None
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def build_app(pipelines: dict[str, Pipeline] | None = None, models: Sequence[str] = (), device: str = "cpu",
              concurrency: int = 1, max_queue: int = 16):
    """The Gradio Blocks app. ``pipelines``: ready pipelines by name (listed first); ``models``: more
    names or folders to list; the zoo's pipelines are always listed."""
    import gradio as gr

    store = ModelStore(pipelines, models, device)
    first = store.default_name()
    first_pipe = _try_load(store, first)
    defaults = model_defaults(first_pipe) if first_pipe else SamplingConfig().with_defaults(SamplingConfig())
    samplers = list(first_pipe.applicable_samplers()) if first_pipe else available_samplers()
    first_sampler = _fast_default(first_pipe) if first_pipe else "sjd"

    def on_model(model):
        with reported(f"loading {model}"):
            pipe = store.get(model)
        d = model_defaults(pipe)
        choices = class_choices(pipe)
        sampler = _fast_default(pipe)
        fields = pipe.family.config_fields
        config_updates = [gr.update(value=getattr(d, n), visible=n in fields) for n in CONFIG_CONTROLS]
        return [gr.update(choices=choices, value=choices[0][1] if choices else None),
                gr.update(choices=list(pipe.applicable_samplers()), value=sampler), *config_updates,
                describe(pipe), *option_updates(sampler, pipe=pipe)]

    def _pipe_or_none(model):
        try:
            return store.get(model)
        except Exception:  # noqa: BLE001 - only the defaults shown depend on it; generate reports the error
            return None

    def on_sampler(model, sampler):
        return option_updates(sampler, pipe=_pipe_or_none(model))

    def on_rule(model, sampler, rule):
        return option_updates(sampler, rule or None, keep_values=True, pipe=_pipe_or_none(model))

    def generate(model, class_label, sampler, *values, progress=gr.Progress()):
        n = len(OPTION_NAMES)
        option_values = dict(zip(OPTION_NAMES, values[:n]))
        more_options, seed, cfg_scale, temperature, top_k, top_p, batch_size = values[n:]
        yield None, None, None, "", {}  # clear the previous result first: an error never sits next to old stats
        with reported(f"{sampler} on {model}"):
            progress(0.0, desc=f"loading {model}")
            pipe = store.get(model)
            fields = pipe.family.config_fields
            config = {k: v for k, v in dict(cfg_scale=cfg_scale, temperature=temperature,
                                             top_k=None if top_k is None else _int(top_k, "top_k"),
                                             top_p=top_p).items() if v is not None and k in fields}
            class_id = resolve_class(pipe, class_label)
            batch, seed = check_request(pipe, config, batch_size, seed)
            if sampler not in pipe.applicable_samplers():
                raise ValueError(f"sampler {sampler!r} does not apply to this {pipe.kind} model; choose one of "
                                 f"{', '.join(pipe.applicable_samplers())}")
            options = collect_options(sampler, option_values, more_options)
            pipe.check_sampler(sampler, **options)  # bad options and sizes past the model fail here, before any work
            name = str(model).strip()
            baseline = pipe.baseline_sampler
            progress(0.05, desc=f"{baseline} baseline")
            base = run_sampler(pipe, baseline, class_id, batch, seed, config, {})
            yield gallery(base), None, None, stats_table(base, None), stats_json(name, class_id, seed, base, None)
            progress(0.5, desc=sampler)
            fast = run_sampler(pipe, sampler, class_id, batch, seed, config, options)
            progress(0.95, desc="acceptance map")
            yield (gallery(base), gallery(fast), acceptance_maps(fast, pipe), stats_table(base, fast),
                   stats_json(name, class_id, seed, base, fast))

    # the API's parameter names: one per control, in the order of ``inputs`` below
    params = ["model", "class_label", "sampler", *OPTION_NAMES, "more_options", "seed", "cfg_scale", "temperature",
              "top_k", "top_p", "batch_size"]
    api_defaults = {"more_options": "", "seed": 0, "cfg_scale": None, "temperature": None, "top_k": None,
                    "top_p": None, "batch_size": 1, **{k: None for k in OPTION_NAMES}}
    generate.__signature__ = inspect.Signature(
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                           **({"default": api_defaults[p]} if p in api_defaults else {})) for p in params]
        + [inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress())])

    with gr.Blocks(title="vargen: fast visual AR sampling") as demo:
        gr.Markdown(INTRO)
        with gr.Tab("images"), gr.Row():
            with gr.Column(scale=1, min_width=320):
                model = gr.Dropdown(store.names(), value=first, label="model", allow_custom_value=True,
                                    info="a zoo model, or the path of a local folder with pipeline.json")
                model_info = gr.Markdown(describe(first_pipe) if first_pipe else "")
                classes = class_choices(first_pipe) if first_pipe else []
                class_label = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="class",
                                          allow_custom_value=True, info="a class id or name")
                sampler = gr.Dropdown(samplers, value=first_sampler, label="sampler", allow_custom_value=True,
                                      info="compared with the model's baseline")  # checked against the model
                with gr.Group():
                    shown = sampler_defaults(first_sampler, pipe=first_pipe) if first_sampler in available_samplers() else {}
                    controls = [_option_control(CATALOGUE[n], shown) for n in OPTION_NAMES]
                extra = gr.Textbox("", label="more options", placeholder="key=value, key=value", elem_id="more-options",
                                   info="any sampler option in the spec grammar, e.g. window=8,coupled=true")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="seed")
                    batch_size = gr.Number(1, precision=0, label="batch size", info=f"1 to {MAX_BATCH}")
                fields = first_pipe.family.config_fields if first_pipe else CONFIG_CONTROLS
                cfg_scale = gr.Number(defaults.cfg_scale, label="CFG scale", info="1 disables guidance",
                                      visible="cfg_scale" in fields)
                temperature = gr.Number(defaults.temperature, label="temperature", info="0 is greedy",
                                        visible="temperature" in fields)
                with gr.Row():
                    top_k = gr.Number(defaults.top_k, precision=0, label="top-k", info="0 disables",
                                      visible="top_k" in fields)
                    top_p = gr.Number(defaults.top_p, label="top-p", info="1 disables", visible="top_p" in fields)
                run = gr.Button("Generate", variant="primary")
            with gr.Column(scale=2):
                with gr.Row():
                    base_images = gr.Gallery(label="baseline", columns=2, height=320, object_fit="contain",
                                             elem_id="baseline")
                    fast_images = gr.Gallery(label="accelerated sampler", columns=2, height=320,
                                             object_fit="contain", elem_id="accelerated")
                    with gr.Column():
                        gr.Markdown("**acceptance map** (forward pass of each token)")
                        amap = gr.Image(show_label=False, type="pil", height=300, format="png",
                                        elem_id="acceptance-map")
                table = gr.Markdown(elem_id="stats-table")
                with gr.Accordion("statistics (JSON)", open=False):
                    raw = gr.JSON(label="statistics")

        rule = controls[OPTION_NAMES.index("acceptance")] if "acceptance" in OPTION_NAMES else None
        model.change(on_model, [model], [class_label, sampler, cfg_scale, temperature, top_k, top_p, model_info,
                                         *controls], api_name="model_info", concurrency_id="model")
        sampler.input(on_sampler, [model, sampler], controls, api_name="sampler_options", queue=False,
                      api_visibility="undocumented")
        if rule is not None:
            rule.input(on_rule, [model, sampler, rule], controls, api_name="rule_options", queue=False,
                       api_visibility="undocumented")
        inputs = [model, class_label, sampler, *controls, extra, seed, cfg_scale, temperature, top_k, top_p, batch_size]
        run.click(generate, inputs, [base_images, fast_images, amap, table, raw], api_name="generate",
                  concurrency_id="model")
        _video_tab(store)
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    return demo


VIDEO_INTRO = """Video continuation: the model continues the first frame of a scene. The **baseline** decodes one
token per forward; the **sampler** (by default coupled SJD whose fresh drafts copy the same cell one latent frame
earlier) commits several. The acceptance map stacks the generated latent frames top to bottom."""


def _video_tab(store: ModelStore) -> None:
    """The video tab: a scene, a sampler spec, the baseline's and the sampler's clips, the acceptance map."""
    import tempfile

    import gradio as gr

    names = store.names(video=True)
    first = store.default_name(video=True)
    first_pipe = _try_load(store, first)
    folder = tempfile.mkdtemp(prefix="vargen-app-video-")

    def generate_video(model, scene, sampler, seed=0, temperature=None, top_k=None, top_p=None,
                       progress=gr.Progress()):
        yield None, None, None, "", {}
        with reported(f"{sampler} on {model}"):
            pipe = store.get(model)
            if not pipe.video:
                raise ValueError(f"{model} is not a video model")
            spec = SamplerSpec.parse(str(sampler or pipe.default_sampler).strip())
            if spec.name not in pipe.applicable_samplers():
                raise ValueError(f"sampler {spec.name!r} does not apply to this {pipe.kind} model; choose one of "
                                 f"{', '.join(pipe.applicable_samplers())}")
            options = within_limits(dict(spec.options))
            config = {k: v for k, v in dict(temperature=temperature, top_k=None if top_k is None else _int(top_k, "top_k"),
                                             top_p=top_p).items() if v is not None}
            _, seed = check_request(pipe, config, 1, seed)
            scene = _int(scene, "scene")
            pipe.check_seed(scene)
            pipe.check_sampler(spec.name, **options)
            progress(0.05, desc=f"{pipe.baseline_sampler} baseline")
            base = run_video(pipe, pipe.baseline_sampler, scene, seed, config, {})
            yield (video_file(base, folder, f"base-{scene}-{seed}"), None, None, stats_table(base, None),
                   _scene_json(str(model), scene, seed, base, None))
            progress(0.5, desc=spec.name)
            fast = run_video(pipe, spec.name, scene, seed, config, options)
            yield (video_file(base, folder, f"base-{scene}-{seed}"), video_file(fast, folder, f"fast-{scene}-{seed}"),
                   acceptance_maps(fast, pipe), stats_table(base, fast), _scene_json(str(model), scene, seed, base, fast))

    with gr.Tab("video"):
        gr.Markdown(VIDEO_INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                model = gr.Dropdown(names, value=first, label="video model", allow_custom_value=True)
                scene = gr.Number(0, precision=0, label="scene", info="seed of the procedural scene to continue")
                sampler = gr.Textbox(first_pipe.default_sampler if first_pipe else "sjd:init=temporal,coupled=true",
                                     label="sampler", info="a sampler spec, e.g. sjd:window=16,init=temporal,coupled=true")
                seed = gr.Number(0, precision=0, label="seed")
                d = model_defaults(first_pipe) if first_pipe else SamplingConfig().with_defaults(SamplingConfig())
                temperature = gr.Number(d.temperature, label="temperature", info="0 is greedy")
                with gr.Row():
                    top_k = gr.Number(d.top_k, precision=0, label="top-k", info="0 disables")
                    top_p = gr.Number(d.top_p, label="top-p", info="1 disables")
                run = gr.Button("Generate video", variant="primary")
            with gr.Column(scale=2):
                with gr.Row():
                    base_video = gr.Image(label="baseline", type="filepath", elem_id="video-baseline")
                    fast_video = gr.Image(label="accelerated sampler", type="filepath", elem_id="video-accelerated")
                    amap = gr.Image(label="acceptance map", type="pil", format="png", elem_id="video-acceptance-map")
                table = gr.Markdown(elem_id="video-stats-table")
                with gr.Accordion("statistics (JSON)", open=False):
                    raw = gr.JSON(label="statistics")
        run.click(generate_video, [model, scene, sampler, seed, temperature, top_k, top_p],
                  [base_video, fast_video, amap, table, raw], api_name="generate_video", concurrency_id="model")


def _scene_json(name: str, scene: int, seed: int, base: Run, fast: Run | None) -> dict[str, Any]:
    out = stats_json(name, scene, seed, base, fast)
    return {"model": out.pop("model"), "scene": out.pop("class_id"), **out}


def _int(value, name: str) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be an integer, got {value}")
    return int(value)


def _fast_default(pipe: Pipeline) -> str:
    """The sampler preselected for a model: its default one (without options), unless that is the baseline."""
    default = pipe.default_sampler.split(":")[0]
    others = [s for s in pipe.applicable_samplers() if s != pipe.baseline_sampler]
    return default if default != pipe.baseline_sampler else (others[0] if others else default)


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
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: automatic from the free cores)")
    p.add_argument("--concurrency", type=int, default=1, help="generations run at the same time (default 1)")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting in the queue (default 16)")
    return p


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``vargen app`` on the ``vargen`` command's subparsers."""
    p = subparsers.add_parser("app", help="start the Gradio demo (baseline vs an accelerated sampler, acceptance map)",
                              description=__doc__.split("\n\n")[0])
    return configure_parser(p)


def run_cli(args: argparse.Namespace) -> int:
    from vargen.runtime import check_device, configure_threads

    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the app needs gradio: pip install 'vargen[app]'", file=sys.stderr)
        return 2
    for name in ("port", "concurrency", "max_queue"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    configure_threads(args.threads)
    check_device(args.device)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo = build_app(models=args.model, device=args.device, concurrency=args.concurrency, max_queue=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python app/app.py", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run_cli(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
