"""The model side of every token sampler: CFG batching, the static cache, and final probabilities.

A :class:`TokenSession` wraps a :class:`~vargen.models.base.TokenModel` for one sampling call:

* CFG is one batched forward of ``[cond; uncond]`` rows (``model.guidance_cond``) that always carry the
  same tokens (the caller passes ``[B, n]`` tokens; the session feeds them to both halves);
* the cache is allocated once for ``num_tokens + extra`` positions, so fixed-shape windows that run
  past the end of the grid need no special case (their outputs are simply never used);
* ``probs(logits, first_token)`` applies the logits chain once: CFG (with LlamaGen's interval),
  temperature, top-k, top-p, softmax. Every sampler and acceptance rule works on these.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..budget import Footprint
from ..decode import chain_plan, keep_tree_path_, scattered_plan, tree_plan
from ..kernels import chain_probs
from .base import SamplingConfig, cfg_mix, logits_to_probs
from .spec import checked, option

TOKEN_CONFIG_FIELDS = ("temperature", "top_k", "top_p", "cfg_scale", "cfg_interval")


def resolve_config(model, config: SamplingConfig | None) -> SamplingConfig:
    """Family defaults filled in and validated against the model (before any work)."""
    config = config or SamplingConfig()
    config.reject_unused(TOKEN_CONFIG_FIELDS, "token (next-token)")
    config = config.with_defaults(getattr(model, "default_sampling", SamplingConfig()))
    config.validate(vocab_size=model.vocab_size, conditional=getattr(model, "guidable", model.conditional))
    return config


def token_footprint(model, cond, config: SamplingConfig, fed: int, max_len: int) -> Footprint:
    """What one image of a token sampler needs (:mod:`vargen.budget`): the target's cache rows (two with CFG) and one
    forward of ``fed`` tokens (``TokenModel.memory_per_row``), and the sampler's float32 work on their ``[fed, V]``
    logits (the logits chain's guidance, top-k / top-p sort with int64 indices and softmax; verification's p, q and
    residual, the relaxed rules' float64 sets and GSD's int64 ranks): sixteen float32-sized copies."""
    if not hasattr(model, "memory_per_row"):
        raise ValueError(f"{type(model).__name__} does not state memory_per_row(cond, fed, max_len), which the "
                         "TokenModel protocol names (vargen.models.memory.decoder_row_bytes computes it from the shapes)")
    rows = 2 if config.uses_cfg else 1
    fp = Footprint().add(f"the target's cache and a forward of {fed} tokens",
                         rows * model.memory_per_row(cond, fed, max_len))
    return fp.add(f"probabilities of {fed} tokens x {model.vocab_size} codes", 16 * 4 * fed * model.vocab_size)


@dataclass
class CacheOptions:
    """Options of every token sampler's target cache: LineAR-style line-level K/V eviction
    (:mod:`vargen.decode.eviction`; lossy). ``kv_budget=None`` keeps the whole cache (the plain samplers), and so
    does a budget of the whole image (nothing can be evicted: the plain cache, the same tokens)."""

    kv_budget: int | None = option(None, "K/V eviction (LineAR): image-token K/V entries of complete raster lines "
                                   "kept per row and layer, anchors and recent lines included; none keeps all",
                                   minimum=1)
    kv_anchor: int = option(4, "K/V eviction: the first image tokens, always kept", minimum=0)
    kv_recent_lines: int = option(1, "K/V eviction: the most recent complete lines, always kept", minimum=0)

    def __post_init__(self):
        checked(self, "K/V eviction")
        changed = [f.name for f in fields(self)[1:] if getattr(self, f.name) != f.default]
        if self.kv_budget is None and changed:
            raise ValueError("K/V eviction: kv_anchor and kv_recent_lines need a kv_budget (none keeps the whole "
                             "cache)")

    def eviction(self, model):
        """The :class:`~vargen.decode.LineEviction` of ``model``'s grid (None without a budget, or with one that
        holds the whole image); ``ValueError`` before any work for a budget below what is always kept."""
        if self.kv_budget is None or self.kv_budget >= model.num_tokens:
            return None
        from ..decode import LineEviction

        policy = LineEviction(self.kv_budget, model.grid[-1], self.kv_anchor, self.kv_recent_lines)
        policy.check(model.num_tokens)
        return policy


class TokenSession:
    """``static=True`` (compiled decoding): every forward reads the whole fixed-length cache (masked), never a
    slice bounded by the host-side ``kv_len``, so shapes do not change from step to step."""

    def __init__(self, model, cond, config: SamplingConfig, extra_positions: int = 0, hidden: bool = False,
                 static: bool = False, eviction=None):
        self.model = model
        self.config = config
        self.num_tokens = model.num_tokens
        self.use_cfg = config.uses_cfg
        self.batch = model.check_cond(cond)
        self.cond = model.guidance_cond(cond) if self.use_cfg else cond
        self.rows = 2 * self.batch if self.use_cfg else self.batch
        self.hidden = hidden  # also return the target's hidden states (draft heads)
        max_len = self.num_tokens + extra_positions
        self.cache = (model.new_cache(self.rows, max_len) if eviction is None
                      else model.new_cache(self.rows, max_len, eviction=eviction))
        self.static = static
        self.forward_passes = 0

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device)

    def prefill(self):
        """``(logits [rows, V] for token 0, hidden [rows, h] or None)``."""
        self.forward_passes += 1
        if self.hidden:
            return self.model.prefill(self.cond, self.cache, return_hidden=True)
        return self.model.prefill(self.cond, self.cache), None

    def forward(self, tokens: torch.Tensor, start: torch.Tensor, kv_len: int | None = None):
        """Feed ``tokens [B, n]`` at per-row token positions ``start [B]`` (both CFG halves):
        ``(logits [rows, n, V], hidden [rows, n, h] or None)``."""
        self.forward_passes += 1
        return self.run(tokens, start, None if self.static else kv_len)

    def run(self, tokens: torch.Tensor, start: torch.Tensor, kv_len: int | None = None, tree=None):
        """:meth:`forward` without the pass counter (what a compiled step calls); ``tree``: the tokens are the nodes
        of a :class:`~vargen.decode.TokenTree` rooted at ``start``."""
        if self.use_cfg:
            tokens, start = torch.cat([tokens, tokens]), torch.cat([start, start])
        keys = self.cache.keys_for(kv_len)
        plan = (chain_plan(self.cache, start, tokens.shape[1], keys) if tree is None
                else tree_plan(self.cache, start, tree, keys))
        if self.hidden:
            return self.model(tokens, plan, self.cache, return_hidden=True)
        return self.model(tokens, plan, self.cache), None

    def forward_scattered(self, tokens: torch.Tensor, positions: torch.Tensor, written: torch.Tensor,
                          chain: torch.Tensor | None = None) -> torch.Tensor:
        """Feed ``tokens [B, n]`` at image ``positions [B, n]`` that see the positions ``written [B, L]`` (parallel
        rows: ZipAR, Diagonal Decoding) and, with ``chain [B, n]``, the entries of their own chain (PJD's row
        windows; :func:`~vargen.decode.scattered_plan`); logits ``[rows, n, V]``."""
        self.forward_passes += 1
        if self.use_cfg:
            tokens, positions, written = (torch.cat([t, t]) for t in (tokens, positions, written))
            chain = None if chain is None else torch.cat([chain, chain])
        return self.model(tokens, scattered_plan(self.cache, positions, written, chain), self.cache)

    def keep_path(self, start: torch.Tensor, nodes: torch.Tensor, tree) -> None:
        """After a tree forward: the K/V of the tree ``nodes [B, D]`` (depths ``1 .. D``) move to their positions."""
        if self.use_cfg:
            start, nodes = torch.cat([start, start]), torch.cat([nodes, nodes])
        keep_tree_path_(self.cache, start, tree, nodes)

    def probs(self, logits: torch.Tensor, first_token: torch.Tensor | int) -> torch.Tensor:
        """Final probabilities ``[B, n, V]`` for logits ``[rows, n, V]`` predicting tokens
        ``first_token .. first_token+n-1`` (``first_token`` per row ``[B]`` or an int; ``[B, n]``: each entry's own
        token index, for token trees)."""
        c = self.config
        if not self.use_cfg or c.cfg_interval is None or c.cfg_interval < 0:  # one fused chain (Triton on CUDA)
            return chain_probs(logits, c.cfg_scale if self.use_cfg else None, c.temperature, c.top_k, c.top_p)
        # LlamaGen's cfg_interval: token i > interval is sampled from the conditional logits alone
        cond, _ = logits.chunk(2, dim=0)
        first = torch.as_tensor(first_token, device=logits.device)
        tok = first if first.dim() == 2 else first.reshape(-1, 1) + torch.arange(logits.shape[1], device=logits.device)
        logits = torch.where((tok <= c.cfg_interval + 1)[..., None], cfg_mix(logits, c.cfg_scale), cond)
        return logits_to_probs(logits, c.temperature, c.top_k, c.top_p)
