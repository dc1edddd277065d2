"""Validated files (issue 33, build item 4): ``pipeline.json`` and model ``config.json`` are checked against declared
types and ranges before anything loads, with errors naming the file and the field; a corrupt or truncated checkpoint
is reported as such, with or without trust, and never with advice to lower the safety gate."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import vargen
import vargen.zoo
from vargen.models.checkpoint import read_state_dict

REPO = Path(__file__).resolve().parents[1]
DEMO = vargen.zoo.shipped_path("cifar10-llamagen")


def demo_folder(tmp_path: Path, model: Path | None = None, **edits) -> Path:
    """A copy of the shipped LlamaGen demo's pipeline.json (companions by absolute path) with ``edits``."""
    spec = json.loads((DEMO / "pipeline.json").read_text())
    for key in ("model", "tokenizer", "draft"):
        spec[key] = str(vargen.zoo.ZOO_DIR / spec[key])
    if model is not None:
        spec["model"] = str(model)
    spec.update(edits)
    folder = tmp_path / "demo"
    folder.mkdir(exist_ok=True)
    (folder / "pipeline.json").write_text(json.dumps(spec))
    return folder


def gpt_folder(tmp_path: Path, **config_edits) -> Path:
    """A copy of the demo's GPT folder with ``config_edits`` in its config.json."""
    folder = tmp_path / "gpt"
    folder.mkdir(parents=True)
    meta = json.loads((DEMO / "config.json").read_text())
    meta["config"].update(config_edits)
    (folder / "config.json").write_text(json.dumps(meta))
    shutil.copy(DEMO / "model.safetensors", folder / "model.safetensors")
    return folder


def test_the_unedited_copy_loads(tmp_path):
    pipe = vargen.load(demo_folder(tmp_path))
    assert pipe.num_classes == 10 and pipe.class_names[0] == "airplane"


def test_a_number_as_the_model_folder_names_the_file_and_field(tmp_path):
    folder = demo_folder(tmp_path, model=None)
    spec = json.loads((folder / "pipeline.json").read_text())
    (folder / "pipeline.json").write_text(json.dumps({**spec, "model": 123}))
    with pytest.raises(ValueError) as err:
        vargen.load(folder)
    assert str(err.value) == f"{folder / 'pipeline.json'}: field 'model' must be a string (a folder name), got 123"


def test_a_part_that_is_not_a_folder_names_the_file_and_field(tmp_path):
    """Found by tests/test_fuzz.py: "tokenizer": "nan" was '<root>/nan is not a model folder', naming neither."""
    folder = demo_folder(tmp_path, tokenizer="nan")
    with pytest.raises(ValueError) as err:
        vargen.load(folder)
    assert str(err.value) == (f"{folder / 'pipeline.json'}: field 'tokenizer' names {tmp_path / 'nan'}, which is not "
                              f"a folder (a relative name is read from {tmp_path})")
    with pytest.raises(ValueError, match=r"pipeline.json: field 'draft' names /nonexistent/head, which is not a"):
        vargen.load(demo_folder(tmp_path, draft="/nonexistent/head"))


def test_class_names_as_one_string_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"pipeline.json: field 'class_names' must be a non-empty list of strings"):
        vargen.load(demo_folder(tmp_path, class_names="airplane"))
    with pytest.raises(ValueError, match=r"pipeline.json: field 'class_names' must hold non-empty strings"):
        vargen.load(demo_folder(tmp_path, class_names=["airplane", 7]))


def test_three_class_names_on_a_ten_class_model_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"pipeline.json: field 'class_names' has 3 names but the model has 10 "
                                         r"classes"):
        vargen.load(demo_folder(tmp_path, class_names=["airplane", "automobile", "bird"]))


def test_other_pipeline_fields_are_typed(tmp_path):
    with pytest.raises(ValueError, match=r"field 'defaults' must be an object"):
        vargen.load(demo_folder(tmp_path, defaults=[1, 2]))
    with pytest.raises(ValueError, match=r"defaults: field 'top_k' must be an integer or null, got 2.5"):
        vargen.load(demo_folder(tmp_path, defaults={"top_k": 2.5}))
    with pytest.raises(ValueError, match=r"defaults: field 'top_k' must be an integer or null, got True"):
        vargen.load(demo_folder(tmp_path, defaults={"top_k": True}))  # a bool is not an int
    with pytest.raises(ValueError, match=r"field 'benchmark' must be a list of sampler specs"):
        vargen.load(demo_folder(tmp_path, benchmark="ar"))
    with pytest.raises(ValueError, match=r"field 'sampler_options' must be an object of objects"):
        vargen.load(demo_folder(tmp_path, sampler_options={"lantern": 32}))
    with pytest.raises(ValueError, match=r"field 'draft' must be a string"):
        vargen.load(demo_folder(tmp_path, draft=["a"]))
    with pytest.raises(ValueError, match=r"field 'model' must not be empty"):
        vargen.load(demo_folder(tmp_path, model=""))
    with pytest.raises(ValueError, match=r"pipeline.json: defaults: temperature must be >= 0, got -1"):
        vargen.load(demo_folder(tmp_path, defaults={"temperature": -1}))
    with pytest.raises(ValueError, match=r"pipeline.json: field 'defaults' has unknown settings \['bogus'\]"):
        vargen.load(demo_folder(tmp_path, defaults={"bogus": 1}))
    with pytest.raises(ValueError, match=r"pipeline.json: field 'sampler_options': lantern: k: expected an integer"):
        vargen.load(demo_folder(tmp_path, sampler_options={"lantern": {"k": "x"}}))
    with pytest.raises(ValueError, match=r"pipeline.json: field 'sampler_options': unknown sampler 'nosuch'"):
        vargen.load(demo_folder(tmp_path, sampler_options={"nosuch": {}}))
    with pytest.raises(ValueError, match=r"pipeline.json: field 'benchmark': unknown sampler 'nosuch'"):
        vargen.load(demo_folder(tmp_path, benchmark=["ar", "nosuch:window=2"]))
    with pytest.raises(ValueError, match=r"pipeline.json: field 'kind' must be a family name \(a string\)"):
        vargen.load(demo_folder(tmp_path, kind=["llamagen"]))
    assert vargen.load(demo_folder(tmp_path, defaults={"cfg_scale": 2})).defaults.cfg_scale == 2  # int for float


def test_a_string_in_a_model_config_names_the_file_and_field(tmp_path):
    folder = gpt_folder(tmp_path, dim="128")
    with pytest.raises(ValueError) as err:
        vargen.load(demo_folder(tmp_path, model=folder))
    assert str(err.value) == f"{folder / 'config.json'}: field 'dim' must be an integer, got '128' (str)"


@pytest.mark.parametrize("edit, message", [
    ({"n_layer": 1_000_000}, "describes a model of more than"),  # built layer by layer for minutes, then refused
    ({"dim": 4096}, "describes a model of more than"),  # 6 GB allocated, then refused
    ({"dim": 256}, "checkpoint does not match"),
    ({"cls_token_num": 10**12}, "needs 1.28e.05 GB to build, more than the"),  # its RoPE table: allocation failed
])
def test_sizes_a_config_gets_wrong_are_refused_before_anything_is_built(tmp_path, edit, message):
    """Found by tests/test_fuzz.py: config.json sizes that do not match the weights (or the machine) are compared on the
    meta device first, never an allocation failure or minutes of building."""
    folder = gpt_folder(tmp_path, **edit)
    with pytest.raises(ValueError, match=message) as err:
        vargen.load(demo_folder(tmp_path, model=folder))
    assert str(folder) in str(err.value) and "DefaultCPUAllocator" not in str(err.value)


def test_a_vq_config_is_checked_against_its_weights_too(tmp_path):
    """Found by tests/test_fuzz.py: the LlamaGen VQ folder built its config unchecked (num_res_blocks=100000 ran out of
    memory with a RuntimeError traceback)."""
    src = vargen.zoo.shipped_path("cifar10-vq")
    folder = tmp_path / "vq"
    folder.mkdir()
    meta = json.loads((src / "config.json").read_text())
    meta["config"]["num_res_blocks"] = 100_000
    (folder / "config.json").write_text(json.dumps(meta))
    (folder / "model.safetensors").symlink_to(src / "model.safetensors")
    with pytest.raises(ValueError, match=rf"{folder / 'config.json'}: describes a model of more than"):
        vargen.load(demo_folder(tmp_path, tokenizer=str(folder)))


def test_model_config_types_and_ranges(tmp_path):
    from vargen.models.llamagen import GPT

    for i, (edit, message) in enumerate([
        ({"n_layer": True}, r"field 'n_layer' must be an integer, got True"),  # bool is never an int
        ({"n_head": 0}, r"field 'n_head' must be at least 1, got 0"),
        ({"cls_token_num": -2}, r"field 'cls_token_num' must not be negative, got -2"),
        ({"norm_eps": "1e-5"}, r"field 'norm_eps' must be a number, got '1e-5'"),
        ({"class_dropout_prob": 1.5}, r"field 'class_dropout_prob' must be between 0 and 1, got 1.5"),
        ({"n_kv_head": 1.5}, r"field 'n_kv_head' must be an integer or null, got 1.5"),
        ({"model_type": 3}, r"field 'model_type' must be a string, got 3"),
    ]):
        folder = gpt_folder(tmp_path / str(i), **edit)
        with pytest.raises(ValueError, match=r"config.json: " + message):
            GPT.from_folder(folder)
    gpt_folder(tmp_path / "ok", n_kv_head=None)  # null is fine where the field is optional
    assert GPT.from_folder(tmp_path / "ok" / "gpt").config.dim > 0


def _truncated_pt(tmp_path: Path) -> Path:
    whole = tmp_path / "whole.pt"
    torch.save({"model": {"w": torch.randn(64, 64), "b": torch.randn(64)}}, whole)
    data = whole.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_pt_is_corrupt_not_untrusted(tmp_path):
    path = _truncated_pt(tmp_path)
    with pytest.raises(ValueError, match=rf"corrupt or truncated: {path}") as err:
        read_state_dict(path)
    assert "trust" not in str(err.value) and "refused" not in str(err.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="corrupt or truncated: .*empty.pt"):
        read_state_dict(tmp_path / "empty.pt")
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.randn(64, 64)}, legacy, _use_new_zipfile_serialization=False)
    for cut in (50, len(legacy.read_bytes()) // 2):
        (tmp_path / "legacy_cut.pt").write_bytes(legacy.read_bytes()[:cut])
        with pytest.raises(ValueError, match="corrupt or truncated") as err:
            read_state_dict(tmp_path / "legacy_cut.pt")
        assert "trust" not in str(err.value)


def test_a_truncated_pt_is_corrupt_with_trust_too(tmp_path):
    path = _truncated_pt(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=rf"corrupt or truncated: {path}") as err:
            read_state_dict(path, trusted=True)
    assert "trust" not in str(err.value)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VARGEN_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "vargen.cli", "generate", "--model", "llamagen-c2i-B-256",
                          "--checkpoint", str(path), "--tokenizer-checkpoint", str(path), "--trust-checkpoint",
                          "--out", str(tmp_path / "out"), "--threads", "1"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "corrupt or truncated" in out.stderr and "--trust-checkpoint" not in out.stderr, out.stderr[-2000:]


def test_a_truncated_or_bad_header_safetensors_is_corrupt(tmp_path):
    from vargen.models.llamagen import GPT

    folder = gpt_folder(tmp_path)
    data = (DEMO / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=r"corrupt or truncated: .*model.safetensors") as err:
        GPT.from_folder(folder)
    assert "trust" not in str(err.value)
    (folder / "model.safetensors").write_bytes((2 ** 40).to_bytes(8, "little") + data[8:])  # a bad header length
    with pytest.raises(ValueError, match=r"corrupt or truncated: .*model.safetensors"):
        GPT.from_folder(folder)
    (folder / "model.safetensors").write_bytes(data[:8] + b"\xff" * 32 + data[40:])  # a header that is not JSON
    with pytest.raises(ValueError, match=r"corrupt or truncated: .*model.safetensors"):
        GPT.from_folder(folder)


def test_a_valid_pickle_with_extras_still_gets_the_trust_advice(tmp_path):
    import datetime

    path = tmp_path / "with_extras.pt"
    torch.save({"model": {"w": torch.ones(2)}, "created": datetime.date(2026, 1, 1)}, path)
    with pytest.raises(ValueError, match="refused to unpickle: it holds more than tensors"):
        read_state_dict(path)


@pytest.mark.parametrize("name, field, value, message", [
    ("cifar10-kl", "ch", "32", r"field 'ch' must be an integer, got '32' \(str\)"),
    ("cifar10-kl", "ch_mult", [1, "2"], r"field 'ch_mult' must be a list of integers"),
    ("cifar10-msvq", "vocab_size", 512.0, r"field 'vocab_size' must be an integer, got 512.0"),
    ("cifar10-msvq", "using_znorm", 0, r"field 'using_znorm' must be a boolean \(true / false\), got 0"),
    ("cifar10-llamagen-head", "dim", "128", r"field 'dim' must be an integer, got '128' \(str\)"),
    ("cifar10-vq", "codebook_size", "512", r"field 'codebook_size' must be an integer"),
    ("cifar10-mar-target", "class_num", "10", r"field 'class_num' must be an integer"),
    ("cifar10-var-refiner", "depth", "4", r"field 'depth' must be an integer"),
])
def test_every_zoo_config_type_is_checked(tmp_path, name, field, value, message):
    src = vargen.zoo.shipped_path(name)
    meta = json.loads((src / "config.json").read_text())
    assert field in meta["config"], sorted(meta["config"])
    meta["config"][field] = value
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(meta))
    (folder / "model.safetensors").symlink_to(src / "model.safetensors")
    extra = {}
    if name == "cifar10-var-refiner":
        from vargen.tokenizers.msvq import MultiScaleVQVAE

        extra = {"vae": MultiScaleVQVAE.from_folder(vargen.zoo.shipped_path("cifar10-msvq"))}
    with pytest.raises(ValueError, match=rf"{folder / 'config.json'}: " + message):
        vargen.zoo.load_folder(folder, **extra)


def test_a_truncated_torchscript_file_is_corrupt_with_or_without_trust(tmp_path):
    whole = tmp_path / "whole.jit"
    torch.jit.save(torch.jit.script(torch.nn.Linear(8, 8)), str(whole))
    data = whole.read_bytes()
    path = tmp_path / "encoder.jit"
    path.write_bytes(data[: len(data) // 2])
    for trusted in (False, True):
        with pytest.raises(ValueError, match=rf"corrupt or truncated: {path}") as err:
            read_state_dict(path, trusted=trusted)
        assert "trust" not in str(err.value)
    with pytest.raises(ValueError, match="runs its own code"):  # a whole file still needs trust
        read_state_dict(whole)
    with pytest.warns(UserWarning, match="can run arbitrary code"):
        assert set(read_state_dict(whole, trusted=True)) == {"weight", "bias"}
