"""Protocol conformance checks any model (vargen's or a user's) can run before sampler work.

    from vargen.testing import check_token_model
    check_token_model(my_model, cond)      # raises AssertionError naming the first broken promise

Each check exercises what the samplers rely on (``vargen/models/base.py``): shapes, per-row positions,
windows past the end of the grid, stale cache entries, a cache reused across calls, CFG rows, and --
where the model has teacher forcing -- that cached decoding gives the teacher-forcing logits. They
return a small dict of what was measured (largest differences) for reports.
"""
from __future__ import annotations

from typing import Any

import torch

from .decode import DecodePlan, LineEviction, TokenTree, chain_plan, keep_tree_path_, scattered_plan, tree_plan
from .models.base import ContinuousModel, HiddenStateModel, ScaleModel, TokenModel
from .models.init import trained_like_init_

__all__ = ["check_token_model", "check_eviction", "check_scale_model", "check_continuous_model", "trained_like_init_",
           "decode"]


def _missing(model, protocol) -> list[str]:
    names = [n for n in dir(protocol) if not n.startswith("_")] + list(getattr(protocol, "__annotations__", {}))
    return sorted({n for n in names if not hasattr(model, n)})


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, what: str) -> float:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    diff = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol:g}"
    return diff


def decode(model, tokens: torch.Tensor, start: torch.Tensor, cache, kv_len: int | None = None, **kw):
    """A chain window: ``model(tokens, chain_plan(...), cache)`` (image tokens ``start .. start+n-1`` per row)."""
    return model(tokens, chain_plan(cache, start, tokens.shape[1], cache.keys_for(kv_len)), cache, **kw)


def _check_tree(model, tokens, fresh, zeros, atol, g) -> float:
    """A token tree in one forward against a plain forward of each node's path, and ``keep_tree_path_`` against the
    path decoded as a chain, rooted at tokens ``W - 2`` and ``W - 3``: with row ends, branches cross one, and the
    last kept node ends a row."""
    tree = TokenTree((-1, 0, 1, 0, 3, 0))  # the chain 0-1-2, a side branch 3-4, a third child 5
    B, V, dev = tokens.shape[0], model.vocab_size, tokens.device
    W, worst = model.grid[-1], 0.0

    def path_logits(seq):  # the last entry's logits of a plain forward over ``seq`` from position 0
        cache, _ = fresh(8)
        return decode(model, seq, zeros(0), cache)[:, -1]

    for s in sorted({max(1, min(W - k, model.num_tokens - 4)) for k in (2, 3)}):  # the root: token s
        nodes = torch.randint(0, V, (B, tree.size), generator=g).to(dev)
        nodes[:, 0] = tokens[:, s]
        cache, _ = fresh(8)
        decode(model, tokens[:, :s], zeros(0), cache)
        out = model(nodes, tree_plan(cache, zeros(s), tree), cache)
        assert tuple(out.shape) == (B, tree.size, V), f"a tree forward returned {tuple(out.shape)}"
        for i, path in enumerate([[0], [0, 1], [0, 1, 2], [0, 3], [0, 3, 4], [0, 5]]):
            seq = torch.cat([tokens[:, :s], nodes[:, path]], 1)
            worst = max(worst, _close(out[:, i], path_logits(seq), atol, f"tree node {i} vs its path as a chain"))
        keep_tree_path_(cache, zeros(s), tree, torch.tensor([[3, 4]], device=dev).expand(B, 2))
        nxt = tokens[:, s + 3 : s + 4]
        seq = torch.cat([tokens[:, :s], nodes[:, [0, 3, 4]], nxt], 1)
        after = decode(model, nxt, zeros(s + 3), cache)[:, 0]
        worst = max(worst, _close(after, path_logits(seq), atol, "decoding on after keep_tree_path_ (a side branch)"))
    return worst


def _check_scattered(model, tokens, fresh, zeros, atol) -> float:
    """Tokens at scattered positions (the end of row 0 and all of row 1 in parallel, ZipAR) against one forward of
    the whole prefix whose plan gives each of them -- and the row end after row 1, where the sequence has row ends --
    the same visibility: the condition, itself and the positions marked written (position ``W - 1`` holds no token
    yet)."""
    B, N, dev = tokens.shape[0], model.num_tokens, tokens.device
    W = model.grid[-1]
    if N < 2 * W + 1 or W < 3:
        return 0.0
    fed = torch.tensor([W - 2, *range(W, 2 * W)], device=dev)
    written = torch.zeros(B, N + 4, dtype=torch.bool, device=dev)
    written[:, : W - 1] = True
    written[:, fed] = True
    written[:, W - 1] = False
    cache, _ = fresh()
    decode(model, tokens[:, : W - 2], zeros(0), cache)
    plan = scattered_plan(cache, fed.expand(B, -1), written)
    out = model(tokens[:, fed], plan, cache)
    ref_cache, _ = fresh()
    full = chain_plan(ref_cache, zeros(0), 2 * W + 1)
    mask = full.mask.clone()
    k = fed.shape[0]
    entry = fed + (fed // W if cache.row_width else 0)  # the entry of each fed token in the full chain
    mask[:, :, entry] = plan.mask[:, :, :k, : mask.shape[-1]]
    if cache.row_width:  # the row end after row 1
        mask[:, :, entry[-1] + 1] = plan.mask[:, :, 2 * k - 1, : mask.shape[-1]]
    ref = model(tokens[:, : 2 * W + 1], DecodePlan(full.slots, full.positions, mask, full.index, full.source,
                                                   full.forced, full.readout), ref_cache)
    return _close(out, ref[:, fed], atol, "scattered positions vs one forward with the same visibility")


@torch.no_grad()
def check_token_model(model, cond, atol: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Check ``model`` against :class:`~vargen.models.base.TokenModel` with condition ``cond``."""
    missing = _missing(model, TokenModel)
    assert not missing, f"{type(model).__name__} is not a TokenModel: missing {missing}"
    B = model.check_cond(cond)
    assert isinstance(B, int) and B >= 1, f"check_cond must return the batch size, got {B!r}"
    V, N, dev = model.vocab_size, model.num_tokens, torch.device(model.device)
    T, H, W = model.grid
    assert T * H * W == N, f"grid {model.grid} holds {T * H * W} tokens but num_tokens is {N}"
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, N + 4), generator=g).to(dev)  # 4 past the end for overrunning windows
    report: dict[str, Any] = {}

    def fresh(extra=4):
        cache = model.new_cache(B, N + extra)
        first = model.prefill(cond, cache)
        assert tuple(first.shape) == (B, V), f"prefill returned {tuple(first.shape)}, expected [{B}, {V}]"
        return cache, first

    def zeros(value=0):
        return torch.full((B,), value, dtype=torch.long, device=dev)

    # memory_per_row bounds what one row's cache holds and a forward's float32 logits (vargen.budget relies on it)
    cache, first = fresh()
    per_row = model.memory_per_row(cond, 4, N + 4)
    held = cache.nbytes // B + 4 * 4 * V if hasattr(cache, "nbytes") else 4 * 4 * V
    assert isinstance(per_row, int) and per_row >= held, (f"memory_per_row(cond, 4, {N + 4}) = {per_row} is below the "
                                                          f"{held} bytes a row's cache and logits hold")
    report["memory_per_row"] = per_row

    # one token per call: the reference for everything below
    steps = [first]
    for t in range(N - 1):
        out = decode(model, tokens[:, t : t + 1], zeros(t), cache)
        assert tuple(out.shape) == (B, 1, V), f"forward of one token returned {tuple(out.shape)}, expected [{B}, 1, {V}]"
        steps.append(out[:, 0])
    step = torch.stack(steps, 1)  # entry t predicts token t
    assert torch.isfinite(step).all(), "non-finite logits"

    if hasattr(model, "logits"):
        report["teacher_forcing"] = _close(model.logits(cond, tokens[:, :N]), step, atol, "teacher forcing vs cached decode")

    # a chunk of 4 per call (a verification window), with the host-side bound kv_len
    cache, first = fresh()
    chunks = [first[:, None]]
    for t in range(0, N - 1, 4):
        n = min(4, N - 1 - t)
        chunks.append(decode(model, tokens[:, t : t + n], zeros(t), cache, kv_len=t + n))
    report["chunked"] = _close(torch.cat(chunks, 1), step, atol, "chunks of 4 vs one token per call")

    # per-row positions: rows restart a window at different points of a filled cache
    w = min(3, N - 1)
    if w >= 1:
        decode(model, tokens[:, : N - 1], zeros(0), cache)
        starts = torch.tensor([(2 * b) % (N - w) for b in range(B)], device=dev)
        idx = starts[:, None] + torch.arange(w, device=dev)
        out = decode(model, tokens.gather(1, idx), starts, cache)
        want = step.gather(1, (idx + 1)[..., None].expand(-1, -1, V))
        report["per_row"] = _close(out, want, atol, "rows at different start positions")

    # stale entries: wrong drafts written at 0..5, then the right tokens from 0 again (a rollback)
    cache, _ = fresh()
    wrong = torch.randint(0, V, (B, min(6, N)), generator=g).to(dev)
    decode(model, wrong, zeros(0), cache)
    n = min(3, N - 1)
    out = decode(model, tokens[:, :n], zeros(0), cache)
    report["rollback"] = _close(out, step[:, 1 : n + 1], atol, "after a rollback (stale entries must be masked)")

    # a window running past the end of the grid: its in-grid entry is right, the rest finite
    start = max(0, N - 2)
    out = decode(model, tokens[:, start : start + 4], zeros(start), cache)
    assert tuple(out.shape) == (B, 4, V) and torch.isfinite(out).all(), "a window past the end of the grid must work"

    # the same cache reused for a new call (prefill again) gives the same logits
    again = [model.prefill(cond, cache)]
    for t in range(min(4, N - 1)):
        again.append(decode(model, tokens[:, t : t + 1], zeros(t), cache)[:, 0])
    report["reuse"] = _close(torch.stack(again, 1), step[:, : len(again)], atol, "a cache reused across calls")

    # CFG rows: [cond; null] in one batch, the cond half unchanged
    if getattr(model, "guidable", model.conditional):
        both = model.guidance_cond(cond)
        cache2 = model.new_cache(2 * B, N + 4)
        first2 = model.prefill(both, cache2)
        assert tuple(first2.shape) == (2 * B, V), f"guidance_cond must give {2 * B} rows, prefill returned {tuple(first2.shape)}"
        report["cfg_rows"] = _close(first2[:B], first, atol, "the cond half of a CFG batch")

    # every plan kind: token trees (with forced row ends where the sequence has them), scattered positions
    report["tree"] = _check_tree(model, tokens, fresh, zeros, atol, g)
    report["scattered"] = _check_scattered(model, tokens, fresh, zeros, atol)

    book = model.codebook()
    assert book.dim() == 2 and book.shape[0] == V, f"codebook() must be [V={V}, d], got {tuple(book.shape)}"

    if isinstance(model, HiddenStateModel):
        cache, _ = fresh()
        logits, hidden = decode(model, tokens[:, :2], zeros(0), cache, return_hidden=True)
        assert tuple(hidden.shape) == (B, 2, model.hidden_size), f"hidden states {tuple(hidden.shape)}"
        report["head"] = _close(model.head(hidden), logits, atol, "head(hidden) vs the logits")
        assert tuple(model.embed(tokens[:, :2]).shape) == (B, 2, model.hidden_size), "embed(tokens) shape"
    return report


@torch.no_grad()
def check_eviction(model, cond, budget: int, anchor: int = 1, recent_lines: int = 1, window: int = 3,
                   atol: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """K/V eviction (LineAR) on ``model``: windows with rollback (junk past the committed point) through a cache
    evicting to ``budget`` image tokens; every output equals one forward of the whole sequence over a plain cache
    whose per-layer masks show each position exactly what the evicting cache held when it was computed, and keys
    were really evicted (the check is not vacuous)."""
    B, N, V, dev = model.check_cond(cond), model.num_tokens, model.vocab_size, torch.device(model.device)
    policy = LineEviction(budget, model.grid[-1], anchor, recent_lines)
    g = torch.Generator().manual_seed(seed)
    final = torch.randint(0, V, (B, N + window), generator=g).to(dev)
    cache = model.new_cache(B, N + window, eviction=policy)
    model.prefill(cond, cache)
    seen: dict[int, torch.Tensor] = {}  # sequence index after the prefix -> [layers, B, slots] held positions
    written, worst, starts = final.clone(), 0.0, [0]
    while starts[-1] < N - 1:
        starts.append(min(N - 1, starts[-1] + 1 + int(torch.randint(0, window, (1,), generator=g))))
    for s, nxt in zip(starts, starts[1:] + [N]):
        tokens = final[:, s : s + window].clone()
        junk = torch.arange(window, device=dev) >= nxt - s
        tokens[:, junk] = torch.randint(0, V, (B, int(junk.sum())), generator=g).to(dev)  # rejected drafts
        plan = chain_plan(cache, torch.full((B,), s, device=dev), window)
        out = model(tokens, plan, cache)
        written[:, s : s + window] = tokens
        for e in range(plan.index.shape[1]):
            seen[int(plan.index[0, e])] = cache.eviction.pos.clone()
        ref_cache = model.new_cache(B, N + window)
        model.prefill(cond, ref_cache)
        full = chain_plan(ref_cache, torch.zeros(B, dtype=torch.long, device=dev), s + window)
        rel = full.positions - ref_cache.prefix
        L = full.mask.shape[-1]
        layers = cache.eviction.pos.shape[0]
        mask = full.mask[None].expand(layers, -1, -1, -1, -1).clone()
        for e in range(rel.shape[1]):
            r = int(rel[0, e])
            if r not in seen:
                continue  # a scratch entry: never read
            held = seen[r]  # [layers, B, slots]
            image = torch.zeros(layers, B, L, dtype=torch.bool, device=dev)
            slot = (ref_cache.prefix + held).clamp(0, L - 1)
            image.scatter_(2, slot, (held >= 0) & (held <= r))
            prefix = ref_cache.key_valid[:, :L].clone()
            prefix[:, ref_cache.prefix:] = False
            mask[:, :, 0, e] = image | prefix[None]
        ref = model(written[:, : s + window], DecodePlan(full.slots, full.positions, mask, full.index, full.source,
                                                          full.forced, full.readout), ref_cache)
        worst = max(worst, _close(out, ref[:, s : s + window], atol, f"evicting window at {s} vs full attention "
                                                                    "with the evicted keys hidden"))
    held = (cache.eviction.pos >= 0).sum(-1)
    assert bool((held < len(seen)).all()), "nothing was evicted"
    return {"eviction": worst, "held": int(held.max()), "positions": len(seen)}


@torch.no_grad()
def check_scale_model(model, labels, atol: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Check a next-scale model: cached scale-by-scale decoding (and a multi-scale prefill) give the
    logits of one block-causal pass over every scale."""
    missing = _missing(model, ScaleModel)
    assert not missing, f"{type(model).__name__} is not a ScaleModel: missing {missing}"
    labels = model.check_labels(labels)
    B, K = labels.shape[0], len(model.patch_nums)
    ends = [pn * pn for pn in model.patch_nums]
    assert [b - a for a, b in model.begin_ends] == ends, "begin_ends must follow patch_nums"
    L = model.begin_ends[-1][1]
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(B, L - ends[0], model.Cvae, generator=g).to(model.device)
    cond = model.condition(labels)
    full = model.forward_scales(cond, inputs, None, 0, K, logits_from=0)
    assert tuple(full.shape) == (B, L, model.vocab_size), f"one pass over all scales gave {tuple(full.shape)}"
    cache = model.new_cache(B)
    per_scale = []
    for k in range(K):
        a, b = model.begin_ends[k]
        x = inputs[:, a - ends[0] : b - ends[0]] if k else None
        per_scale.append(model.forward_scales(cond, x, cache, k, k + 1, logits_from=k))
    report = {"per_scale": _close(torch.cat(per_scale, 1), full, atol, "scale-by-scale cached vs one pass")}
    held = (cache.nbytes if hasattr(cache, "nbytes") else 0) // B + 4 * L * model.vocab_size
    report["memory_per_row"] = per_row = model.memory_per_row()
    assert isinstance(per_row, int) and per_row >= held, f"memory_per_row() = {per_row} is below the {held} bytes a row's cache and logits hold"
    if K > 1:  # a prefill of the first scales (no head) into a cache that only holds them, then one step
        half = max(1, K // 2)
        cache = model.new_cache(B, length=model.begin_ends[half][1])
        assert model.forward_scales(cond, inputs[:, : model.begin_ends[half - 1][1] - ends[0]], cache, 0, half) is None
        a, b = model.begin_ends[half]
        step = model.forward_scales(cond, inputs[:, a - ends[0] : b - ends[0]], cache, half, half + 1, logits_from=half)
        report["prefill_then_step"] = _close(step, full[:, a:b], atol, "multi-scale prefill then one cached scale")
    return report


@torch.no_grad()
def check_continuous_model(model, labels, seed: int = 0) -> dict[str, Any]:
    """Check a continuous-token model: condition shapes with and without CFG rows, generation orders, and a
    diffusion head that is a function of the noise it is given."""
    missing = _missing(model, ContinuousModel)
    assert not missing, f"{type(model).__name__} is not a ContinuousModel: missing {missing}"
    labels = model.check_labels(labels)
    B, L, C = labels.shape[0], model.seq_len, model.token_embed_dim
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, L, C, generator=g).to(model.device)
    mask = torch.ones(B, L, dtype=torch.bool, device=model.device)
    mask[:, : L // 2] = False
    z = model.condition(tokens, mask, labels)
    z2 = model.condition(tokens, mask, labels, cfg=True)
    assert z.shape[:2] == (B, L) and z2.shape[:2] == (2 * B, L), f"condition shapes {tuple(z.shape)}, {tuple(z2.shape)}"
    diff = float((z2[:B] - z).abs().max())
    assert diff < 1e-4, f"the cond half of a CFG batch differs by {diff:.3g}"
    orders = model.sample_orders(B, torch.Generator(model.device).manual_seed(seed), model.device)
    assert torch.equal(orders.sort(-1).values, torch.arange(L, device=orders.device).expand(B, L)), "orders must be permutations"
    rows = z[mask][:4]
    from .samplers.diffusion_head import denoise

    x = denoise(model.diffloss, rows, 1.0, 1.0, generator=torch.Generator(model.device).manual_seed(seed))
    y = denoise(model.diffloss, rows, 1.0, 1.0, generator=torch.Generator(model.device).manual_seed(seed))
    assert x.shape == (rows.shape[0], C) and torch.equal(x, y), "the diffusion head must be a function of its noise"
    assert model.diffloss.num_sampling_steps >= 1
    held = z.numel() * z.element_size() // B + tokens.numel() * tokens.element_size() // B
    per_row = model.memory_per_row(L)
    assert isinstance(per_row, int) and per_row >= held, f"memory_per_row({L}) = {per_row} is below the {held} bytes of a row's z and tokens"
    return {"cfg_rows": diff, "memory_per_row": per_row}
