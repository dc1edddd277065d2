"""Parallel raster rows: one mechanism, three schedules (ZipAR, Diagonal Decoding, PJD).

All three decode several rows of the token grid at once. Rows are numbered through the whole sequence (for video,
row ``r`` of frame ``f`` is row ``f * H + r``), and a row starts once the row above holds ``lag`` tokens
(:func:`may_start`). A row that starts before the row above is complete has no token before its first one yet: it
feeds a *proxy* at that position (:func:`proxy_source`), whose output predicts the row's first token; the true token
is written there once it exists (the *flush*). Every entry sees the condition and the image positions already
written at or before its own (:func:`vargen.decode.scattered_plan`).

* ZipAR (He et al. 2024, arXiv 2412.04062): one token per active row and forward, sampled and kept; row 1 waits for
  all of row 0; the proxy is the last token of the last completed row.
* Diagonal Decoding (Ye et al. 2025, arXiv 2503.14070): the same with row 1 starting early too (tokens advance along
  diagonals of slope ``lag``), across frames of a video, on a temporal proxy.
* PJD (Parallel Jacobi Decoding, CVPR 2026, arXiv 2606.05703): a Jacobi window per active row, verified with an
  acceptance rule (:mod:`vargen.samplers.pjd`); its schedule depends on what is accepted, so it is built per step.

This module holds what the three share: when a row starts, what its proxy is, and the static one-token schedule with
its sampler (:class:`OneTokenRowsSampler`, the base of ``zipar`` and ``diagd``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..budget import Footprint
from .base import GenerationOutput, RowRandom, SamplingConfig, Stats, StepTimer, sample_from_probs
from .session import TokenSession, resolve_config, token_footprint
from .stats import RowsStats

__all__ = ["Step", "may_start", "proxy_source", "one_token_schedule", "OneTokenRowsSampler"]


def may_start(row: int, count, width: int, lag: int, first_row_full: bool = False, frame_rows: int | None = None) -> bool:
    """Whether ``row`` may start, given the tokens ``count[r]`` each row holds: once the row above holds ``lag``
    tokens -- a whole row where the row must wait for one (row 1 with ``first_row_full``, ZipAR; the first row of a
    frame with ``frame_rows``, frames decoded one after another)."""
    if row == 0:
        return True
    full = (first_row_full and row == 1) or (frame_rows is not None and row % frame_rows == 0)
    return count[row - 1] >= (width if full else lag)


def proxy_source(row: int, count, width: int, proxy: str, completed: list[int], frame: int | None = None,
                 num_tokens: int = 0) -> int:
    """The index of the token a row fed on a proxy carries at the position before its first token, in a buffer of
    the sequence's ``num_tokens`` tokens followed by the frame before token 0 (``frame`` = H * W tokens, video):

    ``completed`` -- the last token of the last completed row (ZipAR's official choice); ``above`` -- the last token
    the row above holds (PJD's for grids without row ends); ``temporal`` -- the same cell one frame earlier (Diagonal
    Decoding, video; for the first frame, the frame before token 0)."""
    if proxy == "completed":
        if not completed:
            raise ValueError("the 'completed' proxy needs a completed row before the second row starts")
        return completed[-1] * width + width - 1
    if proxy == "above":
        return (row - 1) * width + count[row - 1] - 1
    if frame is None:
        raise ValueError("the 'temporal' proxy needs a video (a frame before each position)")
    earlier = row * width - 1 - frame
    return earlier if earlier >= 0 else num_tokens + frame + earlier  # a cell of the frame before token 0


@dataclass(frozen=True)
class Step:
    """One forward: tokens ``source`` (indices into the token buffer) fed at image ``positions``; the outputs of the
    first ``len(predict)`` entries give tokens ``predict``; the rest only write K/V (the true token at a former
    proxy's position)."""

    positions: tuple[int, ...]
    source: tuple[int, ...]
    predict: tuple[int, ...]


def one_token_schedule(rows: int, width: int, lag: int, *, first_row_full: bool = False, proxy: str = "above",
                       flush: bool = True, frame_rows: int | None = None, sequential: bool = False) -> list[Step]:
    """The static schedule of one token per active row and forward on a ``rows x width`` raster (token 0 comes from
    the prefill); at most one row starts per step. ``frame_rows``: rows per video frame (the temporal proxy's
    frame); ``sequential``: a frame starts only once the one before is complete. ``flush=False`` never writes the
    true token over a proxy (the official Diagonal Decoding code)."""
    frame = None if frame_rows is None else frame_rows * width
    count = [1] + [0] * (rows - 1)
    active, done, started = [0], [], 1
    proxied: set[int] = set()  # rows that started on a proxy of the token before them
    pending: list[int] = []  # rows just completed whose next row runs on a proxy: write their last token
    steps = []
    while active or started < rows:
        if started < rows and may_start(started, count, width, lag, first_row_full, frame_rows if sequential else None):
            active.append(started)
            started += 1
        heads, source = [], []
        for r in active:
            j = r * width + count[r]
            if count[r] == 0 and r - 1 not in done:
                proxied.add(r)
                source.append(proxy_source(r, count, width, proxy, done, frame, rows * width))
            else:
                source.append(j - 1)
            heads.append(j)
        fixed = [(r + 1) * width - 1 for r in pending] if flush else []
        steps.append(Step(tuple(h - 1 for h in heads) + tuple(fixed), tuple(source + fixed), tuple(heads)))
        pending = []
        for r in list(active):
            count[r] += 1
            if count[r] == width:
                active.remove(r)
                done.append(r)
                if r + 1 in proxied:
                    pending.append(r)
    return steps


class OneTokenRowsSampler:
    """A static one-token-per-row schedule (:meth:`schedule`) run over scattered plans on every token model: each
    forward predicts the next token of every active row, each drawn from the model once and kept (nothing is
    verified). Where the sequence has a row-end token after every image row, the row end follows the row's last token
    (or its proxy) and predicts the next row's first."""

    MODEL = "token"
    name = "rows"

    def schedule(self, model, cond) -> list[Step]:
        raise NotImplementedError

    def row_stats(self, model, cond, schedule: list[Step]) -> RowsStats:
        return RowsStats(schedule=self.name, lag=self.lag, rows_in_parallel=max(len(s.predict) for s in schedule))

    def check(self, model) -> None:
        if self.lag > model.grid[-1]:
            raise ValueError(f"{self.name}: window={self.lag} exceeds the model's row width ({model.grid[-1]})")

    @torch.no_grad()
    def footprint(self, model, cond, config: SamplingConfig | None = None) -> Footprint:
        """What one image needs (:mod:`vargen.budget`): the target's widest scattered forward over its cache."""
        self.check(model)
        fed = max(len(s.positions) for s in self.schedule(model, cond))
        return token_footprint(model, cond, resolve_config(model, config), fed, model.num_tokens + 1)

    def sample(self, model, cond, config: SamplingConfig | None = None, generator=None) -> GenerationOutput:
        self.check(model)
        config = resolve_config(model, config)
        schedule = self.schedule(model, cond)
        session = TokenSession(model, cond, config, extra_positions=1)
        B, N, dev = session.batch, session.num_tokens, session.device
        rng = RowRandom(generator, B, dev)
        buffer = torch.zeros(B, N, dtype=torch.long, device=dev)  # the tokens, then the frame before token 0
        if any(s >= N for step in schedule for s in step.source):  # a temporal proxy in the frame before token 0
            before = model.frame_before(cond)
            if before is None:
                raise ValueError(f"{self.name}: this condition has no frame before the first generated one, which the "
                                 "temporal proxy reads; use proxy='above'")
            buffer = torch.cat([buffer, before.to(dev).long().expand(B, -1)], 1)
        token_step = torch.zeros(B, N, dtype=torch.long, device=dev)
        written = torch.zeros(B, N + 1, dtype=torch.bool, device=dev)
        stats = Stats(reports_acceptance=False)  # a fixed schedule of rows: nothing is accepted or rejected
        with StepTimer(dev) as timer:
            logits, _ = session.prefill()
            buffer[:, 0] = sample_from_probs(session.probs(logits[:, None], 0)[:, 0], rng.rand(1)[:, 0])
            stats.accepted.append(torch.ones(B, dtype=torch.long, device=dev))
            for i, step in enumerate(schedule, start=1):
                pos = torch.tensor(step.positions, device=dev).expand(B, -1)
                written[:, list(step.positions)] = True
                logits = session.forward_scattered(buffer[:, list(step.source)], pos, written)
                m = len(step.predict)
                heads = torch.tensor(step.predict, device=dev)
                p = session.probs(logits[:, :m], heads.expand(B, -1))
                buffer[:, heads] = sample_from_probs(p, rng.rand(m))
                token_step[:, heads] = i
                stats.accepted.append(torch.full((B,), m, dtype=torch.long, device=dev))
        stats.forward_passes = session.forward_passes
        stats.tokens = torch.full((B,), N)
        stats.token_step = token_step.cpu()
        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        self.fill_stats(stats, model, cond, schedule)
        return GenerationOutput(tokens=buffer[:, :N].clone(), stats=stats)

    def fill_stats(self, stats: Stats, model, cond, schedule: list[Step]) -> None:
        stats.rows = self.row_stats(model, cond, schedule)
