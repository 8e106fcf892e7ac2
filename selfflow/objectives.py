"""Training objectives as small strategy objects, chosen by ``objective.kind``.

Every objective has the same call: ``objective.loss(student=, teacher=, batch=, layout=, key=)``
-> ``(loss, metrics)``, gradients flowing through ``student`` only (the teacher holds the EMA
weights; objectives that do not use it never run it). ``metrics`` always holds ``loss``,
``fm_loss``, ``rep_loss``, ``cos_sim`` and ``fm_loss/<modality>`` per generated modality, so
logs and checkpoints read the same for every objective.

    flow_matching  one τ per sample, no teacher                      (SiT)
    dts            dual timesteps: a masked share of tokens at s      (the paper's "DTS only")
    self_flow      dual timesteps + γ · L_rep against the EMA teacher  (the paper)
    sra            one timestep; L_rep against the teacher at t − U(0, t_max)  (SRA)
    repa           one timestep; γ · L_align against a frozen encoder's features of the clean
                   images, no teacher                                 (REPA)

``objective.timesteps`` (dts, full_mask, diffusion_forcing) and ``objective.attention_separation``
change how dts and self_flow noise the student (see :func:`selfflow.objective.layout_timesteps`).

A new objective is a subclass registered under a new ``kind``::

    @register_objective
    class MyObjective(FlowMatching):
        kind = "mine"
        def loss(self, *, student, teacher, batch, layout, key): ...

after which ``objective.kind="mine"`` validates and trains (see the README's "Extending").
All randomness of a step comes from ``key``: ε, t, s, the token masks and the label dropout.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from selfflow.errors import ConfigError
from selfflow.layout import GENERATE, FactoredTimesteps, Layout
from selfflow.objective import (
    SegmentBatch,
    cosine_per_token,
    drop_captions,
    drop_labels,
    gamma_at,
    layout_timesteps,
    noise_like,
    noised_segments,
    representation_loss,
    representation_stats,
    separated_attention,
    velocity_mse,
)

OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: makes ``objective.kind = cls.kind`` available to configs."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__}.kind is empty: name the objective")
    OBJECTIVES[cls.kind] = cls
    return cls


class Draw(NamedTuple):
    """One step's random draw: clean tokens, noise, timesteps and labels of a batch."""

    x0: tuple  # per segment (B, n_i, d_i) float32 (text segments after caption dropout)
    noise: tuple  # per segment ε, same shapes
    student_times: FactoredTimesteps
    teacher_times: FactoredTimesteps  # every generate token at min(t, s)
    labels: jax.Array  # (B,) after label dropout
    mask: jax.Array  # (B, N) bool: the tokens at the second timestep


class Objective:
    """Base of the objectives: holds the settings, draws the noise and timesteps, and sums the
    per-modality flow-matching loss. Subclasses set ``kind`` and implement :meth:`loss`."""

    kind: ClassVar[str] = ""
    dual_timesteps: ClassVar[bool] = False  # masked tokens at a second timestep s

    def __init__(self, *, cfg: Any, mask_ratios: dict[str, float], loss_weights: dict[str, float]):
        """``cfg``: the run's :class:`~selfflow.config.Config` (an objective reads its own
        settings from it); ``mask_ratios``/``loss_weights``: per modality, resolved by the task
        (a modality missing from ``loss_weights`` weighs 1)."""
        self.settings, self.num_classes = cfg.objective, cfg.data.num_classes
        self.mask_ratios, self.loss_weights = dict(mask_ratios), dict(loss_weights)

    @classmethod
    def uses_teacher(cls, settings) -> bool:
        """Whether :meth:`loss` runs the teacher with these ``objective`` settings."""
        return False

    def draw(self, key: jax.Array, batch: SegmentBatch, layout: Layout) -> Draw:
        x0 = tuple(t.astype(jnp.float32) for t in batch.tokens)
        k_noise, k_time, k_label = jax.random.split(key, 3)
        student, teacher, mask = layout_timesteps(
            k_time, x0[0].shape[0], layout, self.settings, self.mask_ratios, dual=self.dual_timesteps
        )
        labels = drop_labels(k_label, batch.labels, self.settings.label_dropout, self.num_classes)
        x0 = drop_captions(k_label, x0, layout, self.settings.text_dropout)  # the teacher's too
        return Draw(x0, noise_like(k_noise, x0), student, teacher, labels, mask)

    def generation_loss(self, velocity: tuple, draw: Draw, layout: Layout) -> tuple[jax.Array, dict]:
        """Σ_m w_m · MSE_m over the generate tokens of each modality m, and ``fm_loss/<m>``."""
        per_modality = velocity_mse(velocity, draw.x0, draw.noise, layout)
        total = sum(self.loss_weights.get(m, 1.0) * v for m, v in per_modality.items())
        return total, {f"fm_loss/{m}": v for m, v in per_modality.items()}

    def forward_student(self, student, draw: Draw, batch: SegmentBatch, layout: Layout, hidden_layer=None):
        """The student on its noised view (``draw.student_times``) -> ModelOutput; with
        ``objective.attention_separation`` the masked and unmasked tokens do not attend to each other."""
        inputs = noised_segments(draw.x0, draw.noise, draw.student_times.dense(), layout)
        separate = self.settings.attention_separation and self.dual_timesteps
        extra = {"attention_mask": separated_attention(draw.mask, layout)} if separate else {}
        return student(
            inputs,
            draw.student_times,
            draw.labels,
            batch.positions,
            modalities=layout.modalities,
            hidden_layer=hidden_layer,
            **extra,
        )

    def loss(self, *, student, teacher, batch: SegmentBatch, layout: Layout, key: jax.Array):
        raise NotImplementedError

    @property
    def scheduled(self) -> bool:
        """Whether γ changes with the step (``objective.gamma_decay_steps``): the training step then
        passes ``step=`` to :meth:`loss`."""
        return self.settings.gamma_decay_steps > 0

    def weight(self, step=None):
        """γ after ``step`` optimizer steps (:func:`~selfflow.objective.gamma_at`); the constant
        ``objective.gamma`` when ``step`` is None (evaluation) or γ does not decay."""
        o = self.settings
        return o.gamma if step is None else gamma_at(step, o.gamma, o.gamma_decay_start, o.gamma_decay_steps)

    @staticmethod
    def _metrics(fm: jax.Array, rep: jax.Array, cos: jax.Array, extra: dict, loss: jax.Array) -> dict:
        return {**extra, "loss": loss, "fm_loss": fm, "rep_loss": rep, "cos_sim": cos}


@register_objective
class FlowMatching(Objective):
    """L = Σ_m w_m · ||v − (ε − x0)||² with one τ per sample: the SiT baseline."""

    kind = "flow_matching"

    def loss(self, *, student, teacher, batch: SegmentBatch, layout: Layout, key: jax.Array):
        del teacher  # not used
        draw = self.draw(key, batch, layout)
        out = self.forward_student(student, draw, batch, layout)
        fm, extra = self.generation_loss(out.velocity, draw, layout)
        zero = jnp.zeros((), jnp.float32)
        return fm, self._metrics(fm, zero, jnp.ones((), jnp.float32), extra, fm)


@register_objective
class DualTimestep(FlowMatching):
    """Flow matching on the dual-timestep inputs (a masked share of tokens at s), no teacher."""

    kind = "dts"
    dual_timesteps = True


@register_objective
class SelfFlow(DualTimestep):
    """DTS + γ · L_rep: the projected student features at block ``student_layer`` are pulled
    towards the EMA teacher's at block ``teacher_layer``, the teacher seeing every token at
    min(t, s) with the same ε. γ = 0 is exactly DTS (the teacher is then never run)."""

    kind = "self_flow"

    def __init__(self, *, cfg: Any, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        self.student_layer, self.teacher_layer = cfg.student_layer, cfg.teacher_layer

    @classmethod
    def uses_teacher(cls, settings) -> bool:
        return settings.gamma > 0

    def loss(self, *, student, teacher, batch: SegmentBatch, layout: Layout, key: jax.Array, step=None):
        """``step``: optimizer steps so far, for a decaying γ (:meth:`weight`)."""
        if not self.uses_teacher(self.settings):
            return super().loss(student=student, teacher=teacher, batch=batch, layout=layout, key=key)
        fm, rep, metrics = self.terms(student=student, teacher=teacher, batch=batch, layout=layout, key=key)
        gamma = self.weight(step)
        loss = fm + gamma * rep
        return loss, {**metrics, "loss": loss, **({"rep_weight": gamma} if self.scheduled else {})}

    def terms(self, *, student, teacher, batch: SegmentBatch, layout: Layout, key: jax.Array):
        """(L_gen, L_rep, metrics) of one step, unweighted: what :meth:`loss` sums with γ and what
        :func:`selfflow.diagnostics.gradient_ratio` differentiates separately. The metrics add the
        ``rep/*`` alignment statistics of :func:`selfflow.objective.representation_stats`."""
        draw = self.draw(key, batch, layout)
        names, distance = layout.modalities, self.settings.rep_distance
        out = self.forward_student(student, draw, batch, layout, hidden_layer=self.student_layer)
        teacher_inputs = noised_segments(draw.x0, draw.noise, draw.teacher_times.dense(), layout)
        target = teacher.forward_until(
            teacher_inputs,
            draw.teacher_times,
            draw.labels,
            batch.positions,
            layer=self.teacher_layer,
            modalities=names,
        )
        projected, generate = student.project(out.hidden), jnp.asarray(layout.generate_mask())
        rep = representation_loss(projected, target, generate, distance)
        stats = representation_stats(projected, target, generate)
        fm, extra = self.generation_loss(out.velocity, draw, layout)
        return fm, rep, self._metrics(fm, rep, stats["rep/cos_own"], {**extra, **stats}, fm)


@register_objective
class SRA(SelfFlow):
    """SRA (Jiang et al. 2025, github.com/vvvvvjdy/SRA ``SiT-SRA/loss.py``): one student timestep t
    per sample, no masking; the EMA teacher sees the same ε at t' = clip(t − U(0, t_max), 0, 1),
    t_max = ``objective.time_gap`` (0 = SRA's 0.2). Projected student block l against teacher block
    k with ``objective.rep_distance``, weight γ. SRA's code: SiT-XL blocks 8 -> 20, cosine weight
    0.5 (its published numbers used ``smooth_l1`` with an epoch-dependent weight), EMA 0.9999, the
    teacher with the student's dropped labels - all settable here."""

    kind = "sra"
    dual_timesteps = False
    DEFAULT_T_MAX = 0.2

    def draw(self, key: jax.Array, batch: SegmentBatch, layout: Layout) -> Draw:
        d = super().draw(key, batch, layout)
        t = d.student_times.values[:, 0]
        t_max = self.settings.time_gap or self.DEFAULT_T_MAX
        gap = t_max * jax.random.uniform(jax.random.fold_in(key, 1), t.shape, jnp.float32)
        teacher_t = jnp.clip(t - gap, 0.0, 1.0)
        values = jnp.stack([teacher_t, teacher_t, jnp.zeros_like(t)], axis=1)
        return d._replace(teacher_times=FactoredTimesteps(values, d.teacher_times.index))


@register_objective
class REPA(FlowMatching):
    """REPA (Yu et al. 2024, github.com/sihyun-yu/REPA ``loss.py``, ``train.py``, ``models/sit.py``):
    SiT's flow matching - exactly :class:`FlowMatching`'s draw (one τ per sample), noise and loss -
    plus γ · L_align with

        L_align = −mean over the batch and the generated image tokens of cos(h_φ(h_l), y*),

    the cosine over the feature axis (REPA's ``proj_loss``), h_l (B, n, D) the student's hidden
    state after block l = ``student_layer``, h_φ the model's ``repa_projector`` (D → P → P → Z with
    SiLU, :class:`~selfflow.layers.RepaProjector`), y* (B, n, Z) the stop-gradient features of the
    frozen ``objective.encoder`` of the *clean* images (the image segment's x0 detokenised to
    (B, H, W, C) in [-1, 1]) resized to the token grid (:mod:`selfflow.encoders.registry`).
    REPA's SiT-XL/2 setting: encoder_depth 8 (``student_layer=8``), proj_coeff λ = 0.5
    (``gamma=0.5``), projector width 2048, DINOv2-B/14 at 224 px (Z = 768).

    Metrics: ``rep_loss`` = L_align = −cos, in [−1, 1] (REPA's sign; Self-Flow's rep_loss is
    1 − cos), ``cos_sim`` = −rep_loss. γ = 0 trains exactly flow matching (same key, same loss)
    and still logs the alignment. Only generated image segments have targets (REPA is image-only):
    other segments add flow matching alone, and a layout without a generated image segment logs
    rep_loss = cos_sim = 0.

    Encoder weights: loaded once when the objective is built (a missing or wrong file, or a feature
    width other than ``objective.encoder_dim``, is a ConfigError before anything compiles); never in
    the train state; under ``stop_gradient``. :meth:`loss` takes them as ``encoder_params``, which
    the training step (:mod:`selfflow.step`) passes as an argument of the compiled program: closed
    over, they would be embedded in it as constants (measured on CPU: a DINOv2-S forward compiled
    in 3.5 s with its weights as constants, 176 MB of HLO text, against 1.3 s as an argument).
    """

    kind = "repa"
    uses_encoder: ClassVar[bool] = True

    def __init__(self, *, cfg: Any, **kwargs):
        super().__init__(cfg=cfg, **kwargs)
        from selfflow.encoders.precomputed import is_precomputed
        from selfflow.encoders.registry import load_encoder

        self.student_layer, self.patch = cfg.student_layer, cfg.model.resolved("patch_size")
        self.encoder = None if is_precomputed(self.settings.encoder) else load_encoder(self.settings.encoder)
        known = self.encoder and self.encoder.feature_dim
        if known and known != self.settings.encoder_dim:
            raise ConfigError(
                f"objective.encoder={self.settings.encoder!r} gives {known}-dim features but "
                f"objective.encoder_dim={self.settings.encoder_dim} (the REPA projector's output): "
                f"set objective.encoder_dim={known}"
            )

    def image_grid(self, positions, sl: slice, num_tokens: int) -> tuple[int, int]:
        """(gh, gw) of an image segment: from its (t, h, w) positions (concrete in the step: the
        task's), else a square grid."""
        try:
            hw = np.asarray(positions)[sl, 1:]
            return int(hw[:, 0].max()) + 1, int(hw[:, 1].max()) + 1
        except jax.errors.TracerArrayConversionError:
            side = int(round(num_tokens**0.5))
            if side * side != num_tokens:
                raise ConfigError(
                    f"objective.kind='repa': an image segment of {num_tokens} tokens with traced "
                    "positions: pass concrete positions to know its grid"
                ) from None
            return side, side

    def targets(
        self, x0: tuple, positions, layout: Layout, encoder_params=None, features=None
    ) -> list[tuple[slice, jax.Array]]:
        """[(token slice, y* (B, n, Z) float32)] for each generated image segment of ``layout``:
        the encoder's features of the clean image, or the batch's precomputed ``features``
        (B, gh, gw, Z) when the run reads them (one image segment; shapes checked by the task)."""
        import modalities
        from selfflow.encoders.registry import check_encoder, encoder_features

        image, out = modalities.get("image"), []
        for seg, sl, x in zip(layout.segments, layout.slices(), x0):
            if seg.modality != "image" or seg.role != GENERATE:
                continue
            if self.encoder is None:
                if features is None:
                    raise ConfigError(
                        f"objective.encoder='precomputed' but layout {layout.name!r}'s batch has no "
                        "encoder_features (write them with `selfflow prepare --features`)"
                    )
                y = jax.lax.stop_gradient(jnp.asarray(features, jnp.float32))
                out.append((sl, y.reshape(y.shape[0], -1, y.shape[-1])))
                continue
            gh, gw = self.image_grid(positions, sl, seg.num_tokens)
            channels = x.shape[-1] // (self.patch * self.patch)
            spec = image.Spec(gh * self.patch, gw * self.patch, channels, self.patch)
            check_encoder(self.encoder, (spec.height, spec.width, channels), self.settings.encoder_dim)
            images = image.detokenize(x, spec)
            out.append((sl, encoder_features(self.encoder, images, (gh, gw), encoder_params)))
        return out

    def loss(
        self,
        *,
        student,
        teacher,
        batch: SegmentBatch,
        layout: Layout,
        key: jax.Array,
        encoder_params=None,
        step=None,
    ):
        """As every objective's; ``encoder_params``: the encoder's weights when they are an argument
        of the jitted caller (default: the loaded ones, closed over); ``step`` as SelfFlow's."""
        del teacher  # not used
        draw = self.draw(key, batch, layout)
        out = self.forward_student(student, draw, batch, layout, hidden_layer=self.student_layer)
        fm, extra = self.generation_loss(out.velocity, draw, layout)
        targets = self.targets(draw.x0, batch.positions, layout, encoder_params, batch.features)
        if targets:
            hidden = jnp.concatenate([out.hidden[:, sl] for sl, _ in targets], axis=1)
            target = jnp.concatenate([y for _, y in targets], axis=1)
            cos = jnp.mean(cosine_per_token(student.project_to_encoder(hidden), target))
        else:
            cos = jnp.zeros((), jnp.float32)
        align = -cos
        gamma = self.weight(step)
        loss = fm + gamma * align
        metrics = self._metrics(fm, align, cos, extra, loss)
        return loss, {**metrics, **({"rep_weight": gamma} if self.scheduled else {})}


def uses_encoder(kind: str) -> bool:
    """Whether objective ``kind`` aligns with a frozen encoder (its model then has REPA's projector)."""
    return bool(getattr(OBJECTIVES.get(kind), "uses_encoder", False))


def make_objective(cfg, mask_ratios: dict[str, float], loss_weights: dict[str, float]) -> Objective:
    """The objective ``cfg.objective.kind`` names (registered in :data:`OBJECTIVES`)."""
    return OBJECTIVES[cfg.objective.kind](cfg=cfg, mask_ratios=mask_ratios, loss_weights=loss_weights)
