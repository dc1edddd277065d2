"""What a sampling call reports: :class:`Stats`, one typed object for every sampler family.

Every figure a sampler reports is a field with a meaning per family. Figures every sampler has (forward passes,
tokens, the per-step acceptance, time and memory) are plain fields; the K/V cache figures, which several families
report, too; figures that belong to one family sit in a small group (``stats.draft`` for the token loop,
``stats.auto`` for a ``"auto"`` draft length, ``stats.zipar``, ``stats.pruning`` for FastVAR, ``stats.code``,
``stats.mar`` for the masked families, ``stats.cspd``), ``None`` when the sampler that ran is of another family.
A field that is ``None`` was not measured by that sampler (a MAR run has no K/V cache).

:meth:`Stats.summary` flattens all of it into one JSON-ready dict (the CLI, ``vargen bench``, the evaluation
scripts and the app write it): each group's field names are its keys, unchanged across versions, so saved JSON
files stay readable. :meth:`Stats.concat` joins the stats of rows sampled in separate calls, field by field
(counts add up, settings are the first call's, per-row figures concatenate, rates follow from the joined counts).

A sampler written outside vargen may subclass :class:`Stats` to add figures of its own; a field it adds is merged
by :meth:`Stats.concat` by its ``merge`` metadata (``"first"`` unless set, see :func:`figure`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import torch

__all__ = ["Stats", "DraftStats", "AutoStats", "ZipARStats", "RowsStats", "PruningStats", "CoDeStats", "MaskedStats",
           "CSpDStats", "figure"]

_MERGES = ("first", "sum", "max", "rows_mean", "cat", "group")


def figure(merge: str = "first", summary: bool = True, default: Any = None) -> Any:
    """A reported figure: a dataclass field with how :meth:`Stats.concat` joins it across calls (``merge``:
    ``"first"`` -- a setting, the same in every call; ``"sum"`` -- a count; ``"max"``; ``"rows_mean"`` -- a
    per-row mean, weighted by each call's rows; ``"cat"`` -- per-row values (tensors or lists); ``"group"`` -- a
    group of figures, joined field by field) and whether :meth:`Stats.summary` lists it."""
    assert merge in _MERGES, merge
    return field(default=default, metadata={"merge": merge, "summary": summary})


@dataclass
class DraftStats:
    """The token loop (``ar``, ``sjd``, ``sd``, ``lantern``, ``gsd``, ``sjd-pac``, ``lantern++`` and any
    :class:`~vargen.samplers.loop.TokenSampler`): the proposer, the acceptance rule and the draft counts.

    proposer: the proposer's name ("none" for plain AR, "jacobi", "draft_model", "draft_head", ...).
    acceptance: the acceptance rule's name ("exact", "lantern", "gsd", ...).
    drafter: ``sd`` / ``lantern``: what drafts (the draft model's or head's name).
    gamma: ``sd`` / ``lantern``: drafts per step.
    window: ``sjd`` / ``gsd``: tokens per Jacobi window (drafts per step + 1).
    init: ``sjd`` / ``gsd``: how a fresh window position is initialised.
    coupled: ``sjd`` / ``gsd``: the coupled (MC-SJD) update of the drafts.
    tree_width / tree_depth / tree_tail / tree_nodes: with a token tree: children per node, depth, the chain
        continued below the tree (Jacobi), and the nodes verified per step.
    tree: "adaptive" with ``tree="adaptive"`` (None: the static tree or chain). adaptive_depth / adaptive_width /
        adaptive_nodes: then the mean depth, width and valid draft nodes per row and step (the forward still feeds
        the static tree's nodes).
    drafts_proposed / drafts_accepted: draft tokens verified (valid draft slots) and accepted, all rows
        together (the counts behind :attr:`Stats.draft_acceptance_rate`; not in the summary).
    slots_decided: slots a lossy rule decided, all rows together (the count behind
        :attr:`Stats.tv_per_decided_slot`; not in the summary; None for exact rules).
    """

    proposer: str | None = figure()
    acceptance: str | None = figure()
    drafter: str | None = figure()
    gamma: int | None = figure()
    window: int | None = figure()
    init: str | None = figure()
    coupled: bool | None = figure()
    tree_width: int | None = figure()
    tree_depth: int | None = figure()
    tree_tail: int | None = figure()
    tree_nodes: int | None = figure()
    tree: str | None = figure()
    adaptive_depth: float | None = figure("rows_mean")
    adaptive_width: float | None = figure("rows_mean")
    adaptive_nodes: float | None = figure("rows_mean")
    drafts_proposed: int = figure("sum", summary=False, default=0)
    drafts_accepted: int = figure("sum", summary=False, default=0)
    slots_decided: int | None = figure("sum", summary=False)


@dataclass
class AutoStats:
    """``window="auto"`` / ``gamma="auto"`` (:mod:`vargen.samplers.autotune`): the draft length chosen and its
    evidence, per candidate number of drafts ``c`` (0 is plain AR). The figures of the first call when calls are
    joined.

    auto_drafts: the drafts per step the call ran with (0: it ran as plain AR).
    auto_acceptance: ``{c: a}``, the per-draft acceptance probability the pilots gave.
    auto_step_seconds: ``{c: seconds}``, the modelled seconds of one step.
    auto_forward_seconds: ``{c + 1: seconds}``, the measured target forward of ``c + 1`` tokens.
    auto_speedup_vs_ar: ``{c: x}``, the modelled tokens per second over plain AR's.
    """

    auto_drafts: int | None = figure()
    auto_acceptance: dict[int, float] | None = figure()
    auto_step_seconds: dict[int, float] | None = figure()
    auto_forward_seconds: dict[int, float] | None = figure()
    auto_speedup_vs_ar: dict[int, float] | None = figure()


@dataclass
class ZipARStats:
    """``zipar`` (He et al. 2024, "ZipAR: Accelerating Auto-regressive Image Generation through Spatial
    Locality").

    window: how many tokens of the row above a row waits for before it starts.
    rows_in_parallel: the most rows decoded in one forward.
    """

    window: int | None = figure()
    rows_in_parallel: int | None = figure()


@dataclass
class RowsStats:
    """Parallel rows beyond ZipAR (:mod:`vargen.samplers.rows`): ``diagd`` (Diagonal Decoding, arXiv 2503.14070)
    and ``pjd`` (Parallel Jacobi Decoding, arXiv 2606.05703).

    schedule: the sampler's name. lag: tokens the row above holds before a row starts. window: tokens fed per active
    row and forward (``pjd``). rows_in_parallel: the most rows decoded in one forward. proxy: what a row that starts
    early feeds before its first token. lower_rows: what ``pjd`` commits in a row whose rows above are unfinished.
    """

    schedule: str | None = figure()
    lag: int | None = figure()
    window: int | None = figure()
    rows_in_parallel: int | None = figure("max")
    proxy: str | None = figure()
    lower_rows: str | None = figure()


@dataclass
class PruningStats:
    """``var`` with FastVAR token pruning (``prune_scales > 0``; Guo et al. 2025, "FastVAR: Linear Visual
    Autoregressive Modeling via Cached Token Pruning"): token-sublayer evaluations (attention or FFN of one token
    in one block, per batch row) skipped and kept at the pruned scales.

    pruned_evaluations_skipped: evaluations skipped.
    pruned_evaluations_kept: evaluations computed.
    """

    pruned_evaluations_skipped: int | None = figure("sum")
    pruned_evaluations_kept: int | None = figure("sum")


@dataclass
class CoDeStats:
    """``code`` (Chen et al. 2024, "Collaborative Decoding Makes Visual Auto-Regressive Modeling Efficient"):
    the large model drafts the first scales, the small one refines the rest. ``Stats.forward_passes`` counts the
    drafter's passes; the refiner's are here.

    draft_steps: scales the drafter generates.
    reuse: whether the refiner reuses the drafter's last scale instead of prefilling it again.
    drafter_forward_passes / refiner_forward_passes: each model's forward calls (the refiner's prefill is one).
    refiner_prefill_tokens: tokens the refiner's prefill runs over.
    drafter_seconds / refiner_seconds: wall time of each model's part.
    drafter_kv_cache_bytes / refiner_kv_cache_bytes: each model's K/V cache, allocated (CFG rows included).
    """

    draft_steps: int | None = figure()
    reuse: bool | None = figure()
    drafter_forward_passes: int | None = figure("sum")
    refiner_forward_passes: int | None = figure("sum")
    refiner_prefill_tokens: int | None = figure()
    drafter_seconds: float | None = figure("sum")
    refiner_seconds: float | None = figure("sum")
    drafter_kv_cache_bytes: int | None = figure("max")
    refiner_kv_cache_bytes: int | None = figure("max")


@dataclass
class MaskedStats:
    """The masked continuous-token families (``mar``, DiSA's schedule on ``mar``, ``cspd``).

    num_iter: masked-generation iterations.
    diffusion_steps: denoising steps of the diffusion head, one number when every iteration uses the same,
        else one per iteration (DiSA's schedule; Zhao et al. 2025, "DiSA: Diffusion Step Annealing in
        Autoregressive Image Generation").
    diffusion_steps_total: ``mar``: the denoising steps summed over the iterations (None for ``cspd``); with GtR's
        FTS a reconstruction iteration runs two chains and counts both.
    order: ``mar``: ``"gtr"`` under GtR's order (Yan et al. 2025, "Generation then Reconstruction", arXiv
        2510.17171; None: MAR's random order).
    stage_steps: ``mar`` with GtR: the iterations of each stage, the skeleton first and the reconstruction last.
    fts_steps: ``mar`` with GtR's FTS: the denoising steps of the tokens it picks (``diffusion_steps`` is the others').
    """

    num_iter: int | None = figure()
    diffusion_steps: int | list[int] | None = figure()
    diffusion_steps_total: int | None = figure()
    order: str | None = figure()
    stage_steps: list[int] | None = figure()
    fts_steps: int | None = figure()


@dataclass
class CSpDStats:
    """``cspd`` (Wang et al. 2025, "Continuous Speculative Decoding for Autoregressive Image Generation").

    test: the acceptance test ("exact", "official", ...).
    ratio / num_draft: the options (the share of iterations before drafting starts, draft iterations per
        verification).
    target_passes / draft_passes: the target's and the draft's forward calls (= ``forward_passes`` and
        ``draft_forward_passes``).
    prefill_passes: target passes before the first draft.
    verify_passes: target passes that verified drafts.
    drafted / accepted_drafts: draft tokens verified and accepted (all rows; :attr:`Stats.draft_acceptance_rate`
        is their ratio).
    residual_proposals: proposals drawn from the residual after a rejection.
    residual_fallbacks: rejected tokens never resolved within ``max_tries``, which commit a target sample (the
        only way an exact test loses exactness).
    acceptance_rate_per_row: per row, accepted / drafted (None for a row with nothing drafted, e.g. ``ratio=1``).
    log_phi_mean / log_phi_abs_max: ``test="official"``: the mean and the largest ``|log Phi|`` of the official
        test's ratio of per-step variances (None for the other tests).
    """

    test: str | None = figure()
    ratio: float | None = figure()
    num_draft: int | None = figure()
    target_passes: int | None = figure("sum")
    draft_passes: int | None = figure("sum")
    prefill_passes: int | None = figure("sum")
    verify_passes: int | None = figure("sum")
    drafted: int | None = figure("sum")
    accepted_drafts: int | None = figure("sum")
    residual_proposals: int | None = figure("sum")
    residual_fallbacks: int | None = figure("sum")
    acceptance_rate_per_row: list[float | None] | None = figure("cat")
    log_phi_mean: float | None = figure("rows_mean")
    log_phi_abs_max: float | None = figure("max")


@dataclass
class Stats:
    """What every sampler reports; the CLI, app, benchmarks and FID scripts read this one object.

    Every sampler:

    forward_passes: target-model forward calls (prefill included).
    draft_forward_passes: forward calls of a drafter (draft model or head), counted separately.
    tokens: tokens generated per row ([B] tensor) -- or per image for non-token models.
    accepted: per step, a [B] tensor of tokens committed by that step (0 for finished rows).
    token_step: [B, L], the index of the forward pass that committed each token (acceptance map).
    seconds / peak_memory_bytes: wall time and peak accelerator memory of the sampling call (``peak_memory_bytes``
        is None where it is not measured, e.g. on the CPU: unknown, never 0).
    reports_acceptance: False for the samplers that run a fixed schedule of steps (``var``, ``code``, ``mar``,
        ``zipar``): nothing is accepted or rejected there, so :attr:`mean_accepted` is None (they report their own
        step counts: ``forward_passes`` per call, ``stats.mar.num_iter``, ``stats.zipar.rows_in_parallel``);
        :attr:`tokens_per_forward` is their tokens per image over their steps.
    row_forward_passes: forward passes summed over rows (each row counts the passes of the call that sampled it;
        not in the summary): set by :meth:`concat`, so that :attr:`tokens_per_forward` stays a per-image figure
        when rows were sampled in separate calls (None: ``forward_passes`` times the rows).

    The token loop with a lossy rule (LANTERN / GSD), when the rule reports it (None for exact rules):

    relaxed: [B, L] bool, tokens accepted by the relaxed rule that the exact rule would have rejected in that draw.
    tv_bound: [B] float64, per row the sum over the slots the rule decided of the total-variation distance between
        the law of the token the slot committed and the exact ``p``: a bound on the TV distance between the
        sampler's image distribution and the exact one.

    K/V cache (None where the sampler has none, e.g. ``mar``, ``cspd``):

    kv_cache_bytes: K/V bytes allocated for the target, CFG rows included (token loop: the target's cache,
        budgeted or not; ``var``: the scale cache, budgeted or not; ``code``: the larger of the two models'
        caches, which never coexist). ``zipar`` does not report it. Calls run one after another (:meth:`concat`:
        chunks of a large batch, a streamed run) report the largest call's, the cache that was held at once.
    kv_bytes_used: ``var``: K/V bytes holding tokens at the peak (FastVAR leaves skipped tokens' slots empty; a
        HACK / ScaleKV budget measures its peak), equal to ``kv_cache_bytes`` without either; ``code``: the same,
        the larger of the two models', with a ``kv_budget`` only.
    kv_policy: ``var`` / ``code`` with a ``kv_budget``: who gets the budget ("hack", "scalekv", "uniform").

    Next-scale families (``var``, ``code``):

    seconds_per_image: ``seconds`` divided by the rows (:meth:`summary` reports it for every family).
    peak_memory_bytes_per_image: ``peak_memory_bytes`` divided by the rows.

    Family groups (None unless that family ran): ``draft`` (:class:`DraftStats`, every token-loop sampler),
    ``auto`` (:class:`AutoStats`, a draft length of ``"auto"``), ``zipar`` (:class:`ZipARStats`), ``rows``
    (:class:`RowsStats`, ``diagd`` and ``pjd``), ``pruning``
    (:class:`PruningStats`, FastVAR), ``code`` (:class:`CoDeStats`), ``mar`` (:class:`MaskedStats`, ``mar`` and
    ``cspd``), ``cspd`` (:class:`CSpDStats`).

    Derived (properties): :attr:`tokens_per_forward`, :attr:`mean_accepted`, :attr:`mean_tv_bound`,
    :attr:`draft_acceptance_rate`, :attr:`tv_per_decided_slot`.
    """

    forward_passes: int = figure("sum", default=0)
    draft_forward_passes: int = figure("sum", default=0)
    tokens: torch.Tensor | None = figure("cat")
    accepted: list[torch.Tensor] = field(default_factory=list, metadata={"merge": "cat", "summary": False})
    token_step: torch.Tensor | None = figure("cat")
    relaxed: torch.Tensor | None = figure("cat")
    tv_bound: torch.Tensor | None = figure("cat")
    seconds: float = figure("sum", default=0.0)
    peak_memory_bytes: int | None = figure("max")
    reports_acceptance: bool = figure("first", summary=False, default=True)
    row_forward_passes: int | None = figure("sum", summary=False)
    kv_cache_bytes: int | None = figure("max")
    kv_bytes_used: int | None = figure("max")
    kv_policy: str | None = figure()
    seconds_per_image: float | None = figure("rows_mean")
    peak_memory_bytes_per_image: int | None = figure("rows_mean")
    draft: DraftStats | None = figure("group")
    auto: AutoStats | None = figure("group")
    zipar: ZipARStats | None = figure("group")
    rows: RowsStats | None = figure("group")
    pruning: PruningStats | None = figure("group")
    code: CoDeStats | None = figure("group")
    mar: MaskedStats | None = figure("group")
    cspd: CSpDStats | None = figure("group")

    @property
    def tokens_per_forward(self) -> float | None:
        """Tokens per row divided by the target forward passes that row took (prefill included), over all rows:
        the same whether the rows were sampled in one call or in several (a fixed-schedule family: its tokens per
        image over its steps). None when nothing was counted."""
        if self.tokens is None or self.forward_passes == 0:
            return None
        rows = int(self.tokens.shape[0])
        passes = self.row_forward_passes if self.row_forward_passes is not None else self.forward_passes * rows
        return float(self.tokens.float().sum()) / passes if passes else None

    @property
    def mean_accepted(self) -> float | None:
        """Mean tokens committed per decoding step, over rows still generating at that step; None for the
        fixed-schedule families (``reports_acceptance=False``) and when no step was recorded."""
        if not self.reports_acceptance or not self.accepted:
            return None
        acc = torch.stack([a.float().cpu() for a in self.accepted])
        active = acc > 0
        return float(acc[active].mean()) if active.any() else None

    @property
    def mean_tv_bound(self) -> float:
        """Mean over rows of the per-row TV bound (independent of the batch size); NaN for exact rules."""
        return float(self.tv_bound.double().mean()) if self.tv_bound is not None else float("nan")

    @property
    def draft_acceptance_rate(self) -> float | None:
        """Draft tokens accepted / verified, all rows together: the token loop and ``cspd`` (None when nothing was
        drafted: plain AR, ``cspd`` with ``ratio=1``; never 0 for "no drafts"); None for the other families."""
        if self.cspd is not None:
            return (self.cspd.accepted_drafts or 0) / self.cspd.drafted if self.cspd.drafted else None
        if self.draft is not None and self.draft.drafts_proposed:
            return self.draft.drafts_accepted / self.draft.drafts_proposed
        return None

    @property
    def tv_per_decided_slot(self) -> float | None:
        """The token loop with a lossy rule that reports it: the TV bound summed over rows, per slot the rule
        decided; None for exact rules, when no slot was decided and for other families."""
        if self.tv_bound is None or self.draft is None or not self.draft.slots_decided:
            return None
        return float(self.tv_bound.sum()) / self.draft.slots_decided

    def summary(self, precise: bool = False) -> dict[str, Any]:
        """Every figure measured, flat and JSON-ready (non-scalar figures as their ``str``): the common ones, then
        the K/V, per-image and family figures that are set, under their field names. Numbers are rounded for people
        (4 decimals, 4 significant digits below 1: ``1.5706``, ``0.01235``; counts stay exact) unless ``precise``;
        the figures themselves (this object's fields and properties) keep full precision. A figure that is unknown
        or meaningless here is None (null), never NaN or 0. ``seconds_per_image`` is ``seconds`` over the images,
        however many calls sampled them."""
        rows = _rows(self) if self.tokens is not None or self.accepted else None
        per_image = self.seconds_per_image if self.seconds_per_image is not None else (
            self.seconds / rows if rows else None)
        out = {
            "forward_passes": self.forward_passes,
            "draft_forward_passes": self.draft_forward_passes,
            "tokens_per_row": float(self.tokens.float().mean()) if self.tokens is not None else None,
            "tokens_per_forward": self.tokens_per_forward,
            "mean_accepted": self.mean_accepted,
            "seconds": self.seconds,
            "seconds_per_image": per_image,
            "peak_memory_bytes": int(self.peak_memory_bytes) if self.peak_memory_bytes is not None else None,
        }
        if self.tv_bound is not None:
            out["mean_tv_bound"] = self.mean_tv_bound
        for name in ("draft_acceptance_rate", "tv_per_decided_slot"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        _flatten(self, out, skip=set(_COMMON))
        shown = _finite if precise else _human
        return {k: str(shown(v)) if isinstance(v, (list, tuple, dict)) else shown(v) for k, v in out.items()}

    @classmethod
    def concat(cls, parts: list["Stats"]) -> "Stats":
        """Stats of rows sampled in separate calls (``parts``, in row order), as one batch: counts, passes and
        seconds add up, per-row tensors concatenate (a call that finished in fewer steps commits 0 tokens at the
        later steps), per-row means are weighted by rows, peaks are the largest, settings and the ``auto``
        evidence are the first call's; the rates follow from the joined counts."""
        if not parts:
            raise ValueError("Stats.concat needs at least one part")
        rows = [_rows(p) for p in parts]
        parts = [replace(p, row_forward_passes=p.row_forward_passes if p.row_forward_passes is not None
                         else p.forward_passes * r) for p, r in zip(parts, rows)]
        return _merge(parts, rows)


# the fields summary() writes itself, before the others
_COMMON = ("forward_passes", "draft_forward_passes", "tokens", "accepted", "token_step", "relaxed", "tv_bound",
           "seconds", "seconds_per_image", "peak_memory_bytes", "reports_acceptance", "row_forward_passes")


def _finite(value):
    """``value`` with NaN / inf (nested in lists and dicts too) as None: JSON has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _human(value):
    """Floats (nested too) to 4 decimals, 4 significant digits below 1; NaN / inf as None; the rest as is."""
    if isinstance(value, float):
        if not math.isfinite(value) or value == 0:
            return _finite(value)
        return round(value, max(4, 3 - math.floor(math.log10(abs(value)))))
    if isinstance(value, (list, tuple)):
        return [_human(v) for v in value]
    if isinstance(value, dict):
        return {k: _human(v) for k, v in value.items()}
    return value


def _flatten(obj, out: dict, skip: set = frozenset()) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in skip or value is None or not f.metadata.get("summary", True):
            continue
        if f.metadata.get("merge") == "group":
            _flatten(value, out)
        else:  # lists and dicts are written as their str by summary(), after rounding
            out[f.name] = value if isinstance(value, (int, float, str, bool, list, tuple, dict)) else str(value)


def _rows(stats: Stats) -> int:
    if stats.tokens is not None:
        return int(stats.tokens.shape[0])
    if stats.accepted:
        return int(stats.accepted[0].shape[0])
    return 1


def _cat(values: list, rows: list[int]):
    if isinstance(values[0], torch.Tensor):
        return torch.cat([v.to(values[0].device) for v in values])
    if isinstance(values[0], list) and values[0] and isinstance(values[0][0], torch.Tensor):
        # per step, a [B] tensor: a call with fewer steps commits nothing at the later ones
        steps, device = max(len(v) for v in values), values[0][0].device
        pad = [v + [torch.zeros(r, dtype=torch.long, device=device)] * (steps - len(v)) for v, r in zip(values, rows)]
        return [torch.cat([p[s].to(device) for p in pad]) for s in range(steps)]
    return [x for v in values for x in v]


def _merge(parts: list, rows: list[int]):
    """Join dataclass instances of one type field by field, by each field's ``merge`` metadata."""
    joined = {}
    for f in fields(parts[0]):
        values = [getattr(p, f.name) for p in parts]
        present = [(v, r) for v, r in zip(values, rows) if v is not None]
        if not present:
            joined[f.name] = values[0]
            continue
        vs, rs = [v for v, _ in present], [r for _, r in present]
        how = f.metadata.get("merge", "first")
        if how == "sum":
            joined[f.name] = sum(vs[1:], vs[0])
        elif how == "max":
            joined[f.name] = max(vs)
        elif how == "rows_mean":
            joined[f.name] = sum(v * r for v, r in zip(vs, rs)) / sum(rs)
        elif how == "cat":
            joined[f.name] = _cat(vs, rs) if len(vs) == len(values) else None  # rows without it: not per-row
        elif how == "group":
            joined[f.name] = _merge(vs, rs) if is_dataclass(vs[0]) else vs[0]
        else:
            joined[f.name] = vs[0]
    return replace(parts[0], **joined)
