"""Loading checkpoints strictly and safely, whatever wrapper they come in.

Security policy (one for every family): torch pickles are read with ``weights_only=True``, which cannot
run code; the argparse ``Namespace`` that released LlamaGen / VAR training checkpoints carry is allowed
as a plain value. Anything else needs ``trusted=True`` (``--trust-checkpoint`` on the command line),
which unpickles fully and warns; the error for a refused file says how to convert it to safetensors.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import pickletools
import re
import struct
import threading
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

WRAPPER_KEYS = ("model", "module", "state_dict", "model_state_dict", "ema", "trainer", "net", "weights")
PREFIXES = ("module.", "_orig_mod.")

__all__ = ["CorruptCheckpoint", "read_state_dict", "load_strict", "load_zoo_folder", "read_folder_config", "WRAPPER_KEYS"]


def _convert_hint(path: Path) -> str:
    return ("if you trust this file, pass trusted=True (--trust-checkpoint); or convert it once, on a machine you "
            "trust, through the same gate: python -c \"import safetensors.torch as st; "
            "from vargen.models.checkpoint import read_state_dict; "
            "sd = read_state_dict('" + str(path) + "', trusted=True); "
            "st.save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\"")


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # torch's messages carry terminal colours
    return f"{type(err).__name__}: {text.splitlines()[0][:limit]}" if text else type(err).__name__


class CorruptCheckpoint(ValueError):
    """A checkpoint that is not a valid file of its format (truncated, bad header, bad magic); never a question of
    trust."""


def corrupt(path, what: str) -> CorruptCheckpoint:
    return CorruptCheckpoint(f"corrupt or truncated: {path} ({what}); re-download or re-export it")


_CORRUPT_MARKERS = ("PytorchStreamReader", "zip archive", "unexpected EOF", "corrupt", "magic number",
                    "invalid load key", "Ran out of input", "truncated", "pickle data was truncated", "Memo value",
                    "could not find", "failed finding", "EOF")


def _is_corruption(err: BaseException, trusted: bool = False) -> bool:
    """Whether an error from ``torch.load`` means the bytes are not a valid checkpoint (rather than a valid pickle
    that holds more than tensors, or one whose classes are missing here)."""
    if isinstance(err, (EOFError, zipfile.BadZipFile, struct.error, UnicodeDecodeError, OverflowError)):
        return True
    if isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, PermissionError)):
        return True  # e.g. EINVAL seeking past the end of a truncated zip
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" not in text:
        return True  # a bad opcode / memo: not a pickle the gate refused, a broken one
    if (not trusted and isinstance(err, (KeyError, IndexError, ValueError, TypeError))
            and "Weights only load failed" not in text):
        return True  # the weights-only unpickler tripping over garbage (a memo index, a bad length); when trusted,
        # these come from the file's own classes as often as from broken bytes, so they are not called corrupt
    return isinstance(err, RuntimeError) and any(m in text for m in _CORRUPT_MARKERS)


def _check_container(path: Path) -> None:
    """Cheap structural checks before unpickling: not empty; a zip checkpoint (``torch.save``'s format) has its
    central directory and a pickle whose opcodes parse to the end (read without executing anything)."""
    size = path.stat().st_size
    if size == 0:
        raise corrupt(path, "empty file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if pkl is None:
                    raise corrupt(path, "zip archive without data.pkl")
                for _ in pickletools.genops(zf.read(pkl)):
                    pass
                for info in zf.infolist():
                    if info.header_offset + info.compress_size > size:
                        raise corrupt(path, f"zip member {info.filename} runs past the end of the file")
        except CorruptCheckpoint:
            raise
        except Exception as err:  # no central directory (cut short), bad CRC, a pickle that ends early
            raise corrupt(path, f"not a valid zip checkpoint: {_first_line(err)}") from None


def _load_pickle(path: Path, trusted: bool):
    """The project's only full unpickling, reached only with an explicit ``trusted=True``. A file that is not a
    valid checkpoint (truncated, bad zip / pickle / magic) is ``corrupt or truncated``, with or without trust; only a
    valid pickle that holds more than tensors gets the advice about trust."""
    if not isinstance(trusted, bool):  # a truthy non-bool ("no", a path) must not unlock it
        raise ValueError(f"trusted must be True or False, got {trusted!r}")
    _check_container(path)
    if trusted:
        warnings.warn(f"unpickling {path} fully (trusted=True): it can run arbitrary code; only do this for files "
                      f"you trust", stacklevel=3)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)  # reached only with trusted=True
        except Exception as err:
            if _is_corruption(err, trusted=True):
                raise corrupt(path, _first_line(err)) from None
            raise ValueError(f"{path}: could not be unpickled ({_first_line(err)}); it may need a class or "
                             f"module that is not installed here") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a class outside the allow-list: refused, never executed
        if _is_corruption(err):
            raise corrupt(path, _first_line(err)) from None
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # torch's message carries terminal colours
        first = text.splitlines()[0][:200] if text else type(err).__name__
        raise ValueError(f"{path}: refused to unpickle: it holds more than tensors ({first}); "
                         f"{_convert_hint(path)}") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def _unwrap(obj, path: Path, prefer: Iterable[str]):
    """Descend through trainer wrappers (``{"trainer": {"var_wo_ddp": ...}}``, ``model``, ``state_dict`` ...)
    to the flat state dict; strip ``module.`` / ``_orig_mod.`` prefixes."""
    keys = (*prefer, *WRAPPER_KEYS)
    for _ in range(4):
        if _is_state_dict(obj):
            break
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
        inner = next((obj[k] for k in keys if k in obj and isinstance(obj[k], dict)), None)
        if inner is None:
            raise ValueError(f"{path} does not hold a state dict (top-level keys: {sorted(map(str, obj))[:10]})")
        obj = inner
    if not _is_state_dict(obj):
        raise ValueError(f"{path}: no state dict found inside the wrappers")
    out = {}
    for k, v in obj.items():
        for p in PREFIXES:
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def read_state_dict(path: str | os.PathLike, prefer: Iterable[str] = (), trusted: bool = False,
                    missing_hint: str = "") -> dict[str, torch.Tensor]:
    """Read a ``.safetensors``/``.pt``/``.pth``/``.ckpt``/``.bin`` file and unwrap it to a flat state dict.

    ``prefer`` lists wrapper keys tried before the usual ones (e.g. ``("model_ema",)`` for EMA weights).
    Pickles load weights-only (see the module docstring); ``trusted=True`` unpickles fully, with a warning.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder, not a weights file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}" + (f"; {missing_hint}" if missing_hint else ""))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as err:  # truncated, empty, a bad header, or not safetensors at all: never a trust question
            raise CorruptCheckpoint(f"corrupt or truncated: {path} is not a readable safetensors file "
                                    f"({_first_line(err) if str(err) else 'empty'}); re-download or re-export it"
                                    ) from None
    elif path.suffix == ".jit":
        obj = _load_torchscript(path, trusted)
    else:
        obj = _load_pickle(path, trusted)
    return _unwrap(obj, path, prefer)


def _load_torchscript(path: Path, trusted: bool) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript file (the released Cosmos tokenizers' ``encoder.jit`` / ``decoder.jit``).
    Loading TorchScript runs the file's code, so it takes ``trusted=True`` like a full unpickling."""
    if not isinstance(trusted, bool):
        raise ValueError(f"trusted must be True or False, got {trusted!r}")
    _check_container(path)  # a broken archive is corrupt, not a question of trust (read without running anything)
    if not trusted:
        raise ValueError(f"{path}: a TorchScript file runs its own code when loaded; {_convert_hint(path)}")
    warnings.warn(f"loading TorchScript {path}: it can run arbitrary code; only do this for files you trust",
                  stacklevel=3)
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as err:
        if _is_corruption(err, trusted=True):
            raise corrupt(path, _first_line(err)) from None
        raise ValueError(f"{path}: could not be loaded as TorchScript ({_first_line(err)})") from None


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, hint: str = "",
                drop: Iterable[str] = (), assign: bool = False, ignore_shape: tuple[str, ...] = ()) -> None:
    """``load_state_dict(strict=True)`` with an error that names the mismatch and the likely cause.

    ``assign``: adopt the checkpoint's tensors (modules built on the meta device); ``ignore_shape``:
    key suffixes whose shape may legitimately differ (the module's own ``load_state_dict`` handles them).
    Non-finite weights load, with a warning naming them (they give constant images)."""
    state = {k.removeprefix("module."): v for k, v in state.items() if k not in set(drop)}
    problem = _mismatch({k: tuple(v.shape) for k, v in module.state_dict().items()},
                        {k: tuple(v.shape) for k, v in state.items()}, what, hint, ignore_shape)
    if problem:
        raise ValueError(problem)
    params = {n for n, _ in module.named_parameters()}  # buffers may hold -inf on purpose (attention masks)
    bad = [k for k, v in state.items() if v.is_floating_point()
           and (bool(torch.isnan(v).any()) or (k in params and not bool(torch.isfinite(v).all())))]
    if bad:
        warnings.warn(f"{what}: {len(bad)} weight tensor(s) hold NaN or inf values ({bad[:3]}); samples will be "
                      f"meaningless", stacklevel=2)
    module.load_state_dict(state, strict=True, assign=assign)


def _mismatch(own: dict[str, tuple], given: dict[str, tuple], what: str, hint: str = "",
              ignore_shape: tuple[str, ...] = ()) -> str | None:
    """What differs between a module's state shapes (``own``) and a checkpoint's (``given``), as load_strict's
    error; None when they match."""
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    wrong_shape = [f"{k}: checkpoint {given[k]} vs model {own[k]}"
                   for k in own if k in given and given[k] != own[k] and not k.endswith(ignore_shape)]
    if not (missing or unexpected or wrong_shape):
        return None
    lines = [f"checkpoint does not match this {what} config"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {missing[:5]}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected[:5]}")
    if wrong_shape:
        lines.append(f"  shape mismatches ({len(wrong_shape)}): {wrong_shape[:3]}")
    if hint:
        lines.append(f"  likely cause: {hint}")
    return lines[0] + ": " + "; ".join(line.strip() for line in lines[1:])  # one line, as every error


class _Oversized(Exception):
    pass


@contextmanager
def _element_limit(limit: int):
    """Stop building a module (this thread's) once its parameters and buffers pass ``limit`` elements."""
    from torch.nn.modules.module import (register_module_buffer_registration_hook,
                                         register_module_parameter_registration_hook)

    me, count = threading.get_ident(), [0]

    def hook(module, name, tensor):
        if tensor is not None and threading.get_ident() == me:
            count[0] += tensor.numel()
            if count[0] > limit:
                raise _Oversized

    handles = [register_module_parameter_registration_hook(hook), register_module_buffer_registration_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _safetensors_shapes(path: Path) -> dict[str, tuple] | None:
    """Tensor shapes from a safetensors header (nothing is read but the header); None if it cannot be read (the
    full read reports why)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # noqa: BLE001 - a corrupt file is reported by read_state_dict, with its own message
        return None


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def _tensor_bytes(module: nn.Module) -> int:
    """Bytes of every tensor a module holds: parameters, buffers and plain tensor attributes (e.g. a RoPE table)."""
    total = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    for m in module.modules():
        total += sum(v.numel() * v.element_size() for v in vars(m).values() if isinstance(v, torch.Tensor))
    return total


def check_config_fits_weights(config_path: Path, weights: Path, build, config: dict, what: str, drop=(),
                              ignore_shape: tuple[str, ...] = (), **_) -> None:
    """Before anything is allocated: the module ``config`` describes, built on the meta device, has the shapes of
    ``weights`` (a safetensors file) and fits in the memory available. Sizes a config.json gets wrong (a dimension
    typed 4096 for 128, a million layers) are a ``ValueError`` naming the file here, not an allocation failure or
    minutes of building. A config that cannot be built on the meta device is left to the real build."""
    shapes = _safetensors_shapes(weights)
    if shapes is None:
        return
    shapes = {k.removeprefix("module."): v for k, v in shapes.items() if k not in set(drop)}
    elements = sum(math.prod(s) for s in shapes.values())
    limit = 4 * elements + 2**24  # non-persistent buffers (masks, tables) on top of the weights
    try:
        with torch.device("meta"), _element_limit(limit):
            shell = build(config)
    except _Oversized:
        raise ValueError(f"{config_path}: describes a model of more than {limit:,} parameters and buffers, but "
                         f"{weights.name} holds {elements:,}: a size in it does not match the weights") from None
    except Exception:  # noqa: BLE001 - the real build reports it, in its own words
        return
    if not isinstance(shell, nn.Module):
        return
    problem = _mismatch({k: tuple(v.shape) for k, v in shell.state_dict().items() if k not in set(drop)}, shapes,
                        what, ignore_shape=ignore_shape)
    if problem:
        raise ValueError(problem)
    need, available = _tensor_bytes(shell), _available_bytes()
    if available is not None and need > 0.8 * available:
        raise ValueError(f"{config_path}: the model it describes needs {need / 1e9:.3g} GB to build, more than the "
                         f"{available / 1e9:.3g} GB this machine has available")


def read_folder_config(folder: str | os.PathLike, expected: str | tuple[str, ...] | None = None) -> dict:
    """``config.json`` of a model folder (``{"type": ..., "config": {...}}``), checked: the file exists,
    parses, and (when ``expected`` is given) is of that type. Errors name the file."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: {path} not found")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path} must hold {{\"type\": ..., \"config\": {{...}}}}")
    if expected is not None:
        expected = (expected,) if isinstance(expected, str) else tuple(expected)
        if meta.get("type") not in expected:
            raise ValueError(f"{folder} holds a {meta.get('type')!r} model, not {' or '.join(map(repr, expected))}")
    return meta


def load_zoo_folder(folder: str | os.PathLike, build, expected: str | tuple[str, ...] | None = None,
                    config_class=None, load=None, **strict) -> nn.Module:
    """A model folder (``config.json`` + ``model.safetensors``): ``build(config dict) -> module``, then a
    strict load of the weights (or ``load(module, path)``, a family's own loader); returned in eval mode without
    gradients. The config is checked before anything is built (``config_class``'s field annotations and ranges,
    :func:`vargen.models.config.check_fields`; then its shapes and size against the weights on the meta device,
    :func:`check_config_fits_weights`); every config error names the file."""
    from .config import check_fields

    folder = Path(folder)
    path = folder / "config.json"
    meta = read_folder_config(folder, expected)
    if config_class is not None:
        check_fields(config_class, meta["config"], str(path))
    check_config_fits_weights(path, folder / "model.safetensors", build, meta["config"], str(folder), **strict)
    try:
        module = build(meta["config"])
    except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError, RuntimeError) as err:
        text = str(err)
        if text.startswith(str(path)):
            raise ValueError(text) from None
        if isinstance(err, ValueError):  # a field check or the constructor's own validation
            raise ValueError(f"{path}: {text}") from None
        raise ValueError(f"{path}: bad config for {meta.get('type')}: {type(err).__name__}: {text}") from None
    if load is not None:
        load(module, folder / "model.safetensors")
    else:
        load_strict(module, read_state_dict(folder / "model.safetensors"), what=str(folder), **strict)
    return module.eval().requires_grad_(False)
