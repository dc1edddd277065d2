"""FastVAR's cached token pruning (arXiv 2503.23367) on the ``var`` sampler, on the shipped VAR demo: the zero
setting reproduces ``var`` token for token; a pruned block's kept tokens get exactly what full attention with the
skipped tokens hidden gives them, the skipped slots the cache scale's resized output; bad plans fail up front."""
import pytest
import torch
import torch.nn.functional as F

import vargen
from vargen import SamplingConfig, get_sampler
from vargen.models.var_pruning import TokenPruning, gather_tokens

LABELS = torch.tensor([0, 3, 7])


@pytest.fixture(scope="module")
def var():
    return vargen.load("cifar10-var").model  # scales 1, 2, 3, 4, 6, 8; 6 blocks


def _run(var, spec_kw, seed=0):
    return get_sampler("var", **spec_kw).sample(var, LABELS, SamplingConfig(cfg_scale=4.0, top_k=0),
                                                torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("zero", [dict(prune_scales=0), dict(prune_scales=2, prune_ratio=0.0)])
def test_zero_setting_is_var(var, zero):
    plain, zero_run = _run(var, {}), _run(var, zero)
    assert torch.equal(plain.tokens, zero_run.tokens) and torch.equal(plain.latents, zero_run.latents)
    assert zero_run.stats.kv_bytes_used == zero_run.stats.kv_cache_bytes


def test_pruned_run_draws_every_token_and_counts_what_it_skipped(var):
    out = _run(var, dict(prune_scales=2, prune_ratio=0.5, prune_from_layer=1))
    s = out.stats
    assert out.tokens.shape == (3, 130)
    # blocks 1..5, attention and FFN, half of 36 and of 64 tokens each
    assert s.pruning.pruned_evaluations_skipped == 5 * 2 * (18 + 32)
    assert s.pruning.pruned_evaluations_kept == 5 * 2 * (18 + 32)
    slot = 2 * var.num_heads * (var.C // var.num_heads) * 4  # K and V of one position, float32
    assert s.kv_cache_bytes - s.kv_bytes_used == 5 * (18 + 32) * slot * 6  # 6 rows: 3 images with CFG


def test_a_pruned_block_equals_full_attention_with_the_skipped_tokens_hidden(var):
    """Block 2 at the last scale: kept tokens' outputs equal the unpruned block's attention restricted to the
    coarser scales and the kept tokens (then the FFN on those tokens); skipped slots hold the cache scale's output
    area-resized."""
    torch.manual_seed(0)
    cond = var.condition(torch.tensor([1, 2]))
    K = len(var.patch_nums)
    plan = TokenPruning({K - 1: 0.5}, from_layer=2, cache_scale=K - 2)
    cache = var.new_cache(2)
    inputs = [torch.randn(2, pn * pn, var.Cvae) for pn in var.patch_nums[1:]]
    for s in range(K):
        var.forward_scales(cond, None if s == 0 else inputs[s - 1], cache, s, s + 1, logits_from=None,
                           pruning=plan)
    # replay block 2 at the last scale by hand from its input
    a, b = var.begin_ends[K - 1]
    block, layer = var.blocks[2], 2
    x_in = {}
    out_full = {}

    def record_in(module, args):
        x_in.setdefault("x", args[0].clone())

    def record_out(module, args, out):
        out_full.setdefault("y", out.clone())

    hook, hook2 = block.register_forward_pre_hook(record_in), block.register_forward_hook(record_out)
    cache2 = var.new_cache(2)
    plan2 = TokenPruning({K - 1: 0.5}, from_layer=2, cache_scale=K - 2)
    for s in range(K):
        if s == K - 1:
            x_in.clear(), out_full.clear()
        var.forward_scales(cond, None if s == 0 else inputs[s - 1], cache2, s, s + 1, logits_from=None,
                           pruning=plan2)
    hook.remove(), hook2.remove()
    x, y = x_in["x"], out_full["y"]
    g1, g2, s1, s2, b1, b2 = cond.block_mods[layer]
    prune = plan2.block(layer, K - 1, K, var.begin_ends, var.patch_nums)
    keep = prune.pivotal(x)
    # full attention of the kept queries over coarser keys and kept current keys
    h = block.ln_wo_grad(x).mul(s1.add(1)).add_(b1)
    attn = block.attn
    q, k, v = F.linear(h, attn.mat_qkv.weight, torch.cat((attn.q_bias, attn.zero_k_bias, attn.v_bias))).view(
        2, -1, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    if attn.attn_l2_norm:
        q = F.normalize(q, dim=-1).mul(attn.scale_mul_1H11.clamp_max(attn.max_scale_mul).exp())
        k = F.normalize(k, dim=-1)
    K_all = torch.cat([cache2.k[layer][:, :, :a], k], dim=2)
    V_all = torch.cat([cache2.v[layer][:, :, :a], v], dim=2)
    visible = prune.mask(keep, a)
    q_kept = q.gather(2, keep[:, None, :, None].expand(-1, attn.num_heads, -1, attn.head_dim))
    o = F.scaled_dot_product_attention(q_kept, K_all, V_all, attn_mask=visible, scale=attn.scale)
    o = attn.proj(o.transpose(1, 2).reshape(2, keep.shape[1], -1)).mul(g1)
    saved = plan2.saved[(layer, "attn")]
    c = var.patch_nums[K - 2]
    resize = lambda t: F.interpolate(t.transpose(1, 2).reshape(2, -1, c, c), size=(8, 8),  # noqa: E731
                                     mode="area").flatten(2).transpose(1, 2)
    base = resize(saved)
    x_mid = x + base.scatter(1, keep[..., None].expand(-1, -1, x.shape[-1]), o)
    keep2 = prune.pivotal(x_mid)
    f = block.ffn(gather_tokens(block.ln_wo_grad(x_mid).mul(s2.add(1)).add_(b2), keep2)).mul(g2)
    saved_f = plan2.saved[(layer, "ffn")]
    base_f = resize(saved_f)
    expected = x_mid + base_f.scatter(1, keep2[..., None].expand(-1, -1, x.shape[-1]), f)
    assert torch.allclose(y, expected, atol=1e-5)
    # the skipped tokens wrote no K/V: their slots are zero
    skipped = torch.ones(2, 64, dtype=torch.bool).scatter(1, keep, False)
    assert (cache2.k[layer][:, :, a:b].permute(0, 2, 1, 3)[skipped] == 0).all()


def test_bad_plans_fail_before_work(var):
    with pytest.raises(ValueError, match="prune_scales=6"):
        _run(var, dict(prune_scales=6))
    with pytest.raises(ValueError, match="prune_from_layer=6 but the model has 6 blocks"):
        _run(var, dict(prune_scales=1, prune_from_layer=6))
    with pytest.raises(ValueError, match="prune_ratio"):
        get_sampler("var", prune_scales=1, prune_ratio=1.0)
    with pytest.raises(ValueError, match="cache scale 4 must come before"):
        TokenPruning({4: 0.5}, from_layer=1, cache_scale=4)
    plan = TokenPruning({5: 0.5}, from_layer=0, cache_scale=4)
    cond = var.condition(torch.tensor([1]))
    with pytest.raises(ValueError, match="one scale per pass"):
        var.forward_scales(cond, torch.zeros(1, 129, var.Cvae), var.new_cache(1), 0, 6, pruning=plan)
