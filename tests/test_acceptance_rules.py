"""LANTERN, GSD and COOL-SD acceptance rules: zero relaxation is the exact rule token for token, the sets and
bounds follow the papers, the residual is Cool-SD's TV-optimal one, relaxation accepts more, and
verification never syncs with the host."""
import pytest
import torch

from helpers import SyncCounter, tiny_gpt
from vargen import SamplingConfig, get_sampler
from vargen.samplers.acceptance import (CoolAcceptance, ExactAcceptance, GroupedAcceptance, LanternAcceptance, Verdict,
                                        get_rule, neighbour_table, residual)
from vargen.samplers.proposers.draft import SpeculativeSampler

ZERO = [("lantern", dict(delta=0.0, k=5)), ("lantern", dict(lam=1.0, k=5)), ("lantern", dict(delta=0.0, lam=1.0, k=3)),
        ("gsd", dict(group_size=1, prob_gap=1.0)), ("cool", dict(delta=1.0, schedule="uniform")),
        ("cool", dict(delta=1.0))]  # exponential from 1, floor 1: every weight is 1
RELAXED = {"lantern": dict(delta=0.5, lam=None), "gsd": dict(group_size=6), "cool": dict(delta=3.0)}


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
        big = dict(options, **RELAXED[name])
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
                        lambda s: s.draft_acceptance_rate)):
        exact = make(acceptance="exact").sample(model, labels, config, generator=torch.Generator().manual_seed(0))
        relax = make(acceptance=name, **options).sample(model, labels, config, generator=torch.Generator().manual_seed(0))
        assert rate(relax.stats) > 1.1 * rate(exact.stats)
        assert relax.stats.relaxed.any() and float(relax.stats.tv_bound.sum()) > 0
        assert exact.stats.relaxed is None and exact.stats.tv_bound is None


@pytest.mark.parametrize("rule", [LanternAcceptance(k=8, delta=0.2), LanternAcceptance(k=8, lam=4.0),
                                  GroupedAcceptance(group_size=14, max_dist=1.0), CoolAcceptance(delta=2.0, floor=None),
                                  ExactAcceptance()])
def test_verification_never_syncs(rule, monkeypatch):
    V = 64
    p, q, d, u = _dists(8, 7, V, seed=6)
    rule.prepare(FakeModel(V))
    counter = SyncCounter(monkeypatch)
    verdict = rule.verify(p, q, d, u)
    rule.residual(p[:, 0], q[:, 0])
    assert counter.count == 0
    assert verdict.accept.shape == (8, 7)


@pytest.mark.parametrize("acceptance", ["exact", "lantern", "gsd", "cool"])
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


# ---------------------------------------------------------------------------------------------------
# The rules decide as the official code does (transcribed from its per-candidate Python loops), and
# vargen's variants are named options
# ---------------------------------------------------------------------------------------------------


def official_lantern_accepts(p, q, x, u, book, k, delta=None, lam=None):
    """LANTERN's static-tree test for one candidate: neighbours by raw Euclidean distance (self excluded),
    the largest prefix whose cumulative p stays within the bound, accept iff u <= (p(x) + S) / q(x)."""
    d = torch.cdist(book[x][None], book)[0]
    d[x] = float("inf")
    nearest = torch.sort(d, stable=True).indices[:k]
    cum = torch.cumsum(p[nearest].double(), 0)
    bound = (lam - 1) * float(p[x]) if lam is not None else delta
    inside = (cum <= bound).nonzero()
    px = float(p[x]) + (float(cum[inside[-1, 0]]) if inside.numel() else 0.0)
    return u <= px / float(q[x])


def official_gsd_accepts(p, q, x, u, G, gap):
    """GSD's test for one draft: ascending sort, the slice [r - G//2 : r + G - G//2] (Python slicing: a
    negative start leaves it empty for any realistic vocabulary), keep |p(g) - p(x)| < gap; an empty
    slice raises inside the official try-block, which falls back to the token ratio."""
    order = torch.sort(p, stable=True).indices
    r = int((order == x).nonzero()[0, 0])
    group = order[r - G // 2 : r + G - G // 2] if r - G // 2 >= 0 else order[:0]
    if group.numel() == 0:
        return u < float(p[x]) / float(q[x])
    keep = (p[group] - p[x]).abs() < gap
    return u < float(p[group][keep].sum()) / float(q[group][keep].sum())


def test_lantern_default_makes_the_official_decisions():
    V, k = 24, 6
    g = torch.Generator().manual_seed(11)
    book = torch.randn(V, 4, generator=g) * torch.rand(V, 1, generator=g) * 3  # rows of different norms
    p, q, d, u = _dists(8, 6, V, seed=12)
    for opts in (dict(delta=0.2), dict(lam=4.0), dict(delta=0.05)):
        rule = LanternAcceptance(k=k, **opts)
        rule.prepare(FakeModel(V, book))
        got = rule.verify(p, q, d, u).accept
        want = torch.tensor([[official_lantern_accepts(p[b, j], q[b, j], int(d[b, j]), float(u[b, j]), book, k, **opts)
                              for j in range(6)] for b in range(8)])
        assert torch.equal(got, want), opts
        mine = LanternAcceptance(k=k, variant="vargen", **opts)
        mine.prepare(FakeModel(V, book))
        assert mine.aggregate_q and mine.normalize and not rule.aggregate_q and not rule.normalize
    assert not torch.equal(mine.verify(p, q, d, u).accept, got)  # the named variant really differs


def test_gsd_default_makes_the_official_decisions():
    V, G = 64, 14
    p, q, d, u = _dists(8, 6, V, seed=13)  # p has zeros (a top-k cut) that drafts can land on
    rule = GroupedAcceptance(group_size=G, prob_gap=0.15)
    got = rule.verify(p, q, d, u).accept
    want = torch.tensor([[official_gsd_accepts(p[b, j], q[b, j], int(d[b, j]), float(u[b, j]), G, 0.15)
                          for j in range(6)] for b in range(8)])
    assert torch.equal(got, want)


def _one(p, q):
    return torch.tensor([[p]]), torch.tensor([[q]])


def test_gsd_official_window_holds_less_likely_tokens():
    """G=2, draft 2: the official ascending window pairs it with token 3 (p=.1) and rejects at u=.55;
    vargen's variant pairs it with token 1 (p=.25) and accepts."""
    p, q = _one([.3, .25, .2, .1, .06, .05, .03, .01], [.05, .05, .6, .05, .05, .1, .05, .05])
    d, u = torch.tensor([[2]]), torch.tensor([[0.55]], dtype=torch.float64)
    assert not GroupedAcceptance(group_size=2).verify(p, q, d, u).accept.item()
    assert GroupedAcceptance(group_size=2, variant="vargen").verify(p, q, d, u).accept.item()
    assert official_gsd_accepts(p[0, 0], q[0, 0], 2, 0.55, 2, 0.15) is False


def test_gsd_official_empty_slice_falls_back_to_the_token_ratio():
    """The least likely draft (rank 0 < G/2): the official slice is empty, so the plain ratio p/q decides
    (0.01 / 0.05 = 0.2); vargen's truncated window would credit its neighbours."""
    p, q = _one([.3, .25, .2, .1, .06, .05, .03, .01], [.05, .05, .6, .05, .05, .1, .05, .05])
    d = torch.tensor([[7]])
    for u, accept in ((0.19, True), (0.21, False)):
        uu = torch.tensor([[u]], dtype=torch.float64)
        assert GroupedAcceptance(group_size=4).verify(p, q, d, uu).accept.item() is accept
    assert GroupedAcceptance(group_size=4, variant="vargen").verify(p, q, d, torch.tensor([[0.21]], dtype=torch.float64)).accept.item()


def test_gsd_official_counts_zero_probability_members_in_q():
    """Under top-k, tokens with p = 0 pass the gap test when p(x) < gap and add their q to Q(G) (official);
    vargen's variant keeps them out."""
    p, q = _one([.6, .3, .1, 0.0, 0.0, 0.0], [.05, .05, .3, .1, .25, .25])
    d, u = torch.tensor([[2]]), torch.tensor([[0.2]], dtype=torch.float64)
    rule = GroupedAcceptance(group_size=4)  # ascending ranks 1..4 around token 2: tokens 4, 5, 2, 1
    P, Q, _, _ = rule._set_masses(p, q, d[..., None], rule._context(p))
    assert float(P) == pytest.approx(0.1) and float(Q) == pytest.approx(0.3 + 0.25 + 0.25)
    assert not rule.verify(p, q, d, u).accept.item()  # 0.1 / 0.8 < 0.2
    assert GroupedAcceptance(group_size=4, variant="vargen").verify(p, q, d, u).accept.item()  # 0.1 / 0.3


def test_neighbour_tables_are_keyed_on_the_codebook_content():
    """Two codebooks with the same sum (the old key) get their own tables."""
    V = 10
    a = torch.randn(V, 3, generator=torch.Generator().manual_seed(1))
    b = a[torch.randperm(V, generator=torch.Generator().manual_seed(2))].clone()
    b[0, 0] += 1.0
    b[1, 0] -= 1.0  # same sum and abs-sum shape as before, different content
    ra, rb = LanternAcceptance(k=3), LanternAcceptance(k=3)
    ra.prepare(FakeModel(V, a))
    rb.prepare(FakeModel(V, b))
    assert torch.equal(ra.table, neighbour_table(a, 3, normalize=False))
    assert torch.equal(rb.table, neighbour_table(b, 3, normalize=False))
    assert not torch.equal(ra.table, rb.table)


# ---------------------------------------------------------------------------------------------------
# The reported TV bound bounds the real distance (enumerated), and the old per-draft figure did not
# ---------------------------------------------------------------------------------------------------


class DraftCreditOnly(LanternAcceptance):
    """vargen's old figure: P(x) - p(x) at the drawn draft (its expectation is sum q (P - p))."""

    def verify(self, p, q, drafts, u):
        v = super().verify(p, q, drafts, u)
        P, _, pd, _ = (t.squeeze(-1) for t in self._set_masses(p, q, drafts[..., None], None))
        return Verdict(v.accept, tv=P - pd, relaxed=v.relaxed, residual=v.residual)


def _sequence_tv(tokens, model, config):
    from helpers import exact_distribution

    exact = exact_distribution(model, 1, config)  # itertools.product order = base-V numbering
    law = torch.tensor(list(exact.values()), dtype=torch.float64)
    V, N = model.vocab_size, tokens.shape[1]
    idx = (tokens * V ** torch.arange(N - 1, -1, -1)).sum(1)
    counts = torch.bincount(idx, minlength=V**N).double() / tokens.shape[0]
    return 0.5 * float((counts - law).abs().sum())


TV_RULES = [("lantern", dict(delta=0.3, k=3)), ("lantern", dict(delta=0.3, k=3, variant="vargen")),
            ("lantern", dict(lam=20.0, k=3)), ("gsd", dict(group_size=4, prob_gap=0.3)),
            ("cool", dict(delta=3.0, decay=0.3)), ("cool", dict(delta=4.0, schedule="linear", decay=1.0, floor=None))]


@pytest.fixture(scope="module")
def tv_setup():
    model = tiny_gpt(vocab=4, grid=2, seed=5, sharpness=3.0)  # 256 sequences
    flat = tiny_gpt(vocab=4, grid=2, seed=9, sharpness=0.2, n_layer=1)  # a drafter far from the target
    config = SamplingConfig(temperature=1.0)
    M = 20000
    exact = get_sampler("sd", draft=flat, gamma=3).sample(model, torch.full((M,), 1), config,
                                                           generator=torch.Generator().manual_seed(0))
    slack = 0.01 + 2 * _sequence_tv(exact.tokens, model, config)  # the empirical TV's own noise floor, doubled
    return model, flat, config, M, slack


@pytest.mark.parametrize("proposer", ["sjd", "sd"])
@pytest.mark.parametrize("name,options", TV_RULES)
def test_reported_tv_bound_bounds_the_sequence_tv(tv_setup, proposer, name, options):
    model, flat, config, M, slack = tv_setup
    extra = dict(window=4) if proposer == "sjd" else dict(draft=flat, gamma=3)
    out = get_sampler(proposer, acceptance=name, **options, **extra).sample(
        model, torch.full((M,), 1), config, generator=torch.Generator().manual_seed(1))
    tv = _sequence_tv(out.tokens, model, config)
    assert tv > slack, "the rule must move the distribution, or the check is vacuous"
    assert tv <= out.stats.mean_tv_bound + slack, (tv, out.stats.mean_tv_bound)
    assert out.stats.tv_bound.shape == (M,)


def test_tv_bound_check_has_power_and_is_batch_independent(tv_setup):
    model, flat, config, M, slack = tv_setup
    old = get_sampler("sd", draft=flat, gamma=3, acceptance=DraftCreditOnly(delta=0.3, k=1)).sample(
        model, torch.full((M,), 1), config, generator=torch.Generator().manual_seed(1))
    assert _sequence_tv(old.tokens, model, config) > old.stats.mean_tv_bound + slack  # the old figure fails
    small = get_sampler("sd", draft=flat, gamma=3, acceptance="lantern", delta=0.3, k=1).sample(
        model, torch.full((64,), 1), config, generator=[torch.Generator().manual_seed(s) for s in range(64)])
    alone = [get_sampler("sd", draft=flat, gamma=3, acceptance="lantern", delta=0.3, k=1).sample(
        model, torch.full((1,), 1), config, generator=[torch.Generator().manual_seed(s)]).stats.tv_bound
        for s in range(4)]
    assert torch.allclose(small.stats.tv_bound[:4], torch.cat(alone))  # per row, whatever the batch
