"""LANTERN's neighbourhood aggregation over the ``[V, k]`` table (Jang et al., ICLR 2025, arXiv 2410.03355, §3).

For each token ``x`` (of ``tokens [R, M]``, rows of ``p, q [R, V]``): with neighbours ``n_1..n_k`` nearest first,
``S_j = sum_{i<=j} p(n_i)``, the set is ``{x}`` plus the longest prefix with ``S_j <= bound(x)`` (neighbours of
zero target mass excluded), ``bound = min(delta, (lam - 1) p(x))``, and

    P(x) = p(x) + sum over the set of p,    Q(x) = q(x) (+ sum over the set of q, with aggregate_q).

The kernel walks each token's table row in chunks with a running prefix sum, in float64 as the reference.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["lantern_set_masses", "lantern_set_masses_reference"]


def lantern_set_masses_reference(p, q, tokens, table, delta, lam, aggregate_q: bool):
    """``(P, Q, p(x), q(x))`` float64 of the shape of ``tokens [..., M]``; ``p, q [..., V]``; table ``[V, k]``."""
    lead = tokens.shape
    nbr = table[tokens].long().flatten(-2)  # [..., M*k]
    pn = p.gather(-1, nbr).view(*lead, -1).double()
    pd = p.gather(-1, tokens).double()
    qd = q.gather(-1, tokens).double()
    bound = torch.full_like(pd, float("inf"))
    if delta is not None:
        bound = bound.clamp(max=delta)
    if lam is not None:
        bound = torch.minimum(bound, (lam - 1) * pd)
    # S_j is non-decreasing, so "S_j <= bound" selects a prefix of the proximity list
    take = (pn.cumsum(-1) <= bound[..., None]) & (pn > 0)
    P = pd + (pn * take).sum(-1)
    Q = qd
    if aggregate_q:
        qn = q.gather(-1, nbr).view(*lead, -1).double()
        Q = qd + (qn * take).sum(-1)
    return P, Q, pd, qd


def lantern_set_masses(p, q, tokens, table, delta, lam, aggregate_q: bool):
    """:func:`lantern_set_masses_reference`, by the Triton kernel on CUDA."""
    from . import use_triton

    if not use_triton(p, q, tokens, table):
        return lantern_set_masses_reference(p, q, tokens, table, delta, lam, aggregate_q)
    return lantern_set_masses_triton(p, q, tokens, table, delta, lam, aggregate_q)


def lantern_set_masses_triton(p, q, tokens, table, delta, lam, aggregate_q: bool, block_m: int = 16):
    import triton

    lead, V, M, k = tokens.shape, p.shape[-1], tokens.shape[-1], table.shape[1]
    R = tokens.numel() // max(1, M)
    p2, q2 = p.reshape(R, V).float().contiguous(), q.reshape(R, V).float().contiguous()
    tok = tokens.reshape(R, M).contiguous()
    out = [torch.empty(R, M, dtype=torch.float64, device=p.device) for _ in range(4)]
    grid = (R, triton.cdiv(M, block_m))
    _kernel()[grid](p2, q2, tok, table.to(torch.int32).contiguous(), *out, M, V, k,
                    float("inf") if delta is None else float(delta), lam is not None,
                    0.0 if lam is None else float(lam), bool(aggregate_q),
                    BLOCK_M=block_m, BLOCK_K=min(128, triton.next_power_of_2(k)))
    return tuple(t.view(lead) for t in out)


@functools.cache
def _kernel():  # built on first use (and so under TRITON_INTERPRET when the tests set it)
    import triton
    import triton.language as tl

    @triton.jit
    def lantern_kernel(p_ptr, q_ptr, tok_ptr, table_ptr, P_ptr, Q_ptr, pd_ptr, qd_ptr, M, V, K, delta,
                       use_lam: tl.constexpr, lam, aggregate_q: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_K: tl.constexpr):
        r = tl.program_id(0)
        mo = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        mm = mo < M
        x = tl.load(tok_ptr + r * M + mo, mask=mm, other=0)
        pd = tl.load(p_ptr + r * V + x, mask=mm, other=0.0).to(tl.float64)
        qd = tl.load(q_ptr + r * V + x, mask=mm, other=0.0).to(tl.float64)
        bound = tl.zeros([BLOCK_M], dtype=tl.float64) + delta
        if use_lam:
            bound = tl.minimum(bound, (lam - 1.0) * pd)
        run = tl.zeros([BLOCK_M], dtype=tl.float64)  # S_j so far
        P = pd
        Q = qd
        ko = tl.arange(0, BLOCK_K)
        for s in range(0, K, BLOCK_K):
            km = (s + ko) < K
            mask2 = mm[:, None] & km[None, :]
            nb = tl.load(table_ptr + x[:, None] * K + s + ko[None, :], mask=mask2, other=0)
            pn = tl.load(p_ptr + r * V + nb, mask=mask2, other=0.0).to(tl.float64)
            cum = tl.cumsum(pn, axis=1) + run[:, None]
            take = mask2 & (cum <= bound[:, None]) & (pn > 0)
            P += tl.sum(tl.where(take, pn, 0.0), axis=1)
            if aggregate_q:
                qn = tl.load(q_ptr + r * V + nb, mask=mask2, other=0.0).to(tl.float64)
                Q += tl.sum(tl.where(take, qn, 0.0), axis=1)
            run += tl.sum(pn, axis=1)
        tl.store(P_ptr + r * M + mo, P, mask=mm)
        tl.store(Q_ptr + r * M + mo, Q, mask=mm)
        tl.store(pd_ptr + r * M + mo, pd, mask=mm)
        tl.store(qd_ptr + r * M + mo, qd, mask=mm)

    return lantern_kernel
