"""Tiny models for sampler tests."""
from __future__ import annotations

import itertools

import torch

from vargen.models.llamagen import GPT, GPTConfig
from vargen.samplers.acceptance import ExactAcceptance
from vargen.samplers.base import SamplingConfig, cfg_mix, logits_to_probs
from vargen.testing import trained_like_init_


def write_model_parts(pipe, root, gpt: str, vq: str) -> None:
    """A LlamaGen pipeline's GPT and VQ as zoo-style parts ``root/<gpt>`` and ``root/<vq>`` (fp16 weights + config)."""
    import json

    from vargen.train.common import export_fp16

    for name, module, kind in ((gpt, pipe.model, "llamagen_gpt"), (vq, pipe.tokenizer, "llamagen_vq")):
        export_fp16(module, root / name / "model.safetensors")
        (root / name / "config.json").write_text(json.dumps({"type": kind, "config": module.config.to_dict()}))


def tiny_gpt(vocab=6, grid=2, num_classes=3, dim=32, n_layer=2, n_head=2, seed=0, sharpness=3.0,
             dtype=torch.float32) -> GPT:
    """A random LlamaGen GPT with peaked (trained-like) distributions."""
    torch.manual_seed(seed)
    cfg = GPTConfig(dim=dim, n_layer=n_layer, n_head=n_head, vocab_size=vocab, num_classes=num_classes,
                    block_size=grid * grid, multiple_of=16)
    model = GPT(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        randomise_(model.named_parameters(), g)
        model.output.weight.mul_(sharpness)
    return model.to(dtype).eval()


randomise_ = trained_like_init_  # the name the tests use


class ResampleFromTarget(ExactAcceptance):
    """Deliberately broken: on rejection draw from p instead of the residual (for power checks; Lumina-mGPT 2.0's
    P14)."""

    name = "broken"

    def residual(self, p, q):
        return p


def assert_prompt_rows_match_alone(pipe, prompts: list, **kw) -> None:
    """``pipe.generate(prompts, per_row_seeds=True, seed=s)``: row ``i`` gets the tokens it gets alone with seed
    ``s + i``."""
    seed = kw.pop("seed", 0)
    batch = pipe.generate(prompts, seed=seed, per_row_seeds=True, decode=False, **kw)
    assert batch.tokens.shape == (len(prompts), pipe.model.num_tokens)
    assert int(batch.tokens.min()) >= 0 and int(batch.tokens.max()) < pipe.model.vocab_size
    for i, row in enumerate(prompts):
        alone = pipe.generate([row], seed=seed + i, per_row_seeds=True, decode=False, **kw)
        assert torch.equal(alone.tokens[0], batch.tokens[i]), i


@torch.no_grad()
def exact_distribution(model: GPT, label: int, config: SamplingConfig) -> dict[tuple, float]:
    """Enumerate every token sequence and its probability under the sampling chain (teacher forcing)."""
    N, V = model.config.block_size, model.config.vocab_size
    seqs = torch.tensor(list(itertools.product(range(V), repeat=N)))
    labels = torch.full((seqs.shape[0],), label)
    logits = model.logits(labels, seqs)
    if config.cfg_scale not in (None, 1.0):
        uncond = model.logits(torch.full_like(labels, model.config.num_classes), seqs)
        logits = cfg_mix(torch.cat([logits, uncond]), config.cfg_scale)
    return _law(seqs, logits, config)


def _law(seqs: torch.Tensor, logits: torch.Tensor, config: SamplingConfig) -> dict[tuple, float]:
    """``{sequence: probability}`` of every enumerated sequence from its teacher-forcing logits (CFG mixed)."""
    probs = logits_to_probs(logits, config.temperature, config.top_k or 0, config.top_p or 1.0).double()
    joint = probs.gather(-1, seqs[..., None]).squeeze(-1).prod(-1)
    return {tuple(s.tolist()): float(p) for s, p in zip(seqs, joint)}


@torch.no_grad()
def exact_prompt_law(lm, cond, config: SamplingConfig) -> dict[tuple, float]:
    """``exact_distribution`` for a transformers image LM (``vargen.models.hf``) and one prompt (PromptTokens)."""
    from vargen.models.hf import PromptTokens

    N, V = lm.num_tokens, lm.vocab_size
    seqs = torch.tensor(list(itertools.product(range(V), repeat=N)))
    rows = PromptTokens(cond.ids.expand(len(seqs), -1), cond.mask.expand(len(seqs), -1))
    if config.cfg_scale not in (None, 1.0):  # [cond; uncond] rows as the model pads them for guidance
        both = lm.guidance_cond(rows)
        logits = cfg_mix(lm.logits(both, torch.cat([seqs, seqs])), config.cfg_scale)
    else:
        logits = lm.logits(rows, seqs)
    return _law(seqs, logits, config)


def prompt_law_pvalue(sampler, lm, prompt: list[int], config: SamplingConfig, n: int = 8000, seed: int = 123) -> float:
    """Chi-square p-value of ``n`` draws of ``sampler`` for one prompt (token ids) of a transformers image LM
    against the enumerated law of that prompt (``exact_prompt_law``)."""
    from vargen.models.hf import PromptTokens

    draws = sampler.sample(lm, PromptTokens.from_lists([prompt] * n, lm.pad_id), config,
                           torch.Generator().manual_seed(seed)).tokens
    return chi_square_pvalue(draws, exact_prompt_law(lm, PromptTokens.from_lists([prompt], lm.pad_id), config))


def chi_square_pvalue(samples: torch.Tensor, exact: dict[tuple, float], min_expected: float = 5.0) -> float:
    """Pearson chi-square of sampled sequences against the exact law (rare cells pooled)."""
    from scipy.stats import chisquare

    n = samples.shape[0]
    counts: dict[tuple, int] = {}
    for row in samples.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for seq, p in exact.items():
        e = p * n
        if e >= min_expected:
            obs.append(counts.get(seq, 0))
            exp.append(e)
        else:
            pool_o += counts.get(seq, 0)
            pool_e += e
    obs.append(pool_o)
    exp.append(pool_e)
    total_e = sum(exp)
    exp = [e * n / total_e for e in exp]
    return float(chisquare(obs, exp).pvalue)


class SyncCounter:
    """Counts device->host syncs (``item``, ``tolist``, ``bool``/``int``/``float`` of a tensor) while active."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(self_, *a, _orig=original, **k):
                self.count += 1
                return _orig(self_, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)


def save_gpt_folder(model: GPT, folder) -> None:
    """Write a GPT as a model folder (``config.json`` + fp16 ``model.safetensors``), as the trainer does."""
    import json
    from pathlib import Path

    from vargen.train.common import export_fp16

    folder = Path(folder)
    export_fp16(model, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"type": "llamagen_gpt", "config": model.config.to_dict()}))


def assert_rows_match_alone(sampler, model, labels, config, seeds) -> None:
    """A batch with one generator per row gives each row the tokens it gets alone, and rows really
    advance differently (so the check is not vacuous)."""
    batch = sampler.sample(model, labels, config, generator=[torch.Generator().manual_seed(s) for s in seeds])
    accepted = torch.stack(batch.stats.accepted)
    assert len({tuple(accepted[:, b].tolist()) for b in range(len(seeds))}) > 1, "rows should advance differently"
    for b, s in enumerate(seeds):
        alone = sampler.sample(model, labels[b : b + 1], config, generator=[torch.Generator().manual_seed(s)])
        assert torch.equal(alone.tokens[0], batch.tokens[b])


TINY_DV = dict(channels=8, channels_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], resolution=16, z_channels=4,
               embedding_dim=2, levels=[4, 4], patch_size=4, spatial_compression=4, temporal_compression=4,
               pixel_chunk_duration=9)
TINY_COSMOS = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=16, ffn_hidden_size=64, rope_theta=10000,
                   video_latent_shape=[3, 4, 4], max_seq_len=48, pad_to_multiple_of=16, precision="float32")


def tiny_video_folder(root):
    """A zoo-style folder pair with a random DV tokenizer (9-frame 16x16 clips -> 3 x 4 x 4 tokens of 16 codes) and
    a random Cosmos transformer, and ``root/tiny-cosmos/pipeline.json`` (procedural scenes); returns that folder."""
    import json
    from pathlib import Path

    from vargen.models.cosmos import CosmosConfig, CosmosTransformer
    from vargen.tokenizers.cosmos_dv import DiscreteVideoTokenizer, DVConfig
    from vargen.train.common import export_fp16, write_config

    root = Path(root)
    torch.manual_seed(0)
    dv = DiscreteVideoTokenizer(DVConfig(**TINY_DV))
    export_fp16(dv, root / "tiny-dv" / "model.safetensors")
    write_config(root / "tiny-dv", "cosmos_dv", dv.config.to_dict())
    gpt = CosmosTransformer(CosmosConfig(**TINY_COSMOS))
    with torch.no_grad():
        randomise_(gpt.named_parameters(), torch.Generator().manual_seed(1))
        gpt.output.weight.mul_(4.0)
    export_fp16(gpt, root / "tiny-cosmos" / "model.safetensors")
    write_config(root / "tiny-cosmos", "cosmos_ar", gpt.config.to_dict())
    (root / "tiny-cosmos" / "pipeline.json").write_text(json.dumps(
        {"kind": "cosmos", "model": "tiny-cosmos", "tokenizer": "tiny-dv", "scenes": "bouncing_shapes",
         "defaults": {"temperature": 1.0, "top_p": 0.9}}))
    return root / "tiny-cosmos"


def keep_path_without_row_ends(cache, start, tree, nodes) -> None:
    """Deliberately broken ``keep_tree_path_`` (for power checks of trees over sequences with row ends): moves the kept
    nodes' K/V but not the forced row ends on their path."""
    from vargen.decode import move_rows_

    src = cache.seq(start)[:, None] + nodes
    dst = cache.seq(start[:, None] + torch.arange(1, nodes.shape[1] + 1, device=nodes.device))
    for t in (*cache.k, *cache.v):
        move_rows_(t, src, dst)


def assert_adapter_evicts(make_lm, cond, budget: int = 6) -> None:
    """``kv_budget`` on a transformers adapter (per-layer masks through transformers' attention interface): every
    window equals full attention with the evicted keys hidden; a whole-image budget gives the plain cache's tokens; a
    real one evicts; and teacher forcing with padded prompts is unchanged once an evicting cache exists."""
    from vargen.samplers import get_sampler
    from vargen.samplers.base import SamplingConfig
    from vargen.testing import check_eviction

    lm = make_lm()
    config = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=8)
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(cond.batch)]  # noqa: E731
    plain = get_sampler("sjd", window=4, coupled=True).sample(lm, cond, config, gens())
    before = lm.logits(cond, plain.tokens)
    report = check_eviction(lm, cond, budget=budget)
    assert report["eviction"] < 1e-4 and report["held"] < report["positions"], report
    whole = get_sampler("sjd", window=4, coupled=True, kv_budget=lm.num_tokens).sample(lm, cond, config, gens())
    assert torch.equal(plain.tokens, whole.tokens)
    evicting = get_sampler("sjd", window=4, coupled=True, kv_budget=budget, kv_anchor=1).sample(lm, cond, config, gens())
    assert evicting.tokens.shape == plain.tokens.shape and evicting.stats.kv_cache_bytes < plain.stats.kv_cache_bytes
    assert (lm.logits(cond, plain.tokens) - before).abs().max() < 1e-5, "teacher forcing changed after eviction"
