"""VAR and MAR demo-zoo training runs on tiny data, their folders, and the pipelines built from them."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vargen
from vargen.models.mar import MAR
from vargen.models.var import VAR
from vargen.tokenizers.kl import KLVAE
from vargen.tokenizers.msvq import MultiScaleVQVAE
from vargen.train.mar import MARRunArgs, run_mar_training
from vargen.train.var import VARRunArgs, _scale_slice, distillation_kl, run_var_training, var_inputs

TINY_MSVQ = {"vocab_size": 16, "z_channels": 8, "ch": 32, "ch_mult": [1, 2, 2], "v_patch_nums": [1, 2, 4]}
TINY_KL = {"embed_dim": 4, "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "encoder_attn_resolutions": [4]}
TINY_MAR = {"encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 2, "decoder_embed_dim": 32,
            "decoder_depth": 1, "decoder_num_heads": 2, "buffer_size": 4, "diffloss_d": 1, "diffloss_w": 32,
            "num_sampling_steps": "10", "attn_dropout": 0.0, "proj_dropout": 0.0}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """Tiny VAR (msvq, drafter, refiner, specialised refiner) and MAR (kl, target, draft) folders."""
    root = tmp_path_factory.mktemp("family")
    rng = np.random.default_rng(0)
    for c, base in enumerate(([200, 40, 40], [40, 40, 200], [40, 200, 40])):
        d = root / "data" / "train" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(16):
            img = np.clip(np.array(base) + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.jpg")
    data = str(root / "data")
    mp = pytest.MonkeyPatch()
    mp.setenv("VARGEN_CACHE", str(root / "cache"))
    common = dict(data=data, batch_size=8, image_size=16, warmup=2, save_every=1000)
    run_var_training(VARRunArgs(kind="vqvae", out=str(root / "msvq"), steps=60, lr=2e-3, config=TINY_MSVQ, **common))
    var = dict(vqvae=str(root / "msvq"), steps=30, lr=3e-3, **common)
    run_var_training(VARRunArgs(kind="var", out=str(root / "drafter"), config={"depth": 2, "embed_dim": 32, "num_heads": 2}, **var))
    run_var_training(VARRunArgs(kind="var", out=str(root / "refiner0"), config={"depth": 1, "embed_dim": 16, "num_heads": 2}, **var))
    run_var_training(VARRunArgs(kind="code-refiner", out=str(root / "refiner"), teacher=str(root / "drafter"),
                                init=str(root / "refiner0"), draft_steps=1, temperature=1.0, **{**var, "steps": 40}))
    run_mar_training(MARRunArgs(kind="kl-vae", out=str(root / "kl"), steps=200, lr=2e-3, config=TINY_KL, **common))
    mar = dict(vae=str(root / "kl"), steps=10, lr=1e-3, ema=0.9, **common)
    run_mar_training(MARRunArgs(kind="mar", out=str(root / "target"), config=TINY_MAR, **mar))
    run_mar_training(MARRunArgs(kind="mar", out=str(root / "draft"), config={**TINY_MAR, "encoder_embed_dim": 16,
                                                                              "decoder_embed_dim": 16}, **mar))
    (root / "var").mkdir()
    (root / "var" / "pipeline.json").write_text(json.dumps({
        "kind": "var", "model": "drafter", "refiner": "refiner", "tokenizer": "msvq",
        "defaults": {"cfg_scale": 2.0, "top_k": 0, "top_p": 1.0}, "sampler_options": {"code": {"draft_steps": 1}},
        "benchmark": ["var", "var:model=refiner", "code:draft_steps=1", "code:draft_steps=2"]}))
    (root / "mar").mkdir()
    (root / "mar" / "pipeline.json").write_text(json.dumps({
        "kind": "mar", "model": "target", "draft": "draft", "tokenizer": "kl", "defaults": {"cfg_scale": 2.0},
        "sampler_options": {"mar": {"num_iter": 4, "clip_x0": 5.0}, "cspd": {"num_iter": 4, "num_draft": 2, "clip_x0": 5.0}}}))
    yield root
    mp.undo()


def test_folders_are_fp16_with_their_config(family):
    for name, kind in (("msvq", "var_vqvae"), ("drafter", "var"), ("refiner", "var"), ("kl", "kl_vae"), ("target", "mar")):
        meta = json.loads((family / name / "config.json").read_text())
        assert meta["type"] == kind
        from safetensors.torch import load_file

        assert all(v.dtype != torch.float32 for v in load_file(family / name / "model.safetensors").values())
    assert json.loads((family / "refiner" / "config.json").read_text())["draft_steps"] == 1
    scale = KLVAE.from_folder(family / "kl").scale_factor
    assert 0 < scale and scale != 0.2325  # measured on the data, not KL-16's constant
    assert MAR.from_folder(family / "target").config.img_size == 16


def test_refiner_specialisation_moves_it_towards_the_drafter_on_late_scales(family):
    from vargen.train.data import load_images, to_model_range

    vae = MultiScaleVQVAE.from_folder(family / "msvq")
    teacher, before, after = (VAR.from_folder(family / n, vae) for n in ("drafter", "refiner0", "refiner"))
    images, labels, _ = load_images(str(family / "data"), "train", 16, cache_dir=family / "cache")
    targets, x = var_inputs(vae, to_model_range(images))
    late = _scale_slice(teacher, 1)

    def kl(model):
        return float(distillation_kl(model(labels, x)[:, late], teacher(labels, x)[:, late]))

    assert kl(after) < kl(before)


def test_var_pipeline_generates_with_every_sampler_and_member(family):
    pipe = vargen.load(family / "var")
    assert pipe.default_sampler == "var" and pipe.benchmark[1] == "var:model=refiner"
    out = {}
    for spec, opts in (("var", {}), ("refiner", {"model": "refiner"}), ("code", {})):
        o = pipe.generate([0, 1, 2], sampler="code" if spec == "code" else "var", seed=3, **opts)
        assert len(o.images) == 3 and o.images[0].size == (16, 16) and o.tokens.shape == (3, 1 + 4 + 16)
        out[spec] = o
    assert out["code"].stats.code.refiner_forward_passes == 1 + 2  # one prefill + scales 1 and 2
    assert torch.equal(out["code"].tokens[:, :1], out["var"].tokens[:, :1])  # same drafter, same seed: scale 0 agrees
    with pytest.raises(ValueError, match="does not apply to a VAR pipeline"):
        pipe.generate([0], sampler="sjd")
    with pytest.raises(ValueError, match="model='draft'"):
        pipe.generate([0], sampler="var", model="draft")
    with pytest.raises(ValueError, match="draft_steps"):
        pipe.generate([0], sampler="code", draft_steps=3)


def test_mar_pipeline_generates_and_per_row_seeds_do_not_depend_on_the_batch(family):
    pipe = vargen.load(family / "mar")
    assert pipe.sampler_options["mar"]["clip_x0"] == pipe.sampler_options["cspd"]["clip_x0"] == 5.0
    o = pipe.generate([0, 1], sampler="cspd", seed=0)
    assert float(o.tokens.abs().max()) <= 5.0 + 1e-4  # the final step returns the (clamped-x0) posterior mean
    assert len(o.images) == 2 and o.tokens.shape == (2, 16, 4) and o.stats.draft_forward_passes > 0
    both = pipe.generate([0, 2], sampler="mar", seed=5, per_row_seeds=True)
    alone = pipe.generate([2], sampler="mar", seed=6, per_row_seeds=True)
    torch.testing.assert_close(both.tokens[1:], alone.tokens)
    assert both.stats.forward_passes == 2 * 4
    draft_only = pipe.generate([0], sampler="mar", seed=0, model="draft")
    assert draft_only.tokens.shape == (1, 16, 4)
    with pytest.raises(ValueError, match="does not apply to a MAR pipeline"):
        pipe.generate([0], sampler="code")
    with pytest.raises(ValueError, match=r"out of range: this model has 3 classes"):
        pipe.generate([7], sampler="mar")


def test_training_kinds_and_missing_inputs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown VAR training kind"):
        run_var_training(VARRunArgs(kind="gpt", data="x", out=str(tmp_path)))
    with pytest.raises(ValueError, match="--vqvae"):
        run_var_training(VARRunArgs(kind="var", data="x", out=str(tmp_path)))
    with pytest.raises(ValueError, match="--vae"):
        run_mar_training(MARRunArgs(kind="mar", data="x", out=str(tmp_path)))


def test_tokenizer_psnr_improves_with_training(family):
    from vargen.tokenizers.kl import KLVAE
    from vargen.tokenizers.msvq import MultiScaleVQVAE, VQVAEConfig
    from vargen.train.vq import evaluate_psnr, load_tokenizer_folder

    data = str(family / "data")
    msvq = evaluate_psnr(load_tokenizer_folder(family / "msvq"), data, "train", image_size=16)
    kl = evaluate_psnr(load_tokenizer_folder(family / "kl"), data, "train", image_size=16)
    torch.manual_seed(0)
    untrained_msvq = MultiScaleVQVAE(VQVAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_MSVQ.items()}))
    untrained_kl = KLVAE(**TINY_KL, resolution=16)
    assert msvq["psnr_db"] > evaluate_psnr(untrained_msvq, data, "train", image_size=16)["psnr_db"] + 2
    assert kl["psnr_db"] > evaluate_psnr(untrained_kl, data, "train", image_size=16)["psnr_db"] + 2
    assert 0 < msvq["codebook_usage"] <= 1 and "codebook_usage" not in kl


def test_report_covers_the_var_and_mar_pipelines_with_their_baselines(family, tmp_path):
    from pathlib import Path

    from vargen.eval import report

    def features(x):  # channel means and stds: a tiny fixed feature map, no downloads
        x = x.float()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)

    result = report.run_report([str(family / "var"), str(family / "mar")], None, num_samples=4,
                               reference=str(family / "data"), features=features, mode="clean",
                               out=tmp_path / "bench.md", work_dir=tmp_path / "work", batch_size=2, latency=False,
                               overrides={}, command="report --test", progress=lambda *_: None)
    rows = {(Path(r["model"]).name, r["sampler"]): r for r in result["rows"]}
    assert set(rows) == {("var", s) for s in ["var", "var:model=refiner", "code:draft_steps=1", "code:draft_steps=2"]} | {
        ("mar", s) for s in report.default_samplers() if s in ("mar", "cspd")}
    assert rows[("var", "var")]["speedup"] == 1.0 and rows[("var", "var")]["fid_vs_baseline"] is None
    assert rows[("var", "code:draft_steps=1")]["fid_vs_baseline"] is not None
    assert rows[("var", "var")]["kv_cache_bytes_per_image"] > rows[("var", "var:model=refiner")]["kv_cache_bytes_per_image"] > 0
    cspd = rows[("mar", "cspd")]
    assert cspd["baseline"] == "mar" and cspd["draft_forward_passes"] > 0 and 0 <= cspd["draft_acceptance_rate"] <= 1
    text = (tmp_path / "bench.md").read_text()
    assert "baseline `var`" in text and "baseline `mar`" in text


def test_sample_script_accepts_pipeline_members_and_rejects_unknown_ones(family, tmp_path, capsys):
    from vargen.eval import sample

    common = ["--model", str(family / "var"), "--num-samples", "3", "--batch-size", "2"]
    assert sample.main(common + ["--sampler", "var:model=refiner", "--out", str(tmp_path / "r")]) == 0
    assert len(list((tmp_path / "r").glob("*.png"))) == 3
    assert sample.main(common + ["--sampler", "var:model=draft", "--out", str(tmp_path / "d")]) == 2
    assert "model='draft'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before any work


def test_mar_fine_tunes_from_a_folder(family, tmp_path):
    """``--init`` (a lost run folder restarts from the committed weights): the folder's config is the default and
    every tensor is copied, so a 0-learning-rate run exports the same weights."""
    from safetensors.torch import load_file

    common = dict(data=str(family / "data"), seed=0, image_size=16, save_every=5, threads=1)
    run_mar_training(MARRunArgs(kind="mar", out=str(tmp_path / "ft"), vae=str(family / "kl"), init=str(family / "target"),
                                steps=2, lr=0.0, warmup=1, ema=0.0, **common))
    before, after = load_file(family / "target" / "model.safetensors"), load_file(tmp_path / "ft" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert MAR.from_folder(tmp_path / "ft").config.encoder_embed_dim == TINY_MAR["encoder_embed_dim"]
