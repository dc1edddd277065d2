"""MAR's baseline sampler: random order, cosine token-count schedule, one DiffLoss run per AR step; GtR's order.

Per step k of K (``num_iter``), following MAR's ``sample_tokens`` (research/cspd_mar.md §1.3):

1. encoder + decoder on the current tokens and mask give z for every position (with CFG one batch of
   cond rows and null-class rows carrying the same tokens);
2. the positions still masked after the step are the first ``mask_len(k)`` entries of each row's order,
   ``mask_len(k) = max(1, min(masked - 1, floor(L · cos(π/2 · (k+1)/K))))`` (MaskGIT's cosine); the
   others of the currently masked positions are generated now (the last step takes all that is left),
   so the *last* entries of an order are generated first;
3. their tokens are sampled by the diffusion head with the step's CFG scale: ``linear`` ramps it as
   ``1 + (cfg - 1) · (L - mask_len(k)) / L`` (never quite reaching cfg, as in MAR), ``constant`` keeps it.

Randomness comes from the caller's generator in MAR's order (orders first, then per step x_T and one
draw per reverse step), so a generator seeded like MAR's torch RNG replays MAR's run given its orders.

``order="gtr"`` is GtR (Yan et al., "Generation then Reconstruction: Accelerating Masked Autoregressive Models via
Two-Stage Sampling", ICLR 2026, arXiv 2510.17171): the grid is cut into stages by a recursive checkerboard bisection
(:func:`gtr_stage_map`), a sparse skeleton is generated slowly and the last stage, half the tokens, is reconstructed
in one or two wide steps; ``stage_diffusion`` gives the head T_max -> T_min reverse steps over the generation stages
and T_rec in the reconstruction, and FTS (``fts_ratio``) gives the reconstruction's high-frequency tokens
``fts_steps``. It draws from the generator like MAR (one random permutation per row, stably sorted by stage, then
per step x_T and the reverse steps; with FTS the detail tokens' chain before the others'), so ``order="random"``
with ``fts_ratio=0`` is the plain sampler token for token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from ..budget import Footprint
from .base import GenerationOutput, SamplingConfig, Stats, StepTimer
from .diffusion_head import ANNEALING, annealed_steps, denoise, respaced
from .spec import check_bounds, checked, option
from .stats import MaskedStats

MAR_CONFIG_FIELDS = ("temperature", "cfg_scale", "cfg_schedule")

MAR_DEFAULTS = SamplingConfig(temperature=1.0, cfg_scale=1.0, cfg_schedule="linear")


def masked_after_step(seq_len: int, num_iter: int) -> list[int]:
    """Number of positions still masked after each of the ``num_iter`` steps (0 after the last)."""
    counts, masked = [], seq_len
    for step in range(num_iter):
        target = math.floor(seq_len * math.cos(math.pi / 2.0 * (step + 1) / num_iter))
        mask_len = max(1, min(masked - 1, target))
        counts.append(0 if step == num_iter - 1 else mask_len)
        masked = counts[-1]
    return counts


def cfg_scales(seq_len: int, num_iter: int, cfg: float, schedule: str) -> list[float]:
    """The guidance scale of each step (MAR/Muse): linear in the number of tokens known after the step."""
    return step_scales(seq_len, masked_after_step(seq_len, num_iter), cfg, schedule)


def step_scales(seq_len: int, masked_after: list[int], cfg: float, schedule: str) -> list[float]:
    """:func:`cfg_scales` for any schedule of masked counts (GtR's too): ``1 + (cfg - 1) (L - m) / L`` with ``m`` the
    positions still masked after the step, taken as 1 (not 0) at the last step, as MAR does."""
    if schedule == "constant":
        return [float(cfg)] * len(masked_after)
    if schedule != "linear":
        raise ValueError(f"cfg_schedule must be 'linear' or 'constant', got {schedule!r}")
    return [1 + (cfg - 1) * (seq_len - max(1, m)) / seq_len for m in masked_after]


# GtR's MAR setting (arXiv 2510.17171): 3 stages of 64, 64 and 128 of 256 tokens at 2.67, 10.67 and 64 tokens per step
GTR_PAPER_STEPS = (24, 6, 2)


def gtr_stage_map(h: int, w: int, stages: int, parity: int = 0) -> torch.Tensor:
    """The GtR stage (1 .. ``stages``) of each position of an h x w grid, in raster order: the recursive bisection of
    GtR's Algorithm 1 (arXiv 2510.17171). Round 1 sends the checkerboard colour ``(i+j) mod 2 = 1 - parity`` to the
    last stage (the reconstruction); round k (2 .. stages-1) sends the half of the rest with ``(i+j) mod 2^k =
    parity + 2^(k-1)`` to stage ``stages - k + 1``; what is left, ``(i+j) = parity mod 2^(stages-1)``, is stage 1,
    the skeleton, generated first. The paper does not say which half continues the recursion or which colour comes
    first: here the half holding the diagonal ``i+j = parity`` always does, and ``parity`` picks the colour. Every
    stage but the last lies on one colour, so no two 4-neighbours are ever generated in one step before the last
    stage."""
    diag = (torch.arange(h)[:, None] + torch.arange(w)[None]).flatten()
    stage = torch.ones(h * w, dtype=torch.long)
    for k in range(1, stages):
        stage[diag % 2**k == (parity + 2 ** (k - 1)) % 2**k] = stages - k + 1
    return stage


def gtr_split(total: int, sizes: list[int], weights: tuple[int, ...] = GTR_PAPER_STEPS) -> list[int]:
    """``total`` steps over stages of ``sizes`` tokens, in proportion to ``weights`` (the paper's 24/6/2), each stage
    at least one step and at most one per token; largest remainders first. Needs ``len(sizes) <= total <=
    sum(sizes)``."""
    ideal = [total * w / sum(weights) for w in weights]
    steps = [min(max(1, math.floor(x)), m) for x, m in zip(ideal, sizes)]
    while sum(steps) != total:
        grow = sum(steps) < total
        free = [k for k in range(len(steps)) if (steps[k] < sizes[k] if grow else steps[k] > 1)]
        k = (max if grow else min)(free, key=lambda k: ideal[k] - steps[k])
        steps[k] += 1 if grow else -1
    return steps


def gtr_masked_after(sizes: list[int], steps: list[int]) -> list[int]:
    """Positions still masked after each step: each stage's tokens (stage 1 first) cut into its steps as evenly as
    they go (the paper's constant rate within a stage)."""
    out, left = [], sum(sizes)
    for m, n in zip(sizes, steps):
        for s in range(n):
            left -= m * (s + 1) // n - m * s // n
            out.append(left)
    return out


def gtr_order(stage: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """GtR orders from random permutations ``perm`` [B, L]: the last stage first (masked longest) and stage 1 last
    (MAR generates the end of an order first), each stage in the order its positions have in ``perm``."""
    return perm.gather(-1, (-stage[perm]).argsort(dim=-1, stable=True))


def fts_scores(z: torch.Tensor) -> torch.Tensor:
    """GtR's Frequency-Weighted Token Selection score of each condition vector z [..., D] (arXiv 2510.17171):
    ``sum over n = 1 .. floor(D/2) of |DFT(z)(n)| (1 + n / floor(D/2))``, the DFT over the channels, the DC term left
    out and higher frequencies weighted up. A heuristic of the decoder's channel order: z must be what the head gets."""
    half = z.shape[-1] // 2
    amp = torch.fft.rfft(z.float(), dim=-1).abs()[..., 1 : half + 1]
    return (amp * (1 + torch.arange(1, half + 1, device=z.device) / half)).sum(-1)


def fts_select(z_cond: torch.Tensor, where: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool [B, L]: per image, the ``ceil(ratio * n)`` of its ``n`` positions ``where`` (the same count in every row,
    as MAR's masks have) whose conditions ``z_cond`` [B, L, D] score highest (:func:`fts_scores`). ``z_cond`` is the
    conditional half of a CFG batch, so a CFG pair shares its choice."""
    n = int(where[0].sum())
    k = math.ceil(Fraction(repr(ratio)) * n)  # the decimal as written: 0.07 of 100 is 7 (float: 7.000000000000001)
    scores = fts_scores(z_cond).masked_fill(~where, float("-inf"))
    return torch.zeros_like(where).scatter(-1, scores.topk(k, dim=-1).indices, True)


@dataclass
class MARPlan:
    """Everything about a MAR run that is fixed before the first pass."""

    labels: torch.Tensor | None
    batch: int
    config: SamplingConfig
    masked_after: list[int]
    scales: list[float]

    @property
    def guided(self) -> bool:
        return self.config.cfg_scale != 1.0


def plan_run(model, cond, config: SamplingConfig | None, num_iter: int,
             masked_after: list[int] | None = None) -> MARPlan:
    """Validate everything (``ValueError`` before any work) and fix the schedules (``masked_after``: positions still
    masked after each step; default MAR's cosine)."""
    if not isinstance(num_iter, int) or num_iter < 1:
        raise ValueError(f"num_iter must be an integer >= 1, got {num_iter!r}")
    if num_iter > model.seq_len:
        raise ValueError(f"num_iter={num_iter} is more steps than tokens ({model.seq_len})")
    config = config or SamplingConfig()
    config.reject_unused(MAR_CONFIG_FIELDS, "MAR (continuous tokens)")
    config = config.with_defaults(MAR_DEFAULTS)
    config.validate(conditional=cond is not None and not isinstance(cond, int))
    if isinstance(cond, int) and not isinstance(cond, bool):
        if cond < 1:
            raise ValueError(f"batch size must be >= 1, got {cond}")
        labels, batch = None, cond
    else:
        if not isinstance(cond, (torch.Tensor, list, tuple)):
            raise ValueError("cond must be class labels [B] (a LongTensor or a list of ints) or an int batch size "
                             "(unconditional)")
        labels = model.check_labels(cond)
        batch = labels.shape[0]
    masked_after = masked_after or masked_after_step(model.seq_len, num_iter)
    return MARPlan(labels, batch, config, masked_after,
                   step_scales(model.seq_len, masked_after, config.cfg_scale, config.cfg_schedule))


def mask_from_order(orders: torch.Tensor, num_masked: int) -> torch.Tensor:
    """Bool [B, L]: True at the first ``num_masked`` entries of each row's order."""
    mask = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
    return mask.scatter(-1, orders[:, :num_masked], True)


def check_orders(orders: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
    if orders.shape != (batch, seq_len) or not bool((orders.sort(-1).values == torch.arange(
            seq_len, device=orders.device)).all()):
        raise ValueError(f"orders must hold one permutation of 0..{seq_len - 1} per row, shape [{batch}, {seq_len}]")
    return orders.long()


def diffusion_heads(head, num_iter: int, start: int | None, end: int | None, annealing: str = "linear") -> list:
    """The diffusion head of each MAR step: ``head`` itself throughout unless DiSA's ``start`` / ``end`` are set
    (``end`` alone anneals from the head's own count; ``start`` alone keeps that count at every step)."""
    if start is None and end is None:
        return [head] * num_iter
    own = head.num_sampling_steps
    return respaced_heads(head, annealed_steps(num_iter, own if start is None else start,
                                               (own if start is None else start) if end is None else end, annealing))


def respaced_heads(head, steps: list[int], who: str = "DiSA") -> list:
    """``head`` respaced to each count of ``steps`` (one view per distinct count)."""
    if max(steps) > head.scheduler.num_train_timesteps:
        raise ValueError(f"{who}: {max(steps)} diffusion steps exceed the head's {head.scheduler.num_train_timesteps} "
                         "training timesteps")
    views = {n: respaced(head, n) for n in set(steps)}
    return [views[n] for n in steps]


GTR_OPTIONS = ("gtr_stages", "gtr_steps", "gtr_parity", "stage_diffusion", "fts_ratio", "fts_steps")


@dataclass
class MAROptions:
    num_iter: int = option(64, "MAR steps (the encoder-decoder passes); MAR's default 64, its FID runs 256; "
                           "order=gtr without it: GtR's 32 (24/6/2 per stage)", minimum=1, bound="seq_len")
    clip_x0: float | None = option(None, "clamp each diffusion step's predicted start to [-c, c] (none: MAR's "
                                   "behaviour)", minimum=0.0)
    diffusion_start: int | None = option(None, "DiSA: diffusion steps at the first MAR step (none: the model's "
                                         "own count at every step)", minimum=1)
    diffusion_end: int | None = option(None, "DiSA: diffusion steps at the last MAR step, annealed from "
                                       "diffusion_start (the paper's MAR setting: 50 -> 5)", minimum=1)
    annealing: str = option("linear", "DiSA (and stage_diffusion): how the step count goes from start to end over "
                            "the MAR steps", choices=ANNEALING)
    order: str = option("random", "the generation order: random (MAR) or gtr (GtR: a checkerboard skeleton, then "
                        "the other colour reconstructed in a few wide steps)", choices=("random", "gtr"))
    gtr_stages: int = option(3, "GtR: stages of the recursive checkerboard bisection (the paper's MAR setting 3)",
                             minimum=2, maximum=16)
    gtr_steps: tuple[int, ...] | None = option(None, "GtR: MAR steps per stage, skeleton first (none: num_iter in "
                                               "the paper's 24/6/2 proportion, or 24/6/2 itself)", minimum=1)
    gtr_parity: int = option(0, "GtR: the checkerboard colour (i+j) mod 2 of the skeleton", choices=(0, 1))
    stage_diffusion: tuple[int, int, int] | None = option(
        None, "GtR: diffusion steps T_max/T_min/T_rec, T_max -> T_min over the generation stages and T_rec in the "
        "reconstruction (the paper's 50/20/20; none: the model's own or DiSA's)", minimum=1)
    fts_ratio: float = option(0.0, "GtR: share of each reconstruction step's tokens, those of highest frequency "
                              "score, that get fts_steps diffusion steps (the paper's 0.1)", minimum=0.0, maximum=1.0)
    fts_steps: int | None = option(None, "GtR: diffusion steps of the tokens fts_ratio picks (none: T_max of "
                                   "stage_diffusion; the paper's 50)", minimum=1)


class MARSampler:
    """MAR's ``sample_tokens`` as a sampler. ``num_iter``: AR steps (MAR's default 64; its FID runs use 256).
    ``order="gtr"`` and the ``gtr_*``, ``stage_diffusion`` and ``fts_*`` options: GtR (module docstring)."""

    name = "mar"
    MODEL = "continuous"
    OPTIONS = MAROptions

    def __init__(self, num_iter: int | None = None, clip_x0: float | None = None, diffusion_start: int | None = None,
                 diffusion_end: int | None = None, annealing: str = "linear", order: str = "random",
                 gtr_stages: int = 3, gtr_steps: tuple[int, ...] | None = None, gtr_parity: int = 0,
                 stage_diffusion: tuple[int, int, int] | None = None, fts_ratio: float = 0.0,
                 fts_steps: int | None = None):
        # num_iter not given: 64 for MAR's order, GtR's own split for order=gtr (which needs to know the difference)
        o = self.options = checked(MAROptions(64 if num_iter is None else num_iter, clip_x0, diffusion_start,
                                              diffusion_end, annealing, order, gtr_stages, gtr_steps, gtr_parity,
                                              stage_diffusion, fts_ratio, fts_steps), "mar")
        self.num_iter, self.num_iter_given, self.clip_x0 = o.num_iter, num_iter is not None, o.clip_x0
        self.diffusion_start, self.diffusion_end, self.annealing = o.diffusion_start, o.diffusion_end, o.annealing
        self.order, self.stage_diffusion, self.fts_ratio = o.order, o.stage_diffusion, o.fts_ratio
        self.fts_steps = o.fts_steps if o.fts_steps is not None or o.stage_diffusion is None else o.stage_diffusion[0]
        self._check_gtr()

    def _check_gtr(self) -> None:
        """The GtR options' combinations, before any model is seen (one-line errors naming the option)."""
        o = self.options
        if o.order == "random":
            given = [k for k in GTR_OPTIONS if getattr(o, k) != MAROptions.__dataclass_fields__[k].default]
            if given:
                raise ValueError(f"mar: {given[0]} applies to order=gtr only")
            return
        if o.gtr_steps is not None:
            if len(o.gtr_steps) != o.gtr_stages:
                raise ValueError(f"mar: gtr_steps must give one step count per stage ({o.gtr_stages}), got "
                                 f"{'/'.join(map(str, o.gtr_steps))}")
            if self.num_iter_given and sum(o.gtr_steps) != o.num_iter:
                raise ValueError(f"mar: gtr_steps sum to {sum(o.gtr_steps)} steps but num_iter is {o.num_iter} (a "
                                 f"pipeline may set its own): give num_iter={sum(o.gtr_steps)} with them")
        elif o.gtr_stages != len(GTR_PAPER_STEPS):
            raise ValueError(f"mar: gtr_stages={o.gtr_stages} needs gtr_steps (the paper gives MAR's split for "
                             f"{len(GTR_PAPER_STEPS)} stages only)")
        elif self.num_iter_given and o.num_iter < o.gtr_stages:
            raise ValueError(f"mar: num_iter={o.num_iter} leaves a GtR stage without a step "
                             f"(gtr_stages={o.gtr_stages})")
        if o.stage_diffusion is not None:
            if len(o.stage_diffusion) != 3:
                raise ValueError("mar: stage_diffusion must be three step counts T_max/T_min/T_rec, got "
                                 + "/".join(map(str, o.stage_diffusion)))
            if o.diffusion_start is not None or o.diffusion_end is not None:
                raise ValueError("mar: stage_diffusion replaces DiSA's diffusion_start / diffusion_end: give one or "
                                 "the other")
        if o.fts_steps is not None and o.fts_ratio == 0:
            raise ValueError("mar: fts_steps needs fts_ratio > 0")
        if o.fts_ratio > 0 and self.fts_steps is None:
            raise ValueError("mar: fts_ratio needs fts_steps or stage_diffusion (else the tokens it picks get the "
                             "same diffusion steps as the others)")

    def schedule(self, model) -> tuple[torch.Tensor | None, list[int] | None, list[int]]:
        """(GtR's stage of each position or None, its steps per stage or None, the positions still masked after each
        step) on ``model``'s grid; ``ValueError`` for a split the grid cannot take."""
        if self.order == "random":
            return None, None, masked_after_step(model.seq_len, self.num_iter)  # plan_run checks num_iter
        K = self.options.gtr_stages
        stage = gtr_stage_map(model.seq_h, model.seq_w, K, self.options.gtr_parity)
        sizes = torch.bincount(stage, minlength=K + 1)[1:].tolist()
        if 0 in sizes:
            raise ValueError(f"mar: gtr_stages={K} leaves a stage empty on the model's {model.seq_h}x{model.seq_w} "
                             "grid")
        if self.options.gtr_steps is not None:
            steps = list(self.options.gtr_steps)
        elif self.num_iter_given:
            if self.num_iter > model.seq_len:
                raise ValueError(f"num_iter={self.num_iter} is more steps than tokens ({model.seq_len})")
            steps = gtr_split(self.num_iter, sizes)
        else:  # the paper's step counts (like MAR's num_iter, whatever the grid), at most one step per token
            steps = [min(n, m) for n, m in zip(GTR_PAPER_STEPS, sizes)]
        for k, (n, m) in enumerate(zip(steps, sizes)):
            if n > m:
                raise ValueError(f"mar: gtr_steps gives stage {k + 1} {n} steps for its {m} tokens")
        return stage, steps, gtr_masked_after(sizes, steps)

    def heads(self, model, stage_steps: list[int] | None) -> list:
        """The diffusion head of each step: the model's, DiSA's, or GtR's stage-aware counts (T_max -> T_min over
        the generation stages' steps, as DiSA anneals, and T_rec in the reconstruction stage)."""
        num_iter = sum(stage_steps) if stage_steps else self.num_iter
        if self.stage_diffusion is None:
            return diffusion_heads(model.diffloss, num_iter, self.diffusion_start, self.diffusion_end, self.annealing)
        t_max, t_min, t_rec = self.stage_diffusion
        generation = annealed_steps(sum(stage_steps[:-1]), t_max, t_min, self.annealing)
        return respaced_heads(model.diffloss, generation + [t_rec] * stage_steps[-1], "GtR")

    def check(self, model) -> None:
        if self.order == "random" or self.num_iter_given:
            check_bounds(self.options, "mar", model)
        self.heads(model, self.schedule(model)[1])
        if self.fts_ratio > 0:
            respaced_heads(model.diffloss, [self.fts_steps], "FTS")

    @torch.no_grad()
    def footprint(self, model, cond, config: SamplingConfig | None = None) -> Footprint:
        """What one image needs (:mod:`vargen.budget`): the model's rows (two with CFG), at most every token at once
        (GtR's widest step, its reconstruction, is half the grid; FTS runs it as two chains, one after the other)."""
        masked_after = self.schedule(model)[2]
        plan = plan_run(model, cond, config, len(masked_after), masked_after)
        return Footprint().add("an encoder-decoder pass and the diffusion head",
                               (2 if plan.guided else 1) * model.memory_per_row(model.seq_len))

    def sample(self, model, cond, config: SamplingConfig | None = None, generator: torch.Generator | None = None,
               *, orders: torch.Tensor | None = None) -> GenerationOutput:
        """``cond``: class labels [B] (or an int batch size for unconditional samples).

        Returns tokens ``[B, L, C]`` in position (raster) order, in MAR's scaled latent space; use
        ``model.unpatchify`` for ``[B, C, h, w]``. ``orders`` replays given generation orders (with
        ``order="gtr"``: GtR orders, the reconstruction stage first and the skeleton last, :func:`gtr_order`).
        """
        stage, stage_steps, masked_after = self.schedule(model)
        num_iter = len(masked_after)
        plan = plan_run(model, cond, config, num_iter, masked_after)
        heads = self.heads(model, stage_steps)
        fts = self.fts_ratio > 0
        detail_head = respaced_heads(model.diffloss, [self.fts_steps], "FTS")[0] if fts else None
        reconstruction = num_iter - stage_steps[-1] if stage_steps else num_iter  # the first reconstruction step
        B, L, C = plan.batch, model.seq_len, model.token_embed_dim
        device = model.device
        if orders is None:
            orders = model.sample_orders(B, generator, device)
            if stage is not None:
                orders = gtr_order(stage.to(device), orders)
        orders = check_orders(orders.to(device), B, L)
        if stage is not None and bool((stage.to(device)[orders].diff(dim=-1) > 0).any()):
            raise ValueError("orders must list GtR's stages last first (the skeleton at the end), as gtr_order does")
        temperature, guided = plan.config.temperature, plan.guided
        stats = Stats(reports_acceptance=False, token_step=torch.full((B, L), -1, dtype=torch.long, device=device))
        tokens = torch.zeros(B, L, C, device=device)
        mask = torch.ones(B, L, dtype=torch.bool, device=device)
        chain_steps = 0
        with StepTimer(device) as timer:
            for step in range(num_iter):
                z = model.condition(tokens, mask, plan.labels, cfg=guided)
                stats.forward_passes += 1
                mask_next = mask_from_order(orders, plan.masked_after[step])
                to_pred = mask & ~mask_next
                groups = [(heads[step], to_pred)]
                if step >= reconstruction and fts and detail_head.num_sampling_steps != heads[step].num_sampling_steps:
                    detail = fts_select(z[:B], to_pred, self.fts_ratio)
                    groups = [(detail_head, detail), (heads[step], to_pred & ~detail)]
                for head, where in groups:
                    if not where.any():
                        continue
                    rows = z[torch.cat([where, where]) if guided else where]
                    sampled = denoise(head, rows, temperature, plan.scales[step] if guided else 1.0,
                                      generator=generator, clip_x0=self.clip_x0)
                    tokens[where] = sampled[: int(where.sum())]
                    chain_steps += head.num_sampling_steps
                stats.token_step[to_pred] = step
                stats.accepted.append(to_pred.sum(-1))
                mask = mask_next
        stats.tokens = torch.full((B,), L, dtype=torch.long)
        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        steps = [h.num_sampling_steps for h in heads]
        stats.mar = MaskedStats(num_iter=num_iter, diffusion_steps=steps[0] if len(set(steps)) == 1 else steps,
                                diffusion_steps_total=chain_steps, order="gtr" if stage is not None else None,
                                stage_steps=stage_steps, fts_steps=self.fts_steps if fts else None)
        return GenerationOutput(tokens=tokens, stats=stats, latents=tokens)
