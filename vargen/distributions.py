"""Distributions over a vocabulary, the arithmetic every sampler and every kernel's reference shares.

The logits chain is applied once, in this order, to produce the *final* probabilities every sampler (and every
acceptance rule) works with:

    CFG mix (raw logits)  ->  / temperature  ->  top-k  ->  top-p  ->  softmax

as LlamaGen's ``sample`` / ``logits_to_probs`` (Sun et al. 2024). Draws are inverse-CDF on caller-supplied
uniforms. Speculative sampling (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023) accepts a draft ``d ~ q``
when ``u q(d) < p(d)`` and otherwise draws from the residual ``norm(max(0, p - q))``; residuals are plain
arithmetic on the final probabilities, the chain is never re-applied to one.

A leaf module (torch only): :mod:`vargen.kernels` tests its kernels against these functions, and
:mod:`vargen.samplers` samples with them.
"""
from __future__ import annotations

import torch

__all__ = ["cfg_mix", "filter_logits", "logits_to_probs", "sample_from_probs", "exact_accept", "residual",
           "accept_prefix_and_draw"]


def cfg_mix(logits: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Split a ``[2B, ...]`` batch laid out ``[cond; uncond]`` and mix it on raw logits.

    ``scale`` may be a tensor broadcastable to the mixed logits (per-position guidance, e.g. a
    cfg_interval that switches off inside a verification window); a scale of 1 returns ``cond``.
    """
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then top-p over the last dim; removed entries become -inf, kept ones are unchanged."""
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum > top_p
        # shift right: the token that crosses top_p is kept, and so is the first token
        remove_sorted = torch.cat([torch.zeros_like(remove_sorted[..., :1]), remove_sorted[..., :-1]], dim=-1)
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Final float32 probabilities. ``temperature == 0`` gives a one-hot on the argmax (greedy)."""
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    logits = logits / max(temperature, 1e-5)
    return filter_logits(logits, top_k, top_p).softmax(dim=-1)


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per distribution over the last dim, given uniforms ``u`` of shape ``probs.shape[:-1]``.

    Drawing from caller-supplied uniforms keeps the number of generator calls independent of the
    vocabulary and of which rows are active, so that a row's randomness never depends on the other
    rows of its batch (see :class:`vargen.samplers.base.RowRandom`).
    """
    lead = probs.shape[:-1]
    flat = probs.reshape(-1, probs.shape[-1]).double()
    cdf = flat.cumsum(dim=-1)
    target = u.reshape(-1, 1).double().to(cdf.device) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, target, right=True)
    # u * total can round onto the end of the CDF: fall back to the last token that has mass
    last_with_mass = (flat > 0).long().cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    return torch.minimum(idx, last_with_mass).reshape(lead)


def exact_accept(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Speculative sampling's test per slot: ``u < min(1, p(d) / q(d))``, as ``u q(d) < p(d)`` in float64
    (``q(d) > 0`` for a draft drawn from ``q``). ``p, q [..., V]``; drafts, u ``[...]``."""
    pd = p.gather(-1, drafts[..., None]).squeeze(-1).double()
    qd = q.gather(-1, drafts[..., None]).squeeze(-1).double()
    return u * qd < pd


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))`` over the last dim; where it is empty (``p == q``), ``p`` itself."""
    r = (p - q).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp_min(1e-30), p)


def accept_prefix_and_draw(p, q, accept, u_res, residual_fn=residual):
    """``(a, token)`` per row: ``a`` the accepted prefix of ``accept [B, J]``, ``token`` drawn with ``u_res`` from
    ``residual_fn(p_a, q_a)`` (``q_J = 0``: after a fully accepted window, the bonus token from ``p_J``)."""
    rows = torch.arange(p.shape[0], device=p.device)
    a = accept.long().cumprod(dim=1).sum(dim=1)
    q_pad = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)
    return a, sample_from_probs(residual_fn(p[rows, a], q_pad[rows, a]), u_res)
