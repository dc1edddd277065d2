"""GtR (Yan et al., "Generation then Reconstruction", arXiv 2510.17171) as ``order="gtr"`` of the ``mar`` sampler, on
tiny random MARs: the zero setting is the plain sampler token for token, the stages of the recursive bisection, the
step split, FTS's score and choice, the CFG scales, batch rows against rows alone, the stats and the refused options."""
from __future__ import annotations

import math

import pytest
import torch
from test_cspd import _one_thread, tiny_mar  # noqa: F401  (the module's one-thread fixture)

from vargen import SamplingConfig, get_sampler
from vargen.models.mar import MAR, MARConfig
from vargen.samplers import mar as mar_module
from vargen.samplers.diffusion_head import denoise, respaced
from vargen.samplers.mar import (cfg_scales, fts_scores, fts_select, gtr_masked_after, gtr_order, gtr_split,
                                 gtr_stage_map, masked_after_step, step_scales)
from vargen.samplers.spec import SamplerSpec

LABELS = torch.tensor([1, 2, 3])
CONFIG = SamplingConfig(temperature=0.9, cfg_scale=2.5)


@pytest.fixture(scope="module")
def model():
    return tiny_mar(0)  # a 4x4 grid, 10 diffusion steps


@pytest.fixture(scope="module")
def model8():
    """An 8x8 grid (64 tokens, the demo's), otherwise tiny_mar's."""
    torch.manual_seed(0)
    m = MAR(MARConfig(img_size=128, vae_stride=16, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2,
                      decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, vae_embed_dim=4, class_num=10,
                      buffer_size=2, diffloss_d=1, diffloss_w=32, num_sampling_steps="10")).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m


def run(model, labels=LABELS, config=CONFIG, seed=0, **options):
    return get_sampler("mar", **options).sample(model, labels, config, torch.Generator().manual_seed(seed))


def reference_mar(model, labels, config, num_iter, generator, heads):
    """The ``mar`` sampler as it was before GtR, step for step (MAR's ``sample_tokens``)."""
    B, L, C = labels.shape[0], model.seq_len, model.token_embed_dim
    guided = config.cfg_scale != 1.0
    orders = model.sample_orders(B, generator)
    masked_after, scales = masked_after_step(L, num_iter), cfg_scales(L, num_iter, config.cfg_scale, "linear")
    tokens, mask = torch.zeros(B, L, C), torch.ones(B, L, dtype=torch.bool)
    for step in range(num_iter):
        z = model.condition(tokens, mask, labels, cfg=guided)
        mask_next = torch.zeros(B, L, dtype=torch.bool).scatter(-1, orders[:, : masked_after[step]], True)
        to_pred = mask & ~mask_next
        rows = z[torch.cat([to_pred, to_pred])] if guided else z[to_pred]
        sampled = denoise(heads[step], rows, config.temperature, scales[step] if guided else 1.0, generator=generator)
        tokens[to_pred] = sampled[: int(to_pred.sum())]
        mask = mask_next
    return tokens


@pytest.mark.parametrize("cfg", [1.0, 2.5])
@pytest.mark.parametrize("options", [{}, dict(order="random", fts_ratio=0.0), dict(diffusion_end=4)])
def test_zero_setting_is_the_plain_sampler(model, cfg, options):
    config = SamplingConfig(temperature=0.9, cfg_scale=cfg)
    head = model.diffloss
    heads = [respaced(head, n) for n in (10, 9, 8, 6, 5, 4)] if options.get("diffusion_end") else [head] * 6
    want = reference_mar(model, LABELS, config, 6, torch.Generator().manual_seed(0), heads)
    out = run(model, config=config, num_iter=6, **options)
    assert torch.equal(out.tokens, want)
    assert out.stats.mar.order is None and out.stats.mar.stage_steps is None and out.stats.mar.fts_steps is None


def test_mar_cfg_scales_are_the_formula_on_masked_counts():
    for L in (16, 64, 256):
        for K in (1, 2, 5, 16):
            assert cfg_scales(L, K, 3.0, "linear") == step_scales(L, masked_after_step(L, K), 3.0, "linear")


# ----------------------------------------------------------------------------------------------
# the stages and the schedule
# ----------------------------------------------------------------------------------------------


def test_stage_map_of_a_4x4_grid():
    assert gtr_stage_map(4, 4, 3).view(4, 4).tolist() == [[1, 3, 2, 3], [3, 2, 3, 1], [2, 3, 1, 3], [3, 1, 3, 2]]
    assert gtr_stage_map(4, 4, 2, parity=1).view(4, 4).tolist() == [[2, 1, 2, 1], [1, 2, 1, 2], [2, 1, 2, 1],
                                                                     [1, 2, 1, 2]]
    assert torch.bincount(gtr_stage_map(16, 16, 3)).tolist() == [0, 64, 64, 128]  # the paper's MAR grid


@pytest.mark.parametrize("h, w, stages, parity", [(16, 16, 3, 0), (8, 8, 4, 1), (5, 7, 3, 1), (9, 6, 5, 0)])
def test_stages_partition_the_grid_by_colour_and_mod_2k_classes(h, w, stages, parity):
    stage = gtr_stage_map(h, w, stages, parity)
    diag = (torch.arange(h)[:, None] + torch.arange(w)[None]).flatten()
    assert stage.shape == (h * w,) and set(stage.tolist()) == set(range(1, stages + 1))  # every position, once
    assert torch.equal(stage == stages, diag % 2 != parity)  # round 1: the other colour is the reconstruction
    for k in range(2, stages):  # round k: one half of the rest by (i+j) mod 2^k
        assert torch.equal(stage == stages - k + 1, diag % 2**k == parity + 2 ** (k - 1))
    assert torch.equal(stage == 1, diag % 2 ** (stages - 1) == parity)  # the skeleton: what is left


def test_step_split():
    assert gtr_split(32, [64, 64, 128]) == [24, 6, 2]  # the paper's MAR setting
    assert gtr_split(64, [64, 64, 128]) == [48, 12, 4]
    assert gtr_split(16, [16, 16, 32]) == [12, 3, 1]  # the demo's grid at its 16 steps
    assert gtr_split(3, [4, 4, 8]) == [1, 1, 1] and gtr_split(16, [4, 4, 8]) == [4, 4, 8]
    for sizes in ([4, 4, 8], [16, 16, 32], [13, 12, 24]):
        for total in range(3, sum(sizes) + 1):
            steps = gtr_split(total, sizes)
            assert sum(steps) == total and all(1 <= n <= m for n, m in zip(steps, sizes)), (sizes, total, steps)
    assert gtr_masked_after([4, 4, 8], [2, 1, 1]) == [14, 12, 8, 0]
    assert gtr_masked_after([5, 4, 8], [2, 2, 1]) == [15, 12, 10, 8, 0]


@pytest.mark.parametrize("options, stage_steps", [
    (dict(), [4, 4, 2]),  # the paper's 24/6/2, at most one step per token
    (dict(num_iter=6), [4, 1, 1]),  # 6 steps in the paper's proportion
    (dict(gtr_steps=(2, 1, 1)), [2, 1, 1]),
    (dict(num_iter=4, gtr_steps=(2, 1, 1)), [2, 1, 1]),
    (dict(gtr_stages=2, gtr_steps=(3, 2)), [3, 2])])
def test_stage_steps_sum_to_the_steps_and_stages_run_in_order(model, options, stage_steps):
    out = run(model, order="gtr", **options)
    s = out.stats
    assert s.mar.order == "gtr" and s.mar.stage_steps == stage_steps
    assert s.mar.num_iter == sum(stage_steps) == s.forward_passes == len(s.accepted)
    stage = gtr_stage_map(4, 4, len(stage_steps))
    first = [sum(stage_steps[:k]) for k in range(len(stage_steps) + 1)]
    for k in range(len(stage_steps)):  # stage k+1 is generated in its own steps, evenly
        at = s.token_step[:, stage == k + 1]
        assert int(at.min()) >= first[k] and int(at.max()) < first[k + 1]
        counts = [int(a[0]) for a in s.accepted[first[k]: first[k + 1]]]
        size = int((stage == k + 1).sum())
        assert sum(counts) == size and max(counts) - min(counts) <= 1


def test_no_two_neighbours_in_one_step_before_the_reconstruction(model8):
    out = run(model8, labels=torch.tensor([0, 5]), order="gtr", num_iter=16)
    s = out.stats
    assert s.mar.stage_steps == [12, 3, 1]
    before = sum(s.mar.stage_steps[:-1])
    for row in s.token_step.view(2, 8, 8):
        for step in range(before):
            at = row == step
            assert at.any()
            assert not (at[1:] & at[:-1]).any() and not (at[:, 1:] & at[:, :-1]).any(), step
        assert int(row.max()) == before  # the reconstruction: one step, the other colour
    assert bool((s.token_step.view(2, 64)[:, gtr_stage_map(8, 8, 3) == 1] < 12).all())  # the skeleton: steps 0-11


def test_gtr_orders_keep_the_generators_permutation_within_a_stage(model):
    stage = gtr_stage_map(4, 4, 3)
    perm = model.sample_orders(2, torch.Generator().manual_seed(3))
    orders = gtr_order(stage, perm)
    for o, p in zip(orders, perm):
        assert sorted(o.tolist()) == list(range(16))
        assert stage[o].tolist() == sorted(stage[o].tolist(), reverse=True)  # reconstruction first, skeleton last
        for k in (1, 2, 3):
            assert [i for i in o.tolist() if stage[i] == k] == [i for i in p.tolist() if stage[i] == k]
    # the sampler draws its orders like MAR (one permutation per row, first): given them, the rest of the stream replays
    g = torch.Generator().manual_seed(0)
    orders = gtr_order(stage, model.sample_orders(3, g))
    replay = get_sampler("mar", order="gtr").sample(model, LABELS, CONFIG, g, orders=orders)
    assert torch.equal(replay.tokens, run(model, order="gtr").tokens)


# ----------------------------------------------------------------------------------------------
# FTS
# ----------------------------------------------------------------------------------------------


def test_fts_score_by_hand():
    # D = 4: bins 1 and 2 weighted 1.5 and 2; |X1| = |(a - c) + i(d - b)|, |X2| = |a - b + c - d|
    z = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1], [1, -1, 1, -1], [1, 0, -1, 0], [0, 1, 0, 0]])
    assert torch.allclose(fts_scores(z), torch.tensor([3.5, 0.0, 8.0, 3.0, 3.5]), atol=1e-5)
    # D = 5: bins 1, 2 (weights 1.5, 2); an impulse has |X_n| = 1; a constant has nothing past DC
    scores = fts_scores(torch.tensor([[2.0, 0, 0, 0, 0], [3.0, 3, 3, 3, 3]]))
    assert torch.allclose(scores, torch.tensor([7.0, 0.0]), atol=1e-5)


def test_fts_picks_ceil_ratio_n_of_the_highest_scores_per_image():
    vectors = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1], [1, -1, 1, -1], [1, 0, -1, 0], [0.5, 0, 0, 0]])
    scores = torch.tensor([3.5, 0.0, 8.0, 3.0, 1.75])  # by hand, as in test_fts_score_by_hand
    which = torch.tensor([[0, 1, 2, 3, 4, 1, 1, 1, 1, 1, 1], [4, 3, 1, 1, 2, 0, 1, 1, 1, 1, 1]])
    z = vectors[which]  # [2 images, 11 positions, D = 4]
    where = torch.zeros(2, 11, dtype=torch.bool)
    where[0, :5] = True
    where[1, [0, 1, 3, 5, 6]] = True  # 5 each; row 1 leaves out position 4 (the best score)
    for ratio, k in ((0.2, 1), (0.3, 2), (0.4, 2), (0.41, 3), (1.0, 5)):
        picked = fts_select(z, where, ratio)
        assert picked.sum(-1).tolist() == [k, k] and not (picked & ~where).any()
        for row in range(2):
            chosen, rest = scores[which[row][picked[row]]], scores[which[row][where[row] & ~picked[row]]]
            assert rest.numel() == 0 or float(chosen.min()) >= float(rest.max())
    assert fts_select(z, where, 0.4)[0].nonzero().squeeze(-1).tolist() == [0, 2]  # scores 3.5 and 8
    assert fts_select(z, where, 0.4)[1].nonzero().squeeze(-1).tolist() == [1, 5]  # 3.0 and 3.5 (8 is not where)
    hundred = torch.ones(1, 100, dtype=torch.bool)
    assert int(fts_select(torch.randn(1, 100, 6), hundred, 0.07).sum()) == 7  # not ceil(0.07 * 100 = 7.000000000000001)


class Spy:
    """Records every denoise call of the mar sampler (head steps, condition rows, cfg) and runs it."""

    def __init__(self, monkeypatch, fake=None):
        self.calls = []
        self.fake = fake
        monkeypatch.setattr(mar_module, "denoise", self)

    def __call__(self, head, z, temperature=1.0, cfg=1.0, generator=None, clip_x0=None):
        self.calls.append((head.num_sampling_steps, z.clone(), cfg))
        if self.fake is not None:
            return self.fake(head, z, cfg)
        return denoise(head, z, temperature, cfg, generator=generator, clip_x0=clip_x0)


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_fts_runs_the_picked_tokens_with_fts_steps(model8, monkeypatch, cfg):
    zs = []
    condition = model8.condition
    monkeypatch.setattr(model8, "condition", lambda *a, **k: zs.append(condition(*a, **k)) or zs[-1])
    spy = Spy(monkeypatch)
    labels = torch.tensor([0, 5])
    out = get_sampler("mar", order="gtr", gtr_steps=(4, 2, 2), stage_diffusion=(8, 3, 4), fts_ratio=0.1).sample(
        model8, labels, SamplingConfig(temperature=0.9, cfg_scale=cfg), torch.Generator().manual_seed(0))
    guided = cfg != 1.0
    assert [c[0] for c in spy.calls] == [8, 7, 6, 5, 4, 3, 8, 4, 8, 4]  # T_max -> T_min, then detail + the rest
    assert out.stats.mar.fts_steps == 8 and out.stats.mar.diffusion_steps == [8, 7, 6, 5, 4, 3, 4, 4]
    assert out.stats.mar.diffusion_steps_total == 8 + 7 + 6 + 5 + 4 + 3 + 2 * (8 + 4)
    for step, (detail_call, rest_call) in zip((6, 7), (spy.calls[6:8], spy.calls[8:10])):
        z = zs[step]
        to_pred = out.stats.token_step == step
        n = int(to_pred[0].sum())  # 16 of the 32 reconstruction tokens per image
        k = math.ceil(0.1 * n)
        scores = fts_scores(z[:2]).masked_fill(~to_pred, float("-inf"))
        top = torch.zeros_like(to_pred).scatter(-1, scores.topk(k, -1).indices, True)
        want = z[torch.cat([top, top])] if guided else z[top]
        assert torch.equal(detail_call[1], want)  # the cond rows chose; the uncond rows follow the same positions
        rest = to_pred & ~top
        assert torch.equal(rest_call[1], z[torch.cat([rest, rest])] if guided else z[rest])
        assert detail_call[1].shape[0] == (2 if guided else 1) * 2 * k


def test_fts_zero_settings_are_no_fts(model):
    base = dict(order="gtr", gtr_steps=(2, 1, 1), stage_diffusion=(8, 3, 4))
    plain = run(model, **base)
    assert torch.equal(run(model, fts_ratio=0.0, **base).tokens, plain.tokens)
    assert torch.equal(run(model, fts_ratio=0.5, fts_steps=4, **base).tokens, plain.tokens)  # T_detail = T_rec
    fts = run(model, fts_ratio=0.5, **base)
    assert not torch.equal(fts.tokens, plain.tokens)
    assert torch.equal(fts.tokens[:, gtr_stage_map(4, 4, 3) < 3], plain.tokens[:, gtr_stage_map(4, 4, 3) < 3])


# ----------------------------------------------------------------------------------------------
# CFG, batches, footprint
# ----------------------------------------------------------------------------------------------


def test_cfg_scales_follow_mars_formula_with_gtrs_counts(model, monkeypatch):
    spy = Spy(monkeypatch)
    run(model, order="gtr", gtr_steps=(2, 1, 1))
    # masked after each step: 14, 12, 8, 0 (MAR takes 1 at the last step)
    assert [c[2] for c in spy.calls] == [1 + 1.5 * 2 / 16, 1 + 1.5 * 4 / 16, 1 + 1.5 * 8 / 16, 1 + 1.5 * 15 / 16]
    spy.calls.clear()
    run(model, config=SamplingConfig(temperature=0.9, cfg_scale=2.5, cfg_schedule="constant"), order="gtr",
        gtr_steps=(2, 1, 1))
    assert [c[2] for c in spy.calls] == [2.5] * 4


def test_rows_of_a_batch_are_rows_alone(model8, monkeypatch):
    """The sampler draws from one generator per call (the MAR family samples rows with their own seeds one call at a
    time), so the head's draws are replaced by a deterministic function of z, the head's step count and the scale:
    what is left is GtR's schedule, the CFG pairing and FTS's per-image choice."""
    def fake(head, z, cfg):
        n = z.shape[0] // 2 if cfg != 1.0 else z.shape[0]
        x = torch.tanh(z[:n, :4] * head.num_sampling_steps / 10)
        if cfg != 1.0:
            x = x + cfg * torch.tanh(z[:n, 4:8] - z[n:, 4:8])
            return torch.cat([x, x])
        return x

    Spy(monkeypatch, fake)
    labels = torch.tensor([0, 5, 7])
    orders = gtr_order(gtr_stage_map(8, 8, 3), model8.sample_orders(3, torch.Generator().manual_seed(4)))
    sampler = get_sampler("mar", order="gtr", gtr_steps=(6, 2, 2), stage_diffusion=(9, 3, 5), fts_ratio=0.2)
    batch = sampler.sample(model8, labels, CONFIG, orders=orders)
    for i in range(3):
        alone = sampler.sample(model8, labels[i: i + 1], CONFIG, orders=orders[i: i + 1])
        assert torch.allclose(batch.tokens[i: i + 1], alone.tokens, atol=1e-5)
        assert torch.equal(batch.stats.token_step[i: i + 1], alone.stats.token_step)


def test_footprint_bounds_the_widest_step(model8):
    plain = get_sampler("mar", num_iter=16)
    gtr = get_sampler("mar", order="gtr", num_iter=16, stage_diffusion=(50, 20, 20), fts_ratio=0.1)
    need = gtr.footprint(model8, LABELS, CONFIG)
    assert need.per_row == plain.footprint(model8, LABELS, CONFIG).per_row
    widest = max(a - b for a, b in zip([64] + gtr.schedule(model8)[2], gtr.schedule(model8)[2]))
    assert widest == 32 and need.per_row >= 2 * model8.memory_per_row(widest)
    with pytest.raises(ValueError, match="gtr_steps gives stage 1 20 steps for its 16 tokens"):
        get_sampler("mar", order="gtr", gtr_steps=(20, 2, 2)).footprint(model8, LABELS, CONFIG)


def test_spec_and_stats(model):
    spec = SamplerSpec.parse("mar:order=gtr,gtr_steps=2/1/1,stage_diffusion=8/3/4,fts_ratio=0.5,fts_steps=9")
    out = get_sampler(spec.name, **spec.options).sample(model, LABELS, CONFIG, torch.Generator().manual_seed(0))
    summary = out.stats.summary()
    assert summary["order"] == "gtr" and summary["stage_steps"] == "[2, 1, 1]" and summary["fts_steps"] == 9
    assert out.stats.mar.diffusion_steps == [8, 6, 3, 4] and out.stats.mar.diffusion_steps_total == 8 + 6 + 3 + 4 + 9
    with pytest.raises(ValueError, match="takes no option 'order'"):
        SamplerSpec.parse("cspd:order=gtr")  # CSpD does not take GtR's order (docs/sampler-mar.md)


@pytest.mark.parametrize("options, message", [
    (dict(order="gtr", gtr_stages=1), "mar: gtr_stages must be >= 2"),
    (dict(order="gtr", gtr_stages=4), "mar: gtr_stages=4 needs gtr_steps"),
    (dict(order="gtr", gtr_steps=(24, 6)), "mar: gtr_steps must give one step count per stage"),
    (dict(order="gtr", gtr_steps=(2, 0, 1)), "mar: gtr_steps must be >= 1"),
    (dict(order="gtr", num_iter=5, gtr_steps=(2, 1, 1)), "mar: gtr_steps sum to 4 steps but num_iter is 5 .* give num_iter=4 with them"),
    (dict(order="gtr", num_iter=2), "mar: num_iter=2 leaves a GtR stage without a step"),
    (dict(order="gtr", fts_ratio=1.5), "mar: fts_ratio must be <= 1"),
    (dict(order="gtr", fts_ratio=-0.1), "mar: fts_ratio must be >= 0"),
    (dict(order="gtr", fts_ratio=0.1), "mar: fts_ratio needs fts_steps or stage_diffusion"),
    (dict(order="gtr", fts_steps=50), "mar: fts_steps needs fts_ratio > 0"),
    (dict(order="gtr", stage_diffusion=(50, 20)), "mar: stage_diffusion must be three step counts"),
    (dict(order="gtr", stage_diffusion=(50, 20, 20), diffusion_end=5), "mar: stage_diffusion replaces DiSA's"),
    (dict(fts_ratio=0.1, fts_steps=50), "mar: fts_ratio applies to order=gtr only"),
    (dict(stage_diffusion=(50, 20, 20)), "mar: stage_diffusion applies to order=gtr only"),
    (dict(order="sorted"), "mar: order must be one of random, gtr"),
])
def test_bad_options_are_one_line_errors_naming_the_option(options, message):
    with pytest.raises(ValueError, match=message) as err:
        get_sampler("mar", **options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options, message", [
    (dict(gtr_steps=(5, 1, 1)), "mar: gtr_steps gives stage 1 5 steps for its 4 tokens"),
    (dict(gtr_stages=5, gtr_steps=(1, 1, 1, 1, 1)), "mar: gtr_stages=5 leaves a stage empty on the model's 4x4 grid"),
    (dict(stage_diffusion=(2000, 20, 20)), "GtR: 2000 diffusion steps exceed the head's 1000 training timesteps"),
    (dict(stage_diffusion=(8, 3, 4), fts_ratio=0.1, fts_steps=2000), "FTS: 2000 diffusion steps exceed"),
    (dict(num_iter=17), "num_iter=17"),
])
def test_options_the_grid_cannot_take_are_refused_before_work(model, options, message):
    sampler = get_sampler("mar", order="gtr", **options)
    for call in (lambda: sampler.check(model), lambda: sampler.sample(model, LABELS, CONFIG)):
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_orders_that_are_not_gtrs_are_refused(model):
    with pytest.raises(ValueError, match="orders must list GtR's stages"):
        get_sampler("mar", order="gtr").sample(model, LABELS, CONFIG, orders=torch.arange(16).repeat(3, 1))
