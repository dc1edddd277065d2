"""Upper bounds of the memory one batch row of a model's forward needs, from its shapes (``memory_per_row``).

Inference runs without autograd, so of the activations only one layer's are alive at a time; what stays is the
cache (every layer) and the logits. Attention is counted as if its scores were materialised in float32 (the math
path; fused kernels need less), and a boolean mask per forward (per layer when a cache evicts).
"""
from __future__ import annotations

FLOAT32 = 4


def decoder_row_bytes(*, layers: int, dim: int, heads: int, kv_heads: int, head_dim: int, ffn: int, vocab: int,
                      slots: int, fed: int, itemsize: int, cross_slots: int = 0, layer_masks: bool = False) -> int:
    """Bytes one row needs for a decoder with a K/V cache of ``slots`` positions fed ``fed`` tokens: the cache, one
    layer's activations (residual, norms, q/k/v, the layer's K/V copied out to every query head as grouped-query
    attention kernels do, attention scores, the gated MLP), the mask and the float32 logits (with a copy for the
    logits chain's first step)."""
    cache = 2 * layers * kv_heads * head_dim * (slots + cross_slots) * itemsize
    qkv = (heads + 2 * kv_heads) * head_dim
    repeated = 2 * heads * head_dim * max(slots, cross_slots) * itemsize  # K/V expanded to every query head
    layer = fed * (4 * dim + qkv + 3 * ffn) * itemsize + heads * fed * max(slots, cross_slots) * FLOAT32 + repeated
    mask = fed * slots * (layers if layer_masks else 1)
    logits = 2 * fed * vocab * FLOAT32
    return int(cache + layer + mask + logits)
