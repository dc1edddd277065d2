"""AR and SJD: official greedy outputs, losslessness by enumeration, per-row batching, bad input."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import fixture_dir
from helpers import ResampleFromTarget, assert_rows_match_alone, chi_square_pvalue, exact_distribution, tiny_gpt
from vargen import SamplingConfig, get_sampler
from vargen.models.base import TextCondition
from vargen.models.llamagen import GPT, GPTConfig, load_gpt_weights
from vargen.samplers.acceptance import ExactAcceptance, Verdict

GREEDY = SamplingConfig(temperature=0.0)


@pytest.fixture(scope="module")
def c2i():
    d = fixture_dir("llamagen")
    meta = json.loads((d / "fixtures.json").read_text())
    model = GPT(GPTConfig.from_dict(meta["gpt_c2i"]["model_args"])).eval()
    load_gpt_weights(model, str(d / "gpt_c2i_tiny.safetensors"))
    return model, load_file(str(d / "outputs.safetensors"))


def _greedy_cases(t):
    for key in sorted(k for k in t if k.startswith("c2i.greedy.") and k.endswith(".tokens")):
        case = key.split(".")[2]
        scale = float(case[3:].split("_")[0])
        interval = int(case.split("interval")[1]) if "interval" in case else -1
        yield case, key, scale, interval


@pytest.mark.parametrize("sampler", ["ar", "sjd"])
def test_greedy_matches_official_generate(c2i, sampler):
    model, t = c2i
    labels = torch.tensor([3, 7])
    cases = list(_greedy_cases(t))
    assert cases, "no greedy fixtures found"
    for case, key, scale, interval in cases:
        cfg = SamplingConfig(temperature=0.0, cfg_scale=scale, cfg_interval=interval)
        s = get_sampler(sampler, window=4) if sampler == "sjd" else get_sampler(sampler)
        out = s.sample(model, labels, cfg)
        assert torch.equal(out.tokens, t[key]), case


@pytest.mark.parametrize("init", ["random", "horizontal", "vertical_sample"])
def test_sjd_greedy_equals_ar_greedy(init):
    model = tiny_gpt(vocab=16, grid=4, seed=1)
    labels = torch.tensor([0, 1, 2, 1])
    ref = get_sampler("ar").sample(model, labels, GREEDY).tokens
    for W in (1, 3, 8, 16):  # 16: every window but the first runs past the end of the grid
        out = get_sampler("sjd", window=W, init=init).sample(model, labels, GREEDY)
        assert torch.equal(out.tokens, ref), (init, W)


CASES = {
    "plain": SamplingConfig(temperature=1.0),
    "cfg_topk": SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=3),
}


def _draw(sampler, model, config, n_rows, seed, label=1):
    g = torch.Generator().manual_seed(seed)
    return sampler.sample(model, torch.full((n_rows,), label), config, generator=g).tokens


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name,options", [
    ("ar", {}),
    ("sjd", dict(window=3, init="random")),
    ("sjd", dict(window=4, init="vertical")),
    ("sjd", dict(window=3, init="horizontal_sample", coupled=True)),
    ("sjd", dict(window=4, init="random", coupled=True)),  # the whole grid in one window
])
def test_lossless_against_enumerated_distribution(case, name, options):
    model = tiny_gpt()  # vocab 6, 2x2 grid: 1296 sequences
    config = CASES[case]
    exact = exact_distribution(model, 1, config)
    samples = _draw(get_sampler(name, **options), model, config, 10000, seed=123)
    assert chi_square_pvalue(samples, exact) > 1e-3


class OneSidedRatio(ExactAcceptance):
    """Deliberately broken: accept with probability p(d) instead of min(1, p(d)/q(d))."""

    name = "broken-ratio"

    def verify(self, p, q, drafts, u):
        return Verdict(accept=u < p.gather(-1, drafts[..., None]).squeeze(-1).double())


@pytest.mark.parametrize("rule", [ResampleFromTarget(), OneSidedRatio()])
def test_chi_square_test_has_power(rule):
    model = tiny_gpt()
    config = CASES["plain"]
    exact = exact_distribution(model, 1, config)
    samples = _draw(get_sampler("sjd", window=4, init="horizontal", acceptance=rule), model, config, 10000, seed=123)
    assert chi_square_pvalue(samples, exact) < 1e-6


@pytest.mark.parametrize("coupled", [False, True])
def test_batch_rows_equal_rows_alone(coupled):
    model = tiny_gpt(vocab=16, grid=4, seed=2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0])
    config = SamplingConfig(temperature=1.0, cfg_scale=1.5)
    sampler = get_sampler("sjd", window=5, init="horizontal", coupled=coupled)
    assert_rows_match_alone(sampler, model, labels, config, seeds=[11, 12, 13, 14])


def test_sjd_compresses_steps_on_a_peaked_model():
    model = tiny_gpt(vocab=16, grid=4, seed=3, sharpness=6.0)
    labels = torch.tensor([0, 1])
    g = torch.Generator().manual_seed(0)
    out = get_sampler("sjd", window=8).sample(model, labels, SamplingConfig(), generator=g)
    s = out.stats
    assert s.forward_passes < 16 and s.tokens_per_forward > 1.0
    assert torch.stack(s.accepted).sum(0).tolist() == [16, 16]
    assert s.token_step.shape == (2, 16) and int(s.token_step.max()) == s.forward_passes - 1


def test_bad_input_is_rejected_before_work():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="class id"):
        get_sampler("ar").sample(model, torch.tensor([0, 3 + 1]), SamplingConfig())
    with pytest.raises(ValueError, match="top_k=7 is larger than the vocabulary"):
        get_sampler("sjd").sample(model, torch.tensor([0]), SamplingConfig(top_k=7))
    with pytest.raises(ValueError, match="window"):
        get_sampler("sjd", window=0)
    with pytest.raises(ValueError, match="init"):
        get_sampler("sjd", init="diagonal")
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("nope")


@pytest.mark.parametrize("sampler", ["ar", "sjd"])
def test_t2i_masked_greedy_matches_official_generate(sampler):
    d = fixture_dir("llamagen")
    meta = json.loads((d / "fixtures.json").read_text())
    t = load_file(str(d / "outputs.safetensors"))
    model = GPT(GPTConfig.from_dict(meta["gpt_t2i"]["model_args"])).eval()
    load_gpt_weights(model, str(d / "gpt_t2i_tiny.safetensors"))
    s = get_sampler(sampler, window=5) if sampler == "sjd" else get_sampler(sampler)
    cond = TextCondition(t["t2i.masked.caption"], t["t2i.masked.emb_masks"])
    out = s.sample(model, cond, SamplingConfig(temperature=0.0, cfg_scale=4.0))
    assert torch.equal(out.tokens, t["t2i.masked.greedy_tokens"])
