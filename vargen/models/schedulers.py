"""Diffusion schedulers with diffusers' interface (``set_timesteps`` / ``timesteps`` / ``step`` / ``add_noise``).

:class:`IDDPMScheduler` is the Gaussian diffusion of improved DDPM (Nichol & Dhariwal 2021) as MAR uses it
for its diffusion head: the cosine schedule, respacing by IDDPM's ``space_timesteps`` (its ``"50"`` for
sampling), and the learned-range variance ``log s^2 = f log beta_t + (1 - f) log beta~_t`` (IDDPM eq. 15).

Why not diffusers' own ``DDPMScheduler`` (``beta_schedule="squaredcos_cap_v2"``, ``variance_type=
"learned_range"``, ``timestep_spacing="linspace"``, ``clip_sample=False``; diffusers 0.42)? Its timesteps
and respaced betas agree with IDDPM's, but four differences keep it from reproducing MAR's outputs
(``../shared/fixtures/mar``), measured in tests/test_mar.py::test_diffusers_ddpm_scheduler_differs:

1. ``step`` draws its noise internally and only for ``t > 0``, while MAR draws one normal per step (the last
   multiplied by zero) from the caller's generator: a seeded run consumes a different random stream, and
   there is no way to pass caller noise -- which continuous speculative decoding needs (the draft and the
   target must share every draw);
2. there is no sampling temperature (MAR scales the noise by tau);
3. its constants are float32 throughout, IDDPM's are float64 cast to float32 at use;
4. the last step's log-variance is ``log(1e-20)`` (a clamp) where IDDPM copies step 1's; the sample is the
   same (no noise is added there) but the reverse Gaussian CSpD verifies with is not.

So vargen keeps this scheduler, with diffusers' method names and an extra ``variance_noise`` / temperature /
clip argument on ``step``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["IDDPMScheduler", "SchedulerOutput", "cosine_betas", "space_timesteps"]


def cosine_betas(num_steps: int = 1000, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule, alpha_bar(t) = cos²((t + 0.008) / 1.008 · π/2)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
                         for i in range(num_steps)], dtype=torch.float64, device="cpu")


def space_timesteps(num_timesteps: int, section_counts: str | int | list[int]) -> list[int]:
    """IDDPM respacing: split [0, T) into sections and take evenly strided steps from each (round-half-even)."""
    if isinstance(section_counts, str):
        section_counts = [num_timesteps] if section_counts == "" else [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} timesteps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(k * stride) for k in range(count)] if count > 1 else [start]
        start += size
    return sorted(set(steps))


@dataclass
class SchedulerOutput:
    """``prev_sample`` = mean + exp(½ log_variance) · noise · temperature (just the mean at the last step)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor
    mean: torch.Tensor
    log_variance: torch.Tensor


class IDDPMScheduler:
    """IDDPM's (possibly respaced) Gaussian diffusion. Constants are float64, indexed by the *spaced* index
    ``i`` (``timesteps`` holds the original 0..T-1 timesteps the network sees, largest first, as diffusers
    orders them; ``timestep_map[i]`` is the timestep of index ``i``)."""

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2"):
        if beta_schedule != "squaredcos_cap_v2":
            raise ValueError(f"only the cosine schedule (squaredcos_cap_v2) is implemented, got {beta_schedule!r}")
        self.num_train_timesteps = num_train_timesteps
        self.base_betas = cosine_betas(num_train_timesteps)
        self.set_timesteps("")

    @classmethod
    def create(cls, respacing: str | int = "", steps: int = 1000) -> "IDDPMScheduler":
        s = cls(steps)
        s.set_timesteps(respacing)
        return s

    def set_timesteps(self, num_inference_steps: int | str) -> None:
        """Respace to ``num_inference_steps`` (an int, or IDDPM's section string such as ``"50"``; ``""``: all)."""
        use = space_timesteps(self.num_train_timesteps, str(num_inference_steps) if isinstance(num_inference_steps, int)
                              else num_inference_steps)
        base_ac = torch.cumprod(1.0 - self.base_betas, dim=0)
        betas, last = [], 1.0
        for t in use:  # respaced betas keep alpha_bar at the kept steps
            betas.append(1.0 - base_ac[t].item() / last)
            last = base_ac[t].item()
        b = torch.tensor(betas, dtype=torch.float64, device="cpu")
        self.timestep_map = torch.tensor(use, dtype=torch.long, device="cpu")
        self.timesteps = self.timestep_map.flip(0)
        self.num_timesteps = self.num_inference_steps = len(b)
        self.betas = b
        self.alphas_cumprod = torch.cumprod(1.0 - b, dim=0)
        self.alphas_cumprod_prev = torch.cat([b.new_ones(1), self.alphas_cumprod[:-1]])
        ac, ac_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / ac).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1).sqrt()
        self.posterior_variance = b * (1.0 - ac_prev) / (1.0 - ac)
        # the posterior variance is 0 at step 0: its log is copied from step 1 (IDDPM)
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = torch.cat([pv[1:2], pv[1:]]).log() if len(pv) > 1 else pv.log()
        self.posterior_mean_coef1 = b * ac_prev.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * (1.0 - b).sqrt() / (1.0 - ac)
        self.log_betas = b.log()
        self._index_of = {int(t): i for i, t in enumerate(use)}
        self._f32: dict[tuple[str, torch.device], torch.Tensor] = {}

    # -- float32 constants per index (the official ``_extract_into_tensor``) ------------------------------
    def const(self, name: str, index: torch.Tensor) -> torch.Tensor:
        key = (name, index.device)
        if key not in self._f32:
            self._f32[key] = getattr(self, name).float().to(index.device)
        return self._f32[key][index].unsqueeze(-1)

    def index_of(self, timestep) -> torch.Tensor | int:
        """Spaced index of original timestep(s)."""
        if torch.is_tensor(timestep):
            lookup = torch.full((self.num_train_timesteps,), -1, dtype=torch.long)
            lookup[self.timestep_map] = torch.arange(self.num_timesteps)
            return lookup.to(timestep.device)[timestep]
        return self._index_of[int(timestep)]

    # -- the diffusion -----------------------------------------------------------------------------------
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) at spaced indices (the training forward process)."""
        return (self.const("sqrt_alphas_cumprod", index) * original_samples
                + self.const("sqrt_one_minus_alphas_cumprod", index) * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor):
        mean = self.const("posterior_mean_coef1", index) * x0 + self.const("posterior_mean_coef2", index) * x_t
        return mean, self.const("posterior_log_variance_clipped", index)

    def p_mean_variance(self, x: torch.Tensor, index: torch.Tensor, eps: torch.Tensor, v: torch.Tensor,
                        clip_sample_range: float | None = None):
        """Reverse step p(x_{i-1} | x_i) from the network's eps and variance value v in [-1, 1]:
        (mean, log_variance, pred_original_sample). ``clip_sample_range=c`` clamps the predicted start to
        [-c, c] (IDDPM's ``clip_denoised`` with a range; MAR uses none)."""
        frac = (v + 1) / 2
        log_var = frac * self.const("log_betas", index) + (1 - frac) * self.const("posterior_log_variance_clipped", index)
        pred_x0 = self.const("sqrt_recip_alphas_cumprod", index) * x - self.const("sqrt_recipm1_alphas_cumprod", index) * eps
        if clip_sample_range is not None:
            pred_x0 = pred_x0.clamp(-clip_sample_range, clip_sample_range)
        mean, _ = self.q_posterior(pred_x0, x, index)
        return mean, log_var, pred_x0

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, variance_noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None, temperature: float = 1.0,
             clip_sample_range: float | None = None) -> SchedulerOutput:
        """One ancestral step from ``sample`` at original ``timestep`` (an int, or one per row) given the
        network's ``model_output = [eps | v]``. ``variance_noise`` is the caller's standard normal draw
        (drawn from ``generator`` when absent); no noise is added at the last step."""
        C = sample.shape[-1]
        eps, v = model_output[..., :C], model_output[..., C:]
        index = self.index_of(timestep)
        index = index if torch.is_tensor(index) else torch.full((sample.shape[0],), index, dtype=torch.long,
                                                                  device=sample.device)
        mean, log_var, pred_x0 = self.p_mean_variance(sample, index, eps, v, clip_sample_range)
        if variance_noise is None:
            variance_noise = torch.randn(sample.shape, device=sample.device, dtype=sample.dtype, generator=generator)
        keep = (index > 0).to(sample.dtype).unsqueeze(-1)
        prev = mean + keep * torch.exp(0.5 * log_var) * variance_noise * temperature
        return SchedulerOutput(prev, pred_x0, mean, log_var)
