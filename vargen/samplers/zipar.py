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
order, and nothing is ever rolled back. It is one schedule of :mod:`vargen.samplers.rows` (with Diagonal Decoding
and PJD).
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Stats
from .rows import OneTokenRowsSampler, Step, one_token_schedule
from .spec import checked, option
from .stats import ZipARStats

__all__ = ["ZipARSampler", "ZipAROptions", "zipar_schedule"]


@dataclass
class ZipAROptions:
    window: int = option(8, "tokens row r must have before row r+1 starts (ZipAR's window size, at most the row "
                         "width, which is plain raster order)", minimum=1)


def zipar_schedule(rows: int, width: int, window: int) -> list[Step]:
    """The static schedule of ZipAR on a ``rows x width`` raster (token 0 comes from the prefill)."""
    return one_token_schedule(rows, width, window, first_row_full=True, proxy="completed")


class ZipARSampler(OneTokenRowsSampler):
    """``window``: how many tokens a row has before the next row starts (``window = row width``: plain raster
    order, as AR). Runs over scattered plans (:func:`vargen.decode.scattered_plan`) on every token model; where the
    sequence has a row-end token after every image row, the row end follows the row's last token and predicts the next
    row's first."""

    name = "zipar"
    OPTIONS = ZipAROptions

    def __init__(self, window: int = 8):
        self.options = checked(ZipAROptions(window), "zipar")
        self.window = self.lag = self.options.window

    def schedule(self, model, cond) -> list[Step]:
        width = model.grid[-1]
        return zipar_schedule(model.num_tokens // width, width, self.window)

    def fill_stats(self, stats: Stats, model, cond, schedule: list[Step]) -> None:
        stats.zipar = ZipARStats(window=self.window, rows_in_parallel=max(len(s.predict) for s in schedule))
