"""The numbers: FID (clean-fid's ``frechet_distance``), KID, k-NN precision/recall, Inception Score."""
from __future__ import annotations

import numpy as np


def mean_cov(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {feats.shape[0]}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """clean-fid's Fréchet distance between two Gaussians (its ``eps`` fallback for singular products)."""
    from cleanfid.fid import frechet_distance as fd

    if np.shape(mu1) != np.shape(mu2):
        raise ValueError(f"feature dimensions differ: {np.shape(mu1)} vs {np.shape(mu2)} (different feature networks?)")
    return float(max(0.0, fd(mu1, sigma1, mu2, sigma2)))


def kid(feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> float:
    """Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, averaged over subsets.

    The same estimator as clean-fid's ``kernel_distance``, with its own seeded generator instead of
    numpy's global one, so the number is reproducible.
    """
    rng = np.random.default_rng(seed)
    n = feats1.shape[1]
    m = min(feats1.shape[0], feats2.shape[0], max_subset_size)
    t = 0.0
    for _ in range(num_subsets):
        x = feats2[rng.choice(feats2.shape[0], m, replace=False)]
        y = feats1[rng.choice(feats1.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def knn_radii(feats: np.ndarray, k: int = 3, batch: int = 256) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = np.empty(feats.shape[0])
    for i in range(0, feats.shape[0], batch):
        d = _pairwise_sq(feats[i:i + batch], feats)
        radii[i:i + batch] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return radii


def _inside_manifold(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray, batch: int = 256) -> np.ndarray:
    inside = np.empty(points.shape[0], dtype=bool)
    for i in range(0, points.shape[0], batch):
        inside[i:i + batch] = (_pairwise_sq(points[i:i + batch], manifold) <= radii[None, :]).any(1)
    return inside


def _subsample(x: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    if n is None or x.shape[0] <= n:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(x.shape[0], n, replace=False))]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, max_samples: int | None = 10_000,
                     seed: int = 0) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): k-NN balls around each set's points.

    precision: fraction of generated samples inside the real manifold;
    recall: fraction of real samples inside the generated manifold. k=3 as the ADM evaluator.
    Each set is subsampled (seeded) to ``max_samples``: the cost is quadratic in the set sizes, and
    the ADM evaluator's reference batches hold 10,000 images.
    """
    real = _subsample(np.asarray(real, dtype=np.float64), max_samples, seed)
    fake = _subsample(np.asarray(fake, dtype=np.float64), max_samples, seed + 1)
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _inside_manifold(fake, real, knn_radii(real, k)).mean()
    recall = _inside_manifold(real, fake, knn_radii(fake, k)).mean()
    return float(precision), float(recall)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E[KL(p(y|x) || p(y))]) over ``splits`` folds: (mean, std). The folds are taken over a fixed random
    permutation of the samples (as torch-fidelity does), so a folder written class by class does not put one class in
    each fold (which would score about 1)."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs[np.random.default_rng(0).permutation(probs.shape[0])]
    splits = max(1, min(splits, probs.shape[0]))
    scores = []
    for part in np.array_split(probs, splits):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))
