"""transformers image LMs (Janus / Janus-Pro, Emu3, Chameleon: Lumina-mGPT / Anole): ``save_pretrained`` folders
or hub ids, prompts through the checkpoint's processor, images through the model's own VQ decoder
(:mod:`vargen.models.hf.family`; transformers is imported on first use: the [hf] extra)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import FamilySpec, register_family

KINDS = ("janus", "emu3", "chameleon")


def _adapter(name: str) -> Callable:
    """A function of :mod:`vargen.models.hf.family`, imported on first use."""
    def call(*args):
        try:
            from ..models.hf import family
        except ImportError as err:
            raise ImportError(f"transformers image LMs need the [hf] extra (pip install -e '.[hf]'): {err}") from None
        return getattr(family, name)(*args)

    return call


build = _adapter("build")


def load_folder(folder: Path, dtype, trusted: bool = False):
    """A transformers image LM folder (``save_pretrained`` layout): ``(model, decoder, companions)``, the model carrying
    its official defaults (``trusted``: a Chameleon folder's ``vqgan.ckpt`` pickle may be unpickled fully)."""
    return build({"model": str(folder), "trusted": trusted}, Path, dtype)


for _kind in KINDS:
    register_family(FamilySpec(
        _kind, build, _adapter("decode_row"), "token", default_sampler="sjd:window=16,coupled=true", baseline="ar",
        config_fields=("temperature", "top_k", "top_p", "cfg_scale"), codebook_rules=True,
        conditions=_adapter("prompt_conditions"), takes_prompts=True, own_tokenizer=True, model_options=True))
