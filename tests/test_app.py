"""The app (vargen.app): options from the grammar, conditions, the acceptance map, the keyword API driven by
gradio_client, bad input, the queue, and the page in Chromium at 1280x800. Tiny random pipelines, plus one call
per shipped family."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("gradio", reason="the app tests need gradio (pip install 'vargen[app]')")
gradio_client = pytest.importorskip("gradio_client", reason="the app tests need gradio_client")

from helpers import tiny_gpt, tiny_video_folder, write_model_parts  # noqa: E402
from vargen.app import build_app, compare, render  # noqa: E402
from vargen.pipeline import Pipeline, load  # noqa: E402
from vargen.samplers.base import SamplingConfig  # noqa: E402
from vargen.tokenizers.llamagen_vq import VQConfig, VQModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "app"))
import screenshot as shots  # noqa: E402

pytestmark = [  # gradio's own queue code, not ours
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
GRID, VOCAB, CLASSES = 8, 16, ["plane", "car", "bird"]


def tiny_pipeline() -> Pipeline:
    gpt = tiny_gpt(vocab=VOCAB, grid=GRID, num_classes=len(CLASSES))
    torch.manual_seed(0)
    vq = VQModel(VQConfig(codebook_size=VOCAB, codebook_embed_dim=4, encoder_ch_mult=[1, 1],
                          decoder_ch_mult=[1, 1], z_channels=32, ch=32, num_res_blocks=1)).eval()
    return Pipeline("llamagen", gpt, vq, SamplingConfig(cfg_scale=2.0, top_k=0), CLASSES, "tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        video = load(tiny_video_folder(tmp_path_factory.mktemp("video")))
        demo = build_app({"tiny": tiny_pipeline(), "tiny-video": video})
        _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                                quiet=True)
        yield url
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    c = gradio_client.Client(server, verbose=False)
    yield c
    c.close()


def generate(client, **kw):
    return client.predict(**{"model": "tiny", "condition": "car", "sampler": "sjd", "seed": 3, "batch_size": 2, **kw},
                          api_name="/generate")


def decode(url: str) -> Image.Image:
    head, data = url.split(",", 1)
    assert head.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(data)))


# -- pieces ------------------------------------------------------------------------------------------


def test_acceptance_map_colours_passes_and_marks_relaxed():
    steps = torch.tensor([0, 1, 1, 1, 2, 2, 3, 4])  # 2 x 4 grid; pass 1 committed three tokens
    relaxed = torch.zeros(8, dtype=torch.bool)
    relaxed[5] = True
    img = render.acceptance_map(steps, width=4, relaxed=relaxed, cell=10)
    assert img.size == (41, 21)
    centre = lambda r, c, dx=0: img.getpixel((c * 10 + 5 + dx, r * 10 + 5))  # noqa: E731
    assert centre(0, 1) == centre(0, 2) == centre(0, 3) == render.colour(1 / 4)
    assert centre(0, 0) != centre(0, 1) and centre(1, 2) != centre(1, 3)
    assert img.getpixel((20, 5)) == render.colour(1 / 4)  # no border inside one pass's block
    assert img.getpixel((10, 5)) == (255, 255, 255)  # a border between passes
    assert centre(1, 1) == (255, 255, 255) and centre(1, 1, dx=4) == render.colour(2 / 4)  # relaxed dot
    assert centre(1, 0) == render.colour(2 / 4)


def test_the_controls_are_the_declared_options_with_the_values_the_pipeline_runs():
    pipe = tiny_pipeline()
    sjd = compare.shown_options(pipe, "sjd")
    cache = {"kv_budget", "kv_anchor", "kv_recent_lines"}
    assert {"window", "init", "coupled", "acceptance", "sample_top", "tree_width", "tree_depth", "tree_tail", "tree",
            "adapt_min_depth", "adapt_min_width", *cache} == set(sjd)
    assert sjd["window"] == 16 and sjd["coupled"] is True  # the pipeline's default sampler: coupled SJD, as the CLI
    assert compare.default_spec(pipe).name == "sjd" and compare.default_spec(load("cifar10-var")).name == "code"
    assert compare.shown_options(load("cifar10-var"), "code")["draft_steps"] == 4  # pipeline.json over the sampler's 8
    assert compare.shown_options(load("cifar10-mar"), "mar")["num_iter"] == 16
    assert {"gamma", "k", "delta", "lam", "variant"} <= set(compare.shown_options(pipe, "lantern"))
    assert {"group_size", "prob_gap"} <= set(compare.shown_options(pipe, "sjd", "gsd"))
    assert compare.collect_options("ar", {"window": 8, "init": "vertical"}) == {}
    opts = compare.collect_options("sjd", {"window": 8.0, "k": 3, "init": "vertical"}, "sample_top=4, coupled=yes")
    assert opts == {"window": 8, "init": "vertical", "sample_top": 4, "coupled": True} and isinstance(opts["window"], int)
    with pytest.raises(ValueError, match="takes no option 'gamma'"):
        compare.collect_options("sjd", {}, "gamma=4")
    with pytest.raises(ValueError, match="per-request limit"):
        compare.collect_options("mar", {}, "num_iter=1000")


def test_conditions_are_classes_prompts_or_scenes(tmp_path):
    pipe = tiny_pipeline()
    assert compare.resolve_condition(pipe, "2: bird") == 2 and compare.resolve_condition(pipe, "car") == 1
    for bad in ("3", "-1", "dog", "", "1.5"):
        with pytest.raises(ValueError):
            compare.resolve_condition(pipe, bad)
    video = load(tiny_video_folder(tmp_path))
    assert compare.condition_kind(video) == "scene" and compare.resolve_condition(video, "scene 5".split()[1]) == 5
    assert compare.condition_choices(video)[0] == ("scene 0", "0")


# -- the API: keyword parameters in, named fields out --------------------------------------------------


def test_generate_takes_keywords_and_returns_named_fields(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]
    names = [p["parameter_name"] for p in api["parameters"]]
    assert names[:6] == ["model", "condition", "sampler", "options", "seed", "batch_size"]
    out = generate(client, options="window=8")
    base, fast = out["baseline"], out["accelerated"]
    assert base["sampler"] == "ar" and base["forward_passes"] == GRID * GRID and base["tokens_per_forward"] == 1.0
    assert fast["sampler"] == "sjd" and fast["options"]["window"] == 8 and fast["tokens_per_row"] == GRID * GRID
    assert len(base["images"]) == len(fast["images"]) == 2 and decode(fast["images"][0]).size == (GRID * 2, GRID * 2)
    assert out["speedup_forward_passes"] == pytest.approx(GRID * GRID / fast["forward_passes"], rel=1e-3)
    assert decode(out["acceptance_map"]).width > 2 * GRID * 4  # two rows' maps side by side
    assert "forward passes" in out["verdict"] and ("faster" in out["verdict"] or "slower" in out["verdict"])
    assert f"| forward passes | {GRID * GRID} | {fast['forward_passes']} |" in out["table"]
    assert out["condition"] == 1 and out["seed"] == 3 and out["batch_size"] == 2


def test_defaults_are_the_pipelines_and_the_same_seed_gives_the_same_images(client):
    out = client.predict(model="tiny", api_name="/generate")  # first class, the pipeline's default sampler
    assert out["condition"] == 0 and out["accelerated"]["options"] == {"window": 16, "coupled": True}
    again = client.predict(model="tiny", api_name="/generate")
    assert out["accelerated"]["images"] == again["accelerated"]["images"]


def test_video_goes_through_the_same_endpoint(client):
    out = client.predict(model="tiny-video", condition="2", sampler="sjd:window=6,init=temporal,coupled=true", seed=1,
                         api_name="/generate")
    assert out["condition"] == 2 and out["baseline"]["forward_passes"] == 32
    assert out["accelerated"]["options"] == {"window": 6, "init": "temporal", "coupled": True}
    clip = decode(out["accelerated"]["videos"][0])
    assert clip.n_frames == 9
    amap = decode(out["acceptance_map"])
    assert amap.height > amap.width  # two latent frames of 4x4 tokens, stacked


def test_slower_is_said_plainly_with_the_reasons():
    pipe = tiny_pipeline()
    request = compare.prepare(pipe, "tiny", "car", compare.SamplerSpec("sjd"), {"window": 16}, {}, 0, 4)
    base, fast = compare.run(request, "ar"), compare.run(request)
    base.output.stats.seconds, fast.output.stats.seconds = 1.0, 2.0
    text = compare.verdict(request, base, fast)
    assert "**2.00x slower**" in text and "On a CPU" in text and "window=4 or 8 instead of 16" in text
    assert "At batch 4" in text


@pytest.mark.parametrize("kw, message", [
    (dict(options="window=0"), "sjd: window must be >= 1, got 0"),
    (dict(options="window=100000"), "window=100000 exceeds the model's num_tokens (64)"),
    (dict(condition="7"), "class id 7 out of range: this model has 3 classes"),
    (dict(condition="dog"), "unknown class 'dog'"),
    (dict(top_k=1000), "larger than the vocabulary"),
    (dict(options="window"), "expected key=value"),
    (dict(options="coupled=maybe"), "expected true/false"),
    (dict(sampler="SJD"), "unknown sampler 'SJD'; did you mean 'sjd'?"),
    (dict(sampler="var"), "sampler 'var' does not apply to this LlamaGen model"),
    (dict(model="/no/such/folder"), "unknown model '/no/such/folder'"),
    (dict(batch_size=9), "batch size must be an integer from 1 to 8"),
    # found by tests/test_fuzz.py: JSON of another type was "... failed: AttributeError" (and a logged traceback)
    (dict(options=["window=4"]), "options must be a string, got ['window=4']"),
    (dict(trust_checkpoint="yes"), "trust_checkpoint must be true or false, got 'yes'"),
    (dict(model=None), "choose a model"),
    (dict(condition=[1]), "condition must be a class id or name, a prompt or a scene seed, got [1]"),
])
def test_bad_input_gives_one_readable_line(client, kw, message):
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        generate(client, **kw)
    assert message in str(err.value) and "Traceback" not in str(err.value)


def test_an_official_model_without_files_says_how_to_give_them_in_the_app(client, monkeypatch):
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(model="Cosmos-1.0-Autoregressive-4B", api_name="/generate")
    text = str(err.value)
    assert "model.pt" in text and "'checkpoint'" in text and "encoder.jit" in text
    assert "--checkpoint" not in text and "checkpoint=" not in text  # nothing the app cannot take


def write_pipeline_folder(root: Path) -> Path:
    """The tiny pipeline as a local model folder (pipeline.json + model/ + vq/), as the zoo ships them."""
    write_model_parts(tiny_pipeline(), root, "model", "vq")
    folder = root / "tiny-folder"
    folder.mkdir()
    spec = {"kind": "llamagen", "model": "model", "tokenizer": "vq", "defaults": {"cfg_scale": 1.5},
            "class_names": ["cat", "dog", "frog"]}
    (folder / "pipeline.json").write_text(json.dumps(spec))
    return folder


def test_a_local_model_folder_loads_by_path(client, tmp_path):
    folder = str(write_pipeline_folder(tmp_path))
    out = generate(client, model=folder, condition="frog", batch_size=1)
    assert out["model"] == folder and out["condition"] == 2 and len(out["accelerated"]["images"]) == 1


def test_model_info_offers_only_the_applicable_samplers_with_the_default_first(client):
    # the outputs the client sees (the path boxes' group is layout): hint, condition, prompt, sampler, config, info
    hint, condition, prompt, sampler, cfg, temperature, top_k, top_p, info, *_ = client.predict(
        "tiny", "", "", False, api_name="/model_info")
    assert [c[1] for c in condition["choices"]] == ["0", "1", "2"] and condition["label"] == "class"
    assert [c[0] for c in sampler["choices"]] == ["ar", "sjd", "sjd-pac", "gsd", "sd", "lantern", "lantern++", "zipar",
                                                   "diagd", "pjd"]
    assert sampler["value"] == "sjd" and not prompt["visible"] and hint == "" and "LlamaGen, 3 classes" in info
    assert [u["value"] for u in (cfg, temperature, top_k, top_p)] == [2.0, 1.0, 0, 1.0]
    var = client.predict("cifar10-var", "", "", False, api_name="/model_info")
    assert [c[0] for c in var[3]["choices"]] == ["var", "code"] and var[3]["value"] == "code"
    video = client.predict("tiny-video", "", "", False, api_name="/model_info")
    assert video[1]["label"] == "scene" and video[3]["value"] == "sjd"
    cosmos = client.predict("Cosmos-1.0-Autoregressive-4B", "", "", False, api_name="/model_info")
    assert "model.pt" in cosmos[0] and "'checkpoint'" in cosmos[0]  # where to get the files, and which box takes them


def test_every_shipped_family_runs_through_the_api(client):
    for kw in (dict(model="cifar10-llamagen", sampler="lantern", condition="cat", options="gamma=2,k=8"),
               dict(model="cifar10-var", sampler="code", condition="ship"),
               dict(model="cifar10-mar", sampler="cspd", condition="automobile", options="num_iter=4,num_draft=2")):
        out = generate(client, **{"batch_size": 1, "seed": 0, **kw})
        assert len(out["baseline"]["images"]) == len(out["accelerated"]["images"]) == 1, kw
        assert out["accelerated"]["sampler"] == kw["sampler"] and out["verdict"]
        assert (out["acceptance_map"] is None) == (kw["model"] == "cifar10-var")  # VAR's tokens are a pyramid


def test_concurrent_requests_complete_or_are_told_the_queue_is_full(tmp_path):
    import threading

    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path))
        demo = build_app({"tiny": tiny_pipeline()}, max_queue=4)
        _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
        c = gradio_client.Client(url, verbose=False)
        try:
            results, errors = [], []

            def one(i):
                try:
                    results.append(generate(c, options="window=4", batch_size=1, seed=i))
                except Exception as err:  # noqa: BLE001 - the client's error for a full queue
                    errors.append(str(err))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=600)
            assert len(results) + len(errors) == 16
            assert results and all("queue" in e.lower() and "full" in e.lower() for e in errors), errors[:3]
            assert generate(c, sampler="ar", batch_size=1)["baseline"]["forward_passes"] == GRID * GRID
        finally:
            c.close()
            demo.close()


def test_the_hosting_entry_point_is_vargen_app():
    out = subprocess.run([sys.executable, str(REPO / "app" / "app.py"), "--help"], capture_output=True, text=True,
                         cwd=REPO.parent, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--host", "--port", "--share", "127.0.0.1"):
        assert flag in out.stdout


# -- the page in a browser -------------------------------------------------------------------------------


def _browser():
    pytest.importorskip("playwright", reason="browser test needs playwright (pip install playwright)")
    if shots.find_browser() is None:
        pytest.skip("browser test needs Chromium: run .ci/install-browser (apt-get install chromium)")


def test_browser_generate_is_on_the_first_screen_and_one_click_gives_both_images_and_the_table(server, tmp_path):
    _browser()
    result = shots.generate_in_browser(server, out=tmp_path / "app.png")
    assert result["generate_in_view"], "Generate must be visible at 1280x800 without scrolling"
    assert result["baseline"] >= 1 and result["accelerated"] >= 1 and result["acceptance_map"] == 1
    assert "forward passes" in result["table"] and "speed-up" in result["table"] and "forward passes" in result["verdict"]
    img = Image.open(tmp_path / "app.png")
    assert img.width == shots.SCREEN["width"] and len(img.convert("RGB").resize((64, 64)).getcolors(64 * 64)) > 20
    if os.environ.get("VARGEN_APP_SCREENSHOT"):
        shutil.copy(tmp_path / "app.png", os.environ["VARGEN_APP_SCREENSHOT"])


@pytest.mark.parametrize("model,sampler,more", [("cifar10-var", "code", ""), ("tiny-video", "sjd", "window=6")])
def test_browser_drives_another_family_and_video_in_the_same_layout(server, model, sampler, more):
    _browser()
    result = shots.generate_in_browser(server, model=model, sampler=sampler, more_options=more)
    assert result["baseline"] >= 1 and result["accelerated"] >= 1 and "forward passes" in result["table"]
