"""HACK / ScaleKV K/V budgets (vargen.models.var_kv) on the ``var`` and ``code`` samplers, on the shipped VAR demo:
the zero setting reproduces the plain samplers token for token; every budgeted forward equals full attention with
the evicted keys hidden, per layer and head; the budgets follow each policy; the peak is measured; bad options fail
before work."""
import pytest
import torch

import vargen
from vargen import SamplingConfig, get_sampler
from vargen.models.var_kv import HeadStatistics, budgets_for

LABELS = torch.tensor([0, 3, 7])
CONFIG = SamplingConfig(cfg_scale=4.0, top_k=0)


@pytest.fixture(scope="module")
def pipe():
    return vargen.load("cifar10-var")  # scales 1, 2, 3, 4, 6, 8; 6 blocks of 4 heads


def _run(model, name="var", seed=0, **kw):
    return get_sampler(name, **kw).sample(model, LABELS, CONFIG, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("policy", ["hack", "scalekv", "uniform"])
def test_zero_setting_reproduces_var_and_code(pipe, policy):
    """A budget no head can fill keeps everything: same tokens and latent as the plain cache."""
    var = pipe.model
    everything = var.L  # every head may keep everything
    plain, kept = _run(var), _run(var, kv_budget=everything, kv_policy=policy)
    assert torch.equal(plain.tokens, kept.tokens) and torch.equal(plain.latents, kept.latents)
    refiner = pipe.member("refiner")
    plain = _run(var, "code", draft_steps=3, refiner=refiner)
    kept = _run(var, "code", draft_steps=3, refiner=refiner, kv_budget=everything, kv_policy=policy)
    assert torch.equal(plain.tokens, kept.tokens)


def test_each_forward_is_full_attention_with_the_evicted_keys_hidden(pipe):
    """Teacher-forced scales through a budgeted cache and through the plain cache with per-layer, per-head masks
    hiding what the budgeted cache did not hold: the logits agree, and entries were really evicted."""
    var = pipe.model
    torch.manual_seed(0)
    budget = budgets_for(_fake_statistics(var), "hack", 10, var.begin_ends)
    cond = var.condition(torch.tensor([1, 2]))
    budgeted, full = var.new_cache(2, budget=budget), var.new_cache(2)
    inputs = [torch.randn(2, pn * pn, var.Cvae) for pn in var.patch_nums[1:]]
    H = var.num_heads
    evicted = False
    for s in range(len(var.patch_nums)):
        held = budgeted.pos.clone()  # [depth, B, H, capacity]: what scale s reads of the earlier ones
        x_in = None if s == 0 else inputs[s - 1]
        got = var.forward_scales(cond, x_in, budgeted, s, s + 1, logits_from=s)
        a, b = var.begin_ends[s]
        x = var.embed(cond, x_in, s, s + 1)
        for i, block in enumerate(var.blocks):
            visible = torch.zeros(2, H, b + 1, dtype=torch.bool)  # the last column collects free slots
            visible.scatter_(2, torch.where(held[i] >= 0, held[i], b), True)
            visible[..., a:b] = True
            evicted |= bool((~visible[..., :a]).any())
            mask = torch.zeros(2, H, b - a, b).masked_fill_(~visible[..., None, :b], float("-inf"))
            x = block(x, cond.block_mods[i], mask, full.layer(i), a)
        full.filled = b
        want = var.get_logits(x, cond.cond_BD)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert evicted, "nothing was evicted"


def _fake_statistics(var):
    K, depth, H = len(var.patch_nums), len(var.blocks), var.num_heads
    g = torch.Generator().manual_seed(0)
    return HeadStatistics(torch.rand(K, depth, H, generator=g), torch.rand(depth, H, generator=g))


def test_budgets_follow_each_policy(pipe):
    var = pipe.model
    stats = _fake_statistics(var)
    _, depth, H = stats.earlier_mass.shape
    earlier = torch.tensor([b for b, _ in var.begin_ends])
    hack = budgets_for(stats, "hack", 20, var.begin_ends)
    structural = hack.recency
    assert int(structural.sum()) == depth * H // 2  # the less concentrated half
    assert (stats.concentration[structural].max() <= stats.concentration[~structural].min())
    last = hack.budgets[-1]
    assert (last[structural] == min(30, int(earlier[-1]))).all() and (last[~structural] == 10).all()
    assert (hack.budgets <= earlier[:, None, None]).all()
    skv = budgets_for(stats, "scalekv", 20, var.begin_ends)
    assert not skv.recency.any()
    per_layer = skv.budgets[-1, :, 0]
    assert (skv.budgets[-1] == per_layer[:, None]).all()  # one budget per layer (and scale)
    drafters = per_layer == 30
    assert int(drafters.sum()) == depth // 2
    assert stats.earlier_mass[-1].mean(-1)[drafters].min() >= stats.earlier_mass[-1].mean(-1)[~drafters].max()
    mean = torch.minimum(torch.tensor(20), earlier).float()
    for b in (hack.budgets, skv.budgets):  # a cap at what exists does not shrink the total
        assert torch.allclose(b.float().mean((1, 2)), mean, atol=0.5)
    uni = budgets_for(stats, "uniform", 20, var.begin_ends)
    assert (uni.budgets == torch.minimum(torch.tensor(20), earlier)[:, None, None]).all()


def test_recency_heads_hold_the_latest_positions_and_counts_match_budgets(pipe):
    var = pipe.model
    out = _run(var, kv_budget=12, kv_policy="hack")
    assert out.stats.kv_bytes_used < _run(var).stats.kv_cache_bytes
    budget = budgets_for(_fake_statistics(var), "hack", 12, var.begin_ends)
    cache = var.new_cache(1, budget=budget)
    cond = var.condition(torch.tensor([4]))
    K = len(var.patch_nums)
    for s in range(K - 1):
        var.forward_scales(cond, None if s == 0 else torch.randn(1, var.patch_nums[s] ** 2, var.Cvae), cache, s,
                           s + 1, logits_from=None)
    held = cache.pos[:, 0]  # [depth, H, capacity] for the last scale
    counts = (held >= 0).sum(-1)
    assert torch.equal(counts, budget.budgets[K - 1])
    begin = var.begin_ends[K - 1][0]
    for layer, head in budget.recency.nonzero().tolist():
        kept = sorted(held[layer, head][held[layer, head] >= 0].tolist())
        assert kept == list(range(begin - len(kept), begin))


def test_bad_options_fail_before_work(pipe):
    with pytest.raises(ValueError, match="kv_policy must be one of"):
        get_sampler("var", kv_budget=8, kv_policy="snap")
    with pytest.raises(ValueError, match="do not combine"):
        get_sampler("var", kv_budget=8, prune_scales=2)
    with pytest.raises(ValueError, match="kv_budget must be >= 1"):
        get_sampler("code", kv_budget=0)
    for name in ("var", "code"):
        with pytest.raises(ValueError, match="needs a kv_budget"):
            get_sampler(name, kv_policy="scalekv")
