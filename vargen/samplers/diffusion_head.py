"""Sampling a diffusion head (MAR's DiffLoss): the ancestral loop over its scheduler, out of the model.

A head exposes ``predict(x, index, c, cfg) -> [eps | v]`` (its network at the scheduler's spaced indices),
``scheduler`` (an :class:`~vargen.models.schedulers.IDDPMScheduler` respaced for sampling) and
``in_channels``. :func:`denoise` is MAR's ``DiffLoss.sample``: x_T, then ``num_sampling_steps`` reverse
steps with the temperature on the noise; :func:`reverse_step` and :func:`path_log_prob` expose the reverse
Gaussians that continuous speculative decoding verifies with. All noise is either given by the caller or
drawn from the caller's generator in MAR's order (x_T first, then one draw per step, the last one unused).

``clip_x0`` clamps each step's predicted start to [-c, c] (IDDPM's ``clip_denoised`` with a range; MAR
uses none). At the first step of the cosine schedule 1/sqrt(alpha_bar) is ~4e3, so a briefly trained
head's small eps error there becomes a huge x0 and the whole chain diverges; a sampling option, never a
property of the model.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

__all__ = ["DenoiseTrace", "denoise", "reverse_step", "path_log_prob", "gaussian_log_prob", "respaced",
           "annealed_steps", "ANNEALING"]

LOG_2PI = math.log(2 * math.pi)


@dataclass
class DenoiseTrace:
    """What one ancestral diffusion run produced, per row.

    sample: the output x_0 (the last step adds no noise, so it equals ``final_mean``).
    inputs: the S inputs of the reverse steps in call order (x_S first, x_1 last), ``[S, R, C]``,
        kept when asked for; ``x1`` is always kept.
    final_log_variance: log σ² of the last (index 0) reverse step, without temperature.
    log_std_sum: Σ over the stochastic steps (index ≥ 1) of ½ log σ², without temperature, ``[R, C]``.
    log_prob: log density of the stochastic steps' draws (index ≥ 1) under the temperature-scaled
        reverse Gaussians, ``[R]`` (x_S's prior term left out: it is the same for every model).
    """

    sample: torch.Tensor
    x1: torch.Tensor
    final_log_variance: torch.Tensor
    log_std_sum: torch.Tensor
    log_prob: torch.Tensor
    inputs: torch.Tensor | None = None


ANNEALING = ("linear", "cosine")


def annealed_steps(num_iter: int, start: int, end: int, schedule: str = "linear") -> list[int]:
    """Diffusion steps of each of ``num_iter`` AR steps under DiSA (Zhao et al., "DiSA: Diffusion Step Annealing in
    Autoregressive Image Generation", arXiv 2505.20297): ``start`` at the first AR step, ``end`` at the last, in
    between by the AR step's progress ``k / (num_iter - 1)``, linearly or along a half cosine (slow at both ends),
    rounded half up. Later tokens are conditioned on most of the image, their distributions are narrow, and fewer
    reverse steps sample them nearly as well."""
    if schedule not in ANNEALING:
        raise ValueError(f"annealing must be one of {', '.join(ANNEALING)}, got {schedule!r}")
    out = []
    for k in range(num_iter):
        u = k / (num_iter - 1) if num_iter > 1 else 0.0
        w = u if schedule == "linear" else 0.5 - 0.5 * math.cos(math.pi * u)
        out.append(int(math.floor(start + (end - start) * w + 0.5)))
    return out


def respaced(head, steps: int):
    """``head`` sampling with ``steps`` respaced reverse steps: a shallow copy that shares the network and has its
    own scheduler (``head`` itself when it already has ``steps``)."""
    sched = head.scheduler
    if steps == sched.num_timesteps:
        return head
    view = copy.copy(head)
    view.scheduler = type(sched).create(str(steps), sched.num_train_timesteps)
    return view


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_std)²) summed over the last dim."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - 0.5 * LOG_2PI).sum(-1)




def reverse_step(head, x: torch.Tensor, index: torch.Tensor, c: torch.Tensor, cfg: float | torch.Tensor = 1.0,
                 guided: bool | None = None, clip_x0: float | None = None):
    """(mean, log_variance, pred_xstart) of p(x_{i-1} | x_i) at spaced indices ``index`` [R]."""
    eps, v = head.predict(x, index, c, cfg, guided).split(head.in_channels, dim=1)
    return head.scheduler.p_mean_variance(x, index, eps, v, clip_x0)


@torch.no_grad()
def denoise(head, z: torch.Tensor, temperature: float = 1.0, cfg: float = 1.0, noise: torch.Tensor | None = None,
            step_noise: torch.Tensor | None = None, generator: torch.Generator | None = None, trace: bool = False,
            keep_inputs: bool = False, clip_x0: float | None = None):
    """Ancestral sampling, as MAR's ``DiffLoss.sample``; returns [R, C] (or a :class:`DenoiseTrace`).

    ``noise`` is x_T for the cond rows ([R/2, C] with CFG, duplicated for the uncond half, as in MAR;
    [R, C] without); it is not scaled by temperature. ``step_noise`` is ``[S, R, C]`` in call order
    (entry j is used at spaced index S-1-j; the last one is multiplied by zero). Whatever is not given is
    drawn from ``generator`` in the official order: x_T first, then one draw per step.
    """
    sched = head.scheduler
    rows, C = z.shape[0], head.in_channels
    guided = cfg != 1.0
    if guided and rows % 2:
        raise ValueError("with CFG the condition rows must be [cond; uncond] (an even number)")
    S = sched.num_timesteps
    if step_noise is not None and tuple(step_noise.shape) != (S, rows, C):
        raise ValueError(f"step_noise must be [{S}, {rows}, {C}], got {tuple(step_noise.shape)}")
    dtype = torch.float32 if z.dtype in (torch.bfloat16, torch.float16) else z.dtype  # the chain in full precision
    kw = dict(device=z.device, dtype=dtype, generator=generator)
    if noise is None:
        noise = torch.randn(rows // 2 if guided else rows, C, **kw)
    x = torch.cat([noise, noise]) if guided and noise.shape[0] * 2 == rows else noise
    log_std_sum = torch.zeros(rows, C, device=z.device, dtype=dtype)
    log_prob = torch.zeros(rows, device=z.device, dtype=dtype)
    inputs = [] if keep_inputs else None
    final_log_var = x1 = None
    log_tau = math.log(temperature) if temperature > 0 else float("-inf")
    for j, t in enumerate(sched.timesteps.tolist()):
        i = S - 1 - j
        if keep_inputs:
            inputs.append(x)
        index = torch.full((rows,), i, dtype=torch.long, device=z.device)
        eps = step_noise[j] if step_noise is not None else torch.randn(rows, C, **kw)
        out = sched.step(head.predict(x, index, z, cfg), t, x, variance_noise=eps, temperature=temperature,
                         clip_sample_range=clip_x0)
        if i == 0:
            x1, final_log_var = x, out.log_variance
        else:
            log_std_sum = log_std_sum + 0.5 * out.log_variance
            if trace:
                log_prob = log_prob + (-0.5 * eps.square() - 0.5 * out.log_variance - log_tau - 0.5 * LOG_2PI).sum(-1)
        x = out.prev_sample
    if not trace:
        return x
    return DenoiseTrace(x, x1, final_log_var, log_std_sum, log_prob, torch.stack(inputs) if keep_inputs else None)


@torch.no_grad()
def path_log_prob(head, inputs: torch.Tensor, z: torch.Tensor, temperature: float, cfg: float | torch.Tensor = 1.0,
                  clip_x0: float | None = None):
    """Score a given reverse path under this head in one batched network call (all S steps at once).

    ``inputs`` [S, N, C] are the step inputs x_S .. x_1 of the cond rows (``DenoiseTrace.inputs``);
    ``z`` is [N, D], or [2N, D] = [cond; uncond] for guided rows, with ``cfg`` a float or [N] scales.
    Returns (log_prob [N] of the draws x_{S-1} .. x_1 under the temperature-scaled reverse Gaussians,
    final_mean [N, C] and final_log_variance [N, C] of the last (index 0) step at x_1).
    """
    S, N, C = inputs.shape
    index = torch.arange(S - 1, -1, -1, device=z.device).repeat_interleave(N)  # call order S-1 .. 0
    x = inputs.reshape(S * N, C)
    if z.shape[0] == N:
        mean, log_var, _ = reverse_step(head, x, index, z.repeat(S, 1), guided=False, clip_x0=clip_x0)
    else:
        cond, uncond = z.chunk(2)
        c = torch.cat([cond.repeat(S, 1), uncond.repeat(S, 1)])
        if isinstance(cfg, torch.Tensor):
            cfg = cfg.reshape(1, N, 1).expand(S, N, 1).reshape(S * N, 1).to(x.dtype)
        mean, log_var, _ = reverse_step(head, torch.cat([x, x]), torch.cat([index, index]), c, cfg, guided=True,
                                        clip_x0=clip_x0)
        mean, log_var = mean[: S * N], log_var[: S * N]
    mean, log_var = mean.reshape(S, N, C), log_var.reshape(S, N, C)
    # the draw of step k (input inputs[k]) is inputs[k + 1], for the S-1 stochastic steps
    log_std = 0.5 * log_var[:-1] + math.log(temperature)
    log_prob = gaussian_log_prob(inputs[1:], mean[:-1], log_std).sum(0)
    return log_prob, mean[-1], log_var[-1]
