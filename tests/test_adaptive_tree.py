"""Adaptive draft trees (``tree="adaptive"``, after ADT-Tree, arXiv 2512.21857): each row verifies a sub-tree of the
static tree chosen from its committed history, as a validity mask on the one padded tree. The static default is
unchanged, the exact rule stays lossless (by enumeration, with a power check: a controller that peeks at the step's
target output is caught), the shape is a function of committed history only, rows batch as they run alone, depth
follows predictability, and bad options are refused."""
import pytest
import torch
from helpers import assert_rows_match_alone, chi_square_pvalue, exact_distribution, tiny_gpt

from vargen.models.llamagen import GPT
from vargen.samplers import get_sampler
from vargen.samplers.base import SamplingConfig
from vargen.samplers.tree import AdaptiveShape

PLAIN = SamplingConfig(temperature=1.0)
CFG_TOPK = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=3)


def _head(target, seed=5):
    from vargen.models.draft_head import DraftHead, DraftHeadConfig

    torch.manual_seed(seed)
    return DraftHead(DraftHeadConfig.from_target(target.config)).to(target.dtype)


def _draw(sampler, model, config, rows, seed, label=1):
    return sampler.sample(model, torch.full((rows,), label), config, torch.Generator().manual_seed(seed)).tokens


def _record_shapes(monkeypatch):
    """Log every proposal's ``(n, depth, width)`` as the controller hands it out."""
    log = []
    record = AdaptiveShape.record

    def logged(self, n, valid):
        log.append((n.clone(), self.depth.clone(), self.width.clone()))
        return record(self, n, valid)

    monkeypatch.setattr(AdaptiveShape, "record", logged)
    return log


def test_static_is_the_default_and_a_full_range_is_the_static_tree():
    """``tree="static"`` is the default, and an adaptive tree whose range holds only the static shape verifies the
    static tree: the same tokens, forwards and drafter passes, for Jacobi and draft proposers, chains and trees."""
    model, draft = tiny_gpt(vocab=16, grid=4, seed=4), tiny_gpt(vocab=16, grid=4, seed=7)
    head = _head(model)
    labels, config = torch.tensor([0, 1, 2, 1]), SamplingConfig(temperature=1.0, cfg_scale=2.0)
    cases = [("sjd", dict(window=5), dict(adapt_min_depth=4)),
             ("sjd-pac", dict(window=6, tree_tail=1), dict(adapt_min_depth=5, adapt_min_width=4)),
             ("sd", dict(draft=draft, gamma=3, tree_width=3), dict(adapt_min_depth=3, adapt_min_width=3)),
             ("lantern++", dict(draft=head, gamma=3, codebook=model.codebook()), dict(adapt_min_depth=3,
                                                                                       adapt_min_width=4))]
    for name, options, full in cases:
        runs = [get_sampler(name, **options, **extra).sample(model, labels, config,
                                                             [torch.Generator().manual_seed(s) for s in range(4)])
                for extra in ({}, dict(tree="static"), dict(tree="adaptive", **full))]
        for other in runs[1:]:
            assert torch.equal(other.tokens, runs[0].tokens), name
            assert other.stats.forward_passes == runs[0].stats.forward_passes
            assert other.stats.draft_forward_passes == runs[0].stats.draft_forward_passes
        assert runs[0].stats.draft.tree is None and runs[2].stats.draft.tree == "adaptive"


@pytest.mark.parametrize("name,options,config", [
    ("sjd-pac", dict(window=4, tree_width=3, adapt_min_width=1), PLAIN),
    ("sjd", dict(window=4, coupled=True), CFG_TOPK),  # a chain: the depth alone adapts
    ("sd", dict(gamma=3, tree_width=3, adapt_min_width=1), PLAIN),  # the draft head (filled in below), drafting
                                                                    # only as deep as the deepest row
])
def test_adaptive_trees_are_lossless_with_the_exact_rule(name, options, config):
    model = tiny_gpt()  # vocab 6, 2x2 grid: 1296 sequences
    if name == "sd":
        options = dict(options, draft=_head(model))
    sampler = get_sampler(name, tree="adaptive", **options)
    out = sampler.sample(model, torch.full((10000,), 1), config, torch.Generator().manual_seed(123))
    d = out.stats.draft
    assert d.adaptive_depth < options.get("gamma", options.get("window", 0) - 1)  # the shapes did adapt
    assert chi_square_pvalue(out.tokens, exact_distribution(model, 1, config)) > 1e-3


@pytest.mark.parametrize("name,options", [
    ("sjd-pac", dict(window=4, tree_width=3, tree_tail=1, adapt_min_width=1)),
    ("sd", dict(gamma=3, tree_width=3, adapt_min_width=1)),
])
def test_any_shape_fixed_before_the_step_is_lossless(monkeypatch, name, options):
    """The mask machinery under arbitrary shapes: a controller drawing every row's depth and width at random (from
    its own generator, so not from the step's output) keeps the exact law."""
    model = tiny_gpt()
    if name == "sd":
        options = dict(options, draft=_head(model))
    observe, g = AdaptiveShape.observe, torch.Generator().manual_seed(0)

    def random_shapes(self, start, committed, accepted, proposed):
        observe(self, start, committed, accepted, proposed)
        (lo, hi), (wlo, whi) = self.depth_range, self.width_range
        self.depth = torch.randint(lo, hi + 1, self.depth.shape, generator=g)
        self.width = torch.randint(wlo, whi + 1, self.width.shape, generator=g)

    monkeypatch.setattr(AdaptiveShape, "observe", random_shapes)
    out = get_sampler(name, tree="adaptive", **options).sample(model, torch.full((8000,), 1), PLAIN,
                                                               torch.Generator().manual_seed(321))
    assert out.stats.draft.adaptive_width < 3 and out.stats.draft.adaptive_depth < 3
    assert chi_square_pvalue(out.tokens, exact_distribution(model, 1, PLAIN)) > 1e-3


def test_a_controller_that_peeks_at_the_target_is_not_lossless(monkeypatch):
    """The power check: the same adaptive tree, but with its depth cut, per step, where the target disagrees with a
    chain draft (``p < q`` at the parent) -- a shape read from the step's own output -- fails the same test."""
    from vargen.samplers.verify import Committer

    model = tiny_gpt()
    exact = exact_distribution(model, 1, PLAIN)
    sampler = get_sampler("sjd-pac", window=4, tree_width=3, adapt_min_width=1, tree="adaptive")  # lossless above
    commit_tree = Committer.commit_tree

    def peeking(self, p, proposal, u_acc, u_res, n, step):
        tree, depth = proposal.tree, torch.tensor(proposal.tree.depth)
        chain = torch.arange(1, tree.chain)  # chain node d at depth d, its parent d - 1
        tok = proposal.tokens[:, chain - 1]
        p_tok = p[:, chain - 1].gather(-1, tok[..., None])[..., 0]
        q_tok = proposal.q[:, chain - 1].gather(-1, tok[..., None])[..., 0]
        deep = (p_tok >= q_tok).long().cumprod(1).sum(1)  # chain drafts the target agrees with
        proposal.valid = proposal.valid & (depth[None, 1:] <= deep[:, None])
        return commit_tree(self, p, proposal, u_acc, u_res, n, step)

    monkeypatch.setattr(Committer, "commit_tree", peeking)
    assert chi_square_pvalue(_draw(sampler, model, PLAIN, 10000, seed=123), exact) < 1e-6


def test_the_shape_is_a_function_of_committed_history(monkeypatch):
    """Perturbing one step's target output (its p) or its drafts leaves that step's shapes and every earlier one as
    they were (later ones follow the changed history); and a fresh controller fed only each step's ``(n, k, a)``
    reproduces every shape of a run."""
    import vargen.samplers.loop as loop

    model = tiny_gpt(vocab=16, grid=4, seed=3)
    labels, config = torch.tensor([0, 1, 2, 0, 1, 2]), SamplingConfig(temperature=1.0, cfg_scale=2.0)
    sampler = get_sampler("sjd-pac", window=6, tree="adaptive", adapt_min_width=1)
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(6)]  # noqa: E731
    steps = []
    observe = AdaptiveShape.observe

    def watched(self, start, committed, accepted, proposed):
        steps.append((start.clone(), committed.clone(), accepted.clone(), proposed))
        return observe(self, start, committed, accepted, proposed)

    monkeypatch.setattr(AdaptiveShape, "observe", watched)
    shapes = _record_shapes(monkeypatch)
    base = sampler.sample(model, labels, config, gens())
    reference, history = list(shapes), list(steps)

    replay = AdaptiveShape(*sampler.proposer.adaptive)
    replay.start(6, 64, 16, 4, "cpu")
    for (_, depth, width), step in zip(reference, history):
        assert torch.equal(replay.depth, depth) and torch.equal(replay.width, width)
        replay.observe(*step)

    target_step, at = loop.target_step, 3
    for perturb in ("p", "drafts"):
        def perturbed(session, committer, tokens, q, valid, *rest, _kind=perturb):
            if int(rest[3]) == at:  # rest: u_acc, u_res, n, step, kv_len, tree
                if _kind == "drafts":
                    tokens = (tokens + 1) % model.vocab_size
                else:
                    probs = session.probs
                    session.probs = lambda logits, first: probs(logits, first).flip(-1)
                    try:
                        return target_step(session, committer, tokens, q, valid, *rest)
                    finally:
                        del session.probs
            return target_step(session, committer, tokens, q, valid, *rest)

        monkeypatch.setattr(loop, "target_step", perturbed)
        shapes.clear()
        out = sampler.sample(model, labels, config, gens())
        assert not torch.equal(out.tokens, base.tokens), perturb  # the history did change
        for s in range(at):  # the shapes of steps 1 .. at (index 0 is step 1) were fixed before step `at` ran
            assert torch.equal(shapes[s][1], reference[s][1]) and torch.equal(shapes[s][2], reference[s][2]), perturb
        later = range(at, min(len(shapes), len(reference)))
        assert any(not torch.equal(shapes[s][1], reference[s][1]) for s in later), perturb


@pytest.mark.parametrize("name,options", [
    ("sjd-pac", dict(window=5, tree_width=3, adapt_min_width=1)),
    ("sd", dict(gamma=3, tree_width=3, adapt_min_width=2)),  # the drafter stops at the batch's deepest row
])
def test_adaptive_batch_rows_equal_rows_alone(name, options):
    model = tiny_gpt(vocab=16, grid=4, seed=2, dtype=torch.float64)
    if name == "sd":
        options = dict(options, draft=_head(model))
    sampler = get_sampler(name, tree="adaptive", **options)
    config = SamplingConfig(temperature=1.0, cfg_scale=1.5)
    assert_rows_match_alone(sampler, model, torch.tensor([0, 1, 2, 0]), config, seeds=[11, 12, 13, 14])


class HalfFlat(GPT):
    """A tiny GPT whose top half of the image is flat (token 0 there, whatever came before: a draft of it is accepted
    once seen) and whose bottom half keeps the random model's context-dependent distributions."""

    def _run(self, h, plan, cache, return_hidden=False):
        out = super()._run(h, plan, cache, return_hidden)
        logits = out[0] if return_hidden else out
        if plan.index is None:  # the prefix: its last entry predicts token 0
            nxt = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
        else:
            nxt = plan.index[:, : logits.shape[1]] + 1
        flat = nxt < self.num_tokens // 2
        logits = logits.clone()
        logits[..., 0] += 40.0 * flat
        return (logits, out[1]) if return_hidden else logits


@pytest.mark.parametrize("name,options", [
    ("sjd-pac", dict(window=8, tree_width=3, init="horizontal")),
    ("sd", dict(gamma=6)),
])
def test_depth_is_larger_in_the_flat_half_than_in_the_noisy_half(monkeypatch, name, options):
    model = tiny_gpt(vocab=16, grid=8, seed=1, sharpness=3)
    model.__class__ = HalfFlat
    if name == "sd":
        draft = tiny_gpt(vocab=16, grid=8, seed=2, sharpness=3)
        draft.__class__ = HalfFlat
        options = dict(options, draft=draft)
    shapes = _record_shapes(monkeypatch)
    out = get_sampler(name, tree="adaptive", **options).sample(model, torch.tensor([0, 1, 2, 1]), PLAIN,
                                                              torch.Generator().manual_seed(0))
    n = torch.stack([s[0] for s in shapes])
    depth = torch.stack([s[1] for s in shapes]).float()
    active = n < model.num_tokens
    flat = active & (n < 32)
    noisy = active & (n >= 32)
    assert flat.sum() > 10 and noisy.sum() > 10
    assert depth[flat].mean() > depth[noisy].mean() + 1.0, (depth[flat].mean(), depth[noisy].mean())
    d = out.stats.draft
    assert 1.0 <= d.adaptive_depth < options.get("gamma", options.get("window", 0) - 1)


@pytest.mark.slow
def test_compiled_adaptive_tree_gives_the_eager_tokens_in_one_shape():
    """The compiled step sees one tree shape (the padded static tree) and gives the eager tokens."""
    model = tiny_gpt(vocab=16, grid=4, seed=2, n_layer=1, dim=32)
    labels, config = torch.tensor([0, 1, 2]), SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=8)
    sampler = get_sampler("sjd-pac", window=3, tree_width=2, tree="adaptive")
    from torch._dynamo.utils import counters

    eager = sampler.sample(model, labels, config, torch.Generator().manual_seed(4))
    compiled = sampler.sample(model, labels, config, torch.Generator().manual_seed(4), compile=True)
    assert torch.equal(eager.tokens, compiled.tokens)
    assert eager.stats.forward_passes == compiled.stats.forward_passes
    graphs = counters["stats"].get("unique_graphs", 0)  # other rows, other shapes per step: nothing new compiles
    sampler.sample(model, labels, config, torch.Generator().manual_seed(5), compile=True)
    assert counters["stats"].get("unique_graphs", 0) == graphs


@pytest.mark.parametrize("name,options,match", [
    ("sjd", dict(tree="dynamic"), "tree must be one of static, adaptive"),
    ("sjd", dict(adapt_min_depth=2), "adapt_min_depth and adapt_min_width apply with tree=adaptive"),
    ("sjd-pac", dict(adapt_min_width=2), "adapt_min_depth and adapt_min_width apply with tree=adaptive"),
    ("sjd", dict(window="auto", tree="adaptive"), "window=auto does not size trees"),
    ("sjd", dict(window=1, tree="adaptive"), "tree=adaptive needs drafts"),
    ("sjd", dict(window=4, tree="adaptive", adapt_min_depth=4),
     r"adapt_min_depth=4 exceeds the drafts per step \(3, from window=4\)"),
    ("sjd-pac", dict(window=4, tree="adaptive", adapt_min_width=5), "adapt_min_width=5 exceeds tree_width=4"),
    ("sjd", dict(tree="adaptive", adapt_min_depth=0), "adapt_min_depth must be >= 1"),
    ("sd", dict(gamma="auto", tree="adaptive"), "gamma=auto does not size trees"),
    ("sd", dict(gamma=3, tree="adaptive", adapt_min_depth=5),
     r"adapt_min_depth=5 exceeds the drafts per step \(3, from gamma=3\)"),
    ("sd", dict(gamma=3, tree="adaptive", adapt_min_width=2), "adapt_min_width=2 exceeds tree_width=1"),
])
def test_bad_options_give_one_line_errors_naming_the_option(name, options, match):
    with pytest.raises(ValueError, match=match) as err:
        get_sampler(name, **options)
    assert "\n" not in str(err.value)
