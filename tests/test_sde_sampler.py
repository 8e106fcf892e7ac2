"""SiT Euler–Maruyama sampler (the official Self-Flow FID protocol), with exact velocity fields.

Data of class y ~ N(μ_y, σ_y²) per coordinate. With a = 1 − τ, x_τ = a·x0 + τ·ε has variance
S = a²σ² + τ², and the exact velocity E[ε − x0 | x_τ] = (τ − a·σ²)·(x − a·μ)/S − μ.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfflow.sample import sde_sample

MEANS = np.array([[1.0, -2.0], [-1.0, 0.5], [0.0, 0.0]])  # classes 0, 1 and the null class 2
SIGMAS = np.array([0.5, 0.4, 1.0])
NULL = 2


def gaussian_velocity(x, tau, labels, xp=jnp):
    """Exact velocity (our convention) for per-class Gaussian data; x (B, N, C), tau (B,)."""
    mu = xp.asarray(MEANS)[labels][:, None, :]
    var = xp.asarray(SIGMAS)[labels][:, None, None] ** 2
    tau = tau[:, None, None]
    a = 1.0 - tau
    return ((tau - a * var) * (x - a * mu) / (a * a * var + tau * tau) - mu).astype(x.dtype)


def official_loop(
    x,
    labels,
    key,
    *,
    steps,
    last_step_size=0.04,
    cfg_scale=1.0,
    guidance_low=0.0,
    guidance_high=0.7,
    last_step=True,
):
    """NumPy float64 transcription of the official SiT SDE loop (s = 0 noise, u = x0 − ε)."""

    def model_u(x, s):  # the network in the official loop: data-direction velocity, SiT time
        tau = np.full(len(x), 1.0 - s)
        if cfg_scale > 1.0 and guidance_low <= 1.0 - s <= guidance_high:
            both = -gaussian_velocity(
                np.concatenate([x, x]),
                np.concatenate([tau, tau]),
                np.concatenate([np.full_like(labels, NULL), labels]),
                xp=np,
            )
            u_null, u_cond = np.split(both, 2)
            return u_null + cfg_scale * (u_cond - u_null)
        return -gaussian_velocity(x, tau, labels, xp=np)

    def drift(x, s):
        u = model_u(x, s)
        alpha, sigma = s, 1.0 - s  # linear path
        var = sigma**2 + alpha * sigma  # sigma² − (alpha / dalpha)·dsigma·sigma
        score = (alpha * u - x) / var
        diffusion = sigma  # form "sigma", norm 1
        return u + diffusion * score

    t = np.linspace(0.0, 1.0 - last_step_size, steps)
    dt = t[1] - t[0]
    x = np.asarray(x, np.float64)
    for k, s in enumerate(t[:-1]):
        w = np.asarray(jax.random.normal(jax.random.fold_in(key, k), x.shape, jnp.float32), np.float64)
        mean_x = x + drift(x, s) * dt
        x = mean_x + np.sqrt(2.0 * (1.0 - s)) * np.sqrt(dt) * w
    if last_step:  # "Mean": x + drift·last_step_size at t1 = 1 − last_step_size
        x = x + drift(x, t[-1]) * last_step_size
    return x


def jitted(velocity=gaussian_velocity, **kw):
    return jax.jit(partial(sde_sample, velocity, null_class=NULL, **kw))


@pytest.mark.parametrize("steps", [10, 250])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_matches_the_official_loop(steps, cfg_scale):
    # τ ∈ [0.25, 0.7] (not symmetric in s = 1 − τ): guidance switches on mid-way and off again;
    # no grid τ is near an end.
    kw = dict(steps=steps, cfg_scale=cfg_scale, guidance_low=0.25, guidance_high=0.7)
    key = jax.random.key(3)
    x = jax.random.normal(jax.random.key(4), (6, 3, 2))
    labels = jnp.array([0, 1, 0, 1, 1, 0])
    ours = np.asarray(jitted(**kw)(x, labels, key))
    ref = official_loop(np.asarray(x), np.asarray(labels), key, **kw)
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=1e-5)
    if cfg_scale != 1.0:  # guidance really changed the samples
        plain = official_loop(np.asarray(x), np.asarray(labels), key, steps=steps)
        assert np.abs(ref - plain).max() > 0.1


def test_samples_match_the_class_distributions():
    b, n = 1000, 4
    labels = jnp.arange(b) % 2
    x = jax.random.normal(jax.random.key(0), (b, n, 2))
    key = jax.random.key(1)
    out = np.asarray(jitted(steps=250)(x, labels, key))
    for y in (0, 1):
        vals = out[np.asarray(labels) == y].reshape(-1, 2)  # 2000 draws per coordinate
        se = SIGMAS[y] / np.sqrt(len(vals))
        np.testing.assert_allclose(vals.mean(0), MEANS[y], atol=5 * se)
        np.testing.assert_allclose(vals.std(0), SIGMAS[y], rtol=0.06)
    # Without the last "Mean" step the samples sit at τ = 0.04: x = 0.96·x0 + 0.04·ε, a mean
    # 4% short of μ_0 = (1, −2), many standard errors away.
    early = official_loop(np.asarray(x), np.asarray(labels), key, steps=250, last_step=False)
    vals = early[np.asarray(labels) == 0].reshape(-1, 2)
    se = SIGMAS[0] / np.sqrt(len(vals))
    np.testing.assert_allclose(vals.mean(0), 0.96 * MEANS[0], atol=5 * se)
    assert np.abs(vals.mean(0)[1] - MEANS[0][1]) > 0.06


def test_scale_one_never_queries_the_null_class():
    def velocity(x, tau, labels):  # the null class would poison any sample it touches
        poisoned = (labels == NULL)[:, None, None]
        return jnp.where(poisoned, jnp.nan, gaussian_velocity(x, tau, labels))

    x = jax.random.normal(jax.random.key(5), (4, 2, 2))
    labels = jnp.array([0, 1, 1, 0])
    key = jax.random.key(6)
    out = np.asarray(
        jitted(velocity, steps=20, cfg_scale=1.0, guidance_low=0.0, guidance_high=1.0)(x, labels, key)
    )
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, np.asarray(jitted(steps=20)(x, labels, key)))
    ref = official_loop(np.asarray(x), np.asarray(labels), key, steps=20)
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_guidance_doubles_the_rows_only_inside_the_interval():
    calls = []

    def velocity(x, tau, labels):
        jax.debug.callback(lambda t: calls.append((x.shape[0], float(t))), tau[0])
        return gaussian_velocity(x, tau, labels)

    b, steps = 3, 12
    x = jax.random.normal(jax.random.key(7), (b, 2, 2))
    jax.block_until_ready(
        jitted(velocity, steps=steps, cfg_scale=2.0, guidance_low=0.2, guidance_high=0.6)(
            x, jnp.array([0, 1, 0]), jax.random.key(8)
        )
    )
    assert len(calls) == steps  # steps − 1 noisy steps + the last mean step
    taus = sorted(t for _, t in calls)
    np.testing.assert_allclose(taus, sorted(1 - np.linspace(0, 0.96, steps)), atol=1e-6)
    rows = {round(t, 5): r for r, t in calls}
    assert all(r == (2 * b if 0.2 <= t <= 0.6 else b) for t, r in rows.items())
    assert set(rows.values()) == {b, 2 * b}


def test_model_velocity_adapts_a_selfflow_model():
    from flax import nnx

    from selfflow.model import ModelOutput
    from selfflow.sample import ModelVelocity

    class FakeModel(nnx.Module):  # the selfflow model signature: tuples of segments
        def __init__(self):
            self.shift = nnx.Param(jnp.array(0.25))

        def __call__(self, xs, times, labels, positions, *, modalities):
            assert modalities == ("image",) and positions.shape == (2, 3)
            tau = times.dense()[:, 0]
            return ModelOutput(tuple(gaussian_velocity(x, tau, labels) + self.shift[...] for x in xs))

    adapter = ModelVelocity(FakeModel(), np.zeros((2, 3), np.float32))
    x = jax.random.normal(jax.random.key(9), (2, 2, 2))
    tau, labels = jnp.array([0.3, 0.8]), jnp.array([1, 0])
    np.testing.assert_allclose(
        np.asarray(adapter(x, tau, labels)), np.asarray(gaussian_velocity(x, tau, labels)) + 0.25, atol=1e-6
    )


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(steps=1), "steps must be an integer >= 2"),
        (dict(steps=10, last_step_size=0.0), r"last_step_size must be in \(0, 1\)"),
        (dict(steps=10, last_step_size=1.0), r"last_step_size must be in \(0, 1\)"),
        (dict(steps=10, guidance_low=0.8, guidance_high=0.7), "guidance_low <= guidance_high"),
    ],
)
def test_bad_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        sde_sample(
            gaussian_velocity,
            jnp.zeros((2, 1, 2)),
            jnp.zeros(2, jnp.int32),
            jax.random.key(0),
            null_class=NULL,
            **kw,
        )


def test_labels_must_match_the_batch():
    with pytest.raises(ValueError, match="labels must have shape"):
        sde_sample(
            gaussian_velocity,
            jnp.zeros((2, 1, 2)),
            jnp.zeros(3, jnp.int32),
            jax.random.key(0),
            steps=4,
            null_class=NULL,
        )
