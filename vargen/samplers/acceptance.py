"""Acceptance rules for speculative verification, vectorised over rows and positions.

A rule sees, for every row ``b`` and draft slot ``j``, the target's final probabilities ``p [B, J, V]``
for that slot, the distribution ``q [B, J, V]`` the draft was truthfully drawn from, the drafts
``d [B, J]`` and uniforms ``u [B, J]``. It returns which drafts pass and the distribution to resample
from at a rejected slot. The committer keeps the accepted prefix (first rejection by cumulative
product) and draws one token from the residual of the first rejected slot -- no host sync, no loop.

``exact`` is standard speculative sampling (Leviathan et al. 2023, Chen et al. 2023): accept with
probability ``min(1, p(d) / q(d))``; on rejection draw from ``norm(max(0, p - q))``. The committed
token is then distributed exactly as ``p``.

Lossy rules (``lantern``, ``gsd``) accept a draft ``x`` with ``f(x) = min(1, P(x) / Q(x))`` where ``P(x)``
sums ``p`` over a set ``S(x)`` of tokens judged interchangeable with ``x`` (LANTERN's latent
neighbourhood, GSD's dynamic group) and ``Q(x)`` is ``q(x)`` or ``q`` summed over the same set; ``cool``
(COOL-SD) scales the ratio instead, ``P(x) = omega_i p(x)`` with a weight that anneals over the window's slots
``i``. At a rejected slot they resample from a residual ``R``: ``"tv_optimal"`` is Cool-SD's (AAAI 2026)

    G* = norm(max(0, p - q f)),

which removes exactly the mass each token's own set let through, and ``"token"`` is the official GSD /
SJD ``norm(max(0, p - q))``. The committed token's law at a decided slot is then
``law = q f + (1 - sum q f) R``, and each rule reports its exact distance to ``p``,

    tv = 1/2 sum_y |law(y) - p(y)|      (= sum_y max(0, q(y) f(y) - p(y)) for G*),

for every slot. Summed over the slots a row decides, that is a bound on the total-variation distance
between the sampler's image distribution and the exact one (a union bound over a token-by-token
coupling of the two chains), reported per row in ``Stats.tv_bound``.

Only tokens the target can emit join LANTERN's sets, so a zero relaxation (``delta=0``, ``lam=1``,
``group_size=1``, cool's ``delta=1`` with ``schedule="uniform"``) is token for token the exact rule.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..distributions import exact_accept, residual
from ..kernels import lantern_set_masses
from .spec import checked, option


@dataclass
class Verdict:
    """accept: [B, J] bool. For lossy rules also tv: [B, J], the total-variation distance between the
    law of the token a slot commits and ``p`` (0 for exact rules); relaxed: [B, J] bool, drafts accepted
    only because of a relaxation; residual: [B, J, V], what to draw from at each slot if it rejects."""

    accept: torch.Tensor
    tv: torch.Tensor | None = None
    relaxed: torch.Tensor | None = None
    residual: torch.Tensor | None = None


class ExactAcceptance:
    """Lossless token-level speculative sampling."""

    name = "exact"
    lossless = True
    OPTIONS = None
    TREES = True  # verifies token trees too (:mod:`.tree`, the recursive rule over siblings)

    def prepare(self, model) -> None:  # rules with per-model tables (neighbourhoods) build them here
        return None

    def verify(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, u: torch.Tensor,
               first_slot: int = 0) -> Verdict:
        """``first_slot``: the window slot (0-based) of ``p[:, 0]``; a chain starts at 0, a token tree's sibling stage
        at depth ``d`` passes ``d - 1``. Only rules whose test depends on the slot (``cool``) read it."""
        return Verdict(accept=exact_accept(p, q, drafts, u))

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


def codebook_key(book: torch.Tensor) -> str:
    """A content hash of a codebook: two codebooks share a neighbour table only if they are equal."""
    data = book.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha1(data.numpy().tobytes() + str(tuple(data.shape)).encode()).hexdigest()


class _RelaxedRule:
    """Shared verify / residual / TV accounting of set-based lossy rules; subclasses define ``_set_masses``."""

    lossless = False
    TREES = True  # token trees: the recursive rule with this rule's test and residual at every sibling stage

    def __init__(self, residual: str):
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
        self.residual_kind = residual

    def _context(self, p: torch.Tensor, first_slot: int = 0):
        return None

    def _set_masses(self, p, q, tokens, ctx):
        """For ``tokens [..., M]`` (leading dims of ``p [..., V]``): (P, Q, p(x), q(x)) as float64 [..., M],
        ``P = p(x) + p`` summed over the set's other members, ``Q`` likewise for ``q`` or just ``q(x)``."""
        raise NotImplementedError

    def _set_width(self, V: int) -> int:
        return 1

    def _qf(self, p, q, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(y) f(y)`` (float64) for every token ``y`` (``f`` the acceptance probability of ``y`` as a draft)
        over the last dim of ``p, q [..., V]``, in chunks of the vocabulary; and per distribution whether
        any token got credit from its set (if none did, ``f = min(1, p/q)`` everywhere: the exact rule)."""
        V = p.shape[-1]
        lead = p.shape[:-1]
        qf = torch.empty(p.shape, dtype=torch.float64, device=p.device)
        credited = torch.zeros(lead, dtype=torch.bool, device=p.device)
        step = max(1, _CHUNK_ELEMENTS // max(1, lead.numel() * self._set_width(V)))
        for s in range(0, V, step):  # chunks of the vocabulary, not positions or rows
            tok = torch.arange(s, min(V, s + step), device=p.device).expand(*lead, -1)
            P, Q, pd, qd = self._set_masses(p, q, tok, ctx)
            single = (P == pd) & (Q == qd)  # nothing credited: f = min(1, p/q) exactly, so q f = min(q, p)
            qf[..., s : s + step] = torch.where(P >= Q, qd, torch.where(single, pd, qd * P / Q.clamp_min(1e-300)))
            credited |= ~single.all(-1)
        return qf, credited

    def _residual_from(self, p, q, qf) -> torch.Tensor:
        if self.residual_kind == "token":
            return residual(p, q)
        r = (p - qf.to(p.dtype)).clamp_min(0)
        mass = r.sum(-1, keepdim=True)
        return torch.where(mass > 0, r / mass.clamp_min(1e-30), p)

    def verify(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, u: torch.Tensor,
               first_slot: int = 0) -> Verdict:
        ctx = self._context(p, first_slot)
        P, Q, pd, qd = (t.squeeze(-1) for t in self._set_masses(p, q, drafts[..., None], ctx))
        accept = u * Q < P
        qf, credited = self._qf(p, q, ctx)
        res = self._residual_from(p, q, qf)
        # the committed token's law and its distance to p (exactly p, hence 0, where nothing was credited)
        law = qf + (1 - qf.sum(-1, keepdim=True)).clamp_min(0) * res.double()
        tv = torch.where(credited, 0.5 * (law - p.double()).abs().sum(-1), 0.0)
        return Verdict(accept=accept, tv=tv, relaxed=accept & ~(u * qd < pd), residual=res)

    def residual(self, p: torch.Tensor, q: torch.Tensor, first_slot: int = 0) -> torch.Tensor:
        """The residual for ``p, q [..., V]`` (the committer uses the one ``verify`` returned)."""
        if self.residual_kind == "token":
            return residual(p, q)
        return self._residual_from(p, q, self._qf(p, q, self._context(p, first_slot))[0])


@dataclass
class LanternOptions:
    k: int = option(1000, "neighbourhood size: the k nearest codebook entries of a draft", minimum=1, bound="vocab_size")
    delta: float | None = option(None, "additive bound on the neighbours' target mass (LANTERN); none: 0.1 "
                                 "unless lam is given", minimum=0.0, maximum=1.0)
    lam: float | None = option(None, "multiplicative bound p(x) + S <= lam p(x) (LANTERN++)", minimum=1.0)
    variant: str = option("official", "official: decide as the official code (raw distances, ratio P(x)/q(x)); "
                          "vargen: quantiser geometry and q summed over the set", choices=("official", "vargen"))
    aggregate_q: bool | None = option(None, "sum q over the set too (none: the variant's choice)")
    normalize: bool | None = option(None, "rank neighbours on l2-normalised codebook rows (none: the variant's)")
    codebook: Any = option(None, "the tokenizer's codebook [V, d] (none: the model's; a pipeline fills in its "
                           "tokenizer's)", text=False)
    residual: str = option("tv_optimal", "what a rejected slot resamples from: Cool-SD's tv_optimal or the token "
                           "residual", choices=("tv_optimal", "token"))


class LanternAcceptance(_RelaxedRule):
    """LANTERN relaxed acceptance over latent neighbourhoods (Jang et al., ICLR 2025, arXiv 2410.03355;
    LANTERN++ arXiv 2502.06352).

    The set of draft ``x`` is ``{x} + n_1..n_j``: its ``k`` nearest codebook neighbours, nearest first,
    cut at the largest prefix ``j`` whose target mass ``S_j = sum_{i<=j} p(n_i)`` stays within the bound
    (LANTERN §3: ``S_j`` is the TV distance between ``p`` and ``p`` with the set collapsed onto ``x``):

    delta: additive bound ``S_j <= delta`` (LANTERN).
    lam: multiplicative bound ``p(x) + S_j <= lam * p(x)`` (LANTERN++). Both given: the tighter one.
        Neither given: ``delta=0.1`` (the official default).
    k: neighbourhood size (official 1000 for LANTERN, 5-10 for LANTERN++); the table is ``[V, k]``.
    variant: ``"official"`` (default) decides as the official code does: neighbours ranked by raw
        Euclidean distance between codebook rows, acceptance ratio ``P(x) / q(x)`` (only the target
        side relaxed). ``"vargen"``: neighbours in the quantiser's geometry (l2-normalised rows, as
        LlamaGen's quantiser looks codes up) and ``q`` summed over the same set (``P(x) / Q(x)``, as GSD
        does), which removes the numerator-only ratio's bias towards drafts the drafter rates low.
    aggregate_q / normalize: override the variant's choice of either.
    codebook: the tokenizer's codebook ``[V, d]`` (or a callable returning it), e.g.
        ``vq.codebook()``; default ``model.codebook()``.
    residual: "tv_optimal" (Cool-SD's G*, default) or "token" (see the module docstring). The
        official code instead zeroes ``q`` at the ``k + 1`` nearest neighbours of a rejected draft
        whatever the set was, an off-by-one vargen does not copy.

    The neighbour table is device resident, ``[V, k]`` int32, built once per codebook content and
    shared by every rule instance with the same codebook, ``k`` and geometry.
    """

    name = "lantern"
    OPTIONS = LanternOptions
    VARIANTS = {"official": (False, False), "vargen": (True, True)}  # (aggregate_q, normalize)

    def __init__(self, k: int = 1000, delta: float | None = None, lam: float | None = None, variant: str = "official",
                 aggregate_q: bool | None = None, normalize: bool | None = None, codebook=None,
                 residual: str = "tv_optimal"):
        o = checked(LanternOptions(k, delta, lam, variant, aggregate_q, normalize, codebook, residual), "lantern")
        super().__init__(o.residual)
        k, delta, lam = o.k, o.delta, o.lam
        if delta is None and lam is None:
            delta = 0.1
        self.options = o
        agg, norm = self.VARIANTS[variant]
        self.variant = variant
        self.k, self.delta, self.lam = k, delta, lam
        self.aggregate_q = agg if aggregate_q is None else bool(aggregate_q)
        self.normalize = norm if normalize is None else bool(normalize)
        self.codebook = codebook
        self.table: torch.Tensor | None = None
        self._key = None

    def prepare(self, model, codebook=None) -> None:
        """Build (or fetch from the shared cache) the ``[V, k]`` neighbour table of the codebook."""
        source = codebook if codebook is not None else self.codebook
        book = _codebook_tensor(source if source is not None else model.codebook)
        if book.shape[0] != model.vocab_size:
            raise ValueError(f"codebook has {book.shape[0]} rows but the model's vocabulary is {model.vocab_size}")
        device = torch.device(getattr(model, "device", book.device))
        key = (codebook_key(book), str(device), self.k, self.normalize)
        if key != self._key:
            self.table = cached_neighbour_table(book, self.k, self.normalize, device, key)
            self._key = key

    def _set_width(self, V: int) -> int:
        return self.table.shape[1]

    def _set_masses(self, p, q, tokens, ctx):
        if self.table is None:
            raise RuntimeError("LanternAcceptance.prepare(model) must run before verify")
        return lantern_set_masses(p, q, tokens, self.table, self.delta, self.lam, self.aggregate_q)


_TABLES: dict = {}  # (codebook hash, device, k, normalize) -> table; a few entries at most


def cached_neighbour_table(book: torch.Tensor, k: int, normalize: bool, device, key) -> torch.Tensor:
    """``neighbour_table`` memoised on the codebook's content (rule instances and samplers come and go)."""
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) >= 8:
            _TABLES.pop(next(iter(_TABLES)))
        table = _TABLES[key] = neighbour_table(book.to(device), k, normalize)
    return table


@dataclass
class GSDOptions:
    group_size: int = option(14, "ranks in a draft's group, the draft included (1 is the exact rule)", minimum=1,
                             bound="vocab_size")
    prob_gap: float = option(0.15, "members keep |p(g) - p(x)| < prob_gap", minimum=0.0)
    max_dist: float | None = option(None, "members keep a squared codebook distance < max_dist (none: no filter)",
                                    minimum=0.0)
    variant: str = option("official", "official: decide as the official code (ascending ranks, empty slices fall "
                          "back to p/q, zero-probability members count in Q); vargen: descending ranks, "
                          "truncated windows, support only", choices=("official", "vargen"))
    codebook: Any = option(None, "the codebook for max_dist (none: the model's)", text=False)
    normalize: bool = option(True, "l2-normalise codebook rows for max_dist")
    residual: str = option("token", "what a rejected slot resamples from: the official token residual or "
                           "Cool-SD's tv_optimal", choices=("tv_optimal", "token"))


class GroupedAcceptance(_RelaxedRule):
    """GSD grouped acceptance (So et al., ICCV 2025, arXiv 2508.07747).

    The group of draft ``x`` is built from the target's current distribution: the tokens whose rank is
    next to ``x``'s when ``p`` is sorted, kept only if ``|p(g) - p(x)| < prob_gap`` and, when
    ``max_dist`` is set, the squared distance of the (l2-normalised) codebook rows is ``< max_dist``.
    The ratio is ``sum_G p / sum_G q``; ``x`` always belongs to its group.

    variant: ``"official"`` (default) decides as the official code does: ``p`` sorted *ascending*,
        the group is ranks ``[r - G/2, r + G - G/2)`` around ``x``'s rank ``r`` (so ``G/2`` less likely
        tokens and ``G - G/2 - 1`` more likely ones), tokens outside the target's support (``p = 0``
        under top-k) join when the gap allows and add their ``q`` to ``Q``, and when ``r < G/2`` the
        slice is empty and the test falls back to the plain token ratio ``p(x) / q(x)``.
        ``"vargen"``: ``p`` sorted descending with ranks ``[r - G/2, r + G - G/2)`` (``G/2`` *more*
        likely tokens), windows truncated at the ends instead of emptied, and only tokens the target
        can emit join.
    group_size: G (official 14; G = 1 is the exact rule). prob_gap: official 0.15.
    max_dist: off unless given (the official 0.5 was on the LM's input embeddings, not a codebook).
    residual: "token" (official, default) or "tv_optimal" (see the module docstring).

    One stable sort per verify call ranks every slot at once (the official code re-sorts the
    vocabulary per draft in a Python loop).
    """

    name = "gsd"
    OPTIONS = GSDOptions

    def __init__(self, group_size: int = 14, prob_gap: float = 0.15, max_dist: float | None = None,
                 variant: str = "official", codebook=None, normalize: bool = True, residual: str = "token"):
        self.options = checked(GSDOptions(group_size, prob_gap, max_dist, variant, codebook, normalize, residual), "gsd")
        super().__init__(residual)
        self.group_size, self.prob_gap, self.max_dist, self.variant = group_size, prob_gap, max_dist, variant
        self.codebook, self.normalize = codebook, normalize
        self.book: torch.Tensor | None = None
        below = group_size // 2
        self.offsets = torch.arange(-below, group_size - below)

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

    def _context(self, p, first_slot=0):
        order = torch.sort(p, dim=-1, descending=self.variant == "vargen", stable=True).indices
        ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(p.shape[-1], device=p.device).expand_as(order))
        return order, ranks

    def _set_masses(self, p, q, tokens, ctx):
        order, ranks = ctx
        V = p.shape[-1]
        lead = tokens.shape
        off = self.offsets.to(p.device)
        rank = ranks.gather(-1, tokens)
        r = rank[..., None] + off  # [..., M, G]
        valid = (r >= 0) & (r < V)
        cand = order.gather(-1, r.clamp(0, V - 1).flatten(-2))  # [..., M*G]
        pc = p.gather(-1, cand).view(*lead, -1).double()
        pd = p.gather(-1, tokens).double()
        qd = q.gather(-1, tokens).double()
        keep = valid & ((pc - pd[..., None]).abs() < self.prob_gap) & (off != 0)
        if self.variant == "vargen":
            keep &= pc > 0
        else:  # the official slice [r - G/2 : ...] is empty when it would start below rank 0
            keep &= (rank >= self.group_size // 2)[..., None]
        if self.max_dist is not None:
            if self.book is None:
                raise RuntimeError("GroupedAcceptance.prepare(model) must run before verify when max_dist is set")
            cand_v = self.book[cand.view(*lead, -1)]
            d2 = (cand_v - self.book[tokens][..., None, :]).pow(2).sum(-1)
            keep &= d2 < self.max_dist
        qc = q.gather(-1, cand).view(*lead, -1).double()
        return pd + (pc * keep).sum(-1), qd + (qc * keep).sum(-1), pd, qd


SCHEDULES = ("exponential", "linear", "uniform")


@dataclass
class CoolOptions:
    delta: float = option(1.1, "omega at the first draft slot (1 with schedule=uniform: the exact rule)", minimum=1.0)
    decay: float = option(0.7, "nu: how fast omega falls with the slot (exponential: in the exponent; linear: per "
                          "slot)", minimum=0.0)
    offset: float = option(0.0, "mu: subtracted from the exponent (exponential) or from omega (linear)")
    schedule: str = option("exponential", "exponential: delta exp(-decay (i-1) - offset); linear: delta - decay (i-1) "
                           "- offset; uniform: delta at every slot i", choices=SCHEDULES)
    floor: float | None = option(1.0, "omega never falls below this (none: the formula as written, clamped at 0; a "
                                 "slot with omega <= 1 is exact but accepts less)", minimum=0.0)
    residual: str = option("tv_optimal", "what a rejected slot resamples from: Cool-SD's tv_optimal (the token residual "
                           "is refused: biased at a slot with omega < 1)", choices=("tv_optimal",))


class CoolAcceptance(_RelaxedRule):
    """COOL-SD's annealed relaxation (Li, Zhang, Du, Ji, "Annealed Relaxation of Speculative Decoding for Faster
    Autoregressive Image Generation", AAAI 2026, arXiv 2601.09212).

    The draft at window slot ``i`` (1-based; in a token tree the node's depth) is accepted with probability
    ``f_i(x) = min(1, omega_i p(x) / q(x))``, and a rejected slot resamples from the optimal residual of the paper's
    Theorem 2, ``G* = norm(max(0, p - q f_i))``; for ``omega_i >= 1`` that is the ordinary ``norm(max(0, p - q))``
    (Proposition 1). The committed token's law is then at TV ``sum_y max(0, min(q(y), omega_i p(y)) - p(y))`` from
    ``p``: positive only where ``omega_i > 1``. A slot with ``omega_i <= 1`` has ``q f <= p`` everywhere, so with G*
    it is exact and only accepts less (with the token residual it would be biased, hence no ``residual="token"``).

    The weights anneal from ``delta`` at slot 1 (the paper's annealed design: at a fixed expected accepted length,
    relaxing the early slots more and the late ones less gives a smaller TV bound):

    exponential: ``omega_i = delta exp(-decay (i - 1) - offset)``, the paper's ``delta exp(-nu i - mu)`` with
        ``nu = decay`` and ``mu = offset - decay``, so that ``delta`` is the first slot's weight;
    linear: ``omega_i = delta - decay (i - 1) - offset``;
    uniform: ``omega_i = delta`` at every slot (``delta=1``: the exact rule, token for token).
    floor: the weights are clamped ``>= floor`` (default 1: no slot accepts less than the exact rule; with the
        defaults only the first slot is relaxed); ``None`` keeps the formula, clamped at 0.
    """

    name = "cool"
    OPTIONS = CoolOptions

    def __init__(self, delta: float = 1.1, decay: float = 0.7, offset: float = 0.0, schedule: str = "exponential",
                 floor: float | None = 1.0, residual: str = "tv_optimal"):
        o = checked(CoolOptions(delta, decay, offset, schedule, floor, residual), "cool")
        if o.floor is not None and o.floor > o.delta:
            raise ValueError(f"cool: floor={o.floor:g} exceeds delta={o.delta:g} (the weights anneal from delta down "
                             "to floor)")
        super().__init__(o.residual)
        self.options = o
        self.delta, self.decay, self.offset, self.schedule, self.floor = o.delta, o.decay, o.offset, o.schedule, o.floor

    def prepare(self, model) -> None:  # no per-model tables
        return None

    def omega(self, slot: torch.Tensor) -> torch.Tensor:
        """The weight of each 0-based window slot (``slot = i - 1``, float64)."""
        if self.schedule == "exponential":
            w = self.delta * torch.exp(-self.decay * slot - self.offset)
        elif self.schedule == "linear":
            w = self.delta - self.decay * slot - self.offset
        else:
            w = torch.full_like(slot, self.delta)
        # finite: an infinite weight (a huge delta or negative offset) would give inf * 0 = nan where p is 0
        return w.clamp(0.0 if self.floor is None else self.floor, torch.finfo(torch.float64).max)

    def _context(self, p, first_slot=0):
        """The weights: ``[J, 1]`` for the slots of ``p [B, J, V]``, or one for a ``[B, V]`` (slot ``first_slot``)."""
        J = p.shape[-2] if p.dim() >= 3 else 1
        w = self.omega(torch.arange(first_slot, first_slot + J, device=p.device, dtype=torch.float64))
        return w[:, None] if p.dim() >= 3 else w[0]

    def _set_masses(self, p, q, tokens, w):
        pd = p.gather(-1, tokens).double()
        qd = q.gather(-1, tokens).double()
        return w * pd, qd, pd, qd

    def verify(self, p, q, drafts, u, first_slot: int = 0) -> Verdict:
        v = super().verify(p, q, drafts, u, first_slot)
        # omega <= 1: the law is p itself (q f <= p); report 0 rather than the rounding of 1/2 sum |law - p|
        v.tv = torch.where(self._context(p, first_slot)[:, 0] > 1, v.tv, 0.0)
        return v


class LongestPathAcceptance(ExactAcceptance):
    """SJD-PAC's official choice among a token tree's candidates (arXiv 2603.18599, code KangJialiang/SJD-PAC): every
    node is tested with the recursive rule as if its earlier siblings were rejected, and the longest accepted
    root-to-node path is committed. The paper calls it lossless; vargen's enumeration test rejects it (README,
    "Token trees"), so it is a lossy option kept to reproduce the published method. It reports no TV bound (there is
    no per-step closed form); on a chain it is the exact rule."""

    name = "longest"
    lossless = False
    selection = "longest"
    reports_tv = False


_RULES = {"exact": ExactAcceptance, "lantern": LanternAcceptance, "gsd": GroupedAcceptance,
          "cool": CoolAcceptance, "longest": LongestPathAcceptance}


def register_rule(name: str, cls) -> None:
    _RULES[name] = cls


def available_rules() -> list[str]:
    """Registered acceptance rules, ``exact`` first."""
    return sorted(_RULES, key=lambda n: (n != "exact", n))


def rule_class(name: str):
    if name not in _RULES:
        raise ValueError(f"unknown acceptance rule {name!r}; available: {', '.join(available_rules())}")
    return _RULES[name]


def get_rule(rule, **options):
    """An acceptance rule from a name (``"exact"``, ...) or an instance (returned as is)."""
    if not isinstance(rule, str):
        if options:
            raise ValueError(f"rule options {sorted(options)} given with a rule instance ({type(rule).__name__})")
        return rule
    cls = rule_class(rule)
    from .spec import options_of, unknown_option_message

    declared = options_of(cls.OPTIONS, rule) if cls.OPTIONS else {}
    for key in options:
        if key not in declared:
            raise ValueError(unknown_option_message(f"acceptance={rule}", key, declared))
    return cls(**options)
