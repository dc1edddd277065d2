"""Chameleon-architecture image generators (Lumina-mGPT, Anole) through transformers'
``ChameleonForConditionalGeneration``.

transformers ships Chameleon for understanding only: its ``forward`` sets every image-token logit to the dtype
minimum, so ``generate`` can never emit one, although Lumina-mGPT ("Lumina-mGPT: Illuminate Flexible Photorealistic
Text-to-Image Generation with Multimodal Generative Pretraining", arXiv 2408.02657) and Anole (GAIR, 2024) generate
image tokens with exactly these weights. The adapter therefore runs the public backbone (``model.model``) and scores
with ``lm_head`` over the image-token rows itself, which is the unmasked law those checkpoints sample from. Image
tokens are the ``IMGIMG*`` entries of the vocabulary (index = VQ code, through transformers' vocabulary mapping);
decoding uses the VQGAN decoder of the released ``vqgan.ckpt`` (:mod:`.chameleon_vqgan`).

Two sequence layouts, both from the image-start token ``<racm3:break>`` on:

- ``lumina`` (Lumina-mGPT's ``FlexARItemProcessor``): ``<racm3:break>``, two size tokens
  ``<reserved{8800+n}>`` (height and width in 32-pixel patches, i.e. grid / 2), then every row of image tokens closed
  by ``<reserved08799>`` (the adapter's ``row_end_id``, a forced token). Prompt: BOS, "Generate an image of WxH
  according to the following prompt:\\n<caption>" and the turn separator ``<reserved08706>`` (its conversation
  template). Guidance as its ``LLMImageStartTriggeredUnbatchedClassifierFreeGuidanceLogitsProcessor``: the
  unconditional context is the sequence from the image start on (no text), mixed ``u + s (c - u)`` with s = 3,
  then image top-k 2000 (its ``create_logits_processor`` defaults), temperature 1. The official script lets the model
  sample the two size tokens after the image start; here they are part of the prompt (the grid is declared up front).
- ``anole`` (plain Chameleon): BOS, caption, ``<reserved08706>``, ``<racm3:break>``, then 32 x 32 image tokens with no
  structural tokens. Guidance as the SJD code's Anole setting (Teng et al., arXiv 2410.01699; its loader default
  scale 7, image top-k 2000): the unconditional half sees only the image start.
"""
from __future__ import annotations

import torch

from ...config import SamplingConfig
from .base import HFImageLM, PromptTokens
from .chameleon_vqgan import ChameleonVQGANDecoder

__all__ = ["ChameleonImageLM", "CHAMELEON_DEFAULTS", "LAYOUTS"]

CHAMELEON_DEFAULTS = {
    # Alpha-VLLM/Lumina-mGPT inference_solver.create_logits_processor: cfg 3.0, image_top_k 2000; temperature 1
    "lumina": SamplingConfig(temperature=1.0, top_k=2000, top_p=1.0, cfg_scale=3.0),
    # tyshiwo1/Accelerating-T2I-AR-with-SJD, Anole (leloy/Anole-7b-v0.1-hf): cfg 7.0, image top-k 2000, temperature 1
    "anole": SamplingConfig(temperature=1.0, top_k=2000, top_p=1.0, cfg_scale=7.0),
}
LAYOUTS = {"lumina": (48, 48), "anole": (32, 32)}  # default grids: Lumina-mGPT-7B-768 (768 px), Anole (512 px)
IMAGE_START, TURN_END, ROW_END = "<racm3:break>", "<reserved08706>", "<reserved08799>"
LUMINA_PROMPT = "Generate an image of {width}x{height} according to the following prompt:\n{caption}"


def size_token(n: int) -> str:
    """Lumina-mGPT's size token for ``n`` 32-pixel patches."""
    return f"<reserved{8800 + n:05d}>"


class ChameleonImageLM(HFImageLM):
    """``layout`` "lumina" or "anole" (see the module docstring); ``height`` x ``width`` image tokens (default: the
    layout's released resolution; Lumina-mGPT grids are even, two tokens per 32-pixel patch)."""

    family = "chameleon"

    def __init__(self, hf_model, layout: str = "lumina", height: int | None = None, width: int | None = None):
        if layout not in LAYOUTS:
            raise ValueError(f"Chameleon layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        height, width = (LAYOUTS[layout][0] if height is None else height), (LAYOUTS[layout][1] if width is None
                                                                             else width)
        if height < 1 or width < 1:
            raise ValueError(f"Chameleon grid must be at least 1x1 tokens, got {height}x{width}")
        if layout == "lumina" and (height % 2 or width % 2):
            raise ValueError(f"Lumina-mGPT grids are whole 32-pixel patches (even token counts), got {height}x{width}")
        cfg = hf_model.config
        vocab = cfg.vocabulary_map or {}
        mapping = hf_model.model.vocabulary_mapping
        img2bpe = mapping.img2bpe
        codes = sorted(img2bpe)
        K = cfg.vq_config.num_embeddings
        if codes != list(range(K)):
            raise ValueError(f"Chameleon vocabulary_map: the IMGIMG tokens must be the VQ codes 0..{K - 1}, found "
                             f"{len(codes)} codes")
        names = [IMAGE_START, TURN_END] + ([ROW_END, size_token(height // 2), size_token(width // 2)]
                                           if layout == "lumina" else [])
        missing = list(dict.fromkeys(n for n in names if n not in vocab))
        if missing:
            raise ValueError(f"Chameleon vocabulary_map lacks {', '.join(missing)} (the {layout} layout needs them)")
        if cfg.bos_token_id is None:
            raise ValueError("Chameleon config has no bos_token_id")
        super().__init__(hf_model, hf_model.model, (1, height, width), K, cfg.hidden_size)
        self.use_vocabulary_images(torch.tensor([img2bpe[c] for c in codes]))
        self.layout = layout
        self.default_sampling = CHAMELEON_DEFAULTS[layout]
        self.bos_id, self.turn_end_id = int(cfg.bos_token_id), int(vocab[TURN_END])
        self.pad_id = int(cfg.pad_token_id if cfg.pad_token_id is not None else vocab[TURN_END])
        self.image_prefix = [vocab[IMAGE_START]] + ([vocab[size_token(height // 2)], vocab[size_token(width // 2)]]
                                                    if layout == "lumina" else [])
        self.row_end_id = int(vocab[ROW_END]) if layout == "lumina" else None
        vq = hf_model.model.vqmodel
        self.vqgan = ChameleonVQGANDecoder(cfg.vq_config, vq.quantize.embedding, vq.post_quant_conv)

    def prompt_ids(self, tokenizer, text: str) -> list[int]:
        """One prompt as the layout's official code builds it, ending with the image prefix."""
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
        _, h, w = self.grid
        if self.layout == "lumina":  # its conversation template: the human turn, then the separator
            text = LUMINA_PROMPT.format(width=w * 16, height=h * 16, caption=text)
        ids = tokenizer(text + TURN_END, add_special_tokens=False)["input_ids"]
        return [self.bos_id, *ids, *self.image_prefix]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed_vocabulary_images(tokens)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.vocabulary_image_logits(hidden)  # unmasked: transformers' forward sets these to the dtype min

    def unconditional(self, cond: PromptTokens) -> PromptTokens:
        return PromptTokens.from_lists([self.image_prefix] * cond.batch, self.pad_id).to(cond.ids.device)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens ``[B, N]`` -> images ``[B, 3, 16 H, 16 W]`` in [-1, 1] through the VQGAN decoder."""
        if not self.vqgan.loaded:
            raise RuntimeError("decoding Chameleon image tokens needs the VQGAN decoder of the released "
                               "tokenizer/vqgan.ckpt (transformers' conversion drops it): put vqgan.ckpt (Anole: "
                               "GAIR/Anole-7b-v0.1 tokenizer/vqgan.ckpt; Lumina-mGPT: Meta's Chameleon "
                               "tokenizer/vqgan.ckpt) in the model folder")
        _, h, w = self.grid
        return self.vqgan(tokens.reshape(tokens.shape[0], h, w)).float().clamp(-1, 1)
