"""Continuous speculative decoding on tiny random MARs: acceptance, pass counts, exactness of the
residual sampler, the official ratio in log space, and input checks."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from vargen.samplers.diffusion_head import denoise, path_log_prob

from vargen.models.mar import MAR, MARConfig
from vargen.samplers import get_sampler
from vargen.samplers.base import SamplingConfig
from vargen.samplers.cspd import (TESTS, gaussian_log_density, official_log_ratio, pass_counts,
                                  residual_resample)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_mar(seed: int = 0, vae_embed_dim: int = 4, class_num: int = 10, std: float = 0.1, **kw) -> MAR:
    """A 4x4-token MAR whose every parameter is perturbed (zero-initialised adaLN would hide z)."""
    torch.manual_seed(seed)
    config = MARConfig(img_size=64, vae_stride=16, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2,
                       decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, vae_embed_dim=vae_embed_dim,
                       class_num=class_num, buffer_size=2, diffloss_d=1, diffloss_w=32, num_sampling_steps="10",
                       **kw)
    model = MAR(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def pair():
    target = tiny_mar(0)
    draft = copy.deepcopy(target)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=g))
    return draft, target


LABELS = torch.tensor([1, 2, 3])


@pytest.mark.parametrize("test", TESTS)
@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_draft_equal_to_target_accepts_every_token(pair, test, cfg):
    _, target = pair
    sampler = get_sampler("cspd", draft=target, num_iter=8, ratio=0.2, num_draft=1, test=test)
    out = sampler.sample(target, LABELS, SamplingConfig(temperature=0.9, cfg_scale=cfg), torch.Generator().manual_seed(0))
    e = out.stats.cspd
    assert e.drafted > 0
    assert e.accepted_drafts == e.drafted and out.stats.draft_acceptance_rate == 1.0
    assert e.residual_proposals == 0 and e.residual_fallbacks == 0
    if test == "official":
        assert e.log_phi_abs_max == 0.0


@pytest.mark.parametrize("test", TESTS)
def test_different_draft_is_verified_and_counted(pair, test):
    draft, target = pair
    K, ratio, gamma = 10, 0.15, 3
    out = get_sampler("cspd", draft=draft, num_iter=K, ratio=ratio, num_draft=gamma, test=test).sample(
        target, LABELS, SamplingConfig(temperature=1.0, cfg_scale=2.0), torch.Generator().manual_seed(1))
    s, e = out.stats, out.stats.cspd
    assert (s.forward_passes, s.draft_forward_passes) == pass_counts(K, ratio, gamma)
    assert e.target_passes == s.forward_passes and e.draft_passes == s.draft_forward_passes
    assert e.accepted_drafts < e.drafted  # the draft differs: something gets rejected
    assert e.residual_proposals > 0
    assert out.tokens.shape == (3, target.seq_len, target.token_embed_dim) and torch.isfinite(out.tokens).all()
    assert s.token_step.min() >= 0 and s.token_step.max() < s.forward_passes
    assert int(sum(a.sum() for a in s.accepted)) == 3 * target.seq_len  # every token committed once
    assert len(e.acceptance_rate_per_row) == 3


def test_pass_counts_match_the_official_runner():
    assert pass_counts(256, 0.05, 4) == (74, 243)  # the demo: MAR-B draft, MAR-H target
    assert pass_counts(64, 0.15, 8) == (17, 54)    # the runner's defaults


def test_seeded(pair):
    draft, target = pair
    s = get_sampler("cspd", draft=draft, num_iter=6, ratio=0.0, num_draft=2)
    a = s.sample(target, LABELS, None, torch.Generator().manual_seed(3)).tokens
    b = s.sample(target, LABELS, None, torch.Generator().manual_seed(3)).tokens
    c = s.sample(target, LABELS, None, torch.Generator().manual_seed(4)).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------------------------
# the building blocks of the tests
# ----------------------------------------------------------------------------------------------


def speculative_gaussian(n: int, mu_q, sd_q, mu_p, sd_p, seed: int, resample: bool = True):
    """Draft x ~ q, accept with min(1, p/q), else redraw from (p - q)+ -- as CSpD's final_step test does."""
    g = torch.Generator().manual_seed(seed)
    mu_q, mu_p = torch.full((n, 1), mu_q), torch.full((n, 1), mu_p)
    log_sq, log_sp = torch.full((n, 1), math.log(sd_q)), torch.full((n, 1), math.log(sd_p))
    x = mu_q + sd_q * torch.randn(n, 1, generator=g)
    log_r = gaussian_log_density(x, mu_p, log_sp) - gaussian_log_density(x, mu_q, log_sq)
    accept = torch.rand(n, generator=g, dtype=torch.float64).log() < log_r.double()
    rejected = (~accept).nonzero().squeeze(-1)
    if not resample:
        return x.squeeze(-1), accept

    def propose(rows, t):
        idx = rejected[rows]
        y = mu_p[idx] + sd_p * torch.randn(t, idx.numel(), 1, generator=g)
        return y, gaussian_log_density(y, mu_q[idx], log_sq[idx]) - gaussian_log_density(y, mu_p[idx], log_sp[idx])

    values, _, fallbacks = residual_resample(propose, rejected.numel(), 200,
                                             lambda t, m: torch.rand(t, m, generator=g, dtype=torch.float64))
    x[rejected] = values
    return x.squeeze(-1), accept, fallbacks


def test_speculative_gaussian_step_is_exact():
    from scipy.stats import kstest, norm

    n = 20000
    x, accept, fallbacks = speculative_gaussian(n, 0.0, 1.0, 0.7, 1.3, seed=0)
    assert fallbacks == 0
    # acceptance rate is 1 - TV(p, q)
    grid = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    tv = 0.5 * (torch.tensor(norm.pdf(grid, 0.0, 1.0)) - torch.tensor(norm.pdf(grid, 0.7, 1.3))).abs().sum() * 1e-3
    assert abs(float(accept.double().mean()) - (1 - float(tv))) < 0.015
    assert kstest(x.numpy(), "norm", args=(0.7, 1.3)).pvalue > 1e-3
    # negative control: keeping rejected drafts is detectably wrong, so the check above has power
    wrong, _ = speculative_gaussian(n, 0.0, 1.0, 0.7, 1.3, seed=0, resample=False)
    assert kstest(wrong.numpy(), "norm", args=(0.7, 1.3)).pvalue < 1e-6


def test_residual_resample_falls_back_when_never_resolved():
    fallback = torch.full((3, 2), 7.0)

    def propose(rows, t):  # q >= p everywhere: nothing can ever be kept
        return torch.zeros(t, rows.numel(), 2), torch.zeros(t, rows.numel())

    values, tries, fallbacks = residual_resample(propose, 3, 20, lambda t, m: torch.rand(t, m, dtype=torch.float64),
                                                 fallback=fallback)
    assert torch.equal(values, fallback) and fallbacks == 3 and tries == 60


def test_official_ratio_matches_linear_space_formula():
    g = torch.Generator().manual_seed(0)
    mu_q, mu_p = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    sq, sp = 0.5 + torch.rand(5, 4, generator=g, dtype=torch.float64), 0.5 + torch.rand(5, 4, generator=g,
                                                                                          dtype=torch.float64)
    log_phi = 0.3 * torch.randn(5, generator=g, dtype=torch.float64)
    lam = 2.0
    # CSpD's code: exp(-½((x-μp)/(λσp))²) / σp / [exp(-½((x-μq)/(λσq))²) / σq] · Φ at x = μq
    linear = (torch.exp(-0.5 * ((mu_q - mu_p) / (lam * sp)).square()) / sp).prod(-1) / (1 / sq).prod(-1)
    linear = linear * log_phi.exp()
    got = official_log_ratio(mu_q, mu_p, sq.log(), sp.log(), log_phi, lam, 1.0)
    assert torch.allclose(got, linear.log(), rtol=1e-10)
    flipped = official_log_ratio(mu_q, mu_p, sq.log(), sp.log(), log_phi, lam, -1.0)
    assert torch.allclose(got - flipped, 2 * log_phi)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_path_log_prob_scores_the_sampler_path(pair, cfg):
    """The exact test's densities: one batched call reproduces the sampler's own path density and token."""
    _, target = pair
    # float64: the random tiny head's samples reach ~1e4, where float32 rounding of x - μ would dominate
    head = copy.deepcopy(target.diffloss).double()
    n, tau = 6, 0.8
    z = torch.randn(2 * n if cfg != 1.0 else n, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tr = denoise(head, z, tau, cfg, generator=torch.Generator().manual_seed(1), trace=True, keep_inputs=True)
    lp, final_mean, final_log_var = path_log_prob(head, tr.inputs[:, :n], z, tau, cfg)
    assert torch.allclose(lp, tr.log_prob[:n], rtol=1e-9, atol=1e-6)
    assert torch.allclose(final_mean, tr.sample[:n], rtol=1e-9, atol=1e-9)
    assert torch.allclose(final_log_var, tr.final_log_variance[:n], rtol=1e-9, atol=1e-9)
    other = path_log_prob(head, tr.inputs[:, :n], z.flip(0), tau, cfg)[0]  # another condition scores it lower
    assert (other < lp).float().mean() > 0.5


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


def test_bad_input_is_rejected_before_any_work(pair):
    draft, target = pair
    with pytest.raises(ValueError, match="num_iter"):
        get_sampler("cspd", draft=draft, num_iter=0)
    with pytest.raises(ValueError, match="num_draft"):
        get_sampler("cspd", draft=draft, num_draft=0)
    with pytest.raises(ValueError, match="test must be"):
        get_sampler("cspd", draft=draft, test="nope")
    with pytest.raises(ValueError, match="draft model"):
        get_sampler("cspd").sample(target, LABELS)
    wide = tiny_mar(1, vae_embed_dim=8)
    with pytest.raises(ValueError, match="token layouts differ"):
        get_sampler("cspd", draft=wide, num_iter=4).sample(target, LABELS)
    with pytest.raises(ValueError, match="class id"):
        get_sampler("cspd", draft=draft, num_iter=4).sample(target, torch.tensor([0, target.num_classes]))
    small = tiny_mar(2, class_num=3)
    with pytest.raises(ValueError, match="class id"):
        get_sampler("cspd", draft=small, num_iter=4).sample(target, LABELS)
    with pytest.raises(ValueError, match="temperature > 0"):
        get_sampler("cspd", draft=draft, num_iter=4).sample(target, LABELS, SamplingConfig(temperature=0.0))
