"""Acceptance rules for speculative verification, vectorised over rows and positions.

A rule sees, for every row ``b`` and draft slot ``j``, the target's final probabilities ``p [B, J, V]``
for that slot, the distribution ``q [B, J, V]`` the draft was truthfully drawn from, the drafts
``d [B, J]`` and uniforms ``u [B, J]``. It returns which drafts pass and the distribution to resample
from at a rejected slot. The sampler commits the accepted prefix (first rejection by cumulative
product) and draws one token from the residual of the first rejected slot -- no host sync, no loop.

``exact`` is standard speculative sampling (Leviathan et al. 2023, Chen et al. 2023): accept with
probability ``min(1, p(d) / q(d))``; on rejection draw from ``norm(max(0, p - q))``. The committed
token is then distributed exactly as ``p``.

Lossy rules (``lantern``, ``gsd``) accept a draft ``x`` with ``min(1, P(x) / Q(x))`` where ``P(x)`` and
``Q(x)`` sum ``p`` and ``q`` over a set ``S(x)`` of tokens judged interchangeable with ``x`` (LANTERN's
latent neighbourhood, GSD's dynamic group). Both report ``tv = P(x) - p(x)``: the mass of ``p`` the
relaxation credited to ``x`` (the TV distance between ``p`` and ``p`` with ``S(x)`` collapsed onto ``x``).
On rejection they resample from Cool-SD's TV-optimal residual (AAAI 2026; research/lantern.md §1.4)

    G* = norm(max(0, p - q * f)),   f(y) = min(1, P(y) / Q(y)) for every token y,

i.e. the residual removes exactly the mass each token's own set let through, so the committed token's
law is ``q f + (1 - sum q f) G*`` and its TV distance to ``p`` is ``sum_y max(0, q(y) f(y) - p(y))``.
With no relaxation ``f = min(1, p/q)`` and ``G*`` is the exact residual, bit for bit.
``residual="token"`` uses the official (GSD / SJD) ``norm(max(0, p - q))`` instead.

Only tokens the target can emit (``p > 0``, i.e. inside top-k / top-p) ever join a set, so a zero
relaxation (``delta=0``, ``lam=1``, ``group_size=1``) is token for token the exact rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))`` over the last dim; where it is empty (``p == q``), ``p`` itself."""
    r = (p - q).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp_min(1e-30), p)


@dataclass
class Verdict:
    """accept: [B, J] bool; tv: [B, J] probability mass the rule moved (0 for exact rules);
    relaxed: [B, J] bool, drafts accepted only because of a relaxation."""

    accept: torch.Tensor
    tv: torch.Tensor | None = None
    relaxed: torch.Tensor | None = None


class ExactAcceptance:
    """Lossless token-level speculative sampling."""

    name = "exact"
    lossless = True

    def prepare(self, model) -> None:  # rules with per-model tables (neighbourhoods) build them here
        return None

    def verify(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, u: torch.Tensor) -> Verdict:
        pd = p.gather(-1, drafts[..., None]).squeeze(-1).double()
        qd = q.gather(-1, drafts[..., None]).squeeze(-1).double()
        # u < min(1, p/q)  <=>  u * q < p   (q(d) > 0 for a draft drawn from q)
        return Verdict(accept=u * qd < pd)

    def residual(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return residual(p, q)


RESIDUALS = ("tv_optimal", "token")
_CHUNK_ELEMENTS = 1 << 24  # per-chunk budget of the residual's [B, tokens, set] tensors


def _codebook_tensor(book) -> torch.Tensor:
    book = book() if callable(book) else book
    return torch.as_tensor(book).detach().float()


def neighbour_table(codebook: torch.Tensor, k: int, normalize: bool = True, chunk: int = 1024) -> torch.Tensor:
    """``[V, k]`` int32: each token's ``k`` nearest other codebook entries, nearest first.

    Distances are Euclidean on l2-normalised rows (the geometry of LlamaGen's quantiser) unless
    ``normalize=False``. Computed ``chunk`` rows at a time, so memory is ``chunk x V``, never ``V x V``.
    """
    book = codebook.float()
    if normalize:
        book = F.normalize(book, dim=-1)
    V = book.shape[0]
    k = min(k, V - 1)
    out = torch.empty(V, k, dtype=torch.int32, device=book.device)
    for s in range(0, V, chunk):
        d = torch.cdist(book[s : s + chunk], book)
        rows = torch.arange(d.shape[0], device=book.device)
        d[rows, rows + s] = float("inf")  # a token is not its own neighbour
        out[s : s + chunk] = d.topk(k, dim=-1, largest=False).indices.to(torch.int32)
    return out


class _RelaxedRule:
    """Shared verify / residual of set-based lossy rules; subclasses define ``_set_masses``."""

    lossless = False

    def __init__(self, residual: str = "tv_optimal"):
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
        self.residual_kind = residual

    def _context(self, p: torch.Tensor):
        return None

    def _set_masses(self, p, q, tokens, ctx):
        """For ``tokens [..., M]`` (leading dims of ``p [..., V]``): (P, Q, p(x), q(x)) as float64 [..., M],
        with ``P = p(x) + sum of p over the set's other members`` (same for ``Q``)."""
        raise NotImplementedError

    def verify(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, u: torch.Tensor) -> Verdict:
        P, Q, pd, qd = (t.squeeze(-1) for t in self._set_masses(p, q, drafts[..., None], self._context(p)))
        accept = u * Q < P
        return Verdict(accept=accept, tv=P - pd, relaxed=accept & ~(u * qd < pd))

    def residual(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Cool-SD's ``norm(max(0, p - q f))`` for ``p, q [B, V]`` (or the token residual)."""
        if self.residual_kind == "token":
            return residual(p, q)
        B, V = p.shape
        ctx = self._context(p)
        qf = torch.empty_like(p)
        step = max(1, _CHUNK_ELEMENTS // max(1, B * self._set_width(V)))
        for s in range(0, V, step):  # chunks of the vocabulary, not positions or rows
            tok = torch.arange(s, min(V, s + step), device=p.device).expand(B, -1)
            P, Q, pd, qd = self._set_masses(p, q, tok, ctx)
            single = P == pd  # nothing credited: f = min(1, p/q) exactly, so q f = min(q, p)
            part = torch.where(P >= Q, qd, torch.where(single, pd, qd * P / Q.clamp_min(1e-300)))
            qf[:, s : s + step] = part.to(p.dtype)
        r = (p - qf).clamp_min(0)
        mass = r.sum(-1, keepdim=True)
        return torch.where(mass > 0, r / mass.clamp_min(1e-30), p)

    def _set_width(self, V: int) -> int:
        return 1


class LanternAcceptance(_RelaxedRule):
    """LANTERN relaxed acceptance over latent neighbourhoods (Jang et al., ICLR 2025, arXiv 2410.03355;
    LANTERN++ arXiv 2502.06352; research/lantern.md §1.2-1.4).

    The set of draft ``x`` is ``{x} + n_1..n_j``: its ``k`` nearest codebook neighbours, nearest first,
    cut at the largest prefix ``j`` whose target mass ``S_j = sum_{i<=j} p(n_i)`` stays within the bound
    (``S_j`` is then the TV distance to ``p``, research/lantern.md §1.3):

    delta: additive bound ``S_j <= delta`` (LANTERN).
    lam: multiplicative bound ``p(x) + S_j <= lam * p(x)`` (LANTERN++). Both given: the tighter one.
        Neither given: ``delta=0.1`` (the official default).
    k: neighbourhood size (official 1000 for LANTERN, 5-10 for LANTERN++); the table is ``[V, k]``.
    aggregate_q: sum the drafter's ``q`` over the same set (GSD-style, default) instead of the
        official numerator-only ratio ``P(x) / q(x)``.
    codebook: the tokenizer's codebook ``[V, d]`` (or a callable returning it), e.g.
        ``vq.codebook()``; default ``model.codebook()``. Rows are l2-normalised (``normalize``).
    residual: "tv_optimal" (Cool-SD G*, default) or "token"; see the module docstring.

    Fixes relative to the official code: the neighbour table is device resident, ``[V, k]`` int32 and
    ranked in the quantiser's geometry; the bounds are separate options; the residual removes exactly
    the sets used (the official code zeroes ``k+1`` neighbours whatever the set).
    """

    name = "lantern"

    def __init__(self, k: int = 1000, delta: float | None = None, lam: float | None = None, aggregate_q: bool = True,
                 codebook=None, normalize: bool = True, residual: str = "tv_optimal"):
        super().__init__(residual)
        if delta is None and lam is None:
            delta = 0.1
        if delta is not None and not 0 <= delta <= 1:
            raise ValueError(f"delta must be in [0, 1], got {delta}")
        if lam is not None and lam < 1:
            raise ValueError(f"lam must be >= 1 (1 disables the relaxation), got {lam}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self.k, self.delta, self.lam, self.aggregate_q = k, delta, lam, aggregate_q
        self.codebook, self.normalize = codebook, normalize
        self.table: torch.Tensor | None = None
        self._key = None

    def prepare(self, model, codebook=None) -> None:
        """Build the ``[V, k]`` neighbour table once per codebook (cached across calls)."""
        source = codebook if codebook is not None else self.codebook
        book = _codebook_tensor(source if source is not None else model.codebook)
        if book.shape[0] != model.vocab_size:
            raise ValueError(f"codebook has {book.shape[0]} rows but the model's vocabulary is {model.vocab_size}")
        device = getattr(model, "device", book.device)
        key = (book.shape, float(book.sum()), float(book.abs().sum()), str(device), self.k, self.normalize)
        if key != self._key:
            self.table = neighbour_table(book.to(device), self.k, self.normalize)
            self._key = key

    def _set_width(self, V: int) -> int:
        return self.table.shape[1]

    def _set_masses(self, p, q, tokens, ctx):
        if self.table is None:
            raise RuntimeError("LanternAcceptance.prepare(model) must run before verify")
        lead = tokens.shape
        nbr = self.table[tokens].long().flatten(-2)  # [..., M*k]
        pn = p.gather(-1, nbr).view(*lead, -1).double()
        pd = p.gather(-1, tokens).double()
        qd = q.gather(-1, tokens).double()
        bound = torch.full_like(pd, float("inf"))
        if self.delta is not None:
            bound = bound.clamp(max=self.delta)
        if self.lam is not None:
            bound = torch.minimum(bound, (self.lam - 1) * pd)
        # S_j is non-decreasing, so "S_j <= bound" selects a prefix of the proximity list (§1.3)
        take = (pn.cumsum(-1) <= bound[..., None]) & (pn > 0)
        P = pd + (pn * take).sum(-1)
        Q = qd
        if self.aggregate_q:
            qn = q.gather(-1, nbr).view(*lead, -1).double()
            Q = qd + (qn * take).sum(-1)
        return P, Q, pd, qd


class GroupedAcceptance(_RelaxedRule):
    """GSD grouped acceptance (So et al., ICCV 2025, arXiv 2508.07747; research/sjd_gsd.md §2).

    The group of draft ``x`` is built from the target's current distribution: the tokens ranked next to
    ``x`` when ``p`` is sorted (``group_size`` ranks including ``x``; ``group_size // 2`` above, the rest
    below, as the official -7/+6), kept only if ``|p(g) - p(x)| < prob_gap`` and, when ``max_dist`` is
    set, the squared distance of l2-normalised codebook rows is ``< max_dist``. The ratio is
    ``sum_G p / sum_G q``.

    Edge cases the official code gets wrong are defined here: near the top (or bottom) of the ranking
    the window is truncated (the official empty slice gives 0/0 and silently rejects); tokens outside
    the target's support never join; ``x`` always belongs to its group. One stable sort per verify
    call ranks every slot at once (the official code re-sorts the vocabulary per draft in a loop).

    group_size=1 is the exact rule. Defaults are the official 14 / 0.15; the distance filter is off
    unless ``max_dist`` is given (the official 0.5 was on LM input embeddings, not the codebook).
    """

    name = "gsd"

    def __init__(self, group_size: int = 14, prob_gap: float = 0.15, max_dist: float | None = None, codebook=None,
                 normalize: bool = True, residual: str = "tv_optimal"):
        super().__init__(residual)
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
        if prob_gap < 0:
            raise ValueError(f"prob_gap must be >= 0, got {prob_gap}")
        self.group_size, self.prob_gap, self.max_dist = group_size, prob_gap, max_dist
        self.codebook, self.normalize = codebook, normalize
        self.book: torch.Tensor | None = None
        above = group_size // 2
        self.offsets = torch.arange(-above, group_size - above)

    def prepare(self, model, codebook=None) -> None:
        if self.max_dist is None:
            return
        source = codebook if codebook is not None else self.codebook
        book = _codebook_tensor(source if source is not None else model.codebook)
        if book.shape[0] != model.vocab_size:
            raise ValueError(f"codebook has {book.shape[0]} rows but the model's vocabulary is {model.vocab_size}")
        book = F.normalize(book, dim=-1) if self.normalize else book
        self.book = book.to(getattr(model, "device", book.device))

    def _set_width(self, V: int) -> int:
        return self.group_size

    def _context(self, p):
        order = torch.sort(p, dim=-1, descending=True, stable=True).indices
        ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(p.shape[-1], device=p.device).expand_as(order))
        return order, ranks

    def _set_masses(self, p, q, tokens, ctx):
        order, ranks = ctx
        V = p.shape[-1]
        lead = tokens.shape
        off = self.offsets.to(p.device)
        r = ranks.gather(-1, tokens)[..., None] + off  # [..., M, G]
        valid = (r >= 0) & (r < V)
        cand = order.gather(-1, r.clamp(0, V - 1).flatten(-2))  # [..., M*G]
        pc = p.gather(-1, cand).view(*lead, -1).double()
        pd = p.gather(-1, tokens).double()
        qd = q.gather(-1, tokens).double()
        keep = valid & (pc > 0) & ((pc - pd[..., None]).abs() < self.prob_gap) & (off != 0)
        if self.max_dist is not None:
            if self.book is None:
                raise RuntimeError("GroupedAcceptance.prepare(model) must run before verify when max_dist is set")
            cand_v = self.book[cand.view(*lead, -1)]
            d2 = (cand_v - self.book[tokens][..., None, :]).pow(2).sum(-1)
            keep &= d2 < self.max_dist
        qc = q.gather(-1, cand).view(*lead, -1).double()
        return pd + (pc * keep).sum(-1), qd + (qc * keep).sum(-1), pd, qd


_RULES = {"exact": ExactAcceptance, "lantern": LanternAcceptance, "gsd": GroupedAcceptance}


def register_rule(name: str, cls) -> None:
    _RULES[name] = cls


def get_rule(rule, **options):
    """An acceptance rule from a name (``"exact"``, ...) or an instance (returned as is)."""
    if not isinstance(rule, str):
        return rule
    if rule not in _RULES:
        raise ValueError(f"unknown acceptance rule {rule!r}; available: {', '.join(sorted(_RULES))}")
    return _RULES[rule](**options)
