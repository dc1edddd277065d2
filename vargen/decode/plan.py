"""Decode plans: what one forward of a token model feeds, where it writes, and what each fed token sees.

The sampler side builds a plan from what it wants fed -- a chain window (:func:`chain_plan`), a token tree
(:func:`tree_plan`), tokens at scattered image positions (:func:`scattered_plan`, ZipAR's parallel rows), the
condition prefix (:func:`prefix_plan`) -- over a :class:`~.cache.KVCache`; a model runs any plan through one
``forward(tokens, plan, cache)``, so each attention pattern is written here once, for every family.

A plan has ``m`` *entries*: the ``n`` fed tokens and, in sequences with structural row ends (Emu3, Lumina-mGPT),
*forced* entries: the row-end token after every fed token that ends an image row. The model embeds ``plan.tokens``
(the fed tokens, in entry order), puts its structural token where ``plan.forced`` is set, gives each entry the
sequence position ``plan.positions``, writes its K/V at cache slot ``plan.slots``, attends under ``plan.mask``, and
returns the outputs of ``plan.readout`` (the entry whose output predicts what follows fed token ``i``: the row end
after it, where there is one). On an evicting cache the slots, masks and eviction probes are the cache's
(:func:`layer_views`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import KVCache, move_rows_
from .tree import TokenTree

__all__ = ["DecodePlan", "LayerViews", "attention_mask", "chain_plan", "tree_plan", "scattered_plan", "prefix_plan",
           "layer_views", "keep_tree_path_", "tree_window_mask", "forced_bound"]


def attention_mask(positions: torch.Tensor, key_valid: torch.Tensor, L: int) -> torch.Tensor:
    """``[B, n, L]`` bool: a query at sequence position p sees keys at <= p that are valid (or itself)."""
    keys = torch.arange(L, device=positions.device)
    causal = keys[None, None, :] <= positions[:, :, None]
    return causal & (key_valid[:, None, :L] | (keys[None, None, :] == positions[:, :, None]))


def tree_window_mask(base: torch.Tensor, visible: torch.Tensor, key_valid: torch.Tensor, L: int) -> torch.Tensor:
    """``[B, m, L]`` bool: entry ``i`` of a window written at slots ``base + 0 .. base + m-1`` sees the valid keys
    before ``base`` and the window slots ``e`` with ``visible[.., i, e]`` (``[m, m]`` or per row ``[B, m, m]``)."""
    m = visible.shape[-1]
    rel = torch.arange(L, device=base.device)[None] - base[:, None]  # [B, L]
    history = (rel < 0) & key_valid[:, :L]
    inside = (rel >= 0) & (rel < m)
    idx = rel.clamp(0, m - 1)
    if visible.dim() == 2:
        window = visible[:, idx].permute(1, 0, 2)  # [B, m, L]
    else:
        window = visible.gather(2, idx[:, None, :].expand(-1, m, -1))
    return history[:, None, :] | (inside[:, None, :] & window)


@dataclass
class DecodePlan:
    """One forward's entries (see the module docstring): ``slots``, ``positions``, ``index`` ``[B, m]`` (cache slot,
    sequence position, image-token index -- of the token a forced entry follows; on an evicting cache of a sequence
    with row ends, the entry's sequence index after the prefix, what its slot tables count); ``mask [B, 1, m, L]``
    over the first ``L`` cache slots (or ``[layers, B, 1, m, L]``: a mask per layer; None on an evicting cache);
    ``source [B, m]`` (which fed token an entry carries; None: entry ``i`` is token ``i``), ``forced [B, m]`` (None:
    no structural entries), ``readout [B, n]`` (None: entry ``i``); ``evicts``: image tokens entering an evicting
    cache (its own slots and masks)."""

    slots: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor | None
    index: torch.Tensor | None = None
    source: torch.Tensor | None = None
    forced: torch.Tensor | None = None
    readout: torch.Tensor | None = None
    evicts: bool = False

    def tokens(self, fed: torch.Tensor) -> torch.Tensor:
        """The fed tokens ``[B, n]`` in entry order ``[B, m]`` (forced entries carry a placeholder)."""
        return fed if self.source is None else fed.gather(1, self.source)

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """Per-entry outputs ``[B, m, ...]`` -> per fed token ``[B, n, ...]``."""
        if self.readout is None:
            return x
        return x.gather(1, self.readout.view(*self.readout.shape, *([1] * (x.dim() - 2))).expand(
            -1, -1, *x.shape[2:]))


# ------------------------------------------------------------------------------------------------------------------
# Plans
# ------------------------------------------------------------------------------------------------------------------


def prefix_plan(cache: KVCache, length: int, keys: int | None = None) -> DecodePlan:
    """The condition prefix: sequence positions ``0 .. length-1`` (a padded prefix slot sees only itself), reading
    the first ``keys`` slots (all by default)."""
    L = cache.length if keys is None else keys
    rows = cache.key_valid.shape[0]
    positions = torch.arange(length, device=cache.key_valid.device).expand(rows, length)
    return DecodePlan(positions, positions, attention_mask(positions, cache.key_valid, L)[:, None])


def chain_plan(cache: KVCache, start: torch.Tensor, n: int, keys: int | None = None) -> DecodePlan:
    """Image tokens ``start .. start+n-1`` of each row (``start [B]``), each seeing the cache before it and the window
    up to itself; ``keys``: a host-side bound on the slots read (:meth:`KVCache.keys_for`)."""
    L = cache.length if keys is None else keys
    index = start[:, None] + torch.arange(n, device=start.device)
    if cache.row_width is None:
        positions = cache.seq(index)
        if cache.eviction is not None:  # the cache's own slots and masks (:class:`LayerViews`)
            return DecodePlan(positions, positions, None, index, evicts=True)
        return DecodePlan(positions, positions, attention_mask(positions, cache.key_valid, L)[:, None], index)
    B, W = index.shape[0], cache.row_width
    m = n + -(-n // W)  # n tokens span at most ceil(n / W) row ends
    if cache.eviction is not None:  # m consecutive sequence entries (the last may run past the window: never read)
        return _evicting_row_end_chain(cache, start, index, m)
    # the entries follow sequence order; unused ones go to the scratch slot (the cache's last), which no query sees
    ends = index % W == W - 1
    entry = torch.arange(n, device=start.device) + index // W - (start // W)[:, None]  # + row ends before it
    drop = torch.full_like(entry, m)  # column m is cut off: the scatter target of "no row end here"
    end_entry = torch.where(ends, entry + 1, drop)
    seq = cache.seq(index)
    positions = torch.full((B, m + 1), cache.length - 1, dtype=torch.long, device=start.device)
    positions = positions.scatter(1, entry, seq).scatter(1, end_entry, seq + 1)[:, :m]
    fed = torch.arange(n, device=start.device).expand(B, n)
    source = torch.zeros(B, m + 1, dtype=torch.long, device=start.device).scatter(1, entry, fed)[:, :m]
    forced = torch.ones(B, m + 1, dtype=torch.bool, device=start.device).scatter(
        1, entry, torch.zeros_like(ends))[:, :m]
    mask = attention_mask(positions, cache.key_valid, L)[:, None]
    index_m = torch.zeros(B, m + 1, dtype=torch.long, device=start.device)
    index_m = index_m.scatter(1, entry, index).scatter(1, end_entry, index)[:, :m]
    return DecodePlan(positions, positions, mask, index_m, source, forced, torch.where(ends, entry + 1, entry))


def _evicting_row_end_chain(cache: KVCache, start: torch.Tensor, index: torch.Tensor, m: int) -> DecodePlan:
    """A chain over an evicting cache of a sequence with row ends: its slot tables count sequence entries (lines of a
    row and its end token), so the plan's ``index`` is the entry's sequence index after the prefix."""
    W, n = cache.row_width, index.shape[1]
    base = cache.seq(start)
    positions = base[:, None] + torch.arange(m, device=start.device)
    rel = positions - cache.prefix
    forced = rel % (W + 1) == W
    source = (rel - rel // (W + 1) - start[:, None]).clamp(0, n - 1)  # the image token an entry carries
    entry = cache.seq(index) - base[:, None]
    readout = torch.where(index % W == W - 1, entry + 1, entry)
    return DecodePlan(positions, positions, None, rel, source, forced, readout, evicts=True)


def forced_bound(tree: TokenTree, width: int) -> int:
    """The most nodes of ``tree`` that can end an image row of ``width`` tokens in one forward (over every offset
    of the root in its row): the forced row-end entries a tree plan reserves."""
    cache = tree.__dict__.setdefault("_forced_bound", {})
    if width not in cache:
        cache[width] = max(sum((o + d) % width == width - 1 for d in tree.depth) for o in range(width))
    return cache[width]


def tree_plan(cache: KVCache, start: torch.Tensor, tree: TokenTree, keys: int | None = None) -> DecodePlan:
    """The nodes of ``tree`` rooted at image token ``start [B]`` (the last committed token): node ``i`` at slot
    ``base + i`` (``base``: the root's slot), at the position of image token ``start + depth[i]``, seeing the cache
    before the root and its ancestors. With row ends, a node that ends an image row gets a forced row-end child
    (entries ``n ..``), which the node's descendants see and whose output predicts the next row's first token.
    ``keys``: a bound on the slots the nodes read (:meth:`KVCache.keys_for`); the forced entries are added to it."""
    if cache.eviction is not None:
        raise ValueError("token-tree drafts cannot run over an evicting K/V cache (kv_budget)")
    t = tree.tensors(start.device)
    depth, visible = t["depth"], t["visible"]
    n = tree.size
    base = cache.seq(start)
    index = start[:, None] + depth[None]
    if cache.row_width is None:
        L = cache.length if keys is None else keys
        slots = base[:, None] + torch.arange(n, device=start.device)
        mask = tree_window_mask(base, visible, cache.key_valid, L)[:, None]
        return DecodePlan(slots, base[:, None] + depth[None], mask, index)
    B, W, F = start.shape[0], cache.row_width, forced_bound(tree, cache.row_width)
    L = cache.length if keys is None else min(keys + F, cache.length)  # the forced entries follow the nodes' slots
    ends = index % W == W - 1  # [B, n]: nodes followed by a forced row end
    rank = (ends.long().cumsum(1) - 1).clamp(min=0)
    onehot = torch.nn.functional.one_hot(rank, F).bool() & ends[..., None]  # [B, n, F]: node -> its forced entry
    strict = visible & ~torch.eye(n, dtype=torch.bool, device=start.device)  # strict ancestors
    sees_forced = (strict[None].float() @ onehot.float()).bool()  # [B, n, F]: a descendant sees the row end
    node_rows = torch.cat([visible[None].expand(B, n, n), sees_forced], 2)  # [B, n, n+F]
    forced_rows = (onehot.transpose(1, 2).float() @ node_rows.float()).bool()  # a row end sees what its node sees
    forced_rows[:, :, n:] |= torch.eye(F, dtype=torch.bool, device=start.device)  # and itself
    mask = tree_window_mask(base, torch.cat([node_rows, forced_rows], 1), cache.key_valid, L)[:, None]
    seq = cache.seq(index)
    owner = onehot.long().argmax(1)  # [B, F]: the node each forced entry follows (node 0 for an unused one)
    positions = torch.cat([seq, seq.gather(1, owner) + 1], 1)
    slots = base[:, None] + torch.arange(n + F, device=start.device)
    forced_index = index.gather(1, owner)
    source = torch.cat([torch.arange(n, device=start.device).expand(B, n),
                        torch.zeros(B, F, dtype=torch.long, device=start.device)], 1)
    forced = torch.cat([torch.zeros(B, n, dtype=torch.bool, device=start.device),
                        torch.ones(B, F, dtype=torch.bool, device=start.device)], 1)
    readout = torch.where(ends, n + rank, torch.arange(n, device=start.device))
    return DecodePlan(slots, positions, mask, torch.cat([index, forced_index], 1), source, forced, readout)


def keep_tree_path_(cache: KVCache, start: torch.Tensor, tree: TokenTree, nodes: torch.Tensor) -> None:
    """After a tree forward rooted at image token ``start [B]``: move the K/V of the tree ``nodes [B, D]`` (the nodes
    kept at depths ``1 .. D``) -- and of the row ends on their path -- to the slots of their positions."""
    base = cache.seq(start)
    D = nodes.shape[1]
    depth = torch.arange(1, D + 1, device=nodes.device)
    src, dst = base[:, None] + nodes, cache.seq(start[:, None] + depth)
    if cache.row_width is not None:  # the row end after each path node (depths 0 .. D) that ends a row
        W, n = cache.row_width, tree.size
        path = torch.cat([torch.zeros_like(nodes[:, :1]), nodes], 1)  # [B, D + 1]: depths 0 .. D
        index = start[:, None] + torch.arange(D + 1, device=nodes.device)
        ends = index % W == W - 1
        all_ends = (start[:, None] + tree.tensors(nodes.device)["depth"][None]) % W == W - 1  # [B, n]
        rank = (all_ends.long().cumsum(1) - 1).clamp(min=0).gather(1, path)
        scratch = torch.full_like(index, cache.length - 1)
        src = torch.cat([src, torch.where(ends, base[:, None] + n + rank, scratch)], 1)
        dst = torch.cat([dst, torch.where(ends, cache.seq(index) + 1, scratch)], 1)
    for t in (*cache.k, *cache.v):
        move_rows_(t, src, dst)


def _same_chain(chain: torch.Tensor, slots: torch.Tensor, L: int) -> torch.Tensor:
    """``[B, m, L]``: entry ``i`` of a chain (``chain[b, i] >= 0``) sees the slots this forward writes for entries of
    its own chain at or before its own slot."""
    B = chain.shape[0]
    owner = torch.full((B, L + 1), -1, dtype=chain.dtype, device=chain.device)
    owner.scatter_(1, torch.where(chain >= 0, slots, L), chain)  # the chain writing each slot (-1: none)
    keys = torch.arange(L, device=chain.device)
    return (owner[:, None, :L] == chain[:, :, None]) & (chain[:, :, None] >= 0) & (keys <= slots[:, :, None])


def scattered_plan(cache: KVCache, positions: torch.Tensor, written: torch.Tensor,
                   chain: torch.Tensor | None = None) -> DecodePlan:
    """Image tokens at any ``positions [B, n]``, each seeing the condition, itself and the image positions marked in
    ``written [B, N]`` at or before its own (ZipAR's parallel rows: not every earlier position holds a token yet).
    With row ends, a fed token that ends an image row is followed by its forced row end (entries ``n ..``), whose
    output predicts the next row's first token; a row end counts as written with the token before it.

    ``chain [B, n]`` (PJD's row-causal mask): an entry with ``chain >= 0`` also sees the entries of this forward in
    the same chain at or before its own position (a row's Jacobi drafts, which are not written yet), and no other
    unwritten entry; ``-1``: no chain."""
    if cache.eviction is not None:
        raise ValueError("scattered positions (parallel rows) run over a plain cache, without K/V eviction")
    T, L = cache.prefix, cache.length
    B, n = positions.shape
    dev = positions.device
    keys = torch.arange(L, device=dev)
    # the slots written image positions (and, with row ends, the row end after a row's last one) hold; a write that
    # falls outside the cache goes to an extra column, cut off below (fixed shapes, no host sync)
    written = written.bool()
    valid = torch.cat([cache.key_valid[:, :T], torch.zeros(B, L + 1 - T, dtype=torch.bool, device=dev)], 1)
    image = torch.arange(written.shape[1], device=dev)
    slot = cache.seq(image)
    valid.scatter_(1, torch.where(slot < L, slot, L).expand(B, -1), written)
    W = cache.row_width
    if W is not None:
        ends = (image % W == W - 1) & (slot + 1 < L)
        valid.scatter_(1, torch.where(ends, slot + 1, L).expand(B, -1), written)
    valid = valid[:, :L]
    seq = cache.seq(positions)
    if W is None:
        mask = ((keys <= seq[:, :, None]) & valid[:, None]) | (keys == seq[:, :, None])
        if chain is not None:
            mask |= _same_chain(chain, seq, L)
        return DecodePlan(seq, seq, mask[:, None], positions)
    fed_ends = positions % W == W - 1
    end_pos = torch.where(fed_ends, seq + 1, torch.full_like(seq, L - 1))  # no row end: the scratch slot
    entries = torch.cat([seq, end_pos], 1)  # [B, 2n]: the tokens, then their row ends
    mask = ((keys <= entries[:, :, None]) & valid[:, None]) | (keys == entries[:, :, None])
    if chain is not None:  # a row end belongs to its token's chain; a scratch entry to none
        mask |= _same_chain(torch.cat([chain, torch.where(fed_ends, chain, -1)], 1), entries, L)
    mask[:, n:] &= fed_ends[:, :, None] | (keys == L - 1)  # a scratch entry sees only itself
    fed = torch.arange(n, device=dev).expand(B, n)
    forced = torch.cat([torch.zeros_like(fed_ends), torch.ones_like(fed_ends)], 1)
    readout = torch.where(fed_ends, fed + n, fed)
    return DecodePlan(entries, entries, mask[:, None], torch.cat([positions, positions], 1), torch.cat([fed, fed], 1),
                      forced, readout)


# ------------------------------------------------------------------------------------------------------------------
# Per-layer views: the plan's slots and mask, or an evicting cache's
# ------------------------------------------------------------------------------------------------------------------


class LayerViews:
    """What layer ``i`` of a forward over ``plan`` needs: ``write(i) = (rows, slots)``, ``mask(i)`` and ``probe(i)``
    (an evicting cache's score accumulator, else None); :meth:`finish` after the last layer."""

    def __init__(self, plan: DecodePlan, cache: KVCache):
        B, m = plan.slots.shape
        self.rows = torch.arange(B, device=plan.slots.device)[:, None].expand(B, m)
        self.cache = cache
        self.plan = plan
        if plan.evicts:  # image tokens into an evicting cache: per layer, its slots, mask and eviction scores
            T = cache.prefix
            self.slots, self.masks, self.probes = cache.eviction.step(plan.index, cache.key_valid[:, :T])
        else:  # a plan's own mask: one for every layer, or per layer ([layers, B, 1, m, L])
            self.slots, self.probes = None, None
            self.masks = plan.mask if plan.mask.dim() == 5 else None

    def write(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows, (self.plan.slots if self.slots is None else self.slots[i])

    @property
    def per_layer(self) -> bool:
        """The layers attend under different masks (an evicting cache, or a plan with per-layer masks)."""
        return self.masks is not None

    def mask(self, i: int) -> torch.Tensor:
        return self.plan.mask if self.masks is None else self.masks[i]

    def probe(self, i: int) -> torch.Tensor | None:
        return None if self.probes is None else self.probes[i]

    def finish(self) -> None:
        if self.probes is not None:
            self.cache.eviction.absorb(self.probes)


def layer_views(plan: DecodePlan, cache: KVCache) -> LayerViews:
    return LayerViews(plan, cache)
