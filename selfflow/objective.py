"""The Self-Flow objective as pure functions (paper convention: τ = 1 is noise, τ = 0 is data).

    x_τ = (1 − τ)·x0 + τ·ε,   target v = ε − x0 for every token, whatever its τ.

Dual-timestep scheduling (DTS): per sample draw t, s i.i.d. from p(t) (unordered), mask a
fraction ``mask_ratio`` of the tokens; masked tokens get s, the others t. The EMA teacher sees
every token at min(t, s), built from the *same* ε. Representation loss: 1 − cosine similarity
per token over the feature axis between the projected student hidden state (block l) and the
stop-gradient teacher hidden state (block k), averaged over tokens and batch.

``objective.kind`` selects the baseline by configuration alone:
``flow_matching`` (one τ per sample, no teacher), ``dts`` (dual timesteps, γ = 0, no teacher
forward), ``self_flow`` (dual timesteps + γ·L_rep).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from selfflow.config import Config, ObjectiveConfig
from selfflow.model import FactoredTimesteps


class Batch(NamedTuple):
    """Clean tokens x0 (B, N, C), class ids (B,), token positions (N, 3)."""
    tokens: jax.Array
    labels: jax.Array
    positions: jax.Array


# ---------------------------------------------------------------------------- timesteps


def shift_time(t: jax.Array, shift: float) -> jax.Array:
    """SD3 shift t' = a·t / (1 + (a − 1)·t); a = 1 is the identity."""
    return t if shift == 1.0 else shift * t / (1.0 + (shift - 1.0) * t)


def sample_time(key: jax.Array, shape: tuple[int, ...], ocfg: ObjectiveConfig) -> jax.Array:
    """Draws τ ~ p(t) in [0, 1], float32."""
    if ocfg.time_distribution == "uniform":
        t = jax.random.uniform(key, shape, jnp.float32)
    else:
        z = jax.random.normal(key, shape, jnp.float32)
        t = jax.nn.sigmoid(ocfg.logit_normal_mean + ocfg.logit_normal_std * z)
    return shift_time(t, ocfg.time_shift)


def token_mask(key: jax.Array, batch: int, num_tokens: int, mask_ratio: float) -> jax.Array:
    """(B, N) bool with exactly round(mask_ratio·N) True per row, positions uniform at random."""
    count = round(mask_ratio * num_tokens)
    ranks = jnp.argsort(jax.random.uniform(key, (batch, num_tokens)), axis=-1).argsort(axis=-1)
    return ranks < count


class Timesteps(NamedTuple):
    student: jax.Array  # (B, N) per-token τ of the student
    teacher: jax.Array  # (B,) min(t, s): every teacher token
    t: jax.Array        # (B,)
    s: jax.Array        # (B,)
    mask: jax.Array     # (B, N) bool, True where the token got s


def dual_timesteps(key: jax.Array, batch: int, num_tokens: int, ocfg: ObjectiveConfig) -> Timesteps:
    kt, ks, km = jax.random.split(key, 3)
    t, s = sample_time(kt, (batch,), ocfg), sample_time(ks, (batch,), ocfg)
    mask = token_mask(km, batch, num_tokens, ocfg.mask_ratio)
    return Timesteps(jnp.where(mask, s[:, None], t[:, None]), jnp.minimum(t, s), t, s, mask)


def interpolate(x0: jax.Array, noise: jax.Array, tau: jax.Array) -> jax.Array:
    """x_τ for τ of shape (B,) or (B, N); x0, noise (B, N, C)."""
    tau = tau.reshape(tau.shape + (1,) * (x0.ndim - tau.ndim))
    return (1.0 - tau) * x0 + tau * noise


# ---------------------------------------------------------------------------- losses


def flow_matching_loss(velocity: jax.Array, x0: jax.Array, noise: jax.Array) -> jax.Array:
    """Mean squared error against ε − x0 over every element, in float32."""
    return jnp.mean(jnp.square(velocity.astype(jnp.float32) - (noise - x0)))


def cosine_per_token(a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
    """(B, N, D) x (B, N, D) -> (B, N): cosine over the feature axis, float32."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    dot = jnp.sum(a * b, axis=-1)
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return dot / jnp.maximum(norms, eps)


def representation_loss(student_projected: jax.Array, teacher_hidden: jax.Array) -> jax.Array:
    """1 − mean over tokens and batch of the per-token cosine (teacher under stop-gradient)."""
    cos = cosine_per_token(student_projected, jax.lax.stop_gradient(teacher_hidden))
    return 1.0 - jnp.mean(cos)


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, null_class: int) -> jax.Array:
    """Replaces each label by the null class with probability ``rate`` (CFG training)."""
    if rate == 0.0:
        return labels
    return jnp.where(jax.random.uniform(key, labels.shape) < rate, null_class, labels)


def loss_fn(student, teacher, batch: Batch, key: jax.Array, cfg: Config):
    """Total loss and metrics for one batch; gradients flow through ``student`` only.

    ``student``/``teacher`` are SelfFlowTransformer instances (the teacher holds EMA weights).
    All randomness comes from ``key``: the noise ε, t, s, the mask and the label dropout.
    """
    ocfg = cfg.objective
    x0 = batch.tokens.astype(jnp.float32)
    b, n, _ = x0.shape
    k_noise, k_time, k_label = jax.random.split(key, 3)
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    labels = drop_labels(k_label, batch.labels, ocfg.label_dropout, cfg.data.num_classes)

    # The model gets timesteps in factored form (distinct values + per-token choice), so it
    # computes conditioning once per value rather than once per token.
    if cfg.uses_dual_timesteps:
        times = dual_timesteps(k_time, b, n, ocfg)
        tau = times.student
        student_times = FactoredTimesteps(jnp.stack([times.t, times.s], axis=1),
                                          times.mask.astype(jnp.int32))
    else:
        tau = sample_time(k_time, (b,), ocfg)
        student_times = FactoredTimesteps.per_sample(tau, n)
    x_tau = interpolate(x0, noise, tau)

    if cfg.uses_teacher:
        velocity, hidden = student(x_tau, student_times, labels, batch.positions,
                                   return_layer=cfg.student_layer)
        x_teacher = interpolate(x0, noise, times.teacher)
        target = teacher.forward_until(x_teacher, FactoredTimesteps.per_sample(times.teacher, n),
                                       labels, batch.positions, layer=cfg.teacher_layer)
        rep = representation_loss(student.project(hidden), target)
    else:
        velocity = student(x_tau, student_times, labels, batch.positions)
        rep = jnp.zeros((), jnp.float32)
    fm = flow_matching_loss(velocity, x0, noise)
    loss = fm + (ocfg.gamma * rep if cfg.uses_teacher else 0.0)
    return loss, dict(loss=loss, fm_loss=fm, rep_loss=rep, cos_sim=1.0 - rep)


def ema_update(ema, params, decay: float):
    """ema ← decay·ema + (1 − decay)·params, leaf by leaf (float32)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
