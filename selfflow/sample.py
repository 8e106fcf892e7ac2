"""Euler ODE sampling with classifier-free guidance, and PNG grids.

Integrates dx/dτ = v(x, τ) from τ = 1 (noise) to τ = 0 (data) on a uniform grid with one scalar
timestep per sample for every generated token (no mask, no teacher: inference is plain
flow-matching sampling); conditioning segments of a layout are held clean at τ = 0. With
guidance scale w: v = v_null + w·(v_cond − v_null); w = 1 is exactly the conditional model.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from selfflow.layout import GENERATE, Layout, single
from selfflow.objective import inference_timesteps


def euler_sample_segments(model, layout: Layout, start: tuple, labels: jax.Array,
                          positions: jax.Array, *, steps: int, cfg_scale: float,
                          null_class: int) -> tuple:
    """Generates every ``generate`` segment of ``layout``; ``condition`` segments stay as given.

    ``start``: per segment (B, n_i, d_i) — noise at τ = 1 for generate segments, the clean
    conditioning tokens for condition segments (they are fed at τ = 0, as in training).
    Returns the segments at τ = 0. Sampler state in float32.
    """
    b = labels.shape[0]
    taus = jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32)
    generate = [seg.role == GENERATE for seg in layout.segments]
    guided = cfg_scale != 1.0
    rows = 2 * b if guided else b
    cond = jnp.concatenate([labels, jnp.full_like(labels, null_class)]) if guided else labels
    def velocity(xs, tau):
        xin = tuple(jnp.concatenate([x, x]) if guided else x for x in xs)
        times = inference_timesteps(layout, jnp.full((rows,), tau))
        vs = model(xin, times, cond, positions, modality=layout.modalities)
        vs = tuple(v.astype(jnp.float32) for v in vs)
        return tuple(v[:b] * cfg_scale + v[b:] * (1.0 - cfg_scale) if guided else v for v in vs)

    def body(i, xs):
        vs = velocity(xs, taus[i])
        return tuple(x + (taus[i + 1] - taus[i]) * v if g else x for x, v, g in zip(xs, vs, generate))

    return jax.lax.fori_loop(0, steps, body, tuple(x.astype(jnp.float32) for x in start))


def euler_sample(model, noise: jax.Array, labels: jax.Array, positions: jax.Array, *,
                 steps: int, cfg_scale: float, null_class: int, modality: str = "image") -> jax.Array:
    """noise (B, N, C) at τ = 1 -> samples (B, N, C) at τ = 0 for a one-segment layout."""
    (out,) = euler_sample_segments(model, single(modality, noise.shape[1]), (noise,), labels,
                                   positions, steps=steps, cfg_scale=cfg_scale, null_class=null_class)
    return out


@nnx.jit(static_argnames=("steps", "cfg_scale", "null_class"))
def _sample_jit(model, noise, labels, positions, steps, cfg_scale, null_class):
    return euler_sample(model, noise, labels, positions, steps=steps, cfg_scale=cfg_scale,
                        null_class=null_class)


def class_grid_samples(model, *, num_classes: int, per_class: int, token_shape: tuple[int, int],
                       positions, steps: int, cfg_scale: float, seed: int) -> tuple[jax.Array, np.ndarray]:
    """Samples ``per_class`` tokens for each class in order; returns (tokens, labels)."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    noise = jax.random.normal(jax.random.key(seed), (labels.size, *token_shape), jnp.float32)
    tokens = _sample_jit(model, noise, jnp.asarray(labels), jnp.asarray(positions), steps,
                         float(cfg_scale), num_classes)
    return tokens, labels


def save_grid(images: np.ndarray, rows: int, path: str | Path, scale: int = 4) -> Path:
    """images (R·C, H, W, 3 or 1) in [-1, 1] -> one PNG with R rows, each image upscaled ``scale``×."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    cols = n // rows
    pixels = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    grid = pixels[: rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * h, cols * w, c)
    if c == 1:  # grayscale, e.g. Fashion-MNIST
        grid = grid[..., 0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((cols * w * scale, rows * h * scale), Image.NEAREST).save(path)
    return path
