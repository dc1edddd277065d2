"""Speculative Jacobi Decoding (Teng et al., ICLR 2025, arXiv 2410.01699), lossless and vectorised.

Each forward pass feeds a window ``[x_{n-1}, d_n, ..., d_{n+W-2}]`` (the last committed token and
``W-1`` drafts) and yields the target's final probabilities ``p`` for tokens ``n .. n+W-1``. Draft
``d_{n+j}`` is verified against ``p`` for token ``n+j`` with the truthful proposal ``q`` it was drawn
from (speculative sampling; research/sjd_gsd.md §1.4-1.5). The accepted prefix is committed, the first
rejected slot is resampled from ``norm(max(0, p - q))`` (or, after a fully accepted window, the
bonus token is drawn from ``p``), and the window slides by the number of committed tokens ``k``:
the pass's own predictions for the uncommitted tokens become the next drafts (the Jacobi update,
with ``q = p``) and ``k - 1`` fresh drafts are appended at the tail.

Fixes relative to the official code (research/sjd_gsd.md §6): ``q`` of a random draft is the uniform
distribution it was drawn from (P2); the residual is arithmetic on final probabilities (P5); spatial
initialisation uses the model's real grid, vertical included, and "sample" really samples (P4);
rows advance independently with per-row pointers into a static cache (P7, P10); one generator
feeds everything (P11); verification has no Python loop and one host sync per step (P1).

``coupled=True`` is MC-SJD (arXiv 2510.24211): a re-drafted position keeps its previous draft with
probability ``min(1, q_t(x)/q_{t-1}(x))``, else draws from ``norm(max(0, q_t - q_{t-1}))``; the new
draft's marginal is still ``q_t``, so the sampler stays lossless, and drafts stop churning.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .acceptance import get_rule, residual
from .ar import resolve_config
from .base import GenerationOutput, RowRandom, SamplingConfig, Stats, StepTimer, sample_from_probs
from .session import TokenSession
from .verify import Committer

INITS = ("random", "horizontal", "vertical", "horizontal_sample", "vertical_sample")


class JacobiSampler:
    """SJD: the Jacobi proposer (previous-iteration drafts) times an acceptance rule.

    window: W, tokens fed per forward (the last committed token + W-1 drafts); 1 is plain AR.
    init: how fresh tail drafts are made -- "random" (uniform, q uniform), "horizontal"/"vertical"
        (repeat the left / upper neighbour, q one-hot), "horizontal_sample"/"vertical_sample" (draw
        from the neighbour's predicted distribution truncated to its ``sample_top`` most likely tokens).
    coupled: MC-SJD maximal coupling of re-drafted positions with their previous drafts.
    acceptance: "exact" (lossless) or any rule of :mod:`vargen.samplers.acceptance`, with its options.
    """

    name = "sjd"

    def __init__(self, window: int = 16, init: str = "random", coupled: bool = False, acceptance="exact",
                 sample_top: int = 32, **rule_options):
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
        if sample_top < 1:
            raise ValueError(f"sample_top must be >= 1, got {sample_top}")
        self.window = window
        self.init = init
        self.coupled = coupled
        self.sample_top = sample_top
        self.rule = get_rule(acceptance, **rule_options)

    # -- fresh drafts -------------------------------------------------------------------------------
    def _fresh(self, seq, first_fresh, positions, u, grid, V, nb):
        """Tokens and truthful q for fresh drafts at ``positions [B, J]``.

        ``seq [B, L]`` holds committed tokens and carried drafts at every position < ``first_fresh``.
        """
        B, J = positions.shape
        T, gh, gw = grid
        rand_tok = (u * V).long().clamp_(max=V - 1)
        uniform = torch.full((B, J, V), 1.0 / V, device=seq.device)
        if self.init == "random" or J == 0:
            return rand_tok, uniform
        if self.init.startswith("horizontal"):
            src = torch.minimum(positions - 1, first_fresh[:, None] - 1)
            ok = (src >= 0) & (src // gw == positions // gw)
        else:  # vertical: the cell above, in the same frame
            src = positions - gw
            ok = (positions % (gh * gw) >= gw) & (src < first_fresh[:, None])
        src = src.clamp(min=0)
        if not self.init.endswith("_sample"):
            tok = torch.where(ok, seq.gather(1, src), rand_tok)
            q = torch.where(ok[..., None], F.one_hot(tok, V).to(uniform.dtype), uniform)
            return tok, q
        nb_idx, nb_p = nb
        idx = nb_idx.gather(1, src[..., None].expand(-1, -1, nb_idx.shape[-1]))
        pk = nb_p.gather(1, src[..., None].expand(-1, -1, nb_p.shape[-1]))
        pk = pk / pk.sum(-1, keepdim=True)
        pick = idx.gather(-1, sample_from_probs(pk, u)[..., None]).squeeze(-1)
        tok = torch.where(ok, pick, rand_tok)
        q_nb = torch.zeros(B, J, V, device=seq.device).scatter_(-1, idx, pk)
        return tok, torch.where(ok[..., None], q_nb, uniform)

    # -- the loop -------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model, cond, config: SamplingConfig | None = None, generator=None, emb_mask=None
               ) -> GenerationOutput:
        config = resolve_config(model, config)
        W = self.window
        self.rule.prepare(model)
        session = TokenSession(model, cond, config, extra_positions=W, emb_mask=emb_mask)
        B, N, dev, V = session.batch, session.num_tokens, session.device, model.vocab_size
        grid = model.grid
        rng = RowRandom(generator, B, dev)
        slots = torch.arange(W, device=dev)
        committer = Committer(self.rule, B, N, N + 2 * W, dev)
        seq = committer.seq  # committed tokens, then the current drafts
        want_nb = self.init.endswith("_sample")
        K = min(self.sample_top, V)
        nb = (torch.zeros(B, N + 2 * W, K, dtype=torch.long, device=dev),
              torch.zeros(B, N + 2 * W, K, device=dev)) if want_nb else None
        stats = Stats()

        def remember(p, first):  # neighbour distributions for the *_sample inits
            if want_nb:
                top = p.topk(K, dim=-1)
                pos = (first[:, None] + torch.arange(p.shape[1], device=dev))[..., None].expand(-1, -1, K)
                nb[0].scatter_(1, pos, top.indices)
                nb[1].scatter_(1, pos, top.values)

        with StepTimer(dev) as timer:
            # token 0 comes from the prefill, as in AR
            p0 = session.probs(session.prefill()[:, None], 0)
            seq[:, 0] = sample_from_probs(p0[:, 0], rng.rand(1)[:, 0])
            remember(p0, torch.zeros(B, dtype=torch.long, device=dev))
            n = torch.ones(B, dtype=torch.long, device=dev)
            stats.accepted.append(torch.ones(B, dtype=torch.long, device=dev))
            drafts, q = self._fresh(seq, n, n[:, None] + slots[: W - 1], rng.rand(W - 1), grid, V, nb)
            step = 1
            while True:
                lo, hi = torch.stack([n.min(), n.max()]).tolist()  # the one host sync per step
                if lo >= N:
                    break
                u = rng.rand(4 * W - 1)
                u_acc, u_res, u_y, u_keep, u_init = u.split([W - 1, 1, W, W, W - 1], dim=1)
                inputs = torch.cat([seq.gather(1, (n - 1)[:, None]), drafts], dim=1)
                logits = session.forward(inputs, n - 1, kv_len=hi + W - 1)
                p = session.probs(logits, n)  # [B, W, V] for tokens n..n+W-1
                remember(p, n)

                # verify all drafts at once; commit the accepted prefix + one residual/bonus token
                k, _ = committer.commit(p, q, drafts, u_acc, u_res[:, 0], n, step)
                stats.accepted.append(k)

                # Jacobi update: this pass's predictions for tokens n..n+W-1 become candidate drafts
                y = sample_from_probs(p, u_y)
                if self.coupled:  # MC-SJD: keep the previous draft when the coupling allows it
                    q_pad = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)  # token n+W-1 had no draft
                    old = F.pad(drafts, (0, 1))
                    p_old = p.gather(-1, old[..., None]).squeeze(-1).double()
                    q_old = q_pad.gather(-1, old[..., None]).squeeze(-1).double()
                    keep = (u_keep * q_old < p_old) & (slots[None] < W - 1)
                    moved = sample_from_probs(residual(p, q_pad), u_y)
                    y = torch.where(keep, old, moved)
                # carried drafts sit at positions n+k..n+W-1; write them so fresh inits can see them
                pos = n[:, None] + slots
                carry = slots[None] >= k[:, None]
                seq.scatter_(1, pos, torch.where(carry, y, seq.gather(1, pos)))
                first_fresh = n + W
                fresh_pos = first_fresh[:, None] + slots[: W - 1]
                f_tok, f_q = self._fresh(seq, first_fresh, fresh_pos, u_init, grid, V, nb)
                # next window: drafts for tokens n+k .. n+k+W-2 out of [carried (W) ; fresh (W-1)]
                cand_tok = torch.cat([y, f_tok], dim=1)
                cand_q = torch.cat([p, f_q], dim=1)
                pick = k[:, None] + slots[: W - 1]
                drafts = cand_tok.gather(1, pick)
                q = cand_q.gather(1, pick[..., None].expand(-1, -1, V))
                n = n + k
                step += 1
        stats.forward_passes = session.forward_passes
        committer.fill_stats(stats)
        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        stats.extra["window"] = W
        stats.extra["init"] = self.init
        stats.extra["coupled"] = self.coupled
        stats.extra["acceptance"] = self.rule.name
        return GenerationOutput(tokens=committer.tokens(), stats=stats)
