"""Emu3 through transformers (vargen.models.hf) on tiny random configs built here: end-of-line tokens after every
row that the adapter writes itself, checked against transformers' own constrained generation (with and without the
negative-prompt guidance), the protocol checks, losslessness by enumeration on a grid with those structural tokens,
and every token sampler at batch > 1."""
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")
from transformers import Emu3Config, Emu3ForConditionalGeneration  # noqa: E402

from helpers import (ResampleFromTarget, assert_adapter_evicts, assert_prompt_rows_match_alone,  # noqa: E402
                     keep_path_without_row_ends, prompt_law_pvalue, randomise_)
from vargen import SamplingConfig, get_sampler  # noqa: E402
from vargen.models.hf import PromptTokens, image_lm  # noqa: E402
from vargen.models.hf.family import ImageDecoder  # noqa: E402
from vargen.pipeline import Pipeline  # noqa: E402
from vargen.samplers.proposers.jacobi import INITS  # noqa: E402
from vargen.testing import check_token_model  # noqa: E402

BOS, PAD, EOL, VISUAL = 0, 1, 5, 20  # text ids; visual token k is text id VISUAL + k


def tiny_emu3(codes=16, layers=2, seed=0, sharpness=3.0) -> Emu3ForConditionalGeneration:
    torch.manual_seed(seed)
    vocab_map = {f"<|visual token {k:06d}|>": VISUAL + k for k in range(codes)}
    vocab_map.update({"<|extra_200|>": EOL, "<image>": 6})
    config = Emu3Config(
        text_config=dict(vocab_size=VISUAL + codes + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=PAD,
                         bos_token_id=BOS, eos_token_id=2, attention_dropout=0.0),
        vq_config=dict(codebook_size=codes, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 1],
                       num_res_blocks=1, attn_resolutions=[], temporal_downsample_factor=1, hidden_size=32,
                       num_attention_heads=1),
        vocabulary_map=vocab_map)
    model = Emu3ForConditionalGeneration(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        randomise_([*model.model.text_model.named_parameters(), *model.lm_head.named_parameters()], g)
        model.lm_head.weight.mul_(sharpness)
    return model.eval()


PROMPTS = [[BOS, 8, 9, 10, 11, 7], [BOS, 12, 7], [BOS, 13, 14, 15, 16, 17, 18, 7]]
NEGATIVE = [BOS, 3, 4, 7]


def prompts(rows=PROMPTS) -> PromptTokens:
    return PromptTokens.from_lists(rows, PAD)


@pytest.fixture(scope="module")
def emu3():
    lm = image_lm(tiny_emu3(), height=3, width=4, negative=NEGATIVE)  # 3 rows of 4: an end of line every 4 tokens
    return lm


def _transformers_greedy(lm, cond, cfg_scale):
    """transformers' generate constrained as the official Emu3 script: visual tokens in a row, EOL at its end."""
    _, H, W = lm.grid
    T = cond.ids.shape[1]
    visual = lm.image_ids.tolist()

    def allowed(batch_id, ids):
        return [EOL] if (len(ids) - T) % (W + 1) == W else visual

    kw = {}
    if cfg_scale != 1.0:
        neg = PromptTokens.from_lists([NEGATIVE] * cond.batch, PAD)
        kw = dict(guidance_scale=cfg_scale, negative_prompt_ids=neg.ids, negative_prompt_attention_mask=neg.mask.long())
    out = lm.hf.generate(cond.ids, attention_mask=cond.mask.long(), max_new_tokens=H * (W + 1) - 1, do_sample=False,
                         prefix_allowed_tokens_fn=allowed, pad_token_id=PAD, eos_token_id=None, **kw)[:, T:]
    keep = torch.tensor([(i % (W + 1)) != W for i in range(out.shape[1])])
    assert (out[:, ~keep] == EOL).all()
    return out[:, keep] - VISUAL


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_greedy_equals_transformers_constrained_generation(emu3, cfg_scale):
    cond = prompts(PROMPTS[:2])
    ref = _transformers_greedy(emu3, cond, cfg_scale)
    config = SamplingConfig(temperature=0.0, top_k=0, cfg_scale=cfg_scale)
    for sampler in (get_sampler("ar"), get_sampler("sjd", window=6, coupled=True)):
        out = sampler.sample(emu3, cond, config, torch.Generator().manual_seed(0))
        assert torch.equal(out.tokens, ref), type(sampler).__name__


def test_protocol_conformance(emu3):
    report = check_token_model(emu3, prompts(), atol=1e-4)
    assert set(report) >= {"teacher_forcing", "chunked", "per_row", "rollback", "reuse", "cfg_rows", "head"}


def test_token_trees_cross_row_ends_as_forced_nodes(emu3):
    """The conformance check roots its tree two tokens before a row end, so branches cross it (``report["tree"]``);
    a tree sampler runs, every token in the image vocabulary."""
    assert check_token_model(emu3, prompts(), atol=1e-4)["tree"] < 1e-4
    out = get_sampler("sjd", window=4, tree_width=3).sample(emu3, prompts(), SamplingConfig(top_k=4),
                                                            torch.Generator().manual_seed(0))
    assert out.tokens.shape == (prompts().batch, emu3.num_tokens) and int(out.tokens.max()) < emu3.vocab_size


def test_negative_prompt_is_needed_for_guidance():
    lm = image_lm(tiny_emu3(), height=2, width=2)
    with pytest.raises(ValueError, match="negative prompt"):
        get_sampler("ar").sample(lm, prompts(PROMPTS[:1]), SamplingConfig(cfg_scale=3.0, top_k=0))


# -- losslessness on a grid with end-of-line tokens --------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    """5 visual tokens on a 2x2 grid (an end of line after each row of 2): 625 sequences."""
    return image_lm(tiny_emu3(codes=5, seed=1), height=2, width=2, negative=NEGATIVE)


CONFIG = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=4)
ONE = [[BOS, 8, 9, 7]]


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
SAMPLERS = [("ar", {}), *[("sjd", dict(window=5, init=i)) for i in INITS], ("sjd", dict(window=6, coupled=True)),
            ("gsd", dict(window=5, group_size=3)), ("lantern", dict(gamma=3, k=4, delta=0.2)), ("sd", dict(gamma=3))]


@pytest.mark.parametrize("name,options", SAMPLERS, ids=[f"{n}-{o.get('init', '')}" for n, o in SAMPLERS])
def test_every_token_sampler_runs_rows_independently(emu3, name, options):
    pipe = Pipeline("emu3", emu3, ImageDecoder(emu3), emu3.default_sampling)
    if name in ("sd", "lantern"):
        options = dict(options, draft=image_lm(tiny_emu3(layers=1, seed=4), height=3, width=4, negative=NEGATIVE))
    assert_prompt_rows_match_alone(pipe, PROMPTS, sampler=name, seed=3, temperature=1.0, top_k=0, cfg_scale=2.0,
                                   **options)


def test_decodes_to_images_through_the_emu3_vq(emu3):
    pipe = Pipeline("emu3", emu3, ImageDecoder(emu3), emu3.default_sampling)
    out = pipe.generate(PROMPTS[:2], sampler="ar", seed=0, top_k=0)  # the official 2048 exceeds 16 codes
    assert len(out.images) == 2 and out.images[0].size == (8, 6)  # 4x3 tokens, 2x upsampling


def test_compiled_step_gives_the_eager_tokens(emu3):
    config = SamplingConfig(temperature=1.0, top_k=0, cfg_scale=2.0)
    sampler = get_sampler("sjd", window=5, coupled=True)
    eager = sampler.sample(emu3, prompts(PROMPTS[:2]), config, torch.Generator().manual_seed(0))
    compiled = sampler.sample(emu3, prompts(PROMPTS[:2]), config, torch.Generator().manual_seed(0), compile=True)
    assert torch.equal(eager.tokens, compiled.tokens)


def test_text_prompts_and_the_negative_prompt_through_the_processor():
    """The official construction: BOS, prompt + positive suffix, ``<|image start|>H*W<|image token|>`` with the
    adapter's grid; the negative prompt the same way."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Emu3ImageProcessor, Emu3Processor, PreTrainedTokenizerFast

    from vargen.models.hf.emu3 import NEGATIVE_PROMPT, POSITIVE_SUFFIX

    vocab = {"<bos>": BOS, "<pad>": PAD, "<unk>": 2, "<|image start|>": 3, "<|image token|>": 4, "<|image end|>": 9,
             "<|extra_201|>": 10, "<image>": 6, "a": 11, "cat": 12, "2*3": 13}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # transformers 4.x processors insist on the model's tokenizer class; 5.x's GPT2Tokenizer would re-split words
    tokenizer_class = PreTrainedTokenizerFast if int(transformers.__version__.split(".")[0]) >= 5 else \
        getattr(transformers, "GPT2TokenizerFast")
    fast = tokenizer_class(
        tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>", "boi_token": "<|image start|>", "eoi_token": "<|image end|>",
                              "image_wrapper_token": "<|image token|>", "eof_token": "<|extra_201|>"})
    processor = Emu3Processor(image_processor=Emu3ImageProcessor(), tokenizer=fast)
    lm = image_lm(tiny_emu3(), height=2, width=3)
    unk = lambda text: [2] * len(text.split())  # noqa: E731  (words outside the tiny vocabulary)
    assert lm.prompt_ids(processor, "a cat") == [BOS, 11, 12, *unk(POSITIVE_SUFFIX), 3, 13, 4]
    assert lm.negative_ids(processor) == [BOS, *unk(NEGATIVE_PROMPT), 3, 13, 4]


def test_kv_eviction_through_per_layer_masks():
    assert_adapter_evicts(lambda: image_lm(tiny_emu3(), height=3, width=4, negative=NEGATIVE), prompts())
