"""Acceptance rules for speculative verification, vectorised over rows and positions.

A rule sees, for every row ``b`` and draft slot ``j``, the target's final probabilities ``p [B, J, V]``
for that slot, the distribution ``q [B, J, V]`` the draft was truthfully drawn from, the drafts
``d [B, J]`` and uniforms ``u [B, J]``. It returns which drafts pass and the distribution to resample
from at a rejected slot. The sampler commits the accepted prefix (first rejection by cumulative
product) and draws one token from the residual of the first rejected slot -- no host sync, no loop.

``exact`` is standard speculative sampling (Leviathan et al. 2023, Chen et al. 2023): accept with
probability ``min(1, p(d) / q(d))``; on rejection draw from ``norm(max(0, p - q))``. The committed
token is then distributed exactly as ``p``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))`` over the last dim; where it is empty (``p == q``), ``p`` itself."""
    r = (p - q).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 0, r / mass.clamp_min(1e-30), p)


@dataclass
class Verdict:
    """accept: [B, J] bool; tv: [B, J] probability mass the rule moved (0 for exact rules);
    relaxed: [B, J] bool, drafts accepted only because of a relaxation."""

    accept: torch.Tensor
    tv: torch.Tensor | None = None
    relaxed: torch.Tensor | None = None


class ExactAcceptance:
    """Lossless token-level speculative sampling."""

    name = "exact"
    lossless = True

    def prepare(self, model) -> None:  # rules with per-model tables (neighbourhoods) build them here
        return None

    def verify(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, u: torch.Tensor) -> Verdict:
        pd = p.gather(-1, drafts[..., None]).squeeze(-1).double()
        qd = q.gather(-1, drafts[..., None]).squeeze(-1).double()
        # u < min(1, p/q)  <=>  u * q < p   (q(d) > 0 for a draft drawn from q)
        return Verdict(accept=u * qd < pd)

    def residual(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return residual(p, q)


_RULES = {"exact": ExactAcceptance}


def register_rule(name: str, cls) -> None:
    _RULES[name] = cls


def get_rule(rule, **options):
    """An acceptance rule from a name (``"exact"``, ...) or an instance (returned as is)."""
    if not isinstance(rule, str):
        return rule
    if rule not in _RULES:
        raise ValueError(f"unknown acceptance rule {rule!r}; available: {', '.join(sorted(_RULES))}")
    return _RULES[rule](**options)
