"""Loading official checkpoints strictly, whatever wrapper they come in."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

WRAPPER_KEYS = ("model", "module", "state_dict", "model_state_dict")


def read_state_dict(path: str | os.PathLike, prefer: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors``/``.pt``/``.pth``/``.ckpt`` file and unwrap it to a flat state dict.

    ``prefer`` lists wrapper keys tried before the usual ones (e.g. ``("model_ema", "ema")`` for EMA
    weights). Pickles are read weights-only first; released LlamaGen/VAR files that still carry an
    argparse ``Namespace`` are then re-read with the full unpickler, deliberately and only for files
    the user pointed us to.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an argparse Namespace or similar in a training checkpoint
        obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in (*prefer, *WRAPPER_KEYS):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (top-level keys: {list(obj)[:8]})")
    return obj


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, hint: str = "",
                drop: Iterable[str] = (), assign: bool = False, ignore_shape: tuple[str, ...] = ()) -> None:
    """``load_state_dict(strict=True)`` with an error that names the mismatch and the likely cause.

    ``assign``: adopt the checkpoint's tensors (modules built on the meta device); ``ignore_shape``:
    key suffixes whose shape may legitimately differ (the module's own ``load_state_dict`` handles them)."""
    state = {k.removeprefix("module."): v for k, v in state.items() if k not in set(drop)}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and state[k].shape != own[k].shape and not k.endswith(ignore_shape)
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"checkpoint does not match this {what} config"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing[:5]}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected[:5]}")
        if wrong_shape:
            lines.append(f"  shape mismatches ({len(wrong_shape)}): {wrong_shape[:3]}")
        if hint:
            lines.append(f"  likely cause: {hint}")
        raise ValueError("\n".join(lines))
    module.load_state_dict(state, strict=True, assign=assign)


def load_zoo_folder(folder: str | os.PathLike, build) -> nn.Module:
    """A demo-zoo folder (``config.json`` + ``model.safetensors``): ``build(config dict) -> module``, then a
    strict load of the weights; returned in eval mode without gradients, in float32."""
    import json

    folder = Path(folder)
    module = build(json.loads((folder / "config.json").read_text())["config"])
    load_strict(module, read_state_dict(folder / "model.safetensors"), what=str(folder))
    return module.eval().requires_grad_(False)
