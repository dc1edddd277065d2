"""CoDe: collaborative decoding (Chen et al., CVPR 2025, arXiv 2411.17787).

A large *drafter* (e.g. VAR-d30) generates the first ``draft_steps`` = N scales, where content is
decided and capacity matters; a small *refiner* (e.g. VAR-d16) generates the remaining K - N
high-frequency scales. Both share one VQVAE, so the hand-off is the running latent f_hat and the
continuous inputs of the drafted scales; the refiner, whose width differs, builds its own K/V for
them.

* ``reuse=True`` (default): the refiner computes its K/V for scales 0..N-1 in ONE prefill pass (no
  head, no sampling) and then runs scale N like any cached step. With a single generator this
  consumes exactly the random numbers a plain VAR run would, so it is also RNG-identical to
  upstream's seeded runs.
* ``reuse=False``: upstream's behaviour (research/var_code.md §2.2): the generator is rewound to
  where the call started (upstream reseeds the refiner with the same seed), the refiner prefills
  scales 0..N with the block-causal mask and head logits everywhere, draws and discards one sample
  per drafted scale on its unguided logits, then samples scale N.

Stats: ``forward_passes`` counts the drafter's scale forwards (the large model is the expensive
"target"; ``draft_forward_passes`` stays 0 because CoDe's *drafter* is not a speculative draft).
The small model's passes are in ``stats.code.refiner_forward_passes`` (its prefill counts as
one), with per-model seconds and K/V bytes next to them (:class:`~.stats.CoDeStats`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..budget import Footprint
from .base import GenerationOutput, SamplingConfig, Stats, StepTimer, synced_clock
from .spec import checked, option
from .stats import CoDeStats
from .next_scale import (NextScaleState, ScaleSettings, _gens, cfg_labels, commit_scale, draw_tokens, fill_stats,
                         check_kv_options, guide, kv_budget_plan, run_scale, var_filter)

__all__ = ["CoDeSampler"]


def _generators_to_rewind(generator, device):
    if isinstance(generator, (list, tuple)):
        return list(generator)
    if generator is not None:
        return [generator]
    dev = torch.device(device)
    return [torch.cuda.default_generators[dev.index or 0] if dev.type == "cuda" else torch.default_generator]


@dataclass
class CoDeOptions:
    draft_steps: int = option(8, "scales drawn by the large drafter; the small refiner draws the rest (1..K-1)",
                              minimum=1)
    refiner: Any = option(None, "the small VAR (a pipeline fills in its own)", text=False)
    reuse: bool = option(True, "the refiner builds its K/V of the drafted scales in one prefill (false: the "
                         "official behaviour, rewinding the generator)")
    temperatures: tuple[float, ...] | None = option(None, "per-scale temperatures (a/b/c)", minimum=0.0)
    top_ks: tuple[int, ...] | None = option(None, "per-scale top-k (a/b/c)", minimum=0)
    more_smooth: bool | None = option(None, "VAR's Gumbel-softmax smoothing (none: the config's)")
    kv_budget: int | None = option(None, "HACK / ScaleKV on both models: earlier-scale K/V entries kept per layer "
                                   "and head (the mean over heads); none keeps the whole caches", minimum=1)
    kv_policy: str = option("hack", "who gets the K/V budget: hack, scalekv or uniform (see the var sampler)",
                            choices=("hack", "scalekv", "uniform"))


def _used_bytes(cache) -> int:
    """K/V bytes holding tokens at the cache's peak (a budgeted cache measures it; a plain one is full)."""
    return cache.peak_bytes if hasattr(cache, "peak_bytes") else 2 * cache.k.numel() * cache.k.element_size()


class CoDeSampler:
    """``get_sampler("code", draft_steps=8, refiner=var_d16)``; ``sample(drafter, labels, config, generator)``.

    Options: ``draft_steps`` (N, 1..K-1), ``refiner`` (the small model), ``reuse`` (see module doc),
    ``temperatures`` / ``top_ks`` per scale (CoDe's scripts: top-k 600 everywhere, temperature 1.1 on
    the first seven scales and 1.0 after), ``more_smooth``.
    """

    name = "code"
    MODEL = "scale"
    COMPANION = "refiner"
    OPTIONS = CoDeOptions

    def __init__(self, draft_steps: int = 8, refiner=None, reuse: bool = True, temperatures=None, top_ks=None,
                 more_smooth: bool | None = None, kv_budget: int | None = None, kv_policy: str = "hack"):
        o = checked(CoDeOptions(draft_steps, refiner, reuse, temperatures, top_ks, more_smooth, kv_budget, kv_policy),
                    "code")
        self.draft_steps, self.refiner, self.reuse = o.draft_steps, refiner, o.reuse
        check_kv_options(o, "code")
        self.kv = (o.kv_budget, o.kv_policy)
        self.temperatures, self.top_ks, self.more_smooth = o.temperatures, o.top_ks, o.more_smooth

    # -- validation ------------------------------------------------------------------------------------

    def check(self, model) -> None:
        self._check_pair(model, self.refiner)

    def _check_pair(self, drafter, refiner):
        if refiner is None:
            raise ValueError("CoDe needs a refiner model: CoDeSampler(refiner=small_var, draft_steps=N)")
        K = len(drafter.patch_nums)
        if tuple(refiner.patch_nums) != tuple(drafter.patch_nums):
            raise ValueError(f"drafter and refiner have different patch_nums: {tuple(drafter.patch_nums)} vs {tuple(refiner.patch_nums)}")
        if not 1 <= self.draft_steps <= K - 1:
            raise ValueError(f"draft_steps must be in 1..{K - 1} for {K} scales, got {self.draft_steps}")
        if refiner.vocab_size != drafter.vocab_size or refiner.Cvae != drafter.Cvae:
            raise ValueError(f"drafter and refiner use different codebooks: vocab {drafter.vocab_size} x Cvae "
                             f"{drafter.Cvae} vs {refiner.vocab_size} x {refiner.Cvae}")
        if refiner.num_classes != drafter.num_classes:
            raise ValueError(f"drafter has {drafter.num_classes} classes, refiner {refiner.num_classes}")
        q = drafter.quantizer
        try:
            q_ref = refiner.quantizer
        except ValueError:  # a refiner without a tokenizer of its own works in the drafter's
            q_ref = q
        if q_ref is not q and not torch.equal(q_ref.embedding.weight.to(q.embedding.weight), q.embedding.weight):
            raise ValueError("drafter and refiner are attached to different VQVAE codebooks; CoDe needs one shared tokenizer")
        return q

    def footprint(self, model, cond, config: SamplingConfig | None = None) -> Footprint:
        """What one image needs (:mod:`vargen.budget`): the drafter's and the refiner's rows (two each with CFG)."""
        self._check_pair(model, self.refiner)
        settings = ScaleSettings.resolve(model, config, self.temperatures, self.top_ks, self.more_smooth)
        rows = 2 if settings.uses_cfg else 1
        return Footprint().add("the drafter's cache and forwards", rows * model.memory_per_row()).add(
            "the refiner's cache and forwards", rows * self.refiner.memory_per_row())

    # -- sampling ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, model, cond, config: SamplingConfig | None = None, generator=None) -> GenerationOutput:
        """``model`` is the drafter (large). Returns tokens and, as ``latents``, the final ``f_hat``."""
        drafter, refiner, N = model, self.refiner, self.draft_steps
        quantizer = self._check_pair(drafter, refiner)
        settings = ScaleSettings.resolve(drafter, config, self.temperatures, self.top_ks, self.more_smooth)
        cfg = settings.uses_cfg
        labels = cfg_labels(drafter, cond, cfg)
        refiner.check_labels(labels, allow_null=True)
        B = labels.shape[0] // 2 if cfg else labels.shape[0]
        _gens(generator, B)
        device = labels.device
        K = len(drafter.patch_nums)
        budget_d, budget_r = kv_budget_plan(drafter, *self.kv, config), kv_budget_plan(refiner, *self.kv, config)
        stats = Stats(reports_acceptance=False)
        rewind = None
        if not self.reuse:
            gens = _generators_to_rewind(generator, device)
            rewind = [(g, g.get_state()) for g in gens]

        with StepTimer(device) as timer:
            t0 = synced_clock(device)
            state = NextScaleState.start(quantizer, B, device)
            # the drafter only ever holds its N scales: a cache of that length, not all L positions
            length = drafter.begin_ends[N - 1][1]
            cond_d = drafter.condition(labels)
            cache_d = (drafter.new_cache(labels.shape[0], length=length) if budget_d is None
                       else drafter.new_cache(labels.shape[0], length=length, budget=budget_d))
            for si in range(N):
                run_scale(drafter, quantizer, cond_d, cache_d, state, si, settings, generator)
                stats.forward_passes += 1
            drafter_kv = 2 * cache_d.k.numel() * cache_d.k.element_size()
            drafter_used = _used_bytes(cache_d)
            del cache_d  # the refiner cannot use the drafter's K/V (different width); free it first
            t1 = synced_clock(device)

            cond_r = refiner.condition(labels)
            prefill = drafter.begin_ends[N - 1 if self.reuse else N][1]
            cache_r = (refiner.new_cache(labels.shape[0]) if budget_r is None
                       else refiner.new_cache(labels.shape[0], budget=budget_r, chunk=prefill))
            refiner_passes = 1
            if self.reuse:
                # one batched prefill of the drafted scales: K/V only, no head, no draws
                refiner.forward_scales(cond_r, state.inputs_for(0, N, cfg), cache_r, 0, N, logits_from=None)
                prefill_tokens = drafter.begin_ends[N - 1][1]
                first_cached = N
            else:
                for g, s in rewind:  # upstream reseeds the refiner's generator with the drafter's seed
                    g.set_state(s)
                logits = refiner.forward_scales(cond_r, state.inputs_for(0, N + 1, cfg), cache_r, 0, N + 1, logits_from=0)
                cond_half = logits[:B]
                for a in range(N):  # upstream's throw-away draws: they only advance the generator
                    lo, hi = drafter.begin_ends[a]
                    draw_tokens(var_filter(cond_half[:, lo:hi], settings.top_k[a], settings.top_p), settings.temperature[a], generator)
                lo, hi = drafter.begin_ends[N]
                commit_scale(quantizer, state, N, guide(logits[:, lo:hi], settings.guidance[N], cfg), settings, generator)
                prefill_tokens = hi
                first_cached = N + 1
            for si in range(first_cached, K):
                run_scale(refiner, quantizer, cond_r, cache_r, state, si, settings, generator)
                refiner_passes += 1
            tokens = torch.cat(state.tokens, dim=1)
            t2 = synced_clock(device)

        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        fill_stats(stats, drafter.patch_nums, B, device)
        stats.code = CoDeStats(
            draft_steps=N, reuse=self.reuse, drafter_forward_passes=stats.forward_passes,
            refiner_forward_passes=refiner_passes, refiner_prefill_tokens=prefill_tokens,
            drafter_seconds=t1 - t0, refiner_seconds=t2 - t1,
            drafter_kv_cache_bytes=drafter_kv, refiner_kv_cache_bytes=2 * cache_r.k.numel() * cache_r.k.element_size(),
        )
        stats.seconds_per_image, stats.peak_memory_bytes_per_image = timer.seconds / B, (timer.peak // B if timer.peak is not None else None)
        # the two caches never coexist (the drafter's is freed first)
        stats.kv_cache_bytes = max(stats.code.drafter_kv_cache_bytes, stats.code.refiner_kv_cache_bytes)
        if budget_d is not None:
            stats.kv_bytes_used, stats.kv_policy = max(drafter_used, _used_bytes(cache_r)), self.kv[1]
        return GenerationOutput(tokens=tokens, stats=stats, latents=state.f_hat)
