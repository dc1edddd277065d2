"""Every Triton kernel against its pure-torch reference, run on the CPU by Triton's interpreter
(``TRITON_INTERPRET=1``): the same tokens given the same uniforms, probabilities within 1e-6."""
import os
import sys

import pytest

if os.environ.get("TRITON_INTERPRET") != "1" and "triton" in sys.modules:
    pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set (conftest sets it without a GPU); run "
                "TRITON_INTERPRET=1 pytest tests/test_kernels.py", allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported and the kernels are built (on first use)

import torch  # noqa: E402

pytest.importorskip("triton")

from vargen.kernels.lantern import lantern_set_masses_reference, lantern_set_masses_triton  # noqa: E402
from vargen.kernels.logits import chain_probs_reference, chain_probs_triton  # noqa: E402
from vargen.kernels.verify import verify_exact_reference, verify_exact_triton  # noqa: E402
from vargen.samplers.acceptance import neighbour_table  # noqa: E402


def _dists(*shape, g, sharp=3.0):
    return (torch.randn(*shape, generator=g) * sharp).softmax(-1)


@pytest.mark.parametrize("V", [7, 50, 300])
def test_fused_verification_matches_the_reference(V):
    g = torch.Generator().manual_seed(V)
    B, J = 6, 4
    for trial in range(4):
        p, q = _dists(B, J + 1, V, g=g), _dists(B, J, V, g=g)
        if trial == 1:
            q = p[:, :J].clone()  # draft == target: every draft passes, the bonus token comes from p_J
        drafts = torch.multinomial(q.flatten(0, 1), 1, generator=g).view(B, J)
        live = torch.rand(B, J, generator=g) > 0.15
        q_valid = torch.rand(B, J, generator=g) > 0.2 if trial == 2 else torch.ones(B, J, dtype=torch.bool)
        u_acc, u_res = torch.rand(B, J, generator=g, dtype=torch.float64), torch.rand(B, generator=g, dtype=torch.float64)
        want = verify_exact_reference(p, q, drafts, live, q_valid, u_acc, u_res)
        got = verify_exact_triton(p, q, drafts, live, q_valid, u_acc, u_res)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), trial
        if trial == 1:
            assert (want[0] == live.long().cumprod(1).sum(1)).all()


@pytest.mark.parametrize("cfg,temperature,top_k,top_p", [
    (None, 1.0, 0, 1.0), (2.5, 1.0, 0, 1.0), (4.0, 0.7, 10, 1.0), (None, 1.3, 0, 0.8), (3.0, 1.0, 25, 0.9),
    (1.5, 1.0, 1, 1.0), (None, 1.0, 300, 0.5)])
def test_logits_chain_matches_the_reference(cfg, temperature, top_k, top_p):
    g = torch.Generator().manual_seed(top_k)
    B, n, V = 3, 4, 200
    logits = torch.randn(2 * B if cfg is not None else B, n, V, generator=g) * 3
    want = chain_probs_reference(logits, cfg, temperature, top_k, top_p)
    got = chain_probs_triton(logits, cfg, temperature, top_k, top_p)
    assert got.shape == want.shape
    assert torch.equal(got > 0, want > 0)  # the same tokens survive top-k / top-p
    assert (got - want).abs().max() <= 1e-6


@pytest.mark.parametrize("delta,lam,aggregate_q", [(0.1, None, False), (None, 1.5, True), (0.3, 2.0, True)])
def test_lantern_aggregation_matches_the_reference(delta, lam, aggregate_q):
    g = torch.Generator().manual_seed(3)
    V, k = 64, 10
    table = neighbour_table(torch.randn(V, 8, generator=g), k)
    p, q = _dists(5, V, g=g, sharp=2.0), _dists(5, V, g=g, sharp=2.0)
    p[:, :5] = 0.0  # tokens the target cannot emit never join a set
    tokens = torch.arange(V).expand(5, -1)
    want = lantern_set_masses_reference(p, q, tokens, table, delta, lam, aggregate_q)
    got = lantern_set_masses_triton(p, q, tokens, table, delta, lam, aggregate_q, block_m=16)
    for w, o in zip(want, got):
        assert o.shape == w.shape and (o - w).abs().max() <= 1e-12
    assert (want[0] > want[2]).any()  # some sets did take neighbours
