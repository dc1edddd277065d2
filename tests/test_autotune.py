"""``window="auto"`` / ``gamma="auto"``: the cost model's choice, its fallback to AR, and its evidence."""
import pytest
import torch

from helpers import tiny_gpt
from vargen import SamplingConfig, get_sampler
from vargen.samplers import autotune
from vargen.samplers.autotune import acceptance_from_rate, expected_tokens
from vargen.samplers.spec import SamplerSpec


@pytest.fixture()
def model():
    return tiny_gpt(vocab=16, grid=4, seed=2, n_layer=1, dim=32)


def test_expected_tokens_inverts():
    for a in (0.0, 0.3, 0.8, 0.99):
        for j in (1, 3, 15):
            assert acceptance_from_rate(expected_tokens(a, j), j) == pytest.approx(a, abs=1e-9)
    assert expected_tokens(1.0, 7) == 8.0 and acceptance_from_rate(1.0, 7) == 0.0


def test_auto_is_an_option_word_and_nothing_else():
    assert SamplerSpec.parse("sjd:window=auto").options["window"] == "auto"
    assert get_sampler("sd", draft=tiny_gpt(vocab=16, grid=4), gamma="auto").proposer.auto
    with pytest.raises(ValueError, match="window: expected an integer or auto"):
        get_sampler("sjd", window="automatic")


def _fake_costs(per_token):
    def costs(model, cond, config, widths, compiled=False, repeats=7):
        return {w: 1e-3 + per_token * w for w in widths}
    return costs


def test_expensive_wide_forwards_fall_back_to_ar_with_ar_tokens(model, monkeypatch):
    # a forward costing 10 ms per token (compute bound): with an imperfect drafter no draft length pays for itself
    monkeypatch.setattr(autotune, "forward_costs", _fake_costs(1e-2))
    draft = tiny_gpt(vocab=16, grid=4, seed=9, n_layer=1, dim=32)
    labels, config = torch.tensor([0, 1, 2]), SamplingConfig(cfg_scale=2.0)
    for name, options in [("sjd", dict(window="auto")), ("sd", dict(draft=draft, gamma="auto"))]:
        out = get_sampler(name, **options).sample(model, labels, config, torch.Generator().manual_seed(4))
        ar = get_sampler("ar").sample(model, labels, config, torch.Generator().manual_seed(4))
        assert out.stats.auto.auto_drafts == 0 and out.stats.draft.proposer == "none"
        assert torch.equal(out.tokens, ar.tokens)
        assert out.stats.auto.auto_speedup_vs_ar[0] == 1.0


def test_free_wide_forwards_and_a_perfect_drafter_pick_the_longest_chain(model, monkeypatch):
    # the drafter is the target itself (every draft accepted) and wide forwards cost what a 1-token one does
    monkeypatch.setattr(autotune, "forward_costs", _fake_costs(0.0))
    monkeypatch.setattr(autotune, "_pilot", lambda *a, **k: (1.0, 2e-3, 0.0))
    out = get_sampler("sd", draft=model, gamma="auto").sample(model, torch.tensor([1]), SamplingConfig(),
                                                                torch.Generator().manual_seed(0))
    assert out.stats.auto.auto_drafts == 8 and out.stats.draft.gamma == 8


def test_pilot_measures_the_acceptance_of_a_perfect_drafter(model):
    sampler = get_sampler("sd", draft=model, gamma=3)
    a, per_step, per_draft = autotune._pilot(sampler, sampler.proposer, model, torch.tensor([0, 1]),
                                             SamplingConfig(cfg_scale=1.0), steps=2)
    assert a == 1.0 and per_step > 0 and per_draft >= 0


def test_measured_auto_run_reports_its_evidence(model):
    out = get_sampler("sjd", window="auto").sample(model, torch.tensor([0]), SamplingConfig(),
                                                   torch.Generator().manual_seed(0))
    auto = out.stats.auto
    assert set(auto.auto_forward_seconds) == {1, 2, 4, 8, 16}
    assert auto.auto_drafts in (0, 1, 3, 7, 15) and all(0.0 <= a <= 1.0 for a in auto.auto_acceptance.values())
    assert out.tokens.shape == (1, 16)


def test_batch_throughput_is_the_row_mean_at_batch_one_and_less_for_a_batch():
    from vargen.samplers.autotune import batch_tokens_per_step

    assert batch_tokens_per_step(0.6, 3, 1, 256) == pytest.approx(expected_tokens(0.6, 3))
    assert batch_tokens_per_step(0.6, 3, 16, 256) < expected_tokens(0.6, 3)
    assert batch_tokens_per_step(1.0, 3, 16, 256) == pytest.approx(4.0)  # no variance: no straggler
    assert batch_tokens_per_step(0.3, 0, 16, 256) == 1.0


def test_compiled_pilots_time_the_proposer_as_a_compiled_call_runs_it(model):
    """Under ``compile=True`` the Jacobi update is a compiled graph too; the pilots (eager target steps) must time
    that update, not the eager one, or ``"auto"`` overprices every window of a compiled call."""
    from vargen.samplers.proposers.jacobi import jacobi_update

    sampler = get_sampler("sjd", window=3)
    for compiled in (True, False):
        autotune._pilot(sampler, sampler.proposer, model, torch.tensor([0]), SamplingConfig(), steps=2,
                        compiled=compiled)
        assert (sampler.proposer.update is not jacobi_update) == compiled
