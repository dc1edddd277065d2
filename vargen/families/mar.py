"""MAR (masked autoregression over continuous tokens with a diffusion head, KL-VAE); CSpD's draft is a companion."""
from __future__ import annotations

from . import FamilySpec, register_family


def build(spec, resolve, dtype):
    from ..models.mar import MAR
    from ..tokenizers.kl import KLVAE

    companions = {}
    if spec.get("draft"):
        path = resolve(spec["draft"])
        companions["draft"] = lambda: MAR.from_folder(path, dtype)
    return MAR.from_folder(resolve(spec["model"]), dtype), KLVAE.from_folder(resolve(spec["tokenizer"])), companions


def decode_row(pipe, tokens, latents):
    x = latents if latents is not None else tokens
    latent = pipe.model.unpatchify(x.to(pipe.device, next(pipe.model.parameters()).dtype))
    return pipe.tokenizer.tokens_to_images(latent.to(pipe.tokenizer_device, next(pipe.tokenizer.parameters()).dtype))


register_family(FamilySpec(
    "mar", build, decode_row, "continuous", default_sampler="mar", baseline="mar",
    config_fields=("temperature", "cfg_scale", "cfg_schedule"),
    members={"target": "main", "draft": "draft"}, row_independent_seeds=False))
