"""Chameleon-architecture generators (Lumina-mGPT, Anole) through transformers (vargen.models.hf) on tiny random
configs built here: image tokens reachable although transformers masks them, greedy decoding against a loop over
the transformers model with the official unbatched guidance, the VQGAN decoder against a golden decode of the
official module, the protocol checks, losslessness by enumeration on a grid with forced row ends, every token
sampler at batch > 1, and a ``save_pretrained`` folder with ``vqgan.ckpt`` through ``vargen.load`` and the CLI."""
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")
from safetensors.torch import load_file  # noqa: E402
from transformers import ChameleonConfig, ChameleonForConditionalGeneration  # noqa: E402

from helpers import (ResampleFromTarget, assert_adapter_evicts, assert_prompt_rows_match_alone,  # noqa: E402
                     keep_path_without_row_ends, prompt_law_pvalue, randomise_)
from vargen import SamplingConfig, get_sampler, load  # noqa: E402
from vargen.cli import main as vargen_main  # noqa: E402
from vargen.models.hf import PromptTokens, image_lm  # noqa: E402
from vargen.models.hf.chameleon import size_token  # noqa: E402
from vargen.models.hf.chameleon_vqgan import ChameleonVQGANDecoder  # noqa: E402
from vargen.samplers.proposers.jacobi import INITS  # noqa: E402
from vargen.testing import check_token_model  # noqa: E402

GOLDEN = Path(__file__).parent / "data" / "chameleon_vqgan_decode.safetensors"
BOS, PAD, START, SEP, EOL, IMAGE = 0, 1, 2, 3, 5, 20  # text ids; VQ code k is text id IMAGE + k
SIZES = {1: 7, 2: 8, 3: 9, 24: 10}  # Lumina-mGPT's size tokens <reserved{8800+n}> (24: the 768-px default)
VQ = dict(embed_dim=4, num_embeddings=16, latent_channels=8, resolution=32, base_channels=32,
          channel_multiplier=[1, 1], num_res_blocks=1, attn_resolutions=[])  # the golden decode's config


def golden_taming() -> dict[str, torch.Tensor]:
    return {k[len("state_dict."):]: v for k, v in load_file(GOLDEN).items() if k.startswith("state_dict.")}


def image_name(code: int) -> str:
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def tiny_chameleon(codes=16, layers=2, seed=0, sharpness=3.0) -> ChameleonForConditionalGeneration:
    torch.manual_seed(seed)
    vocab = {"<s>": BOS, "<pad>": PAD, "<racm3:break>": START, "<reserved08706>": SEP, "<image>": 4,
             "<reserved08799>": EOL, **{size_token(n): i for n, i in SIZES.items()},
             **{image_name(k): IMAGE + k for k in range(codes)}}
    config = ChameleonConfig(
        vocab_size=IMAGE + codes + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=PAD, bos_token_id=BOS,
        eos_token_id=SEP, vq_config=dict(VQ, num_embeddings=codes), vocabulary_map=vocab)
    model = ChameleonForConditionalGeneration(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        randomise_([(n, p) for n, p in model.named_parameters()  # the text model; QK-norms [heads, dim] stay at 1
                    if not n.startswith("model.vqmodel") and "q_norm" not in n and "k_norm" not in n], g)
        model.lm_head.weight.mul_(sharpness)
        if codes == 16:  # the golden VQGAN's codebook and post-quant conv, so its vqgan.ckpt belongs to this model
            taming = golden_taming()
            vq = model.model.vqmodel
            vq.quantize.embedding.weight.copy_(taming["quantize.embedding.weight"])
            vq.post_quant_conv.weight.copy_(taming["post_quant_conv.weight"])
            vq.post_quant_conv.bias.copy_(taming["post_quant_conv.bias"])
    return model.eval()


LUMINA_PREFIX = [START, SIZES[1], SIZES[2]]  # 2 x 4 tokens: 1 x 2 patches of 32 px
PROMPTS = [[BOS, 11, 12, 13, SEP, *LUMINA_PREFIX], [BOS, 14, SEP, *LUMINA_PREFIX],
           [BOS, 15, 16, 17, 18, 19, SEP, *LUMINA_PREFIX]]


def prompts(rows=PROMPTS) -> PromptTokens:
    return PromptTokens.from_lists(rows, PAD)


@pytest.fixture(scope="module")
def lumina():
    lm = image_lm(tiny_chameleon(), layout="lumina", height=2, width=4)
    lm.vqgan.load_taming(golden_taming())
    return lm


# -- the adapter against transformers --------------------------------------------------------------------------------
def test_image_tokens_are_reachable_although_transformers_masks_them(lumina):
    """transformers' Chameleon forward sets every image-token logit to the dtype minimum; the adapter's logits are
    the LM head's unmasked image rows, and sampling reaches image tokens."""
    cond = prompts(PROMPTS[:1])
    masked = lumina.hf(input_ids=cond.ids).logits[0, -1]
    assert (masked[IMAGE:IMAGE + 16] == torch.finfo(masked.dtype).min).all()
    hidden = lumina.hf.model(input_ids=cond.ids).last_hidden_state[0, -1]
    mine = lumina.prefill(cond, lumina.new_cache(1))[0]
    assert torch.allclose(mine, lumina.hf.lm_head(hidden)[IMAGE:IMAGE + 16], atol=1e-4)
    out = get_sampler("ar").sample(lumina, cond, SamplingConfig(temperature=1.0, top_k=0, cfg_scale=1.0),
                                   torch.Generator().manual_seed(0))
    assert out.tokens.shape == (1, 8) and len(set(out.tokens[0].tolist())) > 1


def _official_greedy(lm, cond_ids: list[int], cfg_scale: float) -> list[int]:
    """Lumina-mGPT's loop over the transformers model, recomputed from scratch every token (no cache): the
    conditional sequence, the unconditional one from the image start on in a separate forward (its unbatched
    guidance processor), ``u + s (c - u)``, a forced end-of-line after every row, argmax over image tokens."""
    _, H, W = lm.grid
    start = cond_ids.index(START)
    seq, out = list(cond_ids), []
    head = lambda ids: lm.hf.lm_head(lm.hf.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1])  # noqa
    while len(out) < H * W:
        logits = head(seq)
        if cfg_scale != 1.0:
            u = head(seq[start:])
            logits = u + cfg_scale * (logits - u)
        code = int(logits[IMAGE:IMAGE + 16].argmax())
        out.append(code)
        seq.append(IMAGE + code)
        if len(out) % W == 0:
            seq.append(EOL)
    return out


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_greedy_equals_the_official_loop_over_the_transformers_model(lumina, cfg_scale):
    cond = prompts(PROMPTS[:2])
    ref = torch.tensor([_official_greedy(lumina, row, cfg_scale) for row in PROMPTS[:2]])
    config = SamplingConfig(temperature=0.0, top_k=0, cfg_scale=cfg_scale)
    for sampler in (get_sampler("ar"), get_sampler("sjd", window=5, coupled=True)):
        out = sampler.sample(lumina, cond, config, torch.Generator().manual_seed(0))
        assert torch.equal(out.tokens, ref), type(sampler).__name__


def test_unconditional_rows_and_layouts(lumina):
    assert lumina.unconditional(prompts(PROMPTS[:1])).ids[0].tolist() == LUMINA_PREFIX
    assert lumina.row_end_id == EOL and lumina.default_sampling.cfg_scale == 3.0
    assert lumina.default_sampling.top_k == 2000
    anole = image_lm(tiny_chameleon(), layout="anole", height=3, width=3)
    assert anole.row_end_id is None and anole.unconditional(prompts(PROMPTS[:1])).ids[0].tolist() == [START]
    assert anole.default_sampling.cfg_scale == 7.0
    with pytest.raises(ValueError, match="even token counts"):
        image_lm(tiny_chameleon(), layout="lumina", height=3, width=4)
    with pytest.raises(ValueError, match="lacks <reserved08810>"):  # a 20-patch side has no size token here
        image_lm(tiny_chameleon(), layout="lumina", height=20, width=4)
    with pytest.raises(ValueError, match="layout must be one of"):
        image_lm(tiny_chameleon(), layout="emu3")


@pytest.mark.parametrize("layout", ["lumina", "anole"])
def test_protocol_conformance(layout):
    lm = image_lm(tiny_chameleon(), layout=layout, height=2, width=4)
    rows = PROMPTS if layout == "lumina" else [r[:-2] for r in PROMPTS]
    report = check_token_model(lm, prompts(rows), atol=1e-4)
    assert set(report) >= {"teacher_forcing", "chunked", "per_row", "rollback", "reuse", "cfg_rows", "head"}


# -- the VQGAN decoder -------------------------------------------------------------------------------------------------
def test_vqgan_decoder_equals_the_official_decode():
    """tests/data/chameleon_vqgan_decode.safetensors: the taming VQModel that Lumina-mGPT vendors
    (lumina_mgpt/model/chameleon_vae_ori/vqgan.py), seeded random weights, ``decode(get_codebook_entry(codes))``."""
    golden = load_file(GOLDEN)
    model = tiny_chameleon()
    decoder = ChameleonVQGANDecoder(model.config.vq_config, model.model.vqmodel.quantize.embedding,
                                    model.model.vqmodel.post_quant_conv)
    decoder.load_taming(golden_taming())
    out = decoder(golden["codes"])
    assert torch.allclose(out, golden["decoded"], atol=1e-4), (out - golden["decoded"]).abs().max()


def test_vqgan_of_another_model_is_refused():
    decoder = image_lm(tiny_chameleon(seed=2, codes=12), layout="lumina", height=2, width=4).vqgan
    with pytest.raises(ValueError, match="differs from the model's"):
        decoder.load_taming(golden_taming())


# -- losslessness on a grid with forced row ends ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    """5 image tokens on a 2x2 Lumina grid (an end of line after each row of 2): 625 sequences."""
    return image_lm(tiny_chameleon(codes=5, seed=1), layout="lumina", height=2, width=2)


CONFIG = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=4)
ONE = [[BOS, 11, SEP, START, SIZES[1], SIZES[1]]]


@pytest.mark.parametrize("name,options", [
    ("ar", {}),
    ("sjd", dict(window=3, init="random")),
    ("sjd", dict(window=4, init="vertical_sample", coupled=True)),
    ("sjd", dict(window=3, tree_width=2, tree_depth=2)),  # token trees: row ends are forced nodes
    ("sjd-pac", dict(window=3, tree_width=3, tree_depth=2)),
])
def test_lossless_against_enumerated_distribution(small, name, options):
    assert prompt_law_pvalue(get_sampler(name, **options), small, ONE[0], CONFIG) > 1e-3


def test_chi_square_test_has_power(small, monkeypatch):
    broken = get_sampler("sjd", window=4, init="horizontal", acceptance=ResampleFromTarget())
    assert prompt_law_pvalue(broken, small, ONE[0], CONFIG) < 1e-6
    # trees: a cache that forgets the row ends on the kept path is caught
    monkeypatch.setattr("vargen.samplers.session.keep_tree_path_", keep_path_without_row_ends)
    assert prompt_law_pvalue(get_sampler("sjd", window=2, tree_width=2, tree_depth=2), small, ONE[0], CONFIG) < 1e-6


# -- every token sampler, batch > 1 ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A Lumina-layout folder as users assemble it: the transformers checkpoint plus the released vqgan.ckpt."""
    path = tmp_path_factory.mktemp("chameleon") / "tiny-lumina"
    tiny_chameleon().save_pretrained(path)
    config = json.loads((path / "config.json").read_text())  # as Lumina-mGPT's own class saved its checkpoints
    config["architectures"] = ["ChameleonXLLMXForConditionalGeneration"]
    (path / "config.json").write_text(json.dumps(config))
    torch.save({"state_dict": golden_taming()}, path / "vqgan.ckpt")
    return path


@pytest.fixture(scope="module")
def pipe(folder):
    return load(folder)


SAMPLERS = [("ar", {}), *[("sjd", dict(window=5, init=i)) for i in INITS], ("sjd", dict(window=6, coupled=True)),
            ("gsd", dict(window=5, group_size=3)), ("lantern", dict(gamma=3, k=4, delta=0.2)), ("sd", dict(gamma=3))]


@pytest.mark.parametrize("name,options", SAMPLERS, ids=[f"{n}-{o.get('init', '')}" for n, o in SAMPLERS])
def test_every_token_sampler_runs_rows_independently(lumina, name, options):
    from vargen.models.hf.family import ImageDecoder
    from vargen.pipeline import Pipeline

    pipe = Pipeline("chameleon", lumina, ImageDecoder(lumina), lumina.default_sampling)
    if name in ("sd", "lantern"):
        options = dict(options, draft=image_lm(tiny_chameleon(layers=1, seed=4), layout="lumina", height=2, width=4))
    assert_prompt_rows_match_alone(pipe, PROMPTS, sampler=name, seed=3, temperature=1.0, top_k=0, cfg_scale=2.0,
                                   **options)


def test_compiled_step_gives_the_eager_tokens(lumina):
    config = SamplingConfig(temperature=1.0, top_k=0, cfg_scale=2.0)
    sampler = get_sampler("sjd", window=5, coupled=True)
    eager = sampler.sample(lumina, prompts(PROMPTS[:2]), config, torch.Generator().manual_seed(0))
    compiled = sampler.sample(lumina, prompts(PROMPTS[:2]), config, torch.Generator().manual_seed(0), compile=True)
    assert torch.equal(eager.tokens, compiled.tokens)


# -- loading and the CLI, offline -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spec(folder):
    """A pipeline.json over the folder that sets the tiny grid (released Lumina-mGPT-7B-768 folders need none)."""
    path = folder.parent / "tiny-lumina-2x4"
    path.mkdir()
    (path / "pipeline.json").write_text(json.dumps({"kind": "chameleon", "model": folder.name,
                                                    "model_options": {"height": 2, "width": 4},
                                                    "defaults": {"top_k": 0}}))
    return path


def test_a_folder_loads_with_its_layout_defaults_and_vqgan(folder):
    pipe = load(folder)
    assert pipe.takes_prompts and pipe.kind == "chameleon" and pipe.model.layout == "lumina"
    assert pipe.model.grid == (1, 48, 48)  # Lumina-mGPT-7B-768's grid unless told otherwise
    assert pipe.defaults.cfg_scale == 3.0 and pipe.defaults.top_k == 2000  # the official defaults
    assert pipe.model.vqgan.loaded


def test_pipeline_json_grid_generates_images(spec):
    pipe = load(spec)
    assert pipe.model.grid == (1, 2, 4) and pipe.defaults.top_k == 0 and pipe.defaults.cfg_scale == 3.0
    out = pipe.generate(PROMPTS[:2], sampler="sjd:window=4,coupled=true", seed=0)
    assert len(out.images) == 2 and out.images[0].size == (8, 4)  # 4 x 2 tokens, one 2x upsampling


def test_cli_generates_from_the_folder_offline(spec, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    ids = ",".join(map(str, PROMPTS[1]))
    assert vargen_main(["generate", "--model", str(spec), "--prompt-ids", ids, "--sampler", "ar", "--out",
                        str(out), "--grid", str(tmp_path / "grid.png")]) == 0
    stats = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert stats["images"] == 1 and stats["forward_passes"] >= 1
    assert (tmp_path / "grid.png").is_file()


def test_missing_vqgan_and_bad_options_are_named(folder, tmp_path):
    bare = tmp_path / "no-vqgan"
    tiny_chameleon().save_pretrained(bare)
    lm = load(bare).model
    assert not lm.vqgan.loaded
    with pytest.raises(RuntimeError, match="vqgan.ckpt"):
        lm.decode(torch.zeros(1, lm.num_tokens, dtype=torch.long))
    with pytest.raises(ValueError, match="has none"):  # nothing to unlock: not silently ignored
        load(bare, trusted=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pipeline.json").write_text(json.dumps({"kind": "chameleon", "model": str(folder),
                                                                "model_options": {"ratio": "1:1"}}))
    with pytest.raises(ValueError, match="model_options \\['ratio'\\] do not apply"):
        load(tmp_path / "bad")
    (tmp_path / "bad" / "pipeline.json").write_text(json.dumps({"kind": "llamagen", "model": "x", "tokenizer": "y",
                                                                "model_options": {"height": 2}}))
    with pytest.raises(ValueError, match="apply to transformers image LMs"):
        load(tmp_path / "bad")


def test_text_prompts_through_the_tokenizer():
    """Lumina-mGPT's construction: BOS, "Generate an image of WxH according to the following prompt:\\n" +
    caption + the turn separator, then the image start and the size tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": BOS, "<pad>": PAD, "<unk>": 6, "<reserved08706>": SEP, "a": 11, "cat": 12}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=["<reserved08706>"])
    lm = image_lm(tiny_chameleon(), layout="lumina", height=2, width=4)
    words = "Generate an image of 64x32 according to the following prompt:".split()
    assert lm.prompt_ids(fast, "a cat") == [BOS, *[6] * len(words), 11, 12, SEP, *LUMINA_PREFIX]
    anole = image_lm(tiny_chameleon(), layout="anole", height=2, width=2)
    assert anole.prompt_ids(fast, "a cat") == [BOS, 11, 12, SEP, START]


@pytest.mark.parametrize("shape", ["random-tiny-janus", "random-tiny-emu3", "random-tiny-lumina"])
def test_bench_runs_the_tiny_random_model_of_each_adapter(shape, capsys):
    assert vargen_main(["bench", "--model", shape, "--num-tokens", "16", "--top-k", "0", "--sampler", "ar",
                        "sjd:window=4,coupled=true"]) == 0
    out = capsys.readouterr().out
    assert "| `ar` | 1 | 16.0 | 1.00 |" in out and "| `sjd:coupled=true,window=4` | 1 |" in out
    assert vargen_main(["bench", "--model", shape, "--num-layers", "1", "--sampler", "ar"]) == 2
    assert "--num-layers applies to the official transformers shapes" in capsys.readouterr().err


def test_kv_eviction_through_per_layer_masks():
    assert_adapter_evicts(lambda: image_lm(tiny_chameleon(), layout="lumina", height=4, width=4), prompts())
