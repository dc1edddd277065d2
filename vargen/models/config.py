"""The one way a config dataclass named after an official constructor is built from keyword arguments, and the
field checks every config file goes through (types from the dataclass annotations, plain ranges)."""
from __future__ import annotations

import inspect
import math
import types
import typing
from dataclasses import MISSING, asdict, fields, is_dataclass
from typing import Any

__all__ = ["OfficialConfig", "check_value", "check_fields", "describe"]

# sizes a model cannot be built with at zero (a zero-width layer, no heads, an empty vocabulary or sequence)
_POSITIVE_NAMES = frozenset({"dim", "n_layer", "n_head", "n_kv_head", "vocab_size", "block_size", "depth", "embed_dim",
                             "num_heads", "codebook_size", "codebook_embed_dim", "z_channels", "ch", "img_size",
                             "patch_size", "resolution", "multiple_of"})
_PROBABILITY_SUFFIXES = ("_p", "_prob", "dropout", "drop_rate", "drop_path_rate")


def describe(value) -> str:
    return f"{value!r} ({type(value).__name__})" if isinstance(value, str) else repr(value)


def _optional(tp):
    """``(inner, True)`` for ``X | None`` / ``Optional[X]``; ``(tp, False)`` otherwise."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp) -> str:
    tp, opt = _optional(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = _type_name(args[0]) if args else "value"
        name = f"a list of {inner.removeprefix('an ').removeprefix('a ')}s"
    else:
        name = {bool: "a boolean (true / false)", int: "an integer", float: "a number", str: "a string"}.get(
            tp, getattr(tp, "__name__", str(tp)))
    return name + (" or null" if opt else "")


def check_value(value, tp) -> bool:
    """Whether ``value`` (as read from JSON) fits annotation ``tp``. Rules: a bool field takes only true / false
    (never 0 / 1); an int field takes an integer but not a bool; a float field takes any finite number but not a
    bool; ``X | None`` also takes null; a list / tuple field takes a JSON list whose items fit. Annotations outside
    these kinds are not checked (True)."""
    tp, opt = _optional(tp)
    if value is None:
        return opt
    origin = typing.get_origin(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if origin is tuple and Ellipsis not in typing.get_args(tp) and args:
            return len(value) == len(args) and all(check_value(v, a) for v, a in zip(value, args))
        return not args or all(check_value(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True  # an annotation this checker does not model (a class, a literal): left to the constructor


def _range_error(name: str, value, tp) -> str | None:
    tp, _ = _optional(tp)
    if value is None or tp not in (int, float) or isinstance(value, bool):
        return None
    if name.endswith(_PROBABILITY_SUFFIXES) and tp is float and not 0 <= value <= 1:
        return f"must be between 0 and 1, got {value!r}"
    if tp is int and name in _POSITIVE_NAMES and value < 1:
        return f"must be at least 1, got {value!r}"
    if tp is int and value < 0:
        return f"must not be negative, got {value!r}"
    return None


def check_fields(cls, d: dict[str, Any], where: str = "", ranges: bool = True, required: bool = True) -> None:
    """Check the values of ``d`` against dataclass ``cls``'s field annotations and ranges (ints not negative,
    sizes such as dim / n_head / vocab_size at least 1,
    probabilities / dropouts in [0, 1]); a ``ValueError`` naming ``where`` (a file) and the field."""
    prefix = f"{where}: " if where else ""
    if not isinstance(d, dict):
        raise ValueError(f"{prefix}must be a JSON object of {cls.__name__} fields, got {describe(d)}")
    if is_dataclass(cls):
        params = [(f.name, f.init and f.default is MISSING and f.default_factory is MISSING) for f in fields(cls)]
        target = cls
    else:  # a class configured by its constructor's keyword arguments
        try:
            signature = inspect.signature(cls)
        except (TypeError, ValueError):
            return
        params = [(n, p.default is inspect.Parameter.empty) for n, p in signature.parameters.items()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        target = cls.__init__ if isinstance(cls, type) else cls
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that does not resolve: types are not checked
        hints = {}
    for name, _ in params:
        if name not in d or name not in hints:
            continue
        value, tp = d[name], hints[name]
        if not check_value(value, tp):
            raise ValueError(f"{prefix}field {name!r} must be {_type_name(tp)}, got {describe(value)}")
        problem = _range_error(name, value, tp) if ranges else None
        if problem:
            raise ValueError(f"{prefix}field {name!r} {problem}")
    missing = [name for name, needed in params if needed and name not in d]
    if required and missing:
        raise ValueError(f"{prefix}{getattr(cls, '__name__', 'config')} fields missing: {missing}")


class OfficialConfig:
    """Mixin for config dataclasses whose fields are an official constructor's arguments: ``from_dict`` takes them
    by their official names (``IGNORED`` ones, which only choose a kernel, a path or a module class upstream, are
    accepted and dropped; anything else unknown is an error naming it), checks each value against the field's
    annotation and range (:func:`check_fields`), and ``to_dict`` gives them back."""

    IGNORED: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = ""):
        prefix = f"{where}: " if where else ""
        if not isinstance(d, dict):
            raise ValueError(f"{prefix}a {cls.__name__} must be a JSON object, got {describe(d)}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - set(cls.IGNORED)
        if unknown:
            raise ValueError(f"{prefix}unknown {cls.__name__} fields (constructor arguments): {sorted(unknown)}")
        kept = {k: v for k, v in d.items() if k in known}
        check_fields(cls, kept, where)
        return cls(**kept)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
