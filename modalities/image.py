"""Image modality: 2D patches of pixels or latents, and their (t, h, w) positions.

Token layout follows the official SiT/Self-Flow code: tokens are ordered row-major over the
patch grid and each token's features are ordered ``(c, p1, p2)`` (channel slowest), so a
``(B, H, W, C)`` image with patch ``p`` becomes ``(B, (H/p)·(W/p), C·p·p)``.

Two call forms: the modality interface ``tokenize(x, spec)`` / ``detokenize(tokens, spec)`` /
``positions(spec, time_offset)`` with an :class:`ImageSpec`, and the original
``tokenize(images, patch_size)`` / ``detokenize(tokens, height, width, patch_size)`` /
``positions(height, width, patch_size)`` / ``token_dim(channels, patch_size)`` that
``selfflow.train`` uses (same results).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modalities.base import ModalitySpec, check_divisible, check_shape, grid_positions

NAME = "image"
DEFAULT_MASK_RATIO = 0.25
DEFAULT_TIME_SHIFT = 1.0
KEYS = ("image",)  # what a data source yields for this modality: (B, H, W, C) float


@dataclasses.dataclass(frozen=True)
class ImageSpec(ModalitySpec):
    """An (H, W, C) image cut into p×p patches; H and W must be multiples of p."""

    name = NAME
    height: int
    width: int
    channels: int = 3
    patch_size: int = 2

    def __post_init__(self):
        check_divisible("height", self.height, "patch_size", self.patch_size)
        check_divisible("width", self.width, "patch_size", self.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // self.patch_size, self.width // self.patch_size

    @property
    def token_dim(self) -> int:
        return token_dim(self.channels, self.patch_size)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


Spec = ImageSpec


def token_dim(channels: int, patch_size: int) -> int:
    return channels * patch_size * patch_size


def tokenize(images, spec: ImageSpec | int):
    """(B, H, W, C) -> (B, N, C·p·p) with N = (H/p)·(W/p). ``spec`` may be a bare patch size."""
    if isinstance(spec, ImageSpec):
        check_shape(
            "images",
            images.shape,
            (None, spec.height, spec.width, spec.channels),
            "(batch, height, width, channels)",
        )
        p = spec.patch_size
    else:
        p = int(spec)
    b, h, w, c = images.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size={p}")
    x = images.reshape(b, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 3, 5, 2, 4)  # b, gh, gw, c, p1, p2
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def detokenize(tokens, spec: ImageSpec | int, width: int | None = None, patch_size: int | None = None):
    """(B, N, C·p·p) -> (B, H, W, C); the inverse of :func:`tokenize`.

    ``detokenize(tokens, spec)`` or the original ``detokenize(tokens, height, width, patch_size)``.
    """
    if isinstance(spec, ImageSpec):
        height, width, p, c = spec.height, spec.width, spec.patch_size, spec.channels
    else:
        height, p, c = int(spec), int(patch_size), None
    b, n, d = tokens.shape
    gh, gw = height // p, width // p
    c = d // (p * p) if c is None else c
    if gh * gw != n or c * p * p != d:
        raise ValueError(
            f"{n} tokens of dim {d} do not form a {height}x{width} image with patch_size={p} and {c} channels"
        )
    x = tokens.reshape(b, gh, gw, c, p, p).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, height, width, c)


def positions(spec: ImageSpec | int, time_offset: float = 0.0, patch_size: int | None = None) -> np.ndarray:
    """(N, 3) float32 (t, h, w): t = ``time_offset`` (ticks), (h, w) = patch row/col, row-major.

    ``positions(spec, time_offset=0.0)`` or the original ``positions(height, width, patch_size)``
    (then the second argument is the width and t = 0).
    """
    if isinstance(spec, ImageSpec):
        gh, gw = spec.grid
        return grid_positions([time_offset], gh, gw)
    height, width = int(spec), int(time_offset)
    return grid_positions([0.0], height // patch_size, width // patch_size)


def spec_for(shapes: dict[str, tuple], cfg, examples) -> ImageSpec:
    """The run's spec: the sources' (H, W, C) cut into ``model.patch_size`` patches."""
    h, w, c = shapes["image"]
    return ImageSpec(h, w, c, cfg.model.resolved("patch_size"))


def tokenize_batch(raw: dict, spec: ImageSpec):
    """A batch dict with ``KEYS`` -> (B, N, token_dim)."""
    return tokenize(raw["image"], spec)
