"""Fuzzing (issue 33, item 6): generated input through the option grammar, the command line, ``pipeline.json`` /
``config.json`` and the app's ``/generate`` API gives a result or one clear error -- never a traceback, another
exception type, a hang or an allocation failure.

Hypothesis runs derandomized with a fixed example budget per property (no example database), so CI sees the same
inputs every run; the budgets add up to 2,100 inputs and the file takes about a minute of one core. Every example
runs under an alarm (:func:`answered`): an input that does not finish in time is a hang. What a property found is
pinned as a plain test beside the code it exercised ("Found by tests/test_fuzz.py" in tests/test_pipeline.py,
tests/test_validation.py and tests/test_app.py)."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vargen
import vargen.zoo
from helpers import tiny_gpt, write_model_parts
from vargen.samplers import available_samplers, sampler_options
from vargen.samplers.spec import SamplerSpec


def fuzz(examples: int) -> settings:
    """The same ``examples`` inputs on every run: derandomized, no example database, no per-example deadline (the
    alarm of :func:`answered` catches hangs)."""
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


DEMO = vargen.zoo.shipped_path("cifar10-llamagen")
VOCAB, GRID, CLASSES = 16, 8, ["plane", "car", "bird"]


class Hang(AssertionError):
    """An example that did not finish within its time."""


@contextmanager
def answered(seconds: float = 20.0):
    """Run the block under an alarm: past ``seconds`` it is a hang (the main thread only, as pytest runs tests)."""
    def stop(*_):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def assert_clear(err: BaseException, names: str | None = None) -> str:
    """A readable error: a non-empty first line (naming ``names`` when given), no traceback text in it."""
    text = str(err)
    first = text.strip().splitlines()[0] if text.strip() else ""
    assert first and "Traceback" not in text and 'File "' not in text, repr(text)
    if names is not None:
        assert names in text, (names, text)
    return first


@pytest.fixture(scope="module", autouse=True)
def _quiet_environment(tmp_path_factory):
    """One torch thread, no network, gradio's files in a temporary folder."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VARGEN_THREADS", "1")
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        yield
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def demos():
    return {name: vargen.load(name) for name in ("cifar10-llamagen", "cifar10-var", "cifar10-mar")}


def tiny_pipeline():
    """A random 8x8-token LlamaGen pipeline with a 16-code VQ: any sampler finishes in a few hundredths of a second."""
    from vargen.pipeline import Pipeline
    from vargen.samplers.base import SamplingConfig
    from vargen.tokenizers.llamagen_vq import VQConfig, VQModel

    gpt = tiny_gpt(vocab=VOCAB, grid=GRID, num_classes=len(CLASSES))
    torch.manual_seed(0)
    vq = VQModel(VQConfig(codebook_size=VOCAB, codebook_embed_dim=4, encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1],
                          z_channels=32, ch=32, num_res_blocks=1)).eval()
    return Pipeline("llamagen", gpt, vq, SamplingConfig(cfg_scale=2.0, top_k=0), CLASSES, "tiny")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny pipeline as a model folder (pipeline.json + gpt/ + vq/), as the zoo ships them."""
    root = tmp_path_factory.mktemp("tiny")
    write_model_parts(tiny_pipeline(), root, "gpt", "vq")
    folder = root / "tiny"
    folder.mkdir()
    (folder / "pipeline.json").write_text(json.dumps({"kind": "llamagen", "model": "gpt", "tokenizer": "vq",
                                                      "class_names": CLASSES}))
    return folder


# ----------------------------------------------------------------------------------------------
# Values: what a person or a program may type
# ----------------------------------------------------------------------------------------------

SAMPLERS = available_samplers()
OPTION_NAMES = sorted({key for name in SAMPLERS for key in sampler_options(name)} | {"model", "acceptance"})
ODD_TEXT = ["", " ", "nan", "NaN", "inf", "-inf", "1e309", "-1", "0", "1", "2", "8", "2.5", "-0", "1e-320", "true",
            "false", "none", "null", "auto", "yes", "é", "窓", "\x00", "1/2/3", "0/0", "a/b", "//", "9" * 5000,
            str(2**64), str(-(2**63)), "0x10", "1_000", " 8 ", "=", ":", ",", "main", "refiner", "draft"]
odd_text = st.one_of(st.sampled_from(ODD_TEXT), st.integers(-(2**70), 2**70).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=12))
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.sampled_from([0, 1, -1, 2**31, 10**9]), st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from(ODD_TEXT), st.text(max_size=8))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=6)


def mostly(usual: st.SearchStrategy, *rare: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` four times in five, else one of ``rare``."""
    return st.integers(0, 4).flatmap(lambda i: usual if i else st.one_of(*rare))


def typed_text(opt) -> st.SearchStrategy[str]:
    """Text for a declared option: values of its type in and out of its range, its choices and literals."""
    low = opt.minimum if opt.minimum is not None else 0
    if opt.choices:
        return st.sampled_from([*map(str, opt.choices), "none"])
    numbers = {"bool": st.sampled_from(["true", "false", "yes", "no", "1", "0", "on", "maybe"]),
               "int": st.integers(int(low) - 2, int(low) + 40).map(str),
               "float": st.floats(low - 1, (opt.maximum or low + 4) + 1, allow_nan=False).map(repr)}
    if opt.kind in ("ints", "floats"):
        item = numbers[opt.kind[:-1]]
        return st.lists(item, min_size=1, max_size=3).map("/".join)
    return numbers.get(opt.kind, odd_text)


@st.composite
def spec_texts(draw) -> str:
    """``name:key=value,...``: mostly a sampler's own options with values of their type (in range and out), and now
    and then names, keys, values and separators that do not exist; sometimes raw text."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.text(max_size=40))
    name = draw(mostly(st.sampled_from(SAMPLERS), st.sampled_from(SAMPLERS).map(str.upper), st.text(max_size=8)))
    own = sampler_options(name) if name in SAMPLERS else {}
    keys = mostly(st.sampled_from(sorted(own) or OPTION_NAMES), st.sampled_from(OPTION_NAMES), st.text(max_size=8))
    items = []
    for key in draw(st.lists(keys, max_size=4, unique=True)):
        odd = draw(st.integers(0, 4)) == 0 or key not in own
        items.append(f"{key}={draw(odd_text if odd else typed_text(own[key]))}")
    sep = draw(st.sampled_from([":"] * 8 + [": ", "::", ""]))
    return name + (sep + ",".join(items) if items or draw(st.booleans()) else "")


# ----------------------------------------------------------------------------------------------
# The option grammar
# ----------------------------------------------------------------------------------------------


@fuzz(1000)
@given(text=spec_texts())
def test_any_sampler_spec_gives_a_sampler_or_one_clear_error(demos, text):
    """SamplerSpec.parse, then Pipeline.check_sampler on the three demos: a sampler or one clear ValueError (a
    FileNotFoundError for a draft= folder that is not there); a spec's canonical text parses back to it."""
    with answered():
        try:
            spec = SamplerSpec.parse(text)
        except ValueError as err:
            assert_clear(err)
            return
        assert SamplerSpec.parse(str(spec)) == spec, str(spec)  # the canonical text means the same sampler
        for pipe in demos.values():
            try:
                sampler = pipe.check_sampler(spec.name, model=spec.member, **spec.options)
            except (ValueError, FileNotFoundError) as err:  # a draft= folder that is not there
                assert_clear(err)
            else:
                assert sampler is not None


def in_range(draw, opt, model, cap: int):
    """A value of ``opt`` within its declared range and the model's bound, at most ``cap`` for open ranges (or a
    huge one now and then: its size check must refuse it before any allocation)."""
    if opt.choices:
        return draw(st.sampled_from(opt.choices))
    if opt.kind == "bool":
        return draw(st.sampled_from([True, False, None] if opt.optional else [True, False]))
    low = int(opt.minimum) if opt.minimum is not None else 0
    if opt.kind == "int":
        high = opt.maximum if opt.maximum is not None else getattr(model, opt.bound, None) if opt.bound else None
        if high is None:
            return draw(st.one_of(st.integers(low, low + cap), st.just(10**9)))
        return draw(st.integers(low, int(high)))
    if opt.kind == "float":
        high = opt.maximum if opt.maximum is not None else low + 4.0
        return draw(st.floats(float(opt.minimum or 0.0), float(high), allow_nan=False))
    if opt.kind in ("ints", "floats"):
        item = st.integers(low, low + cap) if opt.kind == "ints" else st.floats(low, low + 2.0)
        return draw(st.one_of(st.none(), st.lists(item, min_size=1, max_size=3).map(tuple)))
    return None


@st.composite
def in_range_requests(draw, pipes):
    """A sampler that applies to one of ``pipes`` and 0-3 of its options, each within its declared range."""
    name = draw(st.sampled_from(sorted(pipes)))
    pipe = pipes[name]
    sampler = draw(st.sampled_from(pipe.applicable_samplers()))
    declared = sampler_options(sampler)
    rule = declared.get("acceptance")
    acceptance = draw(st.sampled_from(rule.choices)) if rule is not None and draw(st.booleans()) else None
    declared = sampler_options(sampler, acceptance)
    keys = [k for k, o in declared.items() if o.text and o.kind != "object" and k != "acceptance"]
    chosen = draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)) if keys else []
    cap = 4 if pipe.family.protocol == "continuous" else 16  # a MAR step is a diffusion loop: keep runs short
    options = {k: in_range(draw, declared[k], pipe.model, cap) for k in chosen}
    if acceptance is not None:
        options["acceptance"] = acceptance
    if "num_iter" in declared:
        options["num_iter"] = draw(st.integers(1, 4))
    for key in ("diffusion_start", "diffusion_end"):
        if isinstance(options.get(key), int):
            options[key] = min(options[key], 8)
    return name, sampler, options


@pytest.fixture(scope="module")
def small_pipes(demos):
    return {"tiny": tiny_pipeline(), "cifar10-var": demos["cifar10-var"], "cifar10-mar": demos["cifar10-mar"]}


@fuzz(100)
@given(data=st.data())
def test_options_within_their_ranges_run_or_are_refused_before_any_work(small_pipes, data):
    """In-range options either sample (tokens of the model's shape) or are refused with a ValueError (a tree or a
    budget past what the machine may use) -- never an allocation failure or another exception."""
    name, sampler, options = data.draw(in_range_requests(small_pipes))
    pipe = small_pipes[name]
    with answered(30):
        try:
            out = pipe.generate([0], sampler=sampler, seed=0, decode=False, **options)
        except ValueError as err:
            assert_clear(err)
            return
    assert out.tokens.shape[0] == 1 and out.stats.forward_passes >= 1
    if pipe.family.protocol == "token":
        assert 0 <= int(out.tokens.min()) and int(out.tokens.max()) < pipe.model.vocab_size


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

NOWHERE = "/nonexistent/vargen-fuzz"
# flags left out: they start long work (compiling, the GPU suite) whatever else is given
LONG_WORK = {("generate", "--compile"), ("bench", "--suite"), ("bench", "--shapes"), ("bench", "--compile")}
# commands run only with a flag whose value fails before any work: command -> (flag, failing values)
MUST_FAIL = {"app": ("--port", ["0", "-1", "65536", "100000", "x"]),
             "train": ("--data", [NOWHERE + "/data.tar.gz", NOWHERE])}
WEIGHTS = {"generate": 4, "samplers": 3, "bench": 2}
TRAINERS = ("vq", "gpt", "features", "var-vqvae", "var", "code-refiner", "kl-vae", "mar")  # the ones that read --data


def subparsers(parser) -> dict:
    import argparse

    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def flag_pools(tiny: str) -> dict[str, st.SearchStrategy]:
    """What people type after the flags whose values are names, paths or small counts (the rest: by the flag's
    type). Paths are scratch ({out}) or missing (NOWHERE); models and counts are small (no minutes of work)."""
    ints = st.one_of(st.integers(-2, 3), st.sampled_from([2**31, 2**63, 10**12])).map(str)
    pools = {
        "--model": st.sampled_from([tiny, tiny, "cifar10-var", "no-such-model", NOWHERE, "", "cifar10-lamagen"]),
        "--sampler": spec_texts(), "--acceptance": st.one_of(st.sampled_from(["exact", "gsd", "lantern"]), odd_text),
        "--class-id": st.sampled_from(["0", "car", "bird", "2: bird", "3", "-1", "cat", "1.5", ""]),
        "--prompt": odd_text, "--prompt-ids": st.sampled_from(["0,1,2", "1", "a,b", "", "-5", "99999999"]),
        "--scene": ints, "--context": st.just(NOWHERE + "/clip.gif"), "--per-class": st.integers(-1, 2).map(str),
        "--batch-size": st.one_of(st.integers(-1, 4).map(str), st.just(str(2**40))),
        "--batch": st.integers(-1, 2).map(str), "--repeats": st.sampled_from("-1012"),
        "--device": st.sampled_from(["cpu", "meta", "cuda:99", "gpu", "", "cpu:0"]),
        "--threads": st.sampled_from(["1", "-1", "1000", "x", "0"]),
        "--checkpoint": st.sampled_from([NOWHERE + "/w.pt", ""]), "--tokenizer-checkpoint": st.just(NOWHERE + "/vq.pt"),
        "--data": st.sampled_from([NOWHERE + "/data.tar.gz", NOWHERE]),
        "--tokenizer": st.sampled_from(["cifar10-vq", NOWHERE, "x"]),
        "--inception-weights": st.just(NOWHERE + "/inception.pt"), "--features": odd_text,
        "sources": st.just(NOWHERE + "/images"), "name": st.one_of(st.sampled_from(SAMPLERS), odd_text),
        "int": ints, "float": mostly(st.floats(-2, 4).map(repr), st.sampled_from(["nan", "inf", "-1e309", "x"])),
    }
    scratch = st.sampled_from(["{out}/file", "{out}", "{out}/a/b"])
    return pools | {f"--{name}": scratch for name in ("out", "json", "cache-dir", "export")}


@st.composite
def flag_values(draw, action, pools: dict) -> list[str]:
    """argv items for one flag (or positional): values of its type or choices, and now and then odd text."""
    flag = action.option_strings[0] if action.option_strings else action.dest
    if action.nargs == 0:
        return [flag]
    if action.choices is not None:
        value = st.sampled_from(sorted(map(str, action.choices)))
    else:
        value = pools.get(flag, pools.get(getattr(action.type, "__name__", "str"), odd_text))
    if flag != "sources":  # odd text as a source could name a real folder of images
        value = mostly(value, odd_text)
    count = draw(st.integers(1, 2)) if action.nargs in ("+", "*") else 1
    return ([flag] if action.option_strings else []) + [draw(value) for _ in range(count)]


@st.composite
def command_lines(draw, tiny: str) -> list[str]:
    """An argv of a real subcommand with some of its real flags (see LONG_WORK / MUST_FAIL for what is held back)."""
    from vargen.cli import build_parser

    commands = subparsers(build_parser())
    weighted = [c for c in sorted(commands) for _ in range(WEIGHTS.get(c, 1))]  # the commands people use most
    name = draw(st.sampled_from(weighted))
    argv, parser = [name], commands[name]
    if name in ("measure", "train"):
        what = draw(st.sampled_from(sorted(subparsers(parser)) if name == "measure" else TRAINERS))
        argv, parser = [name, what], subparsers(parser)[what]
    actions = [a for a in parser._actions
               if a.dest != "help" and (name, (a.option_strings or [""])[0]) not in LONG_WORK]
    required = [a for a in actions if a.required or not a.option_strings]
    optional = [a for a in actions if a not in required]
    chosen = required + (draw(st.lists(st.sampled_from(optional), max_size=5, unique_by=id)) if optional else [])
    pools = flag_pools(tiny)
    for action in chosen:
        argv += draw(flag_values(action, pools))
    if name in MUST_FAIL:
        flag, bad = MUST_FAIL[name]
        argv += [flag, draw(st.sampled_from(bad))]
    if name in ("generate", "bench") and "--model" not in argv:  # not the default: ten images of a real model
        argv += ["--model", tiny]
    if name in ("generate", "bench", "train") and "--out" not in argv:
        argv += ["--out", "{out}" if name != "bench" else "{out}/table.md"]
    if draw(st.integers(0, 19)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(odd_text))
    return argv


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``vargen.cli.main(argv)`` in this process: (exit status, stdout, stderr); argparse's exits included."""
    from vargen.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@fuzz(300)
@given(data=st.data())
def test_any_command_line_exits_0_or_with_one_error_line(tiny_folder, tmp_path_factory, data):
    """``vargen.cli.main`` in this process: exit 0, or exit 2 with a last stderr line "error: ..." (argparse's
    usage line before it); never a traceback or another exception."""
    argv = data.draw(command_lines(str(tiny_folder)))
    out_dir = tmp_path_factory.mktemp("cli")
    argv = [a.replace("{out}", str(out_dir)) for a in argv]
    here = os.getcwd()
    os.chdir(out_dir)  # a relative path typed anywhere (an --out of "") writes in the scratch folder
    try:
        with answered(30):
            code, out, err = run_main(argv)
    finally:
        os.chdir(here)
        torch.set_num_threads(1)  # --threads sets this process's threads
        shutil.rmtree(out_dir, ignore_errors=True)
    assert "Traceback" not in out + err, err[-3000:]
    if code == 0:
        return
    assert code == 2, (code, err[-2000:])
    last = err.strip().splitlines()[-1]
    assert "error: " in last and last.split("error: ", 1)[1].strip(), err[-2000:]


# ----------------------------------------------------------------------------------------------
# pipeline.json and config.json
# ----------------------------------------------------------------------------------------------

PIPELINE_KEYS = ["kind", "model", "tokenizer", "draft", "refiner", "defaults", "class_names", "sampler_options",
                 "benchmark", "scenes", "model_options"]


def numbers_near(value) -> st.SearchStrategy:
    """Numbers a mistyped or edited file holds instead of ``value``: 0, negatives, off by one, doubled, huge."""
    base = value if isinstance(value, (int, float)) and not isinstance(value, bool) else 1
    return st.sampled_from([0, -1, base + 1, base - 1, base * 2, base // 2 if isinstance(base, int) else base / 2,
                            10**9, 2**40, 0.5, float("nan"), float("inf"), -base])


def nearby(draw, old):
    """A value an edit puts where ``old`` was: a string or list cut short, emptied or grown, or a number near it."""
    if isinstance(old, str) and draw(st.booleans()):
        return draw(st.sampled_from(["", " ", "x", old[:-1] or "y"]))
    if isinstance(old, list) and draw(st.booleans()):
        return draw(st.sampled_from([[], old[:-1], old + old[:1], [None], old[::-1]]))
    return draw(numbers_near(old))


@st.composite
def edited(draw, doc: dict, keys: list[str]) -> object:
    """``doc`` after 1-3 edits: a key removed, added (a known name or not) or given another value (another type,
    one near the old one, a nested edit); now and then not an object at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_value)
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(mostly(st.sampled_from(keys), st.text(max_size=6)))
        old = doc.get(key)
        how = draw(st.sampled_from(["drop", "value", "near", "nested" if isinstance(old, dict) else "near"]))
        if how == "drop":
            doc.pop(key, None)
        elif how == "value":
            doc[key] = draw(json_value)
        elif how == "near":
            doc[key] = nearby(draw, old)
        else:
            doc[key] = draw(edited(old, sorted(old) or ["x"]))
    return doc


def demo_spec() -> dict:
    """The shipped LlamaGen demo's pipeline.json with its companions by absolute path."""
    spec = json.loads((DEMO / "pipeline.json").read_text())
    for key in ("model", "tokenizer", "draft"):
        spec[key] = str(vargen.zoo.ZOO_DIR / spec[key])
    return spec


def assert_loads_or_names_the_file(folder: Path, where: Path):
    """``vargen.load(folder)``: a pipeline, or one error whose first line names a path under ``where``."""
    with answered():
        try:
            pipe = vargen.load(folder)
        except (ValueError, FileNotFoundError) as err:
            assert_clear(err, names=str(where))
            return None
    assert pipe.num_classes >= 1
    return pipe


@fuzz(250)
@given(data=st.data())
def test_any_pipeline_json_loads_or_is_one_error_naming_it(tmp_path_factory, data):
    spec = data.draw(edited(demo_spec(), PIPELINE_KEYS))
    folder = tmp_path_factory.mktemp("pipeline")
    (folder / "pipeline.json").write_text(json.dumps(spec))  # NaN and Infinity included, as Python writes them
    pipe = assert_loads_or_names_the_file(folder, folder)
    if pipe is not None and pipe.class_names is not None:
        assert len(pipe.class_names) == pipe.num_classes


PARTS = {"model": "cifar10-llamagen", "tokenizer": "cifar10-vq", "draft": "cifar10-llamagen-head"}


@fuzz(250)
@given(data=st.data())
def test_any_model_config_json_loads_or_is_one_error_naming_it(tmp_path_factory, data):
    """A part's config.json edited (weights linked): the pipeline loads and the part works, or one error names it."""
    part = data.draw(st.sampled_from(sorted(PARTS)))
    source = vargen.zoo.ZOO_DIR / PARTS[part]
    meta = json.loads((source / "config.json").read_text())
    if data.draw(st.integers(0, 3)):
        meta["config"] = data.draw(edited(meta["config"], sorted(meta["config"])))
    else:
        meta = data.draw(edited(meta, ["type", "config"]))
    root = tmp_path_factory.mktemp("config")
    folder = root / "part"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(meta))
    (folder / "model.safetensors").symlink_to(source / "model.safetensors")
    (root / "pipe").mkdir()
    (root / "pipe" / "pipeline.json").write_text(json.dumps({**demo_spec(), part: str(folder)}))
    pipe = assert_loads_or_names_the_file(root / "pipe", folder)
    if pipe is not None and part == "draft":  # read on first use, by the samplers that draft with it
        with answered():
            try:
                pipe.check_sampler("lantern")
            except (ValueError, FileNotFoundError) as err:
                assert_clear(err, names=str(folder))


# ----------------------------------------------------------------------------------------------
# The app's /generate API
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_generate():
    """The function behind the app's ``/generate`` endpoint, with the tiny pipeline listed as "tiny"."""
    pytest.importorskip("gradio", reason="the app needs gradio (pip install 'vargen[app]')")
    from vargen.app import build_app

    demo = build_app({"tiny": tiny_pipeline()})
    return next(f.fn for f in demo.fns.values() if f.api_name == "generate")


@st.composite
def option_texts(draw, sampler: str) -> str:
    """The app's ``options`` box: ``key=value,...`` of ``sampler``'s options (mostly) with typed or odd values."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=20))
    declared = {k: o for k, o in sampler_options(sampler).items() if o.text} if sampler in SAMPLERS else {}
    keys = mostly(st.sampled_from(sorted(declared) or OPTION_NAMES), st.sampled_from(OPTION_NAMES))
    items = draw(st.lists(keys, max_size=3, unique=True))
    return ",".join(f"{k}={draw(mostly(typed_text(declared[k]), odd_text) if k in declared else odd_text)}"
                    for k in items)


@st.composite
def api_payloads(draw) -> dict:
    """Keyword payloads as a JSON client may send them: some of the parameters, of the right type mostly (any JSON
    value one time in ten)."""
    def field(usual):
        return draw(st.integers(0, 9).flatmap(lambda i: usual if i else json_value))

    numbers = st.one_of(st.floats(-1, 4), st.sampled_from([float("nan"), float("inf"), 1.0, 0.0]))
    sampler = field(mostly(st.sampled_from(["", "ar", "sjd", "sjd:window=4", "zipar", "gsd", "var", "code", "sd"]),
                           spec_texts()))
    fields = {
        "model": st.sampled_from(["tiny"] * 6 + ["cifar10-var", "", "no-such-model", NOWHERE, "llamagen-c2i-B-256"]),
        "condition": st.sampled_from(["car", "0", "2: bird", "plane", "3", "-1", "", "dog", "1.5", " 1 ", 1, 7]),
        "options": option_texts(sampler.split(":")[0] if isinstance(sampler, str) else ""),
        "seed": st.one_of(st.integers(0, 5), st.sampled_from([-1, 2**63, 2**64, 1.5, 3.0, "4", True])),
        "batch_size": st.one_of(st.integers(1, 2), st.sampled_from([0, 9, -1, 2.5, 2.0, "2", 10**9])),
        "cfg_scale": st.one_of(st.none(), numbers), "temperature": st.one_of(st.none(), numbers),
        "top_k": st.one_of(st.none(), st.integers(-2, 20), st.sampled_from([2.0, 2.5, "3", 10**12])),
        "top_p": st.one_of(st.none(), numbers), "checkpoint": st.sampled_from(["", NOWHERE + "/w.pt"]),
        "tokenizer_checkpoint": st.sampled_from(["", NOWHERE + "/vq.pt"]), "trust_checkpoint": st.booleans(),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), max_size=6, unique=True))
    return {"sampler": sampler, **{name: field(fields[name]) for name in chosen}}


@fuzz(200)
@given(payload=api_payloads())
def test_any_api_payload_gives_a_result_or_one_invalid_input_error(api_generate, payload):
    """Both runs' images and JSON-clean statistics, or gradio's error titled "Invalid input" (the app's title for a
    ValueError; any other exception is reported as "... failed: <type>")."""
    import gradio as gr

    with answered(30):
        try:
            out = api_generate(**payload)
        except gr.Error as err:
            assert err.title == "Invalid input", err.message  # anything else was an unexpected exception
            assert_clear(err.message)
            return
    json.dumps(out, allow_nan=False)  # what the endpoint sends is JSON: no NaN, no objects
    batch = len(out["baseline"]["images"])
    assert batch == out["batch_size"] and len(out["accelerated"]["images"]) == batch


def test_the_properties_try_at_least_2000_inputs_in_all():
    """Issue 33's acceptance: at least 2,000 generated inputs per CI run (each property's fixed budget)."""
    budgets = {name: f._hypothesis_internal_use_settings.max_examples for name, f in globals().items()
               if name.startswith("test_") and getattr(f, "is_hypothesis_test", False)}
    assert len(budgets) == 6 and sum(budgets.values()) >= 2000, budgets
