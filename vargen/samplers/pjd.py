"""PJD: Parallel Jacobi Decoding (CVPR 2026, arXiv 2606.05703; training-free, lossy below the top row).

Several raster rows decode at once, each with its own speculative Jacobi window. Row ``r + 1`` starts once row ``r``
holds ``context`` tokens (the paper's context threshold), and a row never predicts past the tokens the row above
holds (its window is ``min(window, c_above - c_row)`` long). Every forward feeds, for each active row, the row's last
committed token and its drafts (Section 3, "dynamic token preparation"); a row that starts before the row above has
finished feeds a proxy at the position before its first token (the last token the row above holds, the paper's
choice for grids without row ends). Attention is row-causal: a draft sees the condition, every written token at or
before its position and the earlier drafts of its own row, never another row's drafts ("parallel prediction").

Verification (Section 3, "probabilistic verification"): every row's window is checked with the sampler's acceptance
rule (``exact``: min(1, p / q); any of vargen's rules). The top row -- the first unfinished one, whose rows above are
complete -- commits its accepted prefix and one more token (from the rule's residual at the first rejection, or the
bonus), as SJD does, so with the exact rule its tokens follow the model given everything above. A lower row commits
only its accepted drafts and re-drafts the rest from its latest prediction (``lower_rows="postpone"``, the paper's);
``lower_rows="residual"`` also commits the residual token there, so a lower row's tokens follow the model *without*
the unfinished rows above (as ZipAR's do) and it advances faster. Rejected drafts' K/V stay in their slots unseen
(nothing is deleted). Drafts carry the distribution they were truthfully drawn from (uniform for a fresh random
draft, the previous prediction for a re-draft).

Zero settings: ``window=1`` is AR token for token; ``context`` of a whole row (one row at a time) is SJD restricted
to rows, lossless with the exact rule.

Deviations from the official code (boyaliao/PJD, Lumina-mGPT only): a fresh draft's q is the uniform distribution it
was drawn from, not one-hot; no "keep a rejected draft whose ratio exceeds 0.5" heuristic (it breaks exactness of the
top row); every batch row advances on its own (the official code commits the minimum over the batch); on sequences
with a structural row end (Lumina-mGPT, Emu3) vargen feeds the proxy token followed by the row end, where the official
code feeds the row end alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..budget import Footprint
from .acceptance import get_rule
from .base import GenerationOutput, RowRandom, SamplingConfig, Stats, StepTimer, sample_from_probs
from .rows import may_start, proxy_source
from .session import TokenSession, resolve_config, token_footprint
from .spec import checked, option
from .stats import DraftStats, RowsStats
from .verify import verify_window, write_where

__all__ = ["PJDSampler", "PJDOptions"]


@dataclass
class PJDOptions:
    window: int = option(8, "tokens fed per active row and forward: the row's last committed token and window-1 "
                         "Jacobi drafts (official 8; 1 is plain AR; at most the row width)", minimum=1)
    context: int | None = option(None, "tokens a row holds before the row below starts (the paper's context "
                                 "threshold; none: a quarter of the row width, the paper's coverage ratio 0.25; at "
                                 "most the row width, which decodes one row at a time)", minimum=1)
    lower_rows: str = option("postpone", "what a row below unfinished rows commits: its accepted drafts only "
                             "(postpone, the paper) or also the residual token at its first rejection (residual)",
                             choices=("postpone", "residual"))


class PJDSampler:
    """Parallel Jacobi Decoding on every token model with a 2-D or 3-D grid, with any acceptance rule."""

    name = "pjd"
    MODEL = "token"
    OPTIONS = PJDOptions
    TAKES_RULE = True

    def __init__(self, window: int = 8, context: int | None = None, lower_rows: str = "postpone",
                 acceptance="exact", **rule_options):
        self.options = checked(PJDOptions(window, context, lower_rows), "pjd")
        self.window, self.context, self.lower_rows = window, context, lower_rows
        self.rule = get_rule(acceptance, **rule_options)

    def _context(self, width: int) -> int:
        return max(1, round(width / 4)) if self.context is None else self.context

    def check(self, model) -> None:
        width = model.grid[-1]
        if self.context is not None and self.context > width:
            raise ValueError(f"pjd: context={self.context} exceeds the model's row width ({width})")
        if self.window > width:
            raise ValueError(f"pjd: window={self.window} exceeds the model's row width ({width})")
        if hasattr(self.rule, "check"):
            self.rule.check(model)

    def _max_fed(self, model) -> int:
        rows = model.num_tokens // model.grid[-1]
        return rows * (self.window + 1)  # every row may be active: its window, and a true last token to write

    @torch.no_grad()
    def footprint(self, model, cond, config: SamplingConfig | None = None) -> Footprint:
        """What one image needs (:mod:`vargen.budget`): the widest forward (every row active) and each position's
        draft distribution."""
        self.check(model)
        config = resolve_config(model, config)
        fp = token_footprint(model, cond, config, self._max_fed(model), model.num_tokens + 1)
        return fp.add("draft distributions", 4 * model.num_tokens * model.vocab_size)

    def sample(self, model, cond, config: SamplingConfig | None = None, generator=None) -> GenerationOutput:
        self.check(model)
        config = resolve_config(model, config)
        self.rule.prepare(model)  # per-model tables (LANTERN's neighbourhoods)
        session = TokenSession(model, cond, config, extra_positions=1)
        B, N, dev, V = session.batch, session.num_tokens, session.device, model.vocab_size
        width = model.grid[-1]
        rows, context, window = N // width, self._context(width), self.window
        rng = RowRandom(generator, B, dev)
        # per image position (column N: a dummy that out-of-window entries read and write)
        tok = torch.zeros(B, N + 1, dtype=torch.long, device=dev)  # committed tokens and drafts
        q = torch.zeros(B, N + 1, V, device=dev)  # the distribution each draft was drawn from
        has_draft = torch.zeros(B, N + 1, dtype=torch.bool, device=dev)
        written = torch.zeros(B, N + 1, dtype=torch.bool, device=dev)  # slots whose K/V holds a committed token
        token_step = torch.zeros(B, N + 1, dtype=torch.long, device=dev)
        count = [[1] + [0] * (rows - 1) for _ in range(B)]  # committed tokens per raster row (host)
        started = [1] * B
        flushed = [[False] * rows for _ in range(B)]  # a complete row's last token written at its slot
        stats = Stats()
        proposed = accepted = most_rows = 0
        slot = torch.arange(window, device=dev)
        draws = window > 1 or self.lower_rows == "residual"  # at window 1 only the top row draws (AR's stream)
        with StepTimer(dev) as timer:
            logits, _ = session.prefill()
            tok[:, 0] = sample_from_probs(session.probs(logits[:, None], 0)[:, 0], rng.rand(1)[:, 0])
            stats.accepted.append(torch.ones(B, dtype=torch.long, device=dev))
            step = 0
            while any(c[-1] < width for c in count):
                step += 1
                plan = [self._row_plan(count[b], started, b, flushed[b], width, rows, context, window)
                        for b in range(B)]
                G, F = max(len(w) for w, _ in plan), max(len(f) for _, f in plan)
                most_rows = max(most_rows, G)
                positions, source, chain, lengths, starts, tops = self._entries(plan, G, F, N, width, window)
                positions, source, chain = positions.to(dev), source.to(dev), chain.to(dev)
                lengths, starts, tops = lengths.to(dev), starts.to(dev), tops.to(dev)
                in_window = slot < lengths[..., None]  # [B, G, window]: entries of a window
                is_draft = in_window & (slot > 0)  # entry e >= 1 carries the draft of position starts + e - 1
                predicted = torch.where(in_window, starts[..., None] + slot, N).flatten(1)  # entry e predicts
                drafted = torch.where(is_draft, starts[..., None] + slot - 1, N).flatten(1)
                # uniforms: the top row's token first (AR's one draw per step), then the rest where a step uses them
                u_top = rng.rand(1)
                u = rng.rand(rows + 3 * (N + 1)) if draws else torch.zeros(B, rows + 3 * (N + 1), device=dev)
                u_rows, u_fresh, u_acc, u_y = u.split([rows, N + 1, N + 1, N + 1], dim=1)
                # a window reaching a position without a draft: a fresh uniform one (q uniform)
                fresh = is_draft.flatten(1) & ~has_draft.gather(1, drafted)
                write_where(tok, drafted, (u_fresh * V).long().clamp_(max=V - 1).gather(1, drafted), fresh)
                write_where(q, drafted, torch.full_like(q[:, :1], 1.0 / V).expand(-1, drafted.shape[1], -1), fresh)
                write_where(has_draft, drafted, fresh, fresh)
                # fed committed tokens (a window's first entry, a proxy, a true last token) are written
                write_where(written, positions, positions < N, chain < 0)
                logits = session.forward_scattered(tok.gather(1, source), positions, written, chain)
                p = session.probs(logits[:, : G * window], predicted).view(B * G, window, V)
                live = is_draft.view(B * G, window)[:, 1:]
                drafts = tok.gather(1, drafted).view(B * G, window)[:, 1:]
                q_d = q.gather(1, drafted[..., None].expand(-1, -1, V)).view(B * G, window, V)[:, 1:]
                u_acc = u_acc.gather(1, drafted).view(B * G, window)[:, 1:]
                u_res = torch.where(tops, u_top, u_rows.gather(1, starts // width)).view(B * G)
                a, extra, _ = verify_window(self.rule, p, drafts, q_d, live, None, u_acc, u_res)
                a, extra = a.view(B, G), extra.view(B, G)
                # the top row commits its accepted drafts and one more token; a lower row per `lower_rows`
                k = torch.where(lengths > 0, a + (tops | (self.lower_rows == "residual")).long(), 0)
                commit = (slot < k[..., None]).flatten(1)
                values = torch.where(slot == a[..., None], extra[..., None], tok.gather(1, predicted).view(B, G, window))
                write_where(tok, predicted, values.flatten(1), commit)
                write_where(token_step, predicted, torch.full_like(predicted, step), commit)
                write_where(written, predicted, commit, (slot < a[..., None]).flatten(1))  # accepted drafts' K/V is current
                # Jacobi: the window's uncommitted positions take this step's samples as drafts, with q = p
                redraft = in_window.flatten(1) & ~commit
                y = sample_from_probs(p, u_y.gather(1, predicted).view(B * G, window))
                write_where(tok, predicted, y.view(B, G * window), redraft)
                write_where(q, predicted, p.view(B, G * window, V), redraft)
                write_where(has_draft, predicted, redraft, redraft)
                k_host, a_host = k.tolist(), a.tolist()
                for b, (windows, flush) in enumerate(plan):
                    for g, (r, c, L, src, top) in enumerate(windows):
                        count[b][r] += k_host[b][g]
                        proposed += L - 1
                        accepted += a_host[b][g]
                    for j in flush:
                        flushed[b][j // width] = True
                stats.accepted.append(k.sum(1))
        stats.forward_passes = session.forward_passes
        stats.tokens = torch.full((B,), N)
        stats.token_step = token_step[:, :N].cpu()
        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        stats.draft = DraftStats(window=window, init="random", drafts_proposed=proposed, drafts_accepted=accepted)
        stats.rows = RowsStats(schedule="pjd", lag=context, window=window, rows_in_parallel=most_rows, proxy="above",
                               lower_rows=self.lower_rows)
        return GenerationOutput(tokens=tok[:, :N].clone(), stats=stats)

    @staticmethod
    def _entries(plan, G: int, F: int, N: int, width: int, window: int):
        """The step's entries from every batch row's plan: ``G`` row windows of ``window`` entries each (the first
        holds a committed token or a proxy, the rest the row's drafts, chain ``g``), then ``F`` true last tokens to
        write; padding entries sit at image position ``N`` (the cache's scratch slot)."""
        B = len(plan)
        positions = torch.full((B, G * window + F), N, dtype=torch.long)
        source = torch.full_like(positions, N)
        chain = torch.full_like(positions, -1)
        lengths, starts = torch.zeros(B, G, dtype=torch.long), torch.zeros(B, G, dtype=torch.long)
        tops = torch.zeros(B, G, dtype=torch.bool)
        for b, (windows, flush) in enumerate(plan):
            for g, (r, c, L, src, top) in enumerate(windows):
                e, first = g * window, r * width + c
                positions[b, e : e + L] = torch.arange(first - 1, first + L - 1)
                source[b, e] = src
                source[b, e + 1 : e + L] = torch.arange(first, first + L - 1)
                chain[b, e + 1 : e + L] = g
                lengths[b, g], starts[b, g], tops[b, g] = L, first, top
            for f, j in enumerate(flush):
                positions[b, G * window + f] = source[b, G * window + f] = j
        return positions, source, chain, lengths, starts, tops

    def _row_plan(self, count, started, b, flushed, width, rows, context, window):
        """One batch row's step: ``(windows, flush)``; a window is ``(row, committed, entries, first entry's token,
        top)``, ``flush`` the positions of complete rows' last tokens to write (K/V only)."""
        if started[b] < rows and may_start(started[b], count, width, context):
            started[b] += 1
        top = next((r for r in range(rows) if count[r] < width), None)
        if top is None:  # this image is complete
            return [], []
        windows, flush = [], []
        for r in range(top, started[b]):
            c = count[r]
            if c == width:
                continue
            room = width - c if r == top else min(width - c, count[r - 1] - c)
            L = min(window, room)
            if L < 1 or (r != top and self.lower_rows == "postpone" and L < 2):
                continue  # nothing this row could commit this step
            j = r * width + c - 1  # the position before the first predicted one
            if c > 0 or count[r - 1] == width:
                src = j  # a committed token (the true last token of a complete row above)
                if c == 0:
                    flushed[r - 1] = True
            else:
                src = proxy_source(r, count, width, "above", [])
            windows.append((r, c, L, src, r == top))
        for r in range(top):  # complete rows whose last token was committed but never fed
            if not flushed[r] and r + 1 < rows and count[r + 1] < width and r + 1 < started[b]:
                flush.append(r * width + width - 1)
        return windows, flush
