"""Samplers: each is a composition (proposer x acceptance rule) run by one loop.

``get_sampler(name, **options)`` returns a configured instance; every option is a keyword, declared with
its type, range and help (``sampler_options(name)``; :mod:`vargen.samplers.spec`), and an option the
sampler does not take is a ``ValueError`` that lists the ones it does.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib

from .base import GenerationOutput, SamplingConfig, Stats
from .spec import Option, SamplerSpec

# name -> ("module:Class", preset options). Modules are imported on first use.
_REGISTRY: dict[str, tuple[str, dict]] = {
    "ar": ("vargen.samplers.loop:ARSampler", {}),
    "sjd": ("vargen.samplers.proposers.jacobi:JacobiSampler", {}),
    # SJD-PAC (arXiv 2603.18599): proactive drafting (K=4 x D=3) + adaptive continuation (the coupled update)
    "sjd-pac": ("vargen.samplers.proposers.jacobi:JacobiSampler", {"coupled": True, "tree_width": 4, "tree_depth": 3}),
    "gsd": ("vargen.samplers.proposers.jacobi:JacobiSampler", {"acceptance": "gsd"}),
    "sd": ("vargen.samplers.proposers.draft:SpeculativeSampler", {}),
    "lantern": ("vargen.samplers.proposers.draft:SpeculativeSampler", {"acceptance": "lantern"}),
    # LANTERN++ (arXiv 2502.06352): a static tree from the draft head, LANTERN with the multiplicative bound
    "lantern++": ("vargen.samplers.proposers.draft:SpeculativeSampler",
                  {"acceptance": "lantern", "tree_width": 4, "tree_depth": 3, "lam": 5.0, "k": 10}),
    "zipar": ("vargen.samplers.zipar:ZipARSampler", {}),
    "diagd": ("vargen.samplers.diagd:DiagDSampler", {}),
    "pjd": ("vargen.samplers.pjd:PJDSampler", {}),
    "var": ("vargen.samplers.next_scale:VARSampler", {}),
    "code": ("vargen.samplers.code:CoDeSampler", {}),
    "mar": ("vargen.samplers.mar:MARSampler", {}),
    "cspd": ("vargen.samplers.cspd:CSpDSampler", {}),
}


# name -> one line for listings (`vargen samplers`, the app): what it is, lossless or not
_SUMMARIES: dict[str, str] = {
    "ar": "one token per forward pass: the token models' baseline",
    "sjd": "speculative Jacobi decoding: the last iteration's guesses are the drafts (lossless)",
    "sjd-pac": "SJD with proactive draft trees and the coupled update (lossless)",
    "gsd": "SJD with grouped acceptance of similar tokens (lossy, TV-bounded)",
    "sd": "speculative decoding with a draft head or a smaller model (lossless)",
    "lantern": "draft-head speculative decoding with relaxed acceptance over latent neighbours (lossy)",
    "lantern++": "LANTERN over static draft trees (lossy)",
    "zipar": "ZipAR: each row starts a window of tokens after the one above (lossy)",
    "diagd": "diagonal decoding: rows and video frames start along diagonals (lossy)",
    "pjd": "parallel Jacobi decoding: a verified Jacobi window per active row (lossy below the top row)",
    "var": "next-scale prediction, one forward per scale: VAR's baseline",
    "code": "CoDe: a large drafter for the first scales, a small refiner for the rest",
    "mar": "masked autoregressive steps with a diffusion head: MAR's baseline",
    "cspd": "continuous speculative decoding with a draft MAR",
}


def sampler_summary(name: str) -> str | None:
    """The one-line description of ``name`` (None for a sampler registered without one)."""
    return _SUMMARIES.get(name)


def register_sampler(name: str, target: str, summary: str | None = None, **preset) -> None:
    """Register ``name`` -> ``"module:Class"`` with preset keyword options (and a one-line summary for listings)."""
    _REGISTRY[name] = (target, preset)
    if summary:
        _SUMMARIES[name] = summary


def available_samplers() -> list[str]:
    return sorted(_REGISTRY)


def registered_samplers() -> list[str]:
    """Sampler names in registration order (vargen's own first)."""
    return list(_REGISTRY)


def unknown_sampler_error(name: str) -> ValueError:
    """``unknown sampler 'SJD'; did you mean 'sjd'? available: ...``"""
    text = str(name).lower()
    close = [text] if text in _REGISTRY else difflib.get_close_matches(text, available_samplers(), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    return ValueError(f"unknown sampler {name!r}; {hint}available: {', '.join(available_samplers())}")


def sampler_class(name: str):
    if name not in _REGISTRY:
        raise unknown_sampler_error(name)
    module_name, cls_name = _REGISTRY[name][0].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def sampler_options(name: str, acceptance=None) -> dict[str, Option]:
    """The options ``name`` takes, by name: its own, and -- for token samplers -- ``acceptance`` and the
    options of that rule (``acceptance`` given, or ``exact``; ``lantern`` and ``gsd`` fix their rule)."""
    from .acceptance import available_rules, rule_class
    from .spec import options_of

    cls = sampler_class(name)
    preset = _REGISTRY[name][1]
    out = dict(options_of(cls.OPTIONS, name)) if getattr(cls, "OPTIONS", None) else {}
    if getattr(cls, "CACHE_OPTIONS", None):
        out.update(options_of(cls.CACHE_OPTIONS, name))
    if getattr(cls, "TAKES_RULE", False):
        # a preset rule (lantern, gsd) is part of the sampler's name, not an option of it
        rule = preset.get("acceptance") or (acceptance if acceptance is not None else "exact")
        if "acceptance" not in preset:
            out["acceptance"] = Option("acceptance", "str", "exact", "the acceptance rule: exact is lossless; the "
                                       "others relax it", choices=tuple(available_rules()), owner=name)
        if isinstance(rule, str):
            rule_cls = rule_class(rule)
            if rule_cls.OPTIONS:
                out.update(options_of(rule_cls.OPTIONS, f"{name} (acceptance={rule})"))
    for key, value in preset.items():  # a preset (sjd-pac, lantern++) is the default of its own options
        if key in out:
            out[key] = dataclasses.replace(out[key], default=value)
    return out


def checked_options(name: str, options: dict) -> dict:
    """``options`` of sampler ``name`` converted to their declared types, or a ``ValueError`` naming an option the
    sampler does not take or a value outside its type or range (``pipeline.json``'s ``sampler_options`` too)."""
    declared = sampler_options(name, options.get("acceptance"))
    from .spec import unknown_option_message

    out = dict(options)
    for key, value in options.items():
        if key not in declared:
            raise ValueError(unknown_option_message(name, key, declared))
        if declared[key].kind != "object" and not (key == "acceptance" and not isinstance(value, str)):
            out[key] = declared[key].convert(value, name)
    return out


def get_sampler(name: str, **options):
    """A configured sampler by name, e.g. ``get_sampler("sjd", window=16, init="vertical")``; options are
    checked against the declared ones (type, range) before anything is built."""
    cls = sampler_class(name)
    return cls(**{**_REGISTRY[name][1], **checked_options(name, options)})


__all__ = ["get_sampler", "register_sampler", "available_samplers", "sampler_options", "sampler_class",
           "SamplingConfig", "Stats", "GenerationOutput", "SamplerSpec", "Option"]
