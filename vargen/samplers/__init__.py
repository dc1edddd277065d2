"""Samplers: each is a composition (proposer x acceptance rule) run by one loop.

``get_sampler(name, **options)`` returns a configured instance; every option is a keyword.
"""
from __future__ import annotations

import importlib

from .base import GenerationOutput, SamplingConfig, Stats

# name -> ("module:Class", preset options). Modules are imported on first use.
_REGISTRY: dict[str, tuple[str, dict]] = {
    "ar": ("vargen.samplers.loop:ARSampler", {}),
    "sjd": ("vargen.samplers.proposers.jacobi:JacobiSampler", {}),
    "sd": ("vargen.samplers.proposers.draft:SpeculativeSampler", {}),
    "lantern": ("vargen.samplers.proposers.draft:SpeculativeSampler", {"acceptance": "lantern"}),
    "gsd": ("vargen.samplers.proposers.jacobi:JacobiSampler", {"acceptance": "gsd"}),
    "var": ("vargen.samplers.next_scale:VARSampler", {}),
    "code": ("vargen.samplers.code:CoDeSampler", {}),
    "mar": ("vargen.samplers.mar:MARSampler", {}),
    "cspd": ("vargen.samplers.cspd:CSpDSampler", {}),
}


def register_sampler(name: str, target: str, **preset) -> None:
    """Register ``name`` -> ``"module:Class"`` with preset keyword options."""
    _REGISTRY[name] = (target, preset)


def available_samplers() -> list[str]:
    return sorted(_REGISTRY)


def get_sampler(name: str, **options):
    """A configured sampler by name, e.g. ``get_sampler("sjd", window=16, init="vertical")``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(available_samplers())}")
    target, preset = _REGISTRY[name]
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**{**preset, **options})


__all__ = ["get_sampler", "register_sampler", "available_samplers", "SamplingConfig", "Stats", "GenerationOutput"]
