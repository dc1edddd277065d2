"""Draft-based proposers (Leviathan et al. 2023; Chen et al. 2023; EAGLE, Li et al. 2024).

Each step a drafter proposes a chain of ``gamma`` tokens ``d_1..d_gamma``, each drawn from its own
(guided, warped) distribution ``q``; the loop verifies them in one target forward.

* :class:`DraftModelProposer`: any :class:`~vargen.models.base.TokenModel` with the target's vocabulary
  and grid (e.g. a smaller LlamaGen GPT); it gets its own cache and the same CFG batching and logits
  chain.
* :class:`DraftHeadProposer`: EAGLE's one-layer feature predictor on the target's final-norm hidden
  states (:class:`~vargen.models.draft_head.DraftHead`, or a folder written by ``vargen train
  draft-head``); with CFG it runs on the cond and uncond halves, fed each half's own features, and its
  logits are guided with the same scale (as LANTERN's drafter does).

Cache bookkeeping, per row with ``n`` committed tokens: the target cache holds tokens ``< n-1`` (the last
committed token is fed first in the next window). The draft model re-feeds the two last committed
tokens ``[x_{n-2}, x_{n-1}]`` each step -- at most one of them is new to its cache and re-writing an
identical entry is a no-op, so the chain needs no per-row ragged input; after a token tree, whose accepted path may
leave the drafted chain at any depth, it re-feeds the last ``gamma + 1``. The head re-feeds the last
``gamma + 1`` (feature, token) pairs for the same reason. The first step proposes nothing (one plain
target step: the head needs the target's feature of token 0), so drafting starts at ``n = 2``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..base import sample_from_probs
from ..loop import NoProposer, Proposal, TokenSampler
from ..session import TokenSession
from ..spec import check_bounds, checked, option
from ..stats import DraftStats
from ..tree import TREE_SHAPES, AdaptiveShape, TreeDrafts, adaptive_shape, adaptive_stats

__all__ = ["DraftModelProposer", "DraftHeadProposer", "SpeculativeSampler", "DraftOptions"]


@dataclass
class DraftOptions:
    draft: Any = option(None, "the drafter: a draft TokenModel, a DraftHead, or a draft-head folder "
                        "(a pipeline fills in its own)")
    gamma: int = option(4, "drafts per step (the chain length; auto: chosen by a measured cost model, falling back "
                        "to AR)", minimum=1, bound="num_tokens", literals=("auto",))
    tree_width: int = option(1, "a static tree (LANTERN++): candidates per depth, drawn without replacement from the "
                             "drafter's q (1: a chain)", minimum=1, bound="vocab_size")
    tree_depth: int = option(3, "static tree: levels with branching, the root included (depths 1 .. tree_depth-1)",
                             minimum=2)
    tree: str = option("static", "static: every step verifies the whole tree (or chain); adaptive: each row verifies a "
                       "sub-tree whose depth and width follow its committed history (ADT-Tree), padded to the static "
                       "tree; the drafter stops at the deepest row's depth", choices=TREE_SHAPES)
    adapt_min_depth: int = option(1, "tree=adaptive: the shallowest depth (drafts verified along the chain); the "
                                  "deepest is gamma", minimum=1)
    adapt_min_width: int | None = option(None, "tree=adaptive: the fewest candidates per branching depth, the most "
                                         "being tree_width (none: tree_width, the width does not adapt)", minimum=1)


def _check_gamma(gamma) -> int:
    return checked(DraftOptions(None, gamma), "sd").gamma


def _tree(gamma, tree_width: int, tree_depth: int, tree: str = "static", adapt_min_depth: int = 1,
          adapt_min_width: int | None = None):
    """``(TreeDrafts or None, the AdaptiveShape arguments or None)`` of these options, checked."""
    checked(DraftOptions(None, gamma, tree_width, tree_depth, tree, adapt_min_depth, adapt_min_width), "sd")
    drafts = None
    if tree_width > 1:
        if gamma == "auto":
            raise ValueError("sd: gamma=auto does not size trees; give a gamma with tree_width > 1")
        drafts = TreeDrafts(gamma, tree_width, tree_depth, what=f"sd: tree_width={tree_width}, "
                                                                f"tree_depth={tree_depth}, gamma={gamma}")
    adaptive = adaptive_shape("sd", tree, adapt_min_depth, adapt_min_width, None if gamma == "auto" else gamma,
                              f"gamma={gamma}", drafts)
    return drafts, adaptive


class _ChainProposer:
    """A chain of ``gamma`` drafts, each drawn from the drafter's guided q; subclasses give the logits."""

    wants_hidden = False

    AUTO_GAMMAS = (0, 1, 2, 3, 4, 6, 8)

    def __init__(self, gamma: int, tree_width: int = 1, tree_depth: int = 3, tree: str = "static",
                 adapt_min_depth: int = 1, adapt_min_width: int | None = None):
        self.gamma = _check_gamma(gamma)
        self.tree, self.adaptive = _tree(gamma, tree_width, tree_depth, tree, adapt_min_depth, adapt_min_width)
        self.shape = None
        self.auto = self.gamma == "auto"
        self.lookahead = 0 if self.auto else (self.gamma if self.tree is None else self.tree.drafts)
        self.draft_passes = 0
        self.ready = False

    def auto_candidates(self, model) -> list[int]:
        """Chain lengths ``"auto"`` chooses from."""
        return [g for g in self.AUTO_GAMMAS if g < model.num_tokens]

    def resized(self, drafts: int):
        """This proposer with chains of ``drafts``; 0 is plain AR."""
        if drafts == 0:
            return NoProposer()
        other = copy.copy(self)
        other.gamma = other.lookahead = drafts
        other.auto = False
        return other

    def _widest(self, model) -> int:
        """The most drafts one proposal chains (``"auto"``: its largest candidate)."""
        return max(self.auto_candidates(model)) if self.auto else self.gamma

    def _check_bounds(self, model) -> None:
        check_bounds(DraftOptions(None, self.gamma, 1 if self.tree is None else self.tree.width), "sd", model)

    def draft_stats(self) -> DraftStats:
        tree = {} if self.tree is None else dict(tree_width=self.tree.width, tree_nodes=self.tree.tree.size)
        return adaptive_stats(self, DraftStats(gamma=self.gamma, drafter=self.name, **tree))

    def _start_shape(self, ctx) -> None:
        """A fresh adaptive-shape controller per call (the loop runs a shallow copy of the proposer)."""
        self.shape = None
        if self.adaptive is not None:
            self.shape = AdaptiveShape(*self.adaptive)
            self.shape.start(ctx.batch, ctx.seq.shape[1], ctx.num_tokens, ctx.grid[2], ctx.device)

    def _observe_shape(self, fb) -> None:
        if self.shape is not None:
            self.shape.observe(fb.start, fb.committed, fb.accepted, fb.proposal.length > 0)

    def propose(self, ctx, n) -> Proposal:
        if not self.ready:  # first step: a plain target step
            return Proposal.empty(ctx.batch, ctx.vocab_size, ctx.device)
        u = ctx.rng.rand(self.gamma)
        shape = None if self.shape is None else self.shape.shape
        passes = self.gamma
        if shape is not None:  # adaptive: draft as deep as the deepest row still decoding (one host sync)
            passes = max(1, int(torch.where(n < ctx.num_tokens, shape[0], 0).max()))
        logits = self._catch_up(ctx.seq, n)
        drafts, qs = [], []
        for i in range(passes):
            q_i = ctx.session.probs(logits[:, None], n + i)[:, 0]
            drafts.append(sample_from_probs(q_i, u[:, i]))
            qs.append(q_i)
            if i + 1 < passes:
                logits = self._step(drafts[-1], n + i)
        drafts += drafts[-1:] * (self.gamma - passes)  # the padded slots below every row's depth (invalid)
        qs += qs[-1:] * (self.gamma - passes)
        drafts, qs = torch.stack(drafts, 1), torch.stack(qs, 1)
        if self.tree is not None:  # a static tree: more candidates per depth from the same q (LANTERN++)
            proposal = self.tree.propose(drafts, qs, ctx.rng, shape)
        else:
            valid = None if shape is None else torch.arange(self.gamma, device=n.device)[None] < shape[0][:, None]
            proposal = Proposal(drafts, qs, valid)
        if self.shape is not None:
            self.shape.record(n, proposal.valid)
        return proposal


class DraftModelProposer(_ChainProposer):
    """A smaller TokenModel as drafter (its own cache, same CFG and logits chain)."""

    name = "model"

    def __init__(self, draft, gamma: int = 4, tree_width: int = 1, tree_depth: int = 3, tree: str = "static",
                 adapt_min_depth: int = 1, adapt_min_width: int | None = None):
        super().__init__(gamma, tree_width, tree_depth, tree, adapt_min_depth, adapt_min_width)
        self.draft = draft

    def check(self, model) -> None:
        self._check_bounds(model)
        d = self.draft
        if d.vocab_size != model.vocab_size or tuple(d.grid) != tuple(model.grid):
            raise ValueError(f"draft model (vocab {d.vocab_size}, grid {tuple(d.grid)}) does not match the "
                             f"target (vocab {model.vocab_size}, grid {tuple(model.grid)})")

    def memory_per_row(self, model, cond, config) -> int:
        """The drafter's cache rows and its widest forward (a re-feed of ``gamma + 1`` tokens at most)."""
        g = self._widest(model)
        rows = 2 if config.uses_cfg else 1
        return rows * self.draft.memory_per_row(cond, g + 1, model.num_tokens + 2 * g + 1)

    def start(self, ctx, p0, hidden0) -> None:
        self.ready = False
        # a chain re-feeds [x_{n-2}, x_{n-1}]: at most one of them is new to the draft cache. After a tree, the
        # accepted path may leave the drafted chain at any depth, so the last gamma + 1 tokens are re-fed.
        self.refeed = 2 if self.tree is None else self.gamma + 1
        self.session = TokenSession(self.draft, ctx.cond, ctx.config, extra_positions=self.gamma + self.refeed)
        self.session.prefill()  # the condition prefix; its prediction of token 0 is not used
        self.draft_passes = 1
        self._start_shape(ctx)

    def observe(self, ctx, fb) -> None:
        self._observe_shape(fb)
        self.ready = True

    def _catch_up(self, seq, n) -> torch.Tensor:
        """Logits ``[rows, V]`` for token ``n`` after re-feeding the last ``refeed`` committed tokens (n >= 2)."""
        start = (n - self.refeed).clamp(min=0)
        pos = start[:, None] + torch.arange(self.refeed, device=n.device)
        self.draft_passes += 1
        logits = self.session.forward(seq.gather(1, pos), start)[0]
        last = n - 1 - start
        if self.session.use_cfg:
            last = torch.cat([last, last])
        return logits[torch.arange(logits.shape[0], device=n.device), last]

    def _step(self, token, position) -> torch.Tensor:
        """Feed draft ``token [B]`` at ``position [B]``; logits for the next token."""
        self.draft_passes += 1
        return self.session.forward(token[:, None], position)[0][:, 0]


class DraftHeadProposer(_ChainProposer):
    """An EAGLE draft head on the target's features (the target must be a HiddenStateModel)."""

    name = "head"
    wants_hidden = True

    def __init__(self, head, gamma: int = 4, tree_width: int = 1, tree_depth: int = 3, tree: str = "static",
                 adapt_min_depth: int = 1, adapt_min_width: int | None = None):
        super().__init__(gamma, tree_width, tree_depth, tree, adapt_min_depth, adapt_min_width)
        self.head = head

    def check(self, model) -> None:
        self._check_bounds(model)
        self.head.check_target(model)

    def memory_per_row(self, model, cond, config) -> int:
        """The head's cache and the target features it keeps (``num_tokens + 2 gamma + 4`` positions), and the logits
        of its forward through the target's head."""
        g, c = self._widest(model), self.head.config
        rows = 2 if config.uses_cfg else 1
        length, itemsize = model.num_tokens + 2 * g + 4, self.head.fc.weight.dtype.itemsize
        return rows * (length * (2 * c.dim + model.hidden_size) * itemsize + 2 * 4 * (g + 1) * model.vocab_size)

    def start(self, ctx, p0, hidden0) -> None:
        self.ready = False
        self.target, self.use_cfg = ctx.model, ctx.session.use_cfg
        self.head.to(device=hidden0.device, dtype=hidden0.dtype).eval()
        rows = ctx.session.rows
        length = ctx.num_tokens + 2 * self.gamma + 4
        self.cache = self.head.new_cache(rows, length)
        self.features = torch.zeros(rows, length, hidden0.shape[-1], dtype=hidden0.dtype, device=hidden0.device)
        self.last = None  # predicted feature of the newest chain position
        self._start_shape(ctx)

    def _rows(self, x):
        return torch.cat([x, x]) if self.use_cfg else x

    def observe(self, ctx, fb) -> None:
        """Store the target's features of the fed tokens ``x_{n-1}, d_0, ...`` at positions ``n-1, n, ...``."""
        self._observe_shape(fb)
        hidden = fb.hidden
        if fb.path is not None:  # a tree: the features along the accepted path (and its continuation)
            nodes = self._rows(torch.nn.functional.pad(fb.path, (1, 0)))
            hidden = hidden.gather(1, nodes[..., None].expand(-1, -1, hidden.shape[-1]))
        pos = self._rows(fb.start - 1)[:, None] + torch.arange(hidden.shape[1], device=hidden.device)
        self.features.scatter_(1, pos[..., None].expand(-1, -1, hidden.shape[-1]), hidden.to(self.features.dtype))
        self.ready = True

    def _run(self, feats, tokens, t):
        self.draft_passes += 1
        return self.head(self.target, feats, self._rows(tokens), self._rows(t), self.cache)

    def _catch_up(self, seq, n) -> torch.Tensor:
        """Re-feed pairs ``(f_t, x_{t+1})`` for ``t`` up to ``n-2`` (true features); logits for token ``n``."""
        start = (n - 2 - self.gamma).clamp(min=0)
        t = start[:, None] + torch.arange(self.gamma + 1, device=n.device)
        feats = self.features.gather(1, self._rows(t)[..., None].expand(-1, -1, self.features.shape[-1]))
        logits, h = self._run(feats, seq.gather(1, t + 1), t)
        idx = self._rows(n - 2 - start)
        rows = torch.arange(idx.shape[0], device=n.device)
        self.last = h[rows, idx][:, None]
        return logits[rows, idx]

    def _step(self, token, position) -> torch.Tensor:
        """Pair ``(f_hat_{position-1}, token at position)``: logits for token ``position + 1``."""
        logits, self.last = self._run(self.last, token[:, None], (position - 1)[:, None])
        return logits[:, 0]


def draft_proposer(draft, gamma: int = 4, tree_width: int = 1, tree_depth: int = 3, tree: str = "static",
                   adapt_min_depth: int = 1, adapt_min_width: int | None = None):
    """The proposer for ``draft``: a DraftHead (or a head folder) or a draft TokenModel."""
    from ...models.draft_head import DraftHead

    if draft is None:
        raise ValueError("speculative decoding needs draft=<draft TokenModel | DraftHead | draft head folder>")
    if isinstance(draft, (str, Path)):
        draft = DraftHead.from_folder(draft)
    shape = (gamma, tree_width, tree_depth, tree, adapt_min_depth, adapt_min_width)
    if isinstance(draft, DraftHead):
        return DraftHeadProposer(draft, *shape)
    return DraftModelProposer(draft, *shape)


class SpeculativeSampler(TokenSampler):
    """Draft-model / draft-head speculative decoding times any acceptance rule.

    draft: a TokenModel (draft model), a ``DraftHead``, or a head folder.
    gamma: chain length (drafts per step, >= 1), or "auto" (:mod:`vargen.samplers.autotune`).
    tree_width / tree_depth: a static tree instead of the chain (:class:`~vargen.samplers.tree.TreeDrafts`):
        ``tree_width`` candidates at each depth up to ``tree_depth - 1``, drawn without replacement from the
        drafter's q along the chain, verified by the recursive rule (LANTERN++'s static tree, arXiv 2502.06352, with
        ``acceptance="lantern"`` and ``lam``).
    tree / adapt_min_depth / adapt_min_width: ``tree="adaptive"``: each row verifies a sub-tree of that tree (or a
        prefix of the chain) whose depth and width follow its committed history (:class:`~vargen.samplers.tree.
        AdaptiveShape`, after ADT-Tree, arXiv 2512.21857), padded to the static shape; the drafter runs only as deep as
        the deepest row.
    acceptance: "exact" (lossless), "lantern", "gsd" or a rule instance, with the rule's options
        (``delta=``, ``lam=``, ``k=``, ``group_size=``, ``codebook=``, ...).
    """

    name = "sd"
    COMPANION = "draft"  # the option a pipeline fills in from its companion of that name
    OPTIONS = DraftOptions

    def __init__(self, draft=None, gamma: int = 4, acceptance="exact", tree_width: int = 1, tree_depth: int = 3,
                 tree: str = "static", adapt_min_depth: int = 1, adapt_min_width: int | None = None, **rule_options):
        shape = (gamma, tree_width, tree_depth, tree, adapt_min_depth, adapt_min_width)
        _tree(*shape)
        super().__init__(draft_proposer(draft, *shape), acceptance, **rule_options)

    @property
    def draft(self):
        p = self.proposer
        return p.head if isinstance(p, DraftHeadProposer) else p.draft
