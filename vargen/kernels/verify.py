"""Fused lossless verification: speculative sampling's accept / reject / resample for every row in one kernel.

Per row ``b`` with drafts ``d_j ~ q_j`` (``j < J``) and target ``p_0 .. p_J``: draft ``j`` passes if
``u_j q_j(d_j) < p_j(d_j)`` (Leviathan et al. 2023, Algorithm 1), ``a`` is the first slot that fails (``J`` if
none), and one token is drawn by inverse CDF with ``u_res`` from ``norm(max(0, p_a - q_a))`` (``q_J = 0``: the
bonus token from ``p_J``). The reference is the committer's own computation; the kernel reads ``p`` and ``q``
once per row for the slot it needs.
"""
from __future__ import annotations

import functools

import torch

from ..distributions import accept_prefix_and_draw, exact_accept

__all__ = ["verify_exact", "verify_exact_reference"]


def verify_exact_reference(p, q, drafts, live, q_valid, u_acc, u_res):
    """``(a [B], token [B])``. p ``[B, J+1, V]``; q ``[B, J, V]``; drafts, live (slot may be accepted) ``[B, J]``;
    q_valid ``[B, J]`` or None (where False, q does not count: the slot resamples from p); u_acc ``[B, J]``;
    u_res ``[B]``. The exact rule and the committer's own prefix-and-draw."""
    if q_valid is not None:
        q = q * q_valid[..., None]
    accept = exact_accept(p[:, : drafts.shape[1]], q, drafts, u_acc) & live
    return accept_prefix_and_draw(p, q, accept, u_res)


def verify_exact(p, q, drafts, live, q_valid, u_acc, u_res):
    """:func:`verify_exact_reference`, by the Triton kernel on CUDA."""
    from . import use_triton

    if drafts.shape[1] == 0 or not use_triton(p, q, drafts):
        return verify_exact_reference(p, q, drafts, live, q_valid, u_acc, u_res)
    return verify_exact_triton(p, q, drafts, live, q_valid, u_acc, u_res)


def verify_exact_triton(p, q, drafts, live, q_valid, u_acc, u_res):
    import triton

    B, J1, V = p.shape
    p, q = p.float().contiguous(), q.float().contiguous()
    q_valid = torch.ones_like(live) if q_valid is None else q_valid
    a = torch.empty(B, dtype=torch.int64, device=p.device)
    token = torch.empty(B, dtype=torch.int64, device=p.device)
    _kernel()[(B,)](p, q, drafts.contiguous(), live.to(torch.int8).contiguous(), q_valid.to(torch.int8).contiguous(),
                    u_acc.double().contiguous(), u_res.double().contiguous(), a, token, J1 - 1, V,
                    BLOCK=min(4096, triton.next_power_of_2(V)))
    return a, token


@functools.cache
def _kernel():  # built on first use (and so under TRITON_INTERPRET when the tests set it)
    import triton
    import triton.language as tl

    @triton.jit
    def verify_kernel(p_ptr, q_ptr, d_ptr, live_ptr, qv_ptr, ua_ptr, ur_ptr, a_ptr, tok_ptr, J, V,
                      BLOCK: tl.constexpr):
        b = tl.program_id(0)
        # first rejected slot
        a = J
        found = 0
        for j in range(0, J):
            d = tl.load(d_ptr + b * J + j)
            pd = tl.load(p_ptr + (b * (J + 1) + j) * V + d).to(tl.float64)
            qv = tl.load(qv_ptr + b * J + j).to(tl.float32)
            qd = (tl.load(q_ptr + (b * J + j) * V + d) * qv).to(tl.float64)
            ok = (tl.load(ua_ptr + b * J + j) * qd < pd) & (tl.load(live_ptr + b * J + j) != 0)
            reject = (found == 0) & (ok == 0)
            a = tl.where(reject, j, a)
            found = tl.where(reject, 1, found)
        # residual norm(max(0, p_a - q_a)) (q_J = 0); where empty, p_a itself
        has_q = a < J
        q_scale = tl.load(qv_ptr + b * J + a, mask=has_q, other=0).to(tl.float32)
        p_row = p_ptr + (b * (J + 1) + a) * V
        q_row = q_ptr + (b * J + a) * V
        offs = tl.arange(0, BLOCK)
        mass = tl.zeros([BLOCK], dtype=tl.float32)
        for s in range(0, V, BLOCK):
            m = s + offs < V
            pv = tl.load(p_row + s + offs, mask=m, other=0.0)
            qq = tl.load(q_row + s + offs, mask=m & has_q, other=0.0) * q_scale
            mass += tl.maximum(pv - qq, 0.0)
        total_r = tl.sum(mass, axis=0)
        use_p = total_r <= 0
        denom = tl.maximum(total_r, 1e-30)
        # the CDF's end (float64, as the reference) and the last token with mass
        cdf_end = tl.zeros([BLOCK], dtype=tl.float64)
        last = tl.full([BLOCK], -1, dtype=tl.int64)
        for s in range(0, V, BLOCK):
            m = s + offs < V
            pv = tl.load(p_row + s + offs, mask=m, other=0.0)
            qq = tl.load(q_row + s + offs, mask=m & has_q, other=0.0) * q_scale
            w = tl.where(use_p, pv, tl.maximum(pv - qq, 0.0) / denom)
            cdf_end += w.to(tl.float64)
            last = tl.maximum(last, tl.where(m & (w > 0), (s + offs).to(tl.int64), -1))
        target = tl.load(ur_ptr + b) * tl.sum(cdf_end, axis=0)
        # inverse CDF: the number of tokens whose cumulative mass is <= target
        run = tl.zeros([1], dtype=tl.float64)
        count = tl.zeros([1], dtype=tl.int64)
        for s in range(0, V, BLOCK):
            m = s + offs < V
            pv = tl.load(p_row + s + offs, mask=m, other=0.0)
            qq = tl.load(q_row + s + offs, mask=m & has_q, other=0.0) * q_scale
            w = tl.where(use_p, pv, tl.maximum(pv - qq, 0.0) / denom).to(tl.float64)
            cdf = tl.cumsum(w, axis=0) + tl.sum(run, axis=0)
            count += tl.sum((m & (cdf <= target)).to(tl.int64), axis=0)
            run += tl.sum(w, axis=0)
        tl.store(a_ptr + b, a)
        tl.store(tok_ptr + b, tl.minimum(tl.sum(count, axis=0), tl.max(last, axis=0)))

    return verify_kernel
