"""Automatic draft length (``window="auto"``, ``gamma="auto"``): a cost model of one speculative step.

A step with ``J`` drafts costs one target forward of ``J + 1`` tokens plus the proposer's work, and commits
``E(J) = (1 - a^(J+1)) / (1 - a)`` tokens on average when each draft is accepted with probability ``a`` given
the ones before it (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding", eq. 1).
So the sampler runs with the ``J`` that maximises

    E(J) / (T_target(J + 1) + J * t_draft)

where, measured once per (model, device, rows, compiled) and kept for the process:

* ``T_target(w)``: the median time of a ``w``-token cached forward at the call's batch (CFG rows included),
  in the mode the call runs in (eager, or the compiled forward);
* ``a`` and ``t_draft``: from a short pilot of the sampler itself at the largest candidate (eager, its own
  generator, the call's batch and config): ``a`` solves ``E(J_max) = tokens per forward``, ``t_draft`` is the
  proposer's time per draft.

``J = 0`` is plain AR: a speculative sampler with ``"auto"`` is never planned to be slower than AR. The choice
depends on timings, so two processes may choose differently; pass an integer for reproducible tokens.
"""
from __future__ import annotations

import statistics
import time
import weakref

import torch

__all__ = ["choose_lookahead", "forward_costs", "expected_tokens", "acceptance_from_rate", "AUTO"]

AUTO = "auto"
_FORWARD_COSTS: dict = {}  # (id(model), device, rows, compiled) -> (model ref, {tokens: seconds})
_PILOTS: dict = {}  # (id(model), sampler key, rows) -> (model ref, (a, seconds per draft))


def expected_tokens(a: float, drafts: int) -> float:
    """Tokens committed per step with ``drafts`` drafts, each accepted with probability ``a``."""
    if a >= 1.0:
        return drafts + 1.0
    return (1.0 - a ** (drafts + 1)) / (1.0 - a)


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


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _cached(table, key, model, make):
    entry = table.get(key)
    if entry is None or entry[0]() is not model:
        entry = table[key] = (weakref.ref(model), make())
    return entry[1]


@torch.no_grad()
def forward_costs(model, cond, config, widths, compiled: bool = False, repeats: int = 7) -> dict[int, float]:
    """Median seconds of one cached ``w``-token forward (at the middle of the image) for each ``w`` in ``widths``
    at ``cond``'s batch; measured once per (model, device, rows, compiled) in a process."""
    from .loop import compile_step
    from .session import TokenSession

    dev = torch.device(model.device)
    probe = TokenSession(model, cond, config, extra_positions=max(widths) + 1, static=compiled)
    key = (id(model), str(dev), probe.rows, compiled)
    table = _cached(_FORWARD_COSTS, key, model, dict)
    todo = sorted(set(widths) - set(table))
    if not todo:
        return {w: table[w] for w in widths}
    probe.prefill()
    run = probe.run
    if compiled:
        run = compile_step(probe.run, dev)
    middle = model.num_tokens // 2  # a mid-image step: eager attention reads half the cache
    start = torch.full((probe.batch,), middle, dtype=torch.long, device=dev)
    for w in todo:
        tokens = torch.zeros(probe.batch, w, dtype=torch.long, device=dev)
        kv_len = None if compiled else middle + w
        for _ in range(2):  # warm-up (and, compiled, the compilation)
            run(tokens, start, kv_len)
        times = []
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            run(tokens, start, kv_len)
            _sync(dev)
            times.append(time.perf_counter() - t0)
        table[w] = statistics.median(times)
    return {w: table[w] for w in widths}


class _TimedProposer:
    """Delegates to a proposer and adds up the seconds it spends (the pilot's ``t_draft``)."""

    def __init__(self, inner, device):
        self.inner, self.device = inner, device
        self.clock = [0.0]  # shared with the copy the loop makes
        for name in ("name", "lookahead", "wants_hidden", "check", "extra_stats"):
            setattr(self, name, getattr(inner, name))

    @property
    def draft_passes(self):
        return self.inner.draft_passes

    def _timed(self, fn, *args):
        _sync(self.device)
        t0 = time.perf_counter()
        out = fn(*args)
        _sync(self.device)
        self.clock[0] += time.perf_counter() - t0
        return out

    def start(self, *args):
        return self._timed(self.inner.start, *args)

    def propose(self, *args):
        return self._timed(self.inner.propose, *args)

    def observe(self, *args):
        return self._timed(self.inner.observe, *args)


def _pilot(sampler, proposer, model, cond, config, steps: int) -> tuple[float, float]:
    """``(a, seconds per draft)`` from ``steps`` eager steps of ``sampler`` with ``proposer``."""
    timed = _TimedProposer(proposer, torch.device(model.device))
    out = sampler.with_proposer(timed).sample(model, cond, config, torch.Generator(model.device).manual_seed(0), max_steps=steps)
    # skip the prefill (token 0) and the first step (a chain proposer has nothing to propose yet)
    steps_seen = out.stats.accepted[2:]
    committed = sum(float(k.float().mean()) for k in steps_seen)
    passes = len(steps_seen)
    rate = committed / max(1, passes)
    drafts = proposer.lookahead
    return acceptance_from_rate(rate, drafts), timed.clock[0] / max(1, passes * drafts)


def choose_lookahead(sampler, model, cond, config, candidates, compiled: bool = False,
                     pilot_steps: int = 16) -> tuple[int, dict]:
    """The number of drafts per step that maximises expected tokens per second, and the evidence."""
    candidates = sorted({c for c in candidates if 0 <= c < model.num_tokens} | {0})
    largest = candidates[-1]
    costs = forward_costs(model, cond, config, [c + 1 for c in candidates], compiled)
    a, per_draft = 0.0, 0.0
    if largest > 0:
        key = (id(model), sampler.auto_key(), model.check_cond(cond), repr(config))
        a, per_draft = _cached(_PILOTS, key, model, lambda: _pilot(
            sampler, sampler.proposer.resized(largest), model, cond, config, pilot_steps))
    speed = {c: expected_tokens(a, c) / (costs[c + 1] + c * per_draft) for c in candidates}
    best = max(candidates, key=lambda c: (speed[c], -c))
    evidence = {"auto_acceptance": round(a, 4), "auto_seconds_per_draft": per_draft,
                "auto_forward_seconds": {c + 1: costs[c + 1] for c in candidates},
                "auto_speedup_vs_ar": {c: speed[c] / speed[0] for c in candidates}}
    return best, evidence
