"""VAR: multi-scale VQVAE, VAR transformer and the next-scale sampler against the official golden fixtures.

Every model is built from the constructor arguments recorded in the fixture manifest, so a held-out
fixture set with another configuration runs through the same tests.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from conftest import fixture_dir

from vargen.models.var import VAR, VARConfig, load_state_dict_file, load_strict
from vargen.samplers import get_sampler
from vargen.samplers.base import SamplingConfig
from vargen.samplers.next_scale import VARSampler
from vargen.tokenizers.msvq import MultiScaleVQVAE, VQVAEConfig

ATOL = 1e-4


def _f32(sd):
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


_CACHE: dict = {}


def load_var_fixtures():
    """Manifest, tensors and the official-weight models (VQVAE, VAR, refiner), built once per session."""
    if "fx" in _CACHE:
        return _CACHE["fx"]
    from safetensors.torch import load_file

    root = fixture_dir("var")
    torch.set_num_threads(1)
    m = json.loads((root / "manifest.json").read_text())
    T = _f32(load_file(str(root / "tensors.safetensors")))
    code = _f32(load_file(str(root / "code.safetensors")))
    vae = MultiScaleVQVAE(VQVAEConfig(**m["vqvae_constructor_kwargs"]))
    load_strict(vae, _f32(load_file(str(root / "vqvae.safetensors"))))
    extra = dict(vocab_size=vae.vocab_size, Cvae=vae.Cvae)
    var = VAR(VARConfig(**m["var_constructor_kwargs"], **extra), vae=vae, init=False).eval()
    load_strict(var, load_file(str(root / "var.safetensors")))
    refiner = VAR(VARConfig(**m["refiner_constructor_kwargs"], **extra), init=False).eval()
    load_strict(refiner, load_file(str(root / "var_refiner.safetensors")))
    _CACHE["fx"] = SimpleNamespace(root=root, m=m, T=T, code=code, vae=vae, var=var, refiner=refiner)
    return _CACHE["fx"]


@pytest.fixture(scope="module")
def fx():
    return load_var_fixtures()


def cfg_scale(official_cfg: float) -> float:
    """Upstream's ``cfg`` is the extra weight: (1+cfg) cond - cfg uncond."""
    return 1.0 + official_cfg


def split_scales(t_BL, patch_nums):
    return list(t_BL.split([p * p for p in patch_nums], dim=1))


# ------------------------------------------------------------------------------------------------
# Multi-scale VQVAE
# ------------------------------------------------------------------------------------------------


def test_vqvae_indices_latents_reconstruction(fx):
    T, vae = fx.T, fx.vae
    img = T["img_B3HW"]
    with torch.no_grad():
        assert (vae.encode_latent(img) - T["enc_f_BChw"]).abs().max() < ATOL
        idx = vae.img_to_idx(img)
        gt = split_scales(T["gt_idx_BL"], vae.patch_nums)
        assert len(idx) == len(gt)
        for k, (a, b) in enumerate(zip(idx, gt)):
            assert torch.equal(a, b), f"indices differ at scale {k}"
        fhat = torch.stack(vae.img_to_fhat(img))
        assert (fhat - T["fhat_per_scale_KBChw"]).abs().max() < ATOL
        assert (vae.idx_to_var_input(gt) - T["x_BLCv_wo_first_l"]).abs().max() < ATOL
        assert (vae.idx_to_img(gt) - T["recon_B3HW"]).abs().max() < ATOL
        assert (vae.idx_to_img(T["gt_idx_BL"]) - T["recon_B3HW"]).abs().max() < ATOL  # concatenated form
        assert (vae.img_to_reconstructed_img(img) - T["recon_B3HW"]).abs().max() < ATOL


def test_vqvae_phi_schedule(fx):
    assert fx.vae.quantize.phi_index == fx.m["phi_index_per_scale"]
    q = VQVAEConfig(v_patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), ch=32)
    with torch.device("meta"):
        assert MultiScaleVQVAE(q).quantize.phi_index == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]  # research note §1.1


def test_vqvae_bad_input(fx):
    vae = fx.vae
    with pytest.raises(ValueError, match="expected images"):
        vae.img_to_idx(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="scales of indices"):
        vae.idx_to_img([torch.zeros(1, 1, dtype=torch.long)])
    bad = split_scales(fx.T["gt_idx_BL"], vae.patch_nums)
    bad[-1] = bad[-1].clone().fill_(vae.vocab_size)
    with pytest.raises(ValueError, match="out of range"):
        vae.idx_to_img(bad)


def _layout(module) -> dict:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_full_size_vqvae_layout_matches_official(fx):
    ref = json.loads((fx.root / "keys_full.json").read_text())["vae_ch160v4096z32"]
    with torch.device("meta"):
        vae = MultiScaleVQVAE(VQVAEConfig(**ref["constructor_kwargs"]))
    assert _layout(vae) == {k: shape for k, shape, *_ in ref["keys"]}
    assert sum(p.numel() for p in vae.parameters()) == ref["num_parameters"]


@pytest.mark.parametrize("name", ["d16", "d20", "d24", "d30", "d36"])
def test_var_presets_match_official_layout(fx, name):
    ref = json.loads((fx.root / "keys_full.json").read_text())[f"var_{name}"]
    with torch.device("meta"):
        model = VAR(VARConfig.preset(name), init=False)
        official = VAR(VARConfig(**ref["constructor_kwargs"]), init=False)
    assert _layout(model) == _layout(official)
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]
    assert len(model.state_dict()) == ref["num_state_dict_keys"]
    if "keys" in ref:
        assert _layout(model) == {k: shape for k, shape, *_ in ref["keys"]}


# ------------------------------------------------------------------------------------------------
# VAR transformer
# ------------------------------------------------------------------------------------------------


def test_teacher_forcing_logits(fx):
    with torch.no_grad():
        logits = fx.var(fx.T["label_B"], fx.T["x_BLCv_wo_first_l"])
    assert logits.shape == fx.T["tf_logits_BLV"].shape
    assert (logits - fx.T["tf_logits_BLV"]).abs().max() < ATOL


def test_block_causal_mask(fx):
    x = fx.T["x_BLCv_wo_first_l"].clone()
    last = fx.var.begin_ends[-1][0]
    with torch.no_grad():
        a = fx.var(fx.T["label_B"], x)
        x[:, last - fx.var.first_l:] += 1.0
        b = fx.var(fx.T["label_B"], x)
    assert torch.equal(a[:, :last], b[:, :last])
    assert (a[:, last:] - b[:, last:]).abs().max() > 1e-2


def _cached_logits(model, labels, x_BLCv, chunks):
    """Logits from cached passes over the given scale ranges."""
    cond = model.condition(labels)
    cache = model.new_cache(labels.shape[0])
    out = []
    for first, last in chunks:
        a, b = model.begin_ends[first][0], model.begin_ends[last - 1][1]
        inputs = x_BLCv[:, max(a, model.first_l) - model.first_l: b - model.first_l] if b > model.first_l else None
        out.append(model.forward_scales(cond, inputs if inputs is not None and inputs.shape[1] else None, cache, first, last, logits_from=first))
    return torch.cat(out, dim=1)


def test_cached_logits_equal_teacher_forcing(fx):
    var, T = fx.var, fx.T
    K = len(var.patch_nums)
    with torch.no_grad():
        tf = var(T["label_B"], T["x_BLCv_wo_first_l"])
        per_scale = _cached_logits(var, T["label_B"], T["x_BLCv_wo_first_l"], [(k, k + 1) for k in range(K)])
        prefill_then_step = _cached_logits(var, T["label_B"], T["x_BLCv_wo_first_l"], [(0, K - 1), (K - 1, K)])
    assert (per_scale - tf).abs().max() < ATOL
    assert (prefill_then_step - tf).abs().max() < ATOL


def test_guided_logits_of_greedy_run(fx):
    """Teacher forcing on the greedy tokens, cond and null rows mixed with the linear ramp."""
    var, vae, T, call = fx.var, fx.vae, fx.T, fx.m["greedy_call"]
    K = len(var.patch_nums)
    x = vae.idx_to_var_input(split_scales(T["greedy_idx_BL"], var.patch_nums))
    labels = T["infer_label_B"]
    with torch.no_grad():
        cond = var(labels, x)
        uncond = var(torch.full_like(labels, var.num_classes), x)
    t = torch.cat([torch.full((e - b,), call["cfg"] * k / (K - 1)) for k, (b, e) in enumerate(var.begin_ends)]).view(1, -1, 1)
    assert ((1 + t) * cond - t * uncond - T["greedy_cfg_logits_BLV"]).abs().max() < ATOL


def test_label_dropout_only_in_training(fx):
    var = VAR(fx.var.config, init=False)
    var.load_state_dict(fx.var.state_dict())
    object.__setattr__(var, "config", VARConfig(**{**fx.var.config.__dict__, "cond_drop_rate": 1.0}))
    labels, x = fx.T["infer_label_B"], fx.T["x_BLCv_wo_first_l"]
    null = torch.full_like(labels, var.num_classes)
    with torch.no_grad():
        var.eval()
        assert torch.equal(var(labels, x), fx.var(labels, x))
        var.train()
        assert torch.equal(var(labels, x), fx.var(null, x))


def test_no_global_init_patching():
    before = (nn.Linear.reset_parameters, nn.LayerNorm.reset_parameters, nn.Embedding.reset_parameters, nn.Conv2d.reset_parameters)
    VAR(VARConfig(num_classes=3, depth=1, embed_dim=16, num_heads=1, patch_nums=(1, 2), vocab_size=8, Cvae=4))
    assert (nn.Linear.reset_parameters, nn.LayerNorm.reset_parameters, nn.Embedding.reset_parameters, nn.Conv2d.reset_parameters) == before
    fresh = nn.Linear(4, 4)
    assert fresh.weight.abs().sum() > 0


def test_kv_cache_in_compute_dtype(fx):
    var = VAR(fx.var.config, init=False)
    var.load_state_dict(fx.var.state_dict())
    var.attach_vae(fx.vae)
    assert var.new_cache(2).k.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert var.new_cache(2).k.dtype == torch.bfloat16
    var.to(torch.bfloat16)
    cache = var.new_cache(2)
    assert cache.k.dtype == cache.v.dtype == torch.bfloat16
    assert cache.k.shape == (var.depth, 2, var.num_heads, var.L, var.C // var.num_heads)
    out = VARSampler().sample(var, fx.T["infer_label_B"], SamplingConfig(temperature=0.0, cfg_scale=2.0), torch.Generator().manual_seed(0))
    assert out.tokens.shape == (2, var.L)


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


def test_checkpoint_formats_and_config_inference(fx, tmp_path):
    from safetensors.torch import save_file

    sd = fx.var.state_dict()
    torch.save({"epoch": 3, "trainer": {"var_wo_ddp": {"module." + k: v for k, v in sd.items()}}}, tmp_path / "wrapped.pth")
    torch.save(sd, tmp_path / "plain.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    labels, x = fx.T["label_B"], fx.T["x_BLCv_wo_first_l"]
    for name in ("wrapped.pth", "plain.pt", "w.safetensors"):
        model = VAR.from_checkpoint(tmp_path / name)
        assert model.config.depth == fx.var.config.depth and model.patch_nums == fx.var.patch_nums
        with torch.no_grad():
            assert (model(labels, x) - fx.T["tf_logits_BLV"]).abs().max() < ATOL
    model = VAR.from_checkpoint(tmp_path / "plain.pt", config=fx.var.config, vae=fx.vae)
    assert model.quantizer is fx.vae.quantize


def test_checkpoint_errors_name_keys(fx, tmp_path):
    sd = dict(fx.var.state_dict())
    sd.pop("head.bias")
    sd["extra.weight"] = torch.zeros(1)
    model = VAR(fx.var.config, init=False)
    with pytest.raises(ValueError, match=r"(?s)missing key.*head\.bias.*unexpected key.*extra\.weight"):
        load_strict(model, sd)
    with pytest.raises(FileNotFoundError, match="var_d16.pth"):
        load_state_dict_file(tmp_path / "var_d16.pth")
    wrong = VAR(VARConfig(**{**fx.var.config.__dict__, "embed_dim": 2 * fx.var.C}), init=False)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_strict(wrong, fx.var.state_dict())


def test_config_presets_and_official_kwargs():
    assert VARConfig.preset("var_d30").embed_dim == 1920
    assert VARConfig.preset("d36").shared_aln
    with pytest.raises(ValueError, match="unknown VAR preset"):
        VARConfig.preset("d17")
    with pytest.raises(ValueError, match="unknown VARConfig fields"):
        VARConfig.from_kwargs(depth=2, bogus=1)


# ------------------------------------------------------------------------------------------------
# Next-scale sampler
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("greedy", ["top_k=1", "temperature=0"])
def test_greedy_sampling_matches_fixture(fx, greedy):
    call = fx.m["greedy_call"]
    config = SamplingConfig(top_k=1, top_p=1.0, cfg_scale=cfg_scale(call["cfg"]))
    if greedy == "temperature=0":
        config = SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, cfg_scale=cfg_scale(call["cfg"]))
    out = VARSampler().sample(fx.var, fx.T["infer_label_B"], config, torch.Generator().manual_seed(call["g_seed"]))
    f_hat = out.latents
    assert torch.equal(out.tokens, fx.T["greedy_idx_BL"])
    assert (f_hat - fx.T["greedy_fhat_BChw"]).abs().max() < ATOL


def test_seeded_sampling_matches_fixture(fx):
    """Upstream draws with torch.multinomial on one CPU generator seeded with g_seed: RNG-identical here."""
    call = fx.m["sample_call"]
    config = SamplingConfig(top_k=call["top_k"], top_p=call["top_p"] or 1.0, cfg_scale=cfg_scale(call["cfg"]))
    out = VARSampler().sample(fx.var, fx.T["infer_label_B"], config, torch.Generator().manual_seed(call["g_seed"]))
    f_hat = out.latents
    assert torch.equal(out.tokens, fx.T["sample_idx_BL"])
    assert (f_hat - fx.T["sample_fhat_BChw"]).abs().max() < ATOL
    # the decoded image is the decoder applied to the latent
    assert (fx.vae.idx_to_img(out.tokens) - fx.vae.fhat_to_img(f_hat)).abs().max() < ATOL


def test_sampler_stats_and_registry(fx):
    sampler = get_sampler("var")
    assert isinstance(sampler, VARSampler)
    out = sampler.sample(fx.var, [1, 2, 3], SamplingConfig(top_k=8), torch.Generator().manual_seed(0))
    K, L = len(fx.var.patch_nums), fx.var.L
    s = out.stats
    assert out.tokens.shape == (3, L) and s.forward_passes == K
    assert s.tokens.tolist() == [L] * 3 and s.tokens_per_forward == L / K
    assert [int(a[0]) for a in s.accepted] == [p * p for p in fx.var.patch_nums]
    assert s.token_step[0].tolist() == fx.var.lvl_1L[0].tolist()
    assert s.seconds > 0 and s.seconds_per_image > 0


def test_same_seed_same_output_and_per_row_generators(fx):
    config = SamplingConfig(top_k=16, top_p=0.95)
    a = VARSampler().sample(fx.var, [3, 7], config, torch.Generator().manual_seed(11)).tokens
    b = VARSampler().sample(fx.var, [3, 7], config, torch.Generator().manual_seed(11)).tokens
    c = VARSampler().sample(fx.var, [3, 7], config, torch.Generator().manual_seed(12)).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    pair = VARSampler().sample(fx.var, [3, 7], config, gens(5, 6)).tokens
    alone = VARSampler().sample(fx.var, [7], config, gens(6)).tokens
    assert torch.equal(pair[1], alone[0])  # a row's draws never depend on the other rows


def test_per_scale_temperature_and_more_smooth(fx):
    K = len(fx.var.patch_nums)
    config = SamplingConfig(top_k=8, top_p=0.9)
    greedy_all = VARSampler(temperatures=[0.0] * K).sample(fx.var, [3, 7], config, torch.Generator().manual_seed(0)).tokens
    greedy_ref = VARSampler().sample(fx.var, [3, 7], SamplingConfig(temperature=0.0, cfg_scale=2.5), torch.Generator().manual_seed(0)).tokens
    assert torch.equal(greedy_all, greedy_ref)
    hard = VARSampler().sample(fx.var, [3, 7], config, torch.Generator().manual_seed(1))
    f_hard = hard.latents
    soft = VARSampler(more_smooth=True).sample(fx.var, [3, 7], config, torch.Generator().manual_seed(1))
    f_soft = soft.latents
    soft2 = VARSampler(more_smooth=True).sample(fx.var, [3, 7], config, torch.Generator().manual_seed(1))
    f_soft2 = soft2.latents
    assert torch.equal(f_soft, f_soft2)
    assert (f_soft - fx.vae.idx_to_fhat(split_scales(soft.tokens, fx.var.patch_nums))).abs().max() > 1e-3


def test_sampler_rejects_bad_input_before_work(fx):
    s = VARSampler()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=rf"class id\(s\) \[{fx.var.num_classes + 1}\] out of range"):
        s.sample(fx.var, [1, fx.var.num_classes + 1], SamplingConfig(), g)
    with pytest.raises(ValueError, match=r"class id\(s\) \[-1\]"):
        s.sample(fx.var, [-1], SamplingConfig(), g)
    with pytest.raises(ValueError, match="top_k"):
        s.sample(fx.var, [1], SamplingConfig(top_k=fx.var.vocab_size + 1), g)
    with pytest.raises(ValueError, match="temperatures has"):
        VARSampler(temperatures=[1.0]).sample(fx.var, [1], SamplingConfig(), g)
    with pytest.raises(ValueError, match="generators for a batch"):
        s.sample(fx.var, [1, 2], SamplingConfig(), [g])
    bare = VAR(fx.var.config, init=False)
    with pytest.raises(ValueError, match="no VQVAE attached"):
        s.sample(bare, [1], SamplingConfig(), g)
    other = VQVAEConfig(**{**fx.vae.config.__dict__, "v_patch_nums": (1, 2, 4)})
    with torch.device("meta"):
        mismatched = MultiScaleVQVAE(other)
    with pytest.raises(ValueError, match="patch_nums"):
        bare.attach_vae(mismatched)
    state = g.get_state()
    with pytest.raises(ValueError):
        s.sample(fx.var, [99], SamplingConfig(), g)
    assert torch.equal(g.get_state(), state)  # nothing was drawn


# ------------------------------------------------------------------------------------------------
# Training helpers (tiny, seconds)
# ------------------------------------------------------------------------------------------------


def test_var_training_reduces_loss(fx):
    from vargen.train.var import train_var, var_inputs, var_loss

    torch.manual_seed(0)
    model = VAR(VARConfig(**{**fx.var.config.__dict__, "cond_drop_rate": 0.1}), vae=fx.vae)
    images, labels = fx.T["img_B3HW"], fx.T["infer_label_B"]
    targets, x = var_inputs(fx.vae, images)
    model.eval()
    with torch.no_grad():
        before = float(var_loss(model, labels, targets, x))
    losses = train_var(model, fx.vae, [(images, labels)], steps=30, lr=3e-3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = float(var_loss(model, labels, targets, x))
    assert len(losses) == 30 and after < 0.7 * before


def test_vqvae_training_step_reduces_loss(fx):
    from vargen.train.var import train_vqvae, vqvae_loss

    vae = MultiScaleVQVAE(fx.vae.config)
    vae.load_state_dict(fx.vae.state_dict())
    images = fx.T["img_B3HW"]
    with torch.no_grad():
        before = float(vqvae_loss(vae, images)[0])
    train_vqvae(vae, [(images, None)], steps=8, lr=1e-3)
    with torch.no_grad():
        after = float(vqvae_loss(vae, images)[0])
    assert after < before
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_autocast_sampling(fx):
    var = VAR(fx.var.config, init=False)
    var.load_state_dict(fx.var.state_dict())
    vae = MultiScaleVQVAE(fx.vae.config)
    vae.load_state_dict(fx.vae.state_dict())
    var.cuda().attach_vae(vae.cuda())
    call = fx.m["greedy_call"]
    config = SamplingConfig(temperature=0.0, top_p=1.0, cfg_scale=cfg_scale(call["cfg"]))
    with torch.autocast("cuda", dtype=torch.float16):
        assert var.new_cache(2).k.dtype == torch.float16  # K/V cached in the compute dtype
        out = VARSampler().sample(var, fx.T["infer_label_B"].cuda(), config, torch.Generator("cuda").manual_seed(0))
    agree = (out.tokens.cpu() == fx.T["greedy_idx_BL"]).float().mean()
    assert agree > 0.8 and out.stats.peak_memory_bytes > 0
