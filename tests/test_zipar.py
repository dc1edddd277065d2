"""ZipAR: the static schedule, plain raster order at window = row width (token for token AR), parallel rows below
it, rows independent in a batch, and bad options refused before work."""
import pytest
import torch
from helpers import tiny_gpt

from vargen.decode import scattered_plan
from vargen.samplers import get_sampler
from vargen.samplers.base import SamplingConfig
from vargen.samplers.zipar import zipar_schedule


def test_schedule_starts_rows_after_window_tokens_and_writes_the_proxied_tokens():
    steps = zipar_schedule(4, 4, 2)
    predicted = [j for s in steps for j in s.predict]
    assert sorted(predicted) == list(range(1, 16))  # every token once (token 0 from the prefill)
    assert [s.predict for s in steps[:5]] == [(1,), (2,), (3,), (4,), (5,)]  # row 0 alone, then row 1
    # row 2 starts once row 1 has two tokens, on a proxy for token 7: the last token of row 0
    assert steps[5].predict == (6, 8) and steps[5].source == (5, 3) and steps[5].positions == (5, 7)
    # row 1 finishes at token 7: the next step writes the true token 7 over its proxy
    assert 7 in steps[7].positions[len(steps[7].predict):]
    assert len(zipar_schedule(16, 16, 16)) == 255 and len(zipar_schedule(16, 16, 4)) == 87


def test_window_of_a_row_is_autoregressive_token_for_token():
    model = tiny_gpt(vocab=16, grid=4, seed=1)
    labels = torch.tensor([0, 1, 2])
    config = SamplingConfig(temperature=1.0, cfg_scale=2.0)
    ar = get_sampler("ar").sample(model, labels, config, torch.Generator().manual_seed(0))
    zipar = get_sampler("zipar", window=4).sample(model, labels, config, torch.Generator().manual_seed(0))
    assert torch.equal(zipar.tokens, ar.tokens) and zipar.stats.forward_passes == ar.stats.forward_passes


def test_parallel_rows_take_fewer_forwards_and_see_only_written_positions():
    model = tiny_gpt(vocab=16, grid=4, seed=1, dtype=torch.float64)
    labels = torch.tensor([0, 1])
    out = get_sampler("zipar", window=2).sample(model, labels, SamplingConfig(), torch.Generator().manual_seed(0))
    assert out.stats.forward_passes == 12 and out.stats.zipar.rows_in_parallel == 2
    assert torch.stack(out.stats.accepted).sum(0).tolist() == [16, 16]
    # a query never sees a position that holds no token yet: ungenerated slots hold garbage, same logits
    cache = model.new_cache(1, 17)
    model.prefill(labels[:1], cache)
    tokens = torch.randint(0, 16, (1, 16), generator=torch.Generator().manual_seed(1))
    written = torch.zeros(1, 17, dtype=torch.bool)
    written[:, [0, 1, 2, 4, 5]] = True
    pos = torch.tensor([[0, 1, 2, 4, 5]])
    a = model(tokens[:, [0, 1, 2, 4, 5]], scattered_plan(cache, pos, written), cache)
    for t in (*cache.k, *cache.v):
        t[:, :, 1 + 3] = 1e3  # position 3 (after the class token) was never written
    b = model(tokens[:, [0, 1, 2, 4, 5]], scattered_plan(cache, pos, written), cache)
    assert torch.allclose(a, b)


def test_rows_of_a_batch_equal_rows_alone():
    """(The schedule is the same for every row, so the shared helper's check that rows advance differently does not
    apply.)"""
    model = tiny_gpt(vocab=16, grid=4, seed=2, dtype=torch.float64)
    labels, seeds = torch.tensor([0, 1, 2, 0]), [11, 12, 13, 14]
    config = SamplingConfig(temperature=1.0, cfg_scale=1.5)
    sampler = get_sampler("zipar", window=2)
    batch = sampler.sample(model, labels, config, [torch.Generator().manual_seed(s) for s in seeds])
    for b, s in enumerate(seeds):
        alone = sampler.sample(model, labels[b : b + 1], config, [torch.Generator().manual_seed(s)])
        assert torch.equal(alone.tokens[0], batch.tokens[b])


def test_bad_options_are_refused_before_work():
    with pytest.raises(ValueError, match="window"):
        get_sampler("zipar", window=0)
    with pytest.raises(ValueError, match="row width"):
        get_sampler("zipar", window=5).check(tiny_gpt(vocab=16, grid=4))


@pytest.mark.parametrize("family", ["cosmos", "janus", "emu3"])
def test_zipar_on_every_token_model_with_a_2d_grid(family):
    """Scattered plans come from the decode layer, so ZipAR runs on video (rows of every latent frame) and on the
    transformers adapters, row ends included: a window of a whole row is AR token for token, a smaller one takes fewer
    forwards."""
    if family == "cosmos":
        from test_cosmos_sampling import tiny_cosmos

        from vargen.models.cosmos import VideoCondition

        model = tiny_cosmos(shape=(3, 3, 4), vocab=11, seed=3)
        cond = VideoCondition(torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(0)))
        config = SamplingConfig(temperature=1.0)
    elif family == "janus":
        pytest.importorskip("transformers")
        from test_hf_janus import prompts, tiny_janus

        from vargen.models.hf import image_lm

        model, cond = image_lm(tiny_janus(side=4)), prompts()
        config = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=8)
    if family == "emu3":  # row ends: a row's end token follows its last token and predicts the next row's first
        pytest.importorskip("transformers")
        from test_hf_emu3 import NEGATIVE, prompts, tiny_emu3

        from vargen.models.hf import image_lm

        model, cond = image_lm(tiny_emu3(), height=4, width=4, negative=NEGATIVE), prompts()
        config = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=8)
    W = model.grid[-1]
    ar = get_sampler("ar").sample(model, cond, config, torch.Generator().manual_seed(0))
    row = get_sampler("zipar", window=W).sample(model, cond, config, torch.Generator().manual_seed(0))
    assert torch.equal(row.tokens, ar.tokens)
    fast = get_sampler("zipar", window=2).sample(model, cond, config, torch.Generator().manual_seed(0))
    assert fast.stats.forward_passes < ar.stats.forward_passes and fast.tokens.shape == ar.tokens.shape
