"""The Self-Flow objective as pure functions (paper convention: τ = 1 is noise, τ = 0 is data).

    x_τ = (1 − τ)·x0 + τ·ε,   target v = ε − x0 for every token, whatever its τ.

Dual-timestep scheduling (DTS): per sample draw t, s i.i.d. from p(t) (unordered), mask a
fraction ``mask_ratio`` of the generate tokens (per modality, within each segment of a layout);
masked tokens get s, the others t; condition tokens of a layout stay clean (τ = 0). The EMA teacher sees
every token at min(t, s), built from the *same* ε. Representation loss: 1 − cosine similarity
per token over the feature axis between the projected student hidden state (block l) and the
stop-gradient teacher hidden state (block k), averaged over tokens and batch.
Ablation keys: ``objective.time_gap`` (s within a small gap below t, SRA-style) and
``objective.rep_distance`` (``l1`` instead of the cosine).

``objective.kind`` selects the baseline by configuration alone:
``flow_matching`` (one τ per sample, no teacher), ``dts`` (dual timesteps, γ = 0, no teacher
forward), ``self_flow`` (dual timesteps + γ·L_rep).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from selfflow.config import Config, ObjectiveConfig
from selfflow.layout import CLEAN_INDEX, CONDITION, S_INDEX, T_INDEX, Layout, single
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


def representation_loss(student_projected: jax.Array, teacher_hidden: jax.Array,
                        token_mask: jax.Array | None = None, distance: str = "cosine") -> jax.Array:
    """Mean per-token distance over tokens and batch (teacher under stop-gradient).

    ``distance``: ``"cosine"`` = 1 − cosine over the feature axis (the paper's L_rep), or ``"l1"``
    = mean absolute difference over the feature axis (the ablation the paper found unstable, since
    it rewards growing feature norms). ``token_mask`` (N,) bool restricts the mean to those tokens
    (the generate tokens).
    """
    teacher_hidden = jax.lax.stop_gradient(teacher_hidden)
    if distance == "cosine":
        per_token = 1.0 - cosine_per_token(student_projected, teacher_hidden)
    elif distance == "l1":
        diff = student_projected.astype(jnp.float32) - teacher_hidden.astype(jnp.float32)
        per_token = jnp.mean(jnp.abs(diff), axis=-1)
    else:
        raise ValueError(f"distance={distance!r}: expected 'cosine' or 'l1'")
    if token_mask is None:
        return jnp.mean(per_token)
    return jnp.sum(per_token * token_mask) / (per_token.shape[0] * jnp.sum(token_mask))


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, null_class: int) -> jax.Array:
    """Replaces each label by the null class with probability ``rate`` (CFG training)."""
    if rate == 0.0:
        return labels
    return jnp.where(jax.random.uniform(key, labels.shape) < rate, null_class, labels)


class SegmentBatch(NamedTuple):
    """Clean tokens per segment of a layout ((B, n_i, d_i) each), class ids (B,), positions (N, 3)."""
    tokens: tuple
    labels: jax.Array
    positions: jax.Array


def layout_timesteps(key: jax.Array, batch: int, layout: Layout, ocfg: ObjectiveConfig,
                     mask_ratios: dict[str, float], dual: bool):
    """Student and teacher timesteps for a layout, in factored form (values (B, 3), index (B, N)).

    Values are [t, s, 0]. Generate tokens use t, or s where masked (each generate segment masks
    round(ratio·n) of its own tokens, ratio = its modality's mask ratio); condition tokens are
    clean (τ = 0) and never masked. The teacher sees every generate token at min(t, s).
    s is drawn from p(t) independently of t, or, with ``objective.time_gap`` g > 0, as
    max(t − U(0, g), 0): the small-gap (SRA-style) variant of the paper's ablation.
    Returns (student, teacher, mask (B, N) bool).
    """
    k_t, k_s, k_mask = jax.random.split(key, 3)
    t = sample_time(k_t, (batch,), ocfg)
    if not dual:
        s = t
    elif ocfg.time_gap > 0:
        s = jnp.maximum(t - ocfg.time_gap * jax.random.uniform(k_s, (batch,), jnp.float32), 0.0)
    else:
        s = sample_time(k_s, (batch,), ocfg)
    masks, indices = [], []
    for i, seg in enumerate(layout.segments):
        if seg.role == CONDITION:
            mask = jnp.zeros((batch, seg.num_tokens), bool)
            indices.append(jnp.full((batch, seg.num_tokens), CLEAN_INDEX, jnp.int32))
        else:
            ratio = mask_ratios[seg.modality] if dual else 0.0
            mask = token_mask(jax.random.fold_in(k_mask, i), batch, seg.num_tokens, ratio)
            indices.append(jnp.where(mask, S_INDEX, T_INDEX).astype(jnp.int32))
        masks.append(mask)
    index = jnp.concatenate(indices, axis=1)
    zero = jnp.zeros_like(t)
    tmin = jnp.minimum(t, s)
    student = FactoredTimesteps(jnp.stack([t, s, zero], axis=1), index)
    teacher = FactoredTimesteps(jnp.stack([tmin, tmin, zero], axis=1),
                                jnp.where(index == CLEAN_INDEX, CLEAN_INDEX, T_INDEX))
    return student, teacher, jnp.concatenate(masks, axis=1)


def inference_timesteps(layout: Layout, tau: jax.Array) -> FactoredTimesteps:
    """One timestep τ (B,) for every generate token, condition tokens clean: how samplers and
    validation query the model."""
    b = tau.shape[0]
    values = jnp.stack([tau, tau, jnp.zeros_like(tau)], axis=1).astype(jnp.float32)
    return FactoredTimesteps(values, jnp.broadcast_to(jnp.asarray(layout.base_index()), (b, layout.num_tokens)))


def segment_loss_fn(student, teacher, batch: SegmentBatch, layout: Layout, key: jax.Array,
                    cfg: Config, mask_ratios: dict[str, float], loss_weights: dict[str, float]):
    """Total loss and metrics for one batch of ``layout``; gradients flow through ``student`` only.

    L_gen = Σ_m w_m · MSE over the generate tokens of modality m; L_rep = 1 − mean per-token
    cosine over generate tokens; condition tokens are clean inputs with no loss.
    ``student``/``teacher`` are SelfFlowTransformer instances (the teacher holds EMA weights).
    All randomness comes from ``key``: the noise ε, t, s, the masks and the label dropout.
    """
    ocfg = cfg.objective
    x0 = tuple(t.astype(jnp.float32) for t in batch.tokens)
    b = x0[0].shape[0]
    k_noise, k_time, k_label = jax.random.split(key, 3)
    noise = tuple(jax.random.normal(jax.random.fold_in(k_noise, i), x.shape, jnp.float32)
                  for i, x in enumerate(x0))
    labels = drop_labels(k_label, batch.labels, ocfg.label_dropout, cfg.data.num_classes)
    student_times, teacher_times, _ = layout_timesteps(
        k_time, b, layout, ocfg, mask_ratios, dual=cfg.uses_dual_timesteps)

    def noised(times):
        tau = times.dense()
        return tuple(x if seg.role == CONDITION else interpolate(x, e, tau[:, sl])
                     for x, e, seg, sl in zip(x0, noise, layout.segments, layout.slices()))

    names = layout.modalities
    if cfg.uses_teacher:
        velocity, hidden = student(noised(student_times), student_times, labels, batch.positions,
                                   modality=names, return_layer=cfg.student_layer)
        target = teacher.forward_until(noised(teacher_times), teacher_times, labels,
                                       batch.positions, layer=cfg.teacher_layer, modality=names)
        projected, generate = student.project(hidden), jnp.asarray(layout.generate_mask())
        rep = representation_loss(projected, target, generate, ocfg.rep_distance)
        cos = 1.0 - (rep if ocfg.rep_distance == "cosine" else representation_loss(projected, target, generate))
    else:
        velocity = student(noised(student_times), student_times, labels, batch.positions,
                           modality=names)
        rep = jnp.zeros((), jnp.float32)
        cos = jnp.ones((), jnp.float32)

    metrics, fm = {}, jnp.zeros((), jnp.float32)
    for name in dict.fromkeys(names):  # each modality once, in layout order
        parts = [(v, x, e) for v, x, e, seg in zip(velocity, x0, noise, layout.segments)
                 if seg.modality == name and seg.role != CONDITION]
        if not parts:
            continue
        sq = sum(jnp.sum(jnp.square(v.astype(jnp.float32) - (e - x))) for v, x, e in parts)
        mse = sq / sum(x.size for _, x, _ in parts)
        metrics[f"fm_loss/{name}"] = mse
        fm = fm + loss_weights.get(name, 1.0) * mse
    loss = fm + (ocfg.gamma * rep if cfg.uses_teacher else 0.0)
    metrics.update(loss=loss, fm_loss=fm, rep_loss=rep, cos_sim=cos)
    return loss, metrics


def loss_fn(student, teacher, batch: Batch, key: jax.Array, cfg: Config, modality: str = "image"):
    """:func:`segment_loss_fn` for a batch of one generate segment (e.g. class-conditional images)."""
    layout = single(modality, batch.tokens.shape[1])
    return segment_loss_fn(student, teacher, SegmentBatch((batch.tokens,), batch.labels, batch.positions),
                           layout, key, cfg, {modality: cfg.objective.mask_ratio}, {modality: 1.0})


def ema_update(ema, params, decay: float):
    """ema ← decay·ema + (1 − decay)·params, leaf by leaf (float32)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
