"""The logits chain on ``[B, n, V]`` in one kernel: CFG mix, temperature, top-k, top-p and softmax.

Top-k keeps the logits ``>=`` the k-th largest value and top-p keeps a token when the probability of the tokens
above it is ``<= top_p`` (the token that crosses ``top_p`` is kept, as in the reference's shifted cumulative
sum). Both thresholds are found without sorting: a bisection over the order-preserving integer image of the
float32 values (32 steps, each a count or a sum over the row held in registers). Ties between equal logits are
kept together, where a sort-based top-p may split them.
"""
from __future__ import annotations

import functools

import torch

from ..distributions import cfg_mix, logits_to_probs

__all__ = ["chain_probs", "chain_probs_reference"]


def chain_probs_reference(logits, cfg_scale: float | None, temperature: float, top_k: int, top_p: float):
    """Final probabilities ``[B, n, V]`` from logits ``[rows, n, V]`` (``rows = 2B`` ``[cond; uncond]`` when
    ``cfg_scale`` is given)."""
    if cfg_scale is not None:
        logits = cfg_mix(logits, cfg_scale)
    return logits_to_probs(logits, temperature, top_k, top_p)


def chain_probs(logits, cfg_scale: float | None, temperature: float, top_k: int, top_p: float):
    """:func:`chain_probs_reference`, by the Triton kernel for float32 CUDA logits (greedy and other dtypes:
    the reference)."""
    from . import use_triton

    if temperature == 0 or logits.dtype != torch.float32 or not use_triton(logits):
        return chain_probs_reference(logits, cfg_scale, temperature, top_k, top_p)
    return chain_probs_triton(logits, cfg_scale, temperature, top_k, top_p)


def chain_probs_triton(logits, cfg_scale, temperature, top_k, top_p):
    import triton

    rows, n, V = logits.shape
    B = rows // 2 if cfg_scale is not None else rows
    logits = logits.contiguous()
    out = torch.empty(B, n, V, dtype=torch.float32, device=logits.device)
    k = int(top_k) if top_k and top_k > 0 else V
    _kernel()[(B * n,)](logits, out, B * n * V, float(cfg_scale if cfg_scale is not None else 1.0),
                        cfg_scale is not None, 1.0 / max(temperature, 1e-5), min(k, V),
                        float(top_p if top_p is not None else 1.0), V, BLOCK=triton.next_power_of_2(V))
    return out


@functools.cache
def _kernel():  # built on first use (and so under TRITON_INTERPRET when the tests set it)
    import triton
    import triton.language as tl

    @triton.jit
    def chain_kernel(x_ptr, out_ptr, uncond_offset, scale, use_cfg: tl.constexpr, inv_temp, top_k, top_p, V,
                     BLOCK: tl.constexpr):
        r = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        m = offs < V
        x = tl.load(x_ptr + r * V + offs, mask=m, other=0.0)
        if use_cfg:
            u = tl.load(x_ptr + uncond_offset + r * V + offs, mask=m, other=0.0)
            x = u + scale * (x - u)
        x = tl.where(m, x, float("-inf"))
        x = x * inv_temp
        bits = x.to(tl.int32, bitcast=True)  # float32 -> int preserving order: negative floats flip magnitude bits
        key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
        # top-k: the largest t with #{key >= t} >= k is the k-th largest value
        lo = tl.min(tl.where(m, key, 2147483647), axis=0)
        hi = tl.max(tl.where(m, key, -2147483648), axis=0)
        for _ in range(33):  # invariant: #{key >= lo} >= k
            mid = lo + (hi - lo + 1) // 2
            enough = tl.sum((m & (key >= mid)).to(tl.int32), axis=0) >= top_k
            lo, hi = tl.where(enough, mid, lo), tl.where(enough, hi, mid - 1)
        keep = m & (key >= lo)
        x = tl.where(keep, x, float("-inf"))
        e = tl.exp(x - tl.max(x, axis=0))
        p = e / tl.sum(e, axis=0)
        if top_p < 1.0:
            # the smallest t with sum(p over key > t) <= top_p; tokens with key >= t are kept
            lo2 = tl.min(tl.where(keep, key, 2147483647), axis=0)
            hi2 = tl.max(tl.where(keep, key, -2147483648), axis=0)
            for _ in range(33):  # invariant: sum(p over key > hi2) <= top_p
                mid = lo2 + (hi2 - lo2) // 2
                small = tl.sum(tl.where(keep & (key > mid), p, 0.0), axis=0) <= top_p
                lo2, hi2 = tl.where(small, lo2, mid + 1), tl.where(small, mid, hi2)
            keep = keep & (key >= lo2)
            x = tl.where(keep, x, float("-inf"))
            e = tl.exp(x - tl.max(x, axis=0))
            p = e / tl.sum(e, axis=0)
        tl.store(out_ptr + r * V + offs, p, mask=m)

    return chain_kernel
