"""bf16 matmuls (float32 accumulation and master weights) train like float32."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from selfflow import layers
from selfflow.config import load_config_file
from selfflow.train import train


def _losses(tmp_path, name, *overrides):
    cfg = load_config_file(
        "experiments/quickstart.py",
        [
            "model.depth=2",
            "model.hidden_size=64",
            "model.num_heads=2",
            "train.steps=80",
            "train.batch_size=16",
            "train.log_every=1",
            "train.checkpoint_every=1000",
            "data.num_examples=2048",
            *overrides,
        ],
    )
    train(cfg, tmp_path / name, progress=False, write_samples=False)
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return np.array([json.loads(line)["fm_loss"] for line in lines])


def test_bf16_loss_curve_matches_float32_within_seed_noise(tmp_path):
    f32 = _losses(tmp_path, "f32")
    other_seed = _losses(tmp_path, "f32_seed1", "seed=1")
    bf16 = _losses(tmp_path, "bf16", "model.dtype=bfloat16")
    assert bf16[-10:].mean() < 0.5 * bf16[:5].mean()  # it learns
    rounding = np.abs(bf16 - f32).mean()
    seed_noise = np.abs(other_seed - f32).mean()
    assert rounding < seed_noise, (rounding, seed_noise)


def test_matmul_gradients_are_float32_and_match_the_exact_ones():
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (4, 8, 64))
    w = jax.random.normal(kw, (64, 32))
    g = jax.random.normal(kg, (4, 8, 32))

    def vjp(dtype):
        out, pullback = jax.vjp(lambda x, w: layers.matmul(x, w, jnp.dtype(dtype)), x, w)
        return (out, *pullback(g))

    exact = [np.asarray(a) for a in jax.vjp(lambda x, w: jnp.dot(x, w, precision="highest"), x, w)[0:1]]
    exact += [np.asarray(a) for a in jax.vjp(lambda x, w: jnp.dot(x, w, precision="highest"), x, w)[1](g)]
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
        got = vjp(dtype)
        assert all(a.dtype == jnp.float32 for a in got)
        for a, e in zip(got, exact):
            err = np.abs(np.asarray(a) - e).max() / np.abs(e).max()
            assert err < tol, (dtype, err)
    # bf16 really rounds its inputs: not bit-equal to float32
    assert np.abs(np.asarray(vjp(jnp.bfloat16)[2]) - exact[2]).max() > 0
