"""LlamaGen (raster next-token, VQ tokenizer): demo folders and the official c2i checkpoints."""
from __future__ import annotations

from . import FamilySpec, register_family


def build(spec, resolve, dtype):
    from ..models.draft_head import DraftHead
    from ..models.llamagen import GPT
    from ..tokenizers.llamagen_vq import VQModel

    model = GPT.from_folder(resolve(spec["model"]), dtype)
    companions = {}
    if spec.get("draft"):
        path = resolve(spec["draft"])
        companions["draft"] = lambda: DraftHead.from_folder(path)
    return model, VQModel.from_folder(resolve(spec["tokenizer"])), companions


def decode_row(pipe, tokens, latents):
    _, h, w = pipe.model.grid
    return pipe.tokenizer.decode(tokens.view(tokens.shape[0], h, w))


def load_official(spec: dict, dtype, checkpoint=None, tokenizer_checkpoint=None, trusted=False):
    """A released LlamaGen c2i GPT with its VQ tokenizer (``zoo.OFFICIAL[name]``; local files or a download):
    ``(model, tokenizer, defaults)``."""
    from .. import zoo
    from ..models.llamagen import GPT, gpt_config, load_gpt_weights
    from ..config import SamplingConfig
    from ..tokenizers.llamagen_vq import VQModel, load_vq_weights, vq_config

    gpt_args = dict(spec["gpt"])
    model = GPT(gpt_config(gpt_args.pop("preset"), **gpt_args))
    load_gpt_weights(model, zoo.fetch(spec["checkpoint"], checkpoint), trusted=trusted)
    vq_args = dict(spec["vq"])
    vq = VQModel(vq_config(vq_args.pop("preset"), **vq_args))
    load_vq_weights(vq, zoo.fetch(spec["tokenizer_checkpoint"], tokenizer_checkpoint), trusted=trusted)
    return model.to(dtype).eval(), vq.eval(), SamplingConfig(**spec["defaults"])


register_family(FamilySpec(
    "llamagen", build, decode_row, "token", default_sampler="sjd:window=16,coupled=true", baseline="ar",
    config_fields=("temperature", "top_k", "top_p", "cfg_scale", "cfg_interval"),
    codebook_rules=True))
