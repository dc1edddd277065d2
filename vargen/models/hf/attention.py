"""Per-layer attention masks for transformers decoders, through the attention interface transformers exposes.

transformers passes one attention mask to every layer, but an evicting K/V cache (LineAR, :mod:`vargen.decode.eviction`)
holds different positions in each layer's slots. So the adapters register an attention function ("vargen") that,
while a forward with per-layer masks runs in this thread, takes each layer's mask from the forward's
:class:`~vargen.decode.LayerViews` (by the attention module's ``layer_idx``) and adds the first query's attention to
that layer's eviction probe; otherwise it is transformers' own SDPA attention with the mask transformers made for it
(the "vargen" name is registered for masks as SDPA's, so every other call -- teacher forcing, a plain cache, another
thread -- is masked and computed as before).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

from ...decode import LayerViews, add_first_query_attention_

NAME = "vargen"
_local = threading.local()  # .views: the per-layer forward in flight in this thread


def _active() -> LayerViews | None:
    return getattr(_local, "views", None)


def attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    views = _active()
    if views is not None and views.per_layer:
        i = module.layer_idx
        visible = views.mask(i)  # [B, 1, n, L] bool
        probe = views.probe(i)
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
    try:  # transformers 5.x builds masks per attention implementation: the same as SDPA's
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    except ImportError:  # 4.x: the model's own mask preparation, which takes any implementation's name
        pass
    for module in decoder.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = NAME


@contextmanager
def layer_masks(views: LayerViews):
    """Per-layer masks (and eviction probes) from ``views`` for the decoder calls inside (this thread's)."""
    _local.views = views
    try:
        yield
    finally:
        _local.views = None
