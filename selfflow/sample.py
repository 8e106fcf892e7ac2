"""Euler ODE sampling with classifier-free guidance, and PNG grids.

Integrates dx/dτ = v(x, τ) from τ = 1 (noise) to τ = 0 (data) on a uniform grid with one scalar
timestep per sample (no mask, no teacher: inference is plain flow-matching sampling). With
guidance scale w: v = v_null + w·(v_cond − v_null); w = 1 is exactly the conditional model.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from selfflow.model import FactoredTimesteps


def euler_sample(model, noise: jax.Array, labels: jax.Array, positions: jax.Array, *,
                 steps: int, cfg_scale: float, null_class: int) -> jax.Array:
    """noise (B, N, C) at τ = 1 -> samples (B, N, C) at τ = 0; sampler state in float32."""
    b = noise.shape[0]
    taus = jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32)
    guided = cfg_scale != 1.0
    cond = jnp.concatenate([labels, jnp.full_like(labels, null_class)]) if guided else labels

    def velocity(x, tau):
        xin = jnp.concatenate([x, x]) if guided else x
        times = FactoredTimesteps.per_sample(jnp.full((xin.shape[0],), tau), xin.shape[1])
        v = model(xin, times, cond, positions).astype(jnp.float32)
        if guided:
            v_cond, v_null = v[:b], v[b:]
            v = v_null + cfg_scale * (v_cond - v_null)
        return v

    def body(i, x):
        return x + (taus[i + 1] - taus[i]) * velocity(x, taus[i])

    return jax.lax.fori_loop(0, steps, body, noise.astype(jnp.float32))


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
    """images (R·C, H, W, 3) in [-1, 1] -> one PNG with R rows, each image upscaled ``scale``×."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    cols = n // rows
    pixels = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    grid = pixels[: rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * h, cols * w, c)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((cols * w * scale, rows * h * scale), Image.NEAREST).save(path)
    return path
