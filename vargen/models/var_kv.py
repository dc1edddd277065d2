"""Head- and scale-aware K/V budgets for next-scale models: HACK and ScaleKV.

A next-scale model's cache grows with every scale (all of them for the last one). Both methods keep, per
layer and head, a fixed number of the earlier scales' K/V and evict the rest after each scale, choosing by
the attention the newest scale paid to them; they differ in who gets how much:

* **HACK** (Qin et al., "Head-Aware KV Cache Compression for Efficient Visual Autoregressive Modeling",
  arXiv 2504.09261, Sec. 3): heads are classified once, offline, by their attention pattern. *Contextual* heads
  look at the same few earlier keys from every query (vertical stripes: their attention over earlier keys is
  concentrated); *structural* heads look at the spatially matching place of each earlier scale (diagonals:
  spread out). Budgets are asymmetric (here: structural heads 1.5x the mean, contextual the rest) and the strategy is
  per pattern: contextual heads keep their most attended keys, structural heads the most recent ones (the finest
  earlier scale carries the spatial structure they copy).
* **ScaleKV** (Li et al., "Memory-Efficient Visual Autoregressive Modeling with Scale-Aware KV Cache
  Compression", arXiv 2505.19602, Sec. 3): layers are *drafters* (attention dispersed over earlier scales) or
  *refiners* (attention on the current token map), identified per scale offline; drafters get 1.5x the mean
  budget, refiners the rest; every head keeps its most attended keys (the official code scores with a grid of the
  new scale's queries; here all of them).
* ``uniform``: the same budget and attention ranking everywhere (SnapKV-style), the reference point.

The calibration runs the plain sampler once on one image per class (:func:`vargen.samplers.next_scale.kv_budget_plan`)
with every layer's attention recorded (:func:`attention_recorded`); :func:`head_statistics` reduces the records. The
cache (:class:`BudgetedScaleCache`) stores ``capacity`` slots per layer and head (the largest budget); the K/V of the
scale in flight live only while their layer runs (attention, then the eviction folds the survivors into the stored
slots), as in the official implementations, which compress right after each layer's attention. ``Stats`` reports the
peak of the entries that hold tokens: every layer's stored ones plus one layer's scale in flight (the plain cache
keeps every position of every layer).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["KVBudget", "BudgetedScaleCache", "attention_recorded", "head_statistics", "budgets_for",
           "POLICIES"]

POLICIES = ("hack", "scalekv", "uniform")
HIGH = 1.5  # the favoured half's share of the mean budget (the other half gets what keeps the mean)


@dataclass(frozen=True)
class KVBudget:
    """``budgets [K, depth, H]``: earlier-scale entries the cache keeps for scale ``k``'s forward, per layer and
    head; ``recency [depth, H]``: the head keeps the most recent entries instead of the most attended."""

    budgets: torch.Tensor
    recency: torch.Tensor
    policy: str

    @property
    def capacity(self) -> int:
        return int(self.budgets.max())


@dataclass
class HeadStatistics:
    """From one calibration run: ``earlier_mass [K, depth, H]``, the attention scale ``k``'s queries pay to earlier
    scales; ``concentration [depth, H]``, the share of that attention on the 10% most attended earlier keys
    (high: vertical, contextual; low: diagonal, structural), averaged over scales >= 2."""

    earlier_mass: torch.Tensor
    concentration: torch.Tensor


@contextmanager
def attention_recorded(model):
    """While inside, every attention layer of ``model`` records its probabilities per forward; yields the
    per-layer lists (``[layer][forward]``: ``[H, n, keys]``, the mean over rows) for :func:`head_statistics`."""
    attns = [block.attn for block in model.blocks]
    for a in attns:
        a.record = []
    try:
        yield [a.record for a in attns]
    finally:
        for a in attns:
            a.record = None


def head_statistics(model, records) -> HeadStatistics:
    """The statistics of a calibration run of the plain next-scale sampler, one forward per scale, recorded by
    :func:`attention_recorded`."""
    attns = [block.attn for block in model.blocks]
    K, depth, H = len(model.patch_nums), len(attns), attns[0].num_heads
    mass = torch.zeros(K, depth, H)
    conc = torch.zeros(depth, H)
    used = 0
    for k, (begin, _) in enumerate(model.begin_ends):
        if k == 0:
            continue
        for layer in range(depth):
            probs = records[layer][k]  # [H, n, begin + n]: mean over rows
            earlier = probs[..., :begin]
            mass[k, layer] = earlier.sum(-1).mean(-1)
            if k >= 2:
                cols = earlier.sum(1)  # [H, begin]: attention each earlier key received
                top = max(1, round(0.1 * begin))
                conc[layer] += cols.topk(top, dim=-1).values.sum(-1) / cols.sum(-1).clamp_min(1e-12)
        used += k >= 2
    return HeadStatistics(mass, conc / max(used, 1))


def budgets_for(stats: HeadStatistics, policy: str, budget: int, begin_ends) -> KVBudget:
    """Per-scale, per-layer, per-head budgets under ``policy`` with mean ``min(budget, earlier_k)`` at every scale
    ``k`` (``earlier_k = begin_ends[k][0]`` entries exist before it): the favoured half gets 1.5x, capped at
    ``earlier_k``, the other half what keeps the mean (so a cap does not shrink the total)."""
    if policy not in POLICIES:
        raise ValueError(f"kv_policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    K, depth, H = stats.earlier_mass.shape
    favoured = torch.zeros(K, depth, H, dtype=torch.bool)
    recency = torch.zeros(depth, H, dtype=torch.bool)
    if policy == "hack":
        structural = _lower_half(stats.concentration.flatten()).view(depth, H)  # the less concentrated half
        favoured[:] = structural
        recency = structural
    elif policy == "scalekv":
        drafters = ~_lower_half(stats.earlier_mass.mean(-1).flatten(1)).view(K, depth)  # per scale, per layer
        favoured[:] = drafters[..., None]
    earlier = torch.tensor([b for b, _ in begin_ends], dtype=torch.float32)[:, None, None]
    mean = earlier.clamp(max=budget)
    high = torch.minimum(HIGH * mean, earlier)
    n_high = favoured.flatten(1).sum(1).float()[:, None, None]
    n_low = depth * H - n_high
    low = ((depth * H * mean - n_high * high) / n_low.clamp(min=1)).clamp(max=earlier)
    budgets = torch.where(favoured, high, low) if policy != "uniform" else mean.expand(K, depth, H)
    return KVBudget(budgets.round().long(), recency, policy)


def _lower_half(values: torch.Tensor) -> torch.Tensor:
    """The lower half of ``values`` along the last dimension (ties broken by index), as a mask."""
    order = values.argsort(dim=-1, stable=True)
    low = torch.zeros_like(values, dtype=torch.bool)
    return low.scatter_(-1, order[..., : values.shape[-1] // 2], True)


class BudgetedScaleCache:
    """Earlier scales' K/V of every layer in ``capacity`` slots (``pos [depth, B, H, capacity]``: their positions,
    -1 free); a forward may run up to ``chunk`` new positions."""

    def __init__(self, budget: KVBudget, depth: int, batch: int, heads: int, head_dim: int, chunk: int,
                 begin_ends, dtype, device, length: int | None = None):
        self.budget, self.begin_ends = budget, list(begin_ends)
        runs = [k for k, (_, end) in enumerate(self.begin_ends) if length is None or end <= length]
        self.capacity, self.chunk = max(1, int(budget.budgets[runs].max())), chunk  # the scales this cache runs
        shape = (depth, batch, heads, self.capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = torch.full((depth, batch, heads, self.capacity), -1, dtype=torch.long, device=device)
        self.length = self.begin_ends[runs[-1]][1]
        self.filled = 0
        self._peak = 0  # per row, all layers and heads: the largest count of entries holding tokens so far
        self._in_flight = (0, 0)  # (entries held when the last forward began, its new entries of one layer)
        self.scales = (0, 0)

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def begin(self, first: int, last: int) -> None:
        """A forward of scales ``first .. last-1`` starts."""
        a, b = self.begin_ends[first][0], self.begin_ends[last - 1][1]
        if b - a > self.chunk:
            raise ValueError(f"scales {first}..{last - 1} hold {b - a} tokens; this cache was sized for {self.chunk}")
        self._close_forward()
        self._in_flight = (self._held(), (b - a) * self.pos.shape[2])
        self.scales = (first, last)

    def _held(self) -> int:
        return int((self.pos >= 0).sum()) // self.batch  # measured (one host sync)

    def _close_forward(self) -> None:
        # during a forward, layers before the running one hold their new budget and the rest their old one: at
        # most the larger total, plus the running layer's new K/V (dropped once it has evicted)
        before, new = self._in_flight
        self._peak = max(self._peak, max(before, self._held()) + new)

    @property
    def peak_entries(self) -> int:
        """Per row: the most K/V entries (all layers and heads) that held tokens at once."""
        self._close_forward()
        return self._peak

    @property
    def peak_bytes(self) -> int:
        """All rows: the bytes of K and V those entries take."""
        return self.peak_entries * 2 * self.k.shape[-1] * self.k.element_size() * self.batch

    def layer(self, i: int) -> "BudgetedLayer":
        return BudgetedLayer(self, i)


@dataclass
class BudgetedLayer:
    """One layer's view of a :class:`BudgetedScaleCache`, what ``SelfAttention`` receives as ``kv``."""

    cache: BudgetedScaleCache
    index: int

    def attend(self, q, k, v, chunk_bias, scale: float) -> torch.Tensor:
        """Attention of the chunk's queries over the held entries and the chunk (``chunk_bias``: its additive
        block-causal bias or None), then the eviction for the next scale. Returns ``[B, H, n, hd]``."""
        c, i = self.cache, self.index
        n = q.shape[2]
        keys, values = torch.cat([c.k[i], k.to(c.k.dtype)], dim=2), torch.cat([c.v[i], v.to(c.v.dtype)], dim=2)
        held_bias = torch.zeros(c.pos[i].shape, dtype=torch.float32, device=q.device).masked_fill_(c.pos[i] < 0,
                                                                                                  float("-inf"))
        own = torch.zeros(n, n, device=q.device) if chunk_bias is None else chunk_bias.float()
        bias = torch.cat([held_bias[:, :, None, :].expand(-1, -1, n, -1),
                          own.expand(*held_bias.shape[:2], n, n)], dim=-1)
        q = q.to(keys.dtype)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias.to(q.dtype), scale=scale)
        first, last = c.scales
        if last < len(c.begin_ends) and c.begin_ends[last][1] <= c.length:
            self._evict(q, keys, values, bias, scale, last)
        if i == c.k.shape[0] - 1:
            c.filled = c.begin_ends[last - 1][1]
        return out

    def _evict(self, q, keys, values, bias, scale, next_scale) -> None:
        """Keep, per head, ``budgets[next_scale]`` entries of the held ones and the chunk: the most attended by
        the chunk's newest scale (or the most recent, for recency heads)."""
        c, i = self.cache, self.index
        lo, hi = c.begin_ends[next_scale - 1]
        newest = hi - lo  # the chunk's last scale: its queries score the keys
        scores = ((q[:, :, -newest:].float() @ keys.float().transpose(-1, -2)) * scale + bias[:, :, -newest:])
        scores = scores.softmax(-1).sum(2)  # [B, H, cap + n]
        start = c.begin_ends[c.scales[0]][0]
        chunk_pos = torch.arange(start, hi, device=q.device).expand(*scores.shape[:2], -1)
        positions = torch.cat([c.pos[i], chunk_pos], dim=-1)
        recency = c.budget.recency[i].to(q.device)[None, :, None]
        key = torch.where(recency, positions.float(), scores).masked_fill(positions < 0, float("-inf"))
        top = key.topk(c.capacity, dim=-1).indices  # [B, H, cap], best first
        keep = torch.arange(c.capacity, device=q.device) < c.budget.budgets[next_scale, i].to(q.device)[None, :, None]
        chosen = positions.gather(-1, top)
        c.pos[i] = torch.where(keep & (chosen >= 0), chosen, -1)
        index = top[..., None].expand(-1, -1, -1, keys.shape[-1])
        kept_k, kept_v = keys.gather(2, index), values.gather(2, index)
        c.k[i, :, :, :c.capacity] = kept_k
        c.v[i, :, :, :c.capacity] = kept_v
