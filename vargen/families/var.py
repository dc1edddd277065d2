"""VAR (next-scale prediction, multi-scale VQVAE); CoDe's refiner is a companion."""
from __future__ import annotations

from . import FamilySpec, register_family


def build(spec, resolve, dtype):
    from ..models.var import VAR
    from ..tokenizers.msvq import MultiScaleVQVAE

    vae = MultiScaleVQVAE.from_folder(resolve(spec["tokenizer"]))
    companions = {}
    if spec.get("refiner"):
        path = resolve(spec["refiner"])
        companions["refiner"] = lambda: VAR.from_folder(path, vae, dtype)
    return VAR.from_folder(resolve(spec["model"]), vae, dtype), vae, companions


def decode_row(pipe, tokens, latents):
    if latents is not None:  # the sampler's own f_hat (with more_smooth it is not a function of the tokens)
        return pipe.tokenizer.fhat_to_img(latents.float())
    return pipe.tokenizer.idx_to_img(tokens)


register_family(FamilySpec(
    "var", build, decode_row, "scale", default_sampler="var", baseline="var",
    config_fields=("temperature", "top_k", "top_p", "cfg_scale", "cfg_schedule", "more_smooth"),
    members={"drafter": "main", "refiner": "refiner"}))
