"""The Jacobi proposer of Speculative Jacobi Decoding (Teng et al., ICLR 2025, arXiv 2410.01699).

Each forward pass feeds a window ``[x_{n-1}, d_n, ..., d_{n+W-2}]`` (the last committed token and
``W-1`` drafts) and yields the target's probabilities ``p`` for tokens ``n .. n+W-1``. After the loop
commits ``k`` tokens, the pass's own samples for the uncommitted tokens become the next drafts (the
Jacobi update, with ``q = p``: the distribution they were truthfully drawn from) and ``k - 1`` fresh
drafts are appended at the tail, so the window slides by ``k``.

Fixes relative to the official code: ``q`` of a random draft is the uniform distribution it was drawn
from, not a one-hot; spatial initialisation uses the model's real grid, vertical included, and "sample"
really samples; rows advance independently; every random number comes from the caller's generator.

``coupled=True`` is MC-SJD / speculative coupled decoding (arXiv 2510.24211): a re-drafted position
keeps its previous draft with probability ``min(1, q_t(x)/q_{t-1}(x))``, else draws from
``norm(max(0, q_t - q_{t-1}))`` (a maximal coupling). The new draft's marginal is still ``q_t``, so the
sampler stays lossless, and drafts stop churning.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..acceptance import residual
from ..base import sample_from_probs
from ..loop import NoProposer, Proposal, TokenSampler
from ..spec import check_bounds, checked, option
from ..stats import DraftStats
from ..tree import TREE_SHAPES, AdaptiveShape, TreeDrafts, adaptive_shape, adaptive_stats

__all__ = ["JacobiProposer", "JacobiSampler", "JacobiOptions", "INITS"]

INITS = ("random", "horizontal", "vertical", "temporal", "horizontal_sample", "vertical_sample", "temporal_sample")


@dataclass
class JacobiOptions:
    window: int = option(16, "tokens fed per forward: the last committed token and window-1 drafts (1 is plain AR; "
                         "auto: chosen by a measured cost model, falling back to AR)", minimum=1, bound="num_tokens",
                         literals=("auto",))
    init: str = option("random", "how fresh tail drafts are made: uniform (random), a copy of the left/upper "
                       "neighbour or of the same cell one frame earlier (temporal, video), or a draw from its "
                       "predicted distribution (*_sample)", choices=INITS)
    coupled: bool = option(False, "MC-SJD: keep a re-drafted token with the maximal-coupling probability (also "
                           "SJD-PAC's adaptive continuation, the same rule)")
    sample_top: int = option(32, "candidates per neighbour for the *_sample inits", minimum=1)
    tree_width: int = option(1, "SJD-PAC proactive drafting: candidates per position near the root (1: a chain)",
                             minimum=1, bound="vocab_size")
    tree_depth: int = option(3, "SJD-PAC proactive drafting: levels of the tree, the root included (branching at "
                             "depths 1 .. tree_depth-1)", minimum=2)
    tree_tail: int = option(0, "proactive drafting: chain drafts appended below every side leaf of the tree (0: the "
                            "published tree, where a side path ends at depth tree_depth-1)", minimum=0)
    tree: str = option("static", "static: every step verifies the whole tree (or chain); adaptive: each row verifies a "
                       "sub-tree whose depth and width follow its committed history (ADT-Tree), padded to the static "
                       "tree", choices=TREE_SHAPES)
    adapt_min_depth: int = option(1, "tree=adaptive: the shallowest depth (drafts verified along the chain); the "
                                  "deepest is window-1", minimum=1)
    adapt_min_width: int | None = option(None, "tree=adaptive: the fewest candidates per branching depth, the most "
                                         "being tree_width (none: tree_width, the width does not adapt)", minimum=1)


class JacobiProposer:
    """Previous-iteration drafts with a fresh-draft init.

    window: W, tokens fed per forward (the last committed token + W-1 drafts); 1 is plain AR; "auto": the
        sampler picks W per call from measured costs (:mod:`vargen.samplers.autotune`).
    init: how fresh tail drafts are made -- "random" (uniform, q uniform), "horizontal"/"vertical"
        (repeat the left / upper neighbour, q one-hot), "temporal" (repeat the token at the same (h, w) one
        latent frame earlier -- for the first generated frame, the last context frame), and the ``*_sample``
        variants (draw from that neighbour's predicted distribution truncated to its ``sample_top`` most likely
        tokens; a context token has no predicted distribution and is copied, q one-hot).
    coupled: MC-SJD maximal coupling of re-drafted positions with their previous drafts.
    tree_width / tree_depth / tree_tail: SJD-PAC's proactive drafting tree (:class:`~..tree.TreeDrafts`).
    tree / adapt_min_depth / adapt_min_width: ``tree="adaptive"``: each row verifies a sub-tree of that tree (or a
        prefix of the window) whose depth and width follow its committed history (:class:`~..tree.AdaptiveShape`,
        after ADT-Tree, arXiv 2512.21857), as a validity mask on the same padded forward.
    """

    name = "jacobi"
    wants_hidden = False
    draft_passes = 0

    def __init__(self, window: int = 16, init: str = "random", coupled: bool = False, sample_top: int = 32,
                 tree_width: int = 1, tree_depth: int = 3, tree_tail: int = 0, tree: str = "static",
                 adapt_min_depth: int = 1, adapt_min_width: int | None = None):
        self.options = checked(JacobiOptions(window, init, coupled, sample_top, tree_width, tree_depth, tree_tail,
                                             tree, adapt_min_depth, adapt_min_width), "sjd")
        window = self.options.window
        self.window, self.init, self.coupled, self.sample_top = window, init, coupled, sample_top
        self.tree_width, self.tree_depth, self.tree_tail = tree_width, tree_depth, tree_tail
        self.auto = window == "auto"
        self.tree = None
        if tree_width > 1:
            if self.auto:
                raise ValueError("sjd: window=auto does not size trees; give a window with tree_width > 1")
            if window < 2:
                raise ValueError("sjd: a tree (tree_width > 1) needs a window of at least 2")
            self.tree = TreeDrafts(window - 1, tree_width, tree_depth, tree_tail,
                                   what=f"sjd: tree_width={tree_width}, tree_depth={tree_depth}, window={window}")
        self.lookahead = 0 if self.auto else (window - 1 if self.tree is None else self.tree.drafts)
        self.adaptive = adaptive_shape("sjd", tree, adapt_min_depth, adapt_min_width, None if self.auto else window - 1,
                                       f"window={window}", self.tree)

    def check(self, model) -> None:
        check_bounds(self.options, "sjd", model)

    def memory_per_row(self, model, cond, config) -> int:
        """The ``*_sample`` inits keep every position's ``sample_top`` most likely tokens and their probabilities."""
        if not self.init.endswith("_sample"):
            return 0
        return (model.num_tokens + 2 * self.lookahead + 4) * min(self.sample_top, model.vocab_size) * 12

    AUTO_WINDOWS = (1, 2, 4, 8, 16)

    def auto_candidates(self, model) -> list[int]:
        """Draft counts ``"auto"`` chooses from (windows of 1..16 tokens)."""
        return [w - 1 for w in self.AUTO_WINDOWS if w <= model.num_tokens]

    def resized(self, drafts: int):
        """This proposer with ``drafts`` drafts per step (a window of ``drafts + 1``); 0 is plain AR."""
        return NoProposer() if drafts == 0 else JacobiProposer(drafts + 1, self.init, self.coupled, self.sample_top)

    def draft_stats(self) -> DraftStats:
        out = DraftStats(window=self.window, init=self.init, coupled=self.coupled)
        if self.tree is not None:
            out = replace(out, tree_width=self.tree_width, tree_depth=self.tree_depth, tree_tail=self.tree_tail,
                          tree_nodes=self.tree.tree.size)
        return adaptive_stats(self, out)

    # -- the proposer protocol --------------------------------------------------------------------------
    def start(self, ctx, p0, hidden0) -> None:
        B, L, dev = ctx.batch, ctx.seq.shape[1], ctx.device
        K = min(self.sample_top, ctx.vocab_size)
        self.nb = None
        if self.init.endswith("_sample"):
            self.nb = (torch.zeros(B, L, K, dtype=torch.long, device=dev), torch.zeros(B, L, K, device=dev))
        remember(self.nb, p0, torch.zeros(B, dtype=torch.long, device=dev))
        self.slots = torch.arange(self.window, device=dev)
        n = torch.ones(B, dtype=torch.long, device=dev)
        self.before = ctx.frame_before
        self.drafts, self.q = fresh_drafts(self.init, ctx.grid, ctx.vocab_size, ctx.seq, self.nb, n,
                                           n[:, None] + self.slots[: self.window - 1], ctx.rng.rand(self.window - 1),
                                           self.before)
        # compiled calls run the update as one compiled graph too (it is ~1 ms of eager kernels per step)
        self.update = _compiled_update(ctx.device) if ctx.compiled else jacobi_update
        self.shape = None
        if self.adaptive is not None:  # a fresh controller per call (the loop runs a shallow copy of the proposer)
            self.shape = AdaptiveShape(*self.adaptive)
            self.shape.start(B, L, ctx.num_tokens, ctx.grid[2], dev)

    def propose(self, ctx, n) -> Proposal:
        shape = None if self.shape is None else self.shape.shape
        if self.tree is None:
            valid = None if shape is None else self.slots[None, : self.window - 1] < shape[0][:, None]
            proposal = Proposal(self.drafts, self.q, valid)
        else:
            proposal = self.tree.propose(self.drafts, self.q, ctx.rng, shape)  # SJD-PAC's proactive drafting
        if self.shape is not None:
            self.shape.record(n, proposal.valid)
        return proposal

    def observe(self, ctx, fb) -> None:
        if self.shape is not None:
            self.shape.observe(fb.start, fb.committed, fb.accepted, True)
        W = self.window
        u = ctx.rng.rand(3 * W - 1)
        p = fb.p
        if fb.path is not None:  # a tree: the stale distributions along the accepted path and its continuation
            nodes = F.pad(fb.path[:, : W - 1], (1, 0))
            p = p.gather(1, nodes[..., None].expand(-1, -1, p.shape[-1]))
        self.drafts, self.q = self.update(self.init, self.coupled, ctx.grid, ctx.seq, self.nb, self.slots, self.drafts,
                                          self.q, p, fb.start, fb.committed, u, self.before)


def fresh_drafts(init, grid, vocab, seq, nb, first_fresh, positions, u, before=None):
    """Tokens and truthful q for fresh drafts at ``positions [B, J]``; ``seq`` holds committed tokens and carried
    drafts at every position < ``first_fresh``; ``nb``: the neighbour distributions of the ``*_sample`` inits;
    ``before [B, H*W]``: the frame before token 0 (context), if any, for the temporal inits."""
    B, J = positions.shape
    _, gh, gw = grid
    rand_tok = (u * vocab).long().clamp_(max=vocab - 1)
    uniform = torch.full((B, J, vocab), 1.0 / vocab, device=seq.device)
    if init == "random" or J == 0:
        return rand_tok, uniform
    if init.startswith("horizontal"):
        src = torch.minimum(positions - 1, first_fresh[:, None] - 1)
        ok = (src >= 0) & (src // gw == positions // gw)
    elif init.startswith("vertical"):  # the cell above, in the same frame
        src = positions - gw
        ok = (positions % (gh * gw) >= gw) & (src < first_fresh[:, None])
    else:  # temporal: the same cell one frame earlier
        src = positions - gh * gw
        ok = (src >= 0) & (src < first_fresh[:, None])
    # a draft copied from the context frame (temporal inits, first generated frame): deterministic, q one-hot
    ctx_ok = (src < 0) if before is not None and init.startswith("temporal") else torch.zeros_like(ok)
    ctx_tok = before.gather(1, positions.clamp(0, gh * gw - 1)) if before is not None else rand_tok
    src = src.clamp(min=0)
    if not init.endswith("_sample"):
        tok = torch.where(ok, seq.gather(1, src), torch.where(ctx_ok, ctx_tok, rand_tok))
        q = torch.where((ok | ctx_ok)[..., None], F.one_hot(tok, vocab).to(uniform.dtype), uniform)
        return tok, q
    nb_idx, nb_p = nb
    idx = nb_idx.gather(1, src[..., None].expand(-1, -1, nb_idx.shape[-1]))
    pk = nb_p.gather(1, src[..., None].expand(-1, -1, nb_p.shape[-1]))
    pk = pk / pk.sum(-1, keepdim=True)
    pick = idx.gather(-1, sample_from_probs(pk, u)[..., None]).squeeze(-1)
    tok = torch.where(ok, pick, torch.where(ctx_ok, ctx_tok, rand_tok))
    q_nb = torch.zeros(B, J, vocab, device=seq.device).scatter_(-1, idx, pk)
    q_ctx = F.one_hot(ctx_tok, vocab).to(uniform.dtype)
    return tok, torch.where(ok[..., None], q_nb, torch.where(ctx_ok[..., None], q_ctx, uniform))


def remember(nb, p, first):
    """Neighbour distributions for the ``*_sample`` inits: the top ``sample_top`` of each position's p."""
    if nb is None:
        return
    K = nb[0].shape[-1]
    top = p.topk(K, dim=-1)
    pos = (first[:, None] + torch.arange(p.shape[1], device=p.device))[..., None].expand(-1, -1, K)
    nb[0].scatter_(1, pos, top.indices)
    nb[1].scatter_(1, pos, top.values)


def jacobi_update(init, coupled, grid, seq, nb, slots, drafts, q, p, n, k, u, before=None):
    """One Jacobi update after a step that committed ``k`` of the window at ``n``: ``(drafts, q)`` of the next
    window. ``u [B, 3W-1]``: the step's uniforms. Writes the carried drafts into ``seq`` (and ``nb``) in place."""
    W = slots.shape[0]
    u_y, u_keep, u_init = u.split([W, W, W - 1], dim=1)
    remember(nb, p, n)
    # Jacobi update: this pass's predictions for tokens n..n+W-1 become candidate drafts
    y = sample_from_probs(p, u_y)
    if coupled:  # MC-SJD: keep the previous draft when the maximal coupling allows it
        q_pad = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)  # token n+W-1 had no draft
        old = F.pad(drafts, (0, 1))
        p_old = p.gather(-1, old[..., None]).squeeze(-1).double()
        q_old = q_pad.gather(-1, old[..., None]).squeeze(-1).double()
        keep = (u_keep * q_old < p_old) & (slots[None] < W - 1)
        moved = sample_from_probs(residual(p, q_pad), u_y)
        y = torch.where(keep, old, moved)
    # carried drafts sit at positions n+k..n+W-1; write them so fresh inits can see them
    pos = n[:, None] + slots
    seq.scatter_(1, pos, torch.where(slots[None] >= k[:, None], y, seq.gather(1, pos)))
    first_fresh = n + W
    f_tok, f_q = fresh_drafts(init, grid, p.shape[-1], seq, nb, first_fresh, first_fresh[:, None] + slots[: W - 1], u_init,
                              before)
    # next window: drafts for tokens n+k .. n+k+W-2 out of [carried (W) ; fresh (W-1)]
    pick = k[:, None] + slots[: W - 1]
    return (torch.cat([y, f_tok], dim=1).gather(1, pick),
            torch.cat([p, f_q], dim=1).gather(1, pick[..., None].expand(-1, -1, p.shape[-1])))


_COMPILED: dict = {}  # device -> jacobi_update under torch.compile


def _compiled_update(device):
    key = str(device)
    if key not in _COMPILED:
        from ..compiled import compile_step

        _COMPILED[key] = compile_step(jacobi_update, device, cudagraphs=False)
    return _COMPILED[key]


class JacobiSampler(TokenSampler):
    """SJD: ``JacobiProposer(window, init, coupled, sample_top)`` x an acceptance rule (``exact`` is
    lossless; ``gsd`` / ``lantern`` with their options are the relaxed variants)."""

    name = "sjd"
    OPTIONS = JacobiOptions

    def __init__(self, window: int = 16, init: str = "random", coupled: bool = False, acceptance="exact",
                 sample_top: int = 32, tree_width: int = 1, tree_depth: int = 3, tree_tail: int = 0,
                 tree: str = "static", adapt_min_depth: int = 1, adapt_min_width: int | None = None, **rule_options):
        super().__init__(JacobiProposer(window, init, coupled, sample_top, tree_width, tree_depth, tree_tail, tree,
                                        adapt_min_depth, adapt_min_width), acceptance, **rule_options)
