"""Layout samplers (Euler, Heun, SiT SDE) and guidance, on a 2-D Gaussian mixture with an exact
velocity field, called through the real model signature so the real samplers are exercised.

Data of class y: each token is a 2-D point x0 ~ Σ_k π_yk N(μ_k, s_k² I). With a = 1 − τ,
x_τ = a·x0 + τ·ε given component k is N(a·μ_k, S_k I), S_k = a²s_k² + τ², so the exact velocity
is E[ε − x0 | x_τ] = Σ_k r_k(x)·((τ − a·s_k²)/S_k · (x − a·μ_k) − μ_k), with posterior
responsibilities r_k ∝ π_yk N(x; a·μ_k, S_k I). The null class is the marginal over the classes.
Components are ≥ 3.2 apart and s_k ≤ 0.4, so a point's nearest mean names its component
(misassignment ~ 1e-4). Every token is an independent draw, so B rows × N tokens = B·N points.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfflow.layout import Layout, Segment, single
from selfflow.model import ModelOutput
from selfflow.sample import sample_segments

MEANS = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], np.float32)  # μ_k
STDS = np.array([0.3, 0.4, 0.35], np.float32)  # s_k
WEIGHTS = np.array(
    [
        [0.6, 0.3, 0.1],  # class 0
        [0.1, 0.3, 0.6],  # class 1
        [0.35, 0.3, 0.35],
    ],
    np.float32,
)  # null class 2 = the classes' marginal
NULL = 2
POSITIONS = jnp.zeros((1,))  # the fake models ignore positions
B, N = 500, 8  # 4000 points per sample set
LAYOUT = single("image", N)


def mixture_velocity(x, tau, labels):
    """Exact velocity; x (R, n, 2), tau (R, n) per token, labels (R,) -> (R, n, 2) float32."""
    tau = tau[..., None, None]  # (R, n, 1, 1) against the component axis
    a = 1.0 - tau
    var = a * a * STDS[:, None] ** 2 + tau * tau  # S_k, (R, n, K, 1)
    d = x[..., None, :] - a * MEANS  # x − a·μ_k, (R, n, K, 2)
    logits = (
        jnp.log(jnp.asarray(WEIGHTS)[labels])[:, None, :]
        - 0.5 * (d * d).sum(-1) / var[..., 0]
        - jnp.log(var[..., 0])
    )  # log π_k N(x; aμ_k, S_k I) up to a constant (2-D)
    r = jax.nn.softmax(logits, axis=-1)[..., None]
    return (r * ((tau - a * STDS[:, None] ** 2) / var * d - MEANS)).sum(-2)


class Mixture:
    """A one-segment "model" with the real signature. ``calls`` gets (rows, τ) per evaluation
    (a ``jax.debug.callback`` fires once per executed model call, inside loops and conds)."""

    def __init__(self, poison_null: bool = False):
        self.calls, self.poison_null = [], poison_null

    def __call__(self, xs, times, labels, positions, *, modalities):
        assert modalities == ("image",)
        (x,) = xs
        tau = times.dense()
        jax.debug.callback(lambda t, r=x.shape[0]: self.calls.append((r, float(t))), times.values[0, 0])
        v = mixture_velocity(x, tau, labels)
        if self.poison_null:  # any null-class row would turn its sample into NaN
            v = jnp.where((labels == NULL)[:, None, None], jnp.nan, v)
        return ModelOutput((v,))


MIX = Mixture()  # shared where calls are not inspected: jit caches on the (static) model


@partial(jax.jit, static_argnames=("model", "layout", "method", "steps", "cfg_scale", "guidance_interval"))
def sample(
    model, layout, start, labels, key=None, *, method, steps, cfg_scale=1.0, guidance_interval=(0.0, 1.0)
):
    return sample_segments(
        model,
        layout,
        start,
        labels,
        POSITIONS,
        method=method,
        steps=steps,
        cfg_scale=cfg_scale,
        guidance_interval=guidance_interval,
        null_class=NULL,
        key=key,
    )


def points(x) -> tuple[np.ndarray, np.ndarray]:
    """(B, N, 2) samples -> (B·N, 2) points and each one's component (nearest mean)."""
    p = np.asarray(x, np.float64).reshape(-1, 2)
    return p, np.argmin(((p[:, None] - MEANS) ** 2).sum(-1), axis=1)


def pooled_std(p):
    return float(np.sqrt(((p - p.mean(0)) ** 2).mean()))  # isotropic components: both coords


NOISE = jax.random.normal(jax.random.key(0), (B, N, 2))
CLASS0 = jnp.zeros(B, jnp.int32)
HALVES = (jnp.arange(B) % 2).astype(jnp.int32)


CLASS0_STEPS = [("euler", 200), ("heun", 32), ("sde", 250)]


@pytest.fixture(scope="module")
def class0_samples():
    """Class-0 samples from the same noise: Euler 200 steps, Heun 32, SDE 250 (its protocol)."""
    key = jax.random.key(1)
    return {
        m: np.asarray(sample(MIX, LAYOUT, (NOISE,), CLASS0, key, method=m, steps=s)[0])
        for m, s in CLASS0_STEPS
    }


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_ode_samples_land_on_the_mixture(class0_samples, method):
    # Tolerances: 4 standard errors of the statistic for n points, plus 1% / 0.02 for the
    # integrator's discretisation (Euler 200 steps moves the endpoints ~0.004 on average).
    p, comp = points(class0_samples[method])
    n = len(p)
    for k, pi in enumerate(WEIGHTS[0]):
        q = p[comp == k]
        assert abs(len(q) / n - pi) <= 4 * np.sqrt(pi * (1 - pi) / n), (k, len(q) / n)
        np.testing.assert_allclose(q.mean(0), MEANS[k], atol=4 * STDS[k] / np.sqrt(len(q)) + 0.02)
        # std of a sample std ≈ s/sqrt(2m), m = 2·len(q) coordinates
        assert abs(pooled_std(q) / STDS[k] - 1) <= 4 / np.sqrt(4 * len(q)) + 0.01, k


def last_step_std(s: float, h: float = 0.04) -> float:
    """Std the SDE's noiseless last "Mean" step leaves for N(μ, s²) data: from τ = h,
    x' = (1 − h)·x + h(2 − h)·u (drift with score (s_SiT·u − x)/h, s_SiT = 1 − h), and u is linear
    in x with slope −(h − a·s²)/S (a = 1 − h, S = a²s² + h²): the protocol narrows the data by
    ~2–3% here (tests/test_sde_sampler.py documents the effect)."""
    a = 1 - h
    big_s = a * a * s * s + h * h
    return abs(a - h * (2 - h) * (h - a * s * s) / big_s) * np.sqrt(big_s)


def test_sde_and_ode_agree_in_distribution(class0_samples):
    # Two samples of n = 4000 points from the same start noise (the SDE's Brownian noise makes
    # them all but independent; shared noise only shrinks the variance of the differences, so
    # independent-sample standard errors are conservative). Tolerance: 4 two-sample standard
    # errors, plus 0.02 (means) / 2% (stds) for the discretisation of each sampler.
    (p_ode, c_ode), (p_sde, c_sde) = points(class0_samples["heun"]), points(class0_samples["sde"])
    n = len(p_ode)
    for k, pi in enumerate(WEIGHTS[0]):
        a, b = p_ode[c_ode == k], p_sde[c_sde == k]
        assert abs(len(a) - len(b)) / n <= 4 * np.sqrt(2 * pi * (1 - pi) / n), k
        se_mean = STDS[k] * np.sqrt(1 / len(a) + 1 / len(b))
        np.testing.assert_allclose(b.mean(0), a.mean(0), atol=4 * se_mean + 0.02)
        ratio = pooled_std(b) / pooled_std(a)
        expected = last_step_std(float(STDS[k])) / STDS[k]
        assert abs(ratio - expected) <= 4 * np.sqrt(1 / (4 * len(a)) + 1 / (4 * len(b))) + 0.02, (
            k,
            ratio,
            expected,
        )  # without (or with half) the Brownian term: far narrower


def test_heun_is_second_order_and_beats_euler():
    """Mean distance of deterministic endpoints to a 256-step Heun reference (error ≲ 1e-5)."""
    noise, labels = NOISE[:64], CLASS0[:64]

    def run(method, steps):
        return np.asarray(sample(MIX, LAYOUT, (noise,), labels, method=method, steps=steps)[0])

    ref = run("heun", 256)
    err = {(m, s): np.abs(run(m, s) - ref).mean() for m in ("euler", "heun") for s in (8, 16)}
    assert err["heun", 8] * 3 < err["euler", 8]  # same grid: ~5× more accurate
    assert err["heun", 8] < err["euler", 16]  # and at the same budget (15 vs 16 evaluations)
    assert 1.6 < err["euler", 8] / err["euler", 16] < 2.5  # first order: halving h halves error
    assert err["heun", 8] / err["heun", 16] > 3.0  # second order: ~4×


# --------------------------------------------------------------------------- guidance

METHOD_STEPS = [("euler", 8), ("heun", 8), ("sde", 8)]


@pytest.mark.parametrize("method, steps", METHOD_STEPS)
def test_scale_one_is_the_conditional_model_bit_for_bit(method, steps):
    key = jax.random.key(2)
    x, y = NOISE[:16], HALVES[:16]
    plain = sample(MIX, LAYOUT, (x,), y, key, method=method, steps=steps)[0]
    poisoned = Mixture(poison_null=True)
    one = sample(
        poisoned,
        LAYOUT,
        (x,),
        y,
        key,
        method=method,
        steps=steps,
        cfg_scale=1.0,
        guidance_interval=(0.2, 0.6),
    )[0]
    assert np.isfinite(np.asarray(one)).all()  # the null class was never evaluated
    assert {r for r, _ in poisoned.calls} == {16}
    np.testing.assert_array_equal(np.asarray(one), np.asarray(plain))


@pytest.mark.parametrize("method, steps", METHOD_STEPS)
def test_guidance_outside_its_interval_is_no_guidance(method, steps):
    # Evaluations are at τ ≥ 1/8 (ODE) and τ ≥ 0.04 (SDE): [0, 0.03] contains none of them, so
    # every call is the B-row conditional branch of the lax.cond. XLA compiles a cond branch on
    # its own, so its float rounding may differ from the cond-free w = 1 program in the last
    # bit (seen: ≤ 6e-8): equal to 1e-6, while guidance itself moves samples by > 0.1.
    key = jax.random.key(3)
    x, y = NOISE[:16], HALVES[:16]
    plain = sample(MIX, LAYOUT, (x,), y, key, method=method, steps=steps)[0]
    model = Mixture()
    off = sample(
        model, LAYOUT, (x,), y, key, method=method, steps=steps, cfg_scale=3.0, guidance_interval=(0.0, 0.03)
    )[0]
    assert len(model.calls) > 0 and {r for r, _ in model.calls} == {16}
    np.testing.assert_allclose(np.asarray(off), np.asarray(plain), atol=1e-6, rtol=0)
    on = sample(
        MIX, LAYOUT, (x,), y, key, method=method, steps=steps, cfg_scale=3.0, guidance_interval=(0.0, 1.0)
    )[0]
    assert np.abs(np.asarray(on) - np.asarray(plain)).max() > 0.1  # the guided path differs


@pytest.mark.parametrize("method, steps", CLASS0_STEPS)  # the unguided programs are cached
def test_guidance_pushes_samples_towards_their_class(method, steps):
    """CFG samples ∝ p(x|y)^w p(x)^(1−w): for w = 3 each class's mean moves from the null mean
    along (and past) the direction to its class mean, and its favourite component gains mass
    at the expense of the other class's favourite; guidance on part of the τ range does part
    of that. (With exact models w > 1 overshoots the class mean, so "towards" is measured as
    this displacement, not as distance to the class mean.)"""
    key = jax.random.key(4)
    run = lambda **kw: points(sample(MIX, LAYOUT, (NOISE,), HALVES, key, method=method, steps=steps, **kw)[0])
    runs = [run(), run(cfg_scale=3.0, guidance_interval=(0.3, 0.8)), run(cfg_scale=3.0)]
    class_means = WEIGHTS @ MEANS
    per_point = np.repeat(np.asarray(HALVES), N)
    for y, favourite, other in ((0, 0, 2), (1, 2, 0)):
        direction = class_means[y] - class_means[NULL]
        direction /= np.linalg.norm(direction)
        along = [(p[per_point == y] - class_means[NULL]) @ direction for p, _ in runs]
        shift = [a.mean() for a in along]
        share = [np.mean(c[per_point == y] == favourite) for _, c in runs]
        rival = [np.mean(c[per_point == y] == other) for _, c in runs]
        # unguided: the class mean itself, 0.8 along, within 4 standard errors (≈ 0.12 here:
        # the mixture spreads ~1.4 along that direction, 2000 points)
        se = along[0].std() / np.sqrt(len(along[0]))
        assert abs(shift[0] - (class_means[y] - class_means[NULL]) @ direction) < 4 * se
        assert shift[0] + 0.2 < shift[1] and shift[1] + 0.03 < shift[2], shift
        assert share[0] + 0.08 < share[1] < share[2] + 0.02, share  # 0.6 -> ~0.75 -> ~0.8
        assert rival[2] < rival[1] < 0.05 < rival[0], rival  # 0.1 -> ~0.01 -> ~0.003


@pytest.mark.parametrize("method, steps, evaluations", [("euler", 6, 6), ("heun", 6, 11), ("sde", 6, 6)])
def test_rows_are_doubled_only_inside_the_interval(method, steps, evaluations):
    b, low, high = 3, 0.3, 0.7
    model = Mixture()
    jax.block_until_ready(
        sample(
            model,
            LAYOUT,
            (NOISE[:b],),
            HALVES[:b],
            jax.random.key(5),
            method=method,
            steps=steps,
            cfg_scale=2.0,
            guidance_interval=(low, high),
        )
    )
    assert len(model.calls) == evaluations  # Heun: 2·steps − 1 (its last step is Euler)
    for rows, tau in model.calls:
        assert rows == (2 * b if low <= tau <= high else b), (rows, tau)
    assert {r for r, _ in model.calls} == {b, 2 * b}  # the grid has τ on both sides


# --------------------------------------------------------------------------- conditioning

COND_LAYOUT = Layout("cue", (Segment("video", 2, "condition"), Segment("audio", 4)))


class ShiftedMixture:
    """Two segments: a clean cue (B, 2, 3) and generated points x0 + c, c = cue[:, 0, :2].

    Exact velocity of the shifted data: x'_τ = x_τ + a·c, so v' = v(x' − a·c) − c. The cue's
    own "velocity" is 1: if a sampler ever stepped the cue, it would move. Records the τ of the
    cue tokens and of the generated tokens at every call.
    """

    def __init__(self):
        self.cue_taus, self.gen_taus = [], []

    def __call__(self, xs, times, labels, positions, *, modalities):
        assert modalities == ("video", "audio")
        cue, x = xs
        tau = times.dense()
        jax.debug.callback(
            lambda c, g: (self.cue_taus.append(np.asarray(c)), self.gen_taus.append(np.asarray(g))),
            tau[:, :2],
            tau[:, 2:],
        )
        shift = cue[:, :1, :2]
        a = (1.0 - tau[:, 2:])[..., None]
        return ModelOutput((jnp.ones_like(cue), mixture_velocity(x - a * shift, tau[:, 2:], labels) - shift))


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
@pytest.mark.parametrize("method", ["euler", "heun", "sde"])
def test_condition_segments_stay_exact_and_are_seen_at_tau_zero(method, cfg_scale):
    b = 8
    cue = 3.0 * jax.random.normal(jax.random.key(6), (b, 2, 3))  # shifts of a few units
    noise = jax.random.normal(jax.random.key(7), (b, 4, 2))
    model = ShiftedMixture()
    out_cue, out = sample(
        model,
        COND_LAYOUT,
        (cue, noise),
        HALVES[:b],
        jax.random.key(8),
        method=method,
        steps=20,
        cfg_scale=cfg_scale,
        guidance_interval=(0.2, 0.9),
    )
    np.testing.assert_array_equal(np.asarray(out_cue), np.asarray(cue))
    assert all((t == 0).all() for t in model.cue_taus)
    assert all(((t > 0) & (t <= 1)).all() for t in model.gen_taus)  # never queried at τ = 0
    if cfg_scale == 1.0:  # the generated points follow their cue: within 5 s_max of a mode
        p, _ = points(np.asarray(out) - np.asarray(cue)[:, :1, :2])
        assert (np.sqrt(((p[:, None] - MEANS) ** 2).sum(-1)).min(1) < 5 * STDS.max()).all()


# --------------------------------------------------------------------------- seeds, args


def test_deterministic_by_seed():
    x, y = NOISE[:16], HALVES[:16]
    run = lambda method, key: np.asarray(sample(MIX, LAYOUT, (x,), y, key, method=method, steps=10)[0])
    k1, k2 = jax.random.key(9), jax.random.key(10)
    np.testing.assert_array_equal(run("sde", k1), run("sde", k1))
    assert np.abs(run("sde", k1) - run("sde", k2)).max() > 0.1
    for method in ("euler", "heun"):  # the ODEs are a function of the start noise alone
        np.testing.assert_array_equal(run(method, k1), run(method, k2))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(method="rk4"), "method must be one of"),
        (dict(steps=0), r"steps must be an integer >= 1"),
        (dict(steps=2.5), r"steps must be an integer >= 1"),
        (dict(method="sde", steps=1), r"steps must be an integer >= 2"),
        (dict(method="sde", key=None), "method='sde' needs key"),
        (dict(method="sde", last_step_size=0.0), r"last_step_size must be in \(0, 1\)"),
        (dict(guidance_interval=(0.8, 0.2)), r"guidance_interval must be a pair \(low, high\)"),
        (dict(guidance_interval=(-0.1, 0.5)), r"0 <= low <= high <= 1"),
        (dict(guidance_interval=0.5), "guidance_interval must be a pair"),
        (dict(cfg_scale=float("nan")), "cfg_scale must be a finite"),
        (dict(start=(NOISE[:2], NOISE[:2])), "start must hold one array per segment"),
        (dict(start=(NOISE[:2, :3],)), r"start\[0\] \(image, generate\) must have shape \(B, 8, d\)"),
        (dict(labels=CLASS0[:3]), r"B = labels.shape\[0\] = 3; got \(2, 8, 2\)"),
    ],
)
def test_bad_arguments_are_named(kw, match):
    args = dict(start=(NOISE[:2],), labels=CLASS0[:2], method="euler", steps=4, key=jax.random.key(0)) | kw
    with pytest.raises(ValueError, match=match):
        sample_segments(
            Mixture(), LAYOUT, args.pop("start"), args.pop("labels"), POSITIONS, null_class=NULL, **args
        )
