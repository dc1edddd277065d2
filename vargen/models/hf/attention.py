"""Per-layer attention masks for transformers decoders, through the attention interface transformers exposes.

transformers passes one attention mask to every layer, but an evicting K/V cache (LineAR, :mod:`vargen.decode.eviction`)
holds different positions in each layer's slots. So the adapters register an attention function ("vargen") that,
while an evicting forward runs, takes each layer's mask from the forward's :class:`~vargen.decode.LayerViews` (by the
attention module's ``layer_idx``) and adds the first query's attention to that layer's eviction probe; otherwise it is
transformers' own SDPA attention with the mask it was given, unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from ...decode import LayerViews, add_first_query_attention_

NAME = "vargen"
_views: LayerViews | None = None  # the evicting forward in flight


def attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _views is not None and _views.per_layer:
        i = module.layer_idx
        visible = _views.mask(i)  # [B, 1, n, L] bool
        probe = _views.probe(i)
        if probe is not None:
            rep = query.shape[1] // key.shape[1]
            add_first_query_attention_(probe, query, key.repeat_interleave(rep, dim=1), visible)
        attention_mask = torch.zeros(visible.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~visible, torch.finfo(query.dtype).min)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def use_layer_masks(decoder) -> None:
    """Route ``decoder``'s attention through :func:`attention` (registered once with transformers)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, attention)
    for module in decoder.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = NAME


@contextmanager
def layer_masks(views: LayerViews):
    """Per-layer masks (and eviction probes) from ``views`` for the decoder calls inside."""
    global _views
    _views = views
    try:
        yield
    finally:
        _views = None
