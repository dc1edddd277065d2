"""FastVAR's cached token pruning for next-scale transformers (Guo et al., "FastVAR: Linear Visual Autoregressive
Modeling via Cached Token Pruning", arXiv 2503.23367, §3.2-3.3).

At the large scales most tokens have already converged, so the later blocks forward only the *pivotal* ones: before
each sublayer (attention, FFN) a block scores every token of the scale by its squared distance to the scale's mean
token, keeps the top ``1 - ratio`` of them, runs the sublayer on those alone, and fills the skipped slots with that
sublayer's output at an earlier, unpruned scale (the *cache scale*), area-resized to the current side. Attention at a
pruned scale sees every coarser scale and the kept tokens of its own; the skipped tokens write no K/V (their slots
are zeroed and masked). The head still scores every position, so every token is drawn.

A :class:`TokenPruning` lives for one generation (one batch): the sampler passes it to every ``forward_scales`` call;
the pass over the cache scale records the sublayer outputs the pruned scales reuse.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["TokenPruning", "BlockPruning"]


@dataclass
class TokenPruning:
    """``ratios``: scale index -> fraction of its tokens the blocks from ``from_layer`` on skip; ``cache_scale``: the
    scale whose sublayer outputs fill the skipped slots (it must come before every pruned scale)."""

    ratios: dict[int, float]
    from_layer: int
    cache_scale: int
    saved: dict = field(default_factory=dict)  # (layer, "attn" | "ffn") -> [B, n_cache, C]
    computed: int = 0  # token-sublayer evaluations at pruned scales, per batch row (summed over blocks, sublayers)
    skipped: int = 0  # the token-sublayer evaluations skipped, per batch row
    kv_positions_skipped: int = 0  # K/V slots the pruned scales left empty, per batch row (summed over blocks)

    def __post_init__(self):
        bad = [s for s, r in self.ratios.items() if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"pruning ratios must be in [0, 1), got {[self.ratios[s] for s in bad]}")
        if any(s <= self.cache_scale for s, r in self.ratios.items() if r > 0):
            raise ValueError(f"the cache scale {self.cache_scale} must come before every pruned scale "
                             f"({sorted(self.ratios)})")

    def block(self, layer: int, first: int, last: int, begin_ends, patch_nums) -> "BlockPruning | None":
        """What block ``layer`` does in a pass over scales ``first..last-1``: prune (a single pruned scale), record
        (the pass covers the cache scale), or nothing (None)."""
        if layer < self.from_layer:
            return None
        pruned = [s for s in range(first, last) if self.ratios.get(s, 0.0) > 0]
        if pruned:
            if last - first != 1:
                raise ValueError(f"token pruning runs one scale per pass; scales {first}..{last - 1} include pruned "
                                 f"scale(s) {pruned}")
            side = patch_nums[first]
            keep = side * side - int(side * side * self.ratios[first])
            return BlockPruning(self, layer, side, keep, patch_nums[self.cache_scale], None)
        if first <= self.cache_scale < last:
            a, b = begin_ends[self.cache_scale]
            return BlockPruning(self, layer, 0, 0, patch_nums[self.cache_scale], (a - begin_ends[first][0],
                                                                                  b - begin_ends[first][0]))
        return None


@dataclass
class BlockPruning:
    """One block at one pass: either prunes its scale (``keep`` tokens of ``side``²) or records (``record``: the
    cache scale's slice of the pass)."""

    plan: TokenPruning
    layer: int
    side: int
    keep: int
    cache_side: int
    record: tuple[int, int] | None

    @property
    def prunes(self) -> bool:
        return self.record is None

    def save(self, name: str, out: torch.Tensor) -> None:
        if self.record is not None:
            a, b = self.record
            self.plan.saved[(self.layer, name)] = out[:, a:b]

    def pivotal(self, x: torch.Tensor) -> torch.Tensor:
        """Positions ``[B, keep]`` (ascending) of the tokens farthest from the scale's mean token."""
        score = (x - x.mean(dim=1, keepdim=True)).float().square().sum(-1)
        return score.topk(self.keep, dim=1).indices.sort(dim=1).values

    def mask(self, keep: torch.Tensor, start: int) -> torch.Tensor:
        """Additive attention mask ``[B, 1, keep, start + side²]`` (0 or -inf, as VAR's own): every coarser scale
        and the kept tokens."""
        B, n = keep.shape[0], self.side * self.side
        current = torch.zeros(B, n, dtype=torch.bool, device=keep.device).scatter_(1, keep, True)
        visible = torch.cat([torch.ones(B, start, dtype=torch.bool, device=keep.device), current], dim=1)
        bias = torch.zeros(B, start + n, device=keep.device).masked_fill_(~visible, float("-inf"))
        return bias[:, None, None, :].expand(B, 1, keep.shape[1], start + n)

    def fill(self, name: str, out: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The sublayer's output for the whole scale: ``out`` at the kept positions, the cache scale's output
        (area-resized) elsewhere."""
        saved = self.plan.saved.get((self.layer, name))
        if saved is None:
            raise RuntimeError(f"token pruning: block {self.layer} has no {name} output of the cache scale; run the "
                               "cache scale through the same TokenPruning first")
        B, _, C = out.shape
        c = self.cache_side
        base = F.interpolate(saved.transpose(1, 2).reshape(B, C, c, c).float(), size=(self.side, self.side),
                             mode="area").reshape(B, C, -1).transpose(1, 2).to(out.dtype)
        skipped = self.side * self.side - keep.shape[1]
        self.plan.computed += keep.shape[1]
        self.plan.skipped += skipped
        if name == "attn":  # the skipped tokens wrote no K/V in this layer
            self.plan.kv_positions_skipped += skipped
        return base.scatter(1, keep[..., None].expand(-1, -1, C), out)


def gather_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
