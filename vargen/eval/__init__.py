"""Evaluation: FID, KID, precision/recall and IS through clean-fid's pieces, with explicit modes.

    from vargen.eval import compute_fid
    result = compute_fid("samples/", "cifar10-train", features="cifar10-features", mode="clean")
    print(result)   # every number printed with its feature network and mode

``a`` is the generated set and ``b`` the reference (precision is about ``a`` inside ``b``'s manifold,
IS is of ``a``). Either side may be a folder, a dataset name, an ``.npz`` (ADM images under
``arr_0``, or ``mu``/``sigma`` statistics), a uint8 array, or :class:`FeatureStats`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .features import (CIFAR_LABEL, INCEPTION_URL, MODES, FeatureExtractor, MissingWeightsError,
                       get_extractor, inception_path)
from .metrics import frechet_distance, inception_score, kid, precision_recall
from .stats import (FeatureStats, compute_stats, default_cache_dir, export_npz, incomplete_run, iter_images,
                    read_npz_images)

__all__ = ["compute_fid", "EvalResult", "get_stats", "FeatureStats", "FeatureExtractor", "get_extractor",
           "export_npz", "read_npz_images", "iter_images", "frechet_distance", "kid", "precision_recall",
           "inception_score", "MissingWeightsError", "inception_path", "INCEPTION_URL", "MODES", "CIFAR_LABEL",
           "RELIABLE_COUNT"]


RELIABLE_COUNT = 2048  # fewer images than this: the figures are unreliable (and FID is biased in the count)


@dataclass
class EvalResult:
    fid: float
    features: str
    label: str
    mode: str
    n_a: int
    n_b: int
    kid: float | None = None
    precision: float | None = None
    recall: float | None = None
    inception_score: float | None = None
    inception_score_std: float | None = None
    note: str = ""

    def __str__(self) -> str:
        parts = [f"FID {self.fid:.3f}"]
        if self.kid is not None:
            parts.append(f"KID {self.kid:.5f}")
        if self.precision is not None:
            parts.append(f"precision {self.precision:.3f} recall {self.recall:.3f}")
        if self.inception_score is not None:
            parts.append(f"IS {self.inception_score:.3f} ± {self.inception_score_std:.3f}")
        text = " | ".join(parts) + f"  [{self.label}; mode={self.mode}; {self.n_a} vs {self.n_b} images]"
        return text + (f"  ({self.note})" if self.note else "")

    @property
    def warning(self) -> str:
        """A loud line when the samples (or a reference of known size) number fewer than :data:`RELIABLE_COUNT`;
        "" otherwise."""
        small = [f"{n:,} {what}" for n, what in ((self.n_a, "samples"), (self.n_b, "reference images"))
                 if 0 < n < RELIABLE_COUNT]
        if not small:
            return ""
        return (f"WARNING: only {' and '.join(small)}: FID, KID, precision / recall and IS are unreliable below "
                f"{RELIABLE_COUNT:,} images (biased and noisy: FID falls as the count grows); compare numbers only at "
                f"equal counts, and report them on 10,000-50,000 samples")

    def to_dict(self) -> dict:
        return {**asdict(self), "warning": self.warning}


def _is_stats_file(source) -> bool:
    if not isinstance(source, (str, os.PathLike)) or Path(source).suffix != ".npz" or not Path(source).is_file():
        return False
    with np.load(source) as data:
        return "mu" in data.files and ("vargen_meta" in data.files or "arr_0" not in data.files)


def get_stats(source, extractor: FeatureExtractor, mode: str, cache_dir=None, batch_size: int = 100,
              size: int | None = None) -> FeatureStats:
    """Statistics of a source: given, read from a stats ``.npz``, or computed (and cached)."""
    if isinstance(source, FeatureStats):
        return source
    if _is_stats_file(source):
        return FeatureStats.load(source)
    return compute_stats(source, extractor, mode, cache_dir, batch_size, size)


def _check_comparable(a: FeatureStats, b: FeatureStats, extractor: FeatureExtractor, mode: str) -> str:
    """Raise when statistics were measured differently from each other or from ``extractor``;
    return a note when that is unknown (ADM-style files record neither network weights nor mode)."""
    for s in (a, b):
        if s.features != extractor.name:
            raise ValueError(f"statistics of {s.source} come from the feature network {s.features!r}, "
                             f"not {extractor.name!r}")
        if s.weights is not None and s.weights != extractor.cache_key:
            raise ValueError(f"statistics of {s.source} were computed with other weights of {s.features!r} "
                             f"({s.weights} vs {extractor.cache_key})")
        if s.mode is not None and s.mode != mode:
            raise ValueError(f"statistics of {s.source} were computed in mode={s.mode!r}, not {mode!r}; "
                             f"numbers of different modes are not comparable")
    if a.mode is None or b.mode is None:
        return ("reference mu/sigma without a recorded mode (ADM files come from TF Inception, closest to "
                "mode='legacy_tensorflow')")
    return ""


def compute_fid(a, b, features="inception", mode: str = "clean", device="cpu", weights=None,
                cache_dir: str | os.PathLike | None | bool = None, batch_size: int = 100, size: int | None = None,
                with_kid: bool = True, with_pr: bool = True, with_is: bool = True, k: int = 3,
                verbose: bool = True) -> EvalResult:
    """FID of ``a`` (generated) against ``b`` (reference), plus KID, precision/recall and IS when possible.

    features: "inception" (clean-fid's network from a local file; ``weights=`` or
        ``$VARGEN_INCEPTION``), "clip", "cifar10-features", or a callable float [B,3,H,W] in [0,255] ->
        features or (features, probs).
    mode: "clean" or "legacy_tensorflow", always explicit in the result.
    cache_dir: where statistics of folders/datasets are cached; ``True`` means ``~/.cache/vargen/fid-stats``.
        Nothing is cached by default for callables (their name does not identify their weights).
    KID, precision/recall need the features of both sides (not just ``mu``/``sigma``); IS needs class
    probabilities of ``a``. Missing inputs leave those fields ``None``.
    """
    extractor = get_extractor(features, mode, device, weights)
    if cache_dir is True or (cache_dir is None and not extractor.name.startswith("callable")):
        cache_dir = default_cache_dir()
    cache_dir = cache_dir or None
    sa = get_stats(a, extractor, mode, cache_dir, batch_size, size)
    sb = get_stats(b, extractor, mode, cache_dir, batch_size, size)
    note = "; ".join(filter(None, [_check_comparable(sa, sb, extractor, mode), *map(incomplete_run, (a, b))]))
    result = EvalResult(frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), extractor.name, extractor.label, mode,
                        sa.count, sb.count, note=note)
    if sa.feats is not None and sb.feats is not None:
        if with_kid:
            result.kid = kid(sa.feats, sb.feats)
        if with_pr:
            result.precision, result.recall = precision_recall(sb.feats, sa.feats, k)
    if with_is and sa.probs is not None:
        result.inception_score, result.inception_score_std = inception_score(sa.probs)
    if verbose:
        print(result)
        if result.warning:
            print(result.warning, file=sys.stderr)
    return result
