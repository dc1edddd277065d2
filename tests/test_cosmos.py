"""Cosmos-1.0 Autoregressive transformer and the DV tokenizer against golden tensors from the official code
(shared/fixtures/cosmos), plus the released models' key sets (keys_full.json)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import fixture_dir
from vargen.models.base import TextCondition
from vargen.models.cosmos import (COSMOS_PRESETS, CosmosConfig, CosmosTransformer, VideoCondition, cosmos_config,
                                  load_cosmos_weights)
from vargen.samplers import get_sampler
from vargen.samplers.base import SamplingConfig, logits_to_probs
from vargen.tokenizers.cosmos_dv import DV_PRESETS, DiscreteVideoTokenizer, DVConfig, load_dv_tokenizer
from vargen.testing import decode

ATOL = 1e-4
KINDS = ("base", "v2w", "yarn")


@pytest.fixture(scope="module")
def fx():
    d = fixture_dir("cosmos")
    return d, json.loads((d / "fixtures.json").read_text()), load_file(str(d / "outputs.safetensors"))


def _config(meta, kind, **over) -> CosmosConfig:
    m = meta["models"][kind]
    return CosmosConfig.from_dict({**m["model_config"], "training_type": m["tokenizer_config"]["training_type"], **over})


def _model(fx, kind, context_frames=1) -> CosmosTransformer:
    d, meta, _ = fx
    model = CosmosTransformer(_config(meta, kind, context_frames=context_frames)).eval()
    return load_cosmos_weights(model, str(d / f"transformer_{kind}.safetensors"))


def _cond(t, kind, frames, masked=False):
    text = None
    if kind == "v2w":
        text = TextCondition(t["v2w.context"], t["v2w.context_mask_2d"] if masked else None)
    return VideoCondition(frames, text)


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
def test_position_tables(fx, kind):
    _, _, t = fx
    model = _model(fx, kind)
    torch.testing.assert_close(model.rope_cos, t[f"{kind}.rope_cos"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.rope_sin, t[f"{kind}.rope_sin"], atol=1e-6, rtol=0)
    if kind == "v2w":
        assert model.abs_pos.dtype == torch.bfloat16
        assert torch.equal(model.abs_pos, t["v2w.abs_pos_emb"])


@torch.no_grad()
@pytest.mark.parametrize("kind,masked", [("base", False), ("v2w", False), ("v2w", True), ("yarn", False)])
def test_teacher_forcing_prefill_steps_chunk_and_cache(fx, kind, masked):
    _, _, t = fx
    model = _model(fx, kind)
    key = f"{kind}.masked" if masked else kind
    tokens = t["tokens"]
    cond = _cond(t, kind, tokens[:, :20], masked)
    seq = torch.cat([torch.full((2, 1), model.bov_id), tokens], 1) if kind == "v2w" else tokens
    torch.testing.assert_close(model.forward_sequence(seq, cond.text), t[f"{key}.tf_logits"], atol=ATOL, rtol=0)

    cache = model.new_cache(2)
    P = model.prefix_len
    torch.testing.assert_close(model.prefill(cond, cache), t[f"{key}.cache.prefill_logits"][:, -1], atol=ATOL, rtol=0)
    gen = tokens[:, 20:]
    for i in range(4):  # single-token steps at per-row positions
        out = decode(model, gen[:, i : i + 1], torch.full((2,), i), cache)
        torch.testing.assert_close(out[:, 0], t[f"{key}.cache.step_logits"][:, i], atol=ATOL, rtol=0)
    chunk = decode(model, gen[:, 4:8], torch.full((2,), 4), cache)  # a verification window of 4
    torch.testing.assert_close(chunk, t[f"{key}.cache.chunk_logits"], atol=ATOL, rtol=0)
    if not masked:  # keys after k_norm and RoPE, values raw; unwritten slots zero
        L = t[f"{kind}.cache.layer0.k"].shape[2]
        for i in range(2):
            for name, mine in (("k", cache.k[i]), ("v", cache.v[i])):
                torch.testing.assert_close(mine[:, :, :L], t[f"{kind}.cache.layer{i}.{name}"], atol=ATOL, rtol=0)
    assert P == 20 + (kind == "v2w")


@torch.no_grad()
@pytest.mark.parametrize("key", ["base", "v2w", "v2w.masked"])
@pytest.mark.parametrize("ctx", [1, 2])
def test_greedy_generation_matches_official(fx, key, ctx):
    _, _, t = fx
    kind = key.split(".")[0]
    model = _model(fx, kind, context_frames=ctx)
    prompt, want = t[f"{key}.greedy.ctx{ctx}.prompt"], t[f"{key}.greedy.ctx{ctx}.tokens"]
    frames = prompt[:, 1:] if kind == "v2w" else prompt
    cond = _cond(t, kind, frames, masked=key.endswith("masked"))
    n_prompt = prompt.shape[1]
    out = get_sampler("ar").sample(model, cond, SamplingConfig(temperature=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens, want[:, n_prompt:])
    torch.testing.assert_close(model.logits(cond, out.tokens), t[f"{key}.greedy.ctx{ctx}.logits"], atol=ATOL, rtol=0)
    # coupled SJD with the temporal init decodes the same greedy clip
    sjd = get_sampler("sjd", window=8, init="temporal", coupled=True)
    again = sjd.sample(model, cond, SamplingConfig(temperature=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(again.tokens, out.tokens)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["base", "v2w"])
@pytest.mark.parametrize("mode", ["top_p", "top_k"])
def test_seeded_sampling_with_the_official_noise(fx, kind, mode):
    """The official sampler draws ``argmax(p / E)`` with Exponential(1) noise ``E`` (aligned with the sorted
    order for top-p, with vocabulary ids for top-k); with the stored draws, vargen's cached decode and logits
    chain give the same clip token for token."""
    _, meta, t = fx
    model = _model(fx, kind)
    settings = meta["sample_settings"]
    config = SamplingConfig(temperature=settings["temperature"], top_p=settings["top_p"] if mode == "top_p" else 1.0,
                            top_k=settings["top_k"] if mode == "top_k" else 0)
    want = t[f"{kind}.sample_{mode}.tokens"]
    noise = t[f"{kind}.sample_{mode}.noise"]
    n_prompt = 21 if kind == "v2w" else 20
    cond = _cond(t, kind, want[:, n_prompt - 20 : n_prompt])
    cache = model.new_cache(2)
    logits = model.prefill(cond, cache)
    tokens = []
    for step in range(model.num_tokens):
        p = logits_to_probs(logits, config.temperature, config.top_k, config.top_p)
        if mode == "top_p":
            ps, order = p.sort(dim=-1, descending=True)
            tok = order.gather(-1, (ps / noise[step]).argmax(-1, keepdim=True))[:, 0]
        else:
            tok = (p / noise[step]).argmax(-1)
        tokens.append(tok)
        logits = decode(model, tok[:, None], torch.full((2,), step), cache)[:, 0]
    assert torch.equal(torch.stack(tokens, 1), want[:, n_prompt:])
    torch.testing.assert_close(model.logits(cond, want[:, n_prompt:]), t[f"{kind}.sample_{mode}.logits"],
                               atol=ATOL, rtol=0)


def test_sampling_filters_match_official(fx):
    _, _, t = fx
    logits = t["sampling.logits_in"]
    for T, p in ((0.7, 0.9), (1.0, 0.8)):
        torch.testing.assert_close(logits_to_probs(logits, T, 0, p), t[f"sampling.top_p_probs.t{T}_p{p}"], atol=1e-6, rtol=0)
    for T, k in ((0.7, 3), (1.0, 5)):
        torch.testing.assert_close(logits_to_probs(logits, T, k, 1.0), t[f"sampling.top_k_probs.t{T}_k{k}"], atol=1e-6, rtol=0)


def test_checkpoint_loading_is_strict_and_drops_extra_state(fx, tmp_path):
    d, meta, _ = fx
    state = load_file(str(d / "transformer_base.safetensors"))
    assert all(k.startswith("model.") for k in state)
    model = CosmosTransformer(_config(meta, "base"))
    extra = {**state, "model.layers.0.attention.wq._extra_state": torch.zeros(1)}
    torch.save({"model": extra}, tmp_path / "model.pt")  # the released layout, wrapped once
    load_cosmos_weights(model, str(tmp_path / "model.pt"))
    torch.testing.assert_close(model.output.weight, state["model.output.weight"])
    with pytest.raises(ValueError, match="missing keys"):
        load_cosmos_weights(CosmosTransformer(_config(meta, "base")),
                            {k: v for k, v in state.items() if "layers.1.ffn_norm" not in k})
    with pytest.raises(ValueError, match="<bov>"):  # a Video2World checkpoint into a base config
        load_cosmos_weights(CosmosTransformer(_config(meta, "base")), load_file(str(d / "transformer_v2w.safetensors")))


@pytest.mark.parametrize("name", sorted(COSMOS_PRESETS))
def test_presets_have_the_released_keys_and_sizes(fx, name):
    d, _, _ = fx
    ref = json.loads((d / "keys_full.json").read_text())["transformers"][name]
    with torch.device("meta"):
        model = CosmosTransformer(cosmos_config(name))
    keys = {f"model.{k}": list(v.shape) for k, v in model.state_dict().items()}
    assert keys == {k: list(v) for k, v in ref["checkpoint_keys"].items()}
    assert sum(p.numel() for p in model.parameters()) == ref["n_params"]
    assert model.rope_cos.shape[0] == ref["derived"]["rope_table_rows"]


def test_dv8x16x16_has_the_released_keys(fx):
    d, _, _ = fx
    ref = json.loads((d / "keys_full.json").read_text())["tokenizer"]["Cosmos-1.0-Tokenizer-DV8x16x16"]
    with torch.device("meta"):
        tok = DiscreteVideoTokenizer(DVConfig(**DV_PRESETS["DV8x16x16"]))
    enc = {k: list(v.shape) for k, v in tok.encoder_half().state_dict().items()}
    dec = {k: list(v.shape) for k, v in tok.decoder_half().state_dict().items()}
    shapes = lambda keys: {k: list(v) for k, v in keys.items()}  # noqa: E731
    assert enc == shapes(ref["encoder_jit_state_dict"]) and dec == shapes(ref["decoder_jit_state_dict"])
    assert sum(p.numel() for p in tok.parameters()) == ref["n_params"]


# ------------------------------------------------------------------------------------------------
# DV tokenizer
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dv(fx):
    d, meta, _ = fx
    cfg = {**meta["dv"]["config"], "pixel_chunk_duration": meta["dv"]["wrapper_kwargs"]["pixel_chunk_duration"]}
    return load_dv_tokenizer(cfg, str(d / "dv_encoder.safetensors"), str(d / "dv_decoder.safetensors"))


def test_fsq(fx, dv):
    _, _, t = fx
    q = dv.quantizer
    assert torch.equal(q.implicit_codebook, t["fsq.implicit_codebook"])
    assert torch.equal(q.indices_to_codes(t["fsq.some_indices"]), t["fsq.some_codes"])
    assert torch.equal(q.codes_to_indices(t["fsq.some_codes"]), t["fsq.codes_to_indices_roundtrip"].long())
    assert torch.equal(q.bound(t["fsq.z"]), t["fsq.z_bounded"])
    codes = q.quantize(t["fsq.z"])
    assert torch.equal(codes, t["fsq.z_codes"])
    assert torch.equal(q.codes_to_indices(codes), t["fsq.z_indices"].long())


@torch.no_grad()
def test_dv_encode_decode(fx, dv):
    _, _, t = fx
    video = t["dv.video"]
    torch.testing.assert_close(dv.encoder.patcher3d(video), t["dv.patched"], atol=ATOL, rtol=0)
    pre = dv.pre_quant(video)
    torch.testing.assert_close(pre, t["dv.pre_quant"], atol=ATOL, rtol=0)
    assert torch.equal(dv.quantizer(pre)[1], t["dv.quant_codes"])
    indices = dv.encode(video)
    assert torch.equal(indices, t["dv.indices"].long())
    assert torch.equal(indices.flatten(1), t["dv.tokens"].long())
    torch.testing.assert_close(dv.decode(indices), t["dv.decoded"], atol=1e-3, rtol=0)
    # the unpatcher inverts the patcher
    torch.testing.assert_close(dv.decoder.unpatcher3d(t["dv.patched"]), video, atol=1e-5, rtol=0)


def test_dv_bad_input(dv):
    with pytest.raises(ValueError, match="chunks of 17 frames"):
        dv.encode(torch.zeros(1, 3, 9, 32, 64))
    with pytest.raises(ValueError, match="multiples of 16"):
        dv.encode(torch.zeros(1, 3, 17, 30, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        dv.encode(torch.zeros(3, 17, 32, 64))
    with pytest.raises(ValueError, match="token ids"):
        dv.decode(torch.full((1, 3, 2, 4), 80))


def test_bad_conditions(fx):
    _, _, t = fx
    base, v2w = _model(fx, "base"), _model(fx, "v2w")
    with pytest.raises(ValueError, match=r"\[B, 20\]"):
        base.check_cond(t["tokens"][:, :19])
    with pytest.raises(ValueError, match="0..79"):
        base.check_cond(torch.full((2, 20), 80))
    with pytest.raises(ValueError, match="needs text features"):
        v2w.check_cond(VideoCondition(t["tokens"][:, :20]))
    with pytest.raises(ValueError, match="no cross-attention"):
        base.check_cond(VideoCondition(t["tokens"][:, :20], TextCondition(t["v2w.context"])))
    with pytest.raises(ValueError, match="no unconditional branch|has none"):
        get_sampler("ar").sample(base, t["tokens"][:, :20], SamplingConfig(cfg_scale=3.0), torch.Generator())
    with pytest.raises(ValueError, match="context_frames"):
        CosmosTransformer(CosmosConfig(video_latent_shape=[3, 4, 5], context_frames=0))
