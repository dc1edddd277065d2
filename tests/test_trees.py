"""Token trees: the models' tree forward, the recursive multi-candidate verification, SJD-PAC's proactive drafting
and adaptive continuation (= the coupled update), and the official longest-path selection (lossy, by test)."""
import pytest
import torch
from helpers import (
    assert_rows_match_alone,
    chi_square_pvalue,
    exact_distribution,
    tiny_gpt,
)

from vargen.samplers import get_sampler
from vargen.samplers.base import SamplingConfig
from vargen.samplers.tree import proactive_tree
from vargen.testing import check_token_model

GREEDY = SamplingConfig(temperature=1.0, top_k=1)
CASES = {
    "plain": SamplingConfig(temperature=1.0),
    "cfg_topk": SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=3),
}


def test_every_tree_model_passes_the_tree_conformance_check():
    """``check_token_model`` runs a tree forward against each node's path and ``keep_tree_path_`` on every token
    model (trees are decode plans: every family runs them)."""
    from test_cosmos_sampling import tiny_cosmos

    from vargen.models.cosmos import VideoCondition

    report = check_token_model(tiny_gpt(vocab=16, grid=4, seed=1), torch.tensor([0, 2]))
    assert report["tree"] < 1e-4
    model = tiny_cosmos(shape=(3, 2, 3), vocab=11)
    report = check_token_model(model, VideoCondition(torch.randint(0, 11, (2, 6), generator=torch.Generator())))
    assert report["tree"] < 1e-4


def test_proactive_tree_layout():
    tree, level, rank = proactive_tree(6, 3, 3)
    assert tree.size == 6 + 2 + (2 + 2 * 3)  # chain, 2 siblings at depth 1, their and the chain's children
    assert tree.parent[:6] == (-1, 0, 1, 2, 3, 4)
    children = tree.tensors("cpu")["children"]
    assert children[0].tolist() == [1, 6, 7] and children[1].tolist() == [2, 8, 9]
    # rank 0 of a depth is the chain's draft: the same token under every parent
    assert [rank[i] for i in children[6].tolist()] == [0, 1, 2] and {level[i] for i in children[7].tolist()} == {2}


@pytest.mark.parametrize("width,depth", [(2, 3), (4, 3), (3, 4)])
def test_tree_sjd_greedy_equals_ar_greedy(width, depth):
    model = tiny_gpt(vocab=16, grid=4, seed=1)
    labels = torch.tensor([0, 1, 2, 1])
    ref = get_sampler("ar").sample(model, labels, GREEDY).tokens
    for window in (2, 5, 16):
        out = get_sampler("sjd", window=window, tree_width=width, tree_depth=depth).sample(model, labels, GREEDY)
        assert torch.equal(out.tokens, ref), window


def _draw(sampler, model, config, n_rows, seed, label=1):
    g = torch.Generator().manual_seed(seed)
    return sampler.sample(model, torch.full((n_rows,), label), config, generator=g).tokens


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("options", [
    dict(window=4, tree_width=3, tree_depth=3),  # proactive drafting alone
    dict(window=3, tree_width=2, tree_depth=3),  # several steps: drafts carried over a tree
    dict(window=4, tree_width=4, tree_depth=3, coupled=True),  # with adaptive continuation (the coupled update)
    dict(window=3, tree_width=6, tree_depth=2, coupled=True, init="horizontal_sample"),  # every token a candidate
])
def test_tree_verification_is_lossless(case, options):
    model = tiny_gpt()  # vocab 6, 2x2 grid: 1296 sequences
    config = CASES[case]
    samples = _draw(get_sampler("sjd", **options), model, config, 10000, seed=123)
    assert chi_square_pvalue(samples, exact_distribution(model, 1, config)) > 1e-3


def test_official_longest_path_selection_is_not_lossless():
    """The published claim (SJD-PAC, arXiv 2603.18599) does not hold for the official code's choice of the longest
    accepted path: the same tree, verified by the recursive rule, passes (test_tree_verification_is_lossless); the
    longest-path choice is rejected. This doubles as the power check of the chi-square test on trees."""
    model = tiny_gpt()
    config = CASES["plain"]
    exact = exact_distribution(model, 1, config)
    options = dict(window=4, tree_width=4, tree_depth=3, coupled=True)
    longest = get_sampler("sjd", acceptance="longest", **options)
    assert chi_square_pvalue(_draw(longest, model, config, 20000, seed=7), exact) < 1e-6
    assert chi_square_pvalue(_draw(get_sampler("sjd", **options), model, config, 20000, seed=7), exact) > 1e-3


@pytest.mark.parametrize("coupled", [False, True])
def test_tree_batch_rows_equal_rows_alone(coupled):
    model = tiny_gpt(vocab=16, grid=4, seed=2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0])
    config = SamplingConfig(temperature=1.0, cfg_scale=1.5)
    sampler = get_sampler("sjd", window=5, coupled=coupled, tree_width=3, tree_depth=3)
    assert_rows_match_alone(sampler, model, labels, config, seeds=[11, 12, 13, 14])


def test_trees_compress_more_steps_than_the_chain():
    model = tiny_gpt(vocab=16, grid=4, seed=3, sharpness=2.0)
    labels = torch.tensor([0, 1, 2] * 20)
    config = SamplingConfig(temperature=1.0)
    chain = get_sampler("sjd", window=8, coupled=True).sample(model, labels, config, torch.Generator().manual_seed(0))
    tree = get_sampler("sjd", window=8, coupled=True, tree_width=4).sample(model, labels, config,
                                                                           torch.Generator().manual_seed(0))
    per_step = lambda s: torch.stack(s.accepted[1:]).float().mean()
    assert per_step(tree.stats) > per_step(chain.stats)
    assert tree.stats.draft.tree_nodes == 8 + 3 + (3 + 4 * 3)


def test_tree_options_are_checked_before_work():
    with pytest.raises(ValueError, match="window=auto"):
        get_sampler("sjd", window="auto", tree_width=3)
    with pytest.raises(ValueError, match="evicting"):
        get_sampler("sjd", window=3, tree_width=2, kv_budget=12).check(tiny_gpt(vocab=6, grid=4))
    with pytest.raises(ValueError, match="tree_width"):
        get_sampler("sjd", window=3, tree_width=0)


def _head(target):
    from vargen.models.draft_head import DraftHead, DraftHeadConfig

    torch.manual_seed(5)
    return DraftHead(DraftHeadConfig.from_target(target.config)).to(target.dtype)


@pytest.mark.parametrize("case", sorted(CASES))
def test_static_draft_trees_are_lossless_with_the_exact_rule(case):
    model = tiny_gpt()
    config = CASES[case]
    sampler = get_sampler("sd", draft=_head(model), gamma=3, tree_width=3, tree_depth=3)
    samples = _draw(sampler, model, config, 10000, seed=123)
    assert chi_square_pvalue(samples, exact_distribution(model, 1, config)) > 1e-3


def test_lantern_pp_reduces_to_the_exact_tree_at_zero_relaxation():
    """LANTERN++ with lam = 1 (no neighbour may join) commits exactly the exact rule's tokens from the same uniforms;
    with lam > 1 it moves tokens and reports a positive TV bound."""
    model = tiny_gpt(vocab=16, grid=4, seed=4)
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    config = SamplingConfig(temperature=1.0)
    head = _head(model)
    tree = dict(draft=head, gamma=3, tree_width=3, tree_depth=3)
    exact = get_sampler("sd", **tree).sample(model, labels, config, torch.Generator().manual_seed(3))
    zero = get_sampler("lantern++", lam=1.0, codebook=model.codebook(), **tree).sample(
        model, labels, config, torch.Generator().manual_seed(3))
    assert torch.equal(zero.tokens, exact.tokens)
    assert float(zero.stats.tv_bound.sum()) == 0.0
    relaxed = get_sampler("lantern++", lam=20.0, k=8, codebook=model.codebook(), **tree).sample(
        model, labels, config, torch.Generator().manual_seed(3))
    assert float(relaxed.stats.tv_bound.sum()) > 0 and relaxed.stats.draft.tree_nodes == 4 + 2 + (2 + 2 * 3)


def test_draft_tree_rows_equal_rows_alone():
    model = tiny_gpt(vocab=16, grid=4, seed=2, dtype=torch.float64)
    config = SamplingConfig(temperature=1.0, cfg_scale=1.5)
    sampler = get_sampler("lantern++", draft=_head(model), gamma=3, codebook=model.codebook())
    assert_rows_match_alone(sampler, model, torch.tensor([0, 1, 2, 0]), config, seeds=[11, 12, 13, 14])


def test_a_draft_models_cache_follows_the_accepted_tree_path(monkeypatch):
    """A draft *model* drafts one chain; the accepted path of its tree may leave that chain at any depth. Before every
    proposal the draft cache must hold the committed tokens (it re-feeds enough of them): its K/V of positions
    ``< n`` equal a fresh decode of those tokens; and the sampler stays lossless."""
    from vargen.samplers.proposers.draft import DraftModelProposer
    from vargen.testing import decode

    model, draft = tiny_gpt(vocab=16, grid=4, seed=1), tiny_gpt(vocab=16, grid=4, seed=7)
    checked, stale = [0], []
    catch_up = DraftModelProposer._catch_up

    def watched(self, seq, n):
        logits = catch_up(self, seq, n)
        cache, rows = self.session.cache, self.session.rows
        fresh = draft.new_cache(rows, draft.num_tokens + 8)
        draft.prefill(self.session.cond, fresh)
        upto = int(n.min())
        tokens = seq[:, :upto].repeat(rows // seq.shape[0], 1)
        decode(draft, tokens, torch.zeros(rows, dtype=torch.long), fresh)
        end = int(cache.seq(torch.tensor(upto)))
        stale.append(float((cache.k[0][:, :, :end] - fresh.k[0][:, :, :end]).abs().max()))
        checked[0] += 1
        return logits

    monkeypatch.setattr(DraftModelProposer, "_catch_up", watched)
    config = SamplingConfig(temperature=1.0, cfg_scale=2.0)
    out = get_sampler("sd", draft=draft, gamma=3, tree_width=3, tree_depth=3).sample(
        model, torch.tensor([0, 1, 2, 1]), config, torch.Generator().manual_seed(0))
    assert checked[0] > 5 and max(stale) < 1e-5, stale
    assert out.tokens.shape == (4, 16)


@pytest.mark.parametrize("case", ["plain", "cfg_topk"])
def test_draft_model_trees_are_lossless(case):
    model, draft = tiny_gpt(), tiny_gpt(seed=3)
    config = CASES[case]
    sampler = get_sampler("sd", draft=draft, gamma=3, tree_width=3, tree_depth=3)
    samples = _draw(sampler, model, config, 10000, seed=321)
    assert chi_square_pvalue(samples, exact_distribution(model, 1, config)) > 1e-3
