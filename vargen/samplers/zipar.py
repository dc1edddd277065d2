"""ZipAR: parallel decoding of raster rows (He et al. 2024, arXiv 2412.04062; training-free, lossy).

Neighbouring image tokens depend mostly on their spatial neighbours, so ZipAR does not wait for a row to finish
before starting the next: once row ``r`` has ``window`` tokens, row ``r + 1`` gets its own decoding head, and every
forward predicts the next token of each active row (one query per row, each at its own position). Row 0 is decoded
alone first (as the official code does). A row that starts before the row above has finished feeds a proxy for the
missing token before it (the last token of the last completed row, as the official code); the true token is
written at that position once it exists. A query sees the condition and the image positions already written at or
before its own (vargen masks positions that hold no token yet; the official code attends to the empty cache
slots).

Nothing is verified: the tokens of a later row are drawn from the model without the end of the rows above, so the
output distribution moves (measured in the benchmark report, FID against AR's samples). The schedule depends only
on the grid and ``window``, so the forward count is fixed: about ``2 W + (H - 2) window`` for an ``H x W`` grid.
This is its own sampler, not a proposer of the speculative loop: what it commits is not a prefix of the raster
order, and nothing is ever rolled back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..budget import Footprint
from .base import (
    GenerationOutput,
    RowRandom,
    SamplingConfig,
    Stats,
    StepTimer,
    sample_from_probs,
)
from .session import TokenSession, resolve_config, token_footprint
from .spec import checked, option
from .stats import ZipARStats

__all__ = ["ZipARSampler", "ZipAROptions", "zipar_schedule"]


@dataclass
class ZipAROptions:
    window: int = option(8, "tokens row r must have before row r+1 starts (ZipAR's window size, at most the row "
                         "width, which is plain raster order)", minimum=1)


@dataclass(frozen=True)
class Step:
    """One forward: tokens ``source`` fed at image ``positions`` (a proxy's source is another index); the outputs
    of the first ``len(predict)`` entries give tokens ``predict``; the rest only write K/V (a completed row's
    last token replacing its proxy)."""

    positions: tuple[int, ...]
    source: tuple[int, ...]
    predict: tuple[int, ...]


def zipar_schedule(rows: int, width: int, window: int) -> list[Step]:
    """The static schedule of ZipAR on a ``rows x width`` raster (token 0 comes from the prefill)."""
    count = [1] + [0] * (rows - 1)
    active, done, started = [0], [], 1
    proxied: set[int] = set()  # rows that started on a proxy of the token before them
    pending: list[int] = []  # rows just completed whose next row runs on a proxy: write their last token
    steps = []
    while active or started < rows:
        above = started - 1  # the next row starts once the row above has `window` tokens (row 1: all of row 0)
        if started < rows and count[above] >= (width if above == 0 else window):
            active.append(started)
            started += 1
        heads, source = [], []
        for r in active:
            j = r * width + count[r]
            if count[r] == 0 and r - 1 not in done:
                proxied.add(r)
                source.append(done[-1] * width + width - 1)  # the last token of the last completed row
            else:
                source.append(j - 1)
            heads.append(j)
        flush = [(r + 1) * width - 1 for r in pending]
        steps.append(Step(tuple(h - 1 for h in heads) + tuple(flush), tuple(source + flush), tuple(heads)))
        pending = []
        for r in list(active):
            count[r] += 1
            if count[r] == width:
                active.remove(r)
                done.append(r)
                if r + 1 in proxied:
                    pending.append(r)
    return steps


class ZipARSampler:
    """``window``: how many tokens a row has before the next row starts (``window = row width``: plain raster
    order, as AR). Runs over scattered plans (:func:`vargen.decode.scattered_plan`) on every token model; where the
    sequence has a row-end token after every image row, the row end follows the row's last token and predicts the next
    row's first."""

    name = "zipar"
    MODEL = "token"
    OPTIONS = ZipAROptions

    def __init__(self, window: int = 8):
        self.options = checked(ZipAROptions(window), "zipar")
        self.window = self.options.window

    def check(self, model) -> None:
        if self.window > model.grid[-1]:
            raise ValueError(f"zipar: window={self.window} exceeds the model's row width ({model.grid[-1]})")

    @torch.no_grad()
    def footprint(self, model, cond, config: SamplingConfig | None = None) -> Footprint:
        """What one image needs (:mod:`vargen.budget`): the target's widest scattered forward over its cache."""
        self.check(model)
        width = model.grid[-1]
        fed = max(len(s.positions) for s in zipar_schedule(model.num_tokens // width, width, self.window))
        return token_footprint(model, cond, resolve_config(model, config), fed, model.num_tokens + 1)

    def sample(self, model, cond, config: SamplingConfig | None = None, generator=None) -> GenerationOutput:
        self.check(model)
        config = resolve_config(model, config)
        session = TokenSession(model, cond, config, extra_positions=1)
        B, N, dev = session.batch, session.num_tokens, session.device
        width = model.grid[-1]
        schedule = zipar_schedule(N // width, width, self.window)
        rng = RowRandom(generator, B, dev)
        seq = torch.zeros(B, N, dtype=torch.long, device=dev)
        token_step = torch.zeros(B, N, dtype=torch.long, device=dev)
        written = torch.zeros(B, N + 1, dtype=torch.bool, device=dev)
        stats = Stats(reports_acceptance=False)  # a fixed schedule of rows: nothing is accepted or rejected
        with StepTimer(dev) as timer:
            logits, _ = session.prefill()
            seq[:, 0] = sample_from_probs(session.probs(logits[:, None], 0)[:, 0], rng.rand(1)[:, 0])
            stats.accepted.append(torch.ones(B, dtype=torch.long, device=dev))
            for i, step in enumerate(schedule, start=1):
                pos = torch.tensor(step.positions, device=dev).expand(B, -1)
                written[:, list(step.positions)] = True
                logits = session.forward_scattered(seq[:, list(step.source)], pos, written)
                m = len(step.predict)
                heads = torch.tensor(step.predict, device=dev)
                p = session.probs(logits[:, :m], heads.expand(B, -1))
                seq[:, heads] = sample_from_probs(p, rng.rand(m))
                token_step[:, heads] = i
                stats.accepted.append(torch.full((B,), m, dtype=torch.long, device=dev))
        stats.forward_passes = session.forward_passes
        stats.tokens = torch.full((B,), N)
        stats.token_step = token_step.cpu()
        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        stats.zipar = ZipARStats(window=self.window, rows_in_parallel=max(len(s.predict) for s in schedule))
        return GenerationOutput(tokens=seq, stats=stats)
