"""The shape of a token tree fed in one forward (SJD-PAC's proactive drafts, LANTERN++ / EAGLE static trees)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = ["TokenTree"]


@dataclass(frozen=True)
class TokenTree:
    """The shape of a token tree fed in one forward (static per sampler): node 0 is the root (the last committed
    token), node ``i > 0`` a draft whose parent is ``parent[i] < i``.

    A tree plan (:func:`vargen.decode.tree_plan`) writes node ``i``'s K/V at slot ``base + i`` (``base``: the root's
    slot) and gives it the position of image token ``start + depth[i]``; node ``i`` attends to the cache before the
    root and to the window nodes ``visible[i]`` (its ancestors and itself), plus the forced row ends on its path where
    the sequence has them. The nodes ``0, 1, .., chain-1`` form a chain (node ``d`` at depth ``d``), so a chain-only
    tree is the
    plain window. ``children [n, K]``: each node's children in sibling order, ``-1`` padded.
    """

    parent: tuple[int, ...]

    def __post_init__(self):
        if not self.parent or self.parent[0] != -1:
            raise ValueError("a token tree's node 0 is its root (parent -1)")
        for i, p in enumerate(self.parent[1:], start=1):
            if not 0 <= p < i:
                raise ValueError(f"token tree node {i}: its parent {p} must come before it")
        for name in ("depth", "max_depth", "chain", "widths", "straight_from"):  # computed here, never while compiling
            getattr(self, name)  # (a cached_property takes a lock, which torch.compile cannot trace)

    @property
    def size(self) -> int:
        return len(self.parent)

    @cached_property
    def depth(self) -> tuple[int, ...]:
        depth = [0] * self.size
        for i in range(1, self.size):
            depth[i] = depth[self.parent[i]] + 1
        return tuple(depth)

    @cached_property
    def max_depth(self) -> int:
        return max(self.depth)

    @cached_property
    def chain(self) -> int:
        """Nodes ``0 .. chain-1`` are the chain (node ``d`` the child of ``d - 1``)."""
        n = 1
        while n < self.size and self.parent[n] == n - 1:
            n += 1
        return n

    @cached_property
    def widths(self) -> tuple[int, ...]:
        """Per depth, the most children a node of that depth has."""
        children = [0] * self.size
        for p in self.parent[1:]:
            children[p] += 1
        widths = [0] * (self.max_depth + 1)
        for i, d in enumerate(self.depth):
            widths[d] = max(widths[d], children[i])
        return tuple(widths)

    @cached_property
    def straight_from(self) -> int:
        """The smallest depth from which the only nodes are the chain's (``max_depth + 1`` if none)."""
        return max((self.depth[i] for i in range(self.chain, self.size)), default=0) + 1

    def tensors(self, device) -> dict:
        """``depth [n]``, ``visible [n, n]``, ``children [n, K]`` on ``device`` (built once per device)."""
        cache = self.__dict__.setdefault("_tensors", {})
        key = str(device)
        if key not in cache:
            n = self.size
            visible = torch.eye(n, dtype=torch.bool)
            kids: list[list[int]] = [[] for _ in range(n)]
            for i in range(1, n):
                visible[i] |= visible[self.parent[i]]
                kids[self.parent[i]].append(i)
            children = torch.full((n, max(1, *map(len, kids))), -1, dtype=torch.long)
            for i, k in enumerate(kids):
                children[i, : len(k)] = torch.tensor(k, dtype=torch.long)
            cache[key] = dict(depth=torch.tensor(self.depth, device=device), visible=visible.to(device),
                              children=children.to(device))
        return cache[key]
