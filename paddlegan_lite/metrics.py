"""Sample-quality metrics on feature vectors, in numpy float64: FID, KID, IS, precision/recall and
class accuracy. No Paddle here: features come from `extractors.py`, orchestration from
`evaluation.py`.
"""

from __future__ import annotations

import numpy as np

# The papers' settings: the defaults below, which evaluation.py uses
KID_SUBSETS = 100  # Binkowski et al. 2018: 100 subsets of 1,000
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10  # Salimans et al. 2016
PR_NEIGHBOURS = 3  # Kynkaanniemi et al. 2019: k = 3


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D] -> (mean [D], covariance [D, D] with N - 1 in the denominator), float64."""
    features = _as_matrix(features, "features")
    if len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def sqrtm_psd(matrix) -> np.ndarray:
    """The symmetric square root [D, D] of a symmetric positive semi-definite matrix [D, D].

    Eigenvalues that rounding pushed below zero are taken as zero, so a singular covariance
    (fewer samples than dimensions, dead features) is fine.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    mu [D], sigma [D, D]. d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)); the last
    trace is the sum of square roots of the eigenvalues of sqrt(S1) S2 sqrt(S1), which has the
    eigenvalues of S1 S2 but is symmetric PSD, so its eigenvalues are real and stable even when
    S1 S2 is near-singular (where a general sqrtm returns complex noise).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    dim = mu1.shape[0]
    if mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, "
            f"{sigma2.shape}"
        )
    root1 = sqrtm_psd(sigma1)
    product = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return max(float(value), 0.0)  # a distance: anything below 0 is rounding (~1e-12)


def polynomial_kernel(x, y) -> np.ndarray:
    """KID's kernel k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018): [N, D], [M, D] -> [N, M]."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(k_xx, k_yy, k_xy) -> float:
    """Unbiased MMD^2 from kernel matrices [m, m], [m, m], [m, m] of equal-size samples.

    Within-sample sums leave out the diagonal (k(x_i, x_i) is not a pair of independent draws);
    the cross term keeps every pair, since x_i and y_i are independent.
    """
    m = k_xx.shape[0]
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def kernel_inception_distance(
    features1,
    features2,
    num_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets.

    features1 [N1, D], features2 [N2, D]. Each of `num_subsets` rounds draws `subset_size`
    vectors (capped at min(N1, N2)) from each set without replacement. Returns (mean, std over
    subsets). Unbiased: about 0 (and sometimes below) for two samples of one distribution.
    """
    f1, f2 = _as_matrix(features1, "features1"), _as_matrix(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sizes differ: {f1.shape[1]} and {f2.shape[1]}")
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 vectors, got {m}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        values.append(
            mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))
        )
    return float(np.mean(values)), float(np.std(values))


def inception_score(probs, splits: int = IS_SPLITS) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split of probs [N, K]; returns (mean, std over splits).

    From 1 (every image gets the same class distribution) to K (confident and uniform over
    classes). Rows must be probability distributions (softmax outputs). Comparable with published
    values only for Inception probabilities computed as the reference does: softmax of pool3
    times the fc weights, without the fc bias (`extractors.FIDInceptionV3`).
    """
    probs = _as_matrix(probs, "probs")
    if probs.min() < 0 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probs rows must be non-negative and sum to 1 (softmax outputs)")
    if not 1 <= splits <= len(probs):
        raise ValueError(f"splits must be in 1..{len(probs)} (the number of rows), got {splits}")
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0)
        kl = _xlogx(part).sum(axis=1) - part @ _safe_log(marginal)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def precision_recall(real_features, fake_features, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of real [N, D] vs fake [M, D].

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour in the same set. Precision: share of fake points inside the real manifold (are
    samples realistic?). Recall: share of real points inside the fake manifold (is the data
    covered?). Returns (precision, recall), each in [0, 1].
    """
    real = _as_matrix(real_features, "real_features")
    fake = _as_matrix(fake_features, "fake_features")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"need more than k={k} points in each set, got {len(real)}, {len(fake)}")
    precision = _inside_manifold(fake, real, _knn_sq_radii(real, k)).mean()
    recall = _inside_manifold(real, fake, _knn_sq_radii(fake, k)).mean()
    return float(precision), float(recall)


def class_accuracy(scores, labels) -> float:
    """Share of rows of scores [N, K] (probabilities or logits: same argmax) whose top class is
    the label [N] the generator was asked for."""
    scores = np.asarray(scores)
    labels = np.asarray(labels).reshape(-1)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} do not match")
    return float(np.mean(scores.argmax(axis=1) == labels))


def class_histogram(scores, num_classes: int | None = None) -> np.ndarray:
    """Share of rows of scores [N, K] whose top class is k, for k < K (or num_classes): a
    generator collapsed onto a few classes shows near-zero shares for the rest."""
    scores = _as_matrix(scores, "scores")
    k = scores.shape[1] if num_classes is None else num_classes
    counts = np.bincount(scores.argmax(axis=1), minlength=k)[:k]
    return counts / max(len(scores), 1)


# ---------------------------------------------------------------------- helpers
def _as_matrix(array, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2 or not len(array):
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {array.shape}")
    return array


def _xlogx(p: np.ndarray) -> np.ndarray:
    return p * _safe_log(p)  # 0 log 0 = 0


def _safe_log(p: np.ndarray) -> np.ndarray:
    return np.log(np.where(p > 0, p, 1.0))


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)]."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.clip(d2, 0.0, None)


_ROWS_PER_CHUNK = 1024  # bounds the distance matrix to 1024 x N float64 at a time


def _knn_sq_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Squared distance [N] from each point to its k-th nearest other point."""
    radii = np.empty(len(points))
    for start in range(0, len(points), _ROWS_PER_CHUNK):
        d2 = _sq_distances(points[start : start + _ROWS_PER_CHUNK], points)
        radii[start : start + len(d2)] = np.partition(d2, k, axis=1)[:, k]  # column 0: itself
    return radii


def _inside_manifold(queries: np.ndarray, centres: np.ndarray, sq_radii: np.ndarray) -> np.ndarray:
    """bool [len(queries)]: is each query within some centre's ball?"""
    inside = np.empty(len(queries), dtype=bool)
    for start in range(0, len(queries), _ROWS_PER_CHUNK):
        d2 = _sq_distances(queries[start : start + _ROWS_PER_CHUNK], centres)
        inside[start : start + len(d2)] = (d2 <= sq_radii[None, :]).any(axis=1)
    return inside
