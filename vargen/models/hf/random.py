"""Random-weight transformers image LMs of published shapes, built from transformers' config classes (nothing to
download): what a forward of a real checkpoint's width costs, not images. ``vargen bench --model random-janus-pro-1b``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["RANDOM_HF_SHAPES", "random_janus"]

# deepseek-ai/Janus-Pro-1B config.json: the Llama text model, the image path's 16384-entry VQ at 24x24 tokens
JANUS_PRO_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                    num_key_value_heads=16, vocab_size=102400)
JANUS_PRO_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=30, num_attention_heads=32,
                    num_key_value_heads=32, vocab_size=102400)
RANDOM_HF_SHAPES = {"random-janus-pro-1b": JANUS_PRO_1B, "random-janus-pro-7b": JANUS_PRO_7B}
PAD, BOS, BOI = 100002, 100000, 100016  # the Janus-Pro tokenizer's pad, BOS and <begin_of_image>


def random_janus(name: str, num_layers: int | None = None, num_tokens: int = 576, seed: int = 0):
    """A ``JanusForConditionalGeneration`` of shape ``name`` with ``num_layers`` decoder layers (default: all) and
    random weights, its vision encoder cut to one small layer (image generation does not use it)."""
    from transformers import GenerationConfig, JanusConfig, JanusForConditionalGeneration

    if name not in RANDOM_HF_SHAPES:
        raise ValueError(f"unknown random shape {name!r}; choose from {', '.join(RANDOM_HF_SHAPES)}")
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"--num-tokens must be a square number of tokens, got {num_tokens}")
    text = dict(RANDOM_HF_SHAPES[name], model_type="llama", pad_token_id=PAD, bos_token_id=BOS,
                max_position_embeddings=16384)
    if num_layers is not None:
        text["num_hidden_layers"] = num_layers
    dim = text["hidden_size"]
    torch.manual_seed(seed)
    config = JanusConfig(
        text_config=text,
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16 * side, patch_size=16, num_image_tokens=num_tokens, projection_dim=dim,
                           depth=1),
        vq_config=dict(embed_dim=8, num_embeddings=16384, latent_channels=32, base_channels=32,
                       channel_multiplier=[1, 1], num_res_blocks=1, projection_dim=dim, image_token_embed_dim=dim,
                       num_patches=side),
        image_token_id=100581)
    model = JanusForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(pad_token_id=PAD, bos_token_id=BOS,
                                               generation_kwargs={"boi_token_id": BOI})
    return model


# a prompt of a typical length for timing (the chat template around a short caption is about 30 tokens)
SYNTHETIC_PROMPT = [BOS, *range(1000, 1030), BOI]


# -- tiny configs of each adapted family, trained-like random weights: the samplers' bookkeeping on every adapter --
TINY_SHAPES = ("random-tiny-janus", "random-tiny-emu3", "random-tiny-lumina")
TINY_BOS, TINY_PAD, TINY_BOI = 0, 1, 2
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096)


def random_tiny(name: str, num_tokens: int = 256, codes: int = 256, seed: int = 0):
    """``(adapter, prompt ids)``: a 2-layer, 64-wide model of the family ``name`` (``random-tiny-janus`` / ``-emu3``
    / ``-lumina``) with a square grid of ``num_tokens`` over ``codes`` VQ entries and peaked random output
    distributions (:func:`vargen.models.init.trained_like_init_`, head x3), built from transformers' config classes."""
    import transformers

    from ..init import trained_like_init_
    from . import image_lm

    if name not in TINY_SHAPES:
        raise ValueError(f"unknown tiny shape {name!r}; choose from {', '.join(TINY_SHAPES)}")
    side = math.isqrt(num_tokens)
    if side * side != num_tokens or (name == "random-tiny-lumina" and side % 2):
        raise ValueError(f"--num-tokens must be a square number of tokens (Lumina: of an even side), got {num_tokens}")
    torch.manual_seed(seed)
    text_ids = list(range(10, 40))  # a synthetic caption
    if name == "random-tiny-janus":
        config = transformers.JanusConfig(
            text_config=dict(_TINY_TEXT, model_type="llama", vocab_size=100, pad_token_id=TINY_PAD,
                             bos_token_id=TINY_BOS),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=16 * side, patch_size=16, num_image_tokens=num_tokens, projection_dim=64,
                               depth=1),
            vq_config=dict(embed_dim=8, num_embeddings=codes, latent_channels=32, base_channels=32,
                           channel_multiplier=[1, 1], num_res_blocks=1, projection_dim=64, image_token_embed_dim=64,
                           num_patches=side),
            image_token_id=99)
        model = transformers.JanusForConditionalGeneration(config)
        model.generation_config = transformers.GenerationConfig(pad_token_id=TINY_PAD, bos_token_id=TINY_BOS,
                                                                generation_kwargs={"boi_token_id": TINY_BOI})
        head, options, prompt = model.model.generation_head.vision_head, {}, [TINY_BOS, *text_ids, TINY_BOI]
        named = [(n, p) for n, p in model.named_parameters()  # the image-generation path
                 if n.startswith(("model.language_model.", "model.generation_"))]
    else:
        visual = 100  # text id of code 0
        if name == "random-tiny-emu3":
            vocab = {f"<|visual token {k:06d}|>": visual + k for k in range(codes)}
            vocab.update({"<|extra_200|>": 5, "<image>": 6})
            config = transformers.Emu3Config(
                text_config=dict(_TINY_TEXT, vocab_size=visual + codes, pad_token_id=TINY_PAD, bos_token_id=TINY_BOS,
                                 eos_token_id=3),
                vq_config=dict(codebook_size=codes, embed_dim=4, latent_channels=4, base_channels=32,
                               channel_multiplier=[1, 1], num_res_blocks=1, attn_resolutions=[],
                               temporal_downsample_factor=1, hidden_size=32, num_attention_heads=1),
                vocabulary_map=vocab)
            model = transformers.Emu3ForConditionalGeneration(config)
            options = dict(height=side, width=side, negative=[TINY_BOS, 7, 8, TINY_BOI])
            prompt = [TINY_BOS, *text_ids, TINY_BOI]
        else:
            from .chameleon import size_token

            vocab = {"<s>": TINY_BOS, "<pad>": TINY_PAD, "<racm3:break>": TINY_BOI, "<reserved08706>": 3,
                     "<image>": 4, "<reserved08799>": 5, size_token(side // 2): 6}
            vocab.update({"IMGIMG" + "".join(chr(65 + int(d)) for d in str(k)) + "Z": visual + k for k in range(codes)})
            config = transformers.ChameleonConfig(
                **_TINY_TEXT, vocab_size=visual + codes, pad_token_id=TINY_PAD, bos_token_id=TINY_BOS, eos_token_id=3,
                vq_config=dict(embed_dim=4, num_embeddings=codes, latent_channels=8, resolution=32, base_channels=32,
                               channel_multiplier=[1, 1], num_res_blocks=1, attn_resolutions=[]),
                vocabulary_map=vocab)
            model = transformers.ChameleonForConditionalGeneration(config)
            options = dict(layout="lumina", height=side, width=side)
            prompt = [TINY_BOS, *text_ids, 3, TINY_BOI, 6, 6]
        head = model.lm_head
        named = [(n, p) for n, p in model.named_parameters()
                 if not n.startswith("model.vqmodel") and "q_norm" not in n and "k_norm" not in n]
    with torch.no_grad():
        trained_like_init_(named, torch.Generator().manual_seed(seed))
        head.weight.mul_(3.0)
    return image_lm(model.eval(), **options), prompt
