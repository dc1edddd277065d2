"""The Chameleon VQGAN's decoder half, which transformers does not ship.

transformers' ``ChameleonVQVAE`` holds the encoder, the codebook and ``post_quant_conv`` only (Chameleon was
released for image understanding), and its checkpoint conversion drops the decoder weights. Lumina-mGPT and Anole
decode with the released ``vqgan.ckpt`` (Meta's Chameleon tokenizer: a taming-transformers VQGAN, Esser et al.,
"Taming Transformers for High-Resolution Image Synthesis", arXiv 2012.09841). Its decoder is the standard one that
diffusers' ``Decoder`` builds (a mid block of two ResNet blocks around one single-head attention, then per level
``num_res_blocks + 1`` ResNet blocks and a nearest-neighbour upsampling convolution, GroupNorm(32, eps 1e-6),
SiLU), so this module is that ``Decoder`` with the taming key names mapped onto it; a golden decode of the official
module (tests/data) checks the mapping.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

__all__ = ["ChameleonVQGANDecoder", "taming_to_diffusers", "find_vqgan_checkpoint"]

# where released Chameleon-family folders keep the tokenizer (Anole / Meta: tokenizer/vqgan.ckpt; Lumina-mGPT's
# instructions: ckpts/chameleon/tokenizer/vqgan.ckpt, which users copy next to the model)
VQGAN_FILES = ("vqgan.safetensors", "vqgan.ckpt", "tokenizer/vqgan.safetensors", "tokenizer/vqgan.ckpt")


def find_vqgan_checkpoint(folder) -> Path | None:
    folder = Path(folder)
    return next((folder / f for f in VQGAN_FILES if (folder / f).is_file()), None)


class ChameleonVQGANDecoder(nn.Module):
    """Codes ``[B, h, w]`` -> images ``[B, 3, 16h, 16w]`` (for the released 5-level config) in [-1, 1], from the
    codebook and ``post_quant_conv`` of transformers' ``ChameleonVQVAE`` and the decoder of ``vqgan.ckpt``."""

    def __init__(self, vq_config, codebook: nn.Embedding, post_quant_conv: nn.Conv2d):
        super().__init__()
        from diffusers.models.autoencoders.vae import Decoder

        if vq_config.attn_resolutions:  # the released tokenizer has none; diffusers' up blocks have no attention
            raise ValueError(f"Chameleon VQGAN with attention at resolutions {list(vq_config.attn_resolutions)} is "
                             "not supported (the released tokenizer has none)")
        mult = list(vq_config.channel_multiplier)
        self.codebook = codebook
        self.post_quant_conv = post_quant_conv
        self.decoder = Decoder(in_channels=vq_config.latent_channels, out_channels=vq_config.in_channels,
                               up_block_types=("UpDecoderBlock2D",) * len(mult),
                               block_out_channels=tuple(vq_config.base_channels * m for m in mult),
                               layers_per_block=vq_config.num_res_blocks, norm_num_groups=32, act_fn="silu")
        self.loaded = False

    def load_taming(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the ``decoder.*`` weights of a taming VQGAN state dict strictly; its codebook and
        ``post_quant_conv`` must equal the model's (else it is another model's tokenizer)."""
        for key, mine in (("quantize.embedding.weight", self.codebook.weight),
                          ("post_quant_conv.weight", self.post_quant_conv.weight)):
            if key not in state_dict:
                raise ValueError(f"the VQGAN checkpoint has no {key}: not a taming/Chameleon VQGAN state dict")
            theirs = state_dict[key]
            if theirs.shape != mine.shape or not torch.allclose(theirs.float(), mine.detach().float().cpu(),
                                                                atol=1e-3, rtol=1e-3):
                raise ValueError(f"the VQGAN checkpoint's {key} differs from the model's: it is not this model's "
                                 "image tokenizer")
        decoder = {k[len("decoder."):]: v for k, v in state_dict.items() if k.startswith("decoder.")}
        self.decoder.load_state_dict(taming_to_diffusers(decoder, len(self.decoder.up_blocks)), strict=True)
        self.loaded = True

    @torch.no_grad()
    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if not self.loaded:
            raise RuntimeError("the Chameleon VQGAN decoder has no weights: load vqgan.ckpt (load_taming)")
        z = self.codebook(codes).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype)))


_RENAMES = [
    (r"^mid\.block_(\d)\.", lambda m: f"mid_block.resnets.{int(m[1]) - 1}."),
    (r"^mid\.attn_1\.norm\.", lambda m: "mid_block.attentions.0.group_norm."),
    (r"^mid\.attn_1\.(q|k|v)\.", lambda m: f"mid_block.attentions.0.to_{m[1]}."),
    (r"^mid\.attn_1\.proj_out\.", lambda m: "mid_block.attentions.0.to_out.0."),
    (r"^norm_out\.", lambda m: "conv_norm_out."),
]


def taming_to_diffusers(sd: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """A taming ``Decoder`` state dict under diffusers' ``Decoder`` names: ``up.{i}`` counts levels from the finest
    (``up_blocks`` from the coarsest), ``nin_shortcut`` is ``conv_shortcut``, the attention's 1x1 convolutions are
    linear layers."""
    out = {}
    for key, value in sd.items():
        new = key
        m = re.match(r"^up\.(\d+)\.(block|upsample)\.(.*)$", key)
        if m:
            level = levels - 1 - int(m[1])
            rest = m[3].replace("nin_shortcut", "conv_shortcut")
            new = (f"up_blocks.{level}.resnets.{rest}" if m[2] == "block" else f"up_blocks.{level}.upsamplers.0.{rest}")
        elif re.match(r"^up\.\d+\.attn\.", key):
            raise ValueError(f"VQGAN decoder key {key}: attention in the up blocks is not supported")
        else:
            for pattern, repl in _RENAMES:
                new = re.sub(pattern, repl, new)
            new = new.replace("nin_shortcut", "conv_shortcut")
        if new.startswith("mid_block.attentions.0.to_") and value.dim() == 4:
            value = value[:, :, 0, 0]  # a 1x1 convolution as a linear layer
        out[new] = value
    return out
