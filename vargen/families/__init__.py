"""Model families: what one :class:`~vargen.pipeline.Pipeline` needs to know about each kind of model.

A family module (``vargen/families/<kind>.py``) owns its loading (``pipeline.json`` folders and official names),
decoding (images or video), conditions and defaults, and registers a :class:`FamilySpec`. ``Pipeline`` is generic,
and the CLI and the app ask the pipeline (and through it the family), never branch on the kind.

Which samplers apply to a family follows from what each sampler declares: the model protocol it samples (``MODEL``:
``"token"`` for :class:`~vargen.models.base.TokenModel`, ``"scale"``, ``"continuous"``); no family keeps a list of
samplers. A sampler that takes a companion declares its option (``COMPANION``: ``"draft"``, ``"refiner"``), which a
pipeline fills from its companion of that name (or the caller gives).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .classes import class_conditions

__all__ = ["FamilySpec", "FAMILIES", "register_family", "family", "applicable_samplers", "families_taking"]


@dataclass(frozen=True)
class FamilySpec:
    """What a model family needs from the one Pipeline class.

    build(spec, resolve, dtype) -> (model, tokenizer, companions): ``companions`` maps a name to a module or to a
    zero-argument loader called on first use. decode_row(pipeline, tokens, latents) -> image tensor [B, 3, H, W] in
    [-1, 1] (or a clip [1, 3, F, H, W] for ``video``), one row at a time (an image never depends on its batch).
    protocol: the model protocol (``"token"``, ``"scale"``, ``"continuous"``); samplers declaring it apply.
    members: ``model=NAME`` -> companion name ("main" is the model itself).
    """

    kind: str
    build: Callable
    decode_row: Callable
    protocol: str
    default_sampler: str  # a sampler spec: the best lossless sampler of the family on its demo
    baseline: str
    config_fields: tuple[str, ...]
    members: dict = field(default_factory=dict)
    row_independent_seeds: bool = True  # False: samplers draw from one generator; per-row seeds run row by row
    codebook_rules: bool = False  # fill LANTERN / GSD's codebook from the tokenizer
    conditions: Callable = class_conditions  # (pipeline, cond) -> the model's condition (default: class ids / names)
    takes_prompts: bool = False  # conditions are prompts (text or prompt token ids)
    own_tokenizer: bool = False  # the model checkpoint holds its image tokenizer (pipeline.json names no tokenizer)
    video: bool = False  # decode_row returns a clip of the context and the generated frames
    decode: Callable | None = None  # (pipeline, output) -> images, instead of decode_row per row (video: strips)
    context: Callable | None = None  # condition -> the tokens before the generated ones, kept on the output (video)
    scene_sources: tuple[str, ...] = ()  # procedural condition sources a pipeline.json may name ("scenes")
    model_options: bool = False  # pipeline.json may hold adapter options (a grid, a layout)

    @property
    def samplers(self) -> tuple[str, ...]:
        return applicable_samplers(self)


FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> None:
    FAMILIES[spec.kind] = spec


def family(kind: str) -> FamilySpec:
    if kind not in FAMILIES:
        raise ValueError(f"kind {kind!r} is not a known family ({', '.join(FAMILIES)})")
    return FAMILIES[kind]


def applicable_samplers(spec: FamilySpec) -> tuple[str, ...]:
    """The registered samplers whose declared model protocol is the family's, in registration order."""
    from ..samplers import registered_samplers, sampler_class

    return tuple(name for name in registered_samplers() if getattr(sampler_class(name), "MODEL", None) == spec.protocol)


def families_taking(sampler: str) -> list[str]:
    """The family kinds ``sampler`` applies to (for listings: ``vargen samplers``, the app)."""
    return [kind for kind, spec in FAMILIES.items() if sampler in spec.samplers]


from . import llamagen, var, mar, cosmos, hf  # noqa: E402,F401,I001  (each registers its family, in this order)
