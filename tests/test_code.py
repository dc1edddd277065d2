"""CoDe (drafter-refiner collaborative decoding) against the official CoDe fork's golden fixtures."""
from __future__ import annotations

import pytest
import torch
from test_var import ATOL, cfg_scale, load_var_fixtures, split_scales

from vargen.models.var import VAR, VARConfig
from vargen.samplers import get_sampler
from vargen.samplers.base import SamplingConfig
from vargen.samplers.code import CoDeSampler
from vargen.samplers.next_scale import VARSampler
from vargen.tokenizers.msvq import MultiScaleVQVAE


@pytest.fixture(scope="module")
def fx():
    return load_var_fixtures()


def _official_sampler(fx, calls, reuse):
    return CoDeSampler(draft_steps=fx.m["code"]["draft_steps"], refiner=fx.refiner, reuse=reuse,
                       temperatures=calls["temp"], top_ks=calls["top_k"])


@pytest.mark.parametrize("reuse", [True, False])
def test_greedy_code_matches_fixture(fx, reuse):
    call = fx.m["code"]["code_greedy_calls"]["draft"]
    config = SamplingConfig(top_p=call["top_p"] or 1.0, cfg_scale=cfg_scale(call["cfg"]))
    out = _official_sampler(fx, call, reuse).sample(fx.var, fx.T["infer_label_B"], config,
                                                    torch.Generator().manual_seed(call["g_seed"]))
    f_hat = out.latents
    assert torch.equal(out.tokens, fx.code["code_greedy_idx_BL"])
    assert (f_hat - fx.code["code_greedy_fhat_BChw"]).abs().max() < ATOL


@pytest.mark.parametrize("reuse", [True, False])
def test_seeded_code_matches_fixture(fx, reuse):
    """Both modes are RNG-identical to upstream: reuse=False replays its rewind + throw-away draws,
    reuse=True skips them, which leaves the generator exactly where they would have left it."""
    call = fx.m["code"]["code_sample_calls"]["draft_and_refine_common"]
    config = SamplingConfig(top_p=call["top_p"] or 1.0, cfg_scale=cfg_scale(call["cfg"]))
    out = _official_sampler(fx, call, reuse).sample(fx.var, fx.T["infer_label_B"], config,
                                                    torch.Generator().manual_seed(call["g_seed"]))
    f_hat = out.latents
    assert torch.equal(out.tokens, fx.code["code_sample_idx_BL"])
    assert (f_hat - fx.code["code_sample_fhat_BChw"]).abs().max() < ATOL


def test_handoff_and_refiner_guided_logits(fx):
    """The drafter's hand-off inputs, and the refiner's guided logits from its cached prefill + steps."""
    var, ref, vae = fx.var, fx.refiner, fx.vae
    N, K = fx.m["code"]["draft_steps"], len(var.patch_nums)
    cfg = fx.m["code"]["code_greedy_calls"]["refine"]["cfg"]
    x = vae.idx_to_var_input(split_scales(fx.code["code_greedy_idx_BL"], var.patch_nums))
    hub = fx.code["code_greedy_token_hub"]
    assert (x[:, : hub.shape[1]] - hub).abs().max() < ATOL
    labels = fx.T["infer_label_B"]
    both = torch.cat([labels, torch.full_like(labels, ref.num_classes)])
    x2 = torch.cat([x, x])
    with torch.no_grad():
        cond, cache = ref.condition(both), ref.new_cache(both.shape[0])
        assert ref.forward_scales(cond, x2[:, : ref.begin_ends[N - 1][1] - 1], cache, 0, N) is None  # prefill, no head
        guided = []
        for si in range(N, K):
            b, e = ref.begin_ends[si]
            logits = ref.forward_scales(cond, x2[:, b - 1: e - 1], cache, si, si + 1, logits_from=si)
            t = cfg * si / (K - 1)
            guided.append((1 + t) * logits[:2] - t * logits[2:])
    assert (torch.cat(guided, 1) - fx.code["code_greedy_refiner_cfg_logits"]).abs().max() < ATOL


@pytest.mark.parametrize("reuse", [True, False])
def test_refiner_equal_drafter_is_plain_var(fx, reuse):
    K = len(fx.var.patch_nums)
    config = SamplingConfig(top_k=16, top_p=0.95, cfg_scale=3.0)
    for seed in range(3):
        for n in range(1, K):
            code = CoDeSampler(draft_steps=n, refiner=fx.var, reuse=reuse).sample(fx.var, [1, 5, 9], config, torch.Generator().manual_seed(seed))
            var = VARSampler().sample(fx.var, [1, 5, 9], config, torch.Generator().manual_seed(seed))
            assert torch.equal(code.tokens, var.tokens), (seed, n)


def test_reuse_wastes_no_randomness(fx):
    config = SamplingConfig(top_k=16, top_p=0.95)
    g_code, g_var = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    CoDeSampler(draft_steps=2, refiner=fx.refiner).sample(fx.var, [1, 2], config, g_code)
    VARSampler().sample(fx.var, [1, 2], config, g_var)
    assert torch.equal(g_code.get_state(), g_var.get_state())


def test_code_stats(fx):
    K, L = len(fx.var.patch_nums), fx.var.L
    for reuse, n in [(True, 1), (True, K - 1), (False, 2)]:
        out = get_sampler("code", draft_steps=n, refiner=fx.refiner, reuse=reuse).sample(
            fx.var, [0, 1], SamplingConfig(top_k=8), torch.Generator().manual_seed(0))
        s = out.stats
        assert out.tokens.shape == (2, L) and s.tokens.tolist() == [L, L]
        assert s.forward_passes == n and s.code.drafter_forward_passes == n
        assert s.code.refiner_forward_passes == (1 + K - n if reuse else K - n)
        assert s.code.refiner_prefill_tokens == fx.var.begin_ends[n - 1 if reuse else n][1]
        assert s.code.drafter_seconds > 0 and s.code.refiner_seconds > 0 and s.seconds_per_image > 0
        # the drafter's cache covers its N scales only; the two caches never coexist
        per_position = 2 * fx.var.depth * fx.var.C * 4 * 2 * 2  # K and V, fp32, 2 labels x CFG rows
        assert s.code.drafter_kv_cache_bytes == per_position * fx.var.begin_ends[n - 1][1]
        assert s.kv_cache_bytes == max(s.code.drafter_kv_cache_bytes, s.code.refiner_kv_cache_bytes)
    short = fx.var.new_cache(2, length=fx.var.begin_ends[0][1])
    with pytest.raises(ValueError, match="cache positions"):
        fx.var.forward_scales(fx.var.condition(torch.tensor([0, 1])), None, short, 0, 2, logits_from=0)


def test_code_rejects_bad_input(fx):
    K = len(fx.var.patch_nums)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    cfg = SamplingConfig()
    for n in (0, K):
        with pytest.raises(ValueError, match="draft_steps must be"):
            CoDeSampler(draft_steps=n, refiner=fx.refiner).sample(fx.var, [1], cfg, g)
    with pytest.raises(ValueError, match="needs a refiner"):
        CoDeSampler(draft_steps=1).sample(fx.var, [1], cfg, g)
    with pytest.raises(ValueError, match="class id"):
        CoDeSampler(draft_steps=1, refiner=fx.refiner).sample(fx.var, [fx.var.num_classes + 1], cfg, g)
    base = fx.refiner.config.__dict__
    other_scales = VAR(VARConfig(**{**base, "patch_nums": tuple(fx.var.patch_nums[:-1])}), init=False)
    with pytest.raises(ValueError, match="different patch_nums"):
        CoDeSampler(draft_steps=1, refiner=other_scales).sample(fx.var, [1], cfg, g)
    other_vocab = VAR(VARConfig(**{**base, "vocab_size": fx.var.vocab_size * 2}), init=False)
    with pytest.raises(ValueError, match="different codebooks"):
        CoDeSampler(draft_steps=1, refiner=other_vocab).sample(fx.var, [1], cfg, g)
    other_vae = MultiScaleVQVAE(fx.vae.config)  # same shapes, different (random) codebook
    own_codebook = VAR(fx.refiner.config, vae=other_vae, init=False)
    own_codebook.load_state_dict(fx.refiner.state_dict())
    with pytest.raises(ValueError, match="different VQVAE codebooks"):
        CoDeSampler(draft_steps=1, refiner=own_codebook).sample(fx.var, [1], cfg, g)
    with pytest.raises(ValueError, match="draft_steps must be an integer"):
        CoDeSampler(draft_steps=2.0)
    assert torch.equal(g.get_state(), state)


def test_code_specialisation_losses(fx):
    from vargen.train.var import code_drafter_loss, code_refiner_loss, train_code_refiner, var_inputs

    N = fx.m["code"]["draft_steps"]
    images, labels = fx.T["img_B3HW"], fx.T["infer_label_B"]
    targets, x = var_inputs(fx.vae, images)
    late = targets.clone()
    late[:, fx.var.begin_ends[N][0]:] = (late[:, fx.var.begin_ends[N][0]:] + 1) % fx.var.vocab_size
    with torch.no_grad():
        # the drafter is trained on its scales only; the refiner's KL vanishes against itself
        assert code_drafter_loss(fx.var, labels, targets, x, N) == code_drafter_loss(fx.var, labels, late, x, N)
        assert float(code_refiner_loss(fx.var, fx.var, labels, x, N, T=2.0)) < 1e-6
        before = float(code_refiner_loss(fx.refiner, fx.var, labels, x, N, T=2.0))
    student = VAR(fx.refiner.config, init=False)
    student.load_state_dict(fx.refiner.state_dict())
    losses = train_code_refiner(student, fx.var, fx.vae, [(images, labels)], steps=20, draft_steps=N, T=2.0, lr=3e-3)
    with torch.no_grad():
        after = float(code_refiner_loss(student, fx.var, labels, x, N, T=2.0))
    assert len(losses) == 20 and after < 0.7 * before
    assert fx.var.training is False
