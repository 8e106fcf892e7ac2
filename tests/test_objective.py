"""The Self-Flow objective: timestep sampling, masking, teacher input, loss values, EMA."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from selfflow import objective
from selfflow.config import Config, ModelConfig, ObjectiveConfig, resolve
from selfflow.layout import CONDITION, Layout, Segment, single
from selfflow.model import ModelOutput
from selfflow.objectives import make_objective

OCFG = ObjectiveConfig(mask_ratio=0.25)


class _Times(NamedTuple):
    student: np.ndarray  # (B, N) dense per-token τ
    teacher: np.ndarray  # (B, N)
    t: np.ndarray
    s: np.ndarray
    mask: np.ndarray


def _dual(key_seed=0, batch=4000, tokens=16, ocfg=OCFG):
    """The timesteps the training objective draws for a one-segment layout."""
    student, teacher, mask = objective.layout_timesteps(
        jax.random.key(key_seed),
        batch,
        single("image", tokens),
        ocfg,
        {"image": 0.25 if ocfg.mask_ratio is None else ocfg.mask_ratio},
        dual=True,
    )
    return _Times(
        np.asarray(student.dense()),
        np.asarray(teacher.dense()),
        np.asarray(student.values[:, 0]),
        np.asarray(student.values[:, 1]),
        np.asarray(mask),
    )


# ---------------------------------------------------------------------------- p(t) and the mask


@pytest.mark.parametrize(
    "ocfg, cdf",
    [
        (ObjectiveConfig(), stats.uniform.cdf),
        (
            ObjectiveConfig(time_distribution="logit_normal", logit_normal_mean=0.3, logit_normal_std=0.8),
            lambda x: stats.norm.cdf((np.log(x) - np.log1p(-x) - 0.3) / 0.8),
        ),
        # SD3 shift a=3 of a uniform: P(t' <= x) = P(t <= x / (a - (a - 1) x)).
        (ObjectiveConfig(time_shift=3.0), lambda x: x / (3.0 - 2.0 * x)),
    ],
)
def test_every_token_timestep_is_distributed_as_p_t(ocfg, cdf):
    times = _dual(ocfg=ocfg)
    tau = np.asarray(times.student)
    # Any fixed token position, masked or not, must follow p(t) (the DTS marginal property).
    for token in (0, 7, 15):
        assert stats.kstest(tau[:, token], cdf).pvalue > 1e-3
    # ... and a fixed token restricted to masked rows is distributed as p(t) too (s ~ p(t)).
    masked = np.asarray(times.mask)[:, 3]
    assert stats.kstest(tau[masked, 3], cdf).pvalue > 1e-3


def test_uniform_time_fails_ks_against_a_shifted_cdf():
    """The KS check above has power: uniform draws are rejected against the shifted CDF."""
    tau = np.asarray(_dual().student)[:, 0]
    assert stats.kstest(tau, lambda x: x / (3.0 - 2.0 * x)).pvalue < 1e-6


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5])
def test_masked_fraction_matches_mask_ratio(ratio):
    times = _dual(batch=64, tokens=64, ocfg=ObjectiveConfig(mask_ratio=ratio))
    per_row = np.asarray(times.mask).sum(axis=1)
    assert np.all(per_row == round(ratio * 64))
    # masked tokens carry s, the others t
    tau, t, s, m = map(np.asarray, (times.student, times.t, times.s, times.mask))
    np.testing.assert_array_equal(tau, np.where(m, s[:, None], t[:, None]))


def test_mask_positions_are_uniform_over_tokens():
    counts = np.asarray(_dual(batch=4000, tokens=16).mask).sum(axis=0)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_t_and_s_are_unordered_and_independent():
    times = _dual(batch=20000)
    t, s = np.asarray(times.t), np.asarray(times.s)
    frac = np.mean(s < t)
    assert abs(frac - 0.5) < 0.02
    assert abs(np.corrcoef(t, s)[0, 1]) < 0.03
    np.testing.assert_array_equal(
        times.teacher, np.broadcast_to(np.minimum(t, s)[:, None], times.teacher.shape)
    )


@pytest.mark.parametrize("gap", [0.2, 0.5])
def test_time_gap_puts_s_within_the_gap_below_t(gap):
    times = _dual(batch=20000, ocfg=dataclasses.replace(OCFG, time_gap=gap))
    t, s = times.t, times.s
    assert np.all(s <= t) and np.all(s >= np.maximum(t - gap, 0.0) - 1e-6)
    # away from the clip at 0, t - s is uniform on [0, gap]
    far = t > gap
    assert stats.kstest((t - s)[far] / gap, "uniform").pvalue > 1e-3
    # the teacher then sits at s on every token, the student at t except the masked tokens
    np.testing.assert_array_equal(times.teacher, np.broadcast_to(s[:, None], times.teacher.shape))
    np.testing.assert_array_equal(times.student, np.where(times.mask, s[:, None], t[:, None]))


def test_time_gap_needs_a_second_timestep():
    from selfflow.config import ConfigError, validate

    with pytest.raises(ConfigError, match="objective.time_gap=0.2 needs a second timestep"):
        validate(Config(objective=ObjectiveConfig(kind="flow_matching", time_gap=0.2)))
    with pytest.raises(ConfigError, match=r"objective.time_gap=1.5: expected a value in \[0, 1\]"):
        validate(Config(objective=ObjectiveConfig(time_gap=1.5)))


# ---------------------------------------------------------------------------- teacher input


class _Recorder:
    """Stands in for the transformer: records its inputs (segments concatenated), returns
    deterministic features. Segment token dims must divide ``width``."""

    def __init__(self, width):
        self.calls, self.width = [], width

    def _features(self, xs, fn):
        return jnp.concatenate([jnp.tile(fn(x), (1, 1, self.width // x.shape[-1])) for x in xs], 1)

    def __call__(self, xs, times, labels, positions, *, modalities, hidden_layer=None):
        self.calls.append(
            (
                "student",
                jnp.concatenate(xs, 1) if len(set(x.shape[-1] for x in xs)) == 1 else xs,
                times.dense(),
                labels,
            )
        )
        out = tuple(jnp.tanh(x) for x in xs)
        return ModelOutput(out, None if hidden_layer is None else self._features(xs, lambda x: x))

    def forward_until(self, xs, times, labels, positions, *, layer, modalities):
        self.calls.append(
            (
                "teacher",
                jnp.concatenate(xs, 1) if len(set(x.shape[-1] for x in xs)) == 1 else xs,
                times.dense(),
                labels,
            )
        )
        return self._features(xs, jnp.cos)

    def project(self, h):
        return h * 2.0


def _image_loss(student, teacher, x0, labels, key, cfg):
    """The configured objective on a one-segment image batch x0 (B, N, C)."""
    cfg = resolve(cfg)
    layout = single("image", x0.shape[1])
    obj = make_objective(cfg, {"image": cfg.modalities[0].mask_ratio}, {"image": 1.0})
    batch = objective.SegmentBatch((x0,), labels, jnp.zeros((x0.shape[1], 3)))
    return obj.loss(student=student, teacher=teacher, batch=batch, layout=layout, key=key)


def test_teacher_sees_same_noise_at_min_t_s_on_every_token():
    cfg = Config(model=ModelConfig(depth=4), objective=ObjectiveConfig(mask_ratio=0.5, label_dropout=0.0))
    b, n, c = 32, 16, 4
    x0 = jax.random.normal(jax.random.key(1), (b, n, c))
    rec = _Recorder(width=8)
    _image_loss(rec, rec, x0, jnp.arange(b) % 10, jax.random.key(7), cfg)
    (_, xs, tau_s, _), (_, xt, tau_t, _) = rec.calls
    tau_s, tau_t = np.asarray(tau_s), np.asarray(tau_t)
    # teacher: every token at min over the student's two values
    assert np.all(tau_t == tau_t[:, :1])
    tau_t = tau_t[:, 0]
    np.testing.assert_array_equal(tau_t, tau_s.min(axis=1))
    # recover the noise from each view; it is the same ε for every token of both views
    x0 = np.asarray(x0, np.float64)
    eps_s = (np.asarray(xs) - (1 - tau_s[..., None]) * x0) / tau_s[..., None]
    eps_t = (np.asarray(xt) - (1 - tau_t[:, None, None]) * x0) / tau_t[:, None, None]
    np.testing.assert_allclose(eps_t, eps_s, rtol=2e-3, atol=2e-3)
    # tokens that the student sees at min(t, s) are bit-identical in the teacher's view
    same = tau_s == tau_t[:, None]
    assert same.any() and (~same).any()
    np.testing.assert_array_equal(np.asarray(xt)[same], np.asarray(xs)[same])


# ---------------------------------------------------------------------------- loss values


def _np_cos_per_token(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_velocity_mse_matches_numpy_per_modality():
    """Segments of one modality pool by element count; condition segments carry no loss."""
    rng = np.random.default_rng(0)
    layout = Layout(
        "l", (Segment("video", 5), Segment("audio", 3), Segment("video", 2), Segment("image", 4, CONDITION))
    )
    shapes = [(3, 5, 4), (3, 3, 6), (3, 2, 4), (3, 4, 2)]
    v, x0, eps = ([rng.normal(size=sh).astype(np.float32) for sh in shapes] for _ in range(3))
    got = objective.velocity_mse(*(tuple(map(jnp.asarray, a)) for a in (v, x0, eps)), layout)
    assert set(got) == {"video", "audio"}

    def sq(i):
        return np.sum((v[i].astype(np.float64) - (eps[i] - x0[i])) ** 2)

    assert float(got["video"]) == pytest.approx((sq(0) + sq(2)) / (x0[0].size + x0[2].size), rel=1e-6)
    assert float(got["audio"]) == pytest.approx(sq(1) / x0[1].size, rel=1e-6)


def test_noised_segments_interpolates_generate_and_keeps_condition_clean():
    layout = Layout("l", (Segment("image", 2, CONDITION), Segment("video", 3)))
    x0 = (jnp.ones((2, 2, 4)), jnp.ones((2, 3, 4)))
    noise = (jnp.zeros((2, 2, 4)), jnp.full((2, 3, 4), 3.0))
    out = objective.noised_segments(x0, noise, jnp.array([0.5, 0.25]), layout)
    np.testing.assert_array_equal(np.asarray(out[0]), 1.0)  # condition: clean whatever τ
    np.testing.assert_allclose(np.asarray(out[1])[:, 0, 0], [0.5 * 1 + 0.5 * 3, 0.75 * 1 + 0.25 * 3])


def test_representation_loss_is_per_token_cosine_over_features():
    rng = np.random.default_rng(1)
    # Rows with very different norms per token: a cosine over the token axis (dim=1) differs.
    a = rng.normal(size=(2, 6, 8)) * rng.uniform(0.1, 10, size=(2, 6, 1))
    b = rng.normal(size=(2, 6, 8)) * rng.uniform(0.1, 10, size=(2, 6, 1)) + 0.5 * a
    expected = 1.0 - _np_cos_per_token(a, b).mean()
    wrong_axis = 1.0 - np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    assert abs(expected - wrong_axis) > 0.05  # the fixture separates the two definitions
    got = float(objective.representation_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_l1_representation_loss_is_mean_absolute_difference_per_token():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 6, 8)), rng.normal(size=(2, 6, 8))
    mask = np.array([True, True, False, True, False, True])
    expected = np.abs(a - b).mean(-1)[:, mask].mean()
    got = float(
        objective.representation_loss(
            jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(mask), distance="l1"
        )
    )
    assert got == pytest.approx(expected, rel=1e-5)
    # l1 is not scale-invariant: doubling both features doubles it (the cosine would not move)
    got2 = float(
        objective.representation_loss(
            jnp.asarray(2 * a, jnp.float32), jnp.asarray(2 * b, jnp.float32), jnp.asarray(mask), distance="l1"
        )
    )
    assert got2 == pytest.approx(2 * expected, rel=1e-5)


def test_l1_objective_reports_its_loss_and_the_cosine():
    b, n, c = 4, 8, 4
    x0, labels = jax.random.normal(jax.random.key(2), (b, n, c)), jnp.zeros(b, jnp.int32)
    cos_cfg = Config(model=ModelConfig(depth=4), objective=ObjectiveConfig(gamma=0.8))
    l1_cfg = dataclasses.replace(cos_cfg, objective=dataclasses.replace(cos_cfg.objective, rep_distance="l1"))
    _, mc = _image_loss(_Recorder(8), _Recorder(8), x0, labels, jax.random.key(3), cos_cfg)
    loss, ml = _image_loss(_Recorder(8), _Recorder(8), x0, labels, jax.random.key(3), l1_cfg)
    assert float(ml["cos_sim"]) == pytest.approx(float(mc["cos_sim"]), rel=1e-6)  # same draws, same views
    assert abs(float(ml["rep_loss"]) - float(mc["rep_loss"])) > 1e-3
    assert float(loss) == pytest.approx(float(ml["fm_loss"]) + 0.8 * float(ml["rep_loss"]), rel=1e-6)


def test_total_loss_is_fm_plus_gamma_rep_and_kinds_switch_terms():
    b, n, c = 4, 8, 4
    x0, labels = jax.random.normal(jax.random.key(2), (b, n, c)), jnp.zeros(b, jnp.int32)
    base = Config(model=ModelConfig(depth=4), objective=ObjectiveConfig(gamma=0.8))
    loss, m = _image_loss(_Recorder(8), _Recorder(8), x0, labels, jax.random.key(3), base)
    assert float(m["rep_loss"]) > 0
    assert float(loss) == pytest.approx(float(m["fm_loss"]) + 0.8 * float(m["rep_loss"]), rel=1e-6)
    for kind in ("flow_matching", "dts"):
        rec = _Recorder(8)
        cfg = dataclasses.replace(base, objective=dataclasses.replace(base.objective, kind=kind))
        loss, m = _image_loss(rec, rec, x0, labels, jax.random.key(3), cfg)
        assert [c[0] for c in rec.calls] == ["student"]  # no teacher forward
        assert float(loss) == float(m["fm_loss"]) and float(m["rep_loss"]) == 0.0
        tau = np.asarray(rec.calls[0][2])
        one_per_sample = np.all(tau == tau[:, :1], axis=1)
        assert one_per_sample.all() == (kind == "flow_matching")


def test_label_dropout_rate_and_null_class():
    labels = jnp.zeros(20000, jnp.int32) + 3
    dropped = np.asarray(objective.drop_labels(jax.random.key(0), labels, 0.1, 10))
    assert set(np.unique(dropped)) == {3, 10}
    assert abs(np.mean(dropped == 10) - 0.1) < 0.01


def test_ema_update_rule():
    ema = {"w": jnp.array([1.0, 2.0])}
    params = {"w": jnp.array([3.0, -2.0])}
    out = objective.ema_update(ema, params, 0.9)
    np.testing.assert_allclose(np.asarray(out["w"]), [1.2, 1.6], rtol=1e-6)
