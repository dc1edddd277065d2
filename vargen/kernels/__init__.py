"""Triton kernels for the hot spots of speculative decoding, each beside the pure-torch reference it is tested
against (``tests/test_kernels.py`` runs every kernel under ``TRITON_INTERPRET=1`` on the CPU).

* :func:`verify_exact`: lossless verification of a whole proposal -- per-row acceptance test, first rejection,
  residual and the draw from it -- in one pass over ``[B, J+1, V]``;
* :func:`chain_probs`: the logits chain (CFG mix, temperature, top-k, top-p, softmax) over ``[B, n, V]`` with
  thresholds found by bisection on the values, no sort;
* :func:`lantern_set_masses`: LANTERN's neighbourhood aggregation over the ``[V, k]`` table.

The public functions dispatch to the kernel only for CUDA tensors outside ``torch.compile`` (inside a compiled
graph the inductor fuses the reference itself); everywhere else they run the reference.
"""
from __future__ import annotations

import torch

__all__ = ["verify_exact", "verify_exact_reference", "chain_probs", "chain_probs_reference",
           "lantern_set_masses", "lantern_set_masses_reference", "use_triton"]


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether the Triton kernel serves these tensors: all on CUDA, triton importable, not being compiled."""
    if not tensors or not all(t.is_cuda for t in tensors) or torch.compiler.is_compiling():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


from .lantern import lantern_set_masses, lantern_set_masses_reference  # noqa: E402
from .logits import chain_probs, chain_probs_reference  # noqa: E402
from .verify import verify_exact, verify_exact_reference  # noqa: E402
