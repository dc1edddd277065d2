"""Resumable training (issue 38): an interrupted run (stop_at, SIGTERM) resumed from OUT/last.pt ends with the weights
of the uninterrupted run; wall-clock checkpoints; the default run folder; starting a tokenizer from another one."""
import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from vargen import zoo
from vargen.train import common
from vargen.train.mar import MARRunArgs, run_mar_training, store_scale_factor
from vargen.train.var import VARRunArgs, build_vqvae, run_var_training
from vargen.train.vq import evaluate_psnr, load_tokenizer_folder

TINY_MSVQ = {"vocab_size": 16, "z_channels": 8, "ch": 32, "ch_mult": [1, 2, 2], "v_patch_nums": [1, 2, 4]}
TINY_KL = {"embed_dim": 4, "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "encoder_attn_resolutions": [4]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(0)
    for c, base in enumerate(([200, 40, 40], [40, 40, 200])):
        d = root / "data" / "train" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(12):
            img = np.clip(np.array(base) + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.jpg")
    mp = pytest.MonkeyPatch()
    mp.setenv("VARGEN_CACHE", str(root / "cache"))
    yield root
    mp.undo()


def _final(folder):
    return torch.load(folder / "last.pt", weights_only=True)


def _assert_same_run(a, b):
    assert a["step"] == b["step"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    assert torch.equal(a["rng"], b["rng"]) and torch.equal(a["torch_rng"], b["torch_rng"])


@pytest.mark.parametrize("kind", ["vqvae", "kl-vae"])
def test_interrupted_tokenizer_run_resumes_to_the_straight_run(data, tmp_path, kind):
    """Stopped after 3 of 8 steps, then run again: the same weights, data position and RNG as one run of 8 steps
    (the VQVAE's dead-code restarts and the KL VAE's posterior samples draw from the checkpointed generators)."""
    def run(out, **kw):
        args = dict(data=str(data / "data"), out=str(out), steps=8, batch_size=4, lr=2e-3, warmup=1, image_size=16,
                    save_every=1000, **kw)
        if kind == "vqvae":
            return run_var_training(VARRunArgs(kind="vqvae", config=TINY_MSVQ, restart_every=2, **args))
        return run_mar_training(MARRunArgs(kind="kl-vae", config=TINY_KL, **args))

    run(tmp_path / "straight")
    assert run(tmp_path / "split", stop_at=3).name == "last.pt"
    assert _final(tmp_path / "split")["step"] == 3
    # an unfinished run reads as a zoo folder (scripts/zoo_runs.sh eval measures it; a good one can be committed)
    snap = common.snapshot_run(tmp_path / "split", tmp_path / "snap")
    assert json.loads((snap / "config.json").read_text())["step"] == 3
    tokenizer = load_tokenizer_folder(snap)
    for k, v in tokenizer.state_dict().items():
        torch.testing.assert_close(v, _final(tmp_path / "split")["model"][k].half().float())
    assert evaluate_psnr(tokenizer, str(data / "data"), "train", image_size=16)["psnr_db"] > 5
    if kind == "kl-vae":  # the token scale MAR needs, measured as at the end of a run
        scale = store_scale_factor(snap, str(data / "data"), images=8, image_size=16)
        assert json.loads((snap / "config.json").read_text())["config"]["scale_factor"] == round(scale, 6) > 0
    assert run(tmp_path / "split").name == "model.safetensors"
    _assert_same_run(_final(tmp_path / "straight"), _final(tmp_path / "split"))


def _toy(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=gen)

    def step_fn(step):
        idx = torch.randint(0, 16, (4,), generator=gen)
        return model(x[idx]).pow(2).mean() + 0 * torch.rand(()), 4, {}  # torch.rand: the global RNG moves too

    return model, opt, gen, step_fn


def test_checkpoints_by_wall_clock_and_on_sigterm(tmp_path):
    saves = []
    model, opt, gen, step_fn = _toy(tmp_path)
    common.run_steps(tmp_path / "a", model, opt, gen, step_fn, steps=5, lr=1e-2, save_every=1000, save_minutes=0,
                     on_save=lambda step, loss: saves.append(step), progress=False)
    assert saves == [1, 2, 3, 4, 5]  # save_minutes=0: every step, whatever save_every says
    saves.clear()
    model, opt, gen, step_fn = _toy(tmp_path)
    common.run_steps(tmp_path / "b", model, opt, gen, step_fn, steps=5, lr=1e-2, save_every=1000,
                     on_save=lambda step, loss: saves.append(step), progress=False)
    assert saves == [5]  # the default (10 minutes) is not reached: only the end

    straight = _toy(tmp_path)
    common.run_steps(tmp_path / "c", *straight, steps=6, lr=1e-2, save_every=1000, progress=False)
    model, opt, gen, step_fn = _toy(tmp_path)
    before = signal.getsignal(signal.SIGTERM)

    def killed_at_2(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` / scripts/zoo_runs.sh stop
        return step_fn(step)

    done, _ = common.run_steps(tmp_path / "d", model, opt, gen, killed_at_2, steps=6, lr=1e-2, save_every=1000,
                               progress=False)
    assert not done and _final(tmp_path / "d")["step"] == 3  # finished the step, checkpointed, stopped
    assert signal.getsignal(signal.SIGTERM) is before
    model, opt, gen, step_fn = _toy(tmp_path)
    assert common.run_steps(tmp_path / "d", model, opt, gen, step_fn, steps=6, lr=1e-2, progress=False)[0]
    _assert_same_run(_final(tmp_path / "c"), _final(tmp_path / "d"))


def test_default_run_folder_is_named_by_the_flags(monkeypatch, tmp_path):
    from vargen.train.cli import default_out

    monkeypatch.setenv("VARGEN_RUNS", str(tmp_path))
    kw = {"data": "d.tar.gz", "steps": 100, "lr": 3e-4, "config": {"vocab_size": 1024}, "out": None}
    folder = default_out("var-vqvae", kw)
    assert folder.parent == tmp_path and folder.name.startswith("var-vqvae-")
    assert default_out("var-vqvae", {**kw, "stop_at": 50, "threads": 1, "save_every": 10}) == folder
    assert default_out("var-vqvae", {**kw, "steps": 200}) != folder
    assert default_out("var-vqvae", {**kw, "config": {"vocab_size": 512}}) != folder
    monkeypatch.delenv("VARGEN_RUNS")
    assert common.runs_root() == common.Path.home() / ".cache" / "vargen-runs"


def test_train_cli_takes_no_out_and_an_init_for_tokenizers():
    import argparse

    from vargen.train.cli import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["train", "var-vqvae", "--data", "x", "--init", "vargen/zoo/cifar10-vq"])
    assert args.out is None and args.init == "vargen/zoo/cifar10-vq"
    assert parser.parse_args(["train", "kl-vae", "--data", "x", "--init", "k"]).init == "k"
    for generator, tokenizer in (("var", "--vqvae"), ("mar", "--vae")):  # a lost run restarts from committed weights
        assert parser.parse_args(["train", generator, "--data", "x", tokenizer, "t", "--init", "g"]).init == "g"


def test_multiscale_vqvae_starts_from_llamagen_vq_and_from_a_smaller_codebook():
    from vargen.models.checkpoint import read_state_dict

    cfg = {"vocab_size": 1024, "z_channels": 16, "ch": 32, "ch_mult": [1, 2, 2], "v_patch_nums": [1, 2, 3, 4, 6, 8]}
    vae, _ = build_vqvae(cfg, str(zoo.shipped_path("cifar10-vq")))
    vq = read_state_dict(zoo.shipped_path("cifar10-vq") / "model.safetensors")
    own = vae.state_dict()
    pairs = {"encoder.conv_in.weight": "encoder.conv_in.weight",
             "encoder.down.1.block.0.nin_shortcut.weight": "encoder.conv_blocks.1.res.0.nin_shortcut.weight",
             "encoder.mid.block_2.conv2.weight": "encoder.mid.2.conv2.weight",
             "decoder.up.0.block.2.conv1.weight": "decoder.conv_blocks.1.res.2.conv1.weight",  # the full-res level
             "decoder.up.1.block.0.conv1.weight": "decoder.conv_blocks.0.res.0.conv1.weight",
             "decoder.conv_out.weight": "decoder.conv_out.weight"}
    for mine, theirs in pairs.items():
        torch.testing.assert_close(own[mine], vq[theirs].float())
    fused = torch.cat([vq[f"encoder.mid.1.{n}.weight"] for n in "qkv"]).float()
    torch.testing.assert_close(own["encoder.mid.attn_1.qkv.weight"], fused)
    assert not torch.equal(own["quantize.embedding.weight"][:, :8], vq["quantize.embedding.weight"].float())

    vae, config = build_vqvae({"vocab_size": 1024}, str(zoo.shipped_path("cifar10-msvq")))
    msvq = read_state_dict(zoo.shipped_path("cifar10-msvq") / "model.safetensors")
    assert config.ch_mult == (1, 2, 2) and config.vocab_size == 1024 and vae.training
    torch.testing.assert_close(vae.quantize.embedding.weight[:512].detach(), msvq["quantize.embedding.weight"].float())
    for k, v in vae.state_dict().items():
        if k not in ("quantize.embedding.weight", "quantize.ema_vocab_hit_SV"):
            torch.testing.assert_close(v, msvq[k].float())


def test_zoo_runs_script_lists_resumable_runs():
    script = (zoo.shipped_path("cifar10-msvq").parents[2] / "scripts" / "zoo_runs.sh").read_text()
    for needle in ("nice -n 19", "--threads 1", "OMP_NUM_THREADS=1", "setsid nohup", "last.pt", "vargen-runs",
                   "snapshot_run"):
        assert needle in script
