"""The model side of every token sampler: CFG batching, the static cache, and final probabilities.

A :class:`TokenSession` wraps a :class:`~vargen.models.base.TokenModel` for one sampling call:

* CFG is one batched forward of ``[cond; uncond]`` rows that always carry the same tokens
  (the caller passes ``[B, n]`` tokens; the session feeds them to both halves);
* the cache is allocated once for ``num_tokens + extra`` positions, so fixed-shape windows that run
  past the end of the grid need no special case (their outputs are simply never used);
* ``probs(logits, first_token)`` applies the logits chain once: CFG (with LlamaGen's interval),
  temperature, top-k, top-p, softmax. Every sampler and acceptance rule works on these.
"""
from __future__ import annotations

import torch

from .base import SamplingConfig, cfg_mix, logits_to_probs


class TokenSession:
    def __init__(self, model, cond, config: SamplingConfig, extra_positions: int = 0, emb_mask=None):
        self.model = model
        self.config = config
        self.num_tokens = model.num_tokens
        self.use_cfg = config.uses_cfg
        check = getattr(model, "check_cond", None)
        if check is not None:
            check(cond)
        self.batch = cond.shape[0]
        if self.use_cfg:
            cond = torch.cat([cond, model.null_cond(cond)])
            if emb_mask is not None:
                emb_mask = torch.cat([emb_mask, emb_mask])
        self.cond = cond
        self.emb_mask = emb_mask
        self.cache = model.new_cache(cond.shape[0], self.num_tokens + extra_positions)
        self.forward_passes = 0

    @property
    def device(self) -> torch.device:
        return self.cond.device

    def prefill(self) -> torch.Tensor:
        """Logits ``[B(*2), V]`` for token 0."""
        self.forward_passes += 1
        if self.emb_mask is not None:
            return self.model.prefill(self.cond, self.cache, emb_mask=self.emb_mask)
        return self.model.prefill(self.cond, self.cache)

    def forward(self, tokens: torch.Tensor, start: torch.Tensor, **kw):
        """Feed ``tokens [B, n]`` at per-row token positions ``start [B]`` (both CFG halves)."""
        self.forward_passes += 1
        if self.use_cfg:
            tokens, start = torch.cat([tokens, tokens]), torch.cat([start, start])
        return self.model(tokens, start, self.cache, **kw)

    def probs(self, logits: torch.Tensor, first_token: torch.Tensor | int) -> torch.Tensor:
        """Final probabilities ``[B, n, V]`` for logits ``[B(*2), n, V]`` predicting tokens
        ``first_token .. first_token+n-1`` (``first_token`` per row ``[B]`` or an int)."""
        c = self.config
        if self.use_cfg:
            cond, _ = logits.chunk(2, dim=0)
            mixed = cfg_mix(logits, c.cfg_scale)
            if c.cfg_interval is not None and c.cfg_interval >= 0:
                n = logits.shape[1]
                tok = torch.as_tensor(first_token, device=logits.device).reshape(-1, 1) + torch.arange(
                    n, device=logits.device
                )
                guided = (tok <= c.cfg_interval + 1)[..., None]  # LlamaGen: step i > interval -> cond only
                mixed = torch.where(guided, mixed, cond)
            logits = mixed
        return logits_to_probs(logits, c.temperature, c.top_k, c.top_p)
