"""Process-level settings: CPU threads and OpenMP's wait policy.

On a shared CPU, OpenMP's default *active* wait makes idle torch threads spin on cores another process
needs; measured on a busy 2-core machine, ``vargen generate`` ran 57x slower (56.7 s instead of 0.93 s).
``import vargen`` therefore sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy (it must be set
before torch loads OpenMP, so import vargen before torch, or export it yourself), and ``vargen.load``
and the command-line tools pick the thread count with :func:`configure_threads`: load-aware, so a
process never runs more busy threads than there are free cores (``VARGEN_THREADS=n`` or
``configure_threads(n)`` fixes it).
"""
from __future__ import annotations

import os

__all__ = ["configure_threads", "ensure_threads", "usable_cores", "check_device", "check_dtype"]

_configured: int | None = None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads and return the number: ``threads`` if given (>= 1), else ``$VARGEN_THREADS``,
    else the usable cores minus those other processes keep busy (the 1-minute load average), at least 1.
    Raises ``ValueError`` for a count below 0 (0 means automatic) or above the usable cores (more threads than
    cores only make them wait on each other)."""
    import torch

    if threads is None or threads == 0:
        env = os.environ.get("VARGEN_THREADS")
        if env:
            if not env.isdigit() or int(env) < 1:
                raise ValueError(f"VARGEN_THREADS must be a positive integer, got {env!r}")
            threads = int(env)
            if threads > usable_cores():
                raise ValueError(f"VARGEN_THREADS={threads}, but this process may run on {usable_cores()} "
                                 f"core(s); use 1..{usable_cores()} (or unset it: automatic)")
        else:
            cores = usable_cores()
            try:
                busy = os.getloadavg()[0]
            except OSError:
                busy = 0.0
            threads = max(1, min(cores, round(cores - busy)))
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0 (0: automatic), got {threads!r}")
    elif threads > usable_cores():
        raise ValueError(f"threads={threads}, but this process may run on {usable_cores()} core(s); "
                         f"use 1..{usable_cores()} (0: automatic)")
    global _configured
    torch.set_num_threads(threads)
    _configured = threads
    return threads


def ensure_threads() -> int:
    """:func:`configure_threads` once per process (``vargen.load`` calls it; an explicit call wins)."""
    return _configured if _configured is not None else configure_threads()


_DEVICE_TYPES = ("cpu", "cuda", "mps")

_DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16", "fp16": "float16",
           "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def check_dtype(dtype):
    """``dtype`` as a floating ``torch.dtype``: a ``torch.dtype`` or one of the names ``float32`` / ``fp32``,
    ``float16`` / ``fp16`` / ``half``, ``bfloat16`` / ``bf16`` (``torch.`` prefix allowed); ``None`` stays None.
    Anything else is a ``ValueError`` naming ``dtype`` and the accepted names."""
    import torch

    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype {dtype} is not a floating-point type; use float32, float16 or bfloat16")
        return dtype
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        if name in _DTYPES:
            return getattr(torch, _DTYPES[name])
    raise ValueError(f"unknown dtype {dtype!r}; use float32 (fp32), float16 (fp16) or bfloat16 (bf16), as a name "
                     "or a torch.dtype")


def check_device(device):
    """``device`` as a ``torch.device``, or a ``ValueError`` naming what is missing (no CUDA build or GPU) or
    that vargen does not run there (only ``cpu``, ``cuda[:N]`` and ``mps`` hold real tensors to sample with)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        reason = f"a {type(device).__name__}, not a device name" if isinstance(err, TypeError) else str(err).strip()
        reason = reason.splitlines()[0] if reason else type(err).__name__
        raise ValueError(f"unknown device {device!r} ({reason}); use cpu, cuda or cuda:N") from None
    if dev.type not in _DEVICE_TYPES:
        raise ValueError(f"vargen cannot run on device {device!r}; it runs on {', '.join(_DEVICE_TYPES[:-1])} "
                         f"or {_DEVICE_TYPES[-1]} (cuda:N for one GPU)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but no CUDA GPU is available to this process; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available here; use --device cpu")
    return dev
