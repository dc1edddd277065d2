"""`vargen generate` streams: each image is written as soon as its chunk is decoded, with a progress bar, into a folder
named by its manifest; a folder of another run is refused unless --overwrite, an interrupted run --resume's to the
files of an uninterrupted one, a grid only where --grid says; `vargen fid` scores only a folder's samples and warns
below 2,048 of them."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import vargen
import vargen.pipeline
from vargen.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated")  # inside clean-fid

RUN = ["generate", "--sampler", "ar", "--class-id", "cat", "ship", "--per-class", "3", "--batch-size", "2",
       "--threads", "1"]
NAMES = [f"{i:04d}_{c}.png" for i, c in enumerate(["cat"] * 3 + ["ship"] * 3)]


def generate(capsys, out: Path, *extra) -> tuple[int, str, str]:
    code = main([*RUN, "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def samples(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".png"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of RUN."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert main([*RUN, "--out", str(out), "--grid", str(out.with_name("grid.png"))]) == 0
    return out


def test_a_run_writes_its_samples_and_manifest_and_the_grid_where_asked(reference):
    assert sorted(p.name for p in reference.iterdir()) == sorted(NAMES + ["manifest.json"])
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["model"] == "cifar10-llamagen" and manifest["sampler"] == "ar" and manifest["seed"] == 0
    assert manifest["class_ids"] == [3, 8] and manifest["per_class"] == 3 and manifest["count"] == 6
    assert manifest["files"] == ["{index:04d}_{label}.png"]
    assert Image.open(reference.with_name("grid.png")).size == (3 * 32, 2 * 32)  # one row per class


def test_a_million_images_start_at_once_each_written_as_its_chunk_arrives(tmp_path, capsys, monkeypatch):
    """--per-class 100000: the first image runs alone and is on disk before the next chunk is asked for, each chunk's
    images before the one after it (the run is stopped at the second), named with the padding a million needs; the
    progress bar counts them."""
    real, seen = vargen.pipeline.Pipeline.generate_iter, []

    def two_chunks(self, *a, **k):
        for out in real(self, *a, **k):
            yield out
            seen.append(sorted(os.listdir(tmp_path / "big")))
            if len(seen) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(vargen.pipeline.Pipeline, "generate_iter", two_chunks)
    code = main(["generate", "--sampler", "ar", "--per-class", "100000", "--batch-size", "2", "--threads", "1",
                 "--out", str(tmp_path / "big")])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err
    assert seen == [["000000_airplane.png", "manifest.json"],
                    ["000000_airplane.png", "000001_airplane.png", "000002_airplane.png", "manifest.json"]]
    assert "/1000000" in err and "img/s" in err  # tqdm's bar on stderr
    assert json.loads((tmp_path / "big" / "manifest.json").read_text())["count"] == 1_000_000


def test_a_folder_of_another_run_is_refused_unless_overwrite(reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "notes.txt").write_text("mine")
    code, _, err = generate(capsys, out, "--seed", "5")
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: --out {out} holds another run (seed: folder 0 vs this run 5); use a new --out, or --overwrite to "
        "replace it")
    code, _, err = generate(capsys, out)  # the same run: say how to finish or restart it
    assert code == 2 and "holds this run already; --resume to finish it" in err
    code, stdout, _ = generate(capsys, out, "--seed", "5", "--per-class", "1", "--overwrite")
    assert code == 0 and "wrote 2 PNGs" in stdout and json.loads((out / "manifest.json").read_text())["seed"] == 5
    assert sorted(samples(out)) == ["0000_cat.png", "0001_ship.png"] and (out / "notes.txt").read_text() == "mine"


def test_sample_files_without_a_manifest_are_refused(tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    Image.new("RGB", (32, 32)).save(out / "0000_cat.png")
    code, _, err = generate(capsys, out)
    assert code == 2 and "holds sample files but no manifest.json" in err and "--overwrite" in err
    other = tmp_path / "notes"  # files that are not samples do not make a folder another run's
    other.mkdir()
    (other / "README.txt").write_text("x")
    Image.new("RGB", (8, 8)).save(other / "logo.png")
    assert generate(capsys, other, "--per-class", "1")[0] == 0 and (other / "logo.png").is_file()


def test_a_killed_run_resumed_writes_the_files_of_an_uninterrupted_one(reference, tmp_path, capsys):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vargen.cli", *RUN, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("0*.png"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    written = sorted(p.name for p in out.glob("0*.png") if ".tmp." not in p.name)
    assert 3 <= len(written) < 6, written
    (out / "0005_ship.tmp.png").write_bytes(b"\x89PNG half")  # a write the kill cut short
    code, stdout, _ = generate(capsys, out, "--resume")
    assert code == 0 and f"wrote {6 - len(written)} PNGs to {out}, {len(written)} kept from the earlier run" in stdout
    assert samples(out) == samples(reference) and not list(out.glob("*.tmp.*"))
    code, stdout, _ = generate(capsys, out, "--resume")  # a finished run resumed: nothing to do
    assert code == 0 and "wrote 0 PNGs" in stdout and samples(out) == samples(reference)


def test_resume_refuses_a_sample_the_run_would_not_write(reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shutil.copy(out / "0000_cat.png", out / "0007_dog.png")
    code, _, err = generate(capsys, out, "--resume")
    assert code == 2 and "0007_dog.png is not a file of this run" in err


def test_fid_reads_only_the_samples_and_warns_below_2048(reference, tmp_path, capsys):
    pytest.importorskip("cleanfid", reason="vargen fid needs clean-fid (pip install 'vargen[eval]')")
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    Image.new("RGB", (96, 64)).save(out / "grid.png")  # what older versions put among the samples
    (out / "notes.txt").write_text("x")
    fid = ["fid", str(out), str(reference), "--features", "cifar10-features", "--mode", "clean", "--threads", "1",
           "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "fid.json")]
    assert main(fid) == 0
    captured = capsys.readouterr()
    assert "6 vs 6 images" in captured.out
    assert "WARNING: only 6 samples and 6 reference images: FID, KID, precision / recall and IS are unreliable " \
           "below 2,048 images" in captured.err
    assert json.loads((tmp_path / "fid.json").read_text())["warning"].startswith("WARNING: only 6 samples")
    (out / "manifest.json").unlink()  # no manifest: every image counts, and the odd one out is named
    assert main(fid) == 2
    err = capsys.readouterr().err
    assert f"6 are 32x32 ({out / '0000_cat.png'}, ...); 1 is 96x64 ({out / 'grid.png'})" in err


def test_grid_takes_a_png_path(tmp_path, capsys):
    code, _, err = generate(capsys, tmp_path / "out", "--grid", str(tmp_path))
    assert code == 2 and err.strip() == f"error: --grid takes the path of a .png file, got {str(tmp_path)!r}"


def test_the_summary_of_a_streamed_run_is_that_of_its_chunks_joined():
    """vargen generate keeps the chunks' statistics in flat memory (no per-step acceptance, no acceptance maps) and
    prints the summary Stats.concat gives over every chunk, past the point where it joins them (64 chunks)."""
    from vargen.cli import _StatsTotal
    from vargen.samplers.stats import Stats

    pipe = vargen.load("cifar10-llamagen")
    parts = [pipe.generate([c] * n, sampler="sjd:window=4", seed=c, per_row_seeds=True, decode=False).stats
             for c, n in ((0, 1), (3, 2), (8, 1))]
    total = _StatsTotal()
    for stats in parts * 23:
        total.add(stats)
    expected = Stats.concat(parts * 23).summary()
    assert total.summary() == pytest.approx(expected) and expected["mean_accepted"] > 1
