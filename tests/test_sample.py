"""Euler ODE sampler and classifier-free guidance, driven by exact velocity fields."""

import jax
import jax.numpy as jnp
import numpy as np

from selfflow.layout import Layout, Segment, single
from selfflow.model import ModelOutput
from selfflow.sample import sample_segments, save_grid

TARGETS = jnp.array([[[1.0, -2.0]], [[0.5, 3.0]]])  # (2 classes, 1 token, 2 features)
NULL = 2


class PointMass:
    """Exact velocity for data = one point per class: x_τ = (1-τ)·x* + τ·ε, v = ε - x* = (x - x*)/τ."""

    def __init__(self, null_target=None):
        null_target = jnp.zeros((1, 2)) if null_target is None else null_target
        self.targets = jnp.concatenate([TARGETS, null_target[None]])

    def __call__(self, xs, times, labels, positions, *, modalities):
        tau = times.dense()[..., None]
        return ModelOutput(tuple((x - self.targets[labels]) / tau for x in xs))


def euler_sample(model, noise, labels, *, steps, cfg_scale):
    """Euler on a one-segment layout: noise (B, N, C) -> samples."""
    (out,) = sample_segments(
        model,
        single("image", noise.shape[1]),
        (noise,),
        labels,
        jnp.zeros((1, 3)),
        method="euler",
        steps=steps,
        cfg_scale=cfg_scale,
        null_class=NULL,
    )
    return out


def test_euler_lands_on_the_data_for_an_exact_velocity_field():
    noise = jax.random.normal(jax.random.key(0), (2, 1, 2))
    out = euler_sample(PointMass(), noise, jnp.array([0, 1]), steps=7, cfg_scale=1.0)
    np.testing.assert_allclose(np.asarray(out), np.asarray(TARGETS), atol=1e-5)


def test_guidance_scale_one_is_the_conditional_model_and_larger_scales_extrapolate():
    noise = jax.random.normal(jax.random.key(1), (2, 1, 2))
    model, labels = PointMass(), jnp.array([0, 1])
    plain = euler_sample(model, noise, labels, steps=5, cfg_scale=1.0)
    guided = euler_sample(model, noise, labels, steps=5, cfg_scale=2.0)
    # straight paths: guidance w moves the endpoint to x_null + w·(x* - x_null), x_null = 0
    np.testing.assert_allclose(np.asarray(guided), 2.0 * np.asarray(TARGETS), atol=1e-4)
    np.testing.assert_allclose(np.asarray(plain), np.asarray(TARGETS), atol=1e-5)


def test_save_grid_layout(tmp_path):
    from PIL import Image

    images = np.stack([np.full((4, 5, 3), v, np.float32) for v in (-1.0, 1.0, -1.0, 1.0, 0.0, 0.0)])
    path = save_grid(images, rows=2, path=tmp_path / "g.png", scale=1)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (8, 15, 3)
    assert grid[0, 0, 0] == 0 and grid[0, 5, 0] == 255 and grid[4, 0, 0] == 255 and grid[4, 10, 0] == 128


def test_condition_segments_stay_fixed_and_generate_segments_use_them():
    """Model: the generate segment's target is the (clean) condition segment itself."""
    layout = Layout("x", (Segment("video", 1, "condition"), Segment("audio", 1)))

    class CopyCondition:
        def __call__(self, xs, times, labels, positions, *, modalities):
            tau = times.dense()
            assert modalities == ("video", "audio")
            cond, gen = xs
            v_gen = (gen - cond) / tau[:, 1:, None]
            return ModelOutput((jnp.zeros_like(cond), v_gen))

    cond = jnp.array([[[0.3, -0.7]], [[2.0, 1.0]]])
    noise = jax.random.normal(jax.random.key(2), (2, 1, 2))
    out_cond, out_gen = sample_segments(
        CopyCondition(),
        layout,
        (cond, noise),
        jnp.array([0, 1]),
        jnp.zeros((2, 3)),
        method="euler",
        steps=6,
        cfg_scale=1.0,
        null_class=NULL,
    )
    np.testing.assert_array_equal(np.asarray(out_cond), np.asarray(cond))
    np.testing.assert_allclose(np.asarray(out_gen), np.asarray(cond), atol=1e-5)
