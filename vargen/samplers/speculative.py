"""Draft-based speculative decoding (Leviathan et al. 2023; Chen et al. 2023; EAGLE, Li et al. 2024).

Each step a drafter proposes a chain of ``gamma`` tokens ``d_1..d_gamma``, each drawn from its own
(guided, warped) distribution ``q``; the target scores ``[x_{n-1}, d_1..d_gamma]`` in one forward over
its static cache and yields ``p`` for tokens ``n..n+gamma``. The acceptance rule decides every draft at
once, the accepted prefix is committed with one residual (or, after a fully accepted chain, bonus)
token, and each row moves its own pointer: rows of a batch accept different lengths, nothing is copied.

Proposers (``draft=``):
* a draft *model*: any :class:`~vargen.models.base.TokenModel` with the target's vocabulary and grid
  (e.g. a smaller LlamaGen GPT); it gets its own cache and the same CFG batching and logits chain;
* a draft *head* (:class:`~vargen.models.draft_head.DraftHead`, or a folder written by
  ``vargen train draft-head``): EAGLE's one-layer feature predictor on the target's final-norm hidden
  states; with CFG it runs on the cond and uncond halves, fed each half's own features, and its logits
  are guided with the same scale (research/lantern.md §2.5).

Cache bookkeeping, per row with ``n`` committed tokens: the target cache holds tokens ``< n-1`` (the last
committed token is fed first in the next window, as in SJD). The draft model re-feeds the two last
committed tokens ``[x_{n-2}, x_{n-1}]`` each step -- at most one of them is new to its cache and
re-writing an identical entry is a no-op, so the chain needs no per-row ragged input. The head re-feeds
the last ``gamma + 1`` (feature, token) pairs for the same reason. Step 1 is one plain target step (the
head needs the target's feature of token 0), so drafting starts at ``n = 2``.

With ``acceptance="exact"`` the sampler is lossless for any drafter (tests/test_speculative.py).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .acceptance import get_rule
from .ar import resolve_config
from .base import GenerationOutput, RowRandom, SamplingConfig, Stats, StepTimer, sample_from_probs
from .session import TokenSession
from .verify import Committer


class _ModelDrafter:
    """A smaller TokenModel as drafter (its own cache, same CFG and logits chain)."""

    def __init__(self, draft, target, cond, config, gamma, emb_mask):
        if draft.vocab_size != target.vocab_size or tuple(draft.grid) != tuple(target.grid):
            raise ValueError(f"draft model (vocab {draft.vocab_size}, grid {tuple(draft.grid)}) does not match the "
                             f"target (vocab {target.vocab_size}, grid {tuple(target.grid)})")
        self.session = TokenSession(draft, cond, config, extra_positions=gamma + 2, emb_mask=emb_mask)
        self.wants_hidden = False

    @property
    def passes(self) -> int:
        return self.session.forward_passes

    def start(self, hidden) -> None:
        self.session.prefill()  # the condition prefix; its prediction of token 0 is not used

    def observe(self, hidden, start) -> None:
        return None

    def catch_up(self, seq, n) -> torch.Tensor:
        """Logits ``[B(*2), V]`` for token ``n`` after feeding ``x_{n-2}, x_{n-1}`` (n >= 2)."""
        pos = (n - 2)[:, None] + torch.arange(2, device=n.device)
        return self.session.forward(seq.gather(1, pos), n - 2)[:, -1]

    def step(self, token, position) -> torch.Tensor:
        """Feed draft ``token [B]`` at ``position [B]``; logits for the next token."""
        return self.session.forward(token[:, None], position)[:, 0]


class _HeadDrafter:
    """An EAGLE draft head on the target's features (research/lantern.md §2.1)."""

    def __init__(self, head, target, session, gamma):
        head.check_target(target)
        head.to(device=target.device, dtype=target.dtype).eval()
        self.head, self.target, self.gamma, self.use_cfg = head, target, gamma, session.use_cfg
        rows = session.cond.shape[0]
        length = target.num_tokens + 2 * gamma + 4
        self.cache = head.new_cache(rows, length)
        self.features = torch.zeros(rows, length, target.config.dim, dtype=target.dtype, device=target.device)
        self.last = None  # predicted feature of the newest chain position
        self.passes = 0
        self.wants_hidden = True

    def _rows(self, x):
        return torch.cat([x, x]) if self.use_cfg else x

    def start(self, hidden) -> None:
        self.observe(hidden, torch.zeros(hidden.shape[0] // (2 if self.use_cfg else 1), dtype=torch.long,
                                         device=hidden.device))

    def observe(self, hidden, start) -> None:
        """Store the target's features ``hidden [B(*2), m, h]`` of tokens ``start .. start+m-1``."""
        pos = self._rows(start)[:, None] + torch.arange(hidden.shape[1], device=hidden.device)
        self.features.scatter_(1, pos[..., None].expand(-1, -1, hidden.shape[-1]), hidden.to(self.features.dtype))

    def _run(self, feats, tokens, t):
        self.passes += 1
        logits, h = self.head(self.target, feats, self._rows(tokens), self._rows(t), self.cache)
        return logits, h

    def catch_up(self, seq, n) -> torch.Tensor:
        """Re-feed pairs ``(f_t, x_{t+1})`` for ``t`` up to ``n-2`` (true features); logits for token ``n``."""
        start = (n - 2 - self.gamma).clamp(min=0)
        t = start[:, None] + torch.arange(self.gamma + 1, device=n.device)
        feats = self.features.gather(1, self._rows(t)[..., None].expand(-1, -1, self.features.shape[-1]))
        logits, h = self._run(feats, seq.gather(1, t + 1), t)
        idx = self._rows(n - 2 - start)
        rows = torch.arange(idx.shape[0], device=n.device)
        self.last = h[rows, idx][:, None]
        return logits[rows, idx]

    def step(self, token, position) -> torch.Tensor:
        """Pair ``(f_hat_{position-1}, token at position)``: logits for token ``position + 1``."""
        logits, self.last = self._run(self.last, token[:, None], (position - 1)[:, None])
        return logits[:, 0]


def _as_drafter_source(draft):
    if isinstance(draft, (str, Path)):
        from ..models.draft_head import load_draft_head

        return load_draft_head(draft)
    return draft


class SpeculativeSampler:
    """Draft-model / draft-head speculative decoding times any acceptance rule.

    draft: a TokenModel (draft model), a ``DraftHead``, or a head folder.
    gamma: chain length (drafts per step, >= 1).
    acceptance: "exact" (lossless), "lantern", "gsd" or a rule instance, with the rule's options
        (``delta=``, ``lam=``, ``k=``, ``group_size=``, ``codebook=``, ...).
    """

    name = "sd"

    def __init__(self, draft=None, gamma: int = 4, acceptance="exact", **rule_options):
        if not isinstance(gamma, int) or gamma < 1:
            raise ValueError(f"gamma must be an integer >= 1, got {gamma!r}")
        if draft is None:
            raise ValueError("speculative decoding needs draft=<draft TokenModel | DraftHead | draft head folder>")
        self.draft = _as_drafter_source(draft)
        self.gamma = gamma
        self.rule = get_rule(acceptance, **rule_options)

    def _drafter(self, model, cond, config, session, emb_mask):
        from ..models.draft_head import DraftHead

        if isinstance(self.draft, DraftHead):
            return _HeadDrafter(self.draft, model, session, self.gamma)
        return _ModelDrafter(self.draft, model, cond, config, self.gamma, emb_mask)

    @torch.no_grad()
    def sample(self, model, cond, config: SamplingConfig | None = None, generator=None, emb_mask=None
               ) -> GenerationOutput:
        config = resolve_config(model, config)
        G = self.gamma
        self.rule.prepare(model)
        session = TokenSession(model, cond, config, extra_positions=G + 2, emb_mask=emb_mask)
        drafter = self._drafter(model, cond, config, session, emb_mask)
        kw = {"return_hidden": True} if drafter.wants_hidden else {}
        B, N, dev, V = session.batch, session.num_tokens, session.device, model.vocab_size
        rng = RowRandom(generator, B, dev)
        slots = torch.arange(G + 1, device=dev)
        committer = Committer(self.rule, B, N, N + 2 * G + 4, dev)
        seq, token_step = committer.seq, committer.token_step
        proposed = torch.zeros(B, dtype=torch.long, device=dev)
        accepted_drafts = torch.zeros(B, dtype=torch.long, device=dev)
        stats = Stats()

        with StepTimer(dev) as timer:
            # token 0 from the prefill; token 1 from one plain target step (gives the head f_0)
            p0 = session.probs(session.prefill()[:, None], 0)
            seq[:, 0] = sample_from_probs(p0[:, 0], rng.rand(1)[:, 0])
            stats.accepted.append(torch.ones(B, dtype=torch.long, device=dev))
            n = torch.ones(B, dtype=torch.long, device=dev)
            if N > 1:
                out = session.forward(seq[:, :1], torch.zeros(B, dtype=torch.long, device=dev), **kw)
                logits, hidden = out if drafter.wants_hidden else (out, None)
                seq[:, 1] = sample_from_probs(session.probs(logits, 1)[:, 0], rng.rand(1)[:, 0])
                token_step[:, 1] = 1
                stats.accepted.append(torch.ones(B, dtype=torch.long, device=dev))
                drafter.start(hidden)
                n = n + 1
            step = 2
            while True:
                lo, hi = torch.stack([n.min(), n.max()]).tolist()  # the one host sync per step
                if lo >= N:
                    break
                u_draft, u_acc, u_res = rng.rand(2 * G + 1).split([G, G, 1], dim=1)
                # the drafter's chain: gamma drafts, each truthfully drawn from its q
                logits_d = drafter.catch_up(seq, n)
                drafts, qs = [], []
                for i in range(G):
                    q_i = session.probs(logits_d[:, None], n + i)[:, 0]
                    drafts.append(sample_from_probs(q_i, u_draft[:, i]))
                    qs.append(q_i)
                    if i + 1 < G:
                        logits_d = drafter.step(drafts[-1], n + i)
                d, q = torch.stack(drafts, 1), torch.stack(qs, 1)

                # one target forward verifies the chain; p for tokens n .. n+G
                out = session.forward(torch.cat([seq.gather(1, (n - 1)[:, None]), d], 1), n - 1, kv_len=hi + G, **kw)
                logits, hidden = out if drafter.wants_hidden else (out, None)
                p = session.probs(logits, n)
                if hidden is not None:
                    drafter.observe(hidden, n - 1)
                k, a = committer.commit(p, q, d, u_acc, u_res[:, 0], n, step)
                proposed += ((n[:, None] + slots[:G]) < N).sum(1)
                accepted_drafts += a
                stats.accepted.append(k)
                n = n + k
                step += 1
        stats.forward_passes = session.forward_passes
        stats.draft_forward_passes = drafter.passes
        committer.fill_stats(stats)
        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        stats.extra["gamma"] = G
        stats.extra["acceptance"] = self.rule.name
        stats.extra["drafter"] = "head" if drafter.wants_hidden else "model"
        stats.extra["draft_acceptance_rate"] = float(accepted_drafts.sum()) / max(1, int(proposed.sum()))
        return GenerationOutput(tokens=committer.tokens(), stats=stats)
