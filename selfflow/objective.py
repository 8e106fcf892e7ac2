"""The pieces every objective shares (paper convention: τ = 1 is noise, τ = 0 is data).

    x_τ = (1 − τ)·x0 + τ·ε,   target v = ε − x0 for every token, whatever its τ.

Dual-timestep scheduling (DTS): per sample draw t, s i.i.d. from p(t) (unordered), mask a
fraction ``mask_ratio`` of the generate tokens (per modality, within each segment of a layout);
masked tokens get s, the others t; condition tokens of a layout stay clean (τ = 0). The EMA teacher
sees every token at min(t, s), built from the *same* ε. Representation loss: 1 − cosine similarity
per token over the feature axis between the projected student hidden state (block l) and the
stop-gradient teacher hidden state (block k), averaged over tokens and batch.

Here: timestep sampling (:func:`layout_timesteps`), the ONE noising function
(:func:`noised_segments`), the ONE velocity-MSE function (:func:`velocity_mse`), the
representation distance and the EMA update. The objectives themselves — flow matching, DTS,
Self-Flow, chosen by ``objective.kind`` — are small classes in :mod:`selfflow.objectives`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from modalities.text import NAME as TEXT
from modalities.text import null_tokens
from selfflow.layout import CONDITION, S_INDEX, FactoredTimesteps, Layout

# ---------------------------------------------------------------------------- timesteps


def shift_time(t: jax.Array, shift: float) -> jax.Array:
    """SD3 shift t' = a·t / (1 + (a − 1)·t); a = 1 is the identity."""
    return t if shift == 1.0 else shift * t / (1.0 + (shift - 1.0) * t)


def sample_time(key: jax.Array, shape: tuple[int, ...], ocfg) -> jax.Array:
    """Draws τ ~ p(t) in [0, 1], float32 (``ocfg``: the ``objective`` config section)."""
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

SMOOTH_L1_BETA = 0.05  # SRA's smooth_l1_loss(a, b, beta=0.05)


def noise_like(key: jax.Array, segments: tuple) -> tuple:
    """A standard normal ε per segment (float32), segment i from ``fold_in(key, i)``."""
    return tuple(
        jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32) for i, x in enumerate(segments)
    )


def noised_segments(x0: tuple, noise: tuple, tau: jax.Array, layout: Layout) -> tuple:
    """x_τ per segment; ``tau`` (B,) (one τ per sample) or (B, N) per token. Condition segments
    are returned clean: the one noising function of training, validation and diagnostics."""
    if tau.ndim == 1:
        tau = jnp.broadcast_to(tau[:, None], (tau.shape[0], layout.num_tokens))
    return tuple(
        x if seg.role == CONDITION else interpolate(x, e, tau[:, sl])
        for x, e, seg, sl in zip(x0, noise, layout.segments, layout.slices())
    )


def velocity_mse(velocity: tuple, x0: tuple, noise: tuple, layout: Layout) -> dict[str, jax.Array]:
    """{modality: mean squared error of v against ε − x0} over the generate segments of each
    modality (segments of one modality pooled by element count), float32."""
    out = {}
    for name in dict.fromkeys(layout.modalities):  # each modality once, in layout order
        parts = [
            (v, x, e)
            for v, x, e, seg in zip(velocity, x0, noise, layout.segments)
            if seg.modality == name and seg.role != CONDITION
        ]
        if parts:
            sq = sum(jnp.sum(jnp.square(v.astype(jnp.float32) - (e - x))) for v, x, e in parts)
            out[name] = sq / sum(x.size for _, x, _ in parts)
    return out


def cosine_per_token(a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
    """(B, N, D) x (B, N, D) -> (B, N): cosine over the feature axis, float32."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    dot = jnp.sum(a * b, axis=-1)
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return dot / jnp.maximum(norms, eps)


def representation_loss(
    student_projected: jax.Array,
    teacher_hidden: jax.Array,
    token_mask: jax.Array | None = None,
    distance: str = "cosine",
) -> jax.Array:
    """Mean distance between (B, N, D) student and teacher features (teacher under stop-gradient).

    ``distance``: ``"cosine"`` = 1 − cosine over the feature axis per token (the paper's L_rep);
    ``"l1"`` = mean absolute difference over the feature axis (the ablation the paper found
    unstable, since it rewards growing feature norms); ``"smooth_l1"`` = the Huber loss with
    β = 0.05 per element (SRA's published runs); ``"cosine_tokens"`` = 1 − cosine over the *token*
    axis per feature channel (SRA's code: ``F.cosine_similarity`` defaults to dim=1, which on
    (B, N, D) features is the token axis). ``token_mask`` (N,) bool restricts the mean to those
    tokens (the generate tokens).
    """
    teacher_hidden = jax.lax.stop_gradient(teacher_hidden).astype(jnp.float32)
    student = student_projected.astype(jnp.float32)
    weight = jnp.ones(student.shape[1], jnp.float32) if token_mask is None else token_mask.astype(jnp.float32)
    if distance == "cosine_tokens":
        w = weight[None, :, None]
        dot = jnp.sum(student * teacher_hidden * w, axis=1)
        norms = jnp.sqrt(jnp.sum(student**2 * w, axis=1) * jnp.sum(teacher_hidden**2 * w, axis=1))
        return jnp.mean(1.0 - dot / jnp.maximum(norms, 1e-8))  # torch's eps for cosine_similarity
    if distance == "cosine":
        per_token = 1.0 - cosine_per_token(student, teacher_hidden)
    elif distance == "l1":
        per_token = jnp.mean(jnp.abs(student - teacher_hidden), axis=-1)
    elif distance == "smooth_l1":
        diff = jnp.abs(student - teacher_hidden)
        beta = SMOOTH_L1_BETA
        per_token = jnp.mean(jnp.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta), axis=-1)
    else:
        raise ValueError(f"distance={distance!r}: expected 'cosine', 'l1', 'smooth_l1' or 'cosine_tokens'")
    return jnp.sum(per_token * weight) / (per_token.shape[0] * jnp.sum(weight))


def representation_stats(projected: jax.Array, target: jax.Array, generate: jax.Array) -> dict:
    """``rep/cos_own``, ``rep/cos_other``, ``rep/cos_gap`` and ``rep/teacher_mean_share`` of the
    projected student features and the teacher's (both (B, N, D)) over the generate tokens
    (``generate`` (N,) bool). A batch of one has no other example: cos_other is then cos_own."""
    target = jax.lax.stop_gradient(target).astype(jnp.float32)
    weight = generate.astype(jnp.float32)[None, :]

    def mean(per_token):  # (B, N) -> () over the generate tokens
        return jnp.sum(per_token * weight) / (per_token.shape[0] * jnp.sum(weight))

    own = mean(cosine_per_token(projected, target))
    other = mean(cosine_per_token(projected, jnp.roll(target, 1, axis=0)))
    energy = jnp.sum(target * target, axis=-1)  # (B, N)
    mu = jnp.mean(target, axis=0, keepdims=True)
    shared = target.shape[0] * jnp.sum(jnp.sum(mu * mu, axis=-1) * weight)
    share = shared / jnp.maximum(jnp.sum(energy * weight), 1e-12)
    return {
        "rep/cos_own": own,
        "rep/cos_other": other,
        "rep/cos_gap": own - other,
        "rep/teacher_mean_share": share,
    }


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, null_class: int) -> jax.Array:
    """Replaces each label by the null class with probability ``rate`` (CFG training)."""
    if rate == 0.0:
        return labels
    return jnp.where(jax.random.uniform(key, labels.shape) < rate, null_class, labels)


def drop_captions(key: jax.Array, x0: tuple, layout: Layout, rate: float) -> tuple:
    """Replaces each sample's text segments by the null caption with probability ``rate`` (CFG
    training). The draw is :func:`drop_labels`'s (same key, same uniform per sample): with equal
    rates a sample loses its label and its caption together. Non-text segments pass unchanged."""
    if rate == 0.0 or TEXT not in layout.modalities:
        return x0
    dropped = jax.random.uniform(key, (x0[0].shape[0],)) < rate
    return tuple(
        jnp.where(dropped[:, None, None], null_tokens(x), x) if seg.modality == TEXT else x
        for x, seg in zip(x0, layout.segments)
    )


class SegmentBatch(NamedTuple):
    """Clean tokens per segment of a layout ((B, n_i, d_i) each), class ids (B,), positions (N, 3);
    ``features``: REPA's encoder features stored in the data (B, gh, gw, D) when the run reads them
    (``objective.encoder="precomputed"``, :mod:`selfflow.encoders.precomputed`), else None."""

    tokens: tuple
    labels: jax.Array
    positions: jax.Array
    features: jax.Array | None = None


def layout_timesteps(
    key: jax.Array, batch: int, layout: Layout, ocfg, mask_ratios: dict[str, float], dual: bool
):
    """Student and teacher timesteps for a layout, in factored form, and the mask (B, N) bool.

    Without ``dual``: one τ = t per sample for every generate token. With ``dual``, by
    ``objective.timesteps``:

    dts                values [t, s, 0]; each generate segment masks round(ratio·n) of its own
                       tokens (ratio = its modality's mask ratio), masked tokens at s. s ~ p(t)
                       independently of t, or, with ``objective.time_gap`` g > 0, max(t − U(0, g), 0)
                       (the small-gap, SRA-style variant of the paper's ablation).
    full_mask          as dts with s = 1: masked tokens are pure noise.
    diffusion_forcing  values [τ_1 … τ_N, 0]: every generate token its own τ ~ p(t); the mask is
                       every generate token.

    Condition tokens are clean (τ = 0) and never masked. The teacher sees every generate token at
    the minimum of the sample's student timesteps: min(t, s) (the paper's rule; t for full_mask).
    """
    k_t, k_s, k_mask = jax.random.split(key, 3)
    t = sample_time(k_t, (batch,), ocfg)
    scheme = ocfg.timesteps if dual else "single"
    base = jnp.broadcast_to(jnp.asarray(layout.base_index()), (batch, layout.num_tokens))
    zero = jnp.zeros_like(t)
    if scheme == "diffusion_forcing":
        n, generate = layout.num_tokens, jnp.asarray(layout.generate_mask())
        tau = jnp.where(generate, sample_time(k_s, (batch, n), ocfg), 1.0)  # 1: never the minimum
        student = FactoredTimesteps(
            jnp.concatenate([tau, zero[:, None]], axis=1),
            jnp.broadcast_to(jnp.where(generate, jnp.arange(n), n).astype(jnp.int32), (batch, n)),
        )
        tmin = jnp.min(tau, axis=1)
        teacher = FactoredTimesteps(jnp.stack([tmin, tmin, zero], axis=1), base)
        return student, teacher, jnp.broadcast_to(generate, (batch, n))
    if scheme == "single":
        s = t
    elif scheme == "full_mask":
        s = jnp.ones_like(t)
    elif ocfg.time_gap > 0:
        s = jnp.maximum(t - ocfg.time_gap * jax.random.uniform(k_s, (batch,), jnp.float32), 0.0)
    else:
        s = sample_time(k_s, (batch,), ocfg)
    masks = []
    for i, seg in enumerate(layout.segments):
        ratio = mask_ratios[seg.modality] if dual and seg.role != CONDITION else 0.0
        masks.append(token_mask(jax.random.fold_in(k_mask, i), batch, seg.num_tokens, ratio))
    mask = jnp.concatenate(masks, axis=1)
    tmin = jnp.minimum(t, s)
    student = FactoredTimesteps(
        jnp.stack([t, s, zero], axis=1), jnp.where(mask, S_INDEX, base).astype(jnp.int32)
    )
    teacher = FactoredTimesteps(jnp.stack([tmin, tmin, zero], axis=1), base)
    return student, teacher, mask


def separated_attention(mask: jax.Array, layout: Layout) -> jax.Array:
    """(B, 1, N, N) bool attention mask of attention separation: a masked token and an unmasked
    one do not attend to each other; condition tokens attend to, and are seen by, every token.
    ``mask`` (B, N) bool from :func:`layout_timesteps`."""
    condition = ~jnp.asarray(layout.generate_mask())
    allowed = (mask[:, :, None] == mask[:, None, :]) | condition[None, :, None] | condition[None, None, :]
    return allowed[:, None]


def inference_timesteps(layout: Layout, tau: jax.Array) -> FactoredTimesteps:
    """One timestep τ (B,) for every generate token, condition tokens clean: how samplers and
    validation query the model."""
    b = tau.shape[0]
    values = jnp.stack([tau, tau, jnp.zeros_like(tau)], axis=1).astype(jnp.float32)
    return FactoredTimesteps(
        values, jnp.broadcast_to(jnp.asarray(layout.base_index()), (b, layout.num_tokens))
    )


def ema_decay_at(step, decay: float, warmup: bool):
    """The EMA decay used by the update after ``step`` optimizer steps (0-based count before it).

    Without warm-up: ``decay``. With warm-up, TensorFlow's ``ExponentialMovingAverage(num_updates=n)``
    rule min(decay, (1 + n) / (10 + n)): the average starts short (0.1, 0.18, ...) and lengthens
    to ``decay``, so the initialisation's share of the EMA falls fast - 2e-13 after 100 steps at
    0.999, where a constant 0.999 still holds 90 % (:func:`initial_share`). Chosen over EDM2's power-function EMA because it keeps
    the EMA's meaning (a decay the paper states) and converges to it: after ~10/(1 − decay) steps
    the two rules are the same, so long runs are unaffected.
    """
    if not warmup:
        return decay
    n = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def gamma_at(step, gamma: float, start: int, tenfold: int):
    """The weight of the representation term after ``step`` optimizer steps (0-based, traced or not).

    ``tenfold = 0``: the constant ``gamma``. Else γ until ``start``, then γ · 0.1^((step − start) /
    tenfold): ten times smaller every ``tenfold`` steps. SRA's published smooth-L1 runs
    (vvvvvjdy/SRA ``SiT-SRA/train.py``, 256 px): 0.2 until epoch 149, then 0.2 · 0.1^((epoch − 149) /
    1000) - ``gamma=0.2, gamma_decay_start=149·E, gamma_decay_steps=1000·E`` with E steps per epoch
    (5004 for ImageNet at batch 256); SRA changes it once per epoch, here every step (the two differ
    by at most 0.23 % of γ within an epoch at that rate)."""
    if tenfold <= 0:
        return gamma
    late = jnp.maximum(jnp.asarray(step, jnp.float32) - start, 0.0)
    return gamma * jnp.power(0.1, late / tenfold)


def initial_share(steps: int, decay: float, warmup: bool) -> float:
    """Share of the EMA that is still the initial weights after ``steps`` updates: Π_n d_n."""
    # with warm-up, d_n = (1 + n) / (10 + n) until it reaches ``decay`` at n = ceil((10d − 1) / (1 − d))
    ramp = min(steps, max(0, math.ceil((10 * decay - 1) / (1 - decay)))) if warmup else 0
    log_share = sum(math.log((1.0 + n) / (10.0 + n)) for n in range(ramp))
    return math.exp(log_share + (steps - ramp) * math.log(decay)) if decay > 0 else float(steps == 0)


def ema_update(ema, params, decay: float):
    """ema ← decay·ema + (1 − decay)·params, leaf by leaf (float32)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
