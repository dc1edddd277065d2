"""One option grammar for every front-end: declared options, typed parsing, clear errors.

Each sampler component declares its options as a dataclass whose fields carry a help text and a range
(:func:`option`); :func:`checked` validates an instance (types, ranges, choices) and is called by the
component's constructor. A sampler's options are its own plus those of its parts (the Jacobi proposer,
the acceptance rule it was given, ...); ``get_sampler`` and :class:`SamplerSpec` reject an option the
sampler does not take, naming the sampler and what it accepts.

    SamplerSpec.parse("sjd:window=16,coupled=true")   # -> SamplerSpec("sjd", {"window": 16, "coupled": True})
    str(spec)                                          # "sjd:coupled=true,window=16" (canonical)

Values from text are parsed by the declared type: booleans strictly (true/false/yes/no/1/0), numbers as
numbers (an integer option rejects ``2.5`` and ``true``), lists as ``a/b/c``, ``none`` for an optional
value. The CLI (``--sampler``), ``vargen bench``, the benchmark report, the eval scripts and the app all
go through here.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = ["option", "checked", "Option", "options_of", "SamplerSpec", "parse_text_value"]


def option(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
           choices: tuple | None = None, bound: str | None = None, text: bool = True, literals: tuple = ()):
    """A declared option: a dataclass field with ``help``, a range, allowed ``choices``, and ``bound``,
    the name of a model attribute the value may not exceed (``"num_tokens"``: a window cannot be longer
    than the image). ``text=False``: an object (a model, a codebook) that cannot be written in a spec.
    ``literals``: words accepted besides values of the declared type (``("auto",)`` for a window)."""
    meta = dict(help=help, minimum=minimum, maximum=maximum, choices=choices, bound=bound, text=text,
                literals=literals)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Option:
    name: str
    kind: str  # "int" | "float" | "bool" | "str" | "ints" | "floats" | "object"
    default: Any
    help: str
    optional: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    bound: str | None = None
    owner: str = ""
    text: bool = True  # can be written in a spec (objects: only as a path, e.g. a draft-head folder)
    literals: tuple = ()  # words accepted besides the declared type ("auto")

    def describe(self) -> str:
        rng = []
        if self.choices:
            rng.append("one of " + "/".join(map(str, self.choices)))
        if self.minimum is not None:
            rng.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            rng.append(f"<= {self.maximum:g}")
        if self.bound:
            rng.append(f"<= the model's {self.bound}")
        if self.literals:
            rng.append("or " + "/".join(self.literals))
        extra = f" ({', '.join(rng)})" if rng else ""
        return f"{self.name}: {self.kind}{extra}, default {self.default!r}. {self.help}"

    def convert(self, value: Any, where: str) -> Any:
        """Check (and, from text, parse) ``value``; ``ValueError`` naming ``where`` and this option."""
        if isinstance(value, str) and value.strip().lower() in self.literals:
            return value.strip().lower()
        if isinstance(value, str) and self.kind != "str":
            value = parse_text_value(value, self.kind, f"{where}: {self.name}", self.literals)
        if value is None:
            if self.optional or self.kind == "object":
                return None
            raise ValueError(f"{where}: {self.name} may not be none")
        bad = f"{where}: {self.name} must be {self._kind_words()}, got {value!r}"
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(bad)
        elif self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(bad)
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(bad)
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{where}: {self.name} must be a finite number, got {value!r}")
        elif self.kind == "str":
            if not isinstance(value, str):
                raise ValueError(bad)
        elif self.kind in ("ints", "floats"):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = (value,)
            if not isinstance(value, (list, tuple)):
                raise ValueError(bad)
            item = Option(self.name, self.kind[:-1], None, "", minimum=self.minimum, maximum=self.maximum)
            return tuple(item.convert(v, where) for v in value)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{where}: {self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        if self.kind in ("int", "float"):
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"{where}: {self.name} must be >= {self.minimum:g}, got {value!r}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"{where}: {self.name} must be <= {self.maximum:g}, got {value!r}")
        return value

    def _kind_words(self) -> str:
        words = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                 "ints": "integers (a/b/c)", "floats": "numbers (a/b/c)"}.get(self.kind, "an object")
        return words + "".join(f" or {w}" for w in self.literals) + (" or none" if self.optional else "")


def _kind(annotation) -> tuple[str, bool]:
    """(kind, optional) of a field annotation such as ``int``, ``float | None``, ``tuple[int, ...] | None``."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        kind, _ = _kind(rest[0]) if len(rest) == 1 else ("object", False)
        return kind, type(None) in args
    if origin is tuple:
        return ("ints" if args and args[0] is int else "floats"), False
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(annotation, "object"), False


def options_of(cls, owner: str = "") -> dict[str, Option]:
    """The declared options of an options dataclass, by name."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind, optional = _kind(hints[f.name])
        m = f.metadata
        out[f.name] = Option(f.name, kind, f.default, m.get("help", ""), optional, m.get("minimum"), m.get("maximum"),
                             m.get("choices"), m.get("bound"), owner, m.get("text", True), m.get("literals", ()))
    return out


def checked(options, owner: str):
    """Validate (and normalise) every field of an options dataclass instance; returns it. ``ValueError``
    names ``owner`` and the option."""
    for name, opt in options_of(type(options), owner).items():
        object.__setattr__(options, name, opt.convert(getattr(options, name), owner))
    return options


def check_bounds(options, owner: str, model) -> None:
    """The model-dependent ranges (``bound=``): e.g. a window no longer than the model's image."""
    for name, opt in options_of(type(options), owner).items():
        value = getattr(options, name)
        if opt.bound and isinstance(value, (int, float)) and hasattr(model, opt.bound) and value > getattr(model, opt.bound):
            raise ValueError(f"{owner}: {name}={value} exceeds the model's {opt.bound} ({getattr(model, opt.bound)})")


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def parse_text_value(text: str, kind: str, where: str, literals: tuple = ()) -> Any:
    """A spec's text for an option of ``kind`` (or one of ``literals``); ``ValueError`` naming ``where`` for
    anything else."""
    t = text.strip()
    if t.lower() in ("none", "null"):
        return None
    try:
        if kind == "bool":
            if t.lower() in _TRUE:
                return True
            if t.lower() in _FALSE:
                return False
            raise ValueError
        if kind == "int":
            return int(t)
        if kind == "float":
            return float(t)
        if kind in ("ints", "floats"):
            return tuple(parse_text_value(p, kind[:-1], where) for p in t.split("/") if p.strip())
    except ValueError:
        words = {"bool": "true/false/yes/no/1/0", "int": "an integer", "float": "a number",
                 "ints": "integers a/b/c", "floats": "numbers a/b/c"}[kind]
        words += "".join(f" or {w}" for w in literals)
        raise ValueError(f"{where}: expected {words}, got {text!r}") from None
    return t


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler name with typed options, written ``name:key=value,key=value``."""

    name: str
    options: dict = field(default_factory=dict)
    member: str | None = None  # ``model=NAME``: run on another model of the pipeline (e.g. VAR's refiner)

    @classmethod
    def parse(cls, text: str) -> "SamplerSpec":
        from . import sampler_options

        text = (text or "").strip()
        name, _, rest = text.partition(":")
        name = name.strip()
        raw: dict[str, str] = {}
        for item in filter(None, (i.strip() for i in rest.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or not key:
                raise ValueError(f"sampler spec {text!r}: expected key=value, got {item!r}")
            if key in raw:
                raise ValueError(f"sampler spec {text!r}: {key} given twice")
            raw[key] = value.strip()
        acceptance = raw.get("acceptance")
        declared = sampler_options(name, acceptance)  # raises for an unknown sampler or rule
        for key in raw:
            if key == "model" and key not in declared:
                continue
            if key not in declared:
                raise ValueError(unknown_option_message(name, key, declared))
            if not declared[key].text:
                raise ValueError(f"{name}: {key} is an object (a model or tensor) and cannot be written in a spec")
        member = raw.pop("model", None) if "model" not in declared else None
        options = {k: declared[k].convert(v, name) if declared[k].kind != "object" else _path(v, name, k)
                   for k, v in raw.items()}
        return cls(name, options, member)

    def __str__(self) -> str:
        def text(v):
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, tuple):
                return "/".join(text(x) for x in v)
            if isinstance(v, float):  # short where that is exact, else every digit: the text means this value
                short = f"{v:g}"
                return short if float(short) == v else repr(v)
            return "none" if v is None else str(v)

        items = dict(self.options, **({"model": self.member} if self.member else {}))
        if not items:
            return self.name
        return self.name + ":" + ",".join(f"{k}={text(v)}" for k, v in sorted(items.items()))


def _path(text: str, sampler: str, key: str) -> str | None:
    """An object option written in a spec: a folder path (``none``: not given)."""
    if text.lower() in ("none", "null"):
        return None
    if not text:
        raise ValueError(f"{sampler}: {key} needs a folder path, got nothing")
    return text


def unknown_option_message(sampler: str, key: str, declared: dict[str, Option]) -> str:
    names = ", ".join(sorted(declared)) or "no options"
    return f"sampler {sampler!r} takes no option {key!r}; it takes: {names}"
