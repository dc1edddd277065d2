"""The one way a config dataclass named after an official constructor is built from keyword arguments."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

__all__ = ["OfficialConfig"]


class OfficialConfig:
    """Mixin for config dataclasses whose fields are an official constructor's arguments: ``from_dict`` takes them
    by their official names (``IGNORED`` ones, which only choose a kernel, a path or a module class upstream, are
    accepted and dropped; anything else unknown is an error naming it), ``to_dict`` gives them back."""

    IGNORED: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - set(cls.IGNORED)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields (constructor arguments): {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
