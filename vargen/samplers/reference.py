"""The reference AR loop: teacher-forcing logits of the whole prefix, no cache, one token at a time.

Short on purpose, like nanoGPT's ``generate``: every fast path (the static-cache loop, speculative
proposers, compiled decode) is tested against it token for token. It draws its randomness exactly as
the fast AR sampler does (one uniform per token from the caller's generator, inverse-CDF sampling), so
for the same seed the two give the same image.
"""
from __future__ import annotations

import torch

from .base import GenerationOutput, RowRandom, SamplingConfig, Stats, cfg_mix, logits_to_probs, sample_from_probs
from .session import resolve_config

__all__ = ["reference_sample"]


@torch.no_grad()
def reference_sample(model, cond, config: SamplingConfig | None = None, generator=None) -> GenerationOutput:
    """AR sampling from ``model.logits(cond, tokens)`` (teacher forcing; entry ``t`` predicts token ``t``)."""
    config = resolve_config(model, config)
    B, N = model.check_cond(cond), model.num_tokens
    guided = config.uses_cfg
    rows = model.guidance_cond(cond) if guided else cond
    rng = RowRandom(generator, B, model.device)
    tokens = torch.zeros(B, N, dtype=torch.long, device=model.device)  # entries >= t are never read at step t
    for t in range(N):
        logits = model.logits(rows, torch.cat([tokens, tokens]) if guided else tokens)[:, t]
        if guided:
            cond_logits = logits[:B]
            logits = cfg_mix(logits, config.cfg_scale)
            if 0 <= config.cfg_interval < t - 1:  # LlamaGen's interval: token t is guided while t <= interval + 1
                logits = cond_logits
        probs = logits_to_probs(logits, config.temperature, config.top_k, config.top_p)
        tokens[:, t] = sample_from_probs(probs, rng.rand(1)[:, 0])
    stats = Stats(forward_passes=N, tokens=torch.full((B,), N), accepted=[torch.ones(B, dtype=torch.long)] * N)
    return GenerationOutput(tokens=tokens, stats=stats)
