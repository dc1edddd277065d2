"""Issue 33, the held-out audit replayed with new inputs : each class of failure it
found -- an input silently ignored or misread, a Python traceback from a public call, a run that cannot end -- is
now a one-line error naming the bad value and what is allowed, raised before any work."""
from __future__ import annotations

import shutil
import tarfile

import pytest
import torch

import vargen
from vargen.cli import main


@pytest.fixture(scope="module")
def llamagen():
    return vargen.load("cifar10-llamagen")


def one_line_error(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


# -- inputs that were silently ignored or read as something else --------------------------------------------------

@pytest.mark.parametrize("kw", [dict(decode="no"), dict(decode=0.0), dict(per_row_seeds="yes"), dict(per_row_seeds=None)])
def test_switches_are_true_or_false(llamagen, kw):
    (name, value), = kw.items()
    with pytest.raises(ValueError, match=f"{name} must be True or False, got {value!r}"):
        llamagen.generate([0], sampler="ar", **kw)


def test_generate_iter_switches_are_checked_too(llamagen):
    with pytest.raises(ValueError, match="decode must be True or False"):
        llamagen.generate_iter([0], sampler="ar", decode="false")


def test_an_empty_sampler_is_not_the_default(llamagen):
    with pytest.raises(ValueError, match="sampler must be a name such as 'sjd:.*' or None .*got ''"):
        llamagen.generate([0], sampler="")


def test_a_checkpoint_is_refused_where_the_pipeline_reads_its_own_weights(tmp_path):
    with pytest.raises(ValueError, match="checkpoint applies to the official names .* not to 'cifar10-llamagen'"):
        vargen.load("cifar10-llamagen", checkpoint=str(tmp_path / "gpt.pt"))
    with pytest.raises(ValueError, match="tokenizer_checkpoint applies to the official names"):
        vargen.load("cifar10-var", tokenizer_checkpoint=str(tmp_path / "vq.pt"))


def test_cli_refuses_an_empty_out_sampler_and_a_checkpoint_it_would_ignore(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --out '' used to write the images here
    base = ["generate", "--class-id", "0", "--threads", "1"]
    one_line_error(capsys, [*base, "--out", ""], "--out must name a folder, got ''")
    one_line_error(capsys, [*base, "--sampler", " ", "--out", "o"], "--sampler must be a sampler spec")
    one_line_error(capsys, [*base, "--checkpoint", "x.safetensors", "--out", "o"], "applies to the official names")
    assert not list(tmp_path.glob("*.png"))


def test_the_app_refuses_a_model_it_can_never_load(capsys):
    one_line_error(capsys, ["app", "--model", "nope-model"], "--model 'nope-model': not a shipped demo")


def test_bench_flags_that_apply_elsewhere_are_errors(capsys):
    one_line_error(capsys, ["bench", "--shapes", "abc"], "--shapes applies to --suite gpu")
    one_line_error(capsys, ["bench", "--num-tokens", "64"], "--num-tokens applies to the random-* shapes")
    one_line_error(capsys, ["bench", "--model", "random-gpt-b", "--num-tokens", "-1"], "--num-tokens must be >= 1")


# -- tracebacks from public calls ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler, message", [
    (3, "sampler must be a name, a 'name:key=value' spec or a sampler instance, got int"),
    (0, "sampler must be a name"),
    (vargen.get_sampler("var"), "sampler 'var' .* does not apply to a LLAMAGEN pipeline"),
])
def test_a_sampler_object_must_be_a_sampler_of_the_family(llamagen, sampler, message):
    with pytest.raises(ValueError, match=message):
        llamagen.generate([0], sampler=sampler)


def test_a_0d_tensor_of_classes_is_an_error(llamagen):
    with pytest.raises(ValueError, match="1-D integer tensor"):
        llamagen.generate(torch.tensor(3), sampler="ar")
    with pytest.raises(ValueError, match="0-d tensor"):
        llamagen.generate_iter(torch.tensor(3), sampler="ar")
    with pytest.raises(ValueError, match=r"class id\(s\) \[10\] out of range"):
        llamagen.generate(torch.tensor([10]), sampler="ar")


def test_decode_checks_what_it_is_given(llamagen):
    tokens = llamagen.generate([0], sampler="ar", decode=False).tokens
    assert len(llamagen.decode(tokens)) == 1
    for bad, message in [(None, "got NoneType"), (tokens.tolist(), "got list"),
                         (tokens[0], r"shape \(256,\)"), (tokens[:0], r"shape \(0, 256\)"),
                         (tokens.float(), "torch.float32"), (tokens[:, :10], "256 tokens per image"),
                         (tokens + 5000, r"token ids in 0..1023"), (tokens - 5000, r"token ids in 0..1023")]:
        with pytest.raises(ValueError, match=message):
            llamagen.decode(bad)


def test_mar_decode_takes_latents_of_its_shape():
    mar = vargen.load("cifar10-mar")
    with pytest.raises(ValueError, match="a float tensor"):
        mar.decode(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[images, 64, 4\] latents"):
        mar.decode(torch.zeros(1, 64, 3))


def test_measure_names_a_data_file_that_is_not_an_archive(tmp_path, capsys):
    data = tmp_path / "data.tar.gz"
    data.write_text("not a tarball")
    one_line_error(capsys, ["measure", "psnr", "--tokenizer", "cifar10-vq", "--data", str(data)],
                   "not a tar archive")
    assert not tarfile.is_tarfile(data)


# -- misleading or multi-line messages -------------------------------------------------------------------------------

def test_a_folder_given_as_a_checkpoint_is_named_as_a_folder(tmp_path):
    from vargen.models.checkpoint import read_state_dict

    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_state_dict(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        vargen.zoo.fetch({}, tmp_path)


def test_a_checkpoint_of_another_model_is_one_line(tmp_path):
    for name in ("cifar10-llamagen", "cifar10-vq", "cifar10-llamagen-head"):
        shutil.copytree(vargen.zoo.ZOO_DIR / name, tmp_path / name)
    shutil.copy(tmp_path / "cifar10-vq" / "model.safetensors", tmp_path / "cifar10-llamagen" / "model.safetensors")
    with pytest.raises(ValueError) as err:
        vargen.load(tmp_path / "cifar10-llamagen")
    assert "\n" not in str(err.value) and "missing keys" in str(err.value)


def test_a_device_of_the_wrong_type_is_one_line():
    with pytest.raises(ValueError) as err:
        vargen.load("cifar10-llamagen", device=None)
    assert "\n" not in str(err.value) and "unknown device None (a NoneType, not a device name)" in str(err.value)


def test_a_scene_that_is_not_a_seed_is_named_as_a_scene():
    cosmos = vargen.load("bouncing-cosmos")
    with pytest.raises(ValueError, match="scene seeds .* got 'a'"):
        cosmos.generate(["a"], sampler="ar")


# -- a run that cannot end -------------------------------------------------------------------------------------------

def test_a_run_too_large_to_list_is_refused(tmp_path, capsys):
    one_line_error(capsys, ["generate", "--class-id", "0", "--per-class", "99999999999", "--out", str(tmp_path / "o")],
                   "--per-class 99999999999 x 1 conditions is more than 1000000 images")


def test_train_refuses_a_file_as_its_run_folder(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("")
    one_line_error(capsys, ["train", "vq", "--data", str(tmp_path), "--out", str(out)], "exists and is not a folder")
