"""Line-level K/V eviction for raster token models: a fixed budget of image-token K/V per row and layer.

After Qin et al., "Autoregressive Image Generation Needs Only a Few Lines of Cached Tokens" (LineAR,
arXiv 2512.04857, Sec. 3): the image is a grid of raster lines; the condition prefix is always kept (the
attention of late tokens drifts to it), as are the first ``anchor`` image tokens (global anchors) and the
``recent_lines`` most recent complete lines (local dependency); each time a line completes, the other
cached image tokens compete for the rest of the budget by the attention the finished line paid to them
(inter-line attention is consistent from one line to the next, so it predicts what the next line reads),
and the losers are evicted.

Storage is static: an evicting cache holds ``budget + line + window`` image slots per row (the budget,
the line being generated, and one speculative window), whatever the grid size, and a slot table says
which image position each slot holds (``-1``: free). Keys are stored after RoPE, so slot order is
irrelevant; attention masks free slots and future positions. Rollback stays "write from ``start``":
slots holding positions ``>= start`` are freed before a forward writes its tokens into free slots.

Scores: the attention of each forward's first query (the token at ``start``, always committed), summed
over heads, accumulated per slot since the last eviction. Under ``ar`` that is every query of the finished
line; a speculative sampler contributes the queries its windows started at. One selection per layer.
Everything runs on the device with fixed shapes (rows evict independently, no host sync).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LineEviction", "LineSlots", "add_first_query_attention_"]


def add_first_query_attention_(probe: torch.Tensor, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> None:
    """``probe [B, L] +=`` the attention probabilities of the first query of ``q [B, H, n, d]`` over ``k [B, H, L,
    d]`` under the boolean ``mask [B, 1, n, L]``, summed over heads (the eviction score of the keys)."""
    first = (q[:, :, :1].float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    probe += first.masked_fill(~mask[:, :, :1], float("-inf")).softmax(-1).sum(1)[:, 0]


@dataclass(frozen=True)
class LineEviction:
    """The policy. ``budget``: image-token K/V entries of complete lines kept per row and layer (anchors and
    recent lines included); ``anchor``: the first image tokens always kept; ``recent_lines``: complete lines
    always kept; ``line``: tokens per raster line (the model's grid width)."""

    budget: int
    line: int
    anchor: int = 0
    recent_lines: int = 1

    def check(self, num_tokens: int) -> None:
        if self.line < 1 or num_tokens % self.line:
            raise ValueError(f"K/V eviction: a line of {self.line} tokens does not tile the {num_tokens}-token grid")
        if self.anchor < 0 or self.recent_lines < 0:
            raise ValueError("K/V eviction: kv_anchor and kv_recent_lines must be >= 0")
        floor = self.anchor + self.recent_lines * self.line
        if self.budget < floor:
            raise ValueError(f"K/V eviction: kv_budget={self.budget} is below what is always kept: {self.anchor} "
                             f"anchor tokens + {self.recent_lines} recent line(s) of {self.line} = {floor}")


class LineSlots:
    """The slot tables of an evicting cache: ``pos [layers, B, S]`` (image position per slot, -1 free) and
    ``score [layers, B, S]`` (attention received since the last eviction); ``lines_done [B]``."""

    def __init__(self, policy: LineEviction, layers: int, batch: int, slots: int, device):
        self.policy = policy
        self.pos = torch.full((layers, batch, slots), -1, dtype=torch.long, device=device)
        self.score = torch.zeros(layers, batch, slots, dtype=torch.float32, device=device)
        self.lines_done = torch.zeros(batch, dtype=torch.long, device=device)

    @property
    def slots(self) -> int:
        return self.pos.shape[-1]

    def reset_(self) -> None:
        self.pos.fill_(-1)
        self.score.zero_()
        self.lines_done.zero_()

    def prepare_(self, start: torch.Tensor, n: int) -> torch.Tensor:
        """Before a forward writes image positions ``start .. start+n-1``: free stale slots, evict if a line
        completed since the last eviction, and return the slots ``[layers, B, n]`` the new tokens go to (all
        layers at once: their tables differ only by what each evicted)."""
        pos, score = self.pos, self.score
        pos.masked_fill_(pos >= start[:, None], -1)  # rollback: positions from start on are rewritten
        done = start // self.policy.line  # complete lines: every position < done * line is committed and cached
        due = done > self.lines_done
        if torch.compiler.is_compiling() or bool(due.any()):  # eagerly, the ranking only when a line completed
            self._evict_(pos, score, done, due)
            self.lines_done.copy_(torch.maximum(self.lines_done, done))
        slots = (pos >= 0).to(torch.int8).argsort(dim=-1, stable=True)[..., :n]  # the first free slots
        pos.scatter_(-1, slots, (start[:, None] + torch.arange(n, device=start.device)).expand_as(slots))
        score.scatter_(-1, slots, 0.0)
        return slots

    def _evict_(self, pos, score, done, due) -> None:
        """Rows ``due`` keep their anchors and recent lines and, of the other held positions, the best scored
        while the complete lines fit the budget (per layer)."""
        p = self.policy
        valid = pos >= 0
        kept = valid & ((pos < p.anchor) | (pos >= ((done - p.recent_lines) * p.line)[:, None]))
        complete = valid & (pos < (done * p.line)[:, None])
        candidates = valid & ~kept
        room = (p.budget - (kept & complete).sum(-1, keepdim=True)).clamp(min=0)  # left for the middle region
        order = score.masked_fill(~candidates, float("-inf")).argsort(dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device)
                                                .expand_as(order))
        pos.masked_fill_(candidates & (rank >= room) & due[:, None], -1)
        score.masked_fill_(due[:, None], 0.0)

    def masks(self, positions: torch.Tensor) -> torch.Tensor:
        """``[layers, B, n, S]``: a query at image position p reads the slots holding positions <= p."""
        pos = self.pos[:, :, None, :]
        return (pos >= 0) & (pos <= positions[None, :, :, None])

    def step(self, image_pos: torch.Tensor, prefix_valid: torch.Tensor):
        """Everything a model's forward over image positions ``image_pos [B, n]`` needs, for a cache whose first
        ``T`` positions hold the condition prefix (``prefix_valid [B, T]``, always kept): the cache positions to
        write ``[layers, B, n]``, the masks ``[layers, B, 1, n, T + S]`` and zeroed score probes
        ``[layers, B, T + S]`` (each layer adds its first query's attention; then :meth:`absorb`)."""
        layers, (B, n), T = self.pos.shape[0], image_pos.shape, prefix_valid.shape[1]
        where = self.prepare_(image_pos[:, 0], n) + T
        prefix = prefix_valid[None, :, None, :].expand(layers, B, n, T)
        masks = torch.cat([prefix, self.masks(image_pos)], dim=-1)[:, :, None]
        return where, masks, torch.zeros(layers, B, T + self.slots, device=image_pos.device)

    def absorb(self, probes: torch.Tensor) -> None:
        """Add the probes' attention on image slots to the eviction scores."""
        self.score += probes[..., probes.shape[-1] - self.slots:]

    def kept_positions(self, layer: int, row: int) -> list[int]:
        """The image positions row ``row`` of layer ``layer`` holds (sorted), for inspection and tests."""
        pos = self.pos[layer, row]
        return sorted(pos[pos >= 0].tolist())
