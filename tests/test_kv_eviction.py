"""LineAR-style K/V eviction (vargen.decode.eviction, the token samplers' kv_budget): the zero setting is the
plain sampler token for token; every forward equals full attention with the evicted keys hidden; the kept set
follows the policy; rows evict independently; bad options fail before work."""
import pytest
import torch
from helpers import assert_rows_match_alone, tiny_gpt

from vargen import SamplingConfig, get_sampler
from vargen.models.draft_head import DraftHead, DraftHeadConfig
from vargen.decode import LineEviction, LineSlots
from vargen.testing import decode

CONFIG = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=8)


def _samplers(model):
    torch.manual_seed(5)
    head = DraftHead(DraftHeadConfig.from_target(model.config)).to(model.dtype)
    return {
        "ar": {},
        "sjd": dict(window=4),
        "sjd-coupled": dict(window=4, coupled=True),
        "gsd": dict(window=4),
        "sd": dict(draft=head, gamma=3),
        "lantern": dict(draft=head, gamma=3, k=4),
    }


def _get(name, **options):
    return get_sampler(name.split("-")[0], **options)


def test_zero_setting_reproduces_every_token_sampler():
    """A budget of the whole image evicts nothing: same tokens as the plain cache, for every token sampler."""
    model = tiny_gpt(vocab=16, grid=4, seed=1)
    labels = torch.tensor([0, 1, 2])
    for name, options in _samplers(model).items():
        plain = _get(name, **options).sample(model, labels, CONFIG, generator=torch.Generator().manual_seed(3))
        kept = _get(name, kv_budget=model.num_tokens, **options).sample(
            model, labels, CONFIG, generator=torch.Generator().manual_seed(3))
        assert torch.equal(plain.tokens, kept.tokens), name
        assert kept.stats.kv_cache_bytes > 0


def _reference(model, labels, tokens, visible):
    """Teacher forcing where the query at image position p sees, per layer, the condition and the image keys
    ``visible[p][layer, row]`` (what the cache held when p was computed)."""
    T, (B, P) = model.config.cls_token_num, tokens.shape
    h = torch.cat([model.embed_cond(labels), model.tok_embeddings(tokens)], dim=1)
    S = T + P
    rope = model._rope(torch.arange(S))[None]
    for i, layer in enumerate(model.layers):
        mask = torch.zeros(B, S, S, dtype=torch.bool)
        mask[:, :T, :T] = torch.ones(T, T, dtype=torch.bool).tril()
        mask[:, T:, :T] = True
        mask[:, T:, T:] = torch.stack([visible[p][i, :, :P] for p in range(P)], dim=1)
        h = layer(h, rope, mask[:, None])
    return model.output(model.norm(h)).float()[:, T:]


def test_each_forward_is_full_attention_with_the_evicted_keys_hidden():
    """Windows with rollback (speculative junk past the committed point) through an evicting cache: every
    output equals a teacher-forced pass whose per-layer masks hide what the cache did not hold, and lines were
    really evicted (the check is not vacuous)."""
    model = tiny_gpt(vocab=16, grid=4, seed=2, n_layer=2, dtype=torch.float64)
    N, B, n = model.num_tokens, 3, 3
    policy = LineEviction(budget=6, line=4, anchor=1, recent_lines=1)
    labels = torch.tensor([0, 1, 2])
    g = torch.Generator().manual_seed(0)
    final = torch.randint(16, (B, N + n), generator=g)
    cache = model.new_cache(B, N + n, eviction=policy)
    model.prefill(labels, cache)
    written = final.clone()  # the token each position last held
    visible = [None] * (N + n)
    starts = [0, 2, 3, 6, 7, 9, 10, 12, 13, 15]
    for s, nxt in zip(starts, starts[1:] + [N]):
        window = final[:, s:s + n].clone()
        junk = torch.arange(n) >= nxt - s
        window[:, junk] = torch.randint(16, (B, int(junk.sum())), generator=g)  # rejected drafts
        out = decode(model, window, torch.full((B,), s), cache)
        written[:, s:s + n] = window
        held = cache.eviction.pos  # [layers, B, slots]: what this forward read
        for i in range(n):
            p = s + i
            dense = torch.zeros(len(model.layers), B, N + n + 1, dtype=torch.bool)  # last column: free slots
            dense.scatter_(2, torch.where(held >= 0, held, N + n), (held >= 0) & (held <= p))
            visible[p] = dense[..., :-1]
        ref = _reference(model, labels, written[:, :s + n], visible[:s + n])
        torch.testing.assert_close(out, ref[:, s:s + n], rtol=1e-5, atol=1e-5)  # logits come out in float32
    held_last = visible[N - 1][:, :, : N - 1].sum(-1)
    assert (held_last < N - 1).all(), "nothing was evicted"
    complete = (cache.eviction.pos >= 0) & (cache.eviction.pos < 12)
    assert (complete.sum(-1) <= policy.budget).all()


def test_the_kept_set_is_anchors_recent_lines_and_the_best_scored():
    policy = LineEviction(budget=7, line=4, anchor=1, recent_lines=1)
    slots = LineSlots(policy, layers=2, batch=1, slots=12, device="cpu")
    slots.pos[:, 0, :8] = torch.arange(8)
    slots.lines_done.fill_(1)
    slots.score[0, 0, :8] = torch.tensor([0.0, 0.1, 0.9, 0.3, 0.0, 0.0, 0.0, 0.0])
    slots.score[1, 0, :8] = torch.tensor([0.0, 0.8, 0.1, 0.7, 0.0, 0.0, 0.0, 0.0])
    new = slots.prepare_(torch.tensor([8]), 2)
    # complete lines 0-1: anchor 0 and line 1 (4..7) kept = 5 of 7, so two of 1, 2, 3 by score per layer
    assert slots.kept_positions(0, 0) == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    assert slots.kept_positions(1, 0) == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert slots.pos[0, 0, new[0, 0]].tolist() == [8, 9]
    assert (slots.score[:, 0, new[0, 0]] == 0).all()
    # no line completed since: nothing else is evicted, and a rollback frees what lies past start
    slots.prepare_(torch.tensor([9]), 1)
    assert slots.kept_positions(0, 0) == [0, 2, 3, 4, 5, 6, 7, 8, 9]


def test_budget_cuts_the_cache_and_rows_evict_independently():
    model = tiny_gpt(vocab=16, grid=4, seed=2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0])
    config = SamplingConfig(temperature=1.0, cfg_scale=1.5)
    plain = get_sampler("sjd", window=3).sample(model, labels, config, generator=torch.Generator().manual_seed(0))
    cut = get_sampler("sjd", window=3, kv_budget=5, kv_anchor=1).sample(
        model, labels, config, generator=torch.Generator().manual_seed(0))
    assert cut.stats.kv_cache_bytes < plain.stats.kv_cache_bytes
    assert_rows_match_alone(get_sampler("sjd", window=3, kv_budget=5, kv_anchor=1), model, labels, config,
                            seeds=[11, 12, 13, 14])


def test_compiled_step_equals_eager_under_eviction():
    model = tiny_gpt(vocab=16, grid=4, seed=3)
    labels = torch.tensor([0, 1])
    sampler = get_sampler("sjd", window=3, kv_budget=6, kv_anchor=2)
    eager = sampler.sample(model, labels, CONFIG, generator=torch.Generator().manual_seed(1))
    compiled = sampler.sample(model, labels, CONFIG, generator=torch.Generator().manual_seed(1), compile=True)
    assert torch.equal(eager.tokens, compiled.tokens)


def test_bad_budgets_and_models_fail_before_work():
    model = tiny_gpt(vocab=16, grid=4, seed=1)
    with pytest.raises(ValueError, match="below what is always kept"):
        get_sampler("ar", kv_budget=4, kv_anchor=1, kv_recent_lines=1).check(model)
    with pytest.raises(ValueError, match="kv_budget must be >= 1"):
        get_sampler("ar", kv_budget=0)
    with pytest.raises(ValueError, match="need a kv_budget"):
        get_sampler("sjd", kv_anchor=8)
    with pytest.raises(ValueError, match="takes no option 'kv_budget'"):
        get_sampler("mar", kv_budget=8)
    # a budget of the whole image evicts nothing: the plain cache
    assert get_sampler("sjd", kv_budget=16).cache_options.eviction(model) is None


# -- video: Cosmos, lines of the latent grid ------------------------------------------------------------------------
def _tiny_cosmos():
    from test_cosmos_sampling import tiny_cosmos

    return tiny_cosmos(shape=(4, 2, 3), vocab=16, seed=5, sharpness=6.0)


def test_cosmos_zero_setting_and_rows_alone():
    from vargen.models.cosmos import VideoCondition

    model = _tiny_cosmos()  # 3 generated frames of 2 lines of 3 tokens
    frames = torch.randint(0, 16, (3, 6), generator=torch.Generator().manual_seed(2))
    config = SamplingConfig(temperature=1.0)
    for name, options in [("ar", {}), ("sjd", dict(window=5, init="temporal", coupled=True))]:
        plain = get_sampler(name, **options).sample(model, VideoCondition(frames), config,
                                                    torch.Generator().manual_seed(4))
        kept = get_sampler(name, kv_budget=model.num_tokens, **options).sample(
            model, VideoCondition(frames), config, torch.Generator().manual_seed(4))
        assert torch.equal(plain.tokens, kept.tokens), name
    sampler = get_sampler("sjd", window=5, init="temporal", coupled=True, kv_budget=4, kv_anchor=1)
    _rows_match_alone_video(sampler, model, frames, config, seeds=[11, 12, 13])


def _rows_match_alone_video(sampler, model, frames, config, seeds):
    from vargen.models.cosmos import VideoCondition

    batch = sampler.sample(model, VideoCondition(frames), config, [torch.Generator().manual_seed(s) for s in seeds])
    for b, s in enumerate(seeds):
        alone = sampler.sample(model, VideoCondition(frames[b:b + 1]), config, [torch.Generator().manual_seed(s)])
        assert torch.equal(alone.tokens[0], batch.tokens[b])


def test_cosmos_forward_is_full_attention_with_the_evicted_keys_hidden():
    from vargen.models.cosmos import VideoCondition

    model = _tiny_cosmos().double()
    N, B, n, T = model.num_tokens, 2, 2, model.prefix_len
    policy = LineEviction(budget=4, line=3, anchor=1, recent_lines=1)
    cond = VideoCondition(torch.randint(0, 16, (B, 6), generator=torch.Generator().manual_seed(1)))
    tokens = torch.randint(0, 16, (B, N + n), generator=torch.Generator().manual_seed(2))
    cache = model.new_cache(B, N + n, eviction=policy)
    model.prefill(cond, cache)
    visible = []
    prefix = model._prefix_ids(cond)
    for s in range(0, N, n):
        out = decode(model, tokens[:, s:s + n], torch.full((B,), s), cache)
        held = cache.eviction.pos
        for i in range(n):
            dense = torch.zeros(len(model.layers), B, N + n + 1, dtype=torch.bool)
            dense.scatter_(2, torch.where(held >= 0, held, N + n), (held >= 0) & (held <= s + i))
            visible.append(dense[..., :-1])
        seq = torch.cat([prefix, tokens[:, :s + n]], dim=1)
        S = seq.shape[1]
        positions = torch.arange(S).expand(B, S)
        cos, sin, _ = model._tables(positions)
        h = model.tok_embeddings(seq)
        for li, layer in enumerate(model.layers):
            mask = torch.zeros(B, S, S, dtype=torch.bool)
            mask[:, :T, :T] = torch.ones(T, T, dtype=torch.bool).tril()
            mask[:, T:, :T] = True
            mask[:, T:, T:] = torch.stack([visible[p][li, :, :S - T] for p in range(S - T)], dim=1)
            h = layer(h, cos.to(h.dtype), sin.to(h.dtype), mask[:, None])
        ref = model.output(model.norm(h)).float()[:, T + s:T + s + n]
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (visible[N - 1][:, :, :N - 1].sum(-1) < N - 1).all(), "nothing was evicted"


@pytest.mark.parametrize("family", ["llamagen", "cosmos", "toy"])
def test_conformance_of_eviction_on_every_token_family(family):
    """``vargen.testing.check_eviction``: through each family's forward over plans, every window with rollback equals
    full attention with what the evicting cache did not hold hidden per layer (the transformers adapters run it in
    their own test files)."""
    from vargen.testing import check_eviction

    if family == "llamagen":
        model, cond, budget = tiny_gpt(vocab=16, grid=4, seed=3, n_layer=2, dtype=torch.float64), torch.tensor([0, 2]), 6
    elif family == "cosmos":
        from vargen.models.cosmos import VideoCondition

        model = _tiny_cosmos().double()
        cond, budget = VideoCondition(torch.randint(0, 16, (2, 6), generator=torch.Generator().manual_seed(1))), 7
    else:
        from test_protocols import ToyModel

        class WideToy(ToyModel):  # four lines: room to evict
            grid, num_tokens = (1, 4, 4), 16

        model, cond, budget = WideToy(), torch.tensor([0, 1, 2]), 6
    report = check_eviction(model, cond, budget=budget)
    assert report["eviction"] < 1e-5 and report["held"] < report["positions"]
