"""The one token loop: any proposer times any acceptance rule.

The split follows vLLM's speculative decoding: a *proposer* guesses the next tokens (:class:`Proposal`),
the target model *scores* them in one forward over its static cache (:class:`~.session.TokenSession`),
and a *rejection sampler* (:class:`~.verify.Committer` with an acceptance rule) keeps a prefix and draws
one more token. Each step, per row with ``n`` committed tokens:

    proposal = proposer.propose(ctx, n)                    # drafts d_0..d_{J-1} for tokens n..n+J-1, with q
    p = target([x_{n-1}, d_0..d_{J-1}])                    # final probabilities for tokens n..n+J
    k = commit(p, proposal)                                # accepted prefix + one residual/bonus token
    proposer.observe(ctx, Feedback(p, hidden, n, k, ...))  # e.g. Jacobi keeps p's samples as next drafts
    n += k

Plain AR is the empty proposal (``J = 0``: one token per forward). Rows advance independently (per-row
``n`` into a static cache, nothing copied), verification has no host sync, and the loop syncs once per
step (its stopping test). With the ``exact`` rule every proposer gives exactly the target's distribution
(speculative sampling, Leviathan et al. 2023; Chen et al. 2023), tested by enumeration.

Writing a proposer: implement ``start`` / ``propose`` / ``observe`` (and ``lookahead``, the most drafts
a proposal holds); see README.md "How to write a proposer". The loop calls a shallow copy of the
proposer per ``sample`` call, so per-call state can live on ``self``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch

from ..budget import Footprint
from ..decode import TokenTree
from .acceptance import get_rule
from .base import GenerationOutput, RowRandom, SamplingConfig, Stats, StepTimer, sample_from_probs
from .compiled import compile_step, compiled_target_step, inductor_settings  # noqa: F401 (importable here too)
from .session import CacheOptions, TokenSession, resolve_config, token_footprint
from .stats import DraftStats
from .verify import Committer

__all__ = ["Proposal", "Feedback", "DecodeContext", "Proposer", "NoProposer", "TokenSampler", "ARSampler"]


@dataclass
class Proposal:
    """Drafts for tokens ``n .. n+J-1`` of each row.

    tokens: ``[B, J]``. q: ``[B, J, V]``, the distribution each draft was truthfully drawn from (a
    deterministic draft has a one-hot q). valid: optional ``[B, J]`` bool; an invalid slot is never
    accepted and its token is drawn from the target's ``p`` (nothing else after it is accepted).

    tree: the drafts are nodes ``1 .. J`` of a :class:`~vargen.decode.TokenTree` (static per proposer; node 0 is
    the last committed token) instead of a chain. Siblings are distinct candidates drawn without replacement from
    their group's distribution, which is what ``q`` holds for each of them (:mod:`.tree`).
    """

    tokens: torch.Tensor
    q: torch.Tensor
    valid: torch.Tensor | None = None
    tree: TokenTree | None = None

    @classmethod
    def empty(cls, batch: int, vocab: int, device) -> "Proposal":
        return cls(torch.zeros(batch, 0, dtype=torch.long, device=device), torch.zeros(batch, 0, vocab, device=device))

    @property
    def length(self) -> int:
        return self.tokens.shape[1]


@dataclass
class Feedback:
    """What one target forward said about a proposal.

    p: ``[B, J+1, V]`` final probabilities for tokens ``n .. n+J``; hidden: the target's hidden states of
    the fed tokens ``[x_{n-1}, d_0 .. d_{J-1}]`` (``[rows, J+1, h]``, CFG rows included; None unless the
    proposer ``wants_hidden``); start: ``n`` before the step ``[B]``; committed: ``k [B]``; accepted: drafts
    accepted ``a [B]``; proposal: what was verified. For a tree proposal ``p`` is per node and ``path [B, D]`` holds
    the node of each depth ``1 .. D`` on the accepted path, then the stale continuation below it
    (:func:`.tree.verify_tree`).
    """

    p: torch.Tensor
    hidden: torch.Tensor | None
    start: torch.Tensor
    committed: torch.Tensor
    accepted: torch.Tensor
    proposal: Proposal
    path: torch.Tensor | None = None


@dataclass
class DecodeContext:
    """One sampling call as proposers see it.

    cond: the condition the call was given (a drafter model builds its own session from it).
    seq: ``[B, L]`` committed tokens (positions ``< n`` of each row; beyond that, scratch space a proposer
    may write drafts into). rng: every random number comes from here (per-row streams when the caller
    passes one generator per row). session: the target (``session.probs`` is the logits chain, so a
    drafter's q is guided and warped exactly like the target's p). compiled: the call runs its target step
    compiled; a proposer may then run its own tensor work through :func:`compile_step` too (same numbers).
    """

    model: Any
    cond: Any
    session: TokenSession
    config: SamplingConfig
    rng: RowRandom
    seq: torch.Tensor
    batch: int
    num_tokens: int
    vocab_size: int
    grid: tuple[int, int, int]
    device: torch.device
    step: int = 0
    compiled: bool = False
    frame_before: torch.Tensor | None = None


@runtime_checkable
class Proposer(Protocol):
    """Guesses the next tokens of every row. ``lookahead``: the most drafts one proposal holds (the
    target's cache gets that much headroom); ``wants_hidden``: pass the target's hidden states to
    ``start`` / ``observe``; ``draft_passes``: forward calls of a drafter model, for ``Stats``; ``draft_stats()``:
    its settings as a :class:`~.stats.DraftStats` (window, gamma, tree shape; the loop adds the proposer's and the
    rule's names and the draft counts) for ``stats.draft``. Optional ``memory_per_row(model, cond, config)``: the bytes
    per image a proposer holds beyond its proposals (a drafter's cache and forwards; :mod:`vargen.budget`)."""

    name: str
    lookahead: int
    wants_hidden: bool
    draft_passes: int

    def check(self, model) -> None: ...

    def start(self, ctx: DecodeContext, p0: torch.Tensor, hidden0: torch.Tensor | None) -> None: ...

    def propose(self, ctx: DecodeContext, n: torch.Tensor) -> Proposal: ...

    def observe(self, ctx: DecodeContext, feedback: Feedback) -> None: ...

    def draft_stats(self) -> DraftStats: ...


class NoProposer:
    """The empty proposal: plain autoregressive decoding, one token per forward."""

    name = "none"
    lookahead = 0
    wants_hidden = False
    draft_passes = 0

    def check(self, model) -> None:
        return None

    def start(self, ctx, p0, hidden0) -> None:
        return None

    def propose(self, ctx, n) -> Proposal:
        return Proposal.empty(ctx.batch, ctx.vocab_size, ctx.device)

    def observe(self, ctx, feedback) -> None:
        return None

    def draft_stats(self) -> DraftStats:
        return DraftStats()


class TokenSampler:
    """``proposer`` x acceptance rule, run by the one loop. ``sample(model, cond, config, generator)``.

    acceptance: "exact" (lossless), "lantern", "gsd" or a rule instance, with the rule's options.
    Subclasses name their proposer's options dataclass in ``OPTIONS`` (None: no options of their own).
    Every token sampler also takes the target cache's options (:class:`~.session.CacheOptions`: ``kv_budget``,
    ``kv_anchor``, ``kv_recent_lines``, LineAR K/V eviction).
    """

    name = "token"
    MODEL = "token"  # the model protocol it samples (vargen.models.base.TokenModel): which families it applies to
    OPTIONS = None
    CACHE_OPTIONS = CacheOptions
    TAKES_RULE = True  # "acceptance" and the chosen rule's options are options of this sampler

    def __init__(self, proposer: Proposer | None = None, acceptance="exact", **options):
        cache_keys = set(CacheOptions.__dataclass_fields__)
        self.cache_options = CacheOptions(**{k: options.pop(k) for k in cache_keys & set(options)})
        self.proposer = proposer if proposer is not None else NoProposer()
        self.rule = get_rule(acceptance, **options)
        self.auto_pilots: dict = {}  # window="auto": pilot measurements per (model, batch, config), see autotune

    def check(self, model) -> None:
        """``ValueError`` if this sampler cannot run on ``model`` (sizes past the model's, a mismatched drafter,
        a K/V budget the model's cache cannot keep), before any work."""
        self.proposer.check(model)
        self.cache_options.eviction(model)
        self._check_tree(model)

    def _check_tree(self, model) -> None:
        if not getattr(self.proposer, "tree", None):
            return
        if self.cache_options.eviction(model) is not None:
            raise ValueError(f"{self.name}: tree drafts cannot run over an evicting K/V cache (kv_budget)")
        if not getattr(self.rule, "TREES", False):
            raise ValueError(f"{self.name}: the {self.rule.name} rule cannot verify token trees")

    def footprint(self, model, cond, config: SamplingConfig | None = None) -> Footprint:
        """What one image needs (:mod:`vargen.budget`): the target's widest forward (the last token and the most
        drafts a proposal holds; ``"auto"``: its widest candidate) over its cache, and what the proposer holds itself
        (optional ``memory_per_row(model, cond, config)`` of a proposer with a model of its own)."""
        config = resolve_config(model, config)
        proposer = self.proposer
        J = max(proposer.auto_candidates(model)) if getattr(proposer, "auto", False) else proposer.lookahead
        fp = token_footprint(model, cond, config, J + 1, model.num_tokens + 2 * J + 4)
        own = getattr(proposer, "memory_per_row", None)
        held = own(model, cond, config) if own is not None else 0
        return fp.add(f"the {proposer.name} proposer's own state", held) if held else fp

    def with_proposer(self, proposer) -> "TokenSampler":
        """This sampler (same rule) with another proposer."""
        other = copy.copy(self)
        other.proposer = proposer
        return other

    @torch.no_grad()
    def sample(self, model, cond, config: SamplingConfig | None = None, generator=None,
               compile: bool = False, max_steps: int | None = None) -> GenerationOutput:
        """``compile=True``: the target step (forward, logits chain, verification and commit) runs as one
        ``torch.compile(fullgraph=True)`` graph per (batch, window) shape, reused across calls, over a static
        cache (and under CUDA graphs on a GPU); the tokens are those of the eager path. A proposer sized
        ``"auto"`` is resized first (:mod:`.autotune`; ``stats.auto`` has the evidence). ``max_steps``: stop
        after that many verification steps (the tokens are then incomplete; for measurements)."""
        config = resolve_config(model, config)
        proposer = copy.copy(self.proposer)
        proposer.check(model)
        self._check_tree(model)
        eviction = self.cache_options.eviction(model)
        auto = None
        if getattr(proposer, "auto", False):
            from .autotune import choose_lookahead

            drafts, auto = choose_lookahead(self, model, cond, config, proposer.auto_candidates(model), compile)
            proposer = proposer.resized(drafts)
        self.rule.prepare(model)
        J = proposer.lookahead
        session = TokenSession(model, cond, config, extra_positions=J + 1, hidden=proposer.wants_hidden,
                               static=compile, eviction=eviction)
        B, N, V, dev = session.batch, session.num_tokens, model.vocab_size, session.device
        rng = RowRandom(generator, B, dev)
        committer = Committer(self.rule, B, N, N + 2 * J + 4, dev)
        before = model.frame_before(cond) if hasattr(model, "frame_before") else None
        ctx = DecodeContext(model, cond, session, config, rng, committer.seq, B, N, V, tuple(model.grid), dev,
                            compiled=compile, frame_before=None if before is None else before.to(dev).long())
        step_fn = compiled_target_step(target_step, dev, session, committer) if compile else target_step
        stats = Stats()
        with StepTimer(dev) as timer:
            logits, hidden = session.prefill()
            p0 = session.probs(logits[:, None], 0)
            committer.seq[:, 0] = sample_from_probs(p0[:, 0], rng.rand(1)[:, 0])
            stats.accepted.append(torch.ones(B, dtype=torch.long, device=dev))
            n = torch.ones(B, dtype=torch.long, device=dev)
            proposer.start(ctx, p0, hidden)
            ctx.step = 1
            while True:
                lo, hi = torch.stack([n.min(), n.max()]).tolist()  # the one host sync per step
                if lo >= N or (max_steps is not None and ctx.step > max_steps):
                    break
                proposal = proposer.propose(ctx, n)
                j = proposal.length
                u_acc, u_res = rng.rand(j + 1).split([j, 1], dim=1)
                session.forward_passes += 1
                p, hidden, k, a, path = step_fn(session, committer, proposal.tokens, proposal.q, proposal.valid,
                                                u_acc, u_res[:, 0], n, torch.tensor(ctx.step, device=dev),
                                                None if compile else hi + j, proposal.tree)
                proposer.observe(ctx, Feedback(p, hidden, n, k, a, proposal, path))
                stats.accepted.append(k)
                n = n + k
                ctx.step += 1
        stats.forward_passes = session.forward_passes
        stats.draft_forward_passes = proposer.draft_passes
        stats.draft = replace(proposer.draft_stats(), proposer=proposer.name, acceptance=self.rule.name)
        stats.auto = auto
        committer.fill_stats(stats)
        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        if hasattr(session.cache, "nbytes"):
            stats.kv_cache_bytes = int(session.cache.nbytes)  # the target's cache, CFG rows included
        return GenerationOutput(tokens=committer.tokens(), stats=stats)


def target_step(session, committer, tokens, q, valid, u_acc, u_res, n, step, kv_len=None, tree=None):
    """One target forward over ``[x_{n-1}, drafts]`` and the verification of the drafts: ``(p [B, j+1, V],
    hidden, k, a, path)`` (``path``: None for a chain). The committer's buffers and the cache are written in place;
    after a tree, the accepted path's K/V are moved to their positions."""
    inputs = torch.cat([committer.seq.gather(1, (n - 1)[:, None]), tokens], dim=1)
    logits, hidden = session.run(inputs, n - 1, kv_len, tree)
    if tree is None:
        p = session.probs(logits, n)  # [B, j+1, V] for tokens n .. n+j
        k, a = committer.commit(p, Proposal(tokens, q, valid), u_acc, u_res, n, step)
        return p, hidden, k, a, None
    p = session.probs(logits, n[:, None] + tree.tensors(n.device)["depth"])  # node i predicts token n + depth[i]
    k, a, path = committer.commit_tree(p, Proposal(tokens, q, valid, tree), u_acc, u_res, n, step)
    session.keep_path(n - 1, path, tree)
    return p, hidden, k, a, path


class ARSampler(TokenSampler):
    """One token per forward pass, raster order: the loop with the empty proposal."""

    name = "ar"
    TAKES_RULE = False

    def __init__(self, **cache_options):
        super().__init__(NoProposer(), **cache_options)
