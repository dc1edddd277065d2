"""The memory a sampling call needs, known before it starts.

A sampler states its :class:`Footprint`: the bytes one image (one batch row) needs, by part, from the model's
shapes and the sampler's options (the model's cache, the activations and logits of its widest forward, a token
tree's mask, a drafter's own cache). :class:`MemoryBudget` compares that with the memory the call may use (what the
device has available, or a ``max_memory`` the user sets): a batch that does not fit runs in chunks where the
images do not depend on the chunking, and anything that cannot fit even one image is refused with an error naming
the sampler's options, the estimate and the limit -- before any work rather than in the allocator.

The estimates are upper bounds of what the per-image tensors hold, computed from shapes, not measurements (on the
demos they are within 10 % of the measured peak growth); they leave a fifth of the available memory for what they
do not count: per-call tables (LANTERN's neighbours, a token tree's masks, compiled graphs), the allocator's slack,
the interpreter and decoded images. ``max_memory`` is taken as given, without that headroom.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

HEADROOM = 0.8  # the share of the available memory a call may plan to use
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def human_bytes(n: float) -> str:
    """``5.4 GB``, ``12 MB``, ``640 B``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def parse_bytes(value) -> int:
    """Bytes from an int or a string such as ``"8GB"``, ``"512 MiB"`` or ``"2e9"``; ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"max_memory must be a size such as 8GB or a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(value).lower())
        if match is None or match.group(2) not in _UNITS:
            raise ValueError(f"max_memory must be a size such as 8GB, 512MiB or a number of bytes, got {value!r}")
        number, unit = float(match.group(1)), match.group(2)
    size = number * _UNITS[unit]
    if not 1 <= size < 2**62:
        raise ValueError(f"max_memory must be from one byte to 4 EB, got {value!r}")
    return int(size)


def available_memory(device) -> int:
    """Bytes a new allocation on ``device`` can take now: free CUDA memory, or the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":  # free memory plus what torch's caching allocator holds unused
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


@dataclass
class Footprint:
    """Bytes one batch row (one image, its guidance row included) needs during a sampling call, by part."""

    parts: dict[str, int] = field(default_factory=dict)

    def add(self, what: str, nbytes: float) -> "Footprint":
        self.parts[what] = self.parts.get(what, 0) + int(nbytes)
        return self

    def __add__(self, other: "Footprint") -> "Footprint":
        out = Footprint(dict(self.parts))
        for what, nbytes in other.parts.items():
            out.add(what, nbytes)
        return out

    @property
    def per_row(self) -> int:
        return max(sum(self.parts.values()), 1)

    def describe(self, parts: int = 2) -> str:
        """The largest parts, for an error message."""
        top = sorted(self.parts.items(), key=lambda kv: -kv[1])[:parts]
        return "; ".join(f"{what} {human_bytes(n)}" for what, n in top)


@dataclass(frozen=True)
class MemoryBudget:
    """What a call may use on ``device``: ``limit`` bytes (``max_memory``), else a share of what is available."""

    device: torch.device
    max_memory: int | None = None

    @property
    def limit(self) -> int:
        if self.max_memory is not None:
            return self.max_memory
        return int(available_memory(self.device) * HEADROOM)

    def source(self) -> str:
        if self.max_memory is not None:
            return "max_memory"
        return f"{HEADROOM:.0%} of the memory available on {self.device.type}"

    def rows(self, footprint: Footprint, what: str) -> int:
        """How many rows fit (at least 1); ``ValueError`` naming ``what`` when not even one does."""
        limit = self.limit
        fit = limit // footprint.per_row
        if fit < 1:
            raise ValueError(f"{what} needs about {human_bytes(footprint.per_row)} per image ({footprint.describe()}), "
                             f"more than the {human_bytes(limit)} this call may use ({self.source()}); choose smaller "
                             "options, or set max_memory if more is free")
        return int(fit)
