"""Evaluation: FID/KID/PR/IS through clean-fid's pieces with a tiny feature network, statistics caching,
ADM-style .npz files, the Inception weights error, the CIFAR-10 feature network, and sampling with
one and two processes giving the same files."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("cleanfid", reason="the eval tests need clean-fid (pip install 'vargen[eval]')")

from helpers import tiny_gpt  # noqa: E402
from vargen.eval import (INCEPTION_URL, FeatureStats, MissingWeightsError, compute_fid, export_npz,  # noqa: E402
                         get_extractor, inception_score, kid, precision_recall, read_npz_images)
from vargen.eval.stats import compute_stats  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated")  # inside clean-fid
PYTHON = sys.executable


def tiny_features(x: torch.Tensor):
    """A fixed random projection of 4x4-pooled pixels, with a softmax 'classifier' for IS."""
    w = torch.randn(48, 24, generator=torch.Generator().manual_seed(0))
    f = torch.nn.functional.adaptive_avg_pool2d(x / 255, 4).flatten(1) @ w
    return f, (f[:, :5] * 4).softmax(-1)


def write_images(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:05d}.png")
    return folder


def random_images(n: int, seed: int = 0, size: int = 16) -> np.ndarray:
    """Images with a random flat colour per image plus noise: varied enough for a covariance."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3)) + rng.normal(0, 25, (n, size, size, 3))
    return base.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    real = random_images(300, seed=0)
    shifted = np.clip(real.astype(int) + 60, 0, 255).astype(np.uint8)
    return {"real": write_images(root / "real", real), "real2": write_images(root / "real2", random_images(300, 1)),
            "shifted": write_images(root / "shifted", shifted), "root": root}


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def test_fid_of_a_folder_against_itself_is_zero_and_grows_with_a_perturbation(folders):
    same = compute_fid(folders["real"], folders["real"], features=tiny_features, mode="clean", verbose=False)
    other = compute_fid(folders["real"], folders["real2"], features=tiny_features, mode="clean", verbose=False)
    moved = compute_fid(folders["real"], folders["shifted"], features=tiny_features, mode="clean", verbose=False)
    assert abs(same.fid) < 1e-6
    assert moved.fid > 10 * max(other.fid, 1e-3) and moved.fid > 1.0
    assert same.precision == same.recall == 1.0 and moved.precision < 0.9
    assert abs(same.kid) < 0.2 * moved.kid
    assert same.mode == "clean" and "mode=clean" in str(moved) and "custom features" in str(moved)


def test_mode_is_explicit_and_checked(folders):
    with pytest.raises(ValueError, match="mode must be one of"):
        compute_fid(folders["real"], folders["real"], features=tiny_features, mode="fast", verbose=False)
    stats = compute_stats(folders["real"], get_extractor(tiny_features), "clean")
    with pytest.raises(ValueError, match="not comparable"):
        compute_fid(stats, folders["real"], features=tiny_features, mode="legacy_tensorflow", verbose=False)

    def other_features(x):
        return tiny_features(x)[0]

    with pytest.raises(ValueError, match="come from the feature network 'callable-tiny_features'"):
        compute_fid(stats, folders["real"], features=other_features, mode="clean", verbose=False)
    stats.weights = "callable-tiny_features-0123456789"
    with pytest.raises(ValueError, match="other weights"):
        compute_fid(stats, folders["real"], features=tiny_features, mode="clean", verbose=False)


def test_precision_recall_and_is_on_known_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 8))
    p, r = precision_recall(real, rng.normal(size=(400, 8)))
    assert p > 0.8 and r > 0.8
    p_far, r_far = precision_recall(real, rng.normal(size=(400, 8)) + 10)
    assert p_far == 0.0 and r_far == 0.0
    collapsed = np.tile(real[:1], (400, 1)) + 1e-3 * rng.normal(size=(400, 8))
    p_c, r_c = precision_recall(real, collapsed)
    assert p_c > 0.9 and r_c < 0.05  # mode collapse: precise, no recall
    uniform = np.full((100, 10), 0.1)
    onehot = np.eye(10)[np.arange(100) % 10]
    assert inception_score(uniform)[0] == pytest.approx(1.0)
    assert inception_score(onehot, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    by_class = np.repeat(np.eye(10), 100, axis=0)  # samples written class by class
    assert inception_score(by_class)[0] > 8.0  # each fold sees every class, not one
    assert kid(real, real + 5) > 10 * abs(kid(real, rng.normal(size=(400, 8))))


# ----------------------------------------------------------------------------------------------
# Statistics, caching, .npz files
# ----------------------------------------------------------------------------------------------


def test_stats_cache_round_trips_and_tracks_changes(folders, tmp_path):
    src = write_images(tmp_path / "src", random_images(50, 3))
    ext = get_extractor(tiny_features)
    first = compute_stats(src, ext, "clean", cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1
    loaded = FeatureStats.load(files[0])
    assert np.allclose(loaded.mu, first.mu) and np.allclose(loaded.sigma, first.sigma)
    assert loaded.features == "callable-tiny_features" and loaded.mode == "clean" and loaded.count == 50
    assert loaded.feats.shape == (50, 24) and loaded.probs.shape == (50, 5)
    again = compute_stats(src, ext, "clean", cache_dir=tmp_path / "cache")  # read back, not recomputed
    assert np.array_equal(again.mu, loaded.mu) and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    Image.fromarray(random_images(1, 9)[0]).save(src / "99999.png")  # the folder changed: new statistics
    changed = compute_stats(src, ext, "clean", cache_dir=tmp_path / "cache")
    assert changed.count == 51 and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    other_weights = dataclasses.replace(ext, weights_id="0123456789")  # same network name, other weights
    compute_stats(src, other_weights, "clean", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3
    # a saved stats file is a valid FID input
    saved = first.save(tmp_path / "ref.npz")
    r = compute_fid(src, saved, features=tiny_features, mode="clean", verbose=False)
    assert r.fid > 0 and r.n_b == 50


def test_npz_export_reads_back_and_scores_like_the_folder(folders, tmp_path):
    out = export_npz(folders["real"], tmp_path / "samples.npz")
    with np.load(out) as data:
        assert data.files == ["arr_0"]
        arr = data["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (300, 16, 16, 3)
    assert np.array_equal(arr[7], np.asarray(Image.open(folders["real"] / "00007.png")))
    assert np.array_equal(read_npz_images(out), arr)
    via_npz = compute_fid(out, folders["shifted"], features=tiny_features, mode="clean", verbose=False)
    via_dir = compute_fid(folders["real"], folders["shifted"], features=tiny_features, mode="clean", verbose=False)
    assert via_npz.fid == pytest.approx(via_dir.fid, rel=1e-9)


def test_adm_style_mu_sigma_reference_is_read(folders, tmp_path):
    stats = compute_stats(folders["real2"], get_extractor(tiny_features), "clean")
    np.savez(tmp_path / "adm_ref.npz", mu=stats.mu, sigma=stats.sigma)  # no vargen metadata, no images
    ref = FeatureStats.load(tmp_path / "adm_ref.npz")
    assert ref.mode is None and ref.feats is None
    ref.features = "callable-tiny_features"
    r = compute_fid(folders["real"], ref, features=tiny_features, mode="clean", verbose=False)
    direct = compute_fid(folders["real"], folders["real2"], features=tiny_features, mode="clean", verbose=False)
    assert r.fid == pytest.approx(direct.fid, rel=1e-9) and r.kid is None and "legacy_tensorflow" in r.note


def test_missing_inception_weights_give_one_clear_message(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("VARGEN_INCEPTION", str(tmp_path / "weights"))
    with pytest.raises(MissingWeightsError) as err:
        compute_fid(folders["real"], folders["real"], features="inception", mode="clean", verbose=False)
    text = str(err.value)
    assert str(tmp_path / "weights" / "inception-2015-12-05.pt") in text and INCEPTION_URL in text
    assert err.value.__cause__ is None
    # the command line prints that one line, no traceback
    proc = subprocess.run([PYTHON, str(REPO / "eval" / "fid.py"), str(folders["real"]), str(folders["real"]),
                           "--features", "inception", "--mode", "clean"], capture_output=True, text=True,
                          env={**os.environ, "VARGEN_INCEPTION": str(tmp_path / "weights"), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert INCEPTION_URL in proc.stderr and "inception-2015-12-05.pt" in proc.stderr


# ----------------------------------------------------------------------------------------------
# The CIFAR-10 feature network
# ----------------------------------------------------------------------------------------------


def test_feature_net_trains_resumes_and_exports(tmp_path, monkeypatch):
    from vargen.train import cli as train_cli
    from vargen.train.features import CifarFeatureNet, FeatureNetConfig, FeatureTrainArgs, augment, \
        load_feature_net, train_features

    net = CifarFeatureNet(FeatureNetConfig(widths=(8, 8, 16, 16)))
    x = torch.rand(4, 3, 32, 32) * 255
    assert net.features(x).shape == (4, 16) and net(x).shape == (4, 10)
    crops = augment(x, torch.Generator().manual_seed(0))
    assert crops.shape == x.shape and not torch.equal(crops, x)
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 20)):
        for c in ("a", "b"):  # class a dark, class b bright
            imgs = rng.integers(0, 100, (n, 32, 32, 3)) + (150 if c == "b" else 0)
            write_images(data / split / c, imgs.astype(np.uint8))
    args = FeatureTrainArgs(data=str(data), out=str(tmp_path / "run"), export=str(tmp_path / "zoo"), epochs=3,
                            batch_size=16, save_every=2, threads=1, config={"widths": [8, 8, 16, 16]})
    monkeypatch.setenv("VARGEN_CACHE", str(tmp_path / "cache"))
    parser = argparse.ArgumentParser(prog="vargen")  # wired as in vargen/cli.py: `vargen train features ...`
    train_cli.add_cli(parser.add_subparsers(dest="command"))
    cli_args = parser.parse_args(["train", "features", "--data", str(data), "--out", str(tmp_path / "run"), "--export",
                                  str(tmp_path / "zoo"), "--epochs", "3", "--batch-size", "16", "--save-every", "2",
                                  "--threads", "1", "--config", '{"widths": [8, 8, 16, 16]}'])
    monkeypatch.setattr(sys, "argv", ["vargen", "train", "features", "--test"])
    assert train_cli.run_cli(cli_args) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 15/15" in log and "test accuracy" in log
    exported = load_feature_net(tmp_path / "zoo")
    meta = json.loads((tmp_path / "zoo" / "config.json").read_text())
    assert meta["test_accuracy"] > 0.9 and meta["classes"] == ["a", "b"]
    assert "vargen train features --test" in (tmp_path / "zoo" / "TRAINING.md").read_text()
    # resuming a finished run trains nothing more and gives the same weights
    train_features(args)
    again = load_feature_net(tmp_path / "zoo")
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), again.state_dict().values()))
    ext = get_extractor("cifar10-features", weights=tmp_path / "zoo")
    feats, probs = ext(random_images(3, 0, size=32), "clean")
    assert feats.shape == (3, 16) and probs.shape == (3, 2) and "vargen's CIFAR-10 features" in ext.label


# ----------------------------------------------------------------------------------------------
# Sampling with accelerate: 1 and 2 processes give the same files
# ----------------------------------------------------------------------------------------------


def write_tiny_pipeline(root: Path) -> Path:
    from vargen.tokenizers.llamagen_vq import VQConfig, VQModel
    from vargen.train.common import export_fp16

    gpt = tiny_gpt(vocab=16, grid=4, num_classes=3)
    torch.manual_seed(0)
    vq = VQModel(VQConfig(codebook_size=16, codebook_embed_dim=4, encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1],
                          z_channels=32, ch=32, num_res_blocks=1)).eval()
    for name, module, kind in (("model", gpt, "llamagen_gpt"), ("vq", vq, "llamagen_vq")):
        export_fp16(module, root / name / "model.safetensors")
        (root / name / "config.json").write_text(json.dumps({"type": kind, "config": module.config.to_dict()}))
    folder = root / "tiny"
    folder.mkdir()
    (folder / "pipeline.json").write_text(json.dumps({"kind": "llamagen", "model": "model", "tokenizer": "vq",
                                                      "defaults": {"cfg_scale": 1.5}, "class_names": ["a", "b", "c"]}))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sample(args: list[str], processes: int) -> subprocess.CompletedProcess:
    script = str(REPO / "eval" / "sample.py")
    if processes == 1:
        cmd = [PYTHON, script]
    else:
        accelerate = str(Path(PYTHON).parent / "accelerate")
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), script,
               "--cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + args + ["--threads", "1"], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_write_the_same_files_as_one(tmp_path):
    pytest.importorskip("accelerate")
    model = write_tiny_pipeline(tmp_path)
    common = ["--model", str(model), "--sampler", "sjd:window=4", "--num-samples", "11", "--batch-size", "3",
              "--seed", "5"]
    run_sample(common + ["--out", str(tmp_path / "one")], 1)
    run_sample(common + ["--out", str(tmp_path / "two")], 2)
    one = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert one == [f"{i:06d}.png" for i in range(11)]
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    images = [np.asarray(Image.open(tmp_path / "one" / n)) for n in one]
    assert len({im.tobytes() for im in images}) == 11  # per-index seeds: all different
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["images_generated"] == 11
    assert sorted(p["assigned"] for p in summary["per_process"]) == [5, 6]
    assert summary["forward_passes_per_image"] > 0 and summary["tokens_per_forward"] > 1.0
    # resumable: a missing file is regenerated identically, the rest are skipped
    (tmp_path / "two" / "000004.png").unlink()
    run_sample(common + ["--out", str(tmp_path / "two")], 1)
    again = json.loads((tmp_path / "two" / "summary.json").read_text())
    last = again["runs"][-1]
    assert sum(p["assigned"] - p["skipped"] for p in last) == 1 and sum(p["skipped"] for p in last) == 10
    assert again["images_in_folder"] == 11 and len(again["runs"]) == 2
    assert (tmp_path / "two" / "000004.png").read_bytes() == (tmp_path / "one" / "000004.png").read_bytes()
    # another seed gives other images
    run_sample(["--model", str(model), "--sampler", "sjd:window=4", "--num-samples", "2", "--seed", "6", "--out",
                str(tmp_path / "seed6")], 1)
    assert (tmp_path / "seed6" / "000000.png").read_bytes() != (tmp_path / "one" / "000000.png").read_bytes()


# ----------------------------------------------------------------------------------------------
# The benchmark report
# ----------------------------------------------------------------------------------------------


def test_report_on_a_tiny_pipeline(tmp_path, folders):
    from vargen.eval import report

    model = write_tiny_pipeline(tmp_path)
    out = tmp_path / "docs" / "benchmarks.md"
    result = report.run_report([str(model)], ["ar", "sjd:window=4", "var"], num_samples=6,
                               reference=str(folders["real"]), features=tiny_features, mode="clean", out=out,
                               work_dir=tmp_path / "work", batch_size=3, shapes=["GPT-B:4"],
                               shape_samplers=["ar", "sjd:window=4"], command="python eval/report.py --test",
                               progress=lambda *_: None)
    rows = {r["sampler"]: r for r in result["rows"]}
    assert set(rows) == {"ar", "sjd:window=4"} and "var" in result["skipped"][str(model)]
    assert rows["ar"]["speedup"] == 1.0 and rows["ar"]["tokens_per_forward"] == pytest.approx(1.0, abs=0.07)
    assert rows["ar"]["forward_passes"] > rows["sjd:window=4"]["forward_passes"] >= 4
    assert all(r["quality"]["fid"] > 0 and r["images"] == 6 and r["latency_batch1"] > 0 for r in rows.values())
    assert len(list((tmp_path / "work").rglob("*.png"))) == 12
    text = out.read_text()
    assert "mode=`clean`" in text and "python eval/report.py --test" in text and "| `sjd:window=4` |" in text
    assert "GPT-B:4" in text and "torch" in text and "clean-fid" in text
    for p in result["plots"]:
        assert Image.open(p).size[0] > 300 and f"]({Path(p).name})" in text


def test_fid_command_line_scores_exports_and_makes_stats(folders, tmp_path):
    from vargen.eval.cli import add_cli, run_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    npz = tmp_path / "s.npz"
    assert run_cli(parser.parse_args(["fid", "--export-npz", str(folders["real"]), "--out", str(npz)])) == 0
    assert read_npz_images(npz).shape == (300, 16, 16, 3)
    assert run_cli(parser.parse_args(["fid", str(folders["real"]), "--mode", "clean"])) == 2  # one source
    assert run_cli(parser.parse_args(["fid", str(npz), str(folders["real"])])) == 2  # the mode is required
    stats = tmp_path / "ref.npz"
    assert run_cli(parser.parse_args(["fid", "--make-stats", str(folders["real"]), "--mode", "clean", "--features",
                                      "cifar10-features", "--inception-weights", str(tmp_path / "none"),
                                      "--out", str(stats)])) == 2  # no such feature network folder
    assert not stats.exists()


def test_shipped_cifar10_features_meet_the_bar():
    from vargen.eval.features import CIFAR_FEATURES_DIR
    from vargen.eval.stats import cifar10_archive
    from vargen.train.features import accuracy, load_feature_net, subset

    weights = CIFAR_FEATURES_DIR / "model.safetensors"
    if not weights.is_file():
        pytest.skip(f"{weights} not trained yet (vargen train features ... --export {CIFAR_FEATURES_DIR})")
    assert weights.stat().st_size <= 5_000_000
    meta = json.loads((CIFAR_FEATURES_DIR / "config.json").read_text())
    assert meta["test_accuracy"] >= 0.80 and meta["test_images"] == 10000
    assert f"{meta['test_accuracy'] * 100:.2f}%" in (CIFAR_FEATURES_DIR / "TRAINING.md").read_text()
    if not cifar10_archive().is_file():
        pytest.skip("CIFAR-10 archive not found; the recorded accuracy was checked, not re-measured")
    from vargen.train.data import load_images

    images, labels, _ = load_images(cifar10_archive(), "test", 32)
    images, labels = subset(images, labels, 2000, 0)
    assert accuracy(load_feature_net(CIFAR_FEATURES_DIR), images, labels) >= 0.78  # 2000-image subset


def test_imagenet_style_folder_of_mixed_sizes_is_centre_cropped(tmp_path):
    rng = np.random.default_rng(0)
    for c, (h, w) in (("n01", (40, 60)), ("n02", (64, 32))):
        (tmp_path / "ref" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "ref" / c / f"{i}.JPEG")
    stats = compute_stats(tmp_path / "ref", get_extractor(tiny_features), "clean", size=16)
    assert stats.count == 6
    with pytest.raises(ValueError, match="different sizes.*--image-size"):
        compute_stats(tmp_path / "ref", get_extractor(tiny_features), "clean")


def test_cifar10_split_as_a_reference():
    from vargen.eval.stats import cifar10_archive

    if not cifar10_archive().is_file():
        pytest.skip(f"CIFAR-10 archive not found at {cifar10_archive()} (set VARGEN_CIFAR10)")
    stats = compute_stats("cifar10-test", get_extractor(tiny_features), "clean")
    assert stats.count == 10000 and stats.feats.shape == (10000, 24)


def test_clip_features_say_what_is_missing():
    try:
        import clip  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install git\\+https://github.com/openai/CLIP.git"):
            get_extractor("clip")
    else:
        pytest.skip("the clip package is installed; its weights may need a download")


def test_precision_recall_subsampling_is_seeded_and_close():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(600, 6)), rng.normal(size=(600, 6)) + 0.5
    full = precision_recall(real, fake, max_samples=None)
    sub = precision_recall(real, fake, max_samples=400)
    assert sub == precision_recall(real, fake, max_samples=400)
    assert sub != full and abs(sub[0] - full[0]) < 0.1 and abs(sub[1] - full[1]) < 0.1


class FakeInception(torch.nn.Module):
    """Stands in for clean-fid's TorchScript Inception (same attributes and call signature), for plumbing tests."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 2048))
        self.output = torch.nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img, size=(299, 299), mode="bilinear", align_corners=False)
        f = self.layers((x - 128) / 128)
        return f if return_features else torch.softmax(self.output(f), 1)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_inception_plumbing_with_a_stand_in_network(tmp_path):
    torch.manual_seed(0)
    torch.jit.script(FakeInception()).save(str(tmp_path / "inception-2015-12-05.pt"))
    clean = get_extractor("inception", "clean", weights=tmp_path)
    legacy = get_extractor("inception", "legacy_tensorflow", weights=tmp_path / "inception-2015-12-05.pt")
    images = random_images(4, 0)
    f_clean, p_clean = clean(images, "clean")  # PIL bicubic to 299 outside the network
    f_legacy, _ = legacy(images, "legacy_tensorflow")  # bilinear inside the network
    assert f_clean.shape == (4, 2048) and p_clean.shape == (4, 1008) and np.allclose(p_clean.sum(1), 1)
    assert not np.allclose(f_clean, f_legacy) and np.allclose(f_clean, f_legacy, rtol=0.1, atol=0.05)
    assert "Inception-v3" in clean.label and "mode=clean" in clean.label and clean.cache_key != "inception"
    # (a full compute_fid here would spend its time in scipy's sqrtm of a 2048 x 2048 matrix)
