"""Token samplers on video: the protocol checks on Cosmos models, losslessness of SJD with the temporal init by
enumeration (with a power check), and every token sampler at batch > 1 with per-row acceptance."""
import itertools

import pytest
import torch

from helpers import ResampleFromTarget, _law, chi_square_pvalue, randomise_
from vargen.models.base import TextCondition
from vargen.models.cosmos import CosmosConfig, CosmosTransformer, VideoCondition
from vargen.samplers import get_sampler
from vargen.samplers.base import SamplingConfig
from vargen.samplers.proposers.jacobi import INITS
from vargen.testing import check_token_model


def tiny_cosmos(shape=(3, 1, 2), vocab=6, context_frames=1, layers=2, seed=0, text=False, sharpness=3.0):
    """A random Cosmos transformer with trained-like (peaked) distributions."""
    cfg = CosmosConfig(dim=32, n_layers=layers, n_heads=4, n_kv_heads=2, vocab_size=vocab, ffn_hidden_size=64,
                       video_latent_shape=list(shape), max_seq_len=64, pad_to_multiple_of=16,
                       context_frames=context_frames, precision="float32", insert_cross_attn=text,
                       apply_abs_pos_emb=text, context_dim=8, training_type="text_to_video" if text else "video_to_video")
    torch.manual_seed(seed)
    model = CosmosTransformer(cfg)
    with torch.no_grad():
        randomise_(model.named_parameters(), torch.Generator().manual_seed(seed))
        model.output.weight.mul_(sharpness)
    return model.eval()


# -- the protocol ---------------------------------------------------------------------------------------------------
def test_conformance_video_to_video():
    model = tiny_cosmos(shape=(3, 2, 3), vocab=11)
    cond = VideoCondition(torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(0)))
    check_token_model(model, cond)
    assert model.grid == (2, 2, 3) and torch.equal(model.frame_before(cond), cond.frames)


def test_conformance_video2world_with_and_without_context_frames():
    g = torch.Generator().manual_seed(1)
    for ctx in (0, 1):
        model = tiny_cosmos(shape=(3, 2, 2), vocab=9, context_frames=ctx, text=True)
        text = TextCondition(torch.randn(2, 5, 8, generator=g), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
        cond = VideoCondition(torch.randint(0, 9, (2, 4 * ctx), generator=g), text)
        check_token_model(model, cond)
        assert (model.frame_before(cond) is None) == (ctx == 0)


# -- losslessness by enumeration: 2 generated frames of 1x2 tokens, 6 codes (1296 clips) ----------------------------
CONFIG = SamplingConfig(temperature=1.0, top_k=5)
CONTEXT = torch.tensor([[2, 4]])  # the context frame the temporal init copies from for the first generated frame


@pytest.fixture(scope="module")
def small():
    return tiny_cosmos(shape=(3, 1, 2), vocab=6, seed=3)


@pytest.fixture(scope="module")
@torch.no_grad()
def exact(small):
    seqs = torch.tensor(list(itertools.product(range(6), repeat=small.num_tokens)))
    return _law(seqs, small.logits(VideoCondition(CONTEXT.expand(len(seqs), -1)), seqs), CONFIG)


def _draw(sampler, model, n=10000, seed=7):
    return sampler.sample(model, VideoCondition(CONTEXT.expand(n, -1)), CONFIG, torch.Generator().manual_seed(seed)).tokens


@pytest.mark.parametrize("options", [
    dict(window=3, init="temporal"),
    dict(window=4, init="temporal", coupled=True),
    dict(window=3, init="temporal_sample"),
    dict(window=4, init="temporal_sample", coupled=True),
    dict(window=4, init="temporal_sample", coupled=True, tree_width=3),  # SJD-PAC's tree over temporal drafts
], ids=lambda o: f"{o['init']}-W{o['window']}{'-coupled' if o.get('coupled') else ''}{'-tree' if o.get('tree_width') else ''}")
def test_temporal_sjd_is_lossless(small, exact, options):
    assert chi_square_pvalue(_draw(get_sampler("sjd", **options), small), exact) > 1e-3


def test_ar_matches_the_enumeration(small, exact):
    assert chi_square_pvalue(_draw(get_sampler("ar"), small), exact) > 1e-3


def test_chi_square_test_has_power(small, exact):
    """Resampling from p instead of the residual after a rejected temporal draft is detected."""
    broken = get_sampler("sjd", window=4, init="temporal", acceptance=ResampleFromTarget())
    assert chi_square_pvalue(_draw(broken, small), exact) < 1e-6


def test_temporal_drafts_copy_the_previous_frame(small):
    """The first generated frame's drafts are the context frame's tokens (one-hot q); later frames copy the
    frame before them from the sequence."""
    from vargen.samplers.proposers.jacobi import fresh_drafts

    seq = torch.tensor([[5, 1, 0, 0]])
    tok, q = fresh_drafts("temporal", (2, 1, 2), 6, seq, None, torch.tensor([0]), torch.tensor([[0, 1]]),
                          torch.rand(1, 2), before=CONTEXT)
    assert tok.tolist() == [[2, 4]] and torch.equal(q.argmax(-1), tok) and bool((q.max(-1).values == 1).all())
    tok, _ = fresh_drafts("temporal", (2, 1, 2), 6, seq, None, torch.tensor([2]), torch.tensor([[2, 3]]),
                          torch.rand(1, 2), before=CONTEXT)
    assert tok.tolist() == [[5, 1]]


# -- every token sampler, batch > 1 ---------------------------------------------------------------------------------
SAMPLERS = [("ar", {}), *[("sjd", dict(window=5, init=i)) for i in INITS],
            ("sjd", dict(window=6, init="temporal", coupled=True)), ("gsd", dict(window=4, group_size=3)),
            ("lantern", dict(gamma=3, k=4, delta=0.2)), ("sd", dict(gamma=3))]


@pytest.mark.parametrize("name,options", SAMPLERS, ids=[f"{n}-{o.get('init', '')}" for n, o in SAMPLERS])
def test_every_token_sampler_runs_rows_independently(name, options):
    model = tiny_cosmos(shape=(4, 2, 3), vocab=16, seed=5, sharpness=6.0)
    if name in ("sd", "lantern"):
        options = dict(options, draft=tiny_cosmos(shape=(4, 2, 3), vocab=16, layers=1, seed=6, sharpness=6.0))
    sampler = get_sampler(name, **options)
    frames = torch.randint(0, 16, (3, 6), generator=torch.Generator().manual_seed(2))
    seeds = [11, 12, 13]
    batch = sampler.sample(model, VideoCondition(frames), CONFIG, [torch.Generator().manual_seed(s) for s in seeds])
    accepted = torch.stack(batch.stats.accepted)
    if name != "ar":
        assert len({tuple(accepted[:, b].tolist()) for b in range(3)}) > 1, "rows should advance differently"
    for b, s in enumerate(seeds):
        alone = sampler.sample(model, VideoCondition(frames[b : b + 1]), CONFIG, [torch.Generator().manual_seed(s)])
        assert torch.equal(alone.tokens[0], batch.tokens[b])


def test_compiled_step_gives_the_eager_tokens():
    model = tiny_cosmos(shape=(3, 2, 2), vocab=8, seed=2)
    cond = VideoCondition(torch.randint(0, 8, (2, 4), generator=torch.Generator().manual_seed(0)))
    sampler = get_sampler("sjd", window=4, init="temporal_sample", coupled=True)
    eager = sampler.sample(model, cond, CONFIG, torch.Generator().manual_seed(1))
    compiled = sampler.sample(model, cond, CONFIG, torch.Generator().manual_seed(1), compile=True)
    assert torch.equal(eager.tokens, compiled.tokens)
