"""LANTERN and GSD acceptance rules: zero relaxation is the exact rule token for token, the sets and
bounds follow the papers, the residual is Cool-SD's TV-optimal one, relaxation accepts more, and
verification never syncs with the host."""
import pytest
import torch

from helpers import SyncCounter, tiny_gpt
from vargen import SamplingConfig, get_sampler
from vargen.samplers.acceptance import (ExactAcceptance, GroupedAcceptance, LanternAcceptance, get_rule,
                                        neighbour_table, residual)
from vargen.samplers.proposers.draft import SpeculativeSampler

ZERO = [("lantern", dict(delta=0.0, k=5)), ("lantern", dict(lam=1.0, k=5)), ("lantern", dict(delta=0.0, lam=1.0, k=3)),
        ("gsd", dict(group_size=1, prob_gap=1.0))]


class FakeModel:
    def __init__(self, V, book=None):
        self.vocab_size = V
        self.device = torch.device("cpu")
        self._book = book if book is not None else torch.randn(V, 4, generator=torch.Generator().manual_seed(5))

    def codebook(self):
        return self._book


def _dists(B, J, V, seed, zeros=True):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(B, J, V, generator=g) ** 3
    q = torch.rand(B, J, V, generator=g) ** 3
    if zeros:  # a top-k cut: p has zeros the drafts may land on
        p = p * (torch.rand(B, J, V, generator=g) > 0.3)
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    d = torch.multinomial(q.view(-1, V), 1, generator=g).view(B, J)
    return p, q, d, torch.rand(B, J, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name,options", ZERO)
def test_zero_relaxation_is_the_exact_rule(name, options):
    V = 12
    p, q, d, u = _dists(64, 5, V, seed=1)
    rule = get_rule(name, **options)
    rule.prepare(FakeModel(V))
    v = rule.verify(p, q, d, u)
    assert torch.equal(v.accept, ExactAcceptance().verify(p, q, d, u).accept)
    assert not v.relaxed.any() and float(v.tv.abs().max()) == 0.0
    assert torch.equal(rule.residual(p[:, 0], q[:, 0]), residual(p[:, 0], q[:, 0]))


@pytest.mark.parametrize("name,options", ZERO)
def test_zero_relaxation_samplers_match_exact_token_for_token(name, options):
    model = tiny_gpt(vocab=16, grid=4, seed=1)
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    config = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=8)
    draft = tiny_gpt(vocab=16, grid=4, seed=7, n_layer=1)
    for make in (lambda **o: get_sampler("sjd", window=4, **o), lambda **o: SpeculativeSampler(draft=draft, gamma=3, **o)):
        ref = make(acceptance="exact").sample(model, labels, config, generator=torch.Generator().manual_seed(3))
        out = make(acceptance=name, **options).sample(model, labels, config, generator=torch.Generator().manual_seed(3))
        assert torch.equal(out.tokens, ref.tokens)
        assert out.stats.forward_passes == ref.stats.forward_passes
        assert not out.stats.relaxed.any() and float(out.stats.tv_bound.max()) == 0.0
        big = dict(options, **({"delta": 0.5, "lam": None} if name == "lantern" else {"group_size": 6}))
        relaxed = make(acceptance=name, **big).sample(model, labels, config, generator=torch.Generator().manual_seed(3))
        assert not torch.equal(relaxed.tokens, ref.tokens)  # the comparison can fail


def test_neighbour_table_uses_normalised_geometry_in_chunks():
    # raw L2 would call token 1 (long, same direction as 0) far from 0; cosine geometry calls it nearest
    angles = torch.tensor([0.0, 0.05, 0.5, 1.0, 2.0, 3.0])
    book = torch.stack([angles.cos(), angles.sin()], 1)
    book[1] *= 10.0
    table = neighbour_table(book, 3, chunk=2)
    assert table.dtype == torch.int32 and table.shape == (6, 3)
    assert table[0].tolist() == [1, 2, 3]
    assert table[3].tolist() == [2, 1, 0]
    assert not (table == torch.arange(6)[:, None]).any()
    assert torch.equal(table, neighbour_table(book, 3, chunk=1024))
    assert neighbour_table(book, 3, normalize=False)[0].tolist()[0] == 2


def test_lantern_bounds_select_the_prefix_within_the_bound():
    V = 6
    book = torch.stack([torch.arange(V).float().cos(), torch.arange(V).float().sin()], 1)  # neighbours by angle
    p = torch.tensor([[[0.30, 0.05, 0.10, 0.20, 0.25, 0.10]]])
    q = torch.full((1, 1, V), 1.0 / V)
    d = torch.tensor([[0]])  # neighbours of 0: 1, 5, 2, ... (angles 1, -1 ~ 5.28, 2)
    model = FakeModel(V, book)
    nb = neighbour_table(book, 5)[0].tolist()
    assert nb[:3] == [1, 5, 2]

    def P(**o):
        rule = LanternAcceptance(k=5, aggregate_q=False, **o)
        rule.prepare(model)
        return float(rule._set_masses(p, q, d[..., None], None)[0])

    assert P(delta=0.04) == pytest.approx(0.30)  # n_1 alone (0.05) exceeds it
    assert P(delta=0.16) == pytest.approx(0.45)  # 0.05 + 0.10 (+ 0.25 would exceed it)
    assert P(lam=1.55) == pytest.approx(0.45)  # (1.55 - 1) * 0.30 = 0.165
    assert P(delta=0.16, lam=1.2) == pytest.approx(0.35)  # both: the tighter (0.06)
    rule = LanternAcceptance(k=5, delta=0.16, variant="vargen")
    rule.prepare(model)
    P2, Q2, _, _ = rule._set_masses(p, q, d[..., None], None)
    assert float(Q2) == pytest.approx(3 / V)  # q aggregated over the same set


def test_lantern_takes_the_tokenizer_codebook():
    model = tiny_gpt(vocab=16, grid=4)
    book = torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    sampler = get_sampler("sjd", window=3, acceptance="lantern", codebook=book, k=4)
    sampler.sample(model, torch.tensor([0]), SamplingConfig())
    assert torch.equal(sampler.rule.table, neighbour_table(book, 4, normalize=False))  # official: raw distances
    with pytest.raises(ValueError, match="codebook has 5 rows"):
        get_sampler("sjd", acceptance="lantern", codebook=torch.randn(5, 2)).sample(model, torch.tensor([0]))
    for bad in (dict(delta=-0.1), dict(lam=0.5), dict(k=0), dict(residual="nope")):
        with pytest.raises(ValueError):
            LanternAcceptance(**bad)


def test_gsd_vargen_variant_groups_at_the_top_of_the_ranking_and_filters():
    V = 8
    p = torch.tensor([[[0.40, 0.20, 0.15, 0.10, 0.08, 0.07, 0.0, 0.0]]])
    q = torch.full((1, 1, V), 1.0 / V)
    rule = GroupedAcceptance(group_size=5, prob_gap=1.0, variant="vargen")
    rule.prepare(FakeModel(V))
    ctx = rule._context(p)

    def group(x, r=rule):
        P, Q, pd, qd = r._set_masses(p, q, torch.tensor([[[x]]]), r._context(p))
        return float(P), float(Q)

    # top token: ranks -2, -1 do not exist (the window is truncated); the group is {0, 1, 2}
    assert group(0) == pytest.approx((0.75, 3 / V))
    # token 3 (rank 3): ranks 1..5 -> tokens 1..5
    assert group(3) == pytest.approx((0.60, 5 / V))
    # tokens outside the target's support never join; the draft itself always does
    assert group(6) == pytest.approx((0.15, 3 / V))
    assert ctx[1][0, 0].tolist()[:6] == [0, 1, 2, 3, 4, 5]
    tight = GroupedAcceptance(group_size=5, prob_gap=0.06, variant="vargen")
    assert group(3, tight) == pytest.approx((0.10 + 0.15 + 0.08 + 0.07, 4 / V))
    book = torch.eye(V)
    book[4] = book[3] + 0.1
    near = GroupedAcceptance(group_size=5, prob_gap=1.0, max_dist=0.5, codebook=book, variant="vargen")
    near.prepare(FakeModel(V))
    assert group(3, near) == pytest.approx((0.18, 2 / V))


@pytest.mark.parametrize("name,options", [("lantern", dict(k=4, delta=0.3)), ("lantern", dict(k=4, lam=3.0)),
                                          ("gsd", dict(group_size=5, prob_gap=0.3))])
def test_tv_optimal_residual(name, options):
    """The committed token's law q f + (1 - sum q f) G* is at TV sum max(0, q f - p) from p: Cool-SD's
    optimum, never worse than the token residual."""
    V = 10
    p, q, _, _ = _dists(16, 1, V, seed=4)
    p, q = p[:, 0].double(), q[:, 0].double()
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    rule = get_rule(name, **options)
    rule.prepare(FakeModel(V))
    tok = torch.arange(V).expand(16, -1)
    P, Q, _, _ = rule._set_masses(p, q, tok, rule._context(p))
    qf = q * torch.minimum(torch.ones_like(P), P / Q)
    alpha = qf.sum(-1, keepdim=True)
    opt = qf + (1 - alpha) * rule.residual(p, q)
    tok_law = qf + (1 - alpha) * residual(p, q)
    tv_opt = 0.5 * (opt - p).abs().sum(-1)
    assert torch.allclose(opt.sum(-1), torch.ones(16, dtype=torch.float64))
    assert torch.allclose(tv_opt, (qf - p).clamp_min(0).sum(-1), atol=1e-9)
    assert (tv_opt <= 0.5 * (tok_law - p).abs().sum(-1) + 1e-12).all()
    assert (tv_opt > 1e-6).any()


@pytest.mark.parametrize("name,options", [("lantern", dict(k=8, delta=0.5, aggregate_q=False)), ("gsd", dict(group_size=8, prob_gap=0.5))])
def test_relaxed_rules_accept_more_on_a_peaked_model(name, options):
    model = tiny_gpt(vocab=16, grid=4, seed=3, sharpness=6.0)
    labels = torch.arange(3).repeat(8)
    config = SamplingConfig(temperature=1.0)
    draft = tiny_gpt(vocab=16, grid=4, seed=3, sharpness=2.0)  # the target, softened: a plausible drafter
    for make, rate in ((lambda **o: get_sampler("sjd", window=6, **o), lambda s: s.mean_accepted),
                       (lambda **o: SpeculativeSampler(draft=draft, gamma=4, **o),
                        lambda s: s.extra["draft_acceptance_rate"])):
        exact = make(acceptance="exact").sample(model, labels, config, generator=torch.Generator().manual_seed(0))
        relax = make(acceptance=name, **options).sample(model, labels, config, generator=torch.Generator().manual_seed(0))
        assert rate(relax.stats) > 1.1 * rate(exact.stats)
        assert relax.stats.relaxed.any() and float(relax.stats.tv_bound.sum()) > 0
        assert exact.stats.relaxed is None and exact.stats.tv_bound is None


@pytest.mark.parametrize("rule", [LanternAcceptance(k=8, delta=0.2), LanternAcceptance(k=8, lam=4.0),
                                  GroupedAcceptance(group_size=14, max_dist=1.0), ExactAcceptance()])
def test_verification_never_syncs(rule, monkeypatch):
    V = 64
    p, q, d, u = _dists(8, 7, V, seed=6)
    rule.prepare(FakeModel(V))
    counter = SyncCounter(monkeypatch)
    verdict = rule.verify(p, q, d, u)
    rule.residual(p[:, 0], q[:, 0])
    assert counter.count == 0
    assert verdict.accept.shape == (8, 7)


@pytest.mark.parametrize("acceptance", ["exact", "lantern", "gsd"])
def test_sjd_with_relaxed_rules_syncs_once_per_step(acceptance, monkeypatch):
    model = tiny_gpt(vocab=16, grid=4, seed=3, sharpness=6.0)
    sampler = get_sampler("sjd", window=4, acceptance=acceptance)
    labels = torch.tensor([0, 1, 2])
    sampler.rule.prepare(model)  # the table is built once per codebook, outside the loop
    counter = SyncCounter(monkeypatch)
    out = sampler.sample(model, labels, SamplingConfig(cfg_scale=2.0), generator=torch.Generator().manual_seed(0))
    steps = len(out.stats.accepted)
    # one loop condition per step, plus the setup (condition check, prepare's cache key) and the stats
    assert counter.count <= steps + 8
