"""FD-DINOv2: the Fréchet distance in DINOv2 CLS features (Stein et al. 2023, dgm-eval).

Why: Inception features reward ImageNet-classifier cues and rank modern generators against human
judgement worse than DINOv2's self-supervised features do; the paper reports FD-DINOv2 for its
text-to-image models. The protocol (dgm-eval's ``dinov2`` encoder): ViT-L/14, images resized to
224 x 224 with bicubic interpolation and ImageNet-normalised, the final-LayerNorm CLS token
(1024-d) as the feature, and the Fréchet distance of :mod:`selfflow.eval.frechet`
(pytorch-fid's numerics). Any size of :func:`~selfflow.encoders.dinov2.load_dinov2` works, but only
``facebook/dinov2-large`` numbers compare with published ones. dgm-eval loads the
facebookresearch torch.hub model, whose position-embedding interpolation differs slightly from
transformers' (which this port follows), so expect agreement to a few tenths of a percent, not bits.

Matmuls run at ``"highest"`` precision (no TF32 on GPUs): a metric should not depend on the card.

In ``selfflow eval --dinov2 FILE`` (image layouts) this gives ``image_fd_dinov2`` and its
real-vs-real floor ``image_fd_dinov2_real``. For the 50k-sample ``.npz`` of ``selfflow
fid-samples`` (and ADM reference batches, whose ``arr_0`` holds the images)::

    python -m selfflow.eval.dinov2_fd --dinov2 dinov2-large/model.safetensors REF.npz SAMPLES.npz

which streams ``arr_0`` in batches (a 50k x 256 x 256 x 3 array is never in memory).
"""

from __future__ import annotations

import argparse
import functools
import sys
import zipfile
from collections.abc import Callable, Iterator

import jax
import numpy as np
from flax import nnx

from selfflow.encoders.dinov2 import DEFAULT_SIZE, Dinov2, preprocess
from selfflow.eval.frechet import frechet_from_features

__all__ = ["extract_cls", "fd_dinov2", "feature_extractor", "npz_batches", "npz_features"]


@functools.partial(jax.jit, static_argnames=("graphdef", "size"))
def _cls(graphdef, state, images, size):
    model = nnx.merge(graphdef, state)
    return model(preprocess(images, size, model.arch.patch))["cls"]


def _check_images(images: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"FD-DINOv2 expects NHWC images (N, H, W, 3) or (N, H, W, 1), got shape {images.shape}"
        )
    if images.dtype != np.uint8 and images.size and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError(
            f"float images must be in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]; "
            f"map [-1, 1] images with (x + 1) / 2 or pass uint8"
        )


def extract_cls(model: Dinov2, images, batch_size: int = 50, *, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Normalised CLS features ``(N, D)`` float32 of ``images``, in jitted batches.

    Args:
      model: a :class:`~selfflow.encoders.dinov2.Dinov2` (ViT-L/14 for the published metric).
      images: uint8 ``(N, H, W, 3)`` (or ``(N, H, W, 1)``), or float in [0, 1]; any size, resized
        to ``size`` x ``size`` by :func:`~selfflow.encoders.dinov2.preprocess`.
      batch_size: images per forward pass; the last batch is zero-padded to it (one compilation).
    """
    images = np.asarray(images)
    _check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = images.shape[0]
    graphdef, state = nnx.split(model)
    out = np.empty((n, model.arch.hidden), np.float32)
    bs = min(batch_size, n) if n else 1
    with jax.default_matmul_precision("highest"):
        for start in range(0, n, bs):
            batch = images[start : start + bs]
            m = len(batch)
            if m < bs:
                batch = np.concatenate([batch, np.zeros((bs - m,) + batch.shape[1:], batch.dtype)])
            out[start : start + m] = np.asarray(_cls(graphdef, state, batch, size))[:m]
    return out


def feature_extractor(model: Dinov2, batch_size: int = 50, *, size: int = DEFAULT_SIZE) -> Callable:
    """A :class:`selfflow.eval.frechet.FeatureExtractor`: ``images -> (N, D)`` CLS features."""
    return functools.partial(extract_cls, model, batch_size=batch_size, size=size)


def fd_dinov2(model: Dinov2, real, fake, batch_size: int = 50) -> float:
    """FD-DINOv2 between two image sets (see :func:`extract_cls` for what images may be)."""
    return frechet_from_features(extract_cls(model, real, batch_size), extract_cls(model, fake, batch_size))


def npz_batches(
    path, key: str = "arr_0", batch_size: int = 500, num: int | None = None
) -> Iterator[np.ndarray]:
    """Rows of member ``key`` of an ``.npz`` (stored or compressed), ``batch_size`` at a time,
    read straight from the zip member (only one batch in memory); the first ``num`` if given."""
    with zipfile.ZipFile(path) as z:
        name = f"{key}.npy"
        if name not in z.namelist():
            raise ValueError(f"{path} has no member {key!r} (it has {sorted(z.namelist())})")
        with z.open(name) as f:
            version = np.lib.format.read_magic(f)
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = reader(f)
            if fortran or dtype.hasobject:
                raise ValueError(f"{path}:{key} must be a C-ordered numeric array")
            row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            total = shape[0] if num is None else min(num, shape[0])
            for start in range(0, total, batch_size):
                m = min(batch_size, total - start)
                yield np.frombuffer(f.read(m * row), dtype).reshape((m,) + tuple(shape[1:]))


def npz_features(model: Dinov2, path, batch_size: int = 50, num: int | None = None) -> np.ndarray:
    """:func:`extract_cls` of the images ``arr_0`` of an ``.npz`` (``selfflow fid-samples``, ADM)."""
    chunks = [extract_cls(model, b, batch_size) for b in npz_batches(path, "arr_0", 10 * batch_size, num)]
    return np.concatenate(chunks) if chunks else np.zeros((0, model.arch.hidden), np.float32)


def main(argv: list[str] | None = None) -> int:
    from selfflow.encoders.dinov2 import load_dinov2
    from selfflow.errors import ParamsError

    p = argparse.ArgumentParser(
        prog="python -m selfflow.eval.dinov2_fd",
        description="FD-DINOv2 between the arr_0 images of two .npz files",
    )
    p.add_argument(
        "--dinov2", required=True, metavar="FILE", help="model.safetensors of facebook/dinov2-large"
    )
    p.add_argument("real", help="reference .npz (arr_0: uint8 (N, H, W, 3))")
    p.add_argument("fake", help="sample .npz, e.g. from selfflow fid-samples")
    p.add_argument("--num", type=int, default=None, help="only the first N images of each")
    p.add_argument("--batch-size", type=int, default=50)
    args = p.parse_args(argv)
    try:
        model = load_dinov2(args.dinov2)
        fd = frechet_from_features(
            npz_features(model, args.real, args.batch_size, args.num),
            npz_features(model, args.fake, args.batch_size, args.num),
        )
    except (FileNotFoundError, ParamsError, ValueError) as e:
        print(f"dinov2_fd: error: {e}", file=sys.stderr)
        return 1
    print(f"FD-DINOv2 ({model.arch.name}): {fd:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
