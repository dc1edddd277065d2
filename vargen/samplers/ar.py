"""Plain autoregressive sampling: the reference loop every fast sampler is tested against."""
from __future__ import annotations

import torch

from .base import GenerationOutput, RowRandom, SamplingConfig, Stats, StepTimer, sample_from_probs
from .session import TokenSession


def resolve_config(model, config: SamplingConfig | None) -> SamplingConfig:
    """Family defaults filled in and validated against the model (before any work)."""
    config = (config or SamplingConfig()).with_defaults(getattr(model, "default_sampling", SamplingConfig()))
    config.validate(vocab_size=model.vocab_size, conditional=getattr(model, "conditional", True))
    return config


class ARSampler:
    """One token per forward pass, raster order."""

    name = "ar"

    @torch.no_grad()
    def sample(self, model, cond, config: SamplingConfig | None = None, generator=None, emb_mask=None
               ) -> GenerationOutput:
        config = resolve_config(model, config)
        session = TokenSession(model, cond, config, emb_mask=emb_mask)
        B, N, dev = session.batch, session.num_tokens, session.device
        rng = RowRandom(generator, B, dev)
        tokens = torch.zeros(B, N, dtype=torch.long, device=dev)
        stats = Stats()
        with StepTimer(dev) as timer:
            probs = session.probs(session.prefill()[:, None], 0)[:, 0]
            for t in range(N):
                tokens[:, t] = sample_from_probs(probs, rng.rand(1)[:, 0])
                stats.accepted.append(torch.ones(B, dtype=torch.long, device=dev))
                if t + 1 < N:
                    logits = session.forward(tokens[:, t : t + 1], torch.full((B,), t, device=dev), kv_len=t + 1)
                    probs = session.probs(logits, t + 1)[:, 0]
        stats.forward_passes = session.forward_passes
        stats.tokens = torch.full((B,), N)
        stats.token_step = torch.arange(N).expand(B, N).clone()
        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        return GenerationOutput(tokens=tokens, stats=stats)
