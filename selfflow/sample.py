"""Euler ODE and SiT Euler–Maruyama SDE sampling with classifier-free guidance, and PNG grids.

Integrates dx/dτ = v(x, τ) from τ = 1 (noise) to τ = 0 (data) on a uniform grid with one scalar
timestep per sample for every generated token (no mask, no teacher: inference is plain
flow-matching sampling); conditioning segments of a layout are held clean at τ = 0. With
guidance scale w: v = v_null + w·(v_cond − v_null); w = 1 is exactly the conditional model.
:func:`sde_sample` is the stochastic sampler of the official Self-Flow FID protocol.
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


def cfg_combine(cond: jax.Array, null: jax.Array, scale: float) -> jax.Array:
    """Classifier-free guidance v_null + w·(v_cond − v_null), written w·v_cond + (1 − w)·v_null.

    Affine in the prediction, so it can be applied to velocities or to SDE drifts alike.
    """
    return cond * scale + null * (1.0 - scale)


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
        return tuple(cfg_combine(v[:b], v[b:], cfg_scale) if guided else v for v in vs)

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


def sde_sample(velocity, x: jax.Array, labels: jax.Array, key: jax.Array, *, steps: int = 250,
               last_step_size: float = 0.04, cfg_scale: float = 1.0, guidance_low: float = 0.0,
               guidance_high: float = 0.7, null_class: int) -> jax.Array:
    """SiT Euler–Maruyama sampling, the official Self-Flow FID protocol: noise (B, N, C) at τ = 1
    -> samples (B, N, C) at τ = 0, float32.

    ``velocity(x (B, N, C) f32, tau (B,) f32, labels (B,) int) -> v (B, N, C)`` is a model in our
    convention (x_τ = (1 − τ)·x0 + τ·ε, v = ε − x0). The loop is written in SiT time, as the
    official code is: s = 1 − τ (s = 0 noise, s = 1 data) with the data-direction velocity
    u = −v, on the linear path alpha = s, sigma = 1 − s:

    - grid s_k = linspace(0, 1 − last_step_size, steps)[k], dt = s_1 − s_0;
    - drift(x, s) = u + D(s)·score, D(s) = 1 − s ("sigma" diffusion, norm 1),
      score = (s·u − x) / (1 − s) (the score of that path, variance sigma² + s·sigma = 1 − s);
    - for k = 0 … steps − 2: mean = x + drift(x, s_k)·dt; x = mean + sqrt(2·D(s_k))·sqrt(dt)·w_k,
      with w_k = ``jax.random.normal(jax.random.fold_in(key, k), x.shape, float32)``;
    - last "Mean" step without noise: x = x + drift(x, s_last)·last_step_size, s_last = 1 −
      last_step_size. So ``steps`` model evaluations in all. (This step keeps the score term,
      so it denoises harder than an ODE step: data whose spread is not large next to
      ``last_step_size`` come out too narrow, e.g. N(μ, 0.05²) as std ≈ 0.013 — a property of
      the protocol, not of this port.)

    Guidance (``cfg_scale`` ≠ 1; 1 is exactly the conditional model) applies only on steps whose
    τ = 1 − s_k (float32) lies in [guidance_low, guidance_high]: there the model sees 2B rows
    (labels then ``null_class``) and u = u_null + w·(u_cond − u_null); elsewhere a ``lax.cond``
    evaluates just the B conditional rows. Traceable: jit it with the keyword arguments static.
    """
    _check_sde_args(steps, last_step_size, guidance_low, guidance_high)
    b = x.shape[0]
    if labels.shape != (b,):
        raise ValueError(f"labels must have shape ({b},) to match x {x.shape}; got {labels.shape}")
    grid = jnp.linspace(0.0, 1.0 - last_step_size, steps, dtype=jnp.float32)  # SiT time s
    dt = grid[1] - grid[0]
    guided = cfg_scale != 1.0
    both = jnp.concatenate([labels, jnp.full_like(labels, null_class)]) if guided else labels

    def model_u(x, s):  # u = −v at τ = 1 − s
        tau = jnp.full((b,), 1.0 - s, jnp.float32)
        plain = lambda x: -velocity(x, tau, labels).astype(jnp.float32)
        if not guided:
            return plain(x)

        def cfg(x):
            v = velocity(jnp.concatenate([x, x]), jnp.concatenate([tau, tau]), both)
            v = v.astype(jnp.float32)
            return -cfg_combine(v[:b], v[b:], cfg_scale)

        inside = (tau[0] >= guidance_low) & (tau[0] <= guidance_high)
        return jax.lax.cond(inside, cfg, plain, x)

    def drift(x, s):
        u = model_u(x, s)
        score = (s * u - x) / (1.0 - s)
        diffusion = 1.0 - s
        return u + diffusion * score

    def step(k, x):
        s = grid[k]
        w = jax.random.normal(jax.random.fold_in(key, k), x.shape, jnp.float32)
        mean = x + drift(x, s) * dt
        return mean + jnp.sqrt(2.0 * (1.0 - s)) * jnp.sqrt(dt) * w

    x = jax.lax.fori_loop(0, steps - 1, step, x.astype(jnp.float32))
    return x + drift(x, grid[-1]) * last_step_size  # "Mean" last step, no noise


def _check_sde_args(steps, last_step_size, guidance_low, guidance_high) -> None:
    if not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (steps − 1 noisy steps and one last "
                         f"mean step); got {steps!r}")
    if not 0.0 < last_step_size < 1.0:
        raise ValueError(f"last_step_size must be in (0, 1); got {last_step_size!r}")
    if not 0.0 <= guidance_low <= guidance_high <= 1.0:
        raise ValueError(f"need 0 <= guidance_low <= guidance_high <= 1 (a τ interval); got "
                         f"guidance_low={guidance_low!r}, guidance_high={guidance_high!r}")


class ModelVelocity(nnx.Module):
    """A one-segment model as ``velocity(x, tau, labels)`` for :func:`sde_sample`.

    A Module (not a closure) so that ``nnx.jit`` passes the weights as arguments rather than
    baking them into the compiled program as constants.
    """

    def __init__(self, model, positions, modality: str = "image"):
        self.model, self.modality = model, modality
        self.positions = nnx.data(jnp.asarray(positions))

    def __call__(self, x, tau, labels):
        layout = single(self.modality, x.shape[1])
        (v,) = self.model((x,), inference_timesteps(layout, tau), labels, self.positions,
                          modality=layout.modalities)
        return v.astype(jnp.float32)


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1] -> uint8 [0, 255], rounded to nearest (shared by grids and FID samples)."""
    return np.clip((np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def save_grid(images: np.ndarray, rows: int, path: str | Path, scale: int = 4) -> Path:
    """images (R·C, H, W, 3 or 1) in [-1, 1] -> one PNG with R rows, each image upscaled ``scale``×."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    cols = n // rows
    grid = to_uint8(images)[: rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * h, cols * w, c)
    if c == 1:  # grayscale, e.g. Fashion-MNIST
        grid = grid[..., 0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((cols * w * scale, rows * h * scale), Image.NEAREST).save(path)
    return path
