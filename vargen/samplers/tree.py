"""Token trees: verification of several candidates per position in one forward, and the proactive-drafting tree.

A tree proposal feeds the root (the last committed token) and its draft nodes in one forward over the static cache
(:class:`~vargen.decode.TokenTree`: node ``i`` at slot ``start + i``, position ``start + depth[i]``, attending to its
ancestors). The siblings under one node are *distinct* candidates drawn without replacement from one distribution
``q`` (their group's); the verifier walks down from the root and at each node tries its children in order with the
recursive rejection rule of Recursive Speculative Decoding (Jeon et al. 2024, arXiv 2402.14160, Alg. 1 with
sampling without replacement):

    r <- p(. | path)                                 # the target at the current node
    for child k = 1..K (drawn without replacement):  q_k = q with children 1..k-1 removed, renormalised
        accept child k with probability min(1, r(x_k) / q_k(x_k))  -> descend, r <- p(. | path, x_k)
        else r <- norm(max(0, r - q_k))               # the residual; x_k has r(x_k) < q_k(x_k), so r(x_k) = 0 now
    nobody accepted: draw the committed token from r

Each stage is one step of speculative sampling from ``r`` with proposal ``q_k`` (the candidate is a fresh draw from
``q_k`` given the earlier candidates), so by induction the committed token has law ``p(. | path)``: lossless, and
tested by enumeration. ``selection="longest"`` is the rule of the SJD-PAC code instead: every node is tested as if
its earlier siblings were rejected, and the longest accepted path wins (a lossy option; see README).

``tree="adaptive"`` on the proposers (:class:`AdaptiveShape`): each row verifies a sub-tree of the static tree -- its
own depth and width, chosen from what it has committed -- as a node-validity mask on the one padded tree, so every step
feeds the same shape. Invalid nodes are never accepted; since the mask is fixed before the target runs, the exact rule
stays lossless.
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import torch

from ..decode import TokenTree
from .base import sample_from_probs

__all__ = ["TokenTree", "proactive_tree", "verify_tree", "draw_without_replacement", "TreeDrafts", "AdaptiveShape",
           "TREE_SHAPES", "adaptive_shape", "adaptive_stats"]

TREE_SHAPES = ("static", "adaptive")  # the proposers' ``tree`` option


@lru_cache(maxsize=64)
def proactive_tree_size(window: int, width: int, depth: int, tail: int = 0) -> int:
    """Nodes of :func:`proactive_tree` (same arguments), counted without building it."""
    size, side = window, 0  # the chain; nodes off the chain at the current depth
    last = min(depth, window) - 1  # the deepest level with branching
    for _ in range(last):
        side = side * width + width - 1  # the chain's node gets width - 1 extra children, a side node width
        size += side
    return size + side * max(0, min(tail, window - 1 - last))


def check_tree_size(nodes: int, what: str) -> None:
    """``ValueError`` naming ``what`` when a token tree of ``nodes`` nodes cannot even hold its ``[nodes, nodes]``
    attention mask in the host memory a call may use (checked before the tree is built; :mod:`vargen.budget`)."""
    from ..budget import MemoryBudget, human_bytes

    need, limit = 4 * nodes * nodes, MemoryBudget(torch.device("cpu")).limit
    if need > limit:
        raise ValueError(f"{what}: a token tree of {nodes:,} nodes needs about {human_bytes(need)} for its masks alone, "
                         f"more than the {human_bytes(limit)} this machine may use; choose a smaller tree")


def proactive_tree(window: int, width: int, depth: int, tail: int = 0
                   ) -> tuple[TokenTree, tuple[int, ...], tuple[int, ...]]:
    """The Proactive Drafting tree of SJD-PAC (arXiv 2603.18599, Sec. 3.2): a chain of ``window`` nodes (the root
    and ``window - 1`` drafts, node ``d`` at depth ``d``) in which every node above depth ``depth - 1`` has ``width``
    children, the chain's node first; the extra children get full ``width``-ary subtrees down to depth ``depth - 1``.

    ``tail``: every leaf of the branching part off the chain continues with the chain's next ``tail`` drafts (a path
    through a side candidate is otherwise capped at depth ``depth - 1``; vargen's extension, 0 is the published tree).

    Returns ``(tree, level, rank)``: node ``i`` holds the rank-``rank[i]`` candidate of depth ``level[i]``; rank 0
    is the chain's draft of that depth, so nodes of one depth and rank carry the same token under every parent.
    """
    if width < 1 or depth < 1:
        raise ValueError("a proactive tree needs width >= 1 and depth >= 1")
    parent, level, rank = [-1], [0], [0]
    for d in range(1, window):
        parent.append(d - 1), level.append(d), rank.append(0)
    frontier = [0]  # nodes of the current depth, in node order
    for d in range(1, min(depth, window)):
        nxt = []
        for node in frontier:
            on_chain = node < window and level[node] == node
            if on_chain:
                nxt.append(d)  # the chain's node of depth d is this node's first child
            for r in range(1 if on_chain else 0, width):
                parent.append(node), level.append(d), rank.append(r)
                nxt.append(len(parent) - 1)
        frontier = nxt
    for leaf in frontier:
        if leaf < window and level[leaf] == leaf:
            continue  # the chain goes on by itself
        node = leaf
        for d in range(level[leaf] + 1, min(level[leaf] + 1 + tail, window)):
            parent.append(node), level.append(d), rank.append(0)
            node = len(parent) - 1
    return TokenTree(tuple(parent)), tuple(level), tuple(rank)


class TreeDrafts:
    """Turns a chain of drafts into a :func:`proactive_tree` proposal: at depths ``1 .. depth-1`` the chain's draft
    (rank 0) and ``width - 1`` more candidates drawn without replacement from the same ``q``; every node of a depth
    and rank carries that candidate. Shared by SJD-PAC (the Jacobi drafts) and LANTERN++ (the draft head's)."""

    def __init__(self, chain: int, width: int, depth: int, tail: int = 0, what: str = "tree"):
        check_tree_size(proactive_tree_size(chain + 1, width, depth, tail), what)
        self.width, self.branching = width, min(depth, chain + 1) - 1
        self.tree, level, rank = proactive_tree(chain + 1, width, depth, tail)
        self.index = torch.tensor([(lv - 1) * width + r for lv, r in zip(level[1:], rank[1:])])
        self.level = torch.tensor([lv - 1 for lv in level[1:]])
        path_rank = list(rank)  # the largest rank on each node's path from the root: its width class
        for i in range(1, len(path_rank)):
            path_rank[i] = max(path_rank[i], path_rank[self.tree.parent[i]])
        self.path_rank = torch.tensor(path_rank[1:])

    @property
    def drafts(self) -> int:
        return self.tree.size - 1

    def mask(self, depth: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        """``[B, n-1]``: the draft nodes of the sub-tree of depth ``depth [B]`` and width ``width [B]`` (a node at
        most ``depth`` deep whose path holds only candidates of rank < ``width``): a proactive tree of that width and
        depth with the chain cut at ``depth``. It is closed under ancestors, and its siblings are a prefix of each
        group, so verifying the padded tree under this mask is verifying the sub-tree."""
        level, rank = self.level.to(depth.device) + 1, self.path_rank.to(depth.device)
        return (level[None] <= depth[:, None]) & (rank[None] < width[:, None])

    def propose(self, drafts: torch.Tensor, q: torch.Tensor, rng, shape=None):
        """``drafts [B, J]`` drawn from ``q [B, J, V]`` (the chain) -> the tree's :class:`~.loop.Proposal`;
        ``shape``: per-row ``(depth, width)`` of an adaptive tree (nodes outside it are invalid)."""
        from .loop import Proposal

        B, J, V = q.shape
        K, Dt = self.width, self.branching
        extra, ok = draw_without_replacement(q[:, :Dt], drafts[:, :Dt], K - 1, rng.rand(Dt * V).view(B, Dt, V))
        cand = drafts[..., None].repeat(1, 1, K)
        cand[:, :Dt, 1:] = extra
        good = torch.ones(B, J, K, dtype=torch.bool, device=q.device)
        good[:, :Dt, 1:] = ok
        index, level = self.index.to(q.device), self.level.to(q.device)
        valid = good.view(B, -1)[:, index]
        if shape is not None:
            valid = valid & self.mask(*shape)
        return Proposal(cand.view(B, -1)[:, index], q[:, level], valid, self.tree)


class AdaptiveShape:
    """Per-row draft shapes from committed history (``tree="adaptive"``): the controller of ADT-Tree (Lei et al.,
    "Fast Inference of Visual Autoregressive Model with Adjacency-Adaptive Dynamical Draft Trees", arXiv 2512.21857):
    deeper trees where drafts were accepted, wider ones where they failed, a shape seeded from the adjacent tokens and
    moved by bisection. The paper's code does not contain the method (its repository is LANTERN's), so the rule below
    is vargen's design after the abstract.

    Each row keeps a shape ``(depth, width)`` within ``depth_range = (lo, hi)`` / ``width_range``; the first step
    uses the largest (the static tree). After a step that started at token ``n``, accepted ``a`` drafts and committed
    up to ``n'`` (the next step's first draft):

        e = max(a, ahead[n' - row])   # the left neighbour's evidence (this row's last step) and the token above n':
                                      # ahead[t] = drafts the step that committed t accepted at or after t
        depth <- max(ceil((depth + hi) / 2), e + 1)   if e >= depth  (the drafts ran out first: halfway to the max)
                 max(depth - 1, e + 1, lo)            otherwise      (one level shallower, never below e + 1)
        width <- ceil((width + w_hi) / 2)    if a draft at a branching depth was rejected (a < depth, a < branching)
                 floor((width + w_lo) / 2)   otherwise

    Deepening bisects, shallowing steps: in a padded tree a level cut too early costs a target forward while a level
    too many costs at most a drafter pass. It reads only ``(n, k, a)`` of finished steps -- what was committed --
    never a step's target output before that step's shape is fixed, so with the exact rule the sampler stays lossless
    for any such controller. The shape becomes a validity mask on the padded tree (:meth:`TreeDrafts.mask`) or on
    the chain's slots.
    """

    def __init__(self, depth_range: tuple[int, int], width_range: tuple[int, int], branching: int):
        self.depth_range, self.width_range, self.branching = depth_range, width_range, branching

    def start(self, batch: int, length: int, num_tokens: int, row: int, device) -> None:
        """Before a sampling call: ``length`` positions of history per row, ``row`` tokens per image row."""
        self.N, self.row = num_tokens, row
        self.depth = torch.full((batch,), self.depth_range[1], dtype=torch.long, device=device)
        self.width = torch.full((batch,), self.width_range[1], dtype=torch.long, device=device)
        self.ahead = torch.full((batch, length), -1, dtype=torch.long, device=device)  # -1: not committed yet
        self.used = torch.zeros(3, dtype=torch.float64, device=device)  # sums of depth, width, valid nodes
        self.steps = torch.zeros((), dtype=torch.float64, device=device)  # (row, step) pairs with a proposal

    @property
    def shape(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(depth [B], width [B])`` of the next step."""
        return self.depth, self.width

    def record(self, n: torch.Tensor, valid: torch.Tensor) -> None:
        """Count the shape a proposal at ``n`` uses (``valid [B, J]``: its valid draft nodes), rows still decoding."""
        active = (n < self.N).double()
        self.used += torch.stack([self.depth.double(), self.width.double(), valid.sum(1).double()]) @ active
        self.steps += active.sum()

    def observe(self, start: torch.Tensor, committed: torch.Tensor, accepted: torch.Tensor, proposed: bool) -> None:
        """After a step that started at ``start``, committed ``committed`` tokens, ``accepted`` of them drafts
        (``proposed``: it verified drafts; a plain step moves no shape)."""
        slots = torch.arange(self.depth_range[1] + 1, device=start.device)
        pos = start[:, None] + slots
        ahead = (start + accepted)[:, None] - pos
        self.ahead.scatter_(1, pos, torch.where(slots < committed[:, None], ahead, self.ahead.gather(1, pos)))
        if not proposed:
            return
        n = start + committed
        above = self.ahead.gather(1, (n - self.row).clamp(min=0)[:, None])[:, 0]
        e = torch.maximum(accepted, torch.where(n >= self.row, above, -1))
        (lo, hi), (wlo, whi), d, w = self.depth_range, self.width_range, self.depth, self.width
        deeper = torch.maximum((d + hi + 1) // 2, e + 1)
        shallower = torch.maximum(d - 1, e + 1)
        depth = torch.where(e >= d, deeper, shallower).clamp(lo, hi)
        missed = (accepted < d) & (accepted < self.branching)
        width = torch.where(missed, (w + whi + 1) // 2, (w + wlo) // 2)
        active = start < self.N
        self.depth, self.width = torch.where(active, depth, d), torch.where(active, width, w)

    def stats(self) -> dict:
        """The mean depth, width and valid draft nodes per row and step."""
        steps = max(float(self.steps), 1.0)
        depth, width, nodes = (float(x) / steps for x in self.used)
        return dict(adaptive_depth=depth, adaptive_width=width, adaptive_nodes=nodes)


def adaptive_shape(owner: str, tree: str, min_depth: int, min_width: int | None, drafts: int | None, sizing: str,
                   tree_drafts: TreeDrafts | None):
    """The :class:`AdaptiveShape` arguments ``(depth_range, width_range, branching)`` of a proposer that verifies
    ``drafts`` chain drafts per step (None: sized "auto"; ``sizing``: the option that sets it, for messages) and
    ``tree_drafts`` (None: a chain), or None for ``tree="static"``; a ``ValueError`` naming the option otherwise.
    ``min_width=None``: the tree's width (the width does not adapt)."""
    if tree == "static":
        if (min_depth, min_width) != (1, None):
            raise ValueError(f"{owner}: adapt_min_depth and adapt_min_width apply with tree=adaptive only")
        return None
    width = 1 if tree_drafts is None else tree_drafts.width
    min_width = width if min_width is None else min_width
    if drafts is None:
        raise ValueError(f"{owner}: {sizing} does not size trees; give a fixed value with tree=adaptive")
    if drafts < 1:
        raise ValueError(f"{owner}: tree=adaptive needs drafts to adapt, {sizing} has none")
    if min_depth > drafts:
        raise ValueError(f"{owner}: adapt_min_depth={min_depth} exceeds the drafts per step ({drafts}, from {sizing})")
    if min_width > width:
        raise ValueError(f"{owner}: adapt_min_width={min_width} exceeds tree_width={width}")
    return (min_depth, drafts), (min_width, width), 0 if tree_drafts is None else tree_drafts.branching


def adaptive_stats(proposer, stats):
    """``stats`` with a proposer's ``tree`` setting and, after an adaptive call, the mean shape it used."""
    if getattr(proposer, "adaptive", None) is None:
        return stats
    shape = getattr(proposer, "shape", None)
    return replace(stats, tree="adaptive", **(shape.stats() if shape is not None else {}))


def draw_without_replacement(q: torch.Tensor, first: torch.Tensor, count: int, u: torch.Tensor):
    """``count`` further candidates after ``first [B, D]`` from ``q [B, D, V]``, without replacement (Gumbel
    top-k with the uniforms ``u [B, D, V]``, Kool et al. 2019): ``(tokens [B, D, count], valid)``; a candidate is
    invalid when ``q`` has fewer distinct tokens than asked for."""
    logq = q.double().clamp_min(0).log()
    gumbel = -(-u.clamp(1e-300, 1.0).log()).log()
    scores = (logq + gumbel).scatter(-1, first[..., None], float("-inf"))
    top = scores.topk(count, dim=-1)
    return top.indices, torch.isfinite(top.values)


def verify_tree(p, tokens, q, valid, tree: TokenTree, u, u_res, live, rule=None):
    """Verify a token tree against the target.

    p: ``[B, n, V]`` the target at every node (its children's distribution); tokens: ``[B, n]`` (node 0 the root);
    q: ``[B, n, V]`` each node's sibling-group distribution (row 0 unused); valid: ``[B, n]``; u: ``[B, n]`` one
    uniform per node; u_res: ``[B]``; live: ``[B, D]`` whether depth ``d+1`` is inside the grid. rule: the acceptance
    rule of each sibling stage (default exact); a relaxed rule (LANTERN++) tests ``r`` against ``q_k`` with its own
    set masses and resamples from its own residual.

    Returns ``(a, token, path, tv)``: drafts accepted, the committed token after them, ``path [B, D]`` (the node of
    each depth ``1..D`` on the accepted path and, below it, the continuation the proposer reads stale
    distributions from: first children, the chain's node of that depth where a branch ends) and, for a relaxed
    rule, ``tv [B]``: the sum over the tested stages of each stage's TV bound (None for exact).
    """
    if getattr(rule, "selection", "first") == "longest":
        return (*_verify_longest(p, tokens, q, valid, tree, u, u_res, live), None)
    exact = rule is None or getattr(rule, "lossless", True)
    t = tree.tensors(p.device)
    children = t["children"]
    B, _, V = p.shape
    D = tree.max_depth
    widths, chain = tree.widths, tree.chain
    rows = torch.arange(B, device=p.device)
    cur = torch.zeros(B, dtype=torch.long, device=p.device)
    follow = torch.zeros_like(cur)
    alive = torch.ones(B, dtype=torch.bool, device=p.device)
    a = torch.zeros_like(cur)
    tv = None if exact else torch.zeros(B, dtype=torch.float64, device=p.device)
    r = p[:, 0].double()
    path = []
    straight = tree.straight_from  # from this depth on only the chain's nodes exist: verified in one shot
    for d in range(1, straight):
        chosen = torch.full_like(cur, -1)
        removed = torch.zeros(B, V, dtype=torch.bool, device=p.device)
        for k in range(widths[d - 1]):
            c = children[cur, k]
            exists = c >= 0
            ci = c.clamp(min=0)
            tok = tokens[rows, ci]
            qk = q[rows, ci].double().masked_fill(removed, 0.0)  # without replacement: earlier siblings removed
            mass = qk.sum(-1, keepdim=True)
            qk = qk / mass.clamp_min(1e-300)
            test = alive & exists & valid[rows, ci] & live[:, d - 1] & (chosen < 0) & (mass[:, 0] > 0)
            if exact:
                accept = u[rows, ci] * qk[rows, tok] < r[rows, tok]
                rest = (r - qk).clamp_min(0)
                rest_mass = rest.sum(-1, keepdim=True)
                rest = torch.where(rest_mass > 0, rest / rest_mass.clamp_min(1e-300), r)
            else:
                verdict = rule.verify(r[:, None], qk[:, None], tok[:, None], u[rows, ci][:, None], first_slot=d - 1)
                accept = verdict.accept[:, 0]
                rest = (verdict.residual[:, 0] if verdict.residual is not None else rule.residual(r, qk)).double()
                tv += torch.where(test, verdict.tv[:, 0].double(), 0.0)
            accept = test & accept
            chosen = torch.where(accept, c, chosen)
            r = torch.where((test & ~accept)[:, None], rest, r)
            removed[rows, tok] |= exists
        advance = chosen >= 0
        a += advance.long()
        first = children[follow.clamp(min=0), 0]
        fallback = torch.full_like(first, d if d < chain else -1)
        first = torch.where((follow >= 0) & (first >= 0), first, fallback)
        follow = torch.where(advance, chosen, first)
        path.append(follow)
        r = torch.where(advance[:, None], p[rows, chosen.clamp(min=0)].double(), r)
        cur = torch.where(advance, chosen, cur)
        alive &= advance
    if straight <= D:  # the chain's nodes straight..D: one candidate each, the plain speculative-sampling test
        nodes = torch.arange(straight, D + 1, device=p.device)
        on_chain = alive & (cur == straight - 1)
        tok, qc, pc, uc = tokens[:, nodes], q[:, nodes].double(), p[:, nodes - 1].double(), u[:, nodes]
        ok = valid[:, nodes] & live[:, straight - 1 :] & on_chain[:, None]
        if exact:
            accept = uc * qc.gather(-1, tok[..., None])[..., 0] < pc.gather(-1, tok[..., None])[..., 0]
            rest = (pc - qc).clamp_min(0)
            mass = rest.sum(-1, keepdim=True)
            rest = torch.where(mass > 0, rest / mass.clamp_min(1e-300), pc)
        else:
            verdict = rule.verify(pc, qc, tok, uc, first_slot=straight - 1)
            accept = verdict.accept
            rest = (verdict.residual if verdict.residual is not None else rule.residual(pc, qc)).double()
        m = (accept & ok).long().cumprod(dim=1).sum(dim=1)  # chain drafts accepted
        if not exact:
            slots = torch.arange(nodes.numel(), device=p.device)
            tv += (verdict.tv.double() * (ok & (slots[None] <= m[:, None]))).sum(1)
        rest = torch.where(ok[..., None], rest, pc)  # a slot past the grid or invalid: the token comes from p
        stop = torch.cat([rest, p[:, D : D + 1].double()], dim=1)[rows, m]  # the residual, or the bonus after the last
        r = torch.where(on_chain[:, None], stop, r)
        a += m
        path.extend(nodes.expand(B, -1).unbind(1))  # below the branching part the continuation is the chain
    return a, sample_from_probs(r, u_res), torch.stack(path, dim=1), tv


def _verify_longest(p, tokens, q, valid, tree: TokenTree, u, u_res, live):
    """SJD-PAC's selection: each node is tested against the residual its earlier siblings leave (as if they were
    all rejected), and the deepest node whose whole path is accepted wins (the first in node order on ties); the
    committed token is drawn from the residual after all of that node's children."""
    t = tree.tensors(p.device)
    depth, children = t["depth"], t["children"]
    B, n, V = p.shape
    rows = torch.arange(B, device=p.device)
    after = p.double().clone()  # per node: the residual after all its children (p itself for a leaf)
    accepted = torch.zeros(B, n, dtype=torch.bool, device=p.device)
    accepted[:, 0] = True
    kids_of = [[] for _ in range(n)]
    for c in range(1, n):
        kids_of[tree.parent[c]].append(c)
    host_depth = tree.depth
    for parent in range(n):
        kids = kids_of[parent]
        r = p[:, parent].double()
        removed = torch.zeros(B, V, dtype=torch.bool, device=p.device)
        for c in kids:
            qk = q[:, c].double().masked_fill(removed, 0.0)
            mass = qk.sum(-1, keepdim=True)
            qk = qk / mass.clamp_min(1e-300)
            tok = tokens[:, c]
            ok = valid[:, c] & live[:, host_depth[c] - 1] & (mass[:, 0] > 0)
            accepted[:, c] = accepted[:, parent] & ok & (u[:, c] * qk[rows, tok] < r[rows, tok])
            rest = (r - qk).clamp_min(0)
            rest_mass = rest.sum(-1, keepdim=True)
            r = torch.where(ok[:, None] & (rest_mass > 0), rest / rest_mass.clamp_min(1e-300), r)
            removed[rows, tok] = True
        if kids:
            after[:, parent] = r
    score = torch.where(accepted, depth[None] * (n + 1) + (n - torch.arange(n, device=p.device))[None], -1)
    best = score.argmax(dim=1)
    a = depth[best]
    token = sample_from_probs(after[rows, best], u_res)
    # the path to ``best`` and, below it, its first children (the chain's node where a branch ends)
    D, chain = tree.max_depth, tree.chain
    parent_t = torch.tensor(tree.parent, device=p.device)
    nodes = [best]
    for _ in range(D):
        nodes.append(parent_t[nodes[-1]].clamp(min=0))
    up = torch.stack(nodes[::-1], dim=1)  # up[:, D - a + d]: the ancestor of best at depth d <= a
    path, follow = [], best
    for d in range(1, D + 1):
        anc = up.gather(1, (D - a + d).clamp(0, D)[:, None]).squeeze(1)
        first = children[follow.clamp(min=0), 0]
        fallback = torch.full_like(first, d if d < chain else -1)
        below = d > a
        node = torch.where(below, torch.where((follow >= 0) & (first >= 0), first, fallback), anc)
        follow = torch.where(below, node, follow)
        path.append(node)
    return a, token, torch.stack(path, dim=1)
