"""Image sources, feature statistics (cached), and ADM-style ``.npz`` files.

A *source* is one of:
- a folder of images (searched recursively: ImageNet-style ``class/*.JPEG`` works, so does a flat folder
  of generated PNGs);
- ``"cifar10-train"`` / ``"cifar10-test"`` (through :func:`vargen.train.data.load_images`; the tarball is
  ``$VARGEN_CIFAR10``, else ``$VARGEN_SHARED/data/cifar10/cifar10-jpeg.tar.gz`` or
  ``../shared/data/cifar10/cifar10-jpeg.tar.gz`` next to the checkout), or
  ``"<archive or folder>@<split>"`` for any dataset in that layout;
- an ADM-style ``.npz`` with images under ``arr_0`` (uint8 ``[N, H, W, 3]``);
- a uint8 array ``[N, H, W, 3]``.

Statistics (:class:`FeatureStats`) hold the mean and covariance of the features, and the features
and class probabilities themselves (for KID, precision/recall and IS). They are saved as ``.npz``
with a ``vargen_meta`` entry naming the feature network and the resize mode.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ..outputs import MANIFEST, sample_files

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# Image sources
# ----------------------------------------------------------------------------------------------


CIFAR10_IN_SHARED = Path("data") / "cifar10" / "cifar10-jpeg.tar.gz"


def cifar10_archive() -> Path:
    """The CIFAR-10 tarball: ``$VARGEN_CIFAR10`` if set, else the first of
    ``$VARGEN_SHARED/data/cifar10/cifar10-jpeg.tar.gz`` and ``../shared/data/cifar10/cifar10-jpeg.tar.gz`` (next to
    the checkout) that exists; if none does, the first candidate, so that the error names it."""
    if os.environ.get("VARGEN_CIFAR10"):
        return Path(os.environ["VARGEN_CIFAR10"])
    shared = [Path(os.environ["VARGEN_SHARED"])] if os.environ.get("VARGEN_SHARED") else []
    candidates = [root / CIFAR10_IN_SHARED for root in (*shared, REPO.parent / "shared")]
    return next((c for c in candidates if c.is_file()), candidates[0])


def dataset_spec(source: str) -> tuple[Path, str] | None:
    """``"cifar10-train"`` or ``"archive@split"`` -> (archive, split); anything else -> None."""
    if source in ("cifar10-train", "cifar10-test"):
        return cifar10_archive(), source.split("-")[1]
    if "@" in source:
        path, split = source.rsplit("@", 1)
        return Path(path), split
    return None


def check_source(source) -> None:
    """``FileNotFoundError`` for a source that is no folder, no .npz and no dataset name (before any weights load)."""
    if dataset_spec(str(source)) is None and not Path(source).is_dir() and not (
            Path(source).suffix == ".npz" and Path(source).is_file()):
        raise FileNotFoundError(f"image source not found: {source} (a folder, an .npz, 'cifar10-train', "
                                f"'cifar10-test' or 'archive@split')")


def incomplete_run(source) -> str:
    """For a folder whose manifest names more samples than it holds (an interrupted run): what is missing; else ""."""
    from ..outputs import read_manifest

    if not isinstance(source, (str, os.PathLike)):  # images given as an array or tensor
        return ""
    folder = Path(source)
    manifest = read_manifest(folder) if folder.is_dir() else None
    expected = (manifest or {}).get("count", (manifest or {}).get("num_samples"))
    if not isinstance(expected, int):
        return ""
    found = sum(1 for p in sample_files(folder) if p.suffix.lower() in IMAGE_EXT)
    return f"{folder} holds {found:,} of the {expected:,} samples its manifest names" if found < expected else ""


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Images under ``folder`` (recursive, sorted); ``*.tmp.*`` files (a save that was interrupted before
    its rename) are not samples and are left out. A folder with a ``manifest.json`` (``vargen generate``,
    ``eval/sample.py``) is a folder of samples: only its sample files count (:mod:`vargen.outputs`), not a grid,
    the manifest or other files beside them."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        files = sorted(p for p in sample_files(folder) if p.suffix.lower() in IMAGE_EXT)
    else:
        files = sorted(p for p in folder.rglob("*")
                       if p.suffix.lower() in IMAGE_EXT and p.is_file() and ".tmp." not in p.name)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXT)}) found under {folder}")
    return files


def read_npz_images(path: str | os.PathLike) -> np.ndarray:
    with np.load(path) as data:
        if "arr_0" not in data:
            raise ValueError(f"{path} has no images under 'arr_0' (keys: {', '.join(data.files)})")
        images = data["arr_0"]
    check_images(images, str(path))
    return images


def check_images(images: np.ndarray, what: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")


def center_crop_resize(img: Image.Image, size: int) -> np.ndarray:
    """ADM's ``center_crop_arr``: box-downsample while large, bicubic to ``size`` on the short side, centre crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def load_file(path: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # truncated or not an image: name the file
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err}); delete or regenerate it") from None
    return np.asarray(img) if size is None or img.size == (size, size) else center_crop_resize(img, size)


def folder_image_size(files: list[Path]) -> tuple[int, int]:
    """The one (width, height) of every image in ``files`` (read from the headers), or a ``ValueError``
    counting the files of each size: a folder scores only if all its images have one size."""
    sizes: dict[tuple[int, int], list[Path]] = {}
    for f in files:
        try:
            with Image.open(f) as im:
                sizes.setdefault(im.size, []).append(f)
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"{f}: not a readable image ({type(err).__name__}: {err}); delete or regenerate it") from None
    if len(sizes) > 1:  # the odd ones out last: often a grid or a stray file, not samples to resize
        counts = [f"{len(fs)} {'is' if len(fs) == 1 else 'are'} {w}x{h} ({fs[0]}{', ...' if len(fs) > 1 else ''})"
                  for (w, h), fs in sorted(sizes.items(), key=lambda item: -len(item[1]))]
        raise ValueError(f"images of different sizes in one folder: {'; '.join(counts)}; move out the files that "
                         f"are not samples, or pass size=N (--image-size N) to centre-crop and resize them all")
    return next(iter(sizes))


def iter_images(source, batch_size: int = 100, size: int | None = None) -> Iterator[np.ndarray]:
    """uint8 ``[b, H, W, 3]`` batches of a source, in a fixed order.

    ``size``: centre-crop and resize folder images to ``size`` x ``size`` (ADM's reference preprocessing;
    needed for ImageNet-style folders of mixed sizes); dataset archives are resized to it.
    """
    if isinstance(source, np.ndarray):
        check_images(source, "image array")
        for i in range(0, source.shape[0], batch_size):
            yield source[i:i + batch_size]
        return
    spec = dataset_spec(str(source))
    if spec is not None:
        from ..train.data import load_images

        images, _, _ = load_images(spec[0], spec[1], size=size or (32 if str(source).startswith("cifar10-") else None))
        for i in range(0, images.shape[0], batch_size):
            yield images[i:i + batch_size].permute(0, 2, 3, 1).numpy()
        return
    path = Path(source)
    if path.suffix == ".npz":
        yield from iter_images(read_npz_images(path), batch_size)
        return
    check_source(path)
    files = image_files(path)
    if size is None:
        folder_image_size(files)  # the whole folder, before any features are computed
    for i in range(0, len(files), batch_size):
        yield np.stack([load_file(f, size) for f in files[i:i + batch_size]])


def fingerprint(source) -> str:
    """Changes when the source's content may have changed (names, sizes, modification times)."""
    h = hashlib.sha1()
    if isinstance(source, np.ndarray):
        h.update(source.tobytes())
        return h.hexdigest()[:16]
    spec = dataset_spec(str(source))
    path = spec[0] if spec else Path(source)
    h.update(f"{path.resolve()}|{spec[1] if spec else ''}".encode())
    files = [path] if path.is_file() else image_files(path)
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


@dataclass
class FeatureStats:
    mu: np.ndarray
    sigma: np.ndarray
    features: str  # the feature network's name ("inception", "cifar10-features", "callable-...")
    mode: str | None  # "clean" / "legacy_tensorflow"; None when a file does not say (ADM's TF stats)
    count: int
    source: str = ""
    feats: np.ndarray | None = None
    probs: np.ndarray | None = None
    weights: str | None = None  # the extractor's cache key (name + weights hash), when known

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"features": self.features, "mode": self.mode, "count": self.count, "source": self.source,
                "weights": self.weights}
        arrays = {"mu": self.mu, "sigma": self.sigma, "vargen_meta": np.array(json.dumps(meta))}
        if self.feats is not None:
            arrays["feats"] = self.feats.astype(np.float32)
        if self.probs is not None:
            arrays["probs"] = self.probs.astype(np.float32)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        with np.load(path) as data:
            if "mu" not in data or "sigma" not in data:
                raise ValueError(f"{path} holds no statistics ('mu' and 'sigma'); keys: {', '.join(data.files)}")
            meta = json.loads(str(data["vargen_meta"])) if "vargen_meta" in data else \
                {"features": "inception", "mode": None, "count": 0, "source": f"{path} (ADM-style mu/sigma)"}
            return cls(data["mu"], data["sigma"], meta["features"], meta["mode"], meta["count"], meta["source"],
                       data["feats"].astype(np.float64) if "feats" in data else None,
                       data["probs"].astype(np.float64) if "probs" in data else None, meta.get("weights"))


def extract(source, extractor, mode: str, batch_size: int = 100, size: int | None = None,
            progress=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (and class probabilities, if the network has them) of every image of a source."""
    feats, probs = [], []
    for batch in iter_images(source, batch_size, size):
        f, p = extractor(batch, mode)
        feats.append(f)
        if p is not None:
            probs.append(p)
        if progress:
            progress(sum(len(x) for x in feats))
    if not feats:
        raise ValueError(f"no images in {source}")
    return np.concatenate(feats), (np.concatenate(probs) if probs else None)


def default_cache_dir() -> Path:
    return Path(os.environ.get("VARGEN_CACHE", Path.home() / ".cache" / "vargen")) / "fid-stats"


def compute_stats(source, extractor, mode: str, cache_dir: str | os.PathLike | None = None,
                  batch_size: int = 100, size: int | None = None) -> FeatureStats:
    """Statistics of a source, read from / written to ``cache_dir`` when one is given.

    The cache key covers the source (paths, sizes, modification times), the feature network and the
    mode, so a changed folder or another network never reuses old statistics.
    """
    name = source if isinstance(source, str) else str(getattr(source, "name", "array"))
    cache = None
    if cache_dir is not None:
        key = hashlib.sha1(f"{fingerprint(source)}|{extractor.cache_key}|{mode}|{size}".encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"{Path(str(name)).name or 'source'}-{extractor.name}-{mode}-{key}.npz"
        if cache.is_file():
            return FeatureStats.load(cache)
    feats, probs = extract(source, extractor, mode, batch_size, size)
    from .metrics import mean_cov

    mu, sigma = mean_cov(feats)
    stats = FeatureStats(mu, sigma, extractor.name, mode, int(feats.shape[0]), str(name), feats, probs,
                         extractor.cache_key)
    if cache is not None:
        stats.save(cache)
    return stats


def export_npz(folder: str | os.PathLike, out: str | os.PathLike, limit: int | None = None) -> Path:
    """Pack a folder of samples into an ADM-style ``.npz``: uint8 ``[N, H, W, 3]`` under ``arr_0``."""
    files = image_files(folder)[:limit]
    images = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8) for f in files])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, arr_0=images)
    return out
