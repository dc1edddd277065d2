"""Which folders and hub ids hold a transformers image LM vargen adapts (no transformers import: ``vargen.load``
asks this for every name it does not know)."""
from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["MODEL_CLASSES", "model_type", "is_hf_folder", "is_hub_id", "hub_folder"]

# config.model_type -> (transformers class, vargen adapter "module:class" in this package)
MODEL_CLASSES = {"janus": ("JanusForConditionalGeneration", "janus:JanusImageLM"),
                 "emu3": ("Emu3ForConditionalGeneration", "emu3:Emu3ImageLM"),
                 "chameleon": ("ChameleonForConditionalGeneration", "chameleon:ChameleonImageLM")}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def model_type(folder) -> str | None:
    """``model_type`` of a ``save_pretrained`` folder's config.json (None without one)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def is_hf_folder(folder) -> bool:
    """A transformers model folder (config.json with a ``model_type``; loading names the adapted types)."""
    return Path(folder).is_dir() and model_type(folder) is not None


def is_hub_id(name: str) -> bool:
    """``name`` has the form of a hub repository id, "owner/name"."""
    return bool(_HUB_ID.match(name))


def hub_folder(name: str) -> Path:
    """The local snapshot of hub repository ``name`` ("owner/name"): the hub cache, else a download where a network
    exists. Offline without a cached copy: ``FileNotFoundError`` naming the repository."""
    if not is_hub_id(name):
        raise ValueError(f"{name!r} is not a hub repository id (owner/name)")
    from huggingface_hub import snapshot_download

    from ...zoo import from_hub

    return from_hub(lambda **kw: snapshot_download(name, **kw), f"the hub repository {name}",
                    f"Download it where a network exists (huggingface-cli download {name} --local-dir <folder>) "
                    "and pass the folder")
