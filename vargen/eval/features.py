"""Feature networks for FID / KID / precision-recall / IS, with clean-fid's resizing.

A :class:`FeatureExtractor` maps uint8 images ``[B, H, W, 3]`` to ``(features [B, D], probs [B, C] or
None)``. Resizing happens outside the network in ``mode="clean"`` (clean-fid's PIL bicubic on float
images) and inside it in ``mode="legacy_tensorflow"`` (bilinear, as TF Inception does). ``probs``
(class probabilities, for the Inception Score) exist for Inception and vargen's CIFAR-10 network.

- ``"inception"``: clean-fid's TorchScript Inception-v3 (``inception-2015-12-05.pt``) from a local file.
- ``"clip"``: clean-fid's CLIP ViT-B/32 (needs the ``clip`` package and its cached weights).
- ``"cifar10-features"``: vargen's small CIFAR-10 classifier (vargen/zoo/cifar10-features); numbers
  are labelled "measured with vargen's CIFAR-10 features" and are not Inception FID.
- any callable: float ``[B, 3, H, W]`` in [0, 255] -> features, or ``(features, probs)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

MODES = ("clean", "legacy_tensorflow")
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
CIFAR_FEATURES_DIR = Path(__file__).resolve().parents[1] / "zoo" / "cifar10-features"


@dataclass
class FeatureExtractor:
    """``fn``: float ``[B, 3, S, S]`` in [0, 255] -> features or ``(features, probs)``.

    name: identifies the features in cache keys and reports ("inception", "cifar10-features", ...).
    label: the phrase printed next to every number ("Inception-v3 (clean-fid)", ...).
    input_size: the side the network wants (images are resized to it), or ``None`` (no resize).
    resize: a custom uint8/float HWC numpy -> float HWC resize that replaces the mode's resize.
    """

    name: str
    fn: Callable
    label: str
    input_size: int | None = None
    resize_inside: bool = False
    resize: Callable | None = None
    device: str | torch.device = "cpu"
    weights_id: str = ""  # identifies the weights (a file hash) so cached statistics follow them

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.weights_id}" if self.weights_id else self.name

    def prepare(self, images: np.ndarray, mode: str) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, S, S]`` in [0, 255], resized as ``mode`` says."""
        check_mode(mode)
        if self.resize is not None:
            arr = np.stack([self.resize(im) for im in images]).astype(np.float32)
        elif self.input_size is None or images.shape[1:3] == (self.input_size, self.input_size) or self.resize_inside:
            arr = images.astype(np.float32)
        elif mode == "clean":
            from cleanfid.resize import make_resizer

            resize = make_resizer("PIL", False, "bicubic", (self.input_size, self.input_size))
            arr = np.stack([resize(im) for im in images]).astype(np.float32)
        else:  # legacy_tensorflow for a network without in-graph resize: bilinear, as TF does
            x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
            return x.to(self.device)
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(self.device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.fn(self.prepare(images, mode))
        feats, probs = out if isinstance(out, tuple) else (out, None)
        feats = feats.float().cpu().numpy().astype(np.float64)
        return feats, (probs.float().cpu().numpy().astype(np.float64) if probs is not None else None)


def file_id(path: Path) -> str:
    """A short content hash of a weights file (so statistics cached with other weights are not reused)."""
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:10]


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (chosen explicitly; numbers of different modes are not "
                         f"comparable), got {mode!r}")


# ----------------------------------------------------------------------------------------------
# Inception (clean-fid's TorchScript network)
# ----------------------------------------------------------------------------------------------


def inception_path(weights: str | os.PathLike | None = None) -> Path:
    """Where the Inception weights are expected: ``weights`` (file or folder), ``$VARGEN_INCEPTION``,
    or clean-fid's own download location ``/tmp/inception-2015-12-05.pt``."""
    p = Path(weights or os.environ.get("VARGEN_INCEPTION") or f"/tmp/{INCEPTION_FILE}")
    return p / INCEPTION_FILE if p.is_dir() or p.suffix != ".pt" else p


class MissingWeightsError(FileNotFoundError):
    """A feature network's weights are not on disk (there is no download at run time)."""


def missing_inception_message(path: Path) -> str:
    return (f"Inception weights not found: {path}. vargen does not download at run time; get the file from "
            f"{INCEPTION_URL} and put it at {path} (or pass weights=/path/to/{INCEPTION_FILE}, "
            f"--inception-weights on the command line, or set VARGEN_INCEPTION).")


def inception_extractor(mode: str = "clean", weights: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu") -> FeatureExtractor:
    """clean-fid's ``InceptionV3W`` from a local file; ``resize_inside`` follows ``mode``.

    ``probs`` come from the network's own 1008-way output layer without its bias, softmaxed, as
    StyleGAN2-ADA's IS does with this file.
    """
    check_mode(mode)
    path = inception_path(weights)
    if path.name != INCEPTION_FILE:
        raise ValueError(f"the Inception weights file must be named {INCEPTION_FILE} (clean-fid loads it by name), got {path}")
    if not path.is_file():
        raise MissingWeightsError(missing_inception_message(path))
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W(str(path.parent), download=False, resize_inside=mode == "legacy_tensorflow")
    model = model.to(device).eval()
    head = getattr(model.base, "output", None)

    def fn(x):
        feats = model(x)
        probs = F.linear(feats, head.weight).softmax(-1) if head is not None else None
        return feats, probs

    return FeatureExtractor("inception", fn, f"Inception-v3 (clean-fid TorchScript, mode={mode})",
                            input_size=299, resize_inside=mode == "legacy_tensorflow", device=device,
                            weights_id=file_id(path))


# ----------------------------------------------------------------------------------------------
# CLIP (clean-fid's CLIP-FID) and vargen's CIFAR-10 network
# ----------------------------------------------------------------------------------------------


def clip_extractor(device: str | torch.device = "cpu") -> FeatureExtractor:
    """CLIP ViT-B/32 image embeddings with CLIP's 224 bicubic resize + centre crop (CLIP-FID)."""
    try:
        from cleanfid.clip_features import CLIP_fx, img_preprocess_clip
    except ImportError as err:
        raise ImportError(f"CLIP features need OpenAI's `clip` package ({err}); install it with "
                          f"`pip install git+https://github.com/openai/CLIP.git` and pre-seed ~/.cache/clip "
                          f"with ViT-B-32.pt when offline") from None
    fx = CLIP_fx("ViT-B/32", device=str(device))
    return FeatureExtractor("clip", fx, "CLIP ViT-B/32 (clean-fid CLIP-FID)", input_size=224,
                            resize=img_preprocess_clip, device=device)


CIFAR_LABEL = "measured with vargen's CIFAR-10 features (not Inception FID)"


def cifar10_extractor(folder: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> FeatureExtractor:
    """vargen's CIFAR-10 classifier: penultimate layer -> features, softmax -> probs (32x32 input)."""
    from ..train.features import load_feature_net

    folder = Path(folder or CIFAR_FEATURES_DIR)
    net = load_feature_net(folder).to(device)

    def fn(x):
        f = net.features(x)
        return f, net.logits_from_features(f).softmax(-1)

    return FeatureExtractor("cifar10-features", fn, CIFAR_LABEL, input_size=net.config.image_size, device=device,
                            weights_id=file_id(folder / "model.safetensors"))


def callable_extractor(fn: Callable, name: str | None = None, input_size: int | None = None,
                       device: str | torch.device = "cpu") -> FeatureExtractor:
    name = name or getattr(fn, "__name__", None) or type(fn).__name__
    return FeatureExtractor(f"callable-{name}", fn, f"custom features `{name}`", input_size=input_size, device=device)


def get_extractor(features: str | Callable | FeatureExtractor = "inception", mode: str = "clean",
                  device: str | torch.device = "cpu", weights: str | os.PathLike | None = None) -> FeatureExtractor:
    """``features``: "inception", "clip", "cifar10-features", a callable, or an extractor."""
    check_mode(mode)
    if isinstance(features, FeatureExtractor):
        return features
    if callable(features):
        return callable_extractor(features, device=device)
    if features == "inception":
        return inception_extractor(mode, weights, device)
    if features == "clip":
        return clip_extractor(device)
    if features in ("cifar10-features", "cifar10"):
        return cifar10_extractor(weights, device)
    raise ValueError(f"unknown features {features!r}: 'inception', 'clip', 'cifar10-features' or a callable")
