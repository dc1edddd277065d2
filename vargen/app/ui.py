"""The web page and the API, in Gradio.

The page: a model, a class / prompt / scene, a sampler (those that apply; the pipeline's default first) and
Generate on the first screen; every sampler option in "Advanced", generated from the option grammar. One
click runs the baseline and the sampler with the same seed and shows both results, the acceptance map, the
table of forward passes and seconds, and a sentence on the speed-up (or why there was none).

The API: ``/generate`` takes keyword parameters and returns one dictionary with named fields (see
:func:`build_app`); ``gradio_client.Client(url).predict(model=..., condition=..., api_name="/generate")``.
"""
from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import gradio as gr

from .. import catalog
from ..pipeline import Pipeline
from ..samplers.spec import Option, SamplerSpec
from . import compare, render
from .compare import CATALOGUE, CONFIG_NAMES, OPTION_NAMES, Files

log = logging.getLogger("vargen.app")

INTRO = ("## vargen: the same images in fewer forward passes\n"
         "Runs the model's **baseline** and an **accelerated sampler** with the same seed. The **acceptance map** "
         "colours each token by the forward pass that committed it (dark: early, yellow: late).")


# ----------------------------------------------------------------------------------------------
# Errors: one readable line for bad input
# ----------------------------------------------------------------------------------------------


@contextmanager
def reported(what: str):
    """Bad input as "Invalid input: <one line>"; anything else logged and shown as "``what`` failed"."""
    try:
        yield
    except gr.Error:
        raise
    except (ValueError, FileNotFoundError) as err:
        raise gr.Error(str(err), title="Invalid input", print_exception=False) from None
    except Exception as err:
        log.exception("%s failed", what)
        raise gr.Error(f"{what} failed: {type(err).__name__}: {err}", print_exception=False) from None


# ----------------------------------------------------------------------------------------------
# Controls generated from the option grammar
# ----------------------------------------------------------------------------------------------


def _text(value) -> Any:
    return "/".join(map(str, value)) if isinstance(value, tuple) else value


def option_control(opt: Option, shown: dict[str, Any]):
    """The control of one declared option: visible, with the value it runs with, when ``shown`` has it."""
    value = shown.get(opt.name, opt.default)
    common = dict(label=opt.name, info=opt.help, visible=opt.name in shown, elem_id=f"opt-{opt.name}")
    if opt.kind == "bool" and not opt.optional:
        return gr.Checkbox(value=bool(value), **common)
    if opt.choices:
        return gr.Dropdown(choices=list(opt.choices), value=value, allow_custom_value=True, **common)
    if opt.kind in ("int", "float") and not opt.optional and not opt.literals:
        return gr.Number(value=value, precision=0 if opt.kind == "int" else None, **common)
    return gr.Textbox(value="" if value is None else str(_text(value)), placeholder="none" if opt.optional else "",
                      **common)


def option_updates(pipe: Pipeline | None, sampler: str, acceptance: str | None = None) -> list:
    """Show the controls ``sampler`` (with rule ``acceptance``) takes, with the values it runs with; hide the rest."""
    try:
        shown = compare.shown_options(pipe, sampler, acceptance)
    except ValueError:  # a sampler or rule typed in that does not exist: Generate says so
        return [gr.update() for _ in OPTION_NAMES]
    updates = []
    for name in OPTION_NAMES:
        if name not in shown:
            updates.append(gr.update(visible=False))
            continue
        value = shown[name]
        blank = None if CATALOGUE[name].kind in ("int", "float") and not CATALOGUE[name].literals else ""
        updates.append(gr.update(visible=True, value=_text(value) if value is not None else blank))
    return updates


# ----------------------------------------------------------------------------------------------
# Results as the page and the API show them
# ----------------------------------------------------------------------------------------------


def gallery(run: compare.Run, folder: str) -> list:
    """Images enlarged for the page; for video, one animated GIF per clip (a file in ``folder``)."""
    if run.output.videos:
        paths = []
        for frames in run.output.videos:
            path = Path(tempfile.mkstemp(suffix=".gif", dir=folder)[1])
            path.write_bytes(render.gif_bytes([render.enlarge(f) for f in frames]))
            paths.append(str(path))
        return paths
    return [render.enlarge(im) for im in run.output.images or []]


def api_media(run: compare.Run) -> dict[str, list[str]]:
    """A run's pictures as data URLs: ``images`` (PNG; film strips for video) and, for video, ``videos`` (GIF)."""
    out = {"images": [render.data_url(render.png_bytes(im), "image/png") for im in run.output.images or []]}
    if run.output.videos:
        out["videos"] = [render.data_url(render.gif_bytes(frames), "image/gif") for frames in run.output.videos]
    return out


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------


def build_app(pipelines: dict[str, Pipeline] | None = None, models: Sequence[str] = (), device: str = "cpu",
              concurrency: int = 1, max_queue: int = 16) -> gr.Blocks:
    """The Gradio app. ``pipelines``: ready pipelines by name (listed first; tests inject tiny ones); ``models``:
    more names or folders to list; the shipped demos and the official names are always listed.

    API ``/generate(model, condition, sampler, options, seed, batch_size, cfg_scale, temperature, top_k, top_p,
    checkpoint, tokenizer_checkpoint, trust_checkpoint)`` returns ``{"baseline": {...}, "accelerated": {...},
    "acceptance_map", "verdict", "table", "speedup_forward_passes", "speedup_seconds", ...}``; each run holds its
    sampler, options, statistics and ``images`` (PNG data URLs; video adds ``videos``, GIF data URLs)."""
    store = compare.ModelStore(pipelines, models, device)
    folder = tempfile.mkdtemp(prefix="vargen-app-")
    first = store.default_name()
    first_pipe = _load_quietly(store, first)

    def generate(model: str = first or "", condition: str = "", sampler: str = "", options: str = "", seed: int = 0,
                 batch_size: int = 1, cfg_scale: float | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, checkpoint: str = "",
                 tokenizer_checkpoint: str = "", trust_checkpoint: bool = False) -> dict:
        """Run the model's baseline and ``sampler`` (a name or a spec ``name:key=value``; empty: the model's default)
        with ``options`` (``key=value,key=value``) on one condition (a class id or name, a prompt, a scene seed;
        empty: the first class or scene) and return both runs' statistics and images, the acceptance map and the
        verdict."""
        with reported(f"{sampler or 'the default sampler'} on {model}"):
            # a JSON client may send any type: each parameter is checked before it is used
            model, sampler, options = (compare.api_text(v, n) for v, n in ((model, "model"), (sampler, "sampler"),
                                                                             (options, "options")))
            files = Files(compare.api_text(checkpoint, "checkpoint"),
                          compare.api_text(tokenizer_checkpoint, "tokenizer_checkpoint"),
                          compare.api_flag(trust_checkpoint, "trust_checkpoint"))
            condition = compare.api_condition(condition)
            pipe = store.get(model, files)
            spec = compare.parse_sampler(sampler, pipe)
            extra = compare.collect_options(spec.name, {}, options)
            if not str(condition or "").strip() and compare.condition_kind(pipe) in ("class", "scene"):
                condition = compare.condition_choices(pipe)[0][1]
            config = dict(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
            request = compare.prepare(pipe, model, condition, spec, extra, config, seed, batch_size)
            base, fast = compare.run(request, pipe.baseline_sampler), compare.run(request)
            amap = render.acceptance_maps(fast.stats, pipe.model)
            return {**compare.stats_json(request, base, fast),
                    "baseline": {**compare.summary(base), **api_media(base)},
                    "accelerated": {**compare.summary(fast), **api_media(fast)},
                    "acceptance_map": render.data_url(render.png_bytes(amap), "image/png") if amap else None,
                    "verdict": compare.verdict(request, base, fast), "table": compare.stats_table(base, fast)}

    def on_model(model, checkpoint, tokenizer_checkpoint, trust):
        """The form for a model: its conditions, samplers, defaults; for official names the files to give."""
        name = str(model or "").strip()
        official = catalog.official(name) is not None
        files = Files(checkpoint or "", tokenizer_checkpoint or "", bool(trust))
        if official and not store.ready(name) and not files.given():
            return [gr.update(visible=True), compare.files_hint(name), *[gr.update()] * (len(form) - 2)]
        with reported(f"loading {name}"):
            pipe = store.get(name, files)
        return [gr.update(visible=official), compare.files_hint(name) if official else "", *form_updates(pipe)]

    def form_updates(pipe: Pipeline) -> list:
        kind = compare.condition_kind(pipe)
        choices = compare.condition_choices(pipe) if kind in ("class", "scene") else []
        spec = compare.default_spec(pipe)
        defaults = compare.model_defaults(pipe)
        fields = pipe.family.config_fields
        return [gr.update(choices=choices, value=choices[0][1] if choices else None, label=kind,
                          visible=kind in ("class", "scene")),
                gr.update(visible=kind == "prompt"),
                gr.update(choices=list(pipe.applicable_samplers()), value=spec.name),
                *[gr.update(value=getattr(defaults, n), visible=n in fields) for n in CONFIG_NAMES],
                compare.describe(pipe), *option_updates(pipe, spec.name)]

    def pipe_or_none(model, checkpoint="", tokenizer_checkpoint="", trust=False):
        try:
            return store.get(model, Files(checkpoint or "", tokenizer_checkpoint or "", bool(trust)))
        except Exception:  # noqa: BLE001 - only the values shown depend on it; Generate reports the error
            return None

    def on_sampler(model, checkpoint, tokenizer_checkpoint, trust, sampler):
        return option_updates(pipe_or_none(model, checkpoint, tokenizer_checkpoint, trust), sampler)

    def on_rule(model, checkpoint, tokenizer_checkpoint, trust, sampler, rule):
        updates = option_updates(pipe_or_none(model, checkpoint, tokenizer_checkpoint, trust), sampler, rule or None)
        updates[OPTION_NAMES.index("acceptance")] = gr.update()  # keep the rule just chosen
        return updates

    def on_generate(model, checkpoint, tokenizer_checkpoint, trust, condition, prompt, sampler, seed, batch_size,
                    *rest, progress=gr.Progress()):
        option_values = dict(zip(OPTION_NAMES, rest[: len(OPTION_NAMES)]))
        more, cfg_scale, temperature, top_k, top_p = rest[len(OPTION_NAMES):]
        yield None, None, None, "", "", {}  # clear the last result first: an error never sits next to old numbers
        with reported(f"{sampler} on {model}"):
            progress(0.0, desc=f"loading {model}")
            pipe = store.get(model, Files(checkpoint or "", tokenizer_checkpoint or "", bool(trust)))
            spec = compare.parse_sampler(sampler, pipe)
            options = compare.collect_options(spec.name, option_values, more)
            given = prompt if compare.condition_kind(pipe) == "prompt" else condition
            config = dict(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
            request = compare.prepare(pipe, model, given, SamplerSpec(spec.name), options, config, seed, batch_size)
            progress(0.05, desc=f"{pipe.baseline_sampler} baseline")
            base = compare.run(request, pipe.baseline_sampler)
            yield (gallery(base, folder), None, None, "", compare.stats_table(base, None),
                   compare.stats_json(request, base, None))
            progress(0.5, desc=spec.name)
            fast = compare.run(request)
            yield (gallery(base, folder), gallery(fast, folder), render.acceptance_maps(fast.stats, pipe.model),
                   compare.verdict(request, base, fast), compare.stats_table(base, fast),
                   compare.stats_json(request, base, fast))

    with gr.Blocks(title="vargen: fast visual autoregressive sampling") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=340):
                model = gr.Dropdown(store.names(), value=first, label="model", allow_custom_value=True,
                                    info="a shipped demo, an official name, or a local folder", elem_id="model")
                with gr.Group(visible=False) as files_box:
                    files_hint = gr.Markdown()
                    checkpoint = gr.Textbox(label="checkpoint", placeholder="/path/to/model.pt")
                    tokenizer_checkpoint = gr.Textbox(label="tokenizer checkpoint", placeholder="/path/to/tokenizer")
                    trust = gr.Checkbox(False, label="trust these files (they may run code when read)")
                kind = compare.condition_kind(first_pipe) if first_pipe else "class"
                choices = compare.condition_choices(first_pipe) if first_pipe and kind != "prompt" else []
                condition = gr.Dropdown(choices, value=choices[0][1] if choices else None, label=kind,
                                        allow_custom_value=True, visible=kind in ("class", "scene"),
                                        elem_id="condition")
                prompt = gr.Textbox(label="prompt", visible=kind == "prompt", placeholder="a red fox in the snow",
                                    lines=2, elem_id="prompt")
                first_spec = compare.default_spec(first_pipe) if first_pipe else SamplerSpec("sjd")
                sampler = gr.Dropdown(list(first_pipe.applicable_samplers()) if first_pipe else [], label="sampler",
                                      value=first_spec.name, allow_custom_value=True, elem_id="sampler",
                                      info="compared with the model's baseline")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="seed", min_width=80)
                    batch_size = gr.Number(1, precision=0, label="batch size", info=f"1 to {compare.MAX_BATCH}",
                                           min_width=80)
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                info = gr.Markdown(compare.describe(first_pipe) if first_pipe else "", elem_id="model-info")
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    shown = compare.shown_options(first_pipe, first_spec.name)
                    controls = [option_control(CATALOGUE[n], shown) for n in OPTION_NAMES]
                    more = gr.Textbox("", label="more options", placeholder="key=value, key=value",
                                      elem_id="more-options", info="any option in the sampler grammar; wins over "
                                                                   "the boxes above")
                    config = config_controls(first_pipe)
            with gr.Column(scale=2):
                with gr.Row():
                    base_images = gr.Gallery(label="baseline", columns=2, height=300, object_fit="contain",
                                             elem_id="baseline")
                    fast_images = gr.Gallery(label="accelerated", columns=2, height=300, object_fit="contain",
                                             elem_id="accelerated")
                    with gr.Column(min_width=200):
                        gr.Markdown("**acceptance map**: the pass that committed each token")
                        amap = gr.Image(show_label=False, type="pil", height=270, format="png",
                                        elem_id="acceptance-map")
                verdict = gr.Markdown(elem_id="verdict")
                table = gr.Markdown(elem_id="stats-table")
                with gr.Accordion("statistics (JSON)", open=False):
                    raw = gr.JSON(label="statistics")

        model_inputs = [model, checkpoint, tokenizer_checkpoint, trust]
        form = [files_box, files_hint, condition, prompt, sampler, *config, info, *controls]
        private = dict(api_visibility="undocumented")
        model.change(on_model, model_inputs, form, api_name="model_info", concurrency_id="model", **private)
        sampler.input(on_sampler, [*model_inputs, sampler], controls, api_name=False, queue=False)
        if "acceptance" in OPTION_NAMES:
            rule = controls[OPTION_NAMES.index("acceptance")]
            rule.input(on_rule, [*model_inputs, sampler, rule], controls, api_name=False, queue=False)
        generate_button.click(
            on_generate, [*model_inputs, condition, prompt, sampler, seed, batch_size, *controls, more, *config],
            [base_images, fast_images, amap, verdict, table, raw], api_name="generate_page", concurrency_id="model",
            **private)
        gr.api(generate, api_name="generate", concurrency_id="model")
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    return demo


def config_controls(pipe: Pipeline | None) -> list:
    """CFG scale, temperature, top-k, top-p with the model's defaults (shown where the family uses them)."""
    defaults = compare.model_defaults(pipe) if pipe else None
    fields = pipe.family.config_fields if pipe else CONFIG_NAMES
    specs = {"cfg_scale": ("CFG scale", "1 disables guidance", None), "temperature": ("temperature", "0 is greedy", None),
             "top_k": ("top-k", "0 disables", 0), "top_p": ("top-p", "1 disables", None)}
    return [gr.Number(getattr(defaults, name, None), label=label, info=info, precision=precision,
                      visible=name in fields) for name, (label, info, precision) in specs.items()]


def _load_quietly(store: compare.ModelStore, name: str | None) -> Pipeline | None:
    """The first model, loaded when that needs no download (so the form starts filled in)."""
    if name is None or not store.ready(name):
        return None
    try:
        return store.get(name)
    except Exception as err:  # shown again, readably, when the user generates
        log.warning("could not load %s: %s", name, err)
        return None


def serve(args) -> int:
    """``vargen app``: build the app with the command's flags and serve it until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo = build_app(models=args.model, device=args.device, concurrency=args.concurrency, max_queue=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0
