"""The target side of token-level speculative decoding (vLLM's rejection sampler), shared by every proposer.

:class:`Committer` owns the per-row token buffer and the bookkeeping. ``commit`` verifies a proposal with
an acceptance rule (all rows and slots at once), commits each row's accepted prefix plus one token --
drawn from the rule's residual at the first rejected slot, or from ``p`` after a fully accepted window
(the bonus token) -- and records which forward pass committed each token. No Python loop over rows or
positions, no host sync.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributions import accept_prefix_and_draw
from ..kernels import verify_exact
from .acceptance import ExactAcceptance, Verdict
from .base import Stats, sample_from_probs


def verify_window(rule, p, drafts, q, live, valid, u_acc, u_res):
    """Verify one window per row with ``rule``: drafts ``[B, J]`` drawn from ``q [B, J, V]`` against the target's
    ``p [B, J+1, V]``; ``live [B, J]``: the slots that may be accepted; ``valid [B, J]`` or None: where False, q does
    not count (the slot resamples from p). Returns ``(a, token, verdict)``: the accepted prefix per row, the token
    drawn at slot ``a`` (the rule's residual at a rejected slot, ``p`` after the last live one: the bonus) and the
    rule's :class:`Verdict`."""
    J = drafts.shape[1]
    if J == 0:  # nothing proposed (plain AR step): the token is drawn from p
        return torch.zeros_like(u_res, dtype=torch.long), sample_from_probs(p[:, 0], u_res), Verdict(accept=live)
    if type(rule) is ExactAcceptance:  # one fused pass (a Triton kernel on CUDA)
        a, extra = verify_exact(p, q, drafts, live, valid, u_acc, u_res)
        return a, extra, Verdict(accept=live)
    if valid is not None:
        q = q * valid[..., None]  # an invalid slot resamples from residual(p, 0) = p
    verdict = rule.verify(p[:, :J], q, drafts, u_acc)
    if verdict.residual is None:
        a, extra = accept_prefix_and_draw(p, q, verdict.accept & live, u_res, rule.residual)
        return a, extra, verdict
    # the rule computed every slot's residual (lossy rules)
    a = (verdict.accept & live).long().cumprod(dim=1).sum(dim=1)
    res = torch.where(live[..., None], verdict.residual, p[:, :J])
    rows = torch.arange(p.shape[0], device=p.device)
    return a, sample_from_probs(torch.cat([res, p[:, J:]], dim=1)[rows, a], u_res), verdict


def write_where(buffer: torch.Tensor, index: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> None:
    """``buffer[b, index[b, i]] = values[b, i]`` where ``mask[b, i]``, for per-position buffers ``[B, P]`` or
    ``[B, P, V]``; masked-out entries write back what is there, so repeated (padding) indices are harmless."""
    if buffer.dim() == 3:
        index, mask = index[..., None].expand(-1, -1, buffer.shape[-1]), mask[..., None]
    buffer.scatter_(1, index, torch.where(mask, values, buffer.gather(1, index)))


class Committer:
    def __init__(self, rule, batch: int, num_tokens: int, buffer_len: int, device):
        self.rule = rule
        self.N = num_tokens
        self.rows = torch.arange(batch, device=device)
        self.seq = torch.zeros(batch, buffer_len, dtype=torch.long, device=device)  # committed, then drafts
        self.token_step = torch.zeros(batch, buffer_len, dtype=torch.long, device=device)
        self.relaxed = torch.zeros(batch, buffer_len, dtype=torch.bool, device=device)
        self.tv = torch.zeros(batch, dtype=torch.float64, device=device)  # per-row sum over decided slots
        self.decided = torch.zeros(batch, dtype=torch.long, device=device)
        self.proposed = torch.zeros(batch, dtype=torch.long, device=device)  # drafts inside the grid
        self.accepted = torch.zeros(batch, dtype=torch.long, device=device)

    def commit(self, p, proposal, u_acc, u_res, n, step: int):
        """Verify ``proposal`` (drafts ``[B, J]`` for tokens ``n .. n+J-1``, drawn from ``q [B, J, V]``)
        against the target's ``p [B, J+1, V]`` for tokens ``n .. n+J``.

        Returns ``(k, a)``: tokens committed and drafts accepted per row (``k = a + 1`` unless the grid
        ended). ``self.seq`` then holds the committed tokens at ``n .. n+k-1``.
        """
        drafts = proposal.tokens
        J = drafts.shape[1]
        slots = torch.arange(J + 1, device=p.device)
        live = (n[:, None] + slots[:J]) < self.N
        if proposal.valid is not None:
            live = live & proposal.valid
        a, extra, verdict = verify_window(self.rule, p, drafts, proposal.q, live, proposal.valid, u_acc, u_res)
        k = a + ((n + a) < self.N).long()
        self.proposed += live.sum(1)
        self.accepted += a
        values = torch.where(slots == a[:, None], extra[:, None], F.pad(drafts, (0, 1)))
        pos = n[:, None] + slots
        commit = slots[None] < k[:, None]
        write_where(self.seq, pos, values, commit)
        write_where(self.token_step, pos, torch.full_like(values, step), commit)
        if verdict.relaxed is not None:
            write_where(self.relaxed, pos, F.pad(verdict.relaxed, (0, 1)), slots[None] < a[:, None])
        if verdict.tv is not None:  # the slots this step decided: the accepted ones and the first rejection
            decided = (slots[None, :J] <= a[:, None]) & live
            self.tv += (verdict.tv * decided).sum(1)
            self.decided += decided.sum(1)
        return k, a

    def commit_tree(self, p, proposal, u_acc, u_res, n, step: int):
        """:meth:`commit` for a tree proposal (:func:`.tree.verify_tree`, the recursive rule over siblings with this
        committer's acceptance rule at every stage): ``p [B, n, V]`` per node. Returns ``(k, a, path)``."""
        from .tree import verify_tree

        tree = proposal.tree
        D = tree.max_depth
        root = self.seq.gather(1, (n - 1)[:, None])
        tokens = torch.cat([root, proposal.tokens], dim=1)
        q = torch.cat([torch.zeros_like(p[:, :1]), proposal.q], dim=1)
        valid = torch.ones_like(tokens, dtype=torch.bool) if proposal.valid is None else F.pad(proposal.valid, (1, 0),
                                                                                               value=True)
        levels = torch.arange(D, device=p.device)
        live = (n[:, None] + levels) < self.N
        u = F.pad(u_acc, (1, 0), value=1.0)
        a, extra, path, tv = verify_tree(p, tokens, q, valid, tree, u, u_res, live, self.rule)
        k = a + ((n + a) < self.N).long()
        # depths verified: inside the grid and, for an adaptive tree, reached by a valid node
        levels = torch.minimum(live.sum(1), (valid * tree.tensors(p.device)["depth"]).amax(1))
        if tv is not None:  # a relaxed rule: the stages' TV bounds, per decided depth (the accepted ones + the stop)
            self.tv += tv
            self.decided += torch.minimum(a + 1, levels)
        self.proposed += torch.minimum(a + 1, levels)
        self.accepted += a
        slots = torch.arange(D + 1, device=p.device)
        drafts = tokens.gather(1, path.clamp(min=0))
        values = torch.where(slots == a[:, None], extra[:, None], F.pad(drafts, (0, 1)))
        pos = n[:, None] + slots
        commit = slots[None] < k[:, None]
        write_where(self.seq, pos, values, commit)
        write_where(self.token_step, pos, torch.full_like(values, step), commit)
        return k, a, path.clamp(min=0)

    def tokens(self) -> torch.Tensor:
        return self.seq[:, : self.N].clone()

    def fill_stats(self, stats: Stats) -> None:
        stats.tokens = torch.full((self.seq.shape[0],), self.N)
        stats.token_step = self.token_step[:, : self.N].cpu()
        stats.draft.drafts_proposed = int(self.proposed.sum())
        stats.draft.drafts_accepted = int(self.accepted.sum())
        if not getattr(self.rule, "lossless", True) and getattr(self.rule, "reports_tv", True):
            stats.relaxed = self.relaxed[:, : self.N].cpu()
            stats.tv_bound = self.tv.cpu()
            stats.draft.slots_decided = int(self.decided.sum())
