"""Image modality: 2D patches of pixels or latents, and their (t, h, w) positions.

Token layout follows the official SiT/Self-Flow code: tokens are ordered row-major over the
patch grid and each token's features are ordered ``(c, p1, p2)`` (channel slowest), so a
``(B, H, W, C)`` image with patch ``p`` becomes ``(B, (H/p)·(W/p), C·p·p)``.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

NAME = "image"
DEFAULT_MASK_RATIO = 0.25
DEFAULT_TIME_SHIFT = 1.0


def token_dim(channels: int, patch_size: int) -> int:
    return channels * patch_size * patch_size


def tokenize(images: jnp.ndarray, patch_size: int) -> jnp.ndarray:
    """(B, H, W, C) -> (B, N, C·p·p) with N = (H/p)·(W/p)."""
    b, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size={p}")
    x = images.reshape(b, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 3, 5, 2, 4)  # b, gh, gw, c, p1, p2
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def detokenize(tokens: jnp.ndarray, height: int, width: int, patch_size: int) -> jnp.ndarray:
    """(B, N, C·p·p) -> (B, H, W, C); the inverse of :func:`tokenize`."""
    b, n, d = tokens.shape
    p = patch_size
    gh, gw, c = height // p, width // p, d // (p * p)
    if gh * gw != n or c * p * p != d:
        raise ValueError(f"{n} tokens of dim {d} do not form a {height}x{width} image "
                         f"with patch_size={p}")
    x = tokens.reshape(b, gh, gw, c, p, p).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, height, width, c)


def positions(height: int, width: int, patch_size: int) -> np.ndarray:
    """(N, 3) float32 (t, h, w) patch coordinates, row-major; t = 0 for a still image."""
    gh, gw = height // patch_size, width // patch_size
    hh, ww = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    return np.stack([np.zeros(gh * gw), hh.ravel(), ww.ravel()], axis=-1).astype(np.float32)
