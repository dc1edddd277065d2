"""Janus / Janus-Pro through transformers (vargen.models.hf) on tiny random configs built here: the adapter
against transformers' own image generation, the protocol checks, losslessness by enumeration with a power check,
every token sampler at batch > 1, and a ``save_pretrained`` folder through ``vargen.load`` and the CLI, offline."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")
from transformers import GenerationConfig, JanusConfig, JanusForConditionalGeneration  # noqa: E402

from helpers import (ResampleFromTarget, assert_adapter_evicts, assert_prompt_rows_match_alone,  # noqa: E402
                     prompt_law_pvalue, randomise_)
from vargen import SamplingConfig, get_sampler, load  # noqa: E402
from vargen.cli import main as vargen_main  # noqa: E402
from vargen.models.base import HiddenStateModel  # noqa: E402
from vargen.models.hf import PromptTokens, image_lm  # noqa: E402
from vargen.samplers.proposers.jacobi import INITS  # noqa: E402
from vargen.testing import check_token_model  # noqa: E402

BOS, PAD, BOI, IMAGE = 0, 1, 98, 99  # text ids of the tiny configs (text vocabulary 100)


def tiny_janus(side=4, codes=16, layers=2, seed=0, sharpness=3.0) -> JanusForConditionalGeneration:
    """A random Janus with a ``side x side`` image grid of ``codes`` VQ entries and peaked (trained-like) image
    distributions (transformers' 0.02-std init makes every image distribution nearly uniform)."""
    torch.manual_seed(seed)
    config = JanusConfig(
        text_config=dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=100, pad_token_id=PAD,
                         bos_token_id=BOS, max_position_embeddings=128),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16 * side, patch_size=16, num_image_tokens=side * side, projection_dim=32,
                           depth=1),
        vq_config=dict(embed_dim=8, num_embeddings=codes, latent_channels=32, base_channels=32,
                       channel_multiplier=[1, 1], num_res_blocks=1, projection_dim=32, image_token_embed_dim=32,
                       num_patches=side),
        image_token_id=IMAGE)
    model = JanusForConditionalGeneration(config)
    model.generation_config = GenerationConfig(pad_token_id=PAD, bos_token_id=BOS,
                                               generation_kwargs={"boi_token_id": BOI})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gen = model.model
        randomise_([(f"{n}.{k}", p) for n, m in [("lm", gen.language_model), ("gen_embed", gen.generation_embeddings),
                                                  ("aligner", gen.generation_aligner), ("head", gen.generation_head)]
                    for k, p in m.named_parameters()], g)
        gen.generation_head.vision_head.weight.mul_(sharpness)
    return model.eval()


PROMPTS = [[BOS, 5, 17, 42, 7, BOI], [BOS, 9, 3, BOI], [BOS, 60, 61, 62, 63, 64, 65, BOI]]


def prompts(rows=PROMPTS) -> PromptTokens:
    return PromptTokens.from_lists(rows, PAD)


@pytest.fixture(scope="module")
def janus():
    return image_lm(tiny_janus())


# -- the adapter against transformers --------------------------------------------------------------------------------
OLD_JANUS_GENERATE = tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 12)


@pytest.mark.skipif(OLD_JANUS_GENERATE, reason="transformers < 5.12: its own Janus image generate gives other tokens "
                    "than 5.12+ for the same weights (vargen's tokens are the same on 4.52.1, 5.0, 5.12, 5.24, "
                    "5.25)")
@pytest.mark.parametrize("cfg_scale", [2.0, 5.0])
def test_greedy_ar_equals_transformers_image_generation(janus, cfg_scale):
    """transformers' ``generate(generation_mode="image")`` runs Janus's own loop (CFG rows, its cache); vargen's
    greedy AR and greedy SJD give the same tokens for the same (left-padded) prompt ids."""
    cond = prompts(PROMPTS[:2])
    ref = janus.hf.generate(cond.ids, attention_mask=cond.mask.long(), generation_mode="image", do_sample=False,
                            guidance_scale=cfg_scale)
    config = SamplingConfig(temperature=0.0, cfg_scale=cfg_scale)
    for sampler in (get_sampler("ar"), get_sampler("sjd", window=5, coupled=True)):
        out = sampler.sample(janus, cond, config, torch.Generator().manual_seed(0))
        assert torch.equal(out.tokens, ref.to(out.tokens)), type(sampler).__name__


def test_greedy_without_guidance_equals_a_loop_over_the_transformers_model(janus):
    """No CFG (transformers' image ``generate`` needs a guidance scale > 1): greedy AR equals argmax decoding with
    the full transformers forward recomputed from scratch for every token (no cache, transformers' own masks)."""
    cond = prompts(PROMPTS[:2])
    out = get_sampler("ar").sample(janus, cond, SamplingConfig(temperature=0.0, cfg_scale=1.0))
    lm, embeds = janus.hf.model.language_model, janus.hf.get_input_embeddings()
    tokens = torch.zeros(2, 0, dtype=torch.long)
    for _ in range(janus.num_tokens):
        h = torch.cat([embeds(cond.ids), janus.hf.prepare_embeddings_for_image_generation(tokens)], 1)
        mask = torch.cat([cond.mask, torch.ones_like(tokens, dtype=torch.bool)], 1).long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = lm(inputs_embeds=h, attention_mask=mask, position_ids=positions).last_hidden_state
        tokens = torch.cat([tokens, janus.hf.model.generation_head(hidden[:, -1:]).argmax(-1)], 1)
    assert torch.equal(out.tokens, tokens)


def test_protocol_conformance(janus):
    assert isinstance(janus, HiddenStateModel)
    report = check_token_model(janus, prompts(), atol=1e-4)
    assert set(report) >= {"teacher_forcing", "chunked", "per_row", "rollback", "reuse", "cfg_rows", "head", "tree"}


def test_a_padded_row_equals_the_row_alone(janus):
    """Left padding changes nothing: a short prompt batched with longer ones gets the tokens it gets alone."""
    config = SamplingConfig(temperature=1.0, cfg_scale=3.0)
    sampler = get_sampler("sjd", window=4, coupled=True)
    batch = sampler.sample(janus, prompts(), config, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    for i, row in enumerate(PROMPTS):
        alone = sampler.sample(janus, prompts([row]), config, [torch.Generator().manual_seed(5 + i)])
        assert torch.equal(alone.tokens[0], batch.tokens[i]), i


def test_unconditional_prompt_is_the_official_one(janus):
    """Janus-Pro's CFG row: every prompt token but BOS and begin-of-image replaced by the pad token."""
    uncond = janus.unconditional(prompts(PROMPTS[:1]))
    assert uncond.ids[0].tolist() == [BOS, PAD, PAD, PAD, PAD, BOI]


# -- losslessness by enumeration -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    """6 image tokens on a 2x2 grid: 1296 sequences to enumerate."""
    return image_lm(tiny_janus(side=2, codes=6, seed=1))


CONFIG = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=4)
ONE_PROMPT = [[BOS, 5, 17, BOI]]


@pytest.mark.parametrize("name,options", [
    ("ar", {}),
    ("sjd", dict(window=3, init="random")),
    ("sjd", dict(window=4, init="horizontal_sample", coupled=True)),
    ("sjd", dict(window=3, tree_width=3, coupled=True)),  # SJD-PAC's tree over the adapter's tree attention
    ("sjd", dict(window=4, init="random", coupled=True)),
])
def test_lossless_against_enumerated_distribution(small, name, options):
    assert prompt_law_pvalue(get_sampler(name, **options), small, ONE_PROMPT[0], CONFIG, n=10000) > 1e-3


def test_sd_with_a_janus_draft_is_lossless(small):
    draft = image_lm(tiny_janus(side=2, codes=6, layers=1, seed=4))
    assert prompt_law_pvalue(get_sampler("sd", draft=draft, gamma=3), small, ONE_PROMPT[0], CONFIG, n=10000) > 1e-3


def test_chi_square_test_has_power(small):
    broken = get_sampler("sjd", window=4, init="horizontal", acceptance=ResampleFromTarget())
    assert prompt_law_pvalue(broken, small, ONE_PROMPT[0], CONFIG, n=10000) < 1e-6


# -- every token sampler, batch > 1 ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("janus") / "tiny-janus"
    tiny_janus().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(folder):
    return load(folder)


SAMPLERS = [("ar", {}), *[("sjd", dict(window=4, init=i)) for i in INITS],
            ("sjd", dict(window=6, coupled=True)), ("gsd", dict(window=4, group_size=3)),
            ("lantern", dict(gamma=3, k=4, delta=0.2)), ("sd", dict(gamma=3))]


@pytest.mark.parametrize("name,options", SAMPLERS, ids=[f"{n}-{o.get('init', '')}" for n, o in SAMPLERS])
def test_every_token_sampler_runs_rows_independently(pipe, name, options, tmp_path):
    """Batch of 3 prompts of different lengths with per-row seeds: each row gets the tokens it gets alone."""
    if name in ("sd", "lantern"):
        options = dict(options, draft=image_lm(tiny_janus(layers=1, seed=4)))
    assert_prompt_rows_match_alone(pipe, PROMPTS, sampler=name, seed=3, temperature=1.0, cfg_scale=3.0, **options)


def test_lantern_neighbourhoods_come_from_the_vq_codebook(pipe):
    sampler = pipe.make_sampler("lantern", gamma=3, k=4, delta=0.2, draft=image_lm(tiny_janus(layers=1, seed=4)))
    book = sampler.rule.codebook() if callable(sampler.rule.codebook) else sampler.rule.codebook
    assert torch.allclose(book, pipe.model.codebook())


# -- loading and the CLI, offline -------------------------------------------------------------------------------------
def test_save_pretrained_folder_loads_and_generates_images(pipe):
    assert pipe.takes_prompts and pipe.kind == "janus"
    assert pipe.defaults.cfg_scale == 5.0 and pipe.defaults.temperature == 1.0  # the official defaults
    out = pipe.generate(PROMPTS[:2], seed=0)
    assert len(out.images) == 2 and out.images[0].size == (8, 8)  # 4x4 tokens, one 2x upsampling


def test_cli_generates_from_the_folder_offline(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    assert vargen_main(["generate", "--model", str(folder), "--prompt-ids", "0,5,17,42,7,98", "0,9,3,98",
                        "--sampler", "sjd:window=4,coupled=true", "--out", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert stats["images"] == 2 and stats["forward_passes"] >= 1
    assert sorted(p.name for p in out.iterdir()) == ["0000_ids-17-42-7-98.png", "0001_ids-0-9-3-98.png",
                                                     "manifest.json"]


def test_pipeline_json_names_a_draft_for_sd(folder, tmp_path):
    draft = tmp_path / "draft"
    tiny_janus(layers=1, seed=4).save_pretrained(draft)
    spec = tmp_path / "janus-with-draft"
    spec.mkdir()
    (spec / "pipeline.json").write_text(json.dumps({"kind": "janus", "model": str(folder), "draft": str(draft),
                                                    "defaults": {"cfg_scale": 3.0}}))
    pipe = load(spec)
    assert pipe.defaults.cfg_scale == 3.0 and pipe.defaults.temperature == 1.0
    out = pipe.generate(PROMPTS[:2], sampler="sd:gamma=3", decode=False)
    assert out.stats.draft_forward_passes > 0


def test_bad_input_is_rejected_before_work(pipe, folder, tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="no tokenizer/processor"):
        pipe.generate(["a cat"])
    with pytest.raises(ValueError, match="out of range"):
        pipe.generate([[0, 5, 100]])
    with pytest.raises(ValueError, match="out of range"):  # straight to a sampler: the model checks them too
        get_sampler("ar").sample(pipe.model, PromptTokens(torch.tensor([[0, 500, BOI]])), SamplingConfig())
    with pytest.raises(ValueError, match="left-padded"):
        PromptTokens(torch.tensor([[0, 5, PAD]]), torch.tensor([[True, True, False]]))
    with pytest.raises(ValueError, match="all strings or all non-empty lists"):
        pipe.generate([[0, 5], "a cat"])
    with pytest.raises(ValueError, match="does not apply to janus"):
        pipe.generate(PROMPTS[:1], cfg_interval=3)
    with pytest.raises(ValueError, match="applies to the official names"):
        load(folder, checkpoint="x.pt")
    for args, message in [(["--model", str(folder), "--class-id", "3"], "is a text-to-image model"),
                          (["--model", str(folder), "--prompt-ids", "0,x"], "comma-separated integers"),
                          (["--prompt", "a cat"], "is class-conditional"),
                          (["--prompt", "a cat", "--prompt-ids", "0,1"], "not both")]:
        assert vargen_main(["generate", *args, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    original = tmp_path / "janus-original-format"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"model_type": "multi_modality"}))
    with pytest.raises(ValueError, match="transformers conversion"):
        load(original)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="nobody-here/no-such-janus"):
        load("nobody-here/no-such-janus")


def test_compiled_step_gives_the_eager_tokens(janus):
    """``compile=True`` compiles the step through transformers' decoder and the per-row cache (fullgraph)."""
    config = SamplingConfig(temperature=1.0, cfg_scale=3.0)
    sampler = get_sampler("sjd", window=4, coupled=True)
    eager = sampler.sample(janus, prompts(PROMPTS[:2]), config, torch.Generator().manual_seed(0))
    compiled = sampler.sample(janus, prompts(PROMPTS[:2]), config, torch.Generator().manual_seed(0), compile=True)
    assert torch.equal(eager.tokens, compiled.tokens)


def test_bench_takes_prompt_models_and_the_random_janus_shape(folder, tmp_path, capsys):
    """``vargen bench`` on a Janus folder with prompt ids, and on the random Janus-Pro-1B shape (1 layer, 2x2)."""
    table = tmp_path / "table.md"
    assert vargen_main(["bench", "--model", str(folder), "--prompt-ids", "0,5,17,98", "0,9,98", "--batch", "2",
                        "--sampler", "ar", "sjd:window=4,coupled=true", "--forward", "--out", str(table)]) == 0
    text = table.read_text()
    assert "| `ar` | 2 | 16.0 |" in text and "| `sjd:coupled=true,window=4` | 2 |" in text and "| 2 | 16 |" in text
    assert vargen_main(["bench", "--model", "random-janus-pro-1b", "--num-layers", "1", "--num-tokens", "4",
                        "--sampler", "ar"]) == 0
    assert "| `ar` | 1 | 4.0 |" in capsys.readouterr().out
    assert vargen_main(["bench", "--model", str(folder), "--sampler", "ar"]) == 2
    assert "give prompts" in capsys.readouterr().err
    assert vargen_main(["bench", "--prompt-ids", "0,1", "--sampler", "ar"]) == 2
    assert "prompts do not apply" in capsys.readouterr().err


CHAT_TEMPLATE = ("{% for m in messages %}<|User|>: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}\n\n"
                 "{% endfor %}{% if add_generation_prompt %}<|Assistant|>:{% endif %}")


def tiny_processor():
    """A word-level tokenizer with Janus's special tokens (BOS 0, pad 1, begin-of-image 98) and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import JanusImageProcessor, JanusProcessor, PreTrainedTokenizerFast

    words = ["<bos>", "<pad>", "<unk>", "<|User|>:", "<|Assistant|>:", "a", "red", "cat", "blue", "dog", "in", "snow"]
    vocab = {w: i for i, w in enumerate(words)}
    vocab.update({"<end_of_image>": 97, "<begin_of_image>": BOI, "<image_placeholder>": IMAGE})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    # transformers 4.x processors insist on the model's tokenizer class; 5.x's LlamaTokenizer would re-split words
    tokenizer_class = PreTrainedTokenizerFast if int(transformers.__version__.split(".")[0]) >= 5 else \
        getattr(transformers, "LlamaTokenizerFast")
    fast = tokenizer_class(
        tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                              "eoi_token": "<end_of_image>"})
    fast.add_special_tokens({"additional_special_tokens": ["<|User|>:", "<|Assistant|>:"]})
    return JanusProcessor(image_processor=JanusImageProcessor(), tokenizer=fast, chat_template=CHAT_TEMPLATE,
                          num_image_tokens=16)


def test_text_prompts_go_through_the_checkpoints_processor(folder, tmp_path, capsys, monkeypatch):
    """A folder with processor files takes text: the chat template's user turn and assistant prefix, then
    begin-of-image, as the official script; the pipeline and the CLI give the tokens of those ids."""
    with_text = tmp_path / "janus-with-processor"
    tiny_janus().save_pretrained(with_text)
    tiny_processor().save_pretrained(with_text)
    pipe = load(with_text)
    ids = pipe.model.prompt_ids(pipe.model.processor, "a red cat")
    assert ids == [BOS, 3, 5, 6, 7, 4, BOI]
    kw = dict(sampler="sjd:window=4,coupled=true", seed=1, per_row_seeds=True, decode=False)
    assert torch.equal(pipe.generate(["a red cat"], **kw).tokens, pipe.generate([ids], **kw).tokens)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    assert vargen_main(["generate", "--model", str(with_text), "--prompt", "a red cat", "a blue dog in snow",
                        "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000_a-red-cat.png", "0001_a-blue-dog-in-snow.png",
                                                     "manifest.json"]


def test_kv_eviction_through_per_layer_masks():
    assert_adapter_evicts(lambda: image_lm(tiny_janus()), prompts())
