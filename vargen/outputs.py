"""Folders of samples (``vargen generate``, ``eval/sample.py``): a manifest that names the run, sample files written
atomically, and the rules that keep two runs out of one folder.

- A folder's *sample files* are its top-level files named ``<index>.png`` or ``<index>_<label>.<png|gif|mp4>``
  (``000123.png``, ``0007_cat.png``, ``0001_scene-7.gif``). Anything else in the folder (``manifest.json``, notes,
  logs, an old ``grid.png``) is not a sample: never counted by ``vargen fid``, never deleted by ``--overwrite``.
- ``manifest.json`` says what the samples depend on (model, sampler spec and options, seed, conditions, count, ...);
  :func:`differences` names the fields in which two manifests differ.
- :func:`atomic_write` writes under a ``*.tmp.*`` name and renames, so a killed run never leaves a truncated file
  under a sample's name (``*.tmp.*`` files are not samples, and a resumed run overwrites them).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Iterator

MANIFEST = "manifest.json"
_SAMPLE = re.compile(r"(\d+)(_.*)?\.(png|gif|mp4)")


def sample_index(name: str) -> int | None:
    """The index of a sample file's name (``"0007_cat.png"`` -> 7); None for a file that is not a sample."""
    match = _SAMPLE.fullmatch(name)
    return int(match.group(1)) if match and ".tmp." not in name else None


def sample_files(folder: str | os.PathLike) -> Iterator[Path]:
    """The sample files of ``folder`` (top level, in directory order; none if the folder does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    with os.scandir(folder) as entries:
        for entry in entries:
            if sample_index(entry.name) is not None and entry.is_file():
                yield Path(entry.path)


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """``folder/manifest.json`` (None when there is none); a broken one is a ``ValueError`` naming it."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it or use another folder") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not a manifest (a JSON object); delete it or use another folder")
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: dict) -> None:
    atomic_write(Path(folder) / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n"))


def differences(old: dict, new: dict) -> str:
    """The fields in which two manifests differ, as ``"key: folder X vs this run Y; ..."`` ("" when equal)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: folder {old.get(k)!r} vs this run {new.get(k)!r}" for k in keys)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``; ``tmp`` keeps the suffix (file formats follow it)."""
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def remove_partial(folder: Path) -> None:
    """Delete the interrupted writes (``*.tmp.*``) of ``folder``."""
    for path in folder.glob("*.tmp.*"):
        if path.is_file() and (sample_index(path.name.replace(".tmp.", ".")) is not None
                               or path.name == MANIFEST.replace(".", ".tmp.")):
            path.unlink(missing_ok=True)


def clear(folder: Path) -> None:
    """Delete the sample files, interrupted writes and manifest of ``folder``; other files stay."""
    for path in [*sample_files(folder), folder / MANIFEST]:
        path.unlink(missing_ok=True)
    remove_partial(folder)


def check_folder(folder: Path, manifest: dict, resume: bool = False, overwrite: bool = False) -> None:
    """``vargen generate``'s rule, before any work: a folder that holds another run's samples (another manifest, or
    sample files without one) is refused, and so is this run's own folder without ``resume`` (finish it) or
    ``overwrite`` (start again); a folder without samples or manifest is free, whatever else it holds."""
    if overwrite:
        return
    old = read_manifest(folder)
    if old is None:
        if next(sample_files(folder), None) is not None:
            raise ValueError(f"--out {folder} holds sample files but no {MANIFEST} (another program's, or made before "
                             f"manifests); use a new --out, or --overwrite to delete them")
        return
    diff = differences(old, manifest)
    if diff:
        raise ValueError(f"--out {folder} holds another run ({diff}); use a new --out, or --overwrite to replace it")
    if not resume:
        raise ValueError(f"--out {folder} holds this run already; --resume to finish it (the files written are kept), "
                         f"or --overwrite to start again")
