"""Layout samplers — Euler and Heun ODE, SiT Euler–Maruyama SDE — with classifier-free guidance.

Time τ ∈ [0, 1], τ = 1 noise, x_τ = (1 − τ)·x0 + τ·ε, the model predicts v = ε − x0. Every
``generate`` token of a sample shares one scalar τ (no mask, no teacher: inference is plain
flow-matching sampling); ``condition`` segments are fed clean at τ = 0, as in training, and come
out exactly as given in every method (no step and no noise ever touches them).

One core serves all methods: :func:`_guided` turns a segment velocity into the guided velocity
v = v_null + w·(v_cond − v_null), applied only for τ in the guidance interval (outside, a
``lax.cond`` evaluates the B conditional rows alone; w = 1 never evaluates the null class); the
integrators (:func:`_ode`, :func:`_euler_maruyama`) step only the generated segments inside
``lax.fori_loop``. :func:`sample_segments` is the entry point for a layout; :func:`sde_sample`
(the official Self-Flow FID protocol on one array) and the Euler wrappers use the same core.
All are traceable: jit them with the non-array arguments static. Callers pass the EMA model.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from modalities.text import NAME as TEXT
from modalities.text import null_tokens
from selfflow.layout import GENERATE, Layout, single
from selfflow.objective import inference_timesteps

METHODS = ("euler", "heun", "sde")


def cfg_combine(cond: jax.Array, null: jax.Array, scale: float) -> jax.Array:
    """Classifier-free guidance v_null + w·(v_cond − v_null), written w·v_cond + (1 − w)·v_null.

    Affine in the prediction, so it can be applied to velocities or to SDE drifts alike.
    """
    return cond * scale + null * (1.0 - scale)


# --------------------------------------------------------------------------- shared core


def _guided(
    velocity,
    labels: jax.Array,
    *,
    cfg_scale: float,
    guidance_interval: tuple,
    null_class: int,
    null_captions: tuple = (),
):
    """``velocity(xs, tau (R,), labels (R,)) -> tuple`` of per-segment (R, n_i, d_i) -> the
    guided ``v(xs, tau scalar f32) -> tuple`` of float32 (B, n_i, d_i) the integrators call.

    w = 1: the conditional model alone, B rows, the null class is never queried. Otherwise 2B
    rows (labels, then ``null_class``; the segments flagged True in ``null_captions`` - text -
    as the null caption in the second B rows) combined by :func:`cfg_combine` when τ ∈ [low, high]; a
    ``lax.cond`` picks the B-row conditional branch outside (skipped when the interval covers
    [0, 1], so a full interval compiles one model call, not two).
    """
    b = labels.shape[0]

    def plain(xs, tau):
        vs = velocity(xs, jnp.full((b,), tau, jnp.float32), labels)
        return tuple(v.astype(jnp.float32) for v in vs)

    if cfg_scale == 1.0:
        return plain
    both = jnp.concatenate([labels, jnp.full_like(labels, null_class)])

    def doubled(xs):  # conditional rows, then the null rows
        flags = tuple(null_captions) + (False,) * (len(xs) - len(null_captions))
        return tuple(jnp.concatenate([x, null_tokens(x) if f else x]) for x, f in zip(xs, flags))

    def cfg(xs, tau):
        vs = velocity(doubled(xs), jnp.full((2 * b,), tau, jnp.float32), both)
        return tuple(cfg_combine(v[:b], v[b:], cfg_scale) for v in (v.astype(jnp.float32) for v in vs))

    low, high = guidance_interval
    if low <= 0.0 and high >= 1.0:
        return cfg
    return lambda xs, tau: jax.lax.cond((tau >= low) & (tau <= high), cfg, plain, xs, tau)


def _update(xs: tuple, vs: tuple, h, generate: tuple) -> tuple:
    """x + h·v on the generated segments; condition segments are passed through untouched."""
    return tuple(x + h * v if g else x for x, v, g in zip(xs, vs, generate))


def _ode(v, xs: tuple, generate: tuple, *, steps: int, method: str) -> tuple:
    """Integrates dx/dτ = v from τ = 1 to 0 on the uniform grid τ_i = 1 − i/steps.

    Euler: x_{i+1} = x_i + h·v(x_i, τ_i), ``steps`` model evaluations. Heun: the trapezoidal
    predictor–corrector x_{i+1} = x_i + h·(v(x_i, τ_i) + v(x̃, τ_{i+1}))/2, x̃ the Euler
    predictor, except the last interval, which is a plain Euler step (as EDM's Heun and SiT's
    ``heun2``): it never queries the model at τ = 0, where flow models are least accurate,
    and keeps the global error O(h²); 2·steps − 1 evaluations.
    """
    taus = jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32)

    def euler(i, xs):
        return _update(xs, v(xs, taus[i]), taus[i + 1] - taus[i], generate)

    if method == "euler":
        return jax.lax.fori_loop(0, steps, euler, xs)

    def heun(i, xs):
        h = taus[i + 1] - taus[i]
        v0 = v(xs, taus[i])
        v1 = v(_update(xs, v0, h, generate), taus[i + 1])
        return _update(xs, tuple((a + c) * 0.5 for a, c in zip(v0, v1)), h, generate)

    return euler(steps - 1, jax.lax.fori_loop(0, steps - 1, heun, xs))


def _step_noise(key: jax.Array, xs: tuple, generate: tuple) -> tuple:
    """A standard normal for each generated segment (None for condition segments), float32.

    Drawn as one (B, Σ n_i·d_i) array split per segment; JAX's generator fills by flat index,
    so for a single segment this is exactly ``jax.random.normal(key, x.shape)`` — the draw of
    the official loop (tests/test_sde_sampler.py checks it).
    """
    gen = [x for x, g in zip(xs, generate) if g]
    sizes = [math.prod(x.shape[1:]) for x in gen]
    flat = jax.random.normal(key, (gen[0].shape[0], sum(sizes)), jnp.float32)
    parts = iter(jnp.split(flat, np.cumsum(sizes)[:-1], axis=1))
    return tuple(next(parts).reshape(x.shape) if g else None for x, g in zip(xs, generate))


def _euler_maruyama(
    v, xs: tuple, generate: tuple, key: jax.Array, *, steps: int, last_step_size: float
) -> tuple:
    """SiT Euler–Maruyama, the official Self-Flow FID protocol (see :func:`sde_sample` for the
    maths), on the generated segments of ``xs``; condition segments get neither drift nor noise.
    ``steps`` model evaluations; w_k from ``fold_in(key, k)`` (:func:`_step_noise`)."""
    grid = jnp.linspace(0.0, 1.0 - last_step_size, steps, dtype=jnp.float32)  # SiT time s
    dt = grid[1] - grid[0]

    def drift(xs, s):  # per segment u + D(s)·score, u = −v; condition entries are discarded
        us = tuple(-u for u in v(xs, 1.0 - s))
        score = tuple((s * u - x) / (1.0 - s) for u, x in zip(us, xs))
        diffusion = 1.0 - s
        return tuple(u + diffusion * sc for u, sc in zip(us, score))

    def step(k, xs):
        s = grid[k]
        mean = _update(xs, drift(xs, s), dt, generate)
        w = _step_noise(jax.random.fold_in(key, k), xs, generate)
        return _update(mean, w, jnp.sqrt(2.0 * (1.0 - s)) * jnp.sqrt(dt), generate)

    xs = jax.lax.fori_loop(0, steps - 1, step, xs)
    return _update(xs, drift(xs, grid[-1]), last_step_size, generate)  # "Mean" step, no noise


def _integrate(
    velocity,
    start: tuple,
    labels: jax.Array,
    generate: tuple,
    *,
    method: str,
    steps: int,
    cfg_scale: float,
    guidance_interval: tuple,
    null_class: int,
    key,
    last_step_size: float,
    null_captions: tuple = (),
) -> tuple:
    """The one sampler behind every entry point (arguments already validated)."""
    v = _guided(
        velocity,
        labels,
        cfg_scale=cfg_scale,
        guidance_interval=guidance_interval,
        null_class=null_class,
        null_captions=null_captions,
    )
    xs = tuple(x.astype(jnp.float32) for x in start)
    if method == "sde":
        return _euler_maruyama(v, xs, generate, key, steps=steps, last_step_size=last_step_size)
    return _ode(v, xs, generate, steps=steps, method=method)


# --------------------------------------------------------------------------- argument checks


def _check_steps(steps, minimum: int, why: str) -> None:
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < minimum:
        raise ValueError(f"steps must be an integer >= {minimum} ({why}); got {steps!r}")


def _check_last_step_size(last_step_size) -> None:
    if not 0.0 < last_step_size < 1.0:
        raise ValueError(f"last_step_size must be in (0, 1); got {last_step_size!r}")


def _check_cfg_scale(cfg_scale) -> None:
    if not isinstance(cfg_scale, (int, float, np.number)) or not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be a finite Python number (1 = no guidance); got {cfg_scale!r}")


def _is_tau_interval(low, high) -> bool:
    return 0.0 <= low <= high <= 1.0


def _check_sde_args(steps, last_step_size, guidance_low, guidance_high) -> None:
    _check_steps(steps, 2, "steps − 1 noisy steps and one last mean step")
    _check_last_step_size(last_step_size)
    if not _is_tau_interval(guidance_low, guidance_high):
        raise ValueError(
            f"need 0 <= guidance_low <= guidance_high <= 1 (a τ interval); got "
            f"guidance_low={guidance_low!r}, guidance_high={guidance_high!r}"
        )


def _check_sample_args(
    layout: Layout, start, labels, *, method, steps, cfg_scale, guidance_interval, key, last_step_size
) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if method == "sde":
        _check_steps(steps, 2, "steps − 1 noisy steps and one last mean step")
        _check_last_step_size(last_step_size)
        if key is None:
            raise ValueError("method='sde' needs key (a jax.random key for the Brownian noise)")
    else:
        _check_steps(steps, 1, "the number of τ intervals from 1 to 0")
    _check_cfg_scale(cfg_scale)
    if (
        not isinstance(guidance_interval, (tuple, list))
        or len(guidance_interval) != 2
        or not _is_tau_interval(*guidance_interval)
    ):
        raise ValueError(
            f"guidance_interval must be a pair (low, high) with 0 <= low <= high "
            f"<= 1 (the τ range where guidance applies); got {guidance_interval!r}"
        )
    if len(start) != len(layout.segments):
        raise ValueError(
            f"start must hold one array per segment of layout {layout.name!r} "
            f"({len(layout.segments)}); got {len(start)}"
        )
    b = labels.shape[0] if labels.ndim == 1 else None
    for i, (x, seg) in enumerate(zip(start, layout.segments)):
        if x.ndim != 3 or x.shape[:2] != (b, seg.num_tokens):
            raise ValueError(
                f"start[{i}] ({seg.modality}, {seg.role}) must have shape "
                f"(B, {seg.num_tokens}, d) with B = labels.shape[0] = {b}; "
                f"got {x.shape}"
            )


# --------------------------------------------------------------------------- entry points


def sample_segments(
    model,
    layout: Layout,
    start: tuple,
    labels: jax.Array,
    positions: jax.Array,
    *,
    method: str = "euler",
    steps: int,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    null_class: int,
    key: jax.Array | None = None,
    last_step_size: float = 0.04,
) -> tuple:
    """Generates every ``generate`` segment of ``layout``; ``condition`` segments stay as given.

    ``model(tokens tuple, FactoredTimesteps, labels (R,), positions, modalities=names)`` ->
    :class:`~selfflow.model.ModelOutput` (the EMA :class:`~selfflow.model.SelfFlowTransformer`,
    or any callable alike).
    ``start``: per segment (B, n_i, d_i) — standard normal noise at τ = 1 for generate segments,
    the clean conditioning tokens for condition segments. ``labels`` (B,) int.
    ``method``: "euler" / "heun" (ODE, ``steps`` uniform τ intervals; Heun's last interval is
    Euler, see :func:`_ode`) or "sde" (SiT Euler–Maruyama with ``steps`` evaluations, the
    last a noiseless step of size ``last_step_size``; needs ``key``). Guidance ``cfg_scale`` = w
    applies for τ in ``guidance_interval`` (inclusive); w = 1 is exactly the conditional model;
    the null branch has ``null_class`` and, in text segments, the null caption (no token).
    Returns every segment at τ = 0, float32 (condition segments as given, cast to float32).
    Non-array arguments must be Python values (static under jit); deterministic in ``key``.
    """
    _check_sample_args(
        layout,
        start,
        labels,
        method=method,
        steps=steps,
        cfg_scale=cfg_scale,
        guidance_interval=guidance_interval,
        key=key,
        last_step_size=last_step_size,
    )

    def velocity(xs, tau, labels):
        return model(
            xs, inference_timesteps(layout, tau), labels, positions, modalities=layout.modalities
        ).velocity

    return _integrate(
        velocity,
        tuple(start),
        labels,
        tuple(seg.role == GENERATE for seg in layout.segments),
        method=method,
        steps=steps,
        cfg_scale=cfg_scale,
        guidance_interval=tuple(guidance_interval),
        null_class=null_class,
        key=key,
        last_step_size=last_step_size,
        null_captions=tuple(seg.modality == TEXT for seg in layout.segments),
    )


def sde_sample(
    velocity,
    x: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    steps: int = 250,
    last_step_size: float = 0.04,
    cfg_scale: float = 1.0,
    guidance_low: float = 0.0,
    guidance_high: float = 0.7,
    null_class: int,
) -> jax.Array:
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
    The same core as ``sample_segments(method="sde")`` on a one-segment layout.
    """
    _check_sde_args(steps, last_step_size, guidance_low, guidance_high)
    _check_cfg_scale(cfg_scale)
    b = x.shape[0]
    if labels.shape != (b,):
        raise ValueError(f"labels must have shape ({b},) to match x {x.shape}; got {labels.shape}")
    (out,) = _integrate(
        lambda xs, tau, y: (velocity(xs[0], tau, y),),
        (x,),
        labels,
        (True,),
        method="sde",
        steps=steps,
        cfg_scale=cfg_scale,
        guidance_interval=(guidance_low, guidance_high),
        null_class=null_class,
        key=key,
        last_step_size=last_step_size,
    )
    return out


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
        (v,) = self.model(
            (x,), inference_timesteps(layout, tau), labels, self.positions, modalities=layout.modalities
        ).velocity
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
