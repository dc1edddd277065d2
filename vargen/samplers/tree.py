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
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ..decode import TokenTree
from .base import sample_from_probs

__all__ = ["TokenTree", "proactive_tree", "verify_tree", "draw_without_replacement"]


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

    @property
    def drafts(self) -> int:
        return self.tree.size - 1

    def propose(self, drafts: torch.Tensor, q: torch.Tensor, rng):
        """``drafts [B, J]`` drawn from ``q [B, J, V]`` (the chain) -> the tree's :class:`~.loop.Proposal`."""
        from .loop import Proposal

        B, J, V = q.shape
        K, Dt = self.width, self.branching
        extra, ok = draw_without_replacement(q[:, :Dt], drafts[:, :Dt], K - 1, rng.rand(Dt * V).view(B, Dt, V))
        cand = drafts[..., None].repeat(1, 1, K)
        cand[:, :Dt, 1:] = extra
        good = torch.ones(B, J, K, dtype=torch.bool, device=q.device)
        good[:, :Dt, 1:] = ok
        index, level = self.index.to(q.device), self.level.to(q.device)
        return Proposal(cand.view(B, -1)[:, index], q[:, level], good.view(B, -1)[:, index], self.tree)


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
