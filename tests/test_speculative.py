"""Draft-model and draft-head speculative decoding: lossless by enumeration (with a power check),
greedy equals AR, per-row batching, pass counting, one host sync per step, and draft-head training."""
import json

import pytest
import torch

from helpers import ResampleFromTarget, assert_rows_match_alone, SyncCounter, chi_square_pvalue, exact_distribution, save_gpt_folder, tiny_gpt
from vargen import SamplingConfig, get_sampler
from vargen.models.draft_head import DraftHead, DraftHeadConfig
from vargen.samplers.proposers.draft import SpeculativeSampler
from vargen.cli import main as vargen_main
from vargen.train.draft_head import accumulate_gradients

CASES = {
    "plain": SamplingConfig(temperature=1.0),
    "cfg_topk": SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=3),
}


def _drafter(kind, target):
    if kind == "model":
        return tiny_gpt(vocab=target.vocab_size, grid=target.grid[1], seed=11, n_layer=1)
    torch.manual_seed(5)
    return DraftHead(DraftHeadConfig.from_target(target.config)).to(target.dtype)


def _draw(sampler, model, config, n_rows, seed, label=1):
    g = torch.Generator().manual_seed(seed)
    return sampler.sample(model, torch.full((n_rows,), label), config, generator=g).tokens


@pytest.mark.parametrize("kind,gamma,case", [("model", 3, "cfg_topk"), ("head", 3, "plain"), ("head", 2, "cfg_topk")])
def test_lossless_against_enumerated_distribution(kind, gamma, case):
    model = tiny_gpt()  # vocab 6, 2x2 grid: 1296 sequences
    config = CASES[case]
    sampler = SpeculativeSampler(draft=_drafter(kind, model), gamma=gamma)
    samples = _draw(sampler, model, config, 10000, seed=123)
    assert chi_square_pvalue(samples, exact_distribution(model, 1, config)) > 1e-3


def test_chi_square_test_has_power():
    model = tiny_gpt()
    config = CASES["plain"]
    sampler = SpeculativeSampler(draft=_drafter("model", model), gamma=2, acceptance=ResampleFromTarget())
    samples = _draw(sampler, model, config, 10000, seed=123)
    assert chi_square_pvalue(samples, exact_distribution(model, 1, config)) < 1e-6


@pytest.mark.parametrize("kind", ["model", "head"])
def test_greedy_equals_ar_greedy(kind):
    model = tiny_gpt(vocab=16, grid=4, seed=1)
    labels = torch.tensor([0, 1, 2, 1])
    for config in (SamplingConfig(temperature=0.0), SamplingConfig(temperature=0.0, cfg_scale=3.0)):
        ref = get_sampler("ar").sample(model, labels, config).tokens
        for gamma in (1, 4):
            out = SpeculativeSampler(draft=_drafter(kind, model), gamma=gamma).sample(model, labels, config)
            assert torch.equal(out.tokens, ref), (kind, gamma)


@pytest.mark.parametrize("kind", ["model", "head"])
def test_batch_rows_equal_rows_alone(kind):
    model = tiny_gpt(vocab=16, grid=4, seed=2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0])
    config = SamplingConfig(temperature=1.0, cfg_scale=1.5)
    draft = _drafter(kind, model).to(torch.float64)
    sampler = SpeculativeSampler(draft=draft, gamma=3)
    assert_rows_match_alone(sampler, model, labels, config, seeds=[11, 12, 13, 14])


def test_self_drafting_accepts_everything_and_passes_are_counted():
    model = tiny_gpt(vocab=16, grid=4, seed=3)
    gamma, N = 4, 16
    out = SpeculativeSampler(draft=model, gamma=gamma).sample(
        model, torch.tensor([0, 1, 2]), SamplingConfig(cfg_scale=2.0, top_k=5), generator=torch.Generator().manual_seed(0))
    s = out.stats
    steps = -(-(N - 2) // (gamma + 1))  # prefill and one plain step make tokens 0 and 1
    assert s.draft_acceptance_rate == 1.0
    assert s.forward_passes == 2 + steps
    assert s.draft_forward_passes == 1 + steps * gamma  # the draft model's prefill + gamma per step
    assert torch.stack(s.accepted).sum(0).tolist() == [N] * 3
    assert int(s.token_step.max()) == s.forward_passes - 1
    head = SpeculativeSampler(draft=_drafter("head", model), gamma=gamma).sample(
        model, torch.tensor([0]), SamplingConfig(), generator=torch.Generator().manual_seed(0)).stats
    assert head.draft_forward_passes == gamma * (head.forward_passes - 2)


@pytest.mark.parametrize("kind", ["model", "head"])
def test_one_host_sync_per_step(kind, monkeypatch):
    model = tiny_gpt(vocab=16, grid=4, seed=3)
    sampler = SpeculativeSampler(draft=_drafter(kind, model), gamma=3)
    counter = SyncCounter(monkeypatch)
    out = sampler.sample(model, torch.tensor([0, 1, 2]), SamplingConfig(cfg_scale=2.0), generator=torch.Generator().manual_seed(0))
    steps = out.stats.forward_passes - 2
    assert counter.count <= steps + 6  # the loop condition per step + setup (condition check) and stats


def test_bad_input_is_rejected_before_work():
    model = tiny_gpt(vocab=16, grid=4)
    with pytest.raises(ValueError, match="gamma"):
        SpeculativeSampler(draft=model, gamma=0)
    with pytest.raises(ValueError, match="needs draft"):
        SpeculativeSampler()
    with pytest.raises(ValueError, match="does not match the target"):
        SpeculativeSampler(draft=tiny_gpt(vocab=8, grid=4)).sample(model, torch.tensor([0]))
    with pytest.raises(ValueError, match="does not match the target"):
        SpeculativeSampler(draft=_drafter("head", tiny_gpt(vocab=8, grid=4))).sample(model, torch.tensor([0]))
    with pytest.raises(FileNotFoundError, match="config.json"):
        SpeculativeSampler(draft="/nonexistent/head")


def test_gradient_accumulation_really_accumulates():
    model = tiny_gpt(vocab=16, grid=4, seed=3).requires_grad_(False)
    head = DraftHead(DraftHeadConfig.from_target(model.config))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (8, 16), generator=g)
    labels = torch.randint(0, 3, (8,), generator=g)
    drop = torch.tensor([False] * 7 + [True])
    accumulate_gradients(head, model, [(labels, tokens, drop)], 0.0, 0.1)
    full = [p.grad.clone() for p in head.parameters()]
    accumulate_gradients(head, model, [(labels[:4], tokens[:4], drop[:4]), (labels[4:], tokens[4:], drop[4:])], 0.0, 0.1)
    for a, b in zip(full, head.parameters()):
        assert torch.allclose(a, b.grad, atol=1e-6, rtol=1e-4)
    accumulate_gradients(head, model, [(labels[:4], tokens[:4], drop[:4])], 0.0, 0.1)
    assert not all(torch.allclose(a, b.grad, atol=1e-6) for a, b in zip(full, head.parameters()))


def test_train_draft_head_cli_writes_a_head_that_drafts_better(tmp_path):
    target = tiny_gpt(vocab=16, grid=4, seed=3, sharpness=6.0)
    save_gpt_folder(target, tmp_path / "gpt")
    assert vargen_main(["train", "draft-head", "--model", str(tmp_path / "gpt"), "--out", str(tmp_path / "head"),
                        "--samples", "128", "--steps", "80", "--batch-size", "16", "--grad-accum", "1",
                        "--lr", "3e-3", "--threads", "1"]) == 0
    meta = json.loads((tmp_path / "head" / "config.json").read_text())
    assert meta["type"] == "llamagen_draft_head" and meta["feature_noise"] == 0.27
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(str(tmp_path / "head" / "model.safetensors")).values())
    from vargen.train.draft_head import load_target

    model, _ = load_target(str(tmp_path / "gpt"))
    labels = torch.arange(3).repeat(6)
    rates = {}
    for name, draft in (("trained", str(tmp_path / "head")), ("random", _drafter("head", model))):
        out = SpeculativeSampler(draft=draft, gamma=3).sample(model, labels, SamplingConfig(),
                                                              generator=torch.Generator().manual_seed(0))
        rates[name] = out.stats.draft_acceptance_rate
    assert rates["trained"] > 0.4 > 0.2 > rates["random"], rates
    assert isinstance(DraftHead.from_folder(tmp_path / "head"), DraftHead)
