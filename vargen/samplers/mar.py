"""MAR's baseline sampler: random order, cosine token-count schedule, one DiffLoss run per AR step.

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
    if schedule == "constant":
        return [float(cfg)] * num_iter
    if schedule != "linear":
        raise ValueError(f"cfg_schedule must be 'linear' or 'constant', got {schedule!r}")
    # MAR uses the (clamped) mask_len of the step, which is 1 (not 0) at the last step
    out, masked = [], seq_len
    for step in range(num_iter):
        target = math.floor(seq_len * math.cos(math.pi / 2.0 * (step + 1) / num_iter))
        mask_len = max(1, min(masked - 1, target))
        out.append(1 + (cfg - 1) * (seq_len - mask_len) / seq_len)
        masked = mask_len
    return out


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


def plan_run(model, cond, config: SamplingConfig | None, num_iter: int) -> MARPlan:
    """Validate everything (``ValueError`` before any work) and fix the schedules."""
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
    return MARPlan(labels, batch, config, masked_after_step(model.seq_len, num_iter),
                   cfg_scales(model.seq_len, num_iter, config.cfg_scale, config.cfg_schedule))


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
    steps = annealed_steps(num_iter, own if start is None else start, (own if start is None else start) if end is None
                           else end, annealing)
    if max(steps) > head.scheduler.num_train_timesteps:
        raise ValueError(f"DiSA: {max(steps)} diffusion steps exceed the head's {head.scheduler.num_train_timesteps} "
                         "training timesteps")
    views = {n: respaced(head, n) for n in set(steps)}
    return [views[n] for n in steps]


@dataclass
class MAROptions:
    num_iter: int = option(64, "MAR steps (the encoder-decoder passes); MAR's default 64, its FID runs 256",
                           minimum=1, bound="seq_len")
    clip_x0: float | None = option(None, "clamp each diffusion step's predicted start to [-c, c] (none: MAR's "
                                   "behaviour)", minimum=0.0)
    diffusion_start: int | None = option(None, "DiSA: diffusion steps at the first MAR step (none: the model's "
                                         "own count at every step)", minimum=1)
    diffusion_end: int | None = option(None, "DiSA: diffusion steps at the last MAR step, annealed from "
                                       "diffusion_start (the paper's MAR setting: 50 -> 5)", minimum=1)
    annealing: str = option("linear", "DiSA: how the step count goes from start to end over the MAR steps",
                            choices=ANNEALING)


class MARSampler:
    """MAR's ``sample_tokens`` as a sampler. ``num_iter``: AR steps (MAR's default 64; its FID runs use 256)."""

    name = "mar"
    MODEL = "continuous"
    OPTIONS = MAROptions

    def __init__(self, num_iter: int = 64, clip_x0: float | None = None, diffusion_start: int | None = None,
                 diffusion_end: int | None = None, annealing: str = "linear"):
        self.options = checked(MAROptions(num_iter, clip_x0, diffusion_start, diffusion_end, annealing), "mar")
        self.num_iter, self.clip_x0 = num_iter, self.options.clip_x0
        self.diffusion_start, self.diffusion_end, self.annealing = diffusion_start, diffusion_end, annealing

    def check(self, model) -> None:
        check_bounds(self.options, "mar", model)

    @torch.no_grad()
    def footprint(self, model, cond, config: SamplingConfig | None = None) -> Footprint:
        """What one image needs (:mod:`vargen.budget`): the model's rows (two with CFG), at most every token at once."""
        plan = plan_run(model, cond, config, self.num_iter)
        return Footprint().add("an encoder-decoder pass and the diffusion head",
                               (2 if plan.guided else 1) * model.memory_per_row(model.seq_len))

    def sample(self, model, cond, config: SamplingConfig | None = None, generator: torch.Generator | None = None,
               *, orders: torch.Tensor | None = None) -> GenerationOutput:
        """``cond``: class labels [B] (or an int batch size for unconditional samples).

        Returns tokens ``[B, L, C]`` in position (raster) order, in MAR's scaled latent space; use
        ``model.unpatchify`` for ``[B, C, h, w]``. ``orders`` replays given generation orders.
        """
        plan = plan_run(model, cond, config, self.num_iter)
        heads = diffusion_heads(model.diffloss, self.num_iter, self.diffusion_start, self.diffusion_end, self.annealing)
        B, L, C = plan.batch, model.seq_len, model.token_embed_dim
        device = model.device
        if orders is None:
            orders = model.sample_orders(B, generator, device)
        orders = check_orders(orders.to(device), B, L)
        temperature, guided = plan.config.temperature, plan.guided
        stats = Stats(reports_acceptance=False, token_step=torch.full((B, L), -1, dtype=torch.long, device=device))
        tokens = torch.zeros(B, L, C, device=device)
        mask = torch.ones(B, L, dtype=torch.bool, device=device)
        with StepTimer(device) as timer:
            for step in range(self.num_iter):
                z = model.condition(tokens, mask, plan.labels, cfg=guided)
                stats.forward_passes += 1
                mask_next = mask_from_order(orders, plan.masked_after[step])
                to_pred = mask & ~mask_next
                rows = z[torch.cat([to_pred, to_pred]) if guided else to_pred]
                sampled = denoise(heads[step], rows, temperature, plan.scales[step] if guided else 1.0,
                                  generator=generator, clip_x0=self.clip_x0)
                tokens[to_pred] = sampled[: int(to_pred.sum())]
                stats.token_step[to_pred] = step
                stats.accepted.append(to_pred.sum(-1))
                mask = mask_next
        stats.tokens = torch.full((B,), L, dtype=torch.long)
        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        steps = [h.num_sampling_steps for h in heads]
        stats.mar = MaskedStats(num_iter=self.num_iter, diffusion_steps=steps[0] if len(set(steps)) == 1 else steps,
                                diffusion_steps_total=sum(steps))
        return GenerationOutput(tokens=tokens, stats=stats, latents=tokens)
