"""Janus / Janus-Pro image generation (transformers' ``JanusForConditionalGeneration``) as a TokenModel.

The image path of Janus (Chen et al., "Janus-Pro", arXiv 2501.17811): image tokens are embedded by
``generation_embeddings`` + ``generation_aligner``, run through the Llama decoder, and scored by
``generation_head`` over the VQ codebook (16384 entries, a 24x24 grid at 384 px); the text LM head is not used.
Classifier-free guidance as the official ``generation_inference.py`` and transformers' ``generate``: the
unconditional prompt is the conditional one with every token but BOS and begin-of-image replaced by the pad
token (all of it attended), mixed on logits as ``u + s (c - u)`` with s = 5, temperature 1, no top-k / top-p.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...config import SamplingConfig
from .base import HFImageLM, PromptTokens

__all__ = ["JanusImageLM", "JANUS_DEFAULTS"]

# deepseek-ai/Janus generation_inference.py: temperature=1, cfg_weight=5 (and transformers' Janus generate: scale 5)
JANUS_DEFAULTS = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=5.0)


class JanusImageLM(HFImageLM):
    family = "janus"
    default_sampling = JANUS_DEFAULTS

    def __init__(self, hf_model):
        cfg = hf_model.config
        n = int(cfg.vision_config.num_image_tokens)
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"Janus config: num_image_tokens={n} is not a square grid")
        gen = hf_model.generation_config
        extra = getattr(gen, "generation_kwargs", None) or {}
        ids = {"bos_token_id": gen.bos_token_id, "pad_token_id": gen.pad_token_id,
               "boi_token_id": extra.get("boi_token_id")}
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise ValueError(f"Janus generation_config lacks {', '.join(missing)} (boi_token_id lives in "
                             "generation_kwargs); the released checkpoints' generation_config.json has them")
        super().__init__(hf_model, hf_model.model.language_model, (1, side, side), cfg.vq_config.num_embeddings,
                         cfg.text_config.hidden_size)
        self.bos_id, self.pad_id, self.boi_id = ids["bos_token_id"], ids["pad_token_id"], ids["boi_token_id"]

    def prompt_ids(self, processor, text: str) -> list[int]:
        """One prompt as the official ``generation_inference.py`` builds it: the chat template's user turn and
        assistant prefix, then the begin-of-image token, tokenized (what the processor's ``generation_mode="image"``
        does; its call's keyword handling changed across transformers 5.x, the tokenizer's did not)."""
        messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(processor.tokenizer(prompt + processor.image_start_token)["input_ids"])

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf.prepare_embeddings_for_image_generation(tokens)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.hf.model.generation_head(hidden)

    def unconditional(self, cond: PromptTokens) -> PromptTokens:
        keep = (cond.ids == self.bos_id) | (cond.ids == self.boi_id) | ~cond.mask
        return PromptTokens(torch.where(keep, cond.ids, torch.full_like(cond.ids, self.pad_id)), cond.mask)

    def codebook(self) -> torch.Tensor:
        """The VQ codebook, l2-normalised as the quantiser's lookup (``get_codebook_entry``) uses it."""
        return F.normalize(self.hf.model.vqmodel.quantize.embedding.weight.detach().float(), dim=-1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens ``[B, N]`` -> images ``[B, 3, H, W]`` in [-1, 1] through Janus's VQ decoder."""
        return self.hf.decode_image_tokens(tokens.reshape(tokens.shape[0], -1)).permute(0, 3, 1, 2).clamp(-1, 1)
