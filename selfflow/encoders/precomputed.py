"""REPA's encoder features computed once into the data, not in every step.

Why: REPA aligns with features of the *clean pixels*. A run on latents (SD-VAE's, as SiT/REPA on
ImageNet) has no pixels in its batches, and a large encoder (DINOv2-B/L) in every step costs as much
as a generator forward. ``selfflow prepare SOURCE --out DIR --features ENCODER`` therefore runs the
frozen encoder once over every example's image and stores y* beside it:

    encoder_features   (gh, gw, D) float32: the encoder's feature map of the clean image, resized to
                       the generator's image token grid (gh, gw) exactly as the in-step encoder does
                       (:func:`selfflow.encoders.registry.encoder_features`), row-major like the tokens

Training with ``objective.kind="repa"`` and ``objective.encoder="precomputed"`` reads those arrays
from the batch (:class:`selfflow.objective.SegmentBatch` ``features``) instead of running an
encoder: the loss is the same number either way (``tests/test_repa_features.py``). The grid is
fixed at prepare time (``--features-grid GH GW``, default: the image's H, W over the config's
``model.patch_size``); a source whose stored grid or width differs from the run's token grid or
``objective.encoder_dim`` is a ConfigError naming the source before anything compiles
(:func:`check_feature_sources`). One generated image segment per layout (REPA's setting): with
several, which features belong to which segment would be ambiguous.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from selfflow.errors import ConfigError

PRECOMPUTED = "precomputed"  # objective.encoder: the features are in the data
FEATURES_KEY = "encoder_features"  # the example key that holds them


def is_precomputed(spec: str) -> bool:
    return spec == PRECOMPUTED


class FeatureWriter:
    """``prepare``'s ``encode``: example -> example plus ``encoder_features`` (gh, gw, D) float32.

    ``spec`` is an ``objective.encoder`` value ("dinov2:PATH", "classifier:PATH", a registered
    name); ``grid`` the token grid (gh, gw). Its repr is what the manifest records as ``encode``."""

    def __init__(self, spec: str, grid: tuple[int, int], image_key: str = "image"):
        from selfflow.encoders.registry import encoder_features, load_encoder

        if is_precomputed(spec):
            raise ConfigError(f"--features={spec!r}: name an encoder to run (e.g. 'dinov2:PATH')")
        gh, gw = (int(g) for g in grid)
        if gh < 1 or gw < 1:
            raise ConfigError(f"--features-grid {gh} {gw}: expected two positive integers")
        self.spec, self.grid, self.image_key = spec, (gh, gw), image_key
        self.encoder = load_encoder(spec)
        self._features = jax.jit(
            lambda params, images: encoder_features(self.encoder, images, self.grid, params)
        )
        self._checked = False

    def __call__(self, example: dict) -> dict:
        from selfflow.encoders.registry import check_encoder

        if self.image_key not in example:
            raise ConfigError(
                f"--features: the source's examples have no {self.image_key!r} (keys: {sorted(example)}); "
                "precomputed encoder features need pixel images"
            )
        image = np.asarray(example[self.image_key], np.float32)
        if not self._checked and self.encoder.feature_dim is not None:  # channels, output rank, width
            check_encoder(self.encoder, image.shape, self.encoder.feature_dim)
        self._checked = True
        y = np.asarray(self._features(self.encoder.params, jnp.asarray(image)[None]))[0]
        return {**example, FEATURES_KEY: y.reshape(*self.grid, y.shape[-1])}

    def __repr__(self) -> str:
        return f"FeatureWriter(encoder={self.spec!r}, grid={list(self.grid)})"


def token_grid(image_shape: tuple[int, ...], patch: int) -> tuple[int, int]:
    """(gh, gw) of an (H, W, C) image cut into ``patch`` x ``patch`` tokens."""
    h, w = image_shape[:2]
    if h % patch or w % patch:
        raise ConfigError(f"image ({h}, {w}) is not divisible by model.patch_size={patch}")
    return h // patch, w // patch


def check_feature_sources(schemas: dict[str, dict], grid: tuple[int, int], dim: int) -> None:
    """Every source of a REPA run with precomputed features stores ``encoder_features`` of shape
    (gh, gw, ``objective.encoder_dim``). ``schemas``: {source name: its schema {key: Field}}.
    One ConfigError naming each source that does not, with what it has and what was expected."""
    want, bad = (*grid, dim), []
    for name, schema in schemas.items():
        field = schema.get(FEATURES_KEY)
        if field is None:
            bad.append(f"source {name!r} has no {FEATURES_KEY!r} (keys: {', '.join(sorted(schema))})")
        elif tuple(field.shape) != want:
            bad.append(f"source {name!r} stores {FEATURES_KEY} of shape {tuple(field.shape)}")
    if bad:
        raise ConfigError(
            f"objective.encoder={PRECOMPUTED!r} expects {FEATURES_KEY} of shape {want} (the image token "
            f"grid x objective.encoder_dim) in every source: {'; '.join(bad)}. Write them with "
            "`selfflow prepare SOURCE --out DIR --features ENCODER --features-grid GH GW`"
        )
