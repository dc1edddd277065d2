"""The target side of token-level speculative decoding, shared by every proposer.

:class:`Committer` owns the per-row token buffer and the bookkeeping. ``commit`` verifies a window of
drafts with an acceptance rule (all rows and slots at once), commits each row's accepted prefix plus
one token -- drawn from the rule's residual at the first rejected slot, or from ``p`` after a fully
accepted window (the bonus token) -- and records which forward pass committed each token. No Python
loop over rows or positions, no host sync.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Stats, sample_from_probs


class Committer:
    def __init__(self, rule, batch: int, num_tokens: int, buffer_len: int, device):
        self.rule = rule
        self.N = num_tokens
        self.rows = torch.arange(batch, device=device)
        self.seq = torch.zeros(batch, buffer_len, dtype=torch.long, device=device)  # committed, then drafts
        self.token_step = torch.zeros(batch, buffer_len, dtype=torch.long, device=device)
        self.relaxed = torch.zeros(batch, buffer_len, dtype=torch.bool, device=device)
        self.tv: list[torch.Tensor] = []

    def commit(self, p, q, drafts, u_acc, u_res, n, step: int):
        """Verify ``drafts [B, J]`` (drawn from ``q [B, J, V]``) for tokens ``n .. n+J-1`` against the
        target's ``p [B, J+1, V]`` for tokens ``n .. n+J``.

        Returns ``(k, a)``: tokens committed and drafts accepted per row (``k = a + 1`` unless the
        grid ended). ``self.seq`` then holds the committed tokens at ``n .. n+k-1``.
        """
        J = drafts.shape[1]
        slots = torch.arange(J + 1, device=p.device)
        verdict = self.rule.verify(p[:, :J], q, drafts, u_acc)
        in_grid = (n[:, None] + slots[:J]) < self.N
        ok = verdict.accept & in_grid
        a = ok.long().cumprod(dim=1).sum(dim=1)
        q_pad = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)  # after a full window: residual(p, 0) = p
        extra = sample_from_probs(self.rule.residual(p[self.rows, a], q_pad[self.rows, a]), u_res)
        k = a + ((n + a) < self.N).long()
        values = torch.where(slots == a[:, None], extra[:, None], F.pad(drafts, (0, 1)))
        pos = n[:, None] + slots
        commit = slots[None] < k[:, None]
        self._write(self.seq, pos, values, commit)
        self._write(self.token_step, pos, torch.full_like(values, step), commit)
        if verdict.relaxed is not None:
            self._write(self.relaxed, pos, F.pad(verdict.relaxed, (0, 1)), slots[None] < a[:, None])
        if verdict.tv is not None:  # mass moved by a lossy rule on the slots it decided
            decided = F.pad(ok, (1, 0), value=True)[:, :-1] & in_grid
            self.tv.append((verdict.tv * decided).sum(1).mean())
        return k, a

    @staticmethod
    def _write(buffer, pos, values, mask):
        buffer.scatter_(1, pos, torch.where(mask, values, buffer.gather(1, pos)))

    def tokens(self) -> torch.Tensor:
        return self.seq[:, : self.N].clone()

    def fill_stats(self, stats: Stats) -> None:
        stats.tokens = torch.full((self.seq.shape[0],), self.N)
        stats.token_step = self.token_step[:, : self.N].cpu()
        if not getattr(self.rule, "lossless", True):
            stats.relaxed = self.relaxed[:, : self.N].cpu()
            stats.tv_bound = [float(t) for t in self.tv]
