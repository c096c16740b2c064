"""FID, KID, IS, precision/recall and class accuracy against closed forms and straightforward
reference computations: each metric must vanish where it should and reach the known value where
the distributions differ."""

import numpy as np
import pytest
import scipy.linalg
from scipy.special import softmax

from paddlegan_lite.metrics import (
    class_accuracy,
    class_histogram,
    feature_stats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    polynomial_kernel,
    precision_recall,
    sqrtm_psd,
)


def random_spd(rng, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def trace_sqrt_2x2(m: np.ndarray) -> float:
    """tr sqrt(M) for a 2x2 matrix with non-negative eigenvalues l1, l2:
    (sqrt(l1) + sqrt(l2))^2 = tr M + 2 sqrt(det M)."""
    return float(np.sqrt(np.trace(m) + 2.0 * np.sqrt(np.linalg.det(m))))


def scipy_fid(mu1, s1, mu2, s2) -> float:
    """The usual reference (pytorch-fid's formula): scipy's general sqrtm of S1 S2."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


# ---------------------------------------------------------------------- FID
def test_fid_of_diagonal_gaussians_matches_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # commuting covariances: tr sqrt(S1 S2) = sum sqrt(a_i b_i)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert expected == pytest.approx(1 + 6.25 + 4 + 1)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu2, np.diag(b), mu1, np.diag(a)) == pytest.approx(expected, rel=1e-12)


def test_fid_of_non_commuting_2x2_gaussians_matches_closed_form():
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([0.3, -1.0]), np.array([-0.2, 0.4])
    expected = (
        np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_2x2(s1 @ s2)
    )
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-12)


def test_fid_is_zero_for_identical_statistics_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(8), random_spd(rng, 8)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    shift = np.zeros(8)
    shift[3] = 2.0  # same covariance: the distance is exactly the squared mean shift
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(4.0, rel=1e-9)


def test_fid_of_samples_converges_to_the_population_value():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 0.0]), np.array([1.0, 0.0])
    s1 = np.array([[1.0, 0.5], [0.5, 1.0]])
    s2 = np.array([[2.0, -0.4], [-0.4, 0.5]])
    expected = 1.0 + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_2x2(s1 @ s2)
    x = rng.multivariate_normal(mu1, s1, size=200_000)
    y = rng.multivariate_normal(mu2, s2, size=200_000)
    got = frechet_distance(*feature_stats(x), *feature_stats(y))
    assert got == pytest.approx(expected, abs=0.02)


def test_fid_matches_scipy_sqrtm_on_random_features():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 32)) @ rng.standard_normal((32, 32))
    y = rng.standard_normal((400, 32)) @ rng.standard_normal((32, 32)) + 0.3
    mu1, s1 = feature_stats(x)
    mu2, s2 = feature_stats(y)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        scipy_fid(mu1, s1, mu2, s2), rel=1e-9
    )
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(
        scipy_fid(mu1, s1, mu2, s2), rel=1e-9
    )


def test_fid_with_singular_covariances():
    # fewer samples than dimensions, and a dead feature: both covariances are rank-deficient
    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 20))
    x[:, 5] = 0.0
    mu, sigma = feature_stats(x)
    assert np.linalg.matrix_rank(sigma) < 20
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    # commuting singular pair: diag(a, 0) vs diag(b, c) -> (sqrt a - sqrt b)^2 + c
    s1, s2 = np.diag([4.0, 0.0]), np.diag([1.0, 2.0])
    assert frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(1.0 + 2.0)


def test_feature_stats_are_float64_mean_and_unbiased_covariance():
    x = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]], dtype=np.float32)
    mu, sigma = feature_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, [3.0, 4.0])
    np.testing.assert_allclose(sigma, [[4.0, 2.0], [2.0, 4.0]])  # N - 1 denominator
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(x[:1])


def test_sqrtm_psd_squares_back():
    rng = np.random.default_rng(4)
    sigma = random_spd(rng, 6)
    root = sqrtm_psd(sigma)
    np.testing.assert_allclose(root @ root, sigma, atol=1e-12)
    np.testing.assert_allclose(root, scipy.linalg.sqrtm(sigma).real, atol=1e-10)


# ---------------------------------------------------------------------- KID
def reference_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The U-statistic written out pair by pair."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (a @ b / d + 1.0) ** 3

    within_x = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    within_y = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return within_x / (m * (m - 1)) + within_y / (m * (m - 1)) - 2.0 * cross / (m * m)


def masked_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The same U-statistic for larger sets: whole kernel matrices, diagonal masked out."""
    m, d = len(x), x.shape[1]
    off = ~np.eye(m, dtype=bool)
    k_xx = (np.einsum("id,jd->ij", x, x) / d + 1.0) ** 3
    k_yy = (np.einsum("id,jd->ij", y, y) / d + 1.0) ** 3
    k_xy = (np.einsum("id,jd->ij", x, y) / d + 1.0) ** 3
    return k_xx[off].mean() + k_yy[off].mean() - 2.0 * k_xy.mean()


def test_kid_on_one_full_subset_matches_the_pairwise_reference():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((25, 6))
    y = rng.standard_normal((25, 6)) * 1.5 + 0.7
    mean, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=25)
    assert mean == pytest.approx(reference_mmd2_unbiased(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-15)
    reverse, _ = kernel_inception_distance(y, x, num_subsets=1, subset_size=25)
    assert reverse == pytest.approx(mean, rel=1e-10)


@pytest.mark.slow  # hundreds of KID subsets
def test_kid_is_unbiased_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((4000, 8)), rng.standard_normal((4000, 8))
    mean, std = kernel_inception_distance(x, y, num_subsets=200, subset_size=200, seed=1)
    assert mean == pytest.approx(0.0, abs=4 * std / np.sqrt(200))
    # the biased (V-statistic) estimate on the same subsets would sit clearly above 0
    sub_x, sub_y = x[:200], y[:200]
    biased = (
        polynomial_kernel(sub_x, sub_x).mean()
        + polynomial_kernel(sub_y, sub_y).mean()
        - 2 * polynomial_kernel(sub_x, sub_y).mean()
    )
    assert biased > 10 * std / np.sqrt(200)

    # shifted: the subset average estimates the U-statistic of the whole sets
    x, shifted = x[:1500], rng.standard_normal((1500, 8)) + 0.5
    big, big_std = kernel_inception_distance(x, shifted, num_subsets=50, subset_size=200, seed=1)
    assert big == pytest.approx(masked_mmd2_unbiased(x, shifted), abs=4 * big_std / np.sqrt(50))
    assert big > 20 * big_std / np.sqrt(50)


def test_kid_caps_the_subset_at_the_smaller_set():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((12, 4)) + 1.0
    mean, _ = kernel_inception_distance(x, y, num_subsets=1, subset_size=1000, seed=0)
    sub = np.random.default_rng(0).choice(30, 12, replace=False)
    assert mean == pytest.approx(reference_mmd2_unbiased(x[sub], y), rel=1e-10)


# ---------------------------------------------------------------------- IS
def test_inception_score_of_uniform_and_one_hot_predictions():
    k = 10
    uniform = np.full((200, k), 1.0 / k)
    assert inception_score(uniform, splits=4) == pytest.approx((1.0, 0.0))
    one_hot = np.eye(k)[np.tile(np.arange(k), 20)]  # every split holds every class equally
    assert inception_score(one_hot, splits=4) == pytest.approx((float(k), 0.0))


def test_inception_score_of_a_two_class_mixture_matches_closed_form():
    p = 0.8
    probs = np.array([[p, 1 - p]] * 50 + [[1 - p, p]] * 50)
    # marginal (1/2, 1/2): KL = p log 2p + (1 - p) log 2(1 - p) for every row
    expected = np.exp(p * np.log(2 * p) + (1 - p) * np.log(2 * (1 - p)))
    assert inception_score(probs, splits=1) == pytest.approx((expected, 0.0))


def test_inception_score_matches_a_loop_reference():
    rng = np.random.default_rng(8)
    probs = softmax(rng.standard_normal((300, 7)) * 2, axis=1)
    scores = []
    for part in np.array_split(probs, 3):
        marginal = part.mean(axis=0)
        kl = [np.sum(row * (np.log(row) - np.log(marginal))) for row in part]
        scores.append(np.exp(np.mean(kl)))
    assert inception_score(probs, splits=3) == pytest.approx((np.mean(scores), np.std(scores)))
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(probs * 2, splits=3)


# ---------------------------------------------------------------------- precision / recall
def clusters(rng, centres, per_cluster: int) -> np.ndarray:
    return np.concatenate([c + rng.uniform(-1, 1, (per_cluster, 2)) for c in centres])


def test_precision_recall_on_constructed_sets():
    rng = np.random.default_rng(9)
    real = clusters(rng, [(0.0, 0.0), (100.0, 0.0)], 30)
    assert precision_recall(real, real, k=3) == pytest.approx((1.0, 1.0))
    # mode dropping: samples are realistic but cover one of the two clusters
    dropped = real[:30]
    assert precision_recall(real, dropped, k=3) == pytest.approx((1.0, 0.5))
    # half the samples are far from any data: precision halves, the data stays covered
    half_bad = np.concatenate([real, real + np.array([0.0, 500.0])])
    assert precision_recall(real, half_bad, k=3) == pytest.approx((0.5, 1.0))
    far = real + np.array([0.0, 1000.0])
    assert precision_recall(real, far, k=3) == pytest.approx((0.0, 0.0))


def test_precision_recall_ball_radius_is_the_kth_neighbour():
    real = np.array([[0.0], [1.0], [3.0], [7.0]])  # radii with k=1: 1, 1, 2, 4
    fake = np.array([[5.0], [11.5], [-1.0], [13.0]])
    # 5 is within 7's ball (4), 11.5 not (4.5 > 4), -1 within 0's ball, 13 not
    precision, _ = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(0.5)


# ---------------------------------------------------------------------- class accuracy
def test_class_accuracy_takes_probabilities_or_logits():
    logits = np.array([[2.0, 0.1, -1.0], [0.0, 3.0, 1.0], [0.5, 0.2, 0.9], [1.0, 0.0, 0.0]])
    labels = np.array([0, 1, 1, 2])
    assert class_accuracy(logits, labels) == pytest.approx(0.5)
    assert class_accuracy(softmax(logits, axis=1), labels) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="do not match"):
        class_accuracy(logits, labels[:3])


def test_class_histogram_counts_top_classes_and_shows_a_collapse():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(class_histogram(scores), [0.5, 0.25, 0.25])
    collapsed = np.tile([0.0, 1.0, 0.0], (8, 1))  # every sample the same class
    np.testing.assert_allclose(class_histogram(collapsed), [0.0, 1.0, 0.0])
    # classes the scores never name still get a (zero) share when num_classes says so
    np.testing.assert_allclose(class_histogram(scores, num_classes=4), [0.5, 0.25, 0.25, 0.0])
