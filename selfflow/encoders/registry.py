"""Frozen image encoders by name: the targets of REPA's alignment loss (``objective.encoder``).

An encoder maps images ``(B, H, W, C)`` float32 in [-1, 1] (the data's range: what
``modalities.image.detokenize`` gives back from clean tokens) to a feature map ``(B, h, w, D)``.
:func:`encoder_features` resizes that map to the generator's image token grid ``(gh, gw)`` and
flattens it row-major, as the image tokens are: ``(B, gh·gw, D)``. The resize is
:func:`selfflow.encoders.dinov2.resize_tokens`, i.e. ``jax.image.resize(method="linear",
antialias=True)``: bilinear with half-pixel centres when enlarging (the eval classifier's 2 x 2 map
of 16 px images onto a 4 x 4 token grid), a triangle filter as wide as the scale when shrinking
(every position contributes, an area-like average), the identity when the grids agree (DINOv2-B at
224 px on SiT-XL/2's 16 x 16 grid of 256 px images, REPA's setting).

``objective.encoder = "name:arg"``; built in:

    dinov2:PATH       the ``model.safetensors`` of facebook/dinov2-<size> (or its directory), run by
                      :mod:`selfflow.encoders.dinov2`: images mapped to [0, 1], resized to
                      224·max(1, H // 256) px per side (REPA's ``preprocess_raw_image``: 224 for 256 px
                      data, 448 for 512 px) and ImageNet-normalised; features = the final-LayerNorm
                      patch tokens (REPA's ``x_norm_patchtokens``), a (size/14)² map of width 384 / 768
                      / 1024 / 1536 (S / B / L / g). Not bit-identical to REPA's targets: REPA
                      normalises, then resizes with torch's bicubic without antialiasing, and runs
                      the original DINOv2 code (position embeddings resampled by timm); here
                      :func:`~selfflow.encoders.dinov2.preprocess` resizes with antialiasing (as PIL)
                      and the port follows transformers' interpolation.
    classifier:PATH   an eval classifier (:mod:`selfflow.eval.classifier`, trained once per dataset
                      and cached): its cache entry directory or the ``classifier.safetensors`` in it.
                      Features = its last convolutional map (B, ⌈H/8⌉, ⌈W/8⌉, 128); see
                      :mod:`selfflow.encoders.classifier`.

Your own encoder: ``register_encoder("mine", factory)`` with ``factory(arg: str)`` returning an
:class:`Encoder` or a Flax NNX module whose ``__call__(images)`` is the feature map (it is split
into a graph and its weights with ``nnx.split``); then ``objective.encoder="mine:ARG"``. Register
before the config is validated (e.g. in the experiment file).

The weights never train: they are not in the train state, :func:`encoder_features` applies
``stop_gradient`` to them and to the features, and the step's gradient w.r.t. them is exactly
zero (``tests/test_repa.py``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from selfflow.encoders.base import Encoder
from selfflow.errors import ConfigError, ParamsError

KEY = "objective.encoder"
REPA_SIZE, REPA_RESOLUTION = 224, 256  # REPA: DINOv2 input 224 · (resolution // 256)


Factory = Callable[[str], "Encoder | nnx.Module"]
ENCODERS: dict[str, Factory] = {}
_LOADED: dict[tuple, Encoder] = {}  # load_encoder's cache: the step and the hooks share one copy


def register_encoder(name: str, factory: Factory) -> Factory:
    """Makes ``objective.encoder = "name:ARG"`` call ``factory(ARG)``, which returns an
    :class:`Encoder` or an NNX module mapping images (B, H, W, C) in [-1, 1] to (B, h, w, D).
    A factory's errors for a bad ARG (FileNotFoundError, ValueError, OSError) become one-line
    ConfigErrors naming the key. Returns ``factory`` (usable as a decorator's body)."""
    if not name or ":" in name:
        raise ValueError(f"encoder name {name!r}: expected a non-empty name without ':'")
    ENCODERS[name] = factory
    for key in [k for k in _LOADED if k[0] == name]:
        del _LOADED[key]
    return factory


def parse_encoder(spec: str) -> tuple[str, str]:
    """``"dinov2:/w/model.safetensors"`` -> ("dinov2", "/w/model.safetensors"); a ConfigError naming
    the key for an unknown name."""
    name, _, arg = spec.partition(":")
    if name not in ENCODERS:
        raise ConfigError(
            f"{KEY}={spec!r}: unknown encoder {name!r}; expected 'name:ARG' with name one of "
            f"{', '.join(ENCODERS)} (selfflow.encoders.registry.register_encoder adds more)"
        )
    return name, arg


def from_module(module: nnx.Module, name: str, **known) -> Encoder:
    """An :class:`Encoder` of an NNX module whose ``__call__(images)`` returns (B, h, w, D): its
    graph is static, its whole state (parameters and any statistics) is ``params``."""
    graphdef, state = nnx.split(module)
    return Encoder(name, lambda params, images: nnx.merge(graphdef, params)(images), state, **known)


def _file_signature(arg: str) -> tuple:
    try:
        st = os.stat(arg)
        return (st.st_mtime_ns, st.st_size)
    except OSError:
        return ()


def load_encoder(spec: str) -> Encoder:
    """The encoder ``spec`` names (``objective.encoder``), built once per process and file version.
    A missing or wrong file is one ConfigError line naming the key and the file."""
    name, arg = parse_encoder(spec)
    key = (name, arg, _file_signature(arg))
    if key in _LOADED:
        return _LOADED[key]
    try:
        made = ENCODERS[name](arg)
    except (FileNotFoundError, ParamsError, ValueError, OSError) as e:
        raise ConfigError(f"{KEY}={spec!r}: {' '.join(str(e).split())}") from None
    if isinstance(made, nnx.Module):
        made = from_module(made, spec)
    if not isinstance(made, Encoder):
        raise TypeError(
            f"encoder factory {name!r} returned {type(made).__name__}, not an Encoder or nnx.Module"
        )
    encoder = dataclasses.replace(made, name=spec)
    _LOADED.clear()  # one encoder at a time: the weights can be large
    _LOADED[key] = encoder
    return encoder


def check_encoder(encoder: Encoder, image_shape: tuple[int, int, int], encoder_dim: int) -> tuple[int, int]:
    """The feature-map grid (h, w) of ``encoder`` on images (H, W, C), from shapes alone
    (``jax.eval_shape``: nothing runs). ConfigError, naming the key, for images of channels it does
    not take, an output that is not (B, h, w, D), an empty grid (h or w < 1: nothing to resize to
    the token grid) or D != ``objective.encoder_dim`` (the REPA projector's output)."""
    h, w, c = image_shape
    if encoder.channels is not None and c not in encoder.channels:
        raise ConfigError(
            f"{KEY}={encoder.name!r} takes images of {' or '.join(map(str, encoder.channels))} channels "
            f"but the run's images have {c}: REPA encodes pixel images inside the step (latents such as "
            "SD-VAE's are not images it can encode; precomputed features are not implemented)"
        )
    try:
        out = jax.eval_shape(encoder.apply, encoder.params, jax.ShapeDtypeStruct((1, h, w, c), jnp.float32))
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"{KEY}={encoder.name!r} cannot encode images of shape ({h}, {w}, {c}): {' '.join(str(e).split())}"
        ) from None
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) != 4 or shape[1] < 1 or shape[2] < 1:
        raise ConfigError(
            f"{KEY}={encoder.name!r} maps ({h}, {w}, {c}) images to shape {shape}, expected a feature "
            "map (B, h, w, D) with h, w >= 1 to resize to the image token grid"
        )
    if shape[3] != encoder_dim:
        raise ConfigError(
            f"{KEY}={encoder.name!r} gives {shape[3]}-dim features but objective.encoder_dim="
            f"{encoder_dim} (the REPA projector's output): set objective.encoder_dim={shape[3]}"
        )
    return shape[1], shape[2]


def encoder_features(encoder: Encoder, images: jax.Array, grid_hw: tuple[int, int], params=None) -> jax.Array:
    """y*: stop-gradient features of clean ``images`` (B, H, W, C) in [-1, 1] on the token grid
    ``grid_hw`` = (gh, gw): (B, gh·gw, D) float32, row-major like the image tokens. ``params``:
    the encoder's weights (default ``encoder.params``; pass them when they are an argument of the
    jitted function rather than its constants)."""
    from selfflow.encoders.dinov2 import resize_tokens

    params = jax.lax.stop_gradient(encoder.params if params is None else params)
    fmap = encoder.apply(params, jax.lax.stop_gradient(images.astype(jnp.float32)))
    b, h, w, d = fmap.shape
    tokens = resize_tokens(fmap.reshape(b, h * w, d).astype(jnp.float32), (h, w), tuple(grid_hw))
    return jax.lax.stop_gradient(tokens)


# ---------------------------------------------------------------------------- built-in encoders


def dinov2_input_size(height: int, width: int) -> tuple[int, int]:
    """REPA's DINOv2 input side: 224·max(1, side // 256) (224 for 256 px data, 448 for 512 px)."""
    return tuple(REPA_SIZE * max(1, s // REPA_RESOLUTION) for s in (height, width))


def _dinov2(arg: str) -> Encoder:
    from selfflow.encoders.dinov2 import load_dinov2, preprocess

    if not arg:
        raise ValueError("expected dinov2:PATH, the model.safetensors of facebook/dinov2-<size>")
    model = load_dinov2(Path(arg))
    graphdef, state = nnx.split(model)
    patch, width = model.arch.patch, model.arch.hidden

    def apply(params, images):
        net = nnx.merge(graphdef, params)
        size = dinov2_input_size(*images.shape[1:3])
        tokens = net(preprocess((images + 1.0) / 2.0, size, patch))["patch_tokens"]
        return tokens.reshape(images.shape[0], size[0] // patch, size[1] // patch, width)

    return Encoder("dinov2", apply, state, feature_dim=width, channels=(1, 3))


def _classifier(arg: str) -> Encoder:
    from selfflow.encoders.classifier import classifier_encoder

    return classifier_encoder(arg)


register_encoder("dinov2", _dinov2)
register_encoder("classifier", _classifier)
