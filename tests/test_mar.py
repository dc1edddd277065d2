"""MAR, its DiffLoss head and KL VAE against the official golden fixtures (shared/fixtures/mar).

Every model is built from the constructor arguments recorded in ``mar_tiny_meta.json``, so a twin
fixture set with another config runs unchanged. Tolerances follow the fixture README: 1e-5 of each
tensor's max-abs for activations and sampler replays, 1e-12 relative for the float64 constants.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import fixture_dir
from vargen.models.checkpoint import load_strict
from vargen.models.mar import MAR, PRESETS, MARConfig, preset, timestep_features
from vargen.samplers import mar as mar_sampler
from vargen.samplers.diffusion_head import denoise, reverse_step
from vargen.samplers.schedulers import IDDPMScheduler
from vargen.samplers import get_sampler
from vargen.samplers.base import SamplingConfig
from vargen.samplers.mar import MARSampler, cfg_scales, masked_after_step
from vargen.tokenizers.kl import LATENT_SCALE, KLVAE

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def assert_close(a, b, tol=TOL, what=""):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    err = rel_err(a, b)
    assert err <= tol, f"{what}: max rel diff {err:.2e} > {tol:.0e}"


@pytest.fixture(scope="module")
def fx():
    from safetensors.torch import load_file

    d = fixture_dir("mar")
    meta = json.loads((d / "mar_tiny_meta.json").read_text())
    model = MAR(MARConfig.from_dict(meta["mar_constructor"])).eval()
    load_strict(model, load_file(str(d / "mar_tiny_state_dict.safetensors")), "MAR")
    return dict(dir=d, meta=meta, model=model, t=load_file(str(d / "mar_tiny_tensors.safetensors")))


# ----------------------------------------------------------------------------------------------
# checkpoints and config
# ----------------------------------------------------------------------------------------------


def test_config_derived_sizes_match_fixture(fx):
    derived, m = fx["meta"]["mar_derived"], fx["model"]
    assert (m.seq_len, m.seq_h, m.token_embed_dim) == (derived["seq_len"], derived["seq_h"], derived["token_embed_dim"])
    assert sum(p.numel() for p in m.parameters()) == derived["n_params"]
    assert m.diffloss.num_sampling_steps == derived["gen_num_timesteps"]
    assert m.diffloss.train_scheduler.num_timesteps == derived["train_num_timesteps"]


def test_strict_loading_names_first_bad_keys(fx):
    from safetensors.torch import load_file

    sd = load_file(str(fx["dir"] / "mar_tiny_state_dict.safetensors"))
    model = MAR(MARConfig.from_dict(fx["meta"]["mar_constructor"]))
    missing = dict(sd)
    missing.pop("diffloss.net.input_proj.weight")
    with pytest.raises(ValueError, match="diffloss.net.input_proj.weight"):
        load_strict(model, missing, "MAR")
    with pytest.raises(ValueError, match="unexpected.*decoder_blocks.9.norm1.weight"):
        load_strict(model, {**sd, "decoder_blocks.9.norm1.weight": torch.zeros(1)}, "MAR")


def test_checkpoint_wrapper_prefers_ema(fx, tmp_path):
    sd = fx["model"].state_dict()
    ema = {k: v + 1.0 for k, v in sd.items()}
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": sd, "model_ema": ema, "epoch": 3}, path)
    cfg = MARConfig.from_dict(fx["meta"]["mar_constructor"])
    m_ema = MAR(cfg).load_checkpoint(str(path))
    m_raw = MAR(cfg).load_checkpoint(str(path), ema=False)
    assert torch.equal(m_ema.fake_latent, ema["fake_latent"])
    assert torch.equal(m_raw.fake_latent, sd["fake_latent"])


def test_presets_match_released_key_layout():
    d = fixture_dir("mar")
    full = json.loads((d / "keys_full.json").read_text())["models"]
    for name in PRESETS:
        info = full[name]
        recorded = {k: v for k, v in info["constructor"].items() if k != "factory"}
        config = preset(name)
        assert {k: getattr(config, k) for k in recorded} == {**recorded, "num_sampling_steps": str(
            recorded["num_sampling_steps"])}, name
        with torch.device("meta"):
            model = MAR(config)
        sd = model.state_dict()
        assert len(sd) == info["n_keys"], name
        if "keys" in info:
            assert {k: list(v.shape) for k, v in sd.items()} == {k: s for k, s in info["keys"]}, name
        assert sum(p.numel() for p in model.parameters()) == info["total_params"], name
        for group, count in info["params_by_group"].items():
            prefix = group.replace("diffloss.", "diffloss.net.")
            assert sum(v.numel() for k, v in sd.items() if k.split(".")[0] == prefix
                       or k.startswith(prefix + ".")) == count, (name, group)
    vae_info = full["kl16_vae"]
    with torch.device("meta"):
        vae = KLVAE(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))
    assert {k: list(v.shape) for k, v in vae.state_dict().items()} == {k: s for k, s in vae_info["keys"]}
    assert sum(p.numel() for p in vae.parameters()) == vae_info["total_params"]


def test_config_rejects_unknown_argument():
    with pytest.raises(ValueError, match="not_an_arg"):
        MARConfig.from_dict({"img_size": 64, "not_an_arg": 1})


# ----------------------------------------------------------------------------------------------
# encoder / decoder
# ----------------------------------------------------------------------------------------------


def test_encoder_decoder_activations(fx):
    m, t = fx["model"], fx["t"]
    labels, tokens, mask = t["inputs/labels"], t["inputs/tokens"], t["inputs/mask"]
    seen = {}
    hooks = [m.encoder_blocks[0].register_forward_pre_hook(lambda mod, a: seen.__setitem__("enc0", a[0])),
             m.decoder_blocks[0].register_forward_pre_hook(lambda mod, a: seen.__setitem__("dec0", a[0]))]
    try:
        with torch.no_grad():
            z = m.condition(tokens, mask, labels)
            enc = m.forward_mae_encoder(tokens, mask, m.class_emb(labels))
    finally:
        for h in hooks:
            h.remove()
    assert_close(m.class_emb(labels).detach(), t["mar/class_embedding"], what="class_embedding")
    assert_close(seen["enc0"], t["mar/encoder_block0_input"], what="encoder_block0_input")
    assert_close(enc, t["mar/encoder_out"], what="encoder_out")
    assert_close(seen["dec0"], t["mar/decoder_block0_input"], what="decoder_block0_input")
    assert_close(z, t["mar/z"], what="z")
    b, pos = mask.nonzero(as_tuple=True)
    assert torch.equal(b, t["mar/mask_index_batch"]) and torch.equal(pos, t["mar/mask_index_pos"])
    assert_close(z[mask.bool()], t["mar/z_masked"], what="z_masked")


def test_condition_with_cfg(fx):
    m, t = fx["model"], fx["t"]
    mask = t["inputs/mask"]
    with torch.no_grad():
        z = m.condition(t["inputs/tokens"], mask, t["inputs/labels"], cfg=True)
    assert_close(z, t["mar/z_cfg"], what="z_cfg")
    assert_close(z[torch.cat([mask, mask]).bool()], t["mar/z_cfg_masked"], what="z_cfg_masked")


def test_condition_rejects_bad_input(fx):
    m, t = fx["model"], fx["t"]
    tokens, mask = t["inputs/tokens"], t["inputs/mask"].clone()
    with pytest.raises(ValueError, match="class id"):
        m.condition(tokens, mask, torch.tensor([0, m.num_classes]))
    mask[0, mask[0].argmin()] = 1.0  # one more masked position in row 0
    with pytest.raises(ValueError, match="same number of masked"):
        m.condition(tokens, mask, t["inputs/labels"])
    with pytest.raises(ValueError, match="tokens must be"):
        m.condition(tokens[:, :, :3], t["inputs/mask"], t["inputs/labels"])


# ----------------------------------------------------------------------------------------------
# DiffLoss head and diffusion
# ----------------------------------------------------------------------------------------------


def test_diffloss_network(fx):
    m, t, meta = fx["model"], fx["t"], fx["meta"]
    net = m.diffloss.net
    with torch.no_grad():
        # float32 cos/sin of arguments up to ~1e3 differ by a few ulps of the argument between torch builds
        assert (timestep_features(t["diffloss/t"]) - t["diffloss/t_freq"]).abs().max() < 1e-4
        assert_close(net.time_embed(t["diffloss/t"]), t["diffloss/t_emb"], what="t_emb")
        assert_close(net(t["diffloss/x_t"], t["diffloss/t"], t["diffloss/c"]), t["diffloss/net_out"], what="net_out")
        x2, t2 = torch.cat([t["diffloss/x_t"]] * 2), torch.cat([t["diffloss/t"]] * 2)
        out = net.forward_with_cfg(x2, t2, t["mar/z_cfg_masked"], meta["cfg_scale"])
    assert_close(out, t["diffloss/net_out_cfg"], what="net_out_cfg")


def test_diffusion_constants(fx):
    t, gen = fx["t"], fx["model"].diffloss.scheduler
    assert torch.equal(gen.timestep_map, t["diffusion/gen_timestep_map"])
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
                 "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"):
        assert_close(getattr(gen, name), t[f"diffusion/gen_{name}"], tol=1e-12, what=name)
    train = fx["model"].diffloss.train_scheduler
    assert_close(train.betas, t["diffusion/train_betas"], tol=1e-12, what="train_betas")
    assert_close(train.alphas_cumprod, t["diffusion/train_alphas_cumprod"], tol=1e-12, what="train_alphas_cumprod")
    released = IDDPMScheduler.create("100")
    assert torch.equal(released.timestep_map, t["diffusion/timestep_map_100"])
    assert_close(released.betas, t["diffusion/gen_betas_100"], tol=1e-12, what="gen_betas_100")


def test_reverse_step(fx):
    m, t, meta = fx["model"], fx["t"], fx["meta"]
    x = t["pmv/x"]
    with torch.no_grad():
        mean, log_var, x0 = reverse_step(m.diffloss, x, torch.full((x.shape[0],), meta["pmv_index"]), t["mar/z_masked"])
    assert_close(mean, t["pmv/mean"], what="mean")
    assert_close(log_var, t["pmv/log_variance"], what="log_variance")
    assert_close(x0, t["pmv/pred_xstart"], what="pred_xstart")


@pytest.mark.parametrize("kind", ["sample_nocfg", "sample_cfg"])
def test_diffloss_sampling_replay(fx, kind):
    m, t, meta = fx["model"], fx["t"], fx["meta"]
    guided = kind == "sample_cfg"
    z = t["mar/z_cfg_masked"] if guided else t["mar/z_masked"]
    cfg = meta["cfg_scale"] if guided else 1.0
    traj = t[f"{kind}/trajectory"]
    # replay of the recorded draws ...
    tr = denoise(m.diffloss, z, meta["temperature"], cfg, noise=t[f"{kind}/init_noise"],
                 step_noise=t[f"{kind}/step_noise"], trace=True, keep_inputs=True)
    assert_close(tr.sample, t[f"{kind}/output"], what="output")
    assert_close(tr.inputs[1:], traj[:-1], what="trajectory")
    # ... and the same draws from a generator seeded like the official torch RNG
    gen = torch.Generator().manual_seed(meta["sampling_seeds"][kind])
    assert_close(denoise(m.diffloss, z, meta["temperature"], cfg, generator=gen), t[f"{kind}/output"], what="seeded")


def test_mask_and_cfg_schedules_match_official():
    meta = json.loads((fixture_dir("mar") / "mar_tiny_meta.json").read_text())
    for sched in meta["mask_schedules"]:
        L, K = sched["seq_len"], sched["num_iter"]
        after = masked_after_step(L, K)
        before = [L] + after[:-1]
        steps = sched["steps"]
        assert [b - a for b, a in zip(before, after)] == [s["n_predicted"] for s in steps]
        assert after[:-1] == [s["mask_len_next"] for s in steps][:-1]
        scales = cfg_scales(L, K, sched["cfg"], sched["cfg_schedule"])
        assert scales == pytest.approx([s["cfg_iter_at_cfg2"] for s in steps], rel=1e-12)


@pytest.mark.parametrize("run", ["e2e_nocfg", "e2e_cfg"])
def test_end_to_end_sampling(fx, run, monkeypatch):
    m, t, meta = fx["model"], fx["t"], fx["meta"]
    e = meta["end_to_end"][run]
    calls = []
    original = denoise

    def recording(head, z, temperature, cfg, **kw):
        out = original(head, z, temperature, cfg, **kw)
        calls.append((z, cfg, out))
        return out

    monkeypatch.setattr(mar_sampler, "denoise", recording)
    config = SamplingConfig(temperature=e["temperature"], cfg_scale=e["cfg"], cfg_schedule=e["cfg_schedule"])
    gen = torch.Generator().manual_seed(e["torch_seed"])
    out = get_sampler("mar", num_iter=e["num_iter"]).sample(m, t["inputs/labels"], config, gen,
                                                             orders=t[f"{run}/orders"])
    assert len(calls) == len(e["steps"])
    for (z, cfg, sampled), step in zip(calls, e["steps"]):
        k = step["step"]
        assert z.shape[0] == step["n_rows"]
        assert cfg == pytest.approx(step["cfg_iter"] if e["cfg"] != 1.0 else 1.0)
        assert_close(z, t[f"{run}/step{k}_z"], what=f"step{k}_z")
        assert_close(sampled, t[f"{run}/step{k}_sampled"], what=f"step{k}_sampled")
        replay = original(m.diffloss, t[f"{run}/step{k}_z"], e["temperature"], cfg, noise=t[f"{run}/step{k}_init_noise"],
                          step_noise=t[f"{run}/step{k}_step_noise"])
        assert_close(replay, t[f"{run}/step{k}_sampled"], what=f"step{k} replay")
    assert_close(m.unpatchify(out.tokens), t[f"{run}/tokens_out"], what="tokens_out")
    assert out.stats.forward_passes == e["num_iter"]
    assert out.stats.token_step.min() >= 0
    assert int(sum(a.sum() for a in out.stats.accepted)) == m.seq_len * t["inputs/labels"].numel()


def test_patchify_roundtrip(fx):
    m = fx["model"]
    x = torch.randn(2, m.config.vae_embed_dim, m.seq_h * m.config.patch_size, m.seq_w * m.config.patch_size)
    assert torch.equal(m.unpatchify(m.patchify(x)), x)


# ----------------------------------------------------------------------------------------------
# sampler behaviour
# ----------------------------------------------------------------------------------------------


def test_sampler_is_seeded_and_rejects_bad_input(fx):
    m = fx["model"]
    labels = torch.tensor([1, 2])
    s = MARSampler(num_iter=3)
    cfg = SamplingConfig(temperature=1.0, cfg_scale=2.0)
    a = s.sample(m, labels, cfg, torch.Generator().manual_seed(0)).tokens
    b = s.sample(m, labels, cfg, torch.Generator().manual_seed(0)).tokens
    c = s.sample(m, labels, cfg, torch.Generator().manual_seed(1)).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_iter"):
            get_sampler("mar", num_iter=bad)
    with pytest.raises(ValueError, match="num_iter"):
        MARSampler(num_iter=m.seq_len + 1).sample(m, labels)
    with pytest.raises(ValueError, match="class id"):
        s.sample(m, torch.tensor([0, m.num_classes]))
    with pytest.raises(ValueError, match="class id"):
        s.sample(m, torch.tensor([-1]))
    with pytest.raises(ValueError, match="conditional"):
        s.sample(m, 2, SamplingConfig(cfg_scale=3.0))
    with pytest.raises(ValueError, match="top_k"):
        s.sample(m, labels, SamplingConfig(top_k=5))
    uncond = s.sample(m, 2, None, torch.Generator().manual_seed(0)).tokens
    assert uncond.shape == (2, m.seq_len, m.token_embed_dim) and torch.isfinite(uncond).all()


# ----------------------------------------------------------------------------------------------
# KL VAE
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_fx():
    from safetensors.torch import load_file

    d = fixture_dir("mar")
    meta = json.loads((d / "mar_tiny_meta.json").read_text())["vae_constructor"]
    vae = KLVAE(**meta["official_args"], **meta["encoder_decoder_overrides"]).eval()
    load_strict(vae, load_file(str(d / "vae_tiny_state_dict.safetensors")), "KLVAE")
    return dict(dir=d, meta=meta, vae=vae, t=load_file(str(d / "vae_tiny_tensors.safetensors")))


def test_vae_moments_and_decode(vae_fx):
    vae, t, meta = vae_fx["vae"], vae_fx["t"], vae_fx["meta"]
    assert meta["latent_scale"] == LATENT_SCALE
    assert sum(p.numel() for p in vae.parameters()) == meta["n_params"]
    with torch.no_grad():
        assert_close(vae.encoder(t["vae/input"]), t["vae/encoder_out"], what="encoder_out")
        assert_close(vae.moments(t["vae/input"]), t["vae/moments"], what="moments")
        post = vae.encode(t["vae/input"])
        assert_close(post.mean, t["vae/posterior_mean"], what="mean")
        assert_close(post.logvar, t["vae/posterior_logvar"], what="logvar")
        assert_close(post.std, t["vae/posterior_std"], what="std")
        sample = post.sample(noise=t["vae/sample_noise"])
        assert_close(sample, t["vae/posterior_sample"], what="sample")
        assert_close(sample * LATENT_SCALE, t["vae/latent_scaled"], what="latent_scaled")
        assert_close(vae.decode(post.mean), t["vae/decode_of_mean"], what="decode_of_mean")
        assert_close(vae.tokens_to_images(t["vae/latent_scaled"]), t["vae/decode_of_scaled"], what="decode_of_scaled")


def test_vae_checkpoint_wrapper(vae_fx, tmp_path):
    sd = vae_fx["vae"].state_dict()
    path = tmp_path / "kl16.ckpt"
    torch.save({"model": sd}, path)
    meta = vae_fx["meta"]
    vae = KLVAE(**meta["official_args"], **meta["encoder_decoder_overrides"], ckpt_path=str(path))
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in sd.items())
    with pytest.raises(ValueError, match="kl16.ckpt needs"):
        KLVAE(embed_dim=4, ch_mult=(1, 2), ch=32, num_res_blocks=1, resolution=16).load_checkpoint(str(path))


# ----------------------------------------------------------------------------------------------
# training helpers (tiny runs only)
# ----------------------------------------------------------------------------------------------


def tiny_config(**kw) -> MARConfig:
    base = dict(img_size=32, vae_stride=16, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, vae_embed_dim=4, class_num=10,
                buffer_size=2, diffloss_d=1, diffloss_w=32, num_sampling_steps="10", diffusion_batch_mul=2,
                attn_dropout=0.0, proj_dropout=0.0)
    return MARConfig(**{**base, **kw})


def perturbed(model: MAR, std: float = 0.05, seed: int = 0) -> MAR:
    """Add noise to every parameter, so the zero-initialised adaLN layers do not hide the condition."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


def test_mar_training_reduces_loss_on_fixed_batch():
    from vargen.train.common import run_steps
    from vargen.train.mar import make_optimizer

    torch.manual_seed(0)
    model = MAR(tiny_config(label_drop_prob=0.0))
    latents, labels = torch.randn(4, 4, 2, 2), torch.tensor([0, 1, 2, 3])
    step = lambda s: (model(latents, labels, generator=torch.Generator().manual_seed(7)), 4, {})  # noqa: E731
    _, losses = run_steps(None, model, make_optimizer(model, lr=3e-3), torch.Generator(), step, steps=30, lr=3e-3,
                          grad_clip=3.0, final_ratio=0.0, progress=False)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0], losses


def test_label_dropout_uses_null_class():
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 2, 2)
    for prob, same in ((1.0, True), (0.0, False)):
        model = perturbed(MAR(tiny_config(label_drop_prob=prob))).train()
        a = model(latents, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(3))
        b = model(latents, torch.tensor([5, 6]), generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b) == same


def test_mask_ratio_is_truncated_normal():
    model = MAR(tiny_config())
    g = torch.Generator().manual_seed(0)
    ratios = torch.tensor([model.mask_ratio(g) for _ in range(400)])
    assert ratios.min() >= model.config.mask_ratio_min and ratios.max() <= 1.0
    assert 0.85 < float(ratios.mean()) < 0.92  # mean of N(1, .25²) truncated to [0.7, 1] is about 0.886


def test_vae_training_reduces_loss():
    from vargen.train.common import run_steps
    from vargen.train.mar import make_optimizer, vae_loss

    torch.manual_seed(0)
    vae = KLVAE(embed_dim=4, ch_mult=(1, 2), ch=32, num_res_blocks=1, resolution=8)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    step = lambda s: (vae_loss(vae, images, generator=torch.Generator().manual_seed(1))[0], 2, {})  # noqa: E731
    _, losses = run_steps(None, vae, make_optimizer(vae, lr=2e-3, weight_decay=0.0), torch.Generator(), step, steps=15,
                          lr=2e-3, grad_clip=1.0, final_ratio=1.0, progress=False)
    assert losses[-1] < 0.8 * losses[0], losses


def test_clip_x0_clamps_the_predicted_start_and_defaults_to_mar():
    d = IDDPMScheduler.create("10")
    x, eps, v = torch.randn(6, 4) * 3, torch.zeros(6, 4), torch.zeros(6, 4)
    t = torch.full((6,), 9)
    mean, log_var, x0 = d.p_mean_variance(x, t, eps, v)
    assert float(x0.abs().max()) > 100  # first step of the cosine schedule: 1/sqrt(alpha_bar) is huge
    mean_c, log_var_c, x0_c = d.p_mean_variance(x, t, eps, v, clip_sample_range=2.0)
    assert float(x0_c.abs().max()) == 2.0 and torch.equal(log_var, log_var_c) and not torch.equal(mean, mean_c)


def test_diffusers_ddpm_scheduler_differs(fx):
    """Why MAR samples through vargen's IDDPMScheduler and not diffusers' DDPMScheduler (the module docstring
    of vargen.samplers.schedulers): the timesteps agree, the constants are float32, the noise stream and the
    last step's variance differ, so a seeded MAR run does not reproduce."""
    diffusers = pytest.importorskip("diffusers")
    m, t, meta = fx["model"], fx["t"], fx["meta"]
    ours = m.diffloss.scheduler
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                     variance_type="learned_range", clip_sample=False, timestep_spacing="linspace")
    theirs.set_timesteps(ours.num_timesteps)
    assert torch.equal(theirs.timesteps, ours.timesteps)  # IDDPM's respacing = diffusers' linspace
    ac = theirs.alphas_cumprod[ours.timestep_map]
    assert ac.dtype == torch.float32 and float((ac.double() - ours.alphas_cumprod).abs().max()) > 0
    z = t["mar/z_masked"]
    gen = torch.Generator().manual_seed(meta["sampling_seeds"]["sample_nocfg"])
    x = torch.randn(z.shape[0], m.diffloss.in_channels, generator=gen)
    with torch.no_grad():
        for i, step in enumerate(theirs.timesteps.tolist()):
            index = torch.full((z.shape[0],), ours.num_timesteps - 1 - i)
            x = theirs.step(m.diffloss.predict(x, index, z), step, x, generator=gen).prev_sample
    diff = float((x - t["sample_nocfg/output"]).abs().max())
    assert diff > 1e-2, diff  # a different random stream (one draw fewer per run, none at t = 0): another sample
    # the last step's learned-range log-variance at v = 0: diffusers mixes in log(1e-20), IDDPM step 1's value
    last = theirs._get_variance(0, predicted_variance=torch.zeros(1)).item()
    mine = 0.5 * (ours.log_betas[0] + ours.posterior_log_variance_clipped[0]).item()
    assert last < mine - 5, (last, mine)
