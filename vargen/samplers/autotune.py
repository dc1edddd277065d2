"""Automatic draft length (``window="auto"``, ``gamma="auto"``): a cost model of one speculative step.

A step with ``J`` drafts costs one target forward of ``J + 1`` tokens plus the proposer's work, and commits
``E(J) = (1 - a^(J+1)) / (1 - a)`` tokens on average when each draft is accepted with probability ``a`` given
the ones before it (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding", eq. 1).
So the sampler runs with the ``J`` that maximises (at batch ``B``, where a step lasts until the slowest row is
done, ``E(J)`` becomes the batch's tokens per step, :func:`batch_tokens_per_step`)

    E(J) / step_seconds(J)

where, measured once per (model, device, rows, compiled) and kept for the process:

* ``T_target(w)``: the median time of a ``w``-token cached forward at the call's batch (CFG rows included),
  in the mode the call runs in (eager, or the compiled forward);
* ``a`` and the step's other costs: from pilots of the sampler itself (eager target steps, the proposer as the
  call runs it, its own generator, the call's batch and config; one image each, kept per sampler instance) as AR
  and at the smallest and largest candidate: ``a`` solves ``E(J) = tokens per step`` (see :func:`choose_lookahead`
  for the step model).

``J = 0`` is plain AR, chosen unless some ``J`` is predicted at least ``MARGIN`` times faster: a speculative
sampler with ``"auto"`` is not planned to be slower than AR. The choice
depends on timings, so two processes may choose differently; pass an integer for reproducible tokens.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import weakref

import torch

from .base import synced_clock
from .stats import AutoStats

__all__ = ["choose_lookahead", "forward_costs", "expected_tokens", "acceptance_from_rate", "AUTO"]

AUTO = "auto"
# a draft length is chosen over AR only if the model predicts it at least this much faster: on the demo model at
# batch 16 on the CPU the predicted step times were off by up to ~15%, enough to pick a window that ran at 0.73x AR,
# and with whole-image pilots LANTERN's draft head (gamma=auto) was once predicted >= 1.15x and ran at 0.89x (its
# step is 6x an AR step, so pilot noise moves the prediction most)
MARGIN = 1.3
_FORWARD_COSTS: dict = {}  # (id(model), device, rows, compiled) -> (model ref, {tokens: seconds})


def expected_tokens(a: float, drafts: int) -> float:
    """Tokens committed per step with ``drafts`` drafts, each accepted with probability ``a``."""
    if a >= 1.0:
        return drafts + 1.0
    return (1.0 - a ** (drafts + 1)) / (1.0 - a)


def batch_tokens_per_step(a: float, drafts: int, batch: int, num_tokens: int) -> float:
    """Tokens per step of a batch that runs until its slowest row is done: per row a step commits ``k`` tokens,
    ``P(k = i) = a^(i-1) (1 - a)`` for ``i <= drafts`` and ``a^drafts`` for ``drafts + 1``; a row needs about
    ``N / mu`` steps with standard deviation ``sqrt(N var / mu^3)`` (renewal theory), and the slowest of ``B``
    rows about ``sqrt(2 ln B)`` deviations more."""
    if drafts == 0:
        return 1.0
    ks = torch.arange(1, drafts + 2, dtype=torch.float64)
    probs = torch.tensor([a ** (i - 1) * (1 - a) for i in range(1, drafts + 1)] + [a ** drafts], dtype=torch.float64)
    mu = float((ks * probs).sum())
    var = float(((ks - mu) ** 2 * probs).sum())
    z = math.sqrt(2 * math.log(batch)) if batch > 1 else 0.0
    steps = num_tokens / mu + z * math.sqrt(num_tokens * var / mu ** 3)
    return num_tokens / min(float(num_tokens), steps)


def acceptance_from_rate(tokens_per_step: float, drafts: int) -> float:
    """The ``a`` with ``expected_tokens(a, drafts) == tokens_per_step`` (bisection; clipped to [0, 1])."""
    if drafts <= 0 or tokens_per_step <= 1.0:
        return 0.0
    if tokens_per_step >= drafts + 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens(mid, drafts) < tokens_per_step else (lo, mid)
    return (lo + hi) / 2


def _cached(table, key, model, make):
    entry = table.get(key)
    if entry is None or entry[0]() is not model:
        entry = table[key] = (weakref.ref(model), make())
    return entry[1]


@torch.no_grad()
def forward_costs(model, cond, config, widths, compiled: bool = False, repeats: int = 11) -> dict[int, float]:
    """Median seconds of one cached ``w``-token forward (at the middle of the image) for each ``w`` in ``widths``
    at ``cond``'s batch; measured once per (model, device, rows, compiled) in a process."""
    from .compiled import compile_step
    from .session import TokenSession

    dev = torch.device(model.device)
    rows = model.check_cond(cond) * (2 if config.uses_cfg else 1)
    table = _cached(_FORWARD_COSTS, (id(model), str(dev), rows, compiled), model, dict)
    todo = sorted(set(widths) - set(table))
    if not todo:
        return {w: table[w] for w in widths}
    probe = TokenSession(model, cond, config, extra_positions=max(widths) + 1, static=compiled)
    probe.prefill()
    run = probe.run
    if compiled:
        run = compile_step(probe.run, dev)
    middle = model.num_tokens // 2  # a mid-image step: eager attention reads half the cache
    start = torch.full((probe.batch,), middle, dtype=torch.long, device=dev)
    inputs = {w: torch.zeros(probe.batch, w, dtype=torch.long, device=dev) for w in todo}
    kv_len = {w: None if compiled else middle + w for w in todo}
    for w in todo:
        for _ in range(2):  # warm-up (and, compiled, the compilation)
            run(inputs[w], start, kv_len[w])
    times = {w: [] for w in todo}
    for _ in range(repeats):  # round-robin over the widths: a drift in machine load touches them alike
        for w in todo:
            t0 = synced_clock(dev)
            run(inputs[w], start, kv_len[w])
            times[w].append(synced_clock(dev) - t0)
    for w in todo:
        table[w] = statistics.median(times[w])
    return {w: table[w] for w in widths}


class _TimedProposer:
    """Delegates to a proposer and adds up the seconds it spends (the pilot's ``t_draft``). ``compiled``: the
    proposer runs as in a compiled call (its own compiled work), while the pilot's target steps stay eager."""

    def __init__(self, inner, device, compiled: bool = False):
        self.inner, self.device, self.compiled = inner, device, compiled
        self.clock = [0.0]  # shared with the copy the loop makes
        for name in ("name", "lookahead", "wants_hidden", "check", "draft_stats"):
            setattr(self, name, getattr(inner, name))

    @property
    def draft_passes(self):
        return self.inner.draft_passes

    def _timed(self, fn, ctx, *args):
        ctx = dataclasses.replace(ctx, compiled=self.compiled) if ctx.compiled != self.compiled else ctx
        t0 = synced_clock(self.device)
        out = fn(ctx, *args)
        self.clock[0] += synced_clock(self.device) - t0
        return out

    def start(self, *args):
        return self._timed(self.inner.start, *args)

    def propose(self, *args):
        return self._timed(self.inner.propose, *args)

    def observe(self, *args):
        return self._timed(self.inner.observe, *args)


def _pilot(sampler, proposer, model, cond, config, steps: int, compiled: bool = False) -> tuple[float, float, float]:
    """``(a, seconds per step, proposer seconds per step)`` from eager runs of ``sampler`` with ``proposer``
    (``compiled``: the proposer's own work as in a compiled call): one run of ``steps`` steps and one of the whole
    image. The step time is their difference per forward (prefill and start cancel) -- an average over the image, as
    attention and acceptance both change as it fills in (a pilot of the first steps alone saw too little of either);
    ``a`` comes from the whole image's steps after the first (a chain proposer has nothing to propose in its first
    step), counting each row while a whole window still fits in its image."""
    runs = []
    for n in (steps, None):
        timed = _TimedProposer(proposer, torch.device(model.device), compiled)
        out = sampler.with_proposer(timed).sample(model, cond, config, torch.Generator(model.device).manual_seed(0),
                                                  max_steps=n)
        runs.append((out.stats, timed.clock[0]))
    (short, short_clock), (long, long_clock) = runs
    passes = max(1, long.forward_passes - short.forward_passes)
    per_step = max(0.0, (long.seconds - short.seconds) / passes)
    committed = torch.stack(long.accepted).cumsum(0)  # [steps, B]: tokens of each row after each step
    # rows before steps 2.. with room for a whole window (a step at the image's end is cut short, not rejected)
    active = committed[1:-1] + proposer.lookahead + 1 <= model.num_tokens
    k = torch.stack(long.accepted[2:])
    rate = float(k[active].float().sum() / active.sum().clamp(min=1))
    return acceptance_from_rate(rate, proposer.lookahead), per_step, max(0.0, long_clock - short_clock) / passes


def _line(x0, y0, x1, y1):
    """``(fixed, per unit)`` of the line through two points, both clamped to >= 0."""
    slope = max(0.0, (y1 - y0) / (x1 - x0)) if x1 != x0 else 0.0
    return max(0.0, y0 - slope * x0), slope


def choose_lookahead(sampler, model, cond, config, candidates, compiled: bool = False,
                     pilot_steps: int = 8) -> tuple[int, AutoStats]:
    """The number of drafts per step that maximises expected tokens per second, and the evidence.

    A step with ``c >= 1`` drafts is modelled as ``T(c + 1) + o + f + c * g``: ``T`` the measured forward, ``o``
    what an AR step costs beyond its forward (logits chain, sampling, commit), and ``f + c * g`` what drafting
    adds (the proposer, the rule's verification), fitted through pilots at the smallest and largest candidate;
    an AR step costs ``T(1) + o``. Compiled, the chain and the verification run inside the compiled step, so
    ``o = 0`` and ``f + c * g`` is the proposer's own time (timed as it runs in a compiled call)."""
    from .loop import NoProposer

    candidates = sorted({c for c in candidates if 0 <= c < model.num_tokens} | {0})
    lo, hi = (candidates[1], candidates[-1]) if len(candidates) > 1 else (0, 0)
    costs = forward_costs(model, cond, config, [c + 1 for c in candidates], compiled)
    a, a_lo, overhead, fixed, per_draft = 0.0, 0.0, 0.0, 0.0, 0.0
    if hi > 0:
        # the pilots depend on the sampler (proposer and rule): kept on the sampler instance, which a pipeline
        # reuses across calls, per (model, batch, config)
        key = (id(model), model.check_cond(cond), repr(config), compiled)
        pilots = lambda: [_pilot(sampler, p, model, cond, config, pilot_steps, compiled)  # noqa: E731
                          for p in (NoProposer(), sampler.proposer.resized(lo), sampler.proposer.resized(hi))]
        ar, low, high = _cached(sampler.auto_pilots, key, model, pilots)
        (_, ar_step, _), (a_lo, lo_step, lo_prop), (a, hi_step, hi_prop) = ar, low, high
        if compiled:
            fixed, per_draft = _line(lo, lo_prop, hi, hi_prop)
        else:
            eager = forward_costs(model, cond, config, [1, lo + 1, hi + 1], False)
            overhead = max(0.0, ar_step - eager[1])
            fixed, per_draft = _line(lo, lo_step - eager[lo + 1] - overhead, hi, hi_step - eager[hi + 1] - overhead)
    step = {c: costs[c + 1] + overhead + (fixed + c * per_draft if c else 0.0) for c in candidates}
    batch = model.check_cond(cond)
    # a Jacobi draft's acceptance depends on the window (a wider window refines a draft more often before it is
    # verified), so ``a`` is interpolated between the two pilots
    accept = {c: min(1.0, max(0.0, a_lo + (a - a_lo) * (c - lo) / max(1, hi - lo))) if c else 0.0 for c in candidates}
    speed = {c: batch_tokens_per_step(accept[c], c, batch, model.num_tokens) / step[c] for c in candidates}
    best = max(candidates, key=lambda c: (speed[c], -c))
    if speed[best] < MARGIN * speed[0]:  # within the model's error of AR: AR, which cannot be slower than itself
        best = 0
    evidence = AutoStats(auto_drafts=best, auto_acceptance={c: round(accept[c], 4) for c in candidates},
                         auto_step_seconds=step, auto_forward_seconds={c + 1: costs[c + 1] for c in candidates},
                         auto_speedup_vs_ar={c: speed[c] / speed[0] for c in candidates})
    return best, evidence
