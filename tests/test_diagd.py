"""Diagonal Decoding: the static schedule (diagonals, frames overlapped or sequential, proxies, flush), raster AR
token for token at a window of a whole row, fewer forwards below it, rows independent in a batch, bad options."""
import pytest
import torch
from helpers import tiny_gpt

from vargen.samplers import get_sampler
from vargen.samplers.base import SamplingConfig
from vargen.samplers.rows import one_token_schedule


def _first_step(steps, position):
    return next(i for i, s in enumerate(steps, start=1) if position in s.predict)


@pytest.mark.parametrize("rows, width, k", [(4, 4, 1), (4, 4, 2), (6, 5, 3), (3, 6, 6)])
def test_rows_start_along_diagonals_and_the_forward_count_is_the_closed_form(rows, width, k):
    steps = one_token_schedule(rows, width, k)
    predicted = [j for s in steps for j in s.predict]
    assert sorted(predicted) == list(range(1, rows * width))  # every token once (token 0: the prefill)
    for r in range(1, rows):  # row r's first token comes k steps after row r-1's
        assert _first_step(steps, r * width) == k * r
    for s in steps:  # a fed token is always one that exists: sampled in an earlier step (or the prefill)
        done = {0} | {j for t in steps[: steps.index(s)] for j in t.predict}
        assert set(s.source) <= done
    assert 1 + len(steps) == (rows - 1) * k + width  # forwards, the prefill included


def test_frames_overlap_or_run_one_after_another():
    T, H, W, k = 3, 2, 4, 2
    overlap = one_token_schedule(T * H, W, k, frame_rows=H, proxy="temporal")
    sequential = one_token_schedule(T * H, W, k, frame_rows=H, sequential=True, proxy="temporal")
    # overlapped, frame 1's first row starts k steps after frame 0's last row; sequential, once frame 0 is complete
    assert _first_step(overlap, H * W) == _first_step(overlap, (H - 1) * W) + k
    last_of_frame_0 = _first_step(sequential, H * W - 1)
    assert _first_step(sequential, H * W) == last_of_frame_0 + 1
    assert 1 + len(overlap) == (T * H - 1) * k + W and len(sequential) > len(overlap)


def test_the_temporal_proxy_is_the_cell_one_frame_earlier():
    T, H, W, k = 3, 2, 4, 2
    N, frame = T * H * W, H * W
    steps = one_token_schedule(T * H, W, k, frame_rows=H, proxy="temporal")
    for r in range(1, T * H):
        step = steps[_first_step(steps, r * W) - 1]
        i = step.predict.index(r * W)
        assert step.positions[i] == r * W - 1
        before = r * W - 1 - frame  # frame 0 reads the frame before token 0, stored after the N tokens
        assert step.source[i] == (before if before >= 0 else N + frame + before)
    # the last token a row above holds, on images
    steps = one_token_schedule(3, 4, 2, proxy="above")
    step = steps[_first_step(steps, 4) - 1]
    assert step.source[step.predict.index(4)] == 1  # row 0 holds tokens 0, 1


def test_flush_writes_the_true_token_over_the_proxy_and_the_official_schedule_does_not():
    flushed = one_token_schedule(4, 4, 2)
    kept = one_token_schedule(4, 4, 2, flush=False)
    extra = [p for s in flushed for p in s.positions[len(s.predict):]]
    assert sorted(extra) == [3, 7, 11] and all(len(s.positions) == len(s.predict) for s in kept)
    assert [s.predict for s in kept] == [s.predict for s in flushed]


@pytest.mark.parametrize("flush", [True, False])
def test_a_window_of_a_row_is_autoregressive_token_for_token(flush):
    model = tiny_gpt(vocab=16, grid=4, seed=1)
    labels = torch.tensor([0, 1, 2])
    config = SamplingConfig(temperature=1.0, cfg_scale=2.0)
    ar = get_sampler("ar").sample(model, labels, config, torch.Generator().manual_seed(0))
    out = get_sampler("diagd", window=4, flush=flush).sample(model, labels, config, torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens, ar.tokens) and out.stats.forward_passes == ar.stats.forward_passes


def test_diagonals_take_fewer_forwards_and_report_their_schedule():
    model = tiny_gpt(vocab=16, grid=4, seed=1)
    out = get_sampler("diagd", window=1).sample(model, torch.tensor([0, 1]), SamplingConfig(),
                                                torch.Generator().manual_seed(0))
    assert out.stats.forward_passes == 3 * 1 + 4 and out.tokens.shape == (2, 16)
    assert out.stats.rows.schedule == "diagd" and out.stats.rows.rows_in_parallel == 4
    assert out.stats.rows.proxy == "above" and out.stats.mean_accepted is None
    assert torch.stack(out.stats.accepted).sum(0).tolist() == [16, 16]


def test_video_overlaps_frames_on_the_temporal_proxy():
    from test_cosmos_sampling import tiny_cosmos

    from vargen.models.cosmos import VideoCondition

    model = tiny_cosmos(shape=(3, 3, 4), vocab=11, seed=3)
    cond = VideoCondition(torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(0)))
    config = SamplingConfig(temperature=1.0)
    T, H, W = model.grid
    ar = get_sampler("ar").sample(model, cond, config, torch.Generator().manual_seed(0))
    raster = get_sampler("diagd", window=W).sample(model, cond, config, torch.Generator().manual_seed(0))
    assert torch.equal(raster.tokens, ar.tokens)
    fast = get_sampler("diagd", window=2).sample(model, cond, config, torch.Generator().manual_seed(0))
    assert fast.stats.forward_passes == (T * H - 1) * 2 + W and fast.stats.rows.proxy == "temporal"
    seq = get_sampler("diagd", window=2, frames="sequential").sample(model, cond, config,
                                                                     torch.Generator().manual_seed(0))
    assert fast.stats.forward_passes < seq.stats.forward_passes < ar.stats.forward_passes


def test_row_ends_follow_rows_and_proxies():
    """Emu3's layout (a row-end token after every image row): the row end after a proxy predicts the next row's
    first token; a window of a row is AR token for token."""
    pytest.importorskip("transformers")
    from test_hf_emu3 import NEGATIVE, prompts, tiny_emu3

    from vargen.models.hf import image_lm

    model, cond = image_lm(tiny_emu3(), height=4, width=4, negative=NEGATIVE), prompts()
    config = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=8)
    ar = get_sampler("ar").sample(model, cond, config, torch.Generator().manual_seed(0))
    raster = get_sampler("diagd", window=4).sample(model, cond, config, torch.Generator().manual_seed(0))
    assert torch.equal(raster.tokens, ar.tokens)
    fast = get_sampler("diagd", window=1).sample(model, cond, config, torch.Generator().manual_seed(0))
    assert fast.stats.forward_passes == 3 + 4 and fast.tokens.shape == ar.tokens.shape


def test_rows_of_a_batch_equal_rows_alone():
    model = tiny_gpt(vocab=16, grid=4, seed=2, dtype=torch.float64)
    labels, seeds = torch.tensor([0, 1, 2, 0]), [11, 12, 13, 14]
    config = SamplingConfig(temperature=1.0, cfg_scale=1.5)
    sampler = get_sampler("diagd", window=1)
    batch = sampler.sample(model, labels, config, [torch.Generator().manual_seed(s) for s in seeds])
    for b, s in enumerate(seeds):
        alone = sampler.sample(model, labels[b : b + 1], config, [torch.Generator().manual_seed(s)])
        assert torch.equal(alone.tokens[0], batch.tokens[b])


def test_bad_options_are_refused_before_work():
    with pytest.raises(ValueError, match="window"):
        get_sampler("diagd", window=0)
    with pytest.raises(ValueError, match="proxy"):
        get_sampler("diagd", proxy="left")
    with pytest.raises(ValueError, match="frames"):
        get_sampler("diagd", frames="parallel")
    with pytest.raises(ValueError, match="row width"):
        get_sampler("diagd", window=5).check(tiny_gpt(vocab=16, grid=4))
    with pytest.raises(ValueError, match="temporal"):
        get_sampler("diagd", proxy="temporal").check(tiny_gpt(vocab=16, grid=4))
