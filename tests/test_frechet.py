"""Fréchet distance, Inception Score and improved precision/recall on synthetic features.

The references are computed here from the definitions, independently of selfflow.eval.frechet.
"""

import numpy as np
import pytest
import scipy.linalg

from selfflow.eval import frechet
from selfflow.eval.frechet import (
    FeatureExtractor,
    compare,
    frechet_distance,
    frechet_from_features,
    gaussian_stats,
    inception_score,
    manifold_radii,
    precision_recall,
)


def _features(seed, n=400, d=24, shift=0.0):
    """Correlated Gaussian features: N(shift, A A^T) with a random mixing matrix A."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


def _reference_fd(a, b):
    """||mu_a - mu_b||^2 + tr(Sa) + tr(Sb) - 2 tr((Sa^1/2 Sb Sa^1/2)^1/2), float64.

    The symmetric form has the same trace as sqrtm(Sa Sb) (similar matrices) but involves only
    square roots of symmetric PSD matrices, so it is an independent computation.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a.T), np.cov(b.T)
    ra = scipy.linalg.sqrtm(sa).real
    cross = scipy.linalg.sqrtm(ra @ sb @ ra).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(cross))


def test_gaussian_stats_float64_unbiased():
    x = _features(0, n=50, d=6).astype(np.float32)
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert mu.shape == (6,) and sigma.shape == (6, 6)
    centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)


def test_fd_matches_scipy_reference():
    a, b = _features(1), _features(2, shift=0.3)
    fd = frechet_from_features(a, b)
    ref = _reference_fd(a, b)
    assert ref > 1.0  # a real difference, not a value near 0
    assert fd == pytest.approx(ref, rel=1e-6)
    # Third route: tr sqrt(Sa Sb) = sum of square roots of its (real, non-negative) eigenvalues.
    sa, sb = np.cov(a.T), np.cov(b.T)
    eig = np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)
    ref_eig = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(eig).sum()
    assert fd == pytest.approx(ref_eig, rel=1e-6)


def test_fd_identical_sets_is_zero():
    a = _features(3)
    assert abs(frechet_from_features(a, a.copy())) <= 1e-6


def test_fd_symmetric_and_mean_shift():
    a, b = _features(4), _features(5)
    assert frechet_from_features(a, b) == pytest.approx(frechet_from_features(b, a), rel=1e-9)
    # Equal covariances: the distance is exactly the squared mean difference.
    mu, sigma = gaussian_stats(a)
    delta = np.random.default_rng(6).normal(size=mu.shape)
    fd = frechet_distance(mu, sigma, mu + delta, sigma)
    assert fd == pytest.approx(float(delta @ delta), rel=1e-6)
    # Same through features: shifting every sample shifts the mean and keeps the covariance.
    assert frechet_from_features(a, a + delta) == pytest.approx(float(delta @ delta), rel=1e-6)
    # And it grows with the shift.
    assert frechet_from_features(a, a + 2 * delta) > frechet_from_features(a, a + delta)


def test_fd_singular_covariance_is_finite():
    a, b = _features(7, n=10, d=64), _features(8, n=12, d=64)  # rank 9 and 11 covariances
    fd = frechet_from_features(a, b)
    assert np.isfinite(fd) and fd > 0
    # Agrees with the explicitly regularised computation.
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    off = np.eye(64) * 1e-6
    assert fd == pytest.approx(frechet_distance(mu1, s1 + off, mu2, s2 + off), rel=1e-4)


def test_fd_eps_retry_when_sqrtm_not_finite(monkeypatch):
    """The first square root failing (as on singular products with some SciPy versions) triggers
    the eps*I retry with a warning, as in pytorch-fid / the ADM evaluator."""
    mu1, s1 = gaussian_stats(_features(9, n=10, d=32))
    mu2, s2 = gaussian_stats(_features(10, n=10, d=32))
    calls = []
    real_sqrtm = scipy.linalg.sqrtm

    def flaky(m):
        calls.append(m.copy())
        if len(calls) == 1:
            return np.full_like(m, np.inf)
        return real_sqrtm(m)

    monkeypatch.setattr(frechet, "_sqrtm", flaky)
    with pytest.warns(RuntimeWarning, match="adding 1e-06 to the diagonal"):
        fd = frechet_distance(mu1, s1, mu2, s2)
    assert len(calls) == 2
    off = np.eye(32) * 1e-6
    np.testing.assert_allclose(calls[1], (s1 + off) @ (s2 + off))
    assert np.isfinite(fd) and fd > 0


def test_fd_large_imaginary_component_raises(monkeypatch):
    mu, s = gaussian_stats(_features(11, d=4))
    monkeypatch.setattr(frechet, "_sqrtm", lambda m: m + 0.5j * np.eye(len(m)))
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(mu, s, mu, s)


def test_fd_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"mu1 \(3,\), mu2 \(4,\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"sigma1 \(3, 3\), sigma2 \(2, 2\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(5, 4\)"):
        frechet_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"\(10,\)"):
        frechet_from_features(np.zeros(10), np.zeros((5, 4)))


def test_inception_score_uniform_is_one():
    c = 7
    probs = np.full((60, c), 1.0 / c)
    assert inception_score(probs, splits=3) == pytest.approx(1.0, abs=1e-12)
    # Identical logits for every sample (any values): also 1.
    logits = np.tile(np.random.default_rng(0).normal(size=c), (60, 1))
    assert inception_score(logits, splits=3) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_confident_balanced_is_num_classes():
    c, splits, per = 10, 5, 4
    labels = np.tile(np.arange(c), splits * per)  # every contiguous split holds each class `per` times
    one_hot = np.eye(c)[labels]
    assert inception_score(one_hot, splits=splits) == pytest.approx(c, rel=1e-12)
    assert inception_score(one_hot, split_size=c * per) == pytest.approx(c, rel=1e-12)
    # Confident logits (softmax within exp(-60) of one-hot) give the same to 1e-9.
    assert inception_score(60.0 * one_hot, splits=splits) == pytest.approx(c, rel=1e-9)


def test_inception_score_matches_adm_formula():
    """ADM's compute_inception_score: chunks of split_size, exp(mean sum p (log p - log mean p))."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(230, 1008)) * 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(p), 50):  # 4 chunks of 50 and one of 30
        part = p[i : i + 50]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    ref = float(np.mean(scores))
    assert inception_score(logits, split_size=50) == pytest.approx(ref, rel=1e-10)
    assert inception_score(p, split_size=50) == pytest.approx(ref, rel=1e-10)
    assert inception_score(p, split_size=50, from_logits=False) == pytest.approx(ref, rel=1e-10)
    with pytest.raises(ValueError, match="not probability distributions"):
        inception_score(logits, from_logits=False)


def test_manifold_radii_batched_equals_bruteforce():
    x = np.random.default_rng(2).normal(size=(53, 5))
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    ref = np.sort(d2, axis=1)[:, 3]  # index 0 is the sample itself
    for bs in (7, 16, 1000):
        np.testing.assert_allclose(manifold_radii(x, k=3, batch_size=bs), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(manifold_radii(x, k=3, batch_size=7, dtype=np.float64), ref, rtol=1e-12)


def test_precision_recall_identical_and_disjoint():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(300, 8))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    far = rng.normal(size=(300, 8)) + 1000.0
    assert precision_recall(real, far) == (0.0, 0.0)
    # Batching does not change the answer.
    fake = rng.normal(size=(250, 8)) * 1.2
    assert precision_recall(real, fake, batch_size=64) == precision_recall(real, fake, batch_size=10_000)


def test_precision_recall_half_of_the_modes():
    """Fake samples from 5 of 10 well-separated real modes: realistic (precision ~1) but covering
    half of the real data (recall ~0.5)."""
    rng = np.random.default_rng(0)
    angles = np.arange(10) * 2 * np.pi / 10
    centers = 100 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    real = np.concatenate([c + rng.normal(size=(200, 2)) for c in centers])
    fake = np.concatenate([c + rng.normal(size=(400, 2)) for c in centers[:5]])
    precision, recall = precision_recall(real, fake)
    assert precision >= 0.95
    assert recall == pytest.approx(0.5, abs=0.03)
    assert recall <= 0.5  # the five missing modes are never covered


def test_compare_and_feature_extractor_protocol():
    real, fake = _features(12, n=120, d=8), _features(13, n=100, d=8, shift=0.5)
    out = compare(real, fake)
    assert set(out) == {"fd", "precision", "recall"}
    assert out["fd"] == pytest.approx(frechet_from_features(real, fake))
    assert (out["precision"], out["recall"]) == precision_recall(real, fake)
    assert all(isinstance(v, float) for v in out.values())

    def extractor(images):
        return np.asarray(images, np.float32).reshape(len(images), -1)

    assert isinstance(extractor, FeatureExtractor)
