"""Reliability and security: no code runs from a checkpoint, every size is bounded, bad input is one clear
error before any work (API, CLI, eval scripts), resumed evaluation never mixes runs, and reduced precision
works for every family."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vargen
from helpers import tiny_gpt

REPO = Path(__file__).resolve().parents[1]
VARGEN = [sys.executable, "-m", "vargen.cli"]


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: a harmless stand-in for ``os.system``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": Payload(str(marker))}}, f)
    return path, marker


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VARGEN_THREADS": "1"}
    return subprocess.run([*VARGEN, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd or REPO,
                          timeout=300)


# ----------------------------------------------------------------------------------------------
# Security
# ----------------------------------------------------------------------------------------------


def test_a_malicious_pickle_is_refused_and_never_executed(tmp_path):
    from vargen.models.checkpoint import read_state_dict
    from vargen.models.llamagen import load_gpt_weights

    path, marker = malicious_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="refused to unpickle") as err:
        read_state_dict(path)
    assert "trusted=True" in str(err.value) and "safetensors" in str(err.value)  # how to trust or convert it
    with pytest.raises(ValueError, match="refused to unpickle"):
        load_gpt_weights(tiny_gpt(), path)
    assert not marker.exists()


def test_the_cli_never_runs_a_checkpoints_code(tmp_path):
    path, marker = malicious_checkpoint(tmp_path)
    out = run_cli("generate", "--model", "llamagen-c2i-B-256", "--checkpoint", path, "--tokenizer-checkpoint", path,
                  "--out", tmp_path / "out", "--threads", "1")
    assert out.returncode == 2 and "refused to unpickle" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()


def test_full_unpickling_needs_the_trust_flag_and_warns(tmp_path):
    import datetime

    from vargen.models.checkpoint import read_state_dict

    path = tmp_path / "with_extras.pt"
    torch.save({"model": {"w": torch.ones(2)}, "created": datetime.date(2026, 1, 1)}, path)  # not a plain tensor dict
    with pytest.raises(ValueError, match="refused to unpickle"):
        read_state_dict(path)
    with pytest.warns(UserWarning, match="can run arbitrary code"):
        assert torch.equal(read_state_dict(path, trusted=True)["w"], torch.ones(2))
    # a training checkpoint that carries an argparse Namespace (as released LlamaGen / VAR files) loads safely
    import argparse

    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1.0)}, tmp_path / "ns.pt")
    assert torch.equal(read_state_dict(tmp_path / "ns.pt")["w"], torch.ones(2))


# ----------------------------------------------------------------------------------------------
# Bounded work, strict values
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llamagen():
    return vargen.load("cifar10-llamagen")


@pytest.mark.parametrize("options,message", [
    ({"sampler": "sjd", "window": 100000}, "window=100000 exceeds the model's num_tokens (256)"),
    ({"sampler": "sd", "gamma": 10**6}, "gamma=1000000 exceeds the model's num_tokens (256)"),
    ({"sampler": "sjd", "window": True}, "window must be an integer"),
    ({"sampler": "sjd", "coupled": "no", "window": 0}, "window must be >= 1"),
    ({"sampler": "sjd", "coupled": "definitely"}, "expected true/false/yes/no/1/0"),
    ({"sampler": "sjd", "temperature": float("nan")}, "temperature must be a finite number"),
    ({"sampler": "sjd", "cfg_scale": float("inf")}, "cfg_scale must be a finite number"),
    ({"sampler": "sjd", "cfg_interval": -5}, "cfg_interval must be -1 (always guided) or >= 0"),
    ({"sampler": "sjd", "top_k": 2.5}, "top_k must be an integer"),
    ({"sampler": "var"}, "does not apply to a LLAMAGEN pipeline"),
])
def test_bad_options_fail_before_any_work(llamagen, monkeypatch, options, message):
    calls = []
    monkeypatch.setattr(llamagen.model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError) as err:
        llamagen.generate(["cat"], seed=0, **options)
    assert message in str(err.value) and not calls


@pytest.mark.parametrize("cond,message", [
    ([10], "class id 10 out of range: this model has 10 classes"),  # the CFG null class is internal
    ([-1], "class id -1 out of range"),
    ([1.0], "class ids must be integers or class names"),
    ([True], "class ids must be integers or class names"),
    ([], "no classes given"),
    (["unicorn"], "unknown class 'unicorn'"),
])
def test_class_ids_are_checked_at_every_public_entry(llamagen, cond, message):
    with pytest.raises(ValueError, match=message):
        llamagen.generate(cond)
    with pytest.raises(ValueError, match="class id|class ids"):
        vargen.get_sampler("ar").sample(llamagen.model, torch.tensor([10]))  # the null class, through the sampler API
    with pytest.raises(ValueError, match="class ids must be a 1-D integer tensor"):
        vargen.get_sampler("ar").sample(llamagen.model, torch.tensor([1.0]))


def test_var_and_mar_reject_the_null_class_and_float_labels():
    var = vargen.load("cifar10-var")
    for bad in ([10], torch.tensor([10]), torch.tensor([0.5])):
        with pytest.raises(ValueError):
            vargen.get_sampler("var").sample(var.model, bad)
    mar = vargen.load("cifar10-mar")
    with pytest.raises(ValueError, match="out of range"):
        vargen.get_sampler("mar", num_iter=2).sample(mar.model, torch.tensor([10]))


def test_seeds_must_fit_a_generator(llamagen):
    for seed in (-1, 2**63, 1.5, True):
        with pytest.raises(ValueError, match="seed must be an integer in 0.."):
            llamagen.generate(["cat"], seed=seed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,sampler,options", [("cifar10-llamagen", "sjd", {}), ("cifar10-llamagen", "lantern", {}),
                                                  ("cifar10-var", "code", {}), ("cifar10-mar", "mar", {"num_iter": 4}),
                                                  ("cifar10-mar", "cspd", {"num_iter": 4})])
def test_reduced_precision_works_for_every_family(name, sampler, options, dtype):
    pipe = vargen.load(name, dtype=dtype)
    out = pipe.generate(["cat"], sampler=sampler, seed=0, **options)
    assert torch.isfinite(out.tokens.float()).all() and len(out.images) == 1


def test_non_finite_weights_warn_at_load(tmp_path):
    from safetensors.torch import load_file, save_file

    from vargen.models.llamagen import GPT

    folder = tmp_path / "gpt"
    src = vargen.zoo.shipped_path("cifar10-llamagen")
    folder.mkdir()
    (folder / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    state["norm.weight"][0] = float("nan")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.warns(UserWarning, match="NaN or inf"):
        GPT.from_folder(folder)


# ----------------------------------------------------------------------------------------------
# Files: clear errors that name them
# ----------------------------------------------------------------------------------------------


def test_broken_files_are_named(tmp_path):
    from vargen.models.llamagen import GPT
    from vargen.models.var import VAR

    src = vargen.zoo.shipped_path("cifar10-llamagen")
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text((src / "config.json").read_text())
    (folder / "model.safetensors").write_bytes(b"")  # empty
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        GPT.from_folder(folder)
    (folder / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        GPT.from_folder(folder)
    with pytest.raises(ValueError, match="holds a 'llamagen_gpt' model, not 'var'"):
        VAR.from_folder(src)  # a LlamaGen folder given to VAR
    with pytest.raises(ValueError, match="does not look like a VAR checkpoint"):
        VAR.from_checkpoint(src / "model.safetensors")
    bad = tmp_path / "pipe"
    bad.mkdir()
    (bad / "pipeline.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"pipeline.json is not valid JSON"):
        vargen.load(str(bad))
    (bad / "pipeline.json").write_text(json.dumps({"kind": "llamagen", "model": "m", "tokenizer": "t", "clip": 1}))
    with pytest.raises(ValueError, match=r"unknown keys \['clip'\]"):
        vargen.load(str(bad))


def write_images(folder: Path, sizes: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, s in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def test_fid_checks_the_whole_folder_and_names_broken_files(tmp_path):
    from vargen.eval import compute_fid

    feats = lambda x: x.float().mean((2, 3))  # noqa: E731 - a tiny feature map, no downloads
    mixed = tmp_path / "mixed"
    write_images(mixed, [32] * 150 + [64])  # the odd one is past the first batch of 100
    ref = tmp_path / "ref"
    write_images(ref, [32] * 20)
    with pytest.raises(ValueError, match=r"150 are 32x32 .*; 1 is 64x64 \(.*000150.png\)"):
        compute_fid(mixed, ref, features=feats, mode="clean")
    (mixed / "000150.png").unlink()
    (mixed / "000003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match=r"000003.png: not a readable image"):
        compute_fid(mixed, ref, features=feats, mode="clean")
    (mixed / "000003.png").unlink()
    (mixed / "000004.tmp.png").write_bytes(b"half written")  # an interrupted save is not a sample
    assert compute_fid(mixed, ref, features=feats, mode="clean").n_a == 149


# ----------------------------------------------------------------------------------------------
# Evaluation runs: manifests, sizes, batch invariance
# ----------------------------------------------------------------------------------------------


def test_sampling_runs_never_mix_and_resume_to_the_same_files(tmp_path, capsys):
    """A run interrupted after its first batch and resumed writes the files an uninterrupted run writes (across
    batch sizes files agree only up to GEMM rounding, which can flip a token on some CPUs: see the module doc)."""
    from vargen.eval.sample import main

    common = ["--model", "cifar10-llamagen", "--sampler", "ar", "--num-samples", "6", "--threads", "1"]
    assert main(common + ["--batch-size", "4", "--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--batch-size", "4", "--out", str(tmp_path / "b")]) == 0
    whole = {i: (tmp_path / "a" / f"{i:06d}.png").read_bytes() for i in range(6)}
    for i in (4, 5):  # the second batch never ran
        (tmp_path / "b" / f"{i:06d}.png").unlink()
    assert main(common + ["--batch-size", "4", "--out", str(tmp_path / "b")]) == 0
    for i in range(6):
        assert (tmp_path / "b" / f"{i:06d}.png").read_bytes() == whole[i]
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["seeding"] == "per image"
    capsys.readouterr()
    # resuming with another sampler or seed is refused, naming what differs
    assert main(common[:2] + ["--sampler", "sjd:window=8", "--num-samples", "6", "--out", str(tmp_path / "a")]) == 2
    assert "sampler: folder 'ar' vs this run 'sjd:window=8'" in capsys.readouterr().err
    assert main(common + ["--seed", "1", "--out", str(tmp_path / "a")]) == 2
    assert main(common + ["--batch-size", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert main(common + ["--num-classes", "11", "--out", str(tmp_path / "d")]) == 2
    assert "--num-classes must be in 1..10" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The command line: one line of error, never a traceback
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["generate", "--sampler", "ar:window=16"], "sampler 'ar' takes no option 'window'"),
    (["generate", "--sampler", "sjd:gamma=4"], "sampler 'sjd' takes no option 'gamma'"),
    (["generate", "--sampler", "sjd:coupled=maybe"], "expected true/false"),
    (["generate", "--model", "cifar10-var", "--sampler", "sjd"], "does not apply to a VAR pipeline"),
    (["generate", "--model", "cifar10-var", "--cfg-interval", "3"], "cfg_interval does not apply to var models"),
    (["generate", "--temperature", "nan"], "temperature must be a finite number"),
    (["generate", "--class-id", "10"], "class id 10 out of range"),
    (["generate", "--seed", str(2**63)], "seed must be an integer in 0.."),
    (["generate", "--device", "cuda"] if not torch.cuda.is_available() else ["generate", "--device", "cuda:99"],
     "CUDA"),
    (["generate", "--threads", "-1"], "threads must be an integer >= 0"),
    (["generate", "--per-class", "0"], "--per-class must be >= 1"),
    (["generate", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["bench", "--batch", "0"], "batch sizes must be integers in 1..4096"),
    (["bench", "--repeats", "0"], "repeats must be an integer >= 1"),
    (["bench", "--model", "cifar10-mar", "--quality"], "--quality needs a token model"),
    (["measure", "psnr", "--tokenizer", "nope", "--data", "x"], "neither a shipped zoo entry nor a folder"),
    (["fid", "a", "b"], "--mode is required"),
    (["train", "vq", "--data", "x", "--out", "y", "--config", "{bad"], "--config is not valid JSON"),
    (["train", "draft-head", "--model", "cifar10-llamagen", "--samples", "0", "--out", "y"],  # found by test_fuzz.py
     "--samples must be >= 1, got 0"),
    (["samplers", "nope"], "unknown sampler 'nope'"),
])
def test_cli_errors_are_one_line_without_traceback(tmp_path, args, message):
    out = run_cli(*args, *(["--out", tmp_path / "o"] if args[0] == "generate" else []))
    assert out.returncode == 2, out.stdout[-500:] + out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_cli_checks_the_output_folder_before_sampling(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    out = run_cli("generate", "--out", target)
    assert out.returncode == 2 and "exists and is not a folder" in out.stderr and "Traceback" not in out.stderr


def test_bench_runs_on_every_family_and_says_when_the_baseline_is_missing():
    for model, spec in (("cifar10-var", "code:draft_steps=4"), ("cifar10-mar", "mar:num_iter=2")):
        out = run_cli("bench", "--model", model, "--sampler", spec, "--threads", "1")
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"`{spec}`" in out.stdout and "no speed-up column" in out.stdout  # no baseline row: said, no nan
    out = run_cli("bench", "--model", "cifar10-var", "--sampler", "var", "code:draft_steps=4", "--threads", "1")
    assert out.returncode == 0 and "speed-up vs var" in out.stdout and "nan" not in out.stdout


def test_generate_runs_large_requests_in_chunks(tmp_path, monkeypatch):
    """--per-class N runs in chunks of --batch-size; per-row seeds keep the images those of one big batch."""
    from vargen.cli import main

    calls = []
    real = vargen.pipeline.Pipeline.generate_iter

    def counting(self, *a, **k):
        for out in real(self, *a, **k):
            calls.append(len(out.images))
            yield out

    monkeypatch.setattr(vargen.pipeline.Pipeline, "generate_iter", counting)
    assert main(["generate", "--sampler", "ar", "--class-id", "cat", "--per-class", "5", "--batch-size", "2",
                 "--out", str(tmp_path / "chunks"), "--threads", "1"]) == 0
    assert calls == [1, 2, 2]  # the first image alone: on disk at once
    assert main(["generate", "--sampler", "ar", "--class-id", "cat", "--per-class", "5", "--batch-size", "5",
                 "--out", str(tmp_path / "one"), "--threads", "1"]) == 0
    for i in range(5):
        assert (tmp_path / "chunks" / f"{i:04d}_cat.png").read_bytes() == (tmp_path / "one" / f"{i:04d}_cat.png").read_bytes()


def test_every_command_option_has_help_text():
    import argparse

    from vargen.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "vargen")
    assert not missing, missing


def test_only_a_real_true_unlocks_full_unpickling(tmp_path):
    from vargen.models.checkpoint import read_state_dict

    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, path)
    for value in ("yes", "no", 1, str(path)):
        with pytest.raises(ValueError, match="trusted must be True or False"):
            read_state_dict(path, trusted=value)
    assert torch.equal(read_state_dict(path)["w"], torch.zeros(2))


def test_the_refusal_names_a_working_conversion_through_the_trust_gate(tmp_path):
    """The command the error suggests converts a trusted training pickle into model.safetensors."""
    import datetime
    import shlex

    from safetensors.torch import load_file

    from vargen.models.checkpoint import read_state_dict

    path = tmp_path / "train.pt"
    torch.save({"model": {"module.w": torch.ones(3)}, "when": datetime.date(2024, 1, 1)}, path)
    with pytest.raises(ValueError, match="refused to unpickle") as err:
        read_state_dict(path)
    assert "\x1b" not in str(err.value)
    command = str(err.value)[str(err.value).index("python -c"):]
    argv = shlex.split(command)
    out = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert torch.equal(load_file(str(tmp_path / "model.safetensors"))["w"], torch.ones(3))


def test_fid_names_a_missing_source_before_looking_for_weights(tmp_path, capsys):
    from vargen.cli import main

    assert main(["fid", str(tmp_path / "missing"), "cifar10-test", "--mode", "clean"]) == 2
    err = capsys.readouterr().err
    assert "image source not found" in err and "missing" in err and "inception" not in err.lower(), err


@pytest.mark.parametrize("what", ["features", "kl-vae", "var-vqvae"])
def test_training_with_missing_data_leaves_no_run_folder(what, tmp_path, capsys):
    from vargen.cli import main

    out = tmp_path / "run"
    assert main(["train", what, "--data", str(tmp_path / "missing.tar.gz"), "--out", str(out)]) == 2
    assert "training data not found" in capsys.readouterr().err and not out.exists()


def test_fid_says_when_a_run_folder_is_incomplete(tmp_path):
    from vargen.eval import compute_fid

    feats = lambda x: x.float().mean((2, 3))  # noqa: E731
    run, ref = tmp_path / "run", tmp_path / "ref"
    write_images(run, [32] * 6)
    (run / "manifest.json").write_text('{"count": 9}')
    write_images(ref, [32] * 6)
    assert "holds 6 of the 9 samples its manifest names" in compute_fid(run, ref, features=feats, mode="clean").note
    (run / "manifest.json").write_text('{"count": 6}')
    assert "manifest" not in compute_fid(run, ref, features=feats, mode="clean").note


def test_fid_of_images_given_as_an_array_has_no_folder_note():
    import numpy as np

    from vargen.eval import compute_fid

    feats = lambda x: x.float().mean((2, 3))  # noqa: E731
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8) for _ in range(2))
    assert compute_fid(a, b, features=feats, mode="clean").note == ""
