"""Diagonal Decoding (Ye et al. 2025, "Fast Autoregressive Video Generation with Diagonal Decoding", arXiv 2503.14070;
training-free, lossy).

Tokens are generated along diagonals of the spatio-temporal grid: a row starts once the row above holds ``window``
tokens (``window = 1``: the anti-diagonal, cell ``(r, c)`` at step ``r + c``), and every forward predicts the next
token of each active row. Rows are numbered across frames, so the first row of frame ``f + 1`` starts while frame
``f`` is still being finished (``frames="overlap"``, the paper's schedule); ``frames="sequential"`` completes a frame
before starting the next (the released MineWorld code). A row that starts early feeds a proxy at the position before
its first token: the same cell one frame earlier (``proxy="temporal"``, the paper's; the frame before token 0 for the
first generated frame) or the last token the row above holds (``proxy="above"``). Unlike ZipAR, row 1 does not wait
for all of row 0.

Nothing is verified: each token is drawn once from the model without the end of the rows above it. The schedule is
static, about ``(T H - 1) window + W`` forwards for ``T`` frames of ``H x W`` tokens (overlapped).

Deviations from the official code (MineWorld's ``diagonal_decoding.py``, the authors' released implementation):

* ``flush=True`` writes the true last token of a row over its proxy once it exists; the official code keeps the
  proxy's K/V there for good (``flush=False`` reproduces it). At ``window = W`` no row starts early, so both are
  raster AR token for token (the official code also feeds a proxy at ``window = W``).
* the temporal proxy is the cell one frame before the one generated; the official code reads the first prompt frame
  for every generated frame.
* a query never sees cache slots that hold no token yet (the official mask attends to them).
"""
from __future__ import annotations

from dataclasses import dataclass

from .rows import OneTokenRowsSampler, Step, one_token_schedule
from .spec import checked, option
from .stats import RowsStats

__all__ = ["DiagDSampler", "DiagDOptions"]


@dataclass
class DiagDOptions:
    window: int = option(2, "tokens row r holds before row r+1 starts: the slope of the diagonals (official default "
                         "2; 1 is the anti-diagonal; the row width is plain raster order)", minimum=1)
    proxy: str = option("auto", "what a row that starts early feeds before its first token: the same cell one frame "
                        "earlier (temporal, video), the last token of the row above (above); auto: temporal on video, "
                        "above on images", choices=("auto", "temporal", "above"))
    frames: str = option("overlap", "overlap: a frame's first row starts while the frame before is finishing (the "
                         "paper); sequential: frame by frame (the released code)", choices=("overlap", "sequential"))
    flush: bool = option(True, "write a row's true last token over its proxy once it exists (False: keep the proxy, "
                         "as the official code)")


class DiagDSampler(OneTokenRowsSampler):
    """Diagonal Decoding on every token model with a 2-D or 3-D grid (images: one frame)."""

    name = "diagd"
    OPTIONS = DiagDOptions

    def __init__(self, window: int = 2, proxy: str = "auto", frames: str = "overlap", flush: bool = True):
        self.options = checked(DiagDOptions(window, proxy, frames, flush), "diagd")
        self.window = self.lag = self.options.window
        self.proxy, self.frames, self.flush = proxy, frames, flush

    def _proxy(self, model, cond) -> str:
        if self.proxy != "auto":
            return self.proxy
        video = getattr(model, "frame_before", None) is not None and model.frame_before(cond) is not None
        return "temporal" if video else "above"

    def check(self, model) -> None:
        super().check(model)
        if self.proxy == "temporal" and not hasattr(model, "frame_before"):
            raise ValueError("diagd: proxy='temporal' needs a video model (one with frame_before); use proxy='above'")

    def schedule(self, model, cond) -> list[Step]:
        T, H, W = model.grid
        return one_token_schedule(model.num_tokens // W, W, self.window, proxy=self._proxy(model, cond), flush=self.flush,
                                  frame_rows=H, sequential=self.frames == "sequential")

    def row_stats(self, model, cond, schedule: list[Step]) -> RowsStats:
        return RowsStats(schedule="diagd", lag=self.window, rows_in_parallel=max(len(s.predict) for s in schedule),
                         proxy=self._proxy(model, cond))
