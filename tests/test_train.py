"""The training module on tiny runs, and the shipped demo checkpoints."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vargen import zoo
from vargen.train.gpt import GPTTrainArgs, train_gpt
from vargen.train.vq import VQTrainArgs, train_vq

TINY_VQ = {"codebook_size": 32, "codebook_embed_dim": 4, "encoder_ch_mult": [1, 2], "decoder_ch_mult": [1, 2],
           "z_channels": 32, "ch": 32, "num_res_blocks": 1}
TINY_GPT = {"dim": 32, "n_layer": 2, "n_head": 2, "multiple_of": 16, "token_dropout_p": 0.0,
            "resid_dropout_p": 0.0, "ffn_dropout_p": 0.0}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A folder of ``train/<class>/*.jpg``: two classes of smooth coloured 16x16 images."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for c, base in enumerate(([200, 40, 40], [40, 40, 200])):
        d = root / "train" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(24):
            img = np.clip(np.array(base) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.jpg")
    return root


def test_vq_and_gpt_training_reduce_the_loss_and_resume(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("VARGEN_CACHE", str(tmp_path / "cache"))
    vq_args = dict(data=str(image_folder), steps=30, batch_size=8, lr=2e-3, warmup=2, image_size=16, save_every=10,
                   config=TINY_VQ)
    vq_path = train_vq(VQTrainArgs(out=str(tmp_path / "vq"), **vq_args))
    assert vq_path.is_file() and json.loads((tmp_path / "vq" / "config.json").read_text())["config"]["ch"] == 32

    vq_full = torch.load(tmp_path / "vq" / "last.pt", weights_only=True)["model"]
    vq_half = VQTrainArgs(out=str(tmp_path / "vq2"), stop_at=15, **vq_args)
    train_vq(vq_half)  # stop half way, then resume to the end: same weights as the straight run
    train_vq(VQTrainArgs(out=str(tmp_path / "vq2"), **vq_args))
    resumed = torch.load(tmp_path / "vq2" / "last.pt", weights_only=True)["model"]
    for k in vq_full:
        torch.testing.assert_close(resumed[k], vq_full[k])

    gpt_args = GPTTrainArgs(data=str(image_folder), vq=str(tmp_path / "vq"), out=str(tmp_path / "gpt"), steps=40,
                            batch_size=8, lr=3e-3, warmup=2, save_every=20, image_size=16, config=TINY_GPT)
    train_gpt(gpt_args)
    from vargen.models.llamagen import GPT
    from vargen.tokenizers.llamagen_vq import VQModel

    model = GPT.from_folder(tmp_path / "gpt")
    vq = VQModel.from_folder(tmp_path / "vq")
    from vargen.train.gpt import nll_bits_per_token, tokenize_split

    tokens, labels = tokenize_split(vq, str(image_folder), "train", flips=False, image_size=16)
    trained = nll_bits_per_token(model, tokens, labels)
    model.init_weights()  # zero head: uniform prediction, log2(V) bits
    assert trained < nll_bits_per_token(model, tokens, labels) - 1.0


@pytest.mark.parametrize("name", zoo.shipped_names())
def test_shipped_checkpoints_load_strictly_with_their_config(name):
    from vargen.models.checkpoint import read_state_dict

    folder = zoo.shipped_path(name)
    if not (folder / "config.json").is_file():  # a pipeline of other entries: every member must be shipped
        spec = json.loads((folder / "pipeline.json").read_text())
        for key in ("model", "tokenizer", "draft", "refiner"):
            if spec.get(key):
                assert spec[key] in zoo.shipped_names(), f"{name}: {key} {spec[key]!r} is not in the zoo"
        return
    assert (folder / "TRAINING.md").is_file(), f"{name}: the training command must be recorded"
    state = read_state_dict(folder / "model.safetensors")
    assert all(v.dtype in (torch.float16, torch.int64, torch.int32) for v in state.values())
    assert (folder / "model.safetensors").stat().st_size <= 15 * 2**20
    kind = json.loads((folder / "config.json").read_text()).get("type")
    if kind == "llamagen_gpt":
        from vargen.models.llamagen import GPT

        GPT.from_folder(folder)
    elif kind in ("llamagen_vq", "var_vqvae", "kl_vae"):
        from vargen.train.vq import load_tokenizer_folder

        load_tokenizer_folder(folder)
    elif kind == "var":
        from vargen.models.var import VAR

        VAR.from_folder(folder)
    elif kind == "mar":
        from vargen.models.mar import MAR

        MAR.from_folder(folder)


@pytest.mark.parametrize("name, sampler", [("cifar10-var", "code"), ("cifar10-mar", "cspd")])
def test_var_and_mar_demo_pipelines_generate_offline(name, sampler):
    import vargen

    pipe = vargen.load(name)
    out = pipe.generate(["cat", 1], sampler=sampler, seed=0)
    assert len(out.images) == 2 and out.images[0].size == (32, 32)
    assert out.stats.draft_forward_passes > 0 or (out.stats.code is not None and out.stats.code.refiner_forward_passes > 0)


def test_demo_pipeline_generates_offline():
    if "cifar10-llamagen" not in zoo.shipped_names():
        pytest.skip("cifar10-llamagen not shipped yet")
    import vargen

    pipe = vargen.load("cifar10-llamagen")
    out = pipe.generate(["cat", 1], sampler="sjd", seed=0, window=8)
    assert len(out.images) == 2 and out.images[0].size == (32, 32)
    assert out.stats.forward_passes < pipe.model.num_tokens
