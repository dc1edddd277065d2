"""Image datasets for training the demo models: a ``.tar.gz`` of ``split/class/*.jpg`` or a folder of ``class/*.jpg``.

Images are decoded once into a uint8 tensor ``[N, 3, H, W]`` and cached next to the source as ``.pt``
(keyed on the source and split), so later runs start in seconds.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _decode(data: bytes, size: int | None) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _cache_path(source: Path, split: str, size: int | None, cache_dir: Path | None) -> Path:
    key = hashlib.sha1(f"{source.resolve()}|{split}|{size}|{source.stat().st_mtime}".encode()).hexdigest()[:12]
    root = cache_dir or Path(os.environ.get("VARGEN_CACHE", Path.home() / ".cache" / "vargen"))
    root.mkdir(parents=True, exist_ok=True)
    return root / f"images-{source.name.split('.')[0]}-{split}-{key}.pt"


def require_data(source: str | os.PathLike) -> Path:
    """``source`` as a path; ``FileNotFoundError`` when it is not there (checked before a run makes its folder)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"training data not found: {source}")
    return source


def load_images(source: str | os.PathLike, split: str = "train", size: int | None = 32,
                cache_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(uint8 images [N,3,H,W], labels [N], class names) from a tarball or folder.

    In a tarball the members are ``<split>/<class>/<file>``; a folder is either ``<split>/<class>/``
    or directly ``<class>/``. Classes are sorted by name; files are sorted, so the order is stable.
    """
    source = require_data(source)
    cache = _cache_path(source, split, size, Path(cache_dir) if cache_dir else None)
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return blob["images"], blob["labels"], blob["classes"]
    items: list[tuple[str, str, bytes]] = []  # (class, name, bytes)
    if source.is_file():
        with tarfile.open(source) as tar:
            for m in tar:
                parts = Path(m.name).parts
                if m.isfile() and len(parts) >= 3 and parts[-3] == split and m.name.lower().endswith(IMAGE_EXT):
                    items.append((parts[-2], parts[-1], tar.extractfile(m).read()))
    else:
        root = source / split if (source / split).is_dir() else source
        for cls_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.suffix.lower() in IMAGE_EXT:
                    items.append((cls_dir.name, f.name, f.read_bytes()))
    if not items:
        raise ValueError(f"no images found for split {split!r} in {source}")
    items.sort(key=lambda t: (t[0], t[1]))
    classes = sorted({c for c, _, _ in items})
    images = np.stack([_decode(b, size) for _, _, b in items]).transpose(0, 3, 1, 2)
    labels = torch.tensor([classes.index(c) for c, _, _ in items])
    images = torch.from_numpy(np.ascontiguousarray(images))
    torch.save({"images": images, "labels": labels, "classes": classes}, cache)
    return images, labels, classes


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_uint8.float().div(127.5).sub(1.0)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def cached_encoding(cache: Path, encode, data: str, split: str = "train", flips: bool = True, image_size: int = 32,
                    batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(``encode`` of every image of a split [N, ...], labels [N]), computed once and kept in ``cache``.

    ``encode(images in [-1, 1]) -> tensor`` is called per batch, only on a cache miss; with ``flips`` the
    mirrored images are appended (labels repeated).
    """
    cache = Path(cache)
    if cache.exists():
        blob = torch.load(cache, weights_only=True)
        return blob["codes"], blob["labels"]
    images, labels, _ = load_images(data, split, image_size)
    out = []
    for flip in (False, True) if flips else (False,):
        for i in range(0, images.shape[0], batch_size):
            x = to_model_range(images[i : i + batch_size])
            out.append(encode(x.flip(-1) if flip else x))
    codes, labels = torch.cat(out), labels.repeat(2 if flips else 1)
    torch.save({"codes": codes, "labels": labels}, cache)
    return codes, labels
