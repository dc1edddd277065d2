"""Cosmos-1.0 Autoregressive (video continuation, discrete video tokenizer): demo folders, the released models, the
procedural scenes of the video demo and context clips encoded as the official pipeline does."""
from __future__ import annotations

from pathlib import Path

import torch

from . import FamilySpec, register_family

SCENE_SOURCES = ("bouncing_shapes",)


def build(spec, resolve, dtype):
    from ..models.cosmos import CosmosTransformer
    from ..tokenizers.cosmos_dv import DiscreteVideoTokenizer

    companions = {}
    if spec.get("draft"):
        path = resolve(spec["draft"])
        companions["draft"] = lambda: CosmosTransformer.from_folder(path, dtype)
    model = CosmosTransformer.from_folder(resolve(spec["model"]), dtype)
    tokenizer = DiscreteVideoTokenizer.from_folder(resolve(spec["tokenizer"]))
    T, H, W = model.config.video_latent_shape
    tc = tokenizer.config
    if tc.latent_frames(tc.pixel_chunk_duration) != T:
        raise ValueError(f"the tokenizer's {tc.pixel_chunk_duration}-frame chunks give "
                         f"{tc.latent_frames(tc.pixel_chunk_duration)} latent frames; the model's clip has {T}")
    return model, tokenizer, companions


def decode_row(pipe, tokens, latents):
    T, H, W = pipe.model.config.video_latent_shape
    return pipe.tokenizer.decode(tokens.view(tokens.shape[0], T, H, W))


def scene_clips(pipe, seeds) -> torch.Tensor:
    """The procedural clips ``[B, 3, F, H, W]`` of scene seeds (one generator per seed), for video demos."""
    from ..video import bouncing_shapes

    for s in seeds:
        try:
            pipe.check_seed(s)
        except ValueError:
            raise ValueError(f"scene seeds (a video demo's conditions) must be integers in 0..{2**63 - 1}, "
                             f"got {s!r}") from None
    frames = pipe.tokenizer.config.pixel_chunk_duration
    size = pipe.model.config.video_latent_shape[1] * pipe.tokenizer.config.spatial_compression
    return torch.cat([bouncing_shapes(1, torch.Generator().manual_seed(int(s)), frames=frames, size=size)
                      for s in seeds])


@torch.no_grad()
def encode_context(pipe, video: torch.Tensor) -> torch.Tensor:
    """Context video ``[B, 3, f, H, W]`` in [-1, 1] (``f`` up to one tokenizer chunk) -> the tokens of the model's
    ``context_frames`` latent frames ``[B, c*H*W]``; the clip is padded to a whole chunk by repeating its last frame,
    as the official pipeline does."""
    tc, model = pipe.tokenizer.config, pipe.model
    T, H, W = model.config.video_latent_shape
    want = (tc.pixel_chunk_duration, H * tc.spatial_compression, W * tc.spatial_compression)
    if video.dim() != 5 or video.shape[1] != 3 or video.shape[3:] != want[1:] or not 1 <= video.shape[2] <= want[0]:
        raise ValueError(f"context video must be [B, 3, f, {want[1]}, {want[2]}] with 1 <= f <= {want[0]}, "
                         f"got {tuple(video.shape)}")
    need = 1 + (model.context_frames - 1) * tc.temporal_compression
    if video.shape[2] < need:
        raise ValueError(f"{model.context_frames} context latent frame(s) need at least {need} video frames, "
                         f"got {video.shape[2]}")
    pad = video[:, :, -1:].expand(-1, -1, want[0] - video.shape[2], -1, -1)
    clip = torch.cat([video, pad], 2).to(pipe.tokenizer_device)
    return pipe.tokenizer.encode(clip)[:, : model.context_frames].flatten(1)


def conditions(pipe, cond):
    """A :class:`~vargen.models.cosmos.VideoCondition`, context tokens ``[B, c*H*W]``, context video
    ``[B, 3, f, H, W]`` in [-1, 1] (encoded as the official pipeline does: padded to a whole chunk by repeating
    its last frame), or -- for a pipeline with a procedural ``scenes`` source -- scene seeds (ints)."""
    from ..models.cosmos import VideoCondition

    if isinstance(cond, int) and not isinstance(cond, bool):
        cond = [cond]
    if isinstance(cond, (list, tuple)):
        if not cond:
            raise ValueError("no scenes given: the batch is empty")
        if pipe.scenes is None:
            raise ValueError(f"{pipe.name}: give context frames (a video tensor [B, 3, f, H, W] or a VideoCondition); "
                             "scene seeds apply to the procedural demo pipelines")
        cond = scene_clips(pipe, cond)
    if torch.is_tensor(cond) and cond.is_floating_point():
        cond = VideoCondition(encode_context(pipe, cond))
    if torch.is_tensor(cond):
        cond = VideoCondition(cond)
    if not isinstance(cond, VideoCondition):
        raise ValueError(f"a video pipeline takes scene seeds, context video or a VideoCondition, "
                         f"got {type(cond).__name__}")
    pipe.model.check_cond(cond)
    return cond.to(pipe.device)


def decode_clips(pipe, out) -> list:
    """Clips of an output (context frames + generated frames, one row at a time): sets ``out.videos`` (frames per
    sample) and returns one film strip per sample."""
    from ..images import image_grid, to_pil

    if out.context is None:
        raise ValueError("a video output needs its context frames (GenerationOutput.context) to be decoded")
    out.videos = []
    for i in range(out.tokens.shape[0]):
        clip = torch.cat([out.context[i : i + 1], out.tokens[i : i + 1]], 1).to(pipe.tokenizer_device)
        video = decode_row(pipe, clip, None).float()  # [1, 3, F, H, W]
        out.videos.append(to_pil(video[0].transpose(0, 1)))
    return [image_grid(frames, len(frames)) for frames in out.videos]


def load_official(spec, dtype, checkpoint=None, tokenizer_checkpoint=None, trusted=False):
    """A released Cosmos-1.0 AR base model with DV8x16x16: ``(model, tokenizer, defaults)``. ``tokenizer_checkpoint``:
    a folder holding the tokenizer halves (``encoder.jit`` / ``decoder.jit`` -- read only with ``trusted=True`` -- or
    their state dicts as ``encoder.safetensors`` / ``decoder.safetensors``)."""
    name = spec["name"]
    from .. import zoo
    from ..models.cosmos import CosmosTransformer, cosmos_config, load_cosmos_weights
    from ..config import SamplingConfig
    from ..tokenizers.cosmos_dv import DV_PRESETS, DVConfig, load_dv_tokenizer

    weights = zoo.fetch(spec["checkpoint"], checkpoint)  # every file is found before the 4B+ model is built
    if tokenizer_checkpoint is not None:
        folder = Path(tokenizer_checkpoint)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer_checkpoint for {name} must be a folder with encoder.jit and "
                                    f"decoder.jit (or encoder.safetensors and decoder.safetensors): {folder}")
        halves = [next((folder / f"{h}{ext}" for ext in (".safetensors", ".jit") if (folder / f"{h}{ext}").is_file()),
                       folder / f"{h}.jit") for h in ("encoder", "decoder")]
    else:
        halves = [zoo.fetch(spec["tokenizer_checkpoint"]), zoo.fetch(spec["decoder_checkpoint"])]
    model = CosmosTransformer(cosmos_config(name, context_frames=spec["context_frames"])).to(dtype)
    load_cosmos_weights(model, weights, trusted=trusted)
    tokenizer = load_dv_tokenizer(DVConfig(**DV_PRESETS["DV8x16x16"]), *map(str, halves), trusted=trusted)
    return model.eval(), tokenizer, SamplingConfig(**spec["defaults"])


register_family(FamilySpec(
    "cosmos", build, decode_row, "token", default_sampler="sjd:window=16,init=temporal,coupled=true", baseline="ar",
    config_fields=("temperature", "top_k", "top_p"), codebook_rules=True, conditions=conditions, video=True,
    decode=decode_clips, context=lambda cond: cond.frames, scene_sources=SCENE_SOURCES))
