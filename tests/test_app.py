"""The Gradio demo (app/app.py): option discovery, the acceptance map, the API driven by gradio_client,
and a browser smoke test with the distribution's Chromium. Everything runs on a tiny random pipeline."""
from __future__ import annotations

import argparse
import importlib.util
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

from helpers import tiny_gpt, tiny_video_folder  # noqa: E402
from vargen.pipeline import Pipeline, load  # noqa: E402
from vargen.samplers import acceptance as acceptance_rules  # noqa: E402
from vargen.samplers.base import SamplingConfig  # noqa: E402
from vargen.tokenizers.llamagen_vq import VQConfig, VQModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = [  # gradio's own queue code, not ours
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
GRID, VOCAB, CLASSES = 8, 16, ["plane", "car", "bird"]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


app = _load("vargen_app", REPO / "app" / "app.py")
shots = _load("vargen_app_screenshot", REPO / "app" / "screenshot.py")


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
        demo = app.build_app({"tiny": tiny_pipeline(), "tiny-video": video})
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
    args = dict(model="tiny", class_label="1", sampler="sjd", seed=3, batch_size=2)
    return client.predict(**{**args, **kw}, api_name="/generate")


# -- helpers ---------------------------------------------------------------------------------------


def test_acceptance_map_colours_passes_and_marks_relaxed():
    steps = torch.tensor([0, 1, 1, 1, 2, 2, 3, 4])  # 2 x 4 grid; pass 1 committed three tokens
    relaxed = torch.zeros(8, dtype=torch.bool)
    relaxed[5] = True
    img = app.acceptance_map(steps, width=4, relaxed=relaxed, cell=10)
    assert img.size == (41, 21)
    centre = lambda r, c, dx=0: img.getpixel((c * 10 + 5 + dx, r * 10 + 5))  # noqa: E731
    assert centre(0, 1) == centre(0, 2) == centre(0, 3) == app.colour(1 / 4)
    assert centre(0, 0) != centre(0, 1) and centre(1, 2) != centre(1, 3)
    assert img.getpixel((20, 5)) == app.colour(1 / 4)  # no border inside one pass's block
    assert img.getpixel((10, 5)) == (255, 255, 255)  # a border between passes
    assert centre(1, 1) == (255, 255, 255) and centre(1, 1, dx=4) == app.colour(2 / 4)  # relaxed dot
    assert centre(1, 0) == app.colour(2 / 4)


def test_options_are_the_declared_options_of_the_sampler_and_its_rule():
    sjd = app.sampler_defaults("sjd")
    cache = {"kv_budget": None, "kv_anchor": 4, "kv_recent_lines": 1}  # every token sampler's cache options
    tree = {"tree_width", "tree_depth", "tree_tail"}  # SJD-PAC's proactive drafting
    assert {"window", "init", "coupled", "acceptance", "sample_top", *tree, *cache} == set(sjd)
    assert sjd["acceptance"] == "exact"
    assert app.sampler_defaults("ar") == cache
    assert {"gamma", "k", "delta", "lam", "variant"} <= set(app.sampler_defaults("lantern"))  # nothing hidden
    assert {"group_size", "prob_gap"} <= set(app.sampler_defaults("sjd", "gsd"))
    assert app.collect_options("ar", {"window": 8, "init": "vertical"}) == {}
    opts = app.collect_options("sjd", {"window": 8.0, "k": 3, "init": "vertical"}, "sample_top=4, coupled=yes")
    assert opts == {"window": 8, "init": "vertical", "sample_top": 4, "coupled": True}  # the exact rule takes no k
    assert isinstance(opts["window"], int)
    with pytest.raises(ValueError, match="takes no option 'gamma'"):
        app.collect_options("sjd", {}, "gamma=4")
    with pytest.raises(ValueError, match="window must be an integer"):
        app.collect_options("sjd", {"window": 2.5})
    with pytest.raises(ValueError, match="per-request limit"):
        app.collect_options("mar", {}, "num_iter=1000")
    shown = [dict(u).get("visible") for u in app.option_updates("sjd", "lantern")]
    assert shown[app.OPTION_NAMES.index("k")] and not shown[app.OPTION_NAMES.index("draft_steps")]


def test_class_labels_ids_and_names():
    pipe = tiny_pipeline()
    assert app.resolve_class(pipe, "2: bird") == 2 and app.resolve_class(pipe, "car") == 1
    assert app.resolve_class(pipe, 0) == 0
    for bad in ("3", "-1", "dog", "", "1.5"):
        with pytest.raises(ValueError):
            app.resolve_class(pipe, bad)


# -- the API -----------------------------------------------------------------------------------------


def _images(gallery) -> list[Image.Image]:
    return [Image.open(item["image"]) for item in gallery]


def test_generate_ar_and_sjd_return_images_and_stats(client):
    base, fast, amap, table, stats = generate(client, sampler="sjd", window=8)
    assert len(_images(base)) == 2 and len(_images(fast)) == 2
    assert min(_images(fast)[0].size) >= app.MIN_IMAGE_SIDE
    assert stats["baseline"]["forward_passes"] == GRID * GRID and stats["baseline"]["tokens_per_forward"] == 1.0
    s = stats["sampler"]
    assert s["sampler"] == "sjd" and s["options"]["window"] == 8 and s["tokens_per_row"] == GRID * GRID
    assert 1 <= s["forward_passes"] <= GRID * GRID
    assert stats["speedup_forward_passes"] == pytest.approx(GRID * GRID / s["forward_passes"], rel=1e-3)
    assert "speed-up" in table and f"| forward passes | {GRID * GRID} | {s['forward_passes']} |" in table
    width = Image.open(amap).width
    assert width > 2 * GRID * 4  # two rows' maps side by side

    base2, fast2, _, _, stats2 = generate(client, sampler="ar", batch_size=1)
    assert len(_images(base2)) == len(_images(fast2)) == 1
    assert stats2["sampler"]["forward_passes"] == GRID * GRID


def test_video_tab_generates_clips_and_the_acceptance_map(client):
    args = dict(model="tiny-video", scene=2, seed=1, temperature=1.0, top_k=0, top_p=0.9)
    base, fast, amap, table, stats = client.predict(**args, sampler="sjd:window=6,init=temporal,coupled=true",
                                                    api_name="/generate_video")
    for path in (base, fast):
        clip = Image.open(path)
        assert clip.n_frames == 9 and min(clip.size) >= app.MIN_IMAGE_SIDE
    assert stats["scene"] == 2 and stats["baseline"]["forward_passes"] == 32 and stats["sampler"]["sampler"] == "sjd"
    assert stats["sampler"]["options"] == {"window": 6, "init": "temporal", "coupled": True}
    assert Image.open(amap).height > Image.open(amap).width  # two latent frames of 4x4 tokens, stacked
    assert "speed-up" in table
    with pytest.raises(gradio_client.exceptions.AppError, match="does not apply"):
        client.predict(**args, sampler="var", api_name="/generate_video")
    with pytest.raises(gradio_client.exceptions.AppError, match="cfg_scale|window"):
        client.predict(**args, sampler="sjd:window=0", api_name="/generate_video")


def test_same_seed_gives_the_same_images(client):
    first = generate(client, sampler="sjd", window=4, batch_size=1)
    again = generate(client, sampler="sjd", window=4, batch_size=1)
    assert _images(first[1])[0].tobytes() == _images(again[1])[0].tobytes()
    assert first[4]["sampler"]["forward_passes"] == again[4]["sampler"]["forward_passes"]


def test_baseline_is_streamed_before_the_sampler(client):
    job = client.submit(model="tiny", class_label="0", sampler="sjd", batch_size=1, api_name="/generate")
    job.result()
    outputs = job.outputs()
    assert len(outputs) == 3  # cleared, baseline, both
    assert not outputs[0][0] and not outputs[0][4]
    assert outputs[1][0] and not outputs[1][1] and "sampler" not in outputs[1][4]
    assert outputs[2][1] and "sampler" in outputs[2][4]


@pytest.mark.parametrize("kw, message", [
    (dict(window=0), "sjd: window must be >= 1, got 0"),
    (dict(window=100000), "window=100000 exceeds the model's num_tokens (64)"),
    (dict(more_options="window=100000"), "window=100000 exceeds the model's num_tokens (64)"),
    (dict(class_label="7"), "class id 7 out of range: this model has 3 classes"),
    (dict(class_label="dog"), "unknown class 'dog'"),
    (dict(top_k=1000), "larger than the vocabulary"),
    (dict(more_options="window"), "expected key=value"),
    (dict(more_options="coupled=maybe"), "expected true/false"),
    (dict(init="diagonal"), "sjd: init must be one of random"),
    (dict(sampler="var"), "sampler 'var' does not apply to this llamagen model"),
    (dict(model="/no/such/folder"), "unknown model '/no/such/folder'"),
    (dict(batch_size=9), "batch size must be an integer from 1 to 8"),
])
def test_bad_input_gives_a_readable_error_and_clears_the_last_result(client, kw, message):
    generate(client, sampler="sjd", window=4, batch_size=1)  # a good result first
    job = client.submit(**{**dict(model="tiny", class_label="1", sampler="sjd", seed=3, batch_size=2), **kw},
                        api_name="/generate")
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        job.result()
    text = str(err.value)
    assert message in text and "Traceback" not in text
    outputs = job.outputs()
    assert outputs and outputs[-1][3] == "" and not outputs[-1][4]  # the stats of the earlier run are gone
    assert generate(client, sampler="ar", batch_size=1)[4]["baseline"]["forward_passes"] == GRID * GRID  # still alive


def write_pipeline_folder(root: Path) -> Path:
    """The tiny pipeline as a local model folder (pipeline.json + model/ + vq/), as the zoo ships them."""
    from vargen.train.common import export_fp16

    pipe = tiny_pipeline()
    for name, module, kind in (("model", pipe.model, "llamagen_gpt"), ("vq", pipe.tokenizer, "llamagen_vq")):
        export_fp16(module, root / name / "model.safetensors")
        (root / name / "config.json").write_text(json.dumps({"type": kind, "config": module.config.to_dict()}))
    folder = root / "tiny-folder"
    folder.mkdir()
    spec = {"kind": "llamagen", "model": "model", "tokenizer": "vq", "defaults": {"cfg_scale": 1.5},
            "class_names": ["cat", "dog", "frog"]}
    (folder / "pipeline.json").write_text(json.dumps(spec))
    return folder


def test_a_local_model_folder_loads_by_path(client, tmp_path):
    folder = str(write_pipeline_folder(tmp_path))
    classes, _, cfg, *_ = client.predict(folder, api_name="/model_info")
    assert [c[0] for c in classes["choices"]] == ["0: cat", "1: dog", "2: frog"] and cfg["value"] == 1.5
    base, fast, amap, _, stats = generate(client, model=folder, class_label="frog", batch_size=1)
    assert stats["model"] == folder and stats["class_id"] == 2 and len(base) == len(fast) == 1 and amap


def test_model_info_endpoint_offers_only_the_applicable_samplers(client):
    classes, samplers, cfg, temperature, top_k, top_p, info, *options = client.predict("tiny", api_name="/model_info")
    assert classes["value"] == "0" and [c[1] for c in classes["choices"]] == ["0", "1", "2"]
    assert [c[0] for c in samplers["choices"]] == ["ar", "sjd", "sjd-pac", "gsd", "sd", "lantern", "lantern++", "zipar"]
    assert [u["value"] for u in (cfg, temperature, top_k, top_p)] == [2.0, 1.0, 0, 1.0]
    assert f"{GRID} x {GRID} tokens" in info and "3 classes" in info
    var = client.predict("cifar10-var", api_name="/model_info")
    assert [c[0] for c in var[1]["choices"]] == ["var", "code"] and var[1]["value"] == "code"
    mar = client.predict("cifar10-mar", api_name="/model_info")
    assert [u["visible"] for u in mar[2:6]] == [True, True, False, False]  # no top-k / top-p for continuous tokens


def test_every_family_and_the_draft_samplers_run_through_the_app(client):
    for kw in (dict(model="cifar10-llamagen", sampler="sd", class_label="cat"),
               dict(model="cifar10-llamagen", sampler="lantern", class_label="cat", more_options="gamma=2,k=8"),
               dict(model="cifar10-var", sampler="code", class_label="ship", more_options="draft_steps=3"),
               dict(model="cifar10-mar", sampler="cspd", class_label="automobile",
                    more_options="num_iter=4,num_draft=2")):
        base, fast, amap, table, stats = generate(client, **{"batch_size": 1, "seed": 0, **kw})
        assert len(_images(base)) == len(_images(fast)) == 1, kw
        assert stats["sampler"]["sampler"] == kw["sampler"] and "speed-up" in table
        assert (amap is None) == (kw["model"] == "cifar10-var")  # VAR's tokens are a pyramid, not one grid


def test_acceptance_map_has_no_label_over_it(server):
    import gradio

    blocks = app.build_app({"tiny": tiny_pipeline()})
    image = next(c for c in blocks.blocks.values() if getattr(c, "elem_id", None) == "acceptance-map")
    assert isinstance(image, gradio.Image) and image.show_label is False


def test_concurrent_requests_complete_or_are_told_the_queue_is_full(tmp_path):
    import resource
    import threading

    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path))
        demo = app.build_app({"tiny": tiny_pipeline()}, max_queue=4)
        _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
        c = gradio_client.Client(url, verbose=False)
        try:
            generate(c, sampler="sjd", window=4, batch_size=1)  # warm up before measuring memory
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            results, errors = [], []

            def one(i):
                try:
                    results.append(generate(c, sampler="sjd", window=4, batch_size=1, seed=i))
                except Exception as err:  # noqa: BLE001 - the client's error for a full queue
                    errors.append(str(err))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=600)
            assert len(results) + len(errors) == 20
            assert results and all("queue" in e.lower() and "full" in e.lower() for e in errors), errors[:3]
            grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            assert grown_mb < 300, grown_mb
            assert generate(c, sampler="ar", batch_size=1)[4]["baseline"]["forward_passes"] == GRID * GRID
        finally:
            c.close()
            demo.close()


# -- command line ------------------------------------------------------------------------------------


def test_cli_defaults_bind_locally():
    parser = argparse.ArgumentParser(prog="vargen")
    app.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["app"])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    args = parser.parse_args(["app", "--host", "0.0.0.0", "--port", "9000", "--share", "--model", "x"])
    assert (args.host, args.port, args.share, args.model) == ("0.0.0.0", 9000, True, ["x"])


def test_script_help_documents_host_port_share():
    out = subprocess.run([sys.executable, str(REPO / "app" / "app.py"), "--help"], capture_output=True, text=True,
                         cwd=REPO.parent, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--host", "--port", "--share", "127.0.0.1"):
        assert flag in out.stdout


# -- the browser ---------------------------------------------------------------------------------------


def _browser():
    pytest.importorskip("playwright", reason="browser test needs playwright (pip install playwright)")
    if shots.find_browser() is None:
        pytest.skip("browser test needs Chromium: run .ci/install-browser (apt-get install chromium)")


def test_browser_click_generate_and_screenshot(server, tmp_path):
    _browser()
    out = shots.screenshot(server, tmp_path / "app.png")
    img = Image.open(out)
    assert img.width >= 1000 and img.height >= 600
    assert len(img.convert("RGB").resize((64, 64)).getcolors(64 * 64) or []) > 20  # rendered content, not a blank page
    if os.environ.get("VARGEN_APP_SCREENSHOT"):
        shutil.copy(out, os.environ["VARGEN_APP_SCREENSHOT"])


@pytest.mark.parametrize("model,sampler,more", [("cifar10-llamagen", "sd", ""), ("cifar10-llamagen", "lantern", "gamma=2"),
                                                ("cifar10-var", "code", ""), ("cifar10-mar", "cspd", "num_iter=4")])
def test_browser_drives_every_family_and_the_draft_samplers(server, model, sampler, more):
    _browser()
    assert shots.run_in_browser(server, model=model, sampler=sampler, more_options=more) >= 1
