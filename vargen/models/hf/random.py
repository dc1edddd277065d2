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
