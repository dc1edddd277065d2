r"""Continuous speculative decoding (CSpD, Wang et al. 2024, arXiv 2411.11925) for MAR models.

Loop (research/cspd_mar.md §2.2). One order π, one x_S and one per-step noise ε_{S-1..0} per image and
position are drawn up front and shared by both models ("denoising trajectory alignment"). Over the K
steps of MAR's schedule:

* **pre-fill** (k ≤ ratio·K): the target runs plain MAR steps;
* **draft** (k > ratio·K): the draft runs a MAR step on the current tokens, unverified drafts included;
* **verify** (k > ratio·K and k % num_draft == 0, or k = K-1): one target pass conditioned on the
  tokens committed at the previous verification predicts every position drafted since; each drafted
  token is then accepted or replaced independently. There is no rollback, so the pass counts depend
  on (K, ratio, num_draft) only: ⌊ratio·K⌋ + 1 + #verifications target passes, K − ⌊ratio·K⌋ − 1 draft.

**What a window is exact for.** The target's verification distribution of window position i,
p_i(x) = p(x | tokens before the window), does not depend on the other drafts of the window. If each
drafted x_i ~ q_i (q_i may depend on earlier drafts) is accepted with min(1, p_i/q_i) and otherwise
replaced by a draw from (p_i − q_i)⁺ / ∫(p_i − q_i)⁺, then every committed token is p_i-distributed
given everything before it, so the window is committed exactly as the target would generate it in one
MAR step. With an exact per-token test CSpD is therefore *lossless with respect to the target run on
the coarsened schedule* (each window merged into one step); it is never lossless with respect to the
target's own K-step schedule. With ``num_draft=1`` the two schedules coincide, and a draft equal to
the target is accepted everywhere (same context, same noise: the ratio is exactly 1 under every test);
with ``num_draft > 1`` later drafts of a window see unverified drafts that the target's pass does not,
so even an identical draft gets some rejections.

The per-token test needs the density of a diffusion-head sample, which is intractable: the token is a
deterministic function of a 100-step noisy path. Three tests (``test=``):

``"exact"`` (default) — **path-space speculative sampling.** The ancestral sampler's path
  x_S → x_{S-1} → … → x_1 is a Markov chain with Gaussian kernels N(μ_m(x_j, j), τ² σ_m(x_j, j)²)
  for each model m; x_S ~ N(0, I) is shared and cancels, and the token is the final mean
  μ_m(x_1, 0) (MAR's last step adds no noise). On path space both densities are explicit:

      log p(path) − log q(path) = Σ_{j=S-1}^{1} [log N(x_{j-1}; μ_p(x_j), τ²σ_p²) − log N(x_{j-1}; μ_q(x_j), τ²σ_q²)].

  The draft's path (drawn with the shared noise) is accepted with min(1, p/q); its token is then the
  *target's* final mean μ_p(x_1, 0), which is exactly how the target maps a path to a token, so an
  accepted token is distributed as the target's. The target scores all S steps of a drafted path in
  **one** batched MLP call (the inputs are known), instead of S sequential calls. A rejected token is
  redrawn from (p − q)⁺ on path space by rejection sampling with the target itself as the envelope
  (M = 1): propose a fresh target path y (new noise, S target steps), accept it with probability
  1 − q(y)/p(y) (clamped at 0). The expected number of proposals is 1/TV(p, q), and a rejection
  happens with probability TV(p, q), so on average one proposal per drafted token. Exact, including
  the mismatch between models, at any temperature τ > 0.

``"final_step"`` — **the final reverse-step Gaussians given a shared x_1.** Take the draft's x_1 as
  shared; the two last kernels N(μ_q(x_1, 0), τ²σ_q²) and N(μ_p(x_1, 0), τ²σ_p²) are the only place
  the two models differ. The draft token is drawn from its kernel with the shared ε_0 (MAR multiplies
  that draw by 0; here it is used), accepted with min(1, N_p/N_q), otherwise replaced by rejection
  sampling from (N_p − N_q)⁺ with N_p as envelope. Exact for the *hybrid* chain "draft path to x_1,
  target's last step" — not for the target's own path — and cheap: the target's head runs once
  (index 0) instead of S times, and acceptance is high because both kernels see the same x_1.

``"official"`` — **CSpD's code, faithfully, in log space.** Each model's own aligned path gives μ_0,
  σ_0 (with τ) and Σ_{j≥1} log σ_j (without τ); the draft token is μ_0^q and

      log r = −½ Σ_d ((μ_0^q − μ_0^p) / (λ σ_0^p))² + Σ_d log(σ_0^q / σ_0^p) + s · log Φ,
      log Φ = Σ_{j≥1} Σ_d (log σ_j^p − log σ_j^q),

  with λ = ``inner_temperature`` (42) and s = ``phi_sign`` (+1 as coded; the direction looks inverted,
  see the note §2.4). Rejected tokens are redrawn from (N_p − N_q/Φ)⁺ with N_p as envelope, at most
  ``max_tries`` proposals; a row never resolved falls back to the target's aligned sample μ_0^p
  (the official code leaves a zero token). This is a heuristic: only the final step is compared, the
  exponent is tempered by λ, and Φ multiplies S−1 per-dimension ratios. ``stats.cspd`` reports the
  mean and the largest |log Φ|.

All tests compute densities in log space, cap residual proposals at ``max_tries`` and count fallbacks
(``stats.cspd.residual_fallbacks``): a fallback commits a target sample (the last proposal, or μ_0^p
for ``official``) and is the only way an exact test can lose exactness.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..budget import Footprint
from .base import GenerationOutput, SamplingConfig, Stats, StepTimer
from .diffusion_head import ANNEALING, denoise, path_log_prob, reverse_step
from .mar import check_orders, diffusion_heads, mask_from_order, plan_run
from .spec import checked, option
from .stats import CSpDStats, MaskedStats

TESTS = ("exact", "final_step", "official")


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag exp(log_std)²), summed over the last dim."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def residual_resample(propose, n: int, max_tries: int, uniform, fallback: torch.Tensor | None = None,
                      chunk: int = 8):
    """Rejection sampling from (p − q)⁺ with p as envelope (M = 1), vectorised over rows.

    ``propose(rows [m], tries) -> (values [tries, m, C], log_q_over_p [tries, m])`` draws candidates from
    p; candidate y is kept with probability max(0, 1 − q(y)/p(y)). Rows unresolved after ``max_tries``
    proposals each get ``fallback`` (default: their last proposal, a plain draw from p).
    Rounds propose 1, 2, 4, ... up to ``chunk`` candidates per pending row: most rows resolve in the
    first round (expected proposals 1/TV), and a proposal can cost a whole diffusion path.
    Returns (values [n, C], proposals drawn over all rows, number of fallbacks).
    """
    out = last = None
    pending = torch.arange(n)
    per_row = proposals = 0
    size = 1
    while pending.numel() and per_row < max_tries:
        t = min(size, max_tries - per_row)
        size = min(2 * size, chunk)
        values, log_ratio = propose(pending, t)
        if out is None:
            out = values.new_zeros(n, values.shape[-1])
            last = out.clone()
        keep_prob = -torch.expm1(log_ratio.double().clamp(max=0.0))  # 1 - q/p, 0 where q >= p
        ok = (uniform(t, pending.numel()) < keep_prob).cpu()
        hit = ok.any(0)
        first = ok.double().argmax(0)
        out[pending[hit]] = values[first[hit], hit.nonzero().squeeze(-1)]
        last[pending] = values[-1]
        per_row += t
        proposals += t * pending.numel()
        pending = pending[~hit]
    if pending.numel():
        out[pending] = fallback[pending] if fallback is not None else last[pending]
    return out, proposals, int(pending.numel())


def official_log_ratio(mu_q, mu_p, log_sq, log_sp, log_phi, inner_temperature: float = 42.0,
                       phi_sign: float = 1.0) -> torch.Tensor:
    """CSpD's acceptance ratio in log space (the draft token is μ_q, so its own exponent is 0).

    log r = −½ Σ_d ((μ_q − μ_p) / (λ σ_p))² + Σ_d (log σ_q − log σ_p) + s · log Φ.
    """
    gap = (mu_q - mu_p) / (inner_temperature * log_sp.exp())
    return -0.5 * gap.square().sum(-1) + (log_sq - log_sp).sum(-1) + phi_sign * log_phi


def pass_counts(num_iter: int, ratio: float, num_draft: int) -> tuple[int, int]:
    """(target passes, draft passes) of a CSpD run: they do not depend on acceptance (no rollback)."""
    milestone = int(math.floor(ratio * num_iter))
    prefill = min(milestone + 1, num_iter)
    verifies = sum(1 for k in range(milestone + 1, num_iter) if k % num_draft == 0 or k == num_iter - 1)
    return prefill + verifies, num_iter - prefill


@dataclass
class _Drafts:
    """Per-position records of the current window (indexed [B, L, ...] and read with the window mask)."""

    token: torch.Tensor            # the draft's token (what later draft steps saw)
    mean0: torch.Tensor            # draft's final-step mean μ_q(x_1, 0)
    log_var0: torch.Tensor         # draft's final-step log σ² (no temperature)
    log_std_sum: torch.Tensor      # Σ_{j≥1} ½ log σ_j² (official test)
    x1: torch.Tensor               # the draft path's x_1 (final_step test)
    z: torch.Tensor                # the draft's condition rows (cond; uncond stacked on dim 2 with CFG)
    scale: torch.Tensor            # the draft step's CFG scale
    steps: torch.Tensor            # the draft step's diffusion step count S (DiSA varies it)
    path: torch.Tensor | None      # [B, L, S_max, C] step inputs x_S .. x_1, the first S entries (exact test)


@dataclass
class CSpDOptions:
    draft: Any = option(None, "the draft MAR (a pipeline fills in its own)", text=False)
    num_iter: int = option(64, "MAR steps K", minimum=1, bound="seq_len")
    ratio: float = option(0.15, "fraction of the steps pre-filled by the target", minimum=0.0, maximum=1.0)
    num_draft: int = option(8, "draft steps per verification (gamma, in MAR steps)", minimum=1)
    test: str = option("exact", "the acceptance test: exact (path space, lossless on the coarsened schedule), "
                       "final_step, or official (CSpD's heuristic)", choices=("exact", "final_step", "official"))
    inner_temperature: float = option(42.0, "lambda of the official test", minimum=1e-9)
    phi_sign: float = option(1.0, "the sign of log Phi in the official test", choices=(1.0, -1.0))
    max_tries: int = option(100, "residual proposals per rejected token before a plain target sample", minimum=1,
                            maximum=10000)
    clip_x0: float | None = option(None, "clamp each diffusion step's predicted start to [-c, c] (none: MAR's "
                                   "behaviour)", minimum=0.0)
    diffusion_start: int | None = option(None, "DiSA: diffusion steps at the first MAR step, draft and target "
                                         "alike (none: their own count)", minimum=1)
    diffusion_end: int | None = option(None, "DiSA: diffusion steps at the last MAR step", minimum=1)
    annealing: str = option("linear", "DiSA: how the step count goes from start to end", choices=ANNEALING)


class CSpDSampler:
    """Continuous speculative decoding with a draft MAR (``draft=``) for a target MAR (the ``model``).

    num_iter: MAR steps K. ratio: fraction of steps pre-filled by the target. num_draft: draft steps
    per verification (γ, counted in AR steps). test: ``"exact"`` | ``"final_step"`` | ``"official"``.
    inner_temperature / phi_sign: λ and the sign of log Φ of the official test. max_tries: residual
    proposals per rejected token before falling back to a target sample.
    Defaults are the official runner's (K 64, ratio 0.15, γ 8, λ 42); the demo used K 256, ratio 0.05, γ 4.
    """

    name = "cspd"
    MODEL = "continuous"
    COMPANION = "draft"
    OPTIONS = CSpDOptions

    def __init__(self, draft=None, num_iter: int = 64, ratio: float = 0.15, num_draft: int = 8,
                 test: str = "exact", inner_temperature: float = 42.0, phi_sign: float = 1.0,
                 max_tries: int = 100, clip_x0: float | None = None, diffusion_start: int | None = None,
                 diffusion_end: int | None = None, annealing: str = "linear"):
        o = checked(CSpDOptions(None, num_iter, ratio, num_draft, test, inner_temperature, phi_sign, max_tries,
                                clip_x0, diffusion_start, diffusion_end, annealing), "cspd")
        self.clip_x0 = o.clip_x0
        self.diffusion_start, self.diffusion_end, self.annealing = diffusion_start, diffusion_end, annealing
        num_iter, ratio, num_draft, inner_temperature, phi_sign = o.num_iter, o.ratio, o.num_draft, o.inner_temperature, o.phi_sign
        self.draft, self.num_iter, self.ratio, self.num_draft = draft, num_iter, ratio, num_draft
        self.test, self.inner_temperature, self.phi_sign, self.max_tries = test, inner_temperature, phi_sign, max_tries

    # -- checks -----------------------------------------------------------------------------------
    def check(self, model) -> None:
        if self.num_iter > model.seq_len:
            raise ValueError(f"cspd: num_iter={self.num_iter} exceeds the model's seq_len ({model.seq_len})")
        self._check_pair(self.draft, model)

    def _check_pair(self, draft, target) -> None:
        if draft is None:
            raise ValueError("CSpDSampler needs a draft model: get_sampler('cspd', draft=<MAR>)")
        if (draft.seq_len, draft.token_embed_dim) != (target.seq_len, target.token_embed_dim):
            raise ValueError(f"draft and target token layouts differ: draft {draft.seq_len} tokens x "
                             f"{draft.token_embed_dim} dims, target {target.seq_len} x {target.token_embed_dim}")
        if draft.diffloss.num_sampling_steps != target.diffloss.num_sampling_steps:
            raise ValueError("draft and target must use the same number of diffusion sampling steps to share "
                             f"noise ({draft.diffloss.num_sampling_steps} vs {target.diffloss.num_sampling_steps})")

    # -- one diffusion-head run with the shared noise -----------------------------------------------
    def _denoise(self, head, z_rows: torch.Tensor, x_T: torch.Tensor, eps: torch.Tensor, temperature: float,
                 scale: float, guided: bool, keep_inputs: bool = False):
        """Run a diffusion head on n positions with their bank noise (its first S steps); returns the cond half of
        the trace."""
        step_noise = eps[:, : head.num_sampling_steps].transpose(0, 1)  # [S, n, C]
        if guided:
            step_noise = torch.cat([step_noise, step_noise], dim=1)
        tr = denoise(head, z_rows, temperature, scale if guided else 1.0, noise=x_T, step_noise=step_noise,
                     trace=True, keep_inputs=keep_inputs, clip_x0=self.clip_x0)
        n = x_T.shape[0]
        tr.sample, tr.x1, tr.final_log_variance, tr.log_std_sum = (
            tr.sample[:n], tr.x1[:n], tr.final_log_variance[:n], tr.log_std_sum[:n])
        tr.log_prob = tr.log_prob[:n]
        if tr.inputs is not None:
            tr.inputs = tr.inputs[:, :n]
        return tr

    @staticmethod
    def _rows(z: torch.Tensor, where: torch.Tensor, guided: bool) -> torch.Tensor:
        """Condition rows of the positions ``where`` ([cond; uncond] with CFG)."""
        return z[torch.cat([where, where])] if guided else z[where]

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def footprint(self, model, cond, config: SamplingConfig | None = None) -> Footprint:
        """What one image needs (:mod:`vargen.budget`): the target's and the draft's rows (two each with CFG)."""
        self._check_pair(self.draft, model)
        rows = 2 if plan_run(model, cond, config, self.num_iter).guided else 1
        return Footprint().add("the target's passes and diffusion head", rows * model.memory_per_row(model.seq_len)).add(
            "the draft's passes and diffusion head", rows * self.draft.memory_per_row(model.seq_len))

    def sample(self, model, cond, config: SamplingConfig | None = None, generator: torch.Generator | None = None,
               *, orders: torch.Tensor | None = None) -> GenerationOutput:
        """``model`` is the target MAR, ``cond`` class labels [B] (or an int batch for unconditional).

        Returns tokens ``[B, L, C]`` in position order (MAR's scaled latent space).
        """
        draft, target = self.draft, model
        self._check_pair(draft, target)
        plan = plan_run(target, cond, config, self.num_iter)
        if plan.labels is not None:
            draft.check_labels(plan.labels)
        tau = plan.config.temperature
        if tau <= 0:
            raise ValueError("CSpD compares densities and needs temperature > 0")
        B, L, C = plan.batch, target.seq_len, target.token_embed_dim
        K = self.num_iter
        heads_t, heads_d = (diffusion_heads(m.diffloss, K, self.diffusion_start, self.diffusion_end, self.annealing)
                            for m in (target, draft))
        S = max(h.num_sampling_steps for h in heads_t)  # the noise bank's depth
        by_steps = {h.num_sampling_steps: (hd, h) for hd, h in zip(heads_d, heads_t)}  # DiSA's heads per step count

        def counts_in_window(drafts, window):  # one count without DiSA: no host read of the window's counts
            return list(by_steps) if len(by_steps) == 1 else sorted(set(drafts.steps[window].tolist()), reverse=True)

        device = target.device
        gdev = generator.device if generator is not None else device
        guided = plan.guided

        def randn(*shape):
            return torch.randn(*shape, generator=generator, device=gdev).to(device)

        def uniform(*shape):
            return torch.rand(*shape, generator=generator, device=gdev, dtype=torch.float64).to(device)

        if orders is None:
            orders = target.sample_orders(B, generator, device)
        orders = check_orders(orders.to(device), B, L)
        bank_xT, bank_eps = randn(B, L, C), randn(B, L, S, C)  # shared noise per image and position

        milestone = int(math.floor(self.ratio * K))
        stats = Stats(token_step=torch.full((B, L), -1, dtype=torch.long, device=device))
        counts = dict(drafted=0, accepted_drafts=0, residual_proposals=0, residual_fallbacks=0, verify_passes=0)
        accepted_per_row = torch.zeros(B, dtype=torch.long, device=device)
        drafted_per_row = torch.zeros(B, dtype=torch.long, device=device)
        log_phis: list[torch.Tensor] = []
        tokens = torch.zeros(B, L, C, device=device)
        mask = torch.ones(B, L, dtype=torch.bool, device=device)
        verified = mask.clone()  # the target's context: mask at the last commit
        drafts: _Drafts | None = None

        with StepTimer(device) as timer:
            for step in range(K):
                scale = plan.scales[step]
                mask_next = mask_from_order(orders, plan.masked_after[step])
                to_pred = mask & ~mask_next
                if step <= milestone:  # target pre-fill: a plain MAR step with the shared noise
                    z = target.condition(tokens, mask, plan.labels, cfg=guided)
                    tr = self._denoise(heads_t[step], self._rows(z, to_pred, guided), bank_xT[to_pred],
                                       bank_eps[to_pred], tau, scale, guided)
                    tokens[to_pred] = tr.sample
                    self._commit(stats, to_pred)
                    verified, mask = mask_next, mask_next
                    continue

                # draft step
                z = draft.condition(tokens, mask, plan.labels, cfg=guided)
                stats.draft_forward_passes += 1
                z_rows = self._rows(z, to_pred, guided)
                tr = self._denoise(heads_d[step], z_rows, bank_xT[to_pred], bank_eps[to_pred], tau, scale, guided,
                                   keep_inputs=self.test == "exact")
                if drafts is None:
                    drafts = self._new_drafts(B, L, C, S, z.shape[-1], guided, device, z.dtype)
                token = tr.sample
                if self.test == "final_step":  # draw the last kernel for real, with the shared ε_0
                    token = tr.sample + torch.exp(0.5 * tr.final_log_variance) * bank_eps[to_pred][:, -1] * tau
                tokens[to_pred] = token
                drafts.token[to_pred], drafts.mean0[to_pred] = token, tr.sample
                drafts.log_var0[to_pred], drafts.log_std_sum[to_pred] = tr.final_log_variance, tr.log_std_sum
                drafts.x1[to_pred], drafts.scale[to_pred] = tr.x1, scale
                drafts.z[to_pred] = torch.stack(z_rows.chunk(2), dim=1) if guided else z_rows[:, None]
                drafts.steps[to_pred] = heads_d[step].num_sampling_steps
                if drafts.path is not None:
                    drafts.path[to_pred, : heads_d[step].num_sampling_steps] = tr.inputs.transpose(0, 1)
                mask = mask_next
                if not (step % self.num_draft == 0 or step == K - 1):
                    continue

                # verify the window with one target pass that sees only committed tokens (under DiSA, token
                # groups of one diffusion step count each, with that count's heads)
                window = verified & ~mask
                z_p = target.condition(tokens, verified, plan.labels, cfg=guided)
                counts["verify_passes"] += 1
                n_acc = torch.zeros(B, L, dtype=torch.long, device=device)
                for n_steps in counts_in_window(drafts, window):
                    group = window if len(by_steps) == 1 else window & (drafts.steps == n_steps)
                    committed, accepted, stat = self._verify(*by_steps[n_steps], drafts, group, z_p, bank_xT,
                                                             bank_eps, tau, scale, guided, uniform, randn)
                    tokens[group] = committed
                    n_acc[group] = accepted.long()
                    counts["accepted_drafts"] += int(accepted.sum())
                    counts["residual_proposals"] += stat["tries"]
                    counts["residual_fallbacks"] += stat["fallbacks"]
                    if "log_phi" in stat:
                        log_phis.append(stat["log_phi"])
                accepted_per_row += n_acc.sum(-1)
                drafted_per_row += window.sum(-1)
                counts["drafted"] += int(window.sum())
                self._commit(stats, window)
                verified = mask

        stats.tokens = torch.full((B,), L, dtype=torch.long)
        stats.seconds, stats.peak_memory_bytes = timer.seconds, timer.peak
        steps = [h.num_sampling_steps for h in heads_t]
        stats.mar = MaskedStats(num_iter=K, diffusion_steps=steps[0] if len(set(steps)) == 1 else steps)
        stats.cspd = CSpDStats(
            test=self.test, ratio=self.ratio, num_draft=self.num_draft,
            target_passes=stats.forward_passes, draft_passes=stats.draft_forward_passes,
            prefill_passes=min(milestone + 1, K), **counts,
            acceptance_rate_per_row=[a / d if d else None  # a row with nothing drafted has no rate (not 0)
                                     for a, d in zip(accepted_per_row.tolist(), drafted_per_row.tolist())],
        )
        if log_phis:
            phi = torch.cat(log_phis)
            stats.cspd.log_phi_mean, stats.cspd.log_phi_abs_max = float(phi.mean()), float(phi.abs().max())
        return GenerationOutput(tokens=tokens, stats=stats, latents=tokens)

    @staticmethod
    def _commit(stats: Stats, where: torch.Tensor) -> None:
        stats.token_step[where] = stats.forward_passes
        stats.accepted.append(where.sum(-1))
        stats.forward_passes += 1

    def _new_drafts(self, B, L, C, S, D, guided, device, z_dtype=torch.float32) -> _Drafts:
        zeros = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
        return _Drafts(zeros(B, L, C), zeros(B, L, C), zeros(B, L, C), zeros(B, L, C), zeros(B, L, C),
                       zeros(B, L, 2 if guided else 1, D).to(z_dtype), zeros(B, L),
                       torch.zeros(B, L, dtype=torch.long, device=device),
                       zeros(B, L, S, C) if self.test == "exact" else None)

    # -- the tests ----------------------------------------------------------------------------------
    def _verify(self, draft_head, target_head, d: _Drafts, window, z_p, bank_xT, bank_eps, tau, scale, guided,
                uniform, randn):
        """Accept or replace every window token (all drafted with the heads' diffusion step count). Returns
        (committed [n, C], accepted [n] bool, counters)."""
        zp_rows = self._rows(z_p, window, guided)
        n = int(window.sum())
        log_tau = math.log(tau)
        if self.test == "official":
            tr = self._denoise(target_head, zp_rows, bank_xT[window], bank_eps[window], tau, scale, guided)
            mu_q, mu_p = d.mean0[window], tr.sample
            log_sq = 0.5 * d.log_var0[window] + log_tau  # log σ_0 with τ applied
            log_sp = 0.5 * tr.final_log_variance + log_tau
            log_phi = (tr.log_std_sum - d.log_std_sum[window]).sum(-1)
            log_r = official_log_ratio(mu_q, mu_p, log_sq, log_sp, log_phi, self.inner_temperature, self.phi_sign)
            draft_tokens, fallback, extra = d.token[window], mu_p, {"log_phi": log_phi}

            def propose(rows, t):
                y = mu_p[rows] + log_sp[rows].exp() * randn(t, rows.numel(), mu_p.shape[-1])
                lq = gaussian_log_density(y, mu_q[rows], log_sq[rows])
                lp = gaussian_log_density(y, mu_p[rows], log_sp[rows])
                return y, lq - lp - self.phi_sign * log_phi[rows]

        elif self.test == "final_step":
            x1 = d.x1[window]
            idx0 = torch.zeros(2 * n if guided else n, dtype=torch.long, device=x1.device)
            mu_p, lv_p, _ = reverse_step(target_head, torch.cat([x1, x1]) if guided else x1, idx0, zp_rows,
                                         scale, guided=guided, clip_x0=self.clip_x0)
            mu_p, log_sp = mu_p[:n], 0.5 * lv_p[:n] + log_tau
            mu_q, log_sq = d.mean0[window], 0.5 * d.log_var0[window] + log_tau
            draft_tokens = d.token[window]
            log_r = gaussian_log_density(draft_tokens, mu_p, log_sp) - gaussian_log_density(draft_tokens, mu_q, log_sq)
            fallback, extra = None, {}

            def propose(rows, t):
                y = mu_p[rows] + log_sp[rows].exp() * randn(t, rows.numel(), mu_p.shape[-1])
                return y, gaussian_log_density(y, mu_q[rows], log_sq[rows]) - gaussian_log_density(
                    y, mu_p[rows], log_sp[rows])

        else:  # exact, on path space
            path = d.path[window][:, : target_head.num_sampling_steps].transpose(0, 1)  # [S, n, C]
            zq = d.z[window]  # [n, 1 or 2, D]
            zq_rows = torch.cat([zq[:, 0], zq[:, 1]]) if guided else zq[:, 0]
            sq = d.scale[window]
            lp, mu_p, _ = path_log_prob(target_head, path, zp_rows, tau, scale, clip_x0=self.clip_x0)
            lq, _, _ = path_log_prob(draft_head, path, zq_rows, tau, sq, clip_x0=self.clip_x0)
            log_r = lp - lq
            draft_tokens, extra = mu_p, {}  # an accepted path's token is the target's final mean at its x_1

            def propose(rows, t):
                m = rows.numel()
                zp = self._rows_of(zp_rows, rows, guided, n, t)
                tr = denoise(target_head, zp, tau, scale if guided else 1.0, generator=None,
                             noise=randn(t * m, mu_p.shape[-1]),
                             step_noise=self._step_noise(randn, t * m, mu_p.shape[-1], target_head.num_sampling_steps,
                                                         guided),
                             trace=True, keep_inputs=True, clip_x0=self.clip_x0)
                k = t * m
                lq_y, _, _ = path_log_prob(draft_head, tr.inputs[:, :k], self._rows_of(zq_rows, rows, guided, n, t),
                                           tau, sq[rows].repeat(t), clip_x0=self.clip_x0)
                return tr.sample[:k].reshape(t, m, -1), (lq_y - tr.log_prob[:k]).reshape(t, m)

            fallback = None

        accept = uniform(n).log() < log_r.double()
        committed = draft_tokens.clone()
        rejected = (~accept).nonzero().squeeze(-1).cpu()
        tries = fallbacks = 0
        if rejected.numel():
            values, tries, fallbacks = residual_resample(
                lambda rows, t: propose(rejected[rows], t), rejected.numel(), self.max_tries, uniform,
                fallback=None if fallback is None else fallback[rejected])
            committed[rejected] = values
        return committed, accept, dict(tries=tries, fallbacks=fallbacks, **extra)

    @staticmethod
    def _rows_of(z_rows: torch.Tensor, rows: torch.Tensor, guided: bool, n: int, t: int) -> torch.Tensor:
        """Condition rows of window tokens ``rows``, repeated ``t`` times ([cond; uncond] with CFG)."""
        if not guided:
            return z_rows[rows].repeat(t, 1)
        return torch.cat([z_rows[:n][rows].repeat(t, 1), z_rows[n:][rows].repeat(t, 1)])

    @staticmethod
    def _step_noise(randn, rows: int, C: int, S: int, guided: bool) -> torch.Tensor:
        eps = randn(S, rows, C)
        return torch.cat([eps, eps], dim=1) if guided else eps

