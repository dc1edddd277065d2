"""LlamaGen GPT + VQ against golden tensors from the official code (shared/fixtures/llamagen)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import fixture_dir
from vargen.models.llamagen import GPT, GPTConfig, load_gpt_weights
from vargen.samplers.base import filter_logits, logits_to_probs
from vargen.tokenizers.llamagen_vq import VQConfig, VQModel, load_vq_weights
from vargen.testing import decode

ATOL = 1e-4


@pytest.fixture(scope="module")
def fx():
    d = fixture_dir("llamagen")
    meta = json.loads((d / "fixtures.json").read_text())
    return d, meta, load_file(str(d / "outputs.safetensors"))


def _gpt(d, meta, kind):
    model = GPT(GPTConfig.from_dict(meta[f"gpt_{kind}"]["model_args"])).eval()
    return load_gpt_weights(model, str(d / f"gpt_{kind}_tiny.safetensors"))


def _vq(d, meta):
    m = meta["vq"]
    enc = m["encoder_kwargs"]
    cfg = VQConfig.from_dict({**m["model_args"], "ch": enc["ch"], "num_res_blocks": enc["num_res_blocks"]})
    return load_vq_weights(VQModel(cfg).eval(), str(d / "vq_tiny.safetensors"))


@torch.no_grad()
def test_c2i_teacher_forcing_step_and_chunk(fx):
    d, meta, t = fx
    model = _gpt(d, meta, "c2i")
    labels, tokens = t["c2i.labels"], t["c2i.tokens"]
    tf = model.logits(labels, tokens)
    torch.testing.assert_close(tf, t["c2i.tf_logits"], atol=ATOL, rtol=0)

    n = tokens.shape[1]
    for chunk, key in ((1, "c2i.cache_step_logits"), (4, "c2i.cache_chunk4_logits")):
        cache = model.new_cache(labels.shape[0])
        out = [model.prefill(labels, cache)[:, None]]
        for s in range(0, n - 1, chunk):
            piece = tokens[:, s : min(s + chunk, n - 1)]
            out.append(decode(model, piece, torch.full((labels.shape[0],), s), cache))
        torch.testing.assert_close(torch.cat(out, 1), t[key], atol=ATOL, rtol=0)
        if chunk == 1:
            layers = sorted({int(k.split(".")[2][5:]) for k in t if k.startswith("c2i.kv.")})
            for i in layers:
                for kv in ("k", "v"):
                    ref = t[f"c2i.kv.layer{i}.{kv}_cache_filled"]
                    got = getattr(cache, kv)[i][:, :, : ref.shape[2]]
                    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
            assert cache.k[0][:, :, 0].abs().max() == 0  # class-token key is zeroed by the RoPE table


@torch.no_grad()
def test_c2i_per_row_positions_match_teacher_forcing(fx):
    """Rows at different positions in one call (speculative decoding's normal case)."""
    d, meta, t = fx
    model = _gpt(d, meta, "c2i")
    labels, tokens, ref = t["c2i.labels"], t["c2i.tokens"], t["c2i.tf_logits"]
    cache = model.new_cache(3)
    model.prefill(labels, cache)
    decode(model, tokens[:, :6], torch.zeros(3, dtype=torch.long), cache)
    # stale garbage beyond each row's position must be masked, then overwritten
    decode(model, torch.randint(0, 64, (3, 5)), torch.tensor([6, 6, 6]), cache)
    starts = torch.tensor([2, 4, 6])
    chunk = torch.stack([tokens[b, s : s + 3] for b, s in enumerate(starts.tolist())])
    out = decode(model, chunk, starts, cache)
    for b, s in enumerate(starts.tolist()):
        torch.testing.assert_close(out[b], ref[b, s + 1 : s + 4], atol=ATOL, rtol=0)


@torch.no_grad()
def test_t2i_teacher_forcing_and_cache(fx):
    d, meta, t = fx
    model = _gpt(d, meta, "t2i")
    cap, tokens = t["t2i.caption"], t["t2i.tokens"]
    T = model.config.cls_token_num
    full = model.logits(cap, tokens)  # image-token predictions only
    torch.testing.assert_close(full, t["t2i.tf_logits_all"][:, T - 1 :], atol=ATOL, rtol=0)
    cache = model.new_cache(2)
    out = [model.prefill(cap, cache)[:, None]]
    for s in range(tokens.shape[1] - 1):
        out.append(decode(model, tokens[:, s : s + 1], torch.full((2,), s), cache))
    torch.testing.assert_close(torch.cat(out, 1), t["t2i.cache_step_logits"], atol=ATOL, rtol=0)


def test_logits_chain_matches_official_filters(fx):
    _, _, t = fx
    x = t["sampling.logits_in"]
    cases = {k: k.split(".", 2)[2] for k in t if k.startswith("sampling.filtered.")}
    assert cases
    for key, name in cases.items():
        top_k = int(name.split("topk")[1].split("_")[0]) if "topk" in name else 0
        top_p = float(name.split("topp")[1]) if "topp" in name else 1.0
        assert torch.equal(filter_logits(x.clone(), top_k, top_p), t[key]), key
    for key in (k for k in t if k.startswith("sampling.probs.")):
        parts = key.split(".", 2)[2].split("_")
        temp = float(parts[0][1:])
        top_k = int(next(p for p in parts if p.startswith("topk"))[4:])
        top_p = float(next(p for p in parts if p.startswith("topp"))[4:])
        torch.testing.assert_close(logits_to_probs(x, temp, top_k, top_p), t[key], atol=1e-6, rtol=0)


@torch.no_grad()
def test_vq_encode_decode(fx):
    d, meta, t = fx
    vq = _vq(d, meta)
    img = t["vq.image_in"]
    torch.testing.assert_close(vq.pre_quant(img), t["vq.pre_quant"], atol=ATOL, rtol=0)
    idx = vq.encode(img)
    assert torch.equal(idx.flatten(1), t["vq.encode_indices"])
    torch.testing.assert_close(vq.codes(idx), t["vq.encode_quant"], atol=ATOL, rtol=0)
    torch.testing.assert_close(vq.decode(idx), t["vq.recon"], atol=ATOL, rtol=0)
    torch.testing.assert_close(vq.codes(t["vq.decode_indices"]), t["vq.decode_codes"], atol=ATOL, rtol=0)
    torch.testing.assert_close(vq.decode(t["vq.decode_indices"]), t["vq.decode_image"], atol=ATOL, rtol=0)


def test_wrong_size_checkpoint_is_named(fx):
    d, meta, _ = fx
    args = dict(meta["gpt_c2i"]["model_args"], n_layer=3)
    with pytest.raises(ValueError, match=r"(?s)missing keys .*layers\.2.*likely cause.*n_layer=2"):
        load_gpt_weights(GPT(GPTConfig.from_dict(args)), str(d / "gpt_c2i_tiny.safetensors"))
