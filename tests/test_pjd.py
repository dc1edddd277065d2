"""PJD (parallel Jacobi decoding): AR token for token at window 1, lossless by enumeration one row at a time with the
exact rule (with a power check), the row-causal mask, rows never passing the row above, rows independent in a batch,
every token model with a 2-D grid, bad options refused before work."""
import pytest
import torch
from helpers import assert_rows_match_alone, chi_square_pvalue, exact_distribution, tiny_gpt

from vargen.decode import scattered_plan
from vargen.samplers import get_sampler
from vargen.samplers.acceptance import ExactAcceptance, Verdict
from vargen.samplers.base import SamplingConfig

CONFIG = SamplingConfig(temperature=1.0, cfg_scale=2.0)


def test_window_one_is_autoregressive_token_for_token():
    model = tiny_gpt(vocab=16, grid=4, seed=1)
    labels = torch.tensor([0, 1, 2])
    ar = get_sampler("ar").sample(model, labels, CONFIG, torch.Generator().manual_seed(0))
    out = get_sampler("pjd", window=1, context=1).sample(model, labels, CONFIG, torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens, ar.tokens) and out.stats.forward_passes == ar.stats.forward_passes


class OneSidedRatio(ExactAcceptance):
    """Deliberately broken: accept with probability p(d) instead of min(1, p(d)/q(d))."""

    def verify(self, p, q, drafts, u):
        return Verdict(accept=u < p.gather(-1, drafts[..., None]).squeeze(-1).double())


def _law_pvalue(model, **options):
    config = SamplingConfig(temperature=1.0)
    exact = exact_distribution(model, 1, config)
    out = get_sampler("pjd", **options).sample(model, torch.full((6000,), 1), config, torch.Generator().manual_seed(5))
    return chi_square_pvalue(out.tokens, exact)


def test_one_row_at_a_time_with_the_exact_rule_is_lossless_and_the_test_has_power():
    model = tiny_gpt()  # vocab 6, 2x2 grid: 1296 sequences
    assert _law_pvalue(model, window=2, context=2) > 1e-3
    assert _law_pvalue(model, window=2, context=2, acceptance=OneSidedRatio()) < 1e-6


def test_parallel_rows_are_lossy_and_the_enumeration_sees_it():
    """Rows decoded before the row above is complete follow the model without the rest of that row: on a model whose
    rows depend on each other, the law moves (documented as lossy)."""
    model = tiny_gpt(sharpness=6.0)
    assert _law_pvalue(model, window=2, context=1, lower_rows="residual") < 1e-6


def test_the_row_causal_mask_hides_other_rows_drafts():
    """Entries of one chain see each other and the written positions, never another chain's unwritten entries."""
    model = tiny_gpt(vocab=16, grid=4, seed=1)
    cache = model.new_cache(1, 17)
    model.prefill(torch.tensor([0]), cache)
    written = torch.zeros(1, 17, dtype=torch.bool)
    written[:, [0, 1, 3]] = True  # row 0 holds 0, 1; position 3 holds row 1's proxy
    positions = torch.tensor([[1, 2, 3, 4, 5]])  # row 0: committed 1 + draft 2; row 1: proxy 3 + drafts 4, 5
    chain = torch.tensor([[-1, 0, -1, 1, 1]])
    mask = scattered_plan(cache, positions, written, chain).mask[0, 0]
    slot = cache.seq(torch.arange(6))
    assert mask[1, slot[2]] and mask[4, slot[4]] and mask[4, slot[3]] and mask[3, slot[3]]
    assert not mask[3, slot[2]] and not mask[4, slot[2]]  # row 1 never sees row 0's draft
    assert not mask[1, slot[3]] and not mask[0, slot[2]]  # nor a position after its own


@pytest.mark.parametrize("lower_rows", ["postpone", "residual"])
def test_every_token_once_and_rows_never_pass_the_row_above(lower_rows):
    model = tiny_gpt(vocab=16, grid=4, seed=3, sharpness=6.0)
    out = get_sampler("pjd", window=4, context=1, lower_rows=lower_rows).sample(
        model, torch.tensor([0, 1, 2]), CONFIG, torch.Generator().manual_seed(0))
    steps = out.stats.token_step.view(3, 4, 4)
    assert torch.stack(out.stats.accepted).sum(0).tolist() == [16, 16, 16]
    assert (steps[:, 1:] > steps[:, :-1]).all()  # (r, j) comes after (r - 1, j)
    assert out.stats.forward_passes < 16 and out.stats.rows.rows_in_parallel > 1
    assert out.stats.rows.lower_rows == lower_rows and out.stats.draft.drafts_accepted > 0


def test_committing_the_residual_in_lower_rows_takes_fewer_forwards():
    model = tiny_gpt(vocab=16, grid=4, seed=3, sharpness=6.0)
    labels = torch.tensor([0, 1, 2, 0])
    forwards = {lr: get_sampler("pjd", window=4, context=1, lower_rows=lr).sample(
        model, labels, CONFIG, torch.Generator().manual_seed(0)).stats.forward_passes
        for lr in ("postpone", "residual")}
    assert forwards["residual"] < forwards["postpone"]


def test_rows_of_a_batch_equal_rows_alone():
    model = tiny_gpt(vocab=16, grid=4, seed=2, dtype=torch.float64)
    sampler = get_sampler("pjd", window=3, context=1)
    assert_rows_match_alone(sampler, model, torch.tensor([0, 1, 2, 0]), SamplingConfig(temperature=1.0, cfg_scale=1.5),
                            seeds=[11, 12, 13, 14])


@pytest.mark.parametrize("rule", [dict(acceptance="gsd", group_size=3), dict(acceptance="lantern", k=3, delta=0.2),
                                  dict(acceptance="cool", delta=2.0)])
def test_a_relaxed_rule_plugs_in(rule):
    """Any rule, including one with per-model tables (LANTERN's neighbourhoods, built by ``prepare``)."""
    model = tiny_gpt(vocab=16, grid=4, seed=3)
    out = get_sampler("pjd", window=4, context=2, **rule).sample(model, torch.tensor([0, 1]), CONFIG,
                                                                torch.Generator().manual_seed(0))
    assert out.tokens.shape == (2, 16) and torch.stack(out.stats.accepted).sum(0).tolist() == [16, 16]


@pytest.mark.parametrize("family", ["cosmos", "emu3"])
def test_pjd_on_video_and_on_row_end_sequences(family):
    if family == "cosmos":
        from test_cosmos_sampling import tiny_cosmos

        from vargen.models.cosmos import VideoCondition

        model = tiny_cosmos(shape=(3, 3, 4), vocab=11, seed=3)
        cond = VideoCondition(torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(0)))
        config = SamplingConfig(temperature=1.0)
    else:
        pytest.importorskip("transformers")
        from test_hf_emu3 import NEGATIVE, prompts, tiny_emu3

        from vargen.models.hf import image_lm

        model, cond = image_lm(tiny_emu3(), height=4, width=4, negative=NEGATIVE), prompts()
        config = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=8)
    ar = get_sampler("ar").sample(model, cond, config, torch.Generator().manual_seed(0))
    same = get_sampler("pjd", window=1).sample(model, cond, config, torch.Generator().manual_seed(0))
    assert torch.equal(same.tokens, ar.tokens)
    fast = get_sampler("pjd", window=3, context=1, lower_rows="residual").sample(model, cond, config,
                                                                                 torch.Generator().manual_seed(0))
    assert fast.tokens.shape == ar.tokens.shape and fast.stats.forward_passes < ar.stats.forward_passes


def test_bad_options_are_refused_before_work():
    for bad, match in [(dict(window=0), "window"), (dict(context=0), "context"), (dict(lower_rows="drop"), "lower_rows"),
                       (dict(acceptance="nope"), "nope")]:
        with pytest.raises(ValueError, match=match):
            get_sampler("pjd", **bad)
    model = tiny_gpt(vocab=16, grid=4)
    with pytest.raises(ValueError, match="row width"):
        get_sampler("pjd", window=5).check(model)
    with pytest.raises(ValueError, match="row width"):
        get_sampler("pjd", context=5).check(model)
