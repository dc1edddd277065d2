"""Pipelines for transformers image LMs: a ``save_pretrained`` folder or a hub id, text prompts through the
checkpoint's own processor, images through the model's own VQ decoder."""
from __future__ import annotations


import torch
from torch import nn

from ..checkpoint import read_state_dict
from .base import HFImageLM, PromptTokens
from .chameleon_vqgan import find_vqgan_checkpoint
from .folders import MODEL_CLASSES, model_type

__all__ = ["ImageDecoder", "load_model", "build", "decode_row", "prompt_conditions"]


class ImageDecoder(nn.Module):
    """The pipeline's tokenizer for a transformers image LM: its VQ model (``hf.model.vqmodel``), decoding and
    codebook through the adapter (the VQ is a submodule, so ``.to()`` moves it; the adapter is not)."""

    def __init__(self, lm: HFImageLM):
        super().__init__()
        self.vq = getattr(lm, "vqgan", None) or lm.hf.model.vqmodel  # Chameleon: the VQGAN decoder vargen adds
        self._lm = (lm,)  # a tuple: not registered as a submodule

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._lm[0].decode(tokens)

    def codebook(self) -> torch.Tensor:
        return self._lm[0].codebook()


def load_model(folder, dtype: torch.dtype = torch.float32, processor=None, trusted: bool = False,
               options: dict | None = None) -> HFImageLM:
    """The adapter of a ``save_pretrained`` folder (Emu3: the grid of ``processor``'s ``image_area`` at 1:1 -- the
    folder's own processor when none is given --, else the official 90 x 90; Chameleon: the Lumina-mGPT layout for
    its ``ChameleonXLLMXForConditionalGeneration`` checkpoints, else Anole's, and the VQGAN decoder of the folder's
    ``vqgan.ckpt`` where it has one). ``options`` (pipeline.json ``model_options``) go to the adapter over those:
    Emu3 / Chameleon ``height`` and ``width``, Chameleon ``layout``."""
    import transformers

    from . import image_lm

    kind = model_type(folder)
    if kind == "multi_modality":
        raise ValueError(f"{folder}: DeepSeek's original Janus format (model_type multi_modality); vargen loads the "
                         "transformers conversion (deepseek-community/Janus-Pro-1B, -7B)")
    if kind not in MODEL_CLASSES:
        raise ValueError(f"{folder}: transformers model type {kind!r} has no vargen adapter "
                         f"(adapted: {', '.join(MODEL_CLASSES)})")
    vqgan = find_vqgan_checkpoint(folder) if kind == "chameleon" else None
    if trusted and (vqgan is None or vqgan.suffix == ".safetensors"):
        raise ValueError(f"{folder}: trusted=True (--trust-checkpoint) unlocks a Chameleon folder's vqgan.ckpt pickle; "
                         "this folder has none (transformers folders load their safetensors weights)")
    given = dict(options or {})
    allowed = {"janus": set(), "emu3": {"height", "width"}, "chameleon": {"height", "width", "layout"}}[kind]
    if set(given) - allowed:
        raise ValueError(f"{folder}: model_options {sorted(set(given) - allowed)} do not apply to a {kind} model "
                         f"(it takes {sorted(allowed) or 'none'})")
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"  # renamed in 5.0
    hf = getattr(transformers, MODEL_CLASSES[kind][0]).from_pretrained(folder, **{dtype_kw: dtype})
    options = {}
    if kind == "emu3":
        processor = processor or _processor(folder)
        if hasattr(processor, "calculate_generate_size"):
            options["height"], options["width"] = processor.calculate_generate_size("1:1", processor.image_area, 8)
    if kind == "chameleon":  # Lumina-mGPT's checkpoints were saved by its ChameleonXLLMXForConditionalGeneration
        options["layout"] = "lumina" if any("XLLMX" in a for a in hf.config.architectures or []) else "anole"
    model = image_lm(hf, **{**options, **given})
    if vqgan is not None:
        model.vqgan.load_taming(read_state_dict(vqgan, trusted=trusted))
    return model



def _processor(folder):
    """The checkpoint's processor (else its tokenizer: Lumina-mGPT folders ship a tokenizer only), or None where the
    folder has no tokenizer files (a bare ``save_pretrained``)."""
    import transformers

    for auto in (transformers.AutoProcessor, transformers.AutoTokenizer):
        try:
            return auto.from_pretrained(folder)
        except Exception:
            continue
    return None


def build(spec, resolve, dtype):
    """``FamilySpec.build``: ``spec["model"]`` is the transformers folder; ``spec["draft"]`` an optional smaller
    checkpoint of the same family (sharing the image tokenizer) for ``sd``."""
    folder = resolve(spec["model"])
    processor = _processor(folder)
    options = spec.get("model_options")
    model = load_model(folder, dtype, processor, trusted=spec.get("trusted", False), options=options)
    model.processor = processor
    companions = {}
    if spec.get("draft"):
        path = resolve(spec["draft"])
        companions["draft"] = lambda: load_model(path, dtype, processor, options=options)  # the same tokenizer, grid
    if processor is not None and hasattr(model, "negative_ids"):  # Emu3: the official negative prompt
        model.negative = model.negative_ids(processor)
    return model, ImageDecoder(model), companions


def decode_row(pipe, tokens, latents):
    return pipe.tokenizer.decode(tokens.to(pipe.device))


def prompt_conditions(pipe, cond) -> PromptTokens:
    """Prompts -> :class:`PromptTokens`: a string or a list of strings (through the checkpoint's processor and chat
    template, as the official image-generation scripts build them), token-id lists, or PromptTokens."""
    model = pipe.model
    if isinstance(cond, PromptTokens):
        return cond.to(pipe.device)
    if isinstance(cond, str):
        cond = [cond]
    if not isinstance(cond, (list, tuple)) or not cond:
        raise ValueError(f"a {model.family} pipeline takes prompts (strings), token-id lists or PromptTokens, got "
                         f"{type(cond).__name__ if not isinstance(cond, (list, tuple)) else 'an empty list'}")
    if all(isinstance(c, str) for c in cond):
        processor = getattr(model, "processor", None)
        if processor is None:
            raise ValueError("this checkpoint folder has no tokenizer/processor files, so text prompts cannot be "
                             "tokenized; pass prompt token ids (--prompt-ids on the CLI) or PromptTokens")
        rows = [model.prompt_ids(processor, c) for c in cond]
    elif all(isinstance(c, (list, tuple)) and c and all(isinstance(t, int) and not isinstance(t, bool) for t in c)
             for c in cond):
        rows = [list(c) for c in cond]
    else:
        raise ValueError("prompts must be all strings or all non-empty lists of token ids")
    return PromptTokens.from_lists(rows, model.pad_id).to(pipe.device)  # ids checked by model.check_cond
