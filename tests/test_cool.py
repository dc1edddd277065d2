"""COOL-SD's annealed relaxation (``acceptance="cool"``): the weight of each window slot and tree depth, the residual
and per-slot TV of the paper's Theorem 2 / Proposition 1, an exact law wherever every weight is <= 1 (by enumeration),
the zero setting on trees, and its options."""
import pytest
import torch
from helpers import chi_square_pvalue, exact_distribution, tiny_gpt
from test_acceptance_rules import _dists

from vargen import SamplingConfig, get_sampler
from vargen.distributions import residual
from vargen.samplers import SamplerSpec
from vargen.samplers.acceptance import CoolAcceptance
from vargen.samplers.tree import proactive_tree, verify_tree

SLOTS = torch.arange(4, dtype=torch.float64)


def test_schedules_anneal_from_delta_and_stop_at_the_floor():
    assert torch.allclose(CoolAcceptance(delta=2.0, decay=0.5, offset=0.1, floor=None).omega(SLOTS),
                          2.0 * torch.exp(-0.5 * SLOTS - 0.1))
    assert CoolAcceptance().omega(SLOTS).tolist() == [1.1, 1.0, 1.0, 1.0]  # the defaults relax the first slot only
    assert CoolAcceptance(delta=2.0, decay=0.5, schedule="linear").omega(SLOTS).tolist() == [2.0, 1.5, 1.0, 1.0]
    assert CoolAcceptance(delta=2.0, decay=0.5, schedule="linear", floor=None).omega(SLOTS + 2).tolist() == [1.0, 0.5,
                                                                                                           0.0, 0.0]
    assert CoolAcceptance(delta=1.7, decay=0.5, schedule="uniform").omega(SLOTS).tolist() == [1.7] * 4


@pytest.mark.parametrize("options", [dict(delta=1.5), dict(delta=3.0, decay=0.5, schedule="linear"),
                                     dict(delta=2.0, schedule="uniform")])
def test_residual_is_the_token_residual_where_every_weight_is_at_least_one(options):
    """Proposition 1: with omega >= 1, G* = norm(max(0, p - q f)) is the ordinary residual norm(max(0, p - q))."""
    p, q, d, u = _dists(32, 4, 40, seed=2)
    rule = CoolAcceptance(**options)
    assert torch.allclose(rule.verify(p, q, d, u).residual, residual(p, q), atol=1e-6, rtol=0)
    for slot in range(4):
        assert torch.allclose(rule.residual(p[:, slot], q[:, slot], first_slot=slot), residual(p[:, slot], q[:, slot]),
                              atol=1e-6, rtol=0)
    below = CoolAcceptance(delta=1.0, decay=1.0, floor=None)  # omega < 1 from slot 2: G* is no longer the residual
    w = float(below.omega(SLOTS)[2])
    want = (p[:, 2] - torch.minimum(q[:, 2], w * p[:, 2])).clamp_min(0)
    assert torch.allclose(below.residual(p[:, 2], q[:, 2], first_slot=2), want / want.sum(-1, keepdim=True), atol=1e-6)
    assert not torch.allclose(below.residual(p[:, 2], q[:, 2], first_slot=2), residual(p[:, 2], q[:, 2]), atol=1e-3)


@pytest.mark.parametrize("options,first", [(dict(delta=3.0, decay=0.4, floor=None), 0),
                                           (dict(delta=2.5, decay=0.5, schedule="linear"), 2)])
def test_reported_tv_is_the_closed_form_of_each_slot(options, first):
    """tv_i = sum_y max(0, min(q(y), omega_i p(y)) - p(y)), with omega_i the weight of the slot's index."""
    p, q, d, u = _dists(32, 5, 40, seed=3)
    p, q = (t.double() / t.double().sum(-1, keepdim=True) for t in (p, q))  # float32 laws: TV to ~1e-7
    rule = CoolAcceptance(**options)
    w = rule.omega(torch.arange(first, first + 5, dtype=torch.float64))
    want = (torch.minimum(q, w[:, None] * p) - p).clamp_min(0).sum(-1)
    verdict = rule.verify(p, q, d, u, first_slot=first)
    assert torch.allclose(verdict.tv, want, atol=1e-12, rtol=0)
    assert torch.allclose(rule.verify(p.float(), q.float(), d, u, first_slot=first).tv, want, atol=1e-6, rtol=0)
    assert (verdict.tv[:, w <= 1] == 0).all() and (verdict.tv[:, w > 1] > 0).all()
    assert not verdict.relaxed[:, w <= 1].any() and verdict.relaxed[:, w > 1].any()


def test_acceptance_falls_with_the_slot_on_a_flat_drafter():
    """The same p and q at every slot: the acceptance rate sum_y min(q, omega_i p) falls with the slot index."""
    B, J, V = 20000, 5, 16
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(2 * torch.randn(V, generator=g), -1)
    q = torch.softmax(2 * torch.randn(V, generator=g), -1)
    d = torch.multinomial(q, B * J, replacement=True, generator=g).view(B, J)
    u = torch.rand(B, J, generator=g, dtype=torch.float64)
    rule = CoolAcceptance(delta=3.0, decay=0.5, floor=None)
    rate = rule.verify(p.expand(B, J, V), q.expand(B, J, V), d, u).accept.double().mean(0)
    want = torch.minimum(q.double(), rule.omega(torch.arange(J, dtype=torch.float64))[:, None] * p.double()).sum(-1)
    assert (want.diff() < -0.03).all()
    assert torch.allclose(rate, want, atol=0.015)
    assert (rate.diff() < 0).all()


def test_relaxation_accepts_more_on_a_peaked_model():
    model = tiny_gpt(vocab=16, grid=4, seed=3, sharpness=6.0)
    draft = tiny_gpt(vocab=16, grid=4, seed=3, sharpness=2.0)  # the target, softened
    labels, config = torch.arange(3).repeat(8), SamplingConfig(temperature=1.0)
    for name, extra in (("sd", dict(draft=draft, gamma=4)), ("sjd", dict(window=6))):
        exact, cool = (get_sampler(name, **extra, **o).sample(model, labels, config, torch.Generator().manual_seed(0))
                       for o in ({}, dict(acceptance="cool", delta=3.0, decay=0.3)))
        assert cool.stats.draft_acceptance_rate > 1.2 * exact.stats.draft_acceptance_rate
        assert cool.stats.relaxed.any() and float(cool.stats.tv_bound.min()) > 0


CASES = {"plain": SamplingConfig(temperature=1.0),
         "cfg_topk": SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=3)}
PROPOSERS = {"sjd": lambda: dict(window=4, init="random"), "sd": lambda: dict(draft=tiny_gpt(seed=3), gamma=3),
             "tree": lambda: dict(window=4, tree_width=3, tree_depth=3)}


def _samples(proposer, case, n=10000, **rule):
    sampler = get_sampler("sd" if proposer == "sd" else "sjd", **PROPOSERS[proposer](), **rule)
    return sampler.sample(tiny_gpt(), torch.full((n,), 1), CASES[case], generator=torch.Generator().manual_seed(123))


@pytest.mark.parametrize("proposer,case", [("sjd", "plain"), ("sd", "cfg_topk"), ("tree", "plain")])
def test_weights_below_one_keep_the_law_exact(proposer, case):
    """floor=None, delta=1: omega = 1, 0.5, 0.25, ... (a token tree: by depth). With G* every slot stays exact."""
    out = _samples(proposer, case, acceptance="cool", delta=1.0, decay=0.7, floor=None)
    assert chi_square_pvalue(out.tokens, exact_distribution(tiny_gpt(), 1, CASES[case])) > 1e-3
    assert float(out.stats.tv_bound.abs().max()) == 0.0


def test_enumeration_check_has_power():
    """The same chi-square rejects a relaxed setting (delta=3 at every slot), and the token residual where omega < 1
    (why the rule refuses residual="token": the sd setting above with only the residual changed)."""
    exact = exact_distribution(tiny_gpt(), 1, CASES["plain"])
    relaxed = _samples("sjd", "plain", acceptance="cool", delta=3.0, schedule="uniform")
    assert chi_square_pvalue(relaxed.tokens, exact) < 1e-6 and float(relaxed.stats.tv_bound.min()) > 0
    token = CoolAcceptance(delta=1.0, decay=0.7, floor=None)
    token.residual_kind = "token"  # what the constructor refuses
    exact = exact_distribution(tiny_gpt(), 1, CASES["cfg_topk"])
    assert chi_square_pvalue(_samples("sd", "cfg_topk", acceptance=token).tokens, exact) < 1e-6


def test_zero_relaxation_on_trees_is_the_exact_tree():
    model, draft = tiny_gpt(vocab=16, grid=4, seed=1), tiny_gpt(vocab=16, grid=4, seed=7, n_layer=1)
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    config = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=8)
    tree = dict(tree_width=3, tree_depth=3)
    for make in (lambda **o: get_sampler("sjd", window=4, **tree, **o),
                 lambda **o: get_sampler("sd", draft=draft, gamma=3, **tree, **o)):
        run = lambda **o: make(**o).sample(model, labels, config, generator=torch.Generator().manual_seed(3))
        ref, zero = run(acceptance="exact"), run(acceptance="cool", delta=1.0, schedule="uniform")
        assert torch.equal(zero.tokens, ref.tokens) and zero.stats.forward_passes == ref.stats.forward_passes
        assert float(zero.stats.tv_bound.max()) == 0.0
        relaxed = run(acceptance="cool", delta=3.0)
        assert not torch.equal(relaxed.tokens, ref.tokens) and float(relaxed.stats.tv_bound.max()) > 0


class Recording(CoolAcceptance):
    def __init__(self, **options):
        super().__init__(**options)
        self.seen = []

    def verify(self, p, q, drafts, u, first_slot=0):
        self.seen.append((first_slot, p.shape[1]))
        return super().verify(p, q, drafts, u, first_slot)


def _tree_inputs(tree, B, V, seed):
    """Every node's target is P; the depth-1 candidates come from q = P (accepted at any omega >= 1: u q < omega P),
    the deeper ones from Q != P."""
    g = torch.Generator().manual_seed(seed)
    P, Q = (torch.softmax(2 * torch.randn(V, generator=g, dtype=torch.float64), -1) for _ in range(2))
    n, D = tree.size, tree.max_depth
    q = torch.stack([torch.zeros(V, dtype=torch.float64)] + [P if d == 1 else Q for d in tree.depth[1:]])
    tokens = torch.cat([torch.zeros(B, 1, dtype=torch.long), torch.multinomial(q[1:], B, True, generator=g).T], 1)
    u = torch.rand(B, n, generator=g, dtype=torch.float64)
    valid, live = torch.ones(B, n, dtype=torch.bool), torch.ones(B, D, dtype=torch.bool)
    return P.expand(B, n, V), tokens, q.expand(B, n, V), valid, u, torch.rand(B, generator=g, dtype=torch.float64), live


@pytest.mark.parametrize("window,depth", [(3, 3), (3, 2), (5, 3)])  # depth 2 in a sibling stage / the straight chain
def test_tree_verification_gives_the_rule_each_nodes_depth(window, depth):
    tree, _, _ = proactive_tree(window, 2, depth)
    p, tokens, q, valid, u, u_res, live = _tree_inputs(tree, 4000, 8, seed=0)
    rule = Recording(delta=3.0)
    verify_tree(p, tokens, q, valid, tree, u, u_res, live, rule)
    straight, D = tree.straight_from, tree.max_depth
    stages = [(d - 1, 1) for d in range(1, straight) for _ in range(tree.widths[d - 1])]
    assert rule.seen == stages + ([(straight - 1, D - straight + 1)] if straight <= D else [])

    def deeper(rule):  # the depth-2 decisions (depth 1 always accepts)
        a = verify_tree(p, tokens, q, valid, tree, u, u_res, live, rule)[0]
        assert (a >= 1).all()
        return a >= 2

    annealed = deeper(CoolAcceptance(delta=3.0, decay=5.0))  # omega = 3 at depth 1, the floor 1 below
    assert torch.equal(annealed, deeper(CoolAcceptance(delta=1.0, schedule="uniform")))
    assert not torch.equal(annealed, deeper(CoolAcceptance(delta=3.0, schedule="uniform")))  # depth 1's weight


@pytest.mark.parametrize("options,match", [
    (dict(delta=0.9), "delta must be >= 1"), (dict(decay=-0.1), "decay must be >= 0"),
    (dict(schedule="cosine"), "schedule must be one of exponential, linear, uniform"),
    (dict(residual="token"), "residual must be one of tv_optimal, got 'token'"),
    (dict(floor=2.0), "floor=2 exceeds delta=1.1"), (dict(floor=-1.0), "floor must be >= 0")])
def test_bad_options_are_one_line_errors_naming_the_option(options, match):
    with pytest.raises(ValueError, match=match) as err:
        get_sampler("sjd", acceptance="cool", **options)
    assert "\n" not in str(err.value)


def test_options_parse_from_a_spec():
    spec = SamplerSpec.parse("sjd:acceptance=cool,delta=1.5,schedule=linear,floor=none")
    assert spec.options == dict(acceptance="cool", delta=1.5, schedule="linear", floor=None)
    assert SamplerSpec.parse(str(spec)) == spec
    rule = get_sampler(spec.name, **spec.options).rule
    assert (rule.delta, rule.schedule, rule.floor, rule.decay) == (1.5, "linear", None, 0.7)
    assert get_sampler("sd", draft=tiny_gpt(), acceptance="cool", delta=2).rule.delta == 2.0
    with pytest.raises(ValueError, match="takes no option 'lam'"):
        SamplerSpec.parse("sjd:acceptance=cool,lam=2")
