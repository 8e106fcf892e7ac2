"""Sample-quality metrics on feature vectors: Fréchet distance, Inception Score, precision/recall.

Everything here works on *features* (``(n, d)`` arrays) or class predictions, never on images, so
any feature extractor can be plugged in (:class:`FeatureExtractor`): the InceptionV3 of
:mod:`selfflow.eval.inception` for numbers comparable with papers (FID, IS, improved
precision/recall), or the project's small per-dataset classifier (:mod:`selfflow.eval.classifier`)
for a cheap proxy.

Definitions (and where they come from):

* Fréchet distance between the Gaussians fitted to two feature sets (Heusel et al. 2017):
  ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))``. :func:`frechet_distance` follows the
  numerics of pytorch-fid's ``calculate_frechet_distance`` and the ADM evaluator's
  ``FIDStatistics.frechet_distance`` (openai/guided-diffusion ``evaluations/evaluator.py``, both
  after TTUR's ``fid.py``): ``scipy.linalg.sqrtm`` of the product in float64; when the result is
  not finite, retry with ``eps * I`` added to both covariances; a complex result whose diagonal has
  an imaginary part above 1e-3 is an error, otherwise its real part is used. Statistics are
  ``np.mean(axis=0)`` and ``np.cov(rowvar=False)`` (unbiased, ``n - 1``), as both do.
* Inception Score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` per split, averaged over
  splits (the ADM evaluator's ``compute_inception_score``, after openai/improved-gan).
* Improved precision and recall (Kynkäänniemi et al. 2019), as the ADM evaluator's
  ``ManifoldEstimator`` with its defaults (k = 3, no radius clamping): each sample's radius is its
  *squared* Euclidean distance to its k-th nearest neighbour in its own set (the sample itself
  counts as the 0-th); precision is the fraction of fake samples within the radius of at least one
  real sample, recall the fraction of real samples within the radius of at least one fake sample
  (``distance <= radius``).
"""

from __future__ import annotations

import math
import warnings
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.linalg

__all__ = [
    "FeatureExtractor",
    "compare",
    "frechet_distance",
    "frechet_from_features",
    "gaussian_stats",
    "inception_score",
    "manifold_radii",
    "pairwise_sq_distances",
    "precision_recall",
]


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything that maps a batch of samples to one feature vector per sample.

    ``extractor(samples) -> (n, d)`` floating-point array, where ``samples`` is a batch of ``n``
    images ``(n, H, W, C)`` or clips ``(n, T, H, W, C)`` in whatever value range the extractor
    documents (the Inception one takes uint8). The metrics in this module only ever see the
    features, so an extractor is the single thing to swap between "real FID" and a proxy.
    """

    def __call__(self, samples) -> np.ndarray: ...


def _features_2d(features, name: str) -> np.ndarray:
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a (n, d) feature array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set, in float64.

    Args:
      features: ``(n, d)`` array, one feature vector per sample, ``n >= 2``.

    Returns:
      ``(mu, sigma)``: ``mu`` of shape ``(d,)`` and ``sigma`` of shape ``(d, d)``, the unbiased
      (``n - 1``) covariance ``np.cov(features, rowvar=False)`` as pytorch-fid and the ADM evaluator
      compute it. Float64 because the Fréchet distance subtracts traces of 2048x2048 matrices that
      are large compared to their difference.
    """
    x = _features_2d(features, "features").astype(np.float64, copy=False)
    n = x.shape[0]
    if n < 2:
        raise ValueError(
            f"gaussian_stats needs at least 2 samples to estimate a covariance, got "
            f"features of shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError(
            f"features of shape {x.shape} contain non-finite values ({int((~np.isfinite(x)).sum())} entries)"
        )
    mu = x.mean(axis=0)
    sigma = np.atleast_2d(np.cov(x, rowvar=False))
    return mu, sigma


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """Matrix square root (a seam so tests can force the non-finite retry path)."""
    return scipy.linalg.sqrtm(a)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 @ sigma2))``, the formula and
    numerics of pytorch-fid / the ADM evaluator (see the module docstring): float64, SciPy's
    ``sqrtm`` of the product; if that is not finite, a warning and a retry with ``eps * I`` added
    to both covariances; an imaginary diagonal above 1e-3 raises ``ValueError``, a smaller one is
    rounding and dropped.

    One addition to the reference: if the first square root has a large imaginary part (where the
    reference raises), the ``eps`` offset is tried once too before raising. A product of two
    covariance matrices has real non-negative eigenvalues, so a large imaginary part means
    numerical trouble from near-singularity, which is what the offset is for.

    Args:
      mu1, mu2: means, shape ``(d,)``.
      sigma1, sigma2: covariances, shape ``(d, d)``.
      eps: diagonal offset for the retry.

    Returns:
      The distance as a Python float (can be very slightly negative from rounding when the two
      distributions are equal).

    Raises:
      ValueError: shapes that disagree (named in the message), non-finite inputs, or a square root
        whose imaginary component stays large.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.ndim != 1 or mu2.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors must be 1-D and of the same length: mu1 {mu1.shape}, mu2 {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"covariances must be ({d}, {d}) to match the means of shape {mu1.shape}: "
            f"sigma1 {sigma1.shape}, sigma2 {sigma2.shape}"
        )
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} of shape {arr.shape} contains non-finite values")

    diff = mu1 - mu2
    offset = np.eye(d) * eps

    def imaginary_too_large(m: np.ndarray) -> bool:
        return np.iscomplexobj(m) and not np.allclose(np.diagonal(m).imag, 0, atol=1e-3)

    covmean = _sqrtm(sigma1 @ sigma2)
    offset_used = False
    if not np.isfinite(covmean).all() or imaginary_too_large(covmean):
        why = "is not finite" if not np.isfinite(covmean).all() else "has a large imaginary component"
        warnings.warn(
            f"Fréchet distance: sqrtm(sigma1 @ sigma2) {why} (singular product?); "
            f"adding {eps} to the diagonal of both covariances",
            RuntimeWarning,
            stacklevel=2,
        )
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        offset_used = True
    if not np.isfinite(covmean).all():
        raise ValueError(
            f"Fréchet distance: sqrtm of the ({d}, {d}) covariance product is not "
            f"finite even with eps={eps} added to the diagonals"
        )
    if np.iscomplexobj(covmean):
        if imaginary_too_large(covmean):
            m = float(np.max(np.abs(covmean.imag)))
            raise ValueError(
                f"Fréchet distance: sqrtm of the covariance product has an imaginary "
                f"component of {m:.3g} (above 1e-3 on the diagonal"
                f"{', after the eps offset' if offset_used else ''}); the covariances "
                f"are probably degenerate: use more samples than feature dimensions "
                f"({d})"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_from_features(a, b, eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians fitted to feature sets ``a (n1, d)`` and ``b (n2, d)``.

    The sample sizes may differ; the feature widths may not. The estimate is biased upwards by
    roughly ``tr(S)/n`` per set, so compare values computed at the same sample sizes.
    """
    a = _features_2d(a, "a")
    b = _features_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: a has shape {a.shape}, b has shape {b.shape}")
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    return frechet_distance(mu1, s1, mu2, s2, eps=eps)


def _log_probs(x: np.ndarray, from_logits: bool | None) -> np.ndarray:
    """Rows of class log-probabilities from logits or probabilities (float64, (n, C))."""
    if from_logits is None:
        # Probabilities if every row is a distribution; anything else is taken as logits.
        from_logits = not (np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-4))
    if from_logits:
        shifted = x - x.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    if np.any(x < 0) or not np.allclose(x.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(
            "from_logits=False but the rows are not probability distributions "
            "(negative entries or rows not summing to 1)"
        )
    with np.errstate(divide="ignore"):
        return np.log(x)  # log 0 = -inf; only ever multiplied by p = 0 below


def inception_score(
    logits_or_probs, splits: int = 10, *, split_size: int | None = None, from_logits: bool | None = None
) -> float:
    """Inception Score: mean over splits of ``exp(mean_x KL(p(y|x) || p(y)))``.

    ``p(y)`` is the mean of ``p(y|x)`` over the split. Same definition as the ADM evaluator's
    ``compute_inception_score`` (openai/guided-diffusion), which splits the samples into contiguous
    chunks of ``split_size=5000`` (10 splits for the usual 50,000 samples) and returns the mean of
    the per-split scores. Pass ``split_size=5000`` to reproduce that chunking exactly; by default
    the samples are cut into ``splits`` contiguous, near-equal parts (``np.array_split``), the
    same thing for 50,000 samples.

    Which predictions: the ADM evaluator (like openai/improved-gan's original IS code) takes
    ``softmax(pool3 @ W)`` over all **1008** outputs of the TF Inception graph, where ``W`` is the
    weight of ``softmax/logits/MatMul`` - i.e. the classifier *without its bias* and without
    cutting to 1000 classes; torch-fidelity/torchmetrics call these the "logits_unbiased"
    features. With :mod:`selfflow.eval.inception` that is
    ``extract(model, images, logits_bias=False)[1]``.

    One numerical difference from the reference: ``0 * log 0`` counts as 0 here (the reference
    evaluates ``p * log p`` literally, which is NaN for an exact zero probability; softmax
    outputs of real logits are never exactly zero in float32 at these scales, so scores agree).

    Args:
      logits_or_probs: ``(n, C)`` logits, or probabilities whose rows sum to 1.
      splits: number of contiguous splits (ignored when ``split_size`` is given).
      split_size: chunk size as in the ADM evaluator (the last chunk may be shorter).
      from_logits: ``True``/``False`` to say what the input is; ``None`` (default) treats the
        input as probabilities when every row is non-negative and sums to 1 (within 1e-4), as
        logits otherwise.

    Returns:
      The mean score over splits: 1 for predictions identical for every sample, ``C`` at most
      (confident, class-balanced predictions over ``C`` classes).
    """
    x = _features_2d(logits_or_probs, "logits_or_probs").astype(np.float64, copy=False)
    n = x.shape[0]
    if n == 0:
        raise ValueError("inception_score needs at least one sample, got shape (0, C)")
    if not np.isfinite(x).all():
        raise ValueError(f"logits_or_probs of shape {x.shape} contain non-finite values")
    logp = _log_probs(x, from_logits)
    p = np.exp(logp)
    if split_size is not None:
        if split_size < 1:
            raise ValueError(f"split_size must be >= 1, got {split_size}")
        bounds = [(i, min(i + split_size, n)) for i in range(0, n, split_size)]
    else:
        if not 1 <= splits <= n:
            raise ValueError(f"splits must be between 1 and the number of samples ({n}), got {splits}")
        # np.array_split sizes: the first n % splits parts get one extra sample.
        sizes = [n // splits + (1 if i < n % splits else 0) for i in range(splits)]
        edges = np.concatenate([[0], np.cumsum(sizes)])
        bounds = list(zip(edges[:-1], edges[1:]))
    scores = []
    for lo, hi in bounds:
        part_p, part_logp = p[lo:hi], logp[lo:hi]
        # p * (log p - log p(y)), with 0 * anything = 0 (p = 0 entries carry no mass; there the
        # logs may be -inf, and a class no sample predicts has log p(y) = -inf too).
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = part_logp - np.log(part_p.mean(axis=0, keepdims=True))
        kl_terms = np.zeros_like(part_p)
        np.multiply(part_p, log_ratio, out=kl_terms, where=part_p > 0)
        scores.append(math.exp(float(kl_terms.sum(axis=1).mean())))
    return float(np.mean(scores))


def pairwise_sq_distances(u, v, dtype=np.float32) -> np.ndarray:
    """Squared Euclidean distances ``(len(u), len(v))``, computed as ``|u|^2 - 2 u.v + |v|^2``.

    Clamped at 0 (rounding can make the expansion slightly negative), as the ADM evaluator's
    ``_batch_pairwise_distances``. ``dtype`` is the computation precision: float32 (default) or
    float64. (The ADM evaluator tries float16 first for speed and falls back to float32 on
    overflow; float16 is not offered here because it moves borderline in/out decisions.)
    """
    u = np.asarray(u, dtype=dtype)
    v = np.asarray(v, dtype=dtype)
    nu = np.einsum("ij,ij->i", u, u)[:, None]
    nv = np.einsum("ij,ij->i", v, v)[None, :]
    d = nu - 2 * (u @ v.T) + nv
    return np.maximum(d, 0, out=d)


def manifold_radii(features, k: int = 3, batch_size: int = 4096, dtype=np.float32) -> np.ndarray:
    """Squared distance from each sample to its k-th nearest neighbour in the same set, ``(n,)``.

    The sample itself is the 0-th neighbour (distance 0), so with ``k=3`` this is the third
    nearest *other* sample (unless there are duplicates), as in the ADM evaluator's
    ``manifold_radii`` (``np.partition`` of each row of distances, column ``k``).

    Memory is bounded by ``batch_size**2`` distances: rows are processed in blocks, and across the
    column blocks only the ``k + 1`` smallest distances of each row are kept, so 50,000 x 2048
    features need ~64 MiB of distances (float32, default block size) instead of the full
    50,000^2 matrix. Time is dominated by the ``n^2 d`` multiply-adds of the matrix products.
    """
    x = _features_2d(features, "features")
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and n - 1 = {n - 1} for {n} samples, got k={k}")
    radii = np.empty(n, dtype=np.float64)
    for r0 in range(0, n, batch_size):
        rows = x[r0 : r0 + batch_size]
        best = None  # (rows, k + 1) smallest distances seen so far
        for c0 in range(0, n, batch_size):
            block = pairwise_sq_distances(rows, x[c0 : c0 + batch_size], dtype=dtype)
            cand = block if best is None else np.concatenate([best, block], axis=1)
            kk = min(k + 1, cand.shape[1])
            best = np.partition(cand, kk - 1, axis=1)[:, :kk]
        radii[r0 : r0 + len(rows)] = np.sort(best, axis=1)[:, k]
    return radii


def _covered(points, ref, ref_radii, batch_size: int, dtype) -> np.ndarray:
    """Boolean ``(len(points),)``: within ``ref_radii[j]`` (squared) of at least one ``ref[j]``."""
    out = np.zeros(len(points), dtype=bool)
    for r0 in range(0, len(points), batch_size):
        rows = points[r0 : r0 + batch_size]
        hit = np.zeros(len(rows), dtype=bool)
        for c0 in range(0, len(ref), batch_size):
            d = pairwise_sq_distances(rows, ref[c0 : c0 + batch_size], dtype=dtype)
            hit |= np.any(d <= ref_radii[None, c0 : c0 + batch_size].astype(dtype), axis=1)
        out[r0 : r0 + len(rows)] = hit
    return out


def precision_recall(
    real_features, fake_features, k: int = 3, batch_size: int = 4096, dtype=np.float32
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake`` against ``real``.

    Each set defines a manifold: the union of balls around its samples with radius the distance
    to the k-th nearest neighbour (:func:`manifold_radii`). Precision = fraction of fake samples
    inside the real manifold (are the samples realistic?); recall = fraction of real samples
    inside the fake manifold (is the real data's variety covered?). Same definitions and defaults
    as the ADM evaluator's ``ManifoldEstimator`` (k = 3, squared distances compared with ``<=``,
    no percentile clamping of radii); distances in float32 (``dtype=np.float64`` for exactness)
    rather than its float16-first path.

    Args:
      real_features: ``(n_real, d)``.
      fake_features: ``(n_fake, d)``.
      k: neighbourhood size; each set needs more than ``k`` samples.
      batch_size: rows/columns per distance block (memory ~ ``batch_size**2`` floats).

    Returns:
      ``(precision, recall)``, each in [0, 1].
    """
    real = _features_2d(real_features, "real_features")
    fake = _features_2d(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature widths differ: real_features {real.shape}, fake_features {fake.shape}")
    real_radii = manifold_radii(real, k=k, batch_size=batch_size, dtype=dtype)
    fake_radii = manifold_radii(fake, k=k, batch_size=batch_size, dtype=dtype)
    precision = float(_covered(fake, real, real_radii, batch_size, dtype).mean())
    recall = float(_covered(real, fake, fake_radii, batch_size, dtype).mean())
    return precision, recall


def compare(
    real_features, fake_features, *, k: int = 3, eps: float = 1e-6, batch_size: int = 4096
) -> dict[str, float]:
    """All feature-set metrics at once: ``{"fd": ..., "precision": ..., "recall": ...}``.

    ``fd`` is :func:`frechet_from_features` (FID when the features are Inception pool3),
    ``precision``/``recall`` are :func:`precision_recall` with neighbourhood size ``k``.
    """
    fd = frechet_from_features(real_features, fake_features, eps=eps)
    precision, recall = precision_recall(real_features, fake_features, k=k, batch_size=batch_size)
    return {"fd": fd, "precision": precision, "recall": recall}
