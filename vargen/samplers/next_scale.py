"""VAR's next-scale sampler (Tian et al., 2024, Alg. 2): one forward per scale over a static K/V cache.

Per scale k of K: run the new scale's tokens (a doubled ``[cond; null]`` batch under CFG), guide
with VAR's linear ramp ``(1 + t) cond - t uncond`` where ``t = (cfg_scale - 1) * k / (K - 1)``
(``cfg_scale`` is the usual ``uncond + s (cond - uncond)`` weight, so upstream's ``cfg=1.5`` is
``cfg_scale=2.5``), filter top-k then top-p, divide by the temperature (CoDe's order; VAR itself has
none), draw one token per position, and grow the latent ``f_hat += phi_k(up(codes))``; the next
scale's input is ``f_hat`` area-downsampled to its side.

Draws use ``torch.multinomial`` on the ``(B*l, V)`` probabilities with the caller's generator, exactly
as upstream does, so a generator seeded like upstream's ``g_seed`` reproduces its samples
(research/var_code.md §1.4; fixtures README). A list of generators (one per row) makes each row's
randomness independent of the rest of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..budget import Footprint
from .base import GenerationOutput, SamplingConfig, Stats, StepTimer, filter_logits
from .spec import checked, option
from .stats import PruningStats

__all__ = ["VARSampler", "VAR_DEFAULTS", "ScaleSettings", "NextScaleState", "var_filter", "guide", "draw_tokens"]

# README's FID recipe: cfg 1.5 (=> cfg_scale 2.5), top_k 900, top_p 0.96, linear ramp, no smoothing
VAR_DEFAULTS = SamplingConfig(temperature=1.0, top_k=900, top_p=0.96, cfg_scale=2.5, cfg_interval=-1,
                              cfg_schedule="linear", more_smooth=False)


# ------------------------------------------------------------------------------------------------
# Per-scale settings and the logits chain of the VAR family
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleSettings:
    """The resolved sampling recipe, one entry per scale."""

    temperature: tuple[float, ...]
    top_k: tuple[int, ...]
    top_p: float
    guidance: tuple[float, ...]  # t_k: guided = (1 + t_k) cond - t_k uncond
    more_smooth: bool

    @property
    def uses_cfg(self) -> bool:
        return any(t != 0 for t in self.guidance)

    @classmethod
    def resolve(cls, model, config: SamplingConfig | None, temperatures=None, top_ks=None, more_smooth=None) -> "ScaleSettings":
        """Merge config, VAR defaults and per-scale overrides; raise ValueError before any work."""
        K, V = len(model.patch_nums), model.vocab_size
        config = config or SamplingConfig()
        config.reject_unused(VAR_CONFIG_FIELDS, "VAR")
        defaults = replace(VAR_DEFAULTS, top_k=min(VAR_DEFAULTS.top_k, V))  # tiny vocabularies: clamp the default
        cfg = config.with_defaults(defaults)
        cfg.validate(vocab_size=V, conditional=True)
        temps = _per_scale("temperatures", temperatures, cfg.temperature, K, float)
        ks = _per_scale("top_ks", top_ks, cfg.top_k, K, int)
        for t in temps:
            if t < 0:
                raise ValueError(f"temperatures must be >= 0, got {t}")
        for k in ks:
            if not 0 <= k <= V:
                raise ValueError(f"top_k={k} must be in 0..{V} (the vocabulary size)")
        extra = cfg.cfg_scale - 1.0
        if cfg.cfg_schedule == "linear":  # VAR: no guidance on the first scale, full on the last
            guidance = tuple(extra * k / (K - 1) if K > 1 else extra for k in range(K))
        else:
            guidance = (extra,) * K
        smooth = cfg.more_smooth if more_smooth is None else bool(more_smooth)
        return cls(temps, ks, float(cfg.top_p), guidance, smooth)


def _per_scale(name, values, default, K, cast):
    if values is None:
        return (cast(default),) * K
    values = tuple(cast(v) for v in values)
    if len(values) != K:
        raise ValueError(f"{name} has {len(values)} entries but the model has {K} scales")
    return values


def guide(logits: torch.Tensor, t: float, cfg: bool) -> torch.Tensor:
    """VAR's CFG mix on a ``[cond; uncond]`` batch: ``(1 + t) cond - t uncond`` (upstream's exact arithmetic)."""
    if not cfg:
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    return (1 + t) * cond - t * uncond


def var_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k (the shared chain's) then VAR's nucleus: sort ascending, drop the tokens whose cumulative
    probability is <= 1 - top_p, never the best one. Returns a new tensor."""
    logits = filter_logits(logits, top_k, 1.0)
    if 0 < top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        drop = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _gens(generator, rows: int):
    if isinstance(generator, (list, tuple)):
        if len(generator) != rows:
            raise ValueError(f"got {len(generator)} generators for a batch of {rows} rows")
        return list(generator)
    return None


def _multinomial(probs_2d: torch.Tensor, gen) -> torch.Tensor:
    if gen is not None and gen.device != probs_2d.device:  # sample where the generator lives
        return torch.multinomial(probs_2d.to(gen.device), 1, replacement=True, generator=gen).to(probs_2d.device)
    return torch.multinomial(probs_2d, 1, replacement=True, generator=gen)


def draw_tokens(filtered: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    """One token per position of ``filtered`` [B, l, V]; temperature 0 is greedy (no randomness used)."""
    B, l, V = filtered.shape
    if temperature == 0:
        return filtered.argmax(dim=-1)
    probs = (filtered / temperature if temperature != 1 else filtered).float().softmax(dim=-1)
    per_row = _gens(generator, B)
    if per_row is None:
        return _multinomial(probs.view(-1, V), generator).view(B, l)
    return torch.stack([_multinomial(probs[r], g).view(l) for r, g in enumerate(per_row)])


def _exponential_like(x: torch.Tensor, generator) -> torch.Tensor:
    per_row = _gens(generator, x.shape[0])
    if per_row is None:
        dev = generator.device if generator is not None else x.device
        return torch.empty(x.shape, dtype=x.dtype, device=dev).exponential_(generator=generator).to(x.device)
    return torch.stack([torch.empty(x.shape[1:], dtype=x.dtype, device=g.device).exponential_(generator=g).to(x.device)
                        for g in per_row])


def smooth_codes(filtered: torch.Tensor, ratio: float, codebook: torch.Tensor, generator) -> torch.Tensor:
    """``more_smooth``: a Gumbel-softmax mix of codes instead of the hard lookup (visualisation only, as upstream:
    logits sharpened by (1 + ratio), tau = max(0.27 (1 - 0.95 ratio), 0.005) after MaskGIT)."""
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    gumbel = -_exponential_like(filtered, generator).log()
    weights = ((filtered.mul(1 + ratio) + gumbel) / tau).softmax(dim=-1)
    return weights @ codebook.to(weights.dtype).unsqueeze(0)  # [B, l, Cvae]


# ------------------------------------------------------------------------------------------------
# The loop, shared with CoDe
# ------------------------------------------------------------------------------------------------


@dataclass
class NextScaleState:
    """A batch mid-generation: the running latent, every scale's continuous input, the tokens so far."""

    f_hat: torch.Tensor  # [B, Cvae, H, W], float32
    inputs: list = field(default_factory=list)  # inputs[k-1]: [B, pn_k**2, Cvae] for scale k >= 1
    tokens: list = field(default_factory=list)  # tokens[k]: [B, pn_k**2]

    @classmethod
    def start(cls, quantizer, batch: int, device) -> "NextScaleState":
        H = quantizer.full_size
        return cls(torch.zeros(batch, quantizer.Cvae, H, H, device=device, dtype=torch.float32))

    def inputs_for(self, first: int, last: int, cfg: bool) -> torch.Tensor | None:
        """Concatenated inputs of scales first..last-1 (scale 0 has none), doubled for CFG."""
        parts = [self.inputs[k - 1] for k in range(max(first, 1), last)]
        if not parts:
            return None
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return torch.cat([x, x], dim=0) if cfg else x


def commit_scale(quantizer, state: NextScaleState, si: int, guided: torch.Tensor, settings: ScaleSettings, generator) -> torch.Tensor:
    """Filter, draw and fold scale ``si`` into ``f_hat``; append the next scale's input. Returns its tokens [B, l]."""
    K = len(quantizer.v_patch_nums)
    filtered = var_filter(guided, settings.top_k[si], settings.top_p)
    idx = draw_tokens(filtered, settings.temperature[si], generator)
    B, l = idx.shape
    pn = quantizer.v_patch_nums[si]
    if settings.more_smooth:
        h = smooth_codes(filtered, si / (K - 1) if K > 1 else 1.0, quantizer.embedding.weight, generator)
    else:
        h = quantizer.embedding(idx)
    quantizer.add_scale(state.f_hat, si, h.transpose(1, 2).reshape(B, quantizer.Cvae, pn, pn))
    if si < K - 1:
        state.inputs.append(quantizer.next_input(state.f_hat, si + 1))
    state.tokens.append(idx)
    return idx


def run_scale(model, quantizer, cond, cache, state: NextScaleState, si: int, settings: ScaleSettings, generator,
              pruning=None) -> torch.Tensor:
    """One cached forward of scale ``si`` and its draw (``pruning``: FastVAR's plan for this generation)."""
    cfg = settings.uses_cfg
    extra = {} if pruning is None else {"pruning": pruning}
    logits = model.forward_scales(cond, state.inputs_for(si, si + 1, cfg), cache, si, si + 1, logits_from=si, **extra)
    return commit_scale(quantizer, state, si, guide(logits, settings.guidance[si], cfg), settings, generator)


def cfg_labels(model, labels, cfg: bool) -> torch.Tensor:
    """Validated labels, doubled as ``[labels; null]`` under CFG."""
    labels = model.check_labels(labels)
    return torch.cat([labels, torch.full_like(labels, model.num_classes)]) if cfg else labels


def fill_stats(stats: Stats, patch_nums, batch: int, device) -> None:
    sizes = [pn * pn for pn in patch_nums]
    stats.tokens = torch.full((batch,), sum(sizes), dtype=torch.long)
    stats.accepted = [torch.full((batch,), n, dtype=torch.long) for n in sizes]
    stats.token_step = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(sizes)]).expand(batch, -1).clone()


VAR_CONFIG_FIELDS = ("temperature", "top_k", "top_p", "cfg_scale", "cfg_schedule", "more_smooth")


def pruning_plan(model, prune_scales: int, prune_ratio: float, prune_from_layer: int):
    """FastVAR's plan (:class:`vargen.models.var_pruning.TokenPruning`): the last ``prune_scales`` scales skip
    ``prune_ratio`` of their tokens in the blocks from ``prune_from_layer`` on, filled from the scale before them;
    None at the zero setting (no scale or no token pruned)."""
    if prune_scales == 0 or prune_ratio == 0:
        return None
    from ..models.var_pruning import TokenPruning

    K, depth = len(model.patch_nums), getattr(model, "depth", None)
    if prune_scales >= K:
        raise ValueError(f"prune_scales={prune_scales}: the model has {K} scales and the first unpruned one feeds "
                         "the pruned ones")
    if depth is not None and prune_from_layer >= depth:
        raise ValueError(f"prune_from_layer={prune_from_layer} but the model has {depth} blocks")
    first = K - prune_scales
    return TokenPruning({s: prune_ratio for s in range(first, K)}, prune_from_layer, first - 1)


def pruning_stats(stats: Stats, pruning, cache) -> None:
    """K/V bytes that hold tokens (``stats.kv_bytes_used``, of the ``kv_cache_bytes`` allocated) and FastVAR's
    counts of token-sublayer evaluations skipped and kept (per batch row, ``stats.pruning``)."""
    full = cache.k.numel() * cache.k.element_size() * 2
    if pruning is None:
        stats.kv_bytes_used = full
        return
    rows, heads, head_dim = cache.k.shape[1], cache.k.shape[2], cache.k.shape[4]
    slot = 2 * heads * head_dim * cache.k.element_size()  # K and V of one position in one block
    stats.kv_bytes_used = full - pruning.kv_positions_skipped * slot * rows
    stats.pruning = PruningStats(pruned_evaluations_skipped=pruning.skipped, pruned_evaluations_kept=pruning.computed)


@dataclass
class VAROptions:
    temperatures: tuple[float, ...] | None = option(None, "per-scale temperatures overriding the config's (a/b/c)",
                                                    minimum=0.0)
    top_ks: tuple[int, ...] | None = option(None, "per-scale top-k overriding the config's (a/b/c)", minimum=0)
    more_smooth: bool | None = option(None, "VAR's Gumbel-softmax smoothing of the next-scale input (none: the "
                                      "config's)")
    prune_scales: int = option(0, "FastVAR: how many of the last scales prune tokens (0: none)", minimum=0)
    prune_ratio: float = option(0.5, "FastVAR: the fraction of a pruned scale's tokens the later blocks skip",
                                minimum=0.0, maximum=0.99)
    prune_from_layer: int = option(3, "FastVAR: the first block that prunes (the paper: the 4th)", minimum=0)
    kv_budget: int | None = option(None, "HACK / ScaleKV: earlier-scale K/V entries kept per layer and head (the "
                                   "mean over heads); none keeps the whole cache", minimum=1)
    kv_policy: str = option("hack", "who gets the K/V budget: hack (per head: structural heads 1.5x by recency, "
                            "contextual heads the rest, by attention), scalekv (per scale and layer: drafters 1.5x, "
                            "refiners the rest, by attention), uniform", choices=("hack", "scalekv", "uniform"))


def check_kv_options(options, owner: str) -> None:
    """``kv_policy`` only means something with a ``kv_budget``: set alone, it is an error, not ignored."""
    if options.kv_budget is None and options.kv_policy != "hack":
        raise ValueError(f"{owner}: kv_policy={options.kv_policy!r} needs a kv_budget (none keeps the whole cache)")


_HEAD_STATISTICS: "weakref.WeakKeyDictionary" = None  # model -> {sampling settings: HeadStatistics}


def kv_budget_plan(model, budget: int | None, policy: str, config: SamplingConfig | None):
    """HACK / ScaleKV budgets for ``model`` (:mod:`vargen.models.var_kv`), None at the zero setting. The offline
    calibration (one image per class, seed 0, the same sampling settings) runs once per model and settings."""
    if budget is None:
        return None
    import weakref

    from ..models.var_kv import attention_recorded, budgets_for, head_statistics
    from .compiled import _weights_version

    global _HEAD_STATISTICS
    if _HEAD_STATISTICS is None:
        _HEAD_STATISTICS = weakref.WeakKeyDictionary()
    per_model = _HEAD_STATISTICS.setdefault(model, {})
    key = (repr(config), _weights_version(model))
    if key not in per_model:
        labels = torch.arange(min(model.num_classes, 10), device=model.device)
        with attention_recorded(model) as records:
            VARSampler().sample(model, labels, config, generator=torch.Generator(device=model.device).manual_seed(0))
        per_model[key] = head_statistics(model, records)
    return budgets_for(per_model[key], policy, budget, model.begin_ends)


def budget_stats(stats: Stats, cache) -> None:
    """K/V bytes allocated (``kv_cache_bytes``) and holding tokens at the peak (``kv_bytes_used``) of a budgeted
    cache."""
    stats.kv_cache_bytes, stats.kv_bytes_used, stats.kv_policy = cache.nbytes, cache.peak_bytes, cache.budget.policy


class VARSampler:
    """Plain next-scale sampling: ``K`` forwards, one per scale.

    Options (keywords): ``temperatures`` / ``top_ks``: per-scale lists overriding ``config.temperature``
    / ``config.top_k`` (CoDe's recipe uses both); ``more_smooth`` overrides ``config.more_smooth``.
    ``cfg_interval`` (LlamaGen's) does not apply to VAR: setting it is an error.
    """

    name = "var"
    MODEL = "scale"
    OPTIONS = VAROptions

    def __init__(self, temperatures=None, top_ks=None, more_smooth: bool | None = None, prune_scales: int = 0,
                 prune_ratio: float = 0.5, prune_from_layer: int = 3, kv_budget: int | None = None,
                 kv_policy: str = "hack"):
        o = checked(VAROptions(temperatures, top_ks, more_smooth, prune_scales, prune_ratio, prune_from_layer,
                               kv_budget, kv_policy), "var")
        self.temperatures, self.top_ks, self.more_smooth = o.temperatures, o.top_ks, o.more_smooth
        self.prune = (o.prune_scales, o.prune_ratio, o.prune_from_layer)
        self.kv = (o.kv_budget, o.kv_policy)
        check_kv_options(o, "var")
        if o.kv_budget is not None and o.prune_scales and o.prune_ratio:
            raise ValueError("var: FastVAR pruning (prune_scales) and a K/V budget (kv_budget) do not combine (yet)")

    def footprint(self, model, cond, config: SamplingConfig | None = None) -> Footprint:
        """What one image needs (:mod:`vargen.budget`): the model's rows (two with CFG) of a whole call."""
        settings = ScaleSettings.resolve(model, config, self.temperatures, self.top_ks, self.more_smooth)
        return Footprint().add("the cache and forwards of every scale",
                               (2 if settings.uses_cfg else 1) * model.memory_per_row())

    @torch.no_grad()
    def sample(self, model, cond, config: SamplingConfig | None = None, generator=None) -> GenerationOutput:
        """Tokens [B, L] and, as ``latents``, the final ``f_hat`` [B, Cvae, H, W] (what the VQVAE decoder
        needs; with ``more_smooth`` it is not a function of the tokens)."""
        settings = ScaleSettings.resolve(model, config, self.temperatures, self.top_ks, self.more_smooth)
        quantizer = model.quantizer
        cfg = settings.uses_cfg
        labels = cfg_labels(model, cond, cfg)
        B = labels.shape[0] // 2 if cfg else labels.shape[0]
        _gens(generator, B)  # validate a per-row generator list before any work
        pruning = pruning_plan(model, *self.prune)
        budget = kv_budget_plan(model, *self.kv, config)
        device = labels.device
        stats = Stats(reports_acceptance=False)
        with StepTimer(device) as timer:
            cond_state = model.condition(labels)
            cache = model.new_cache(labels.shape[0]) if budget is None else model.new_cache(labels.shape[0],
                                                                                            budget=budget)
            state = NextScaleState.start(quantizer, B, device)
            for si in range(len(model.patch_nums)):
                run_scale(model, quantizer, cond_state, cache, state, si, settings, generator, pruning)
                stats.forward_passes += 1
            tokens = torch.cat(state.tokens, dim=1)
        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        fill_stats(stats, model.patch_nums, B, device)
        stats.seconds_per_image, stats.peak_memory_bytes_per_image = timer.seconds / B, (timer.peak // B if timer.peak is not None else None)
        stats.kv_cache_bytes = cache.k.numel() * cache.k.element_size() * 2
        if budget is None:
            pruning_stats(stats, pruning, cache)
        else:
            budget_stats(stats, cache)
        return GenerationOutput(tokens=tokens, stats=stats, latents=state.f_hat)
