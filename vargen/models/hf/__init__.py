"""transformers image LMs as TokenModels: Janus / Janus-Pro, Emu3 and Chameleon (Lumina-mGPT, Anole); needs the
``[hf]`` extra (transformers).

``image_lm(hf_model)`` wraps a loaded transformers model by its ``config.model_type``;
``family.load_model(folder)`` loads a ``save_pretrained`` folder; ``vargen.load(folder or hub id)`` builds the
pipeline (prompts through the checkpoint's processor, images through the model's VQ). Importing this package does
not import transformers; the adapters do.
"""
from __future__ import annotations

import importlib

from .folders import MODEL_CLASSES

__all__ = ["HFImageLM", "PromptTokens", "RowCache", "image_lm"]


def image_lm(hf_model, **options):
    """The vargen adapter (an :class:`HFImageLM`) of a loaded transformers image LM (``options`` go to the adapter,
    e.g. Emu3's ``height`` / ``width``, Chameleon's ``layout``); ``ValueError`` for a model type vargen does not
    adapt."""
    kind = getattr(hf_model.config, "model_type", None)
    if kind not in MODEL_CLASSES:
        raise ValueError(f"transformers model type {kind!r} has no vargen adapter "
                         f"(adapted: {', '.join(MODEL_CLASSES)})")
    module, cls = MODEL_CLASSES[kind][1].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)(hf_model, **options).eval()


def __getattr__(name):
    if name in ("HFImageLM", "PromptTokens", "RowCache"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
