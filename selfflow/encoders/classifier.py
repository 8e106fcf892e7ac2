"""The eval classifier as a frozen REPA encoder (``objective.encoder = "classifier:PATH"``).

Why: DINOv2 needs its weight file and 224 px inputs; at CPU scale (16 px shapes, 28 px
Fashion-MNIST) the small CNN that :mod:`selfflow.eval.classifier` trains once per dataset for the
Fréchet proxy is a cheap stand-in that already separates the classes. Any run's cached classifier
serves.

``PATH`` is a cache entry (``<cache_dir>/<kind>-<H>x<W>x<C>-<hash>/``) or the
``classifier.safetensors`` in it; the ``info.json`` beside the weights gives the architecture
(widths, feature width, number of classes) and the image shape it was trained on. Make one with
``python -m selfflow.eval.classifier CONFIG --cache-dir DIR`` (prints ``entry``), with
:func:`classifier_entry`, or take the one a run's evaluation cached in ``RUN_DIR/../.eval_cache``.

Features: the last convolution's GELU map, (B, ⌈H/8⌉, ⌈W/8⌉, widths[-1]) = (B, 2, 2, 128) for
16 px images (strides 1, 2, 2, 2, "SAME" padding): the spatial map before the classifier's global
pool, so every token position gets its own target. Inputs are images in [-1, 1], the classifier's
training range, of its channel count; other sizes than its training images work (it is
convolutional) but are not what it learnt.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
from flax import nnx

from selfflow.encoders.base import Encoder
from selfflow.errors import ParamsError

__all__ = ["classifier_encoder", "conv_feature_map"]


def conv_feature_map(model, images: jax.Array) -> jax.Array:
    """(B, H, W, C) in [-1, 1] -> (B, ⌈H/8⌉, ⌈W/8⌉, widths[-1]): the eval classifier's convolutions
    and GELUs, without its pool and heads (:meth:`SmallCNN.features` minus the last three steps)."""
    x = images
    for conv in model.convs:
        x = nnx.gelu(conv(x))
    return x


def _entry_files(path: Path) -> tuple[Path, Path]:
    from selfflow.eval.classifier_net import INFO_FILE, WEIGHTS_FILE

    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(
            f"no eval classifier at {weights}: expected a cache entry directory of "
            f"selfflow.eval.classifier (or its {WEIGHTS_FILE})"
        )
    info = weights.parent / INFO_FILE
    if not info.is_file():
        raise ValueError(
            f"{weights} is not an eval classifier cache entry: no {INFO_FILE} beside it "
            "(it gives the architecture and the image shape)"
        )
    return weights, info


def classifier_encoder(path: str | Path) -> Encoder:
    """The classifier of the cache entry ``path`` as an :class:`Encoder` (see the module docstring).
    FileNotFoundError / ValueError / ParamsError, one line naming the file, for a missing file or
    one that is not that classifier."""
    from safetensors.numpy import load_file

    from selfflow.eval.classifier_net import Settings, SmallCNN
    from selfflow.params import assign_params

    if not str(path):
        raise ValueError("expected classifier:PATH, an eval classifier cache entry or its weights file")
    weights, info_file = _entry_files(Path(path))
    try:
        info = json.loads(info_file.read_text())
        settings = Settings(**{**info["settings"], "widths": tuple(info["settings"]["widths"])})
        shape, num_classes = tuple(info["dataset"]["shape"]), int(info["dataset"]["num_classes"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{info_file} is not an eval classifier's info.json ({type(e).__name__}: {e})"
        ) from None
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds for a bad file
        raise ParamsError(
            f"{weights} is not a readable safetensors file ({' '.join(str(e).split())})"
        ) from None
    abstract = nnx.eval_shape(
        lambda: SmallCNN(
            shape[-1], num_classes, widths=settings.widths, feature_dim=settings.feature_dim, rngs=nnx.Rngs(0)
        )
    )
    model = assign_params(abstract, tensors, str(weights))
    graphdef, state = nnx.split(model)
    return Encoder(
        "classifier",
        lambda params, images: conv_feature_map(nnx.merge(graphdef, params), images),
        state,
        feature_dim=settings.widths[-1],
        channels=(shape[-1],),
    )
