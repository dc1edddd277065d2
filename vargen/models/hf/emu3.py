"""Emu3 image generation (transformers' ``Emu3ForConditionalGeneration``) as a TokenModel.

Emu3 (Wang et al., "Emu3: Next-Token Prediction is All You Need", arXiv 2409.18869) generates an image as text-LM
tokens: the prompt ends with ``<|image start|>H*W<|image token|>``, then H rows of W visual tokens, each row closed
by an end-of-line token (``<|extra_200|>``). The official generation script constrains every in-row position to the
visual tokens and every row end to the end-of-line token (``prefix_allowed_tokens_fn``); here the visual tokens are
the model's vocabulary (index = VQ code), their logits are the LM head's rows for them, and the end-of-line token is
the adapter's ``row_end_id`` (written by the adapter, see :mod:`vargen.models.hf.base`).

Classifier-free guidance as the official script: a negative prompt as the unconditional rows, scale 3, top-k 2048,
temperature 1. Its guidance mixes log-softmaxes over the whole text vocabulary (transformers'
``UnbatchedClassifierFreeGuidanceLogitsProcessor``) before restricting to visual tokens; restricted to them the
log-normalisers are per-row constants, so this equals vargen's ``u + s (c - u)`` on the visual logits after
normalisation.
"""
from __future__ import annotations

import torch

from ...config import SamplingConfig
from .base import HFImageLM, PromptTokens

__all__ = ["Emu3ImageLM", "EMU3_DEFAULTS", "NEGATIVE_PROMPT", "POSITIVE_SUFFIX"]

# BAAI/Emu3-Gen README / official image_generation.py: cfg 3.0, top_k 2048 (temperature 1), 720x720 (90x90 tokens)
EMU3_DEFAULTS = SamplingConfig(temperature=1.0, top_k=2048, top_p=1.0, cfg_scale=3.0)
POSITIVE_SUFFIX = " masterpiece, film grained, best quality."
NEGATIVE_PROMPT = ("lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
                   "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, "
                   "blurry.")


class Emu3ImageLM(HFImageLM):
    """``height x width`` image tokens (default 90 x 90, the official 720 px); the prompt must name the same size.

    ``negative``: the unconditional prompt's token ids (left-padded against the prompts); text pipelines set it from
    :data:`NEGATIVE_PROMPT` through the checkpoint's processor."""

    family = "emu3"
    default_sampling = EMU3_DEFAULTS

    def __init__(self, hf_model, height: int = 90, width: int = 90, negative: list[int] | None = None):
        mapping = hf_model.model.vocabulary_mapping
        codes = sorted(mapping.img2bpe)
        if not codes or codes != list(range(len(codes))):
            raise ValueError("Emu3 vocabulary_map: the visual tokens must be codes 0..K-1 (<|visual token 000000|>...)")
        if mapping.eol_token_id is None:
            raise ValueError("Emu3 vocabulary_map has no end-of-line token <|extra_200|>")
        if height < 1 or width < 1:
            raise ValueError(f"Emu3 grid must be at least 1x1 tokens, got {height}x{width}")
        text = hf_model.config.text_config
        super().__init__(hf_model, hf_model.model.text_model, (1, height, width), len(codes), text.hidden_size)
        self.use_vocabulary_images(torch.tensor([mapping.img2bpe[c] for c in codes]))
        self.row_end_id = int(mapping.eol_token_id)
        self.pad_id = int(text.pad_token_id if text.pad_token_id is not None else mapping.eol_token_id)
        self.negative = None if negative is None else list(negative)

    def prompt_ids(self, processor, text: str) -> list[int]:
        """One prompt as the official script builds it (positive suffix; ``<|image start|>H*W<|image token|>``)."""
        _, h, w = self.grid
        out = processor(text=[text + POSITIVE_SUFFIX], return_for_image_generation=True, ratio=f"{w}:{h}",
                        image_area=h * w * 64, return_tensors="pt")
        return out.input_ids[0].tolist()

    def negative_ids(self, processor) -> list[int]:
        _, h, w = self.grid
        out = processor(text=[NEGATIVE_PROMPT], return_for_image_generation=True, ratio=f"{w}:{h}",
                        image_area=h * w * 64, return_tensors="pt")
        return out.input_ids[0].tolist()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed_vocabulary_images(tokens)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.vocabulary_image_logits(hidden)  # the visual columns, as the official constrained generation

    def unconditional(self, cond: PromptTokens) -> PromptTokens:
        if self.negative is None:
            raise ValueError("Emu3 guidance needs a negative prompt: give text prompts (the checkpoint's processor "
                             "tokenizes the official one), set model.negative to its token ids, or use cfg_scale=1")
        return PromptTokens.from_lists([self.negative] * cond.batch, self.pad_id).to(cond.ids.device)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens ``[B, N]`` -> images ``[B, 3, H, W]`` in [-1, 1] through Emu3's VQ decoder."""
        _, h, w = self.grid
        return self.hf.model.vqmodel.decode(tokens.reshape(tokens.shape[0], h, w)).float().clamp(-1, 1)
