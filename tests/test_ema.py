"""EMA warm-up (``objective.ema_warmup``): the training step follows TensorFlow's num_updates rule
step by step, and :func:`selfflow.objective.initial_share` says how much of an EMA is still the
initialisation (the end-of-training warning reads it)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from selfflow import config as config_lib
from selfflow.model import build_model
from selfflow.objective import ema_decay_at, initial_share
from selfflow.run import init_state, make_optimizer
from selfflow.step import make_train_step
from selfflow.tasks import Task

from helpers_config import tiny_image_config


@pytest.mark.parametrize("warmup", [False, True])
def test_the_step_follows_the_ema_rule_step_by_step(warmup):
    cfg = config_lib.resolve(tiny_image_config(objective={"ema_decay": 0.99, "ema_warmup": warmup}))
    task = Task(cfg)
    model = build_model(cfg, task.token_dims)
    tx = make_optimizer(cfg.optim)
    state = init_state(cfg, model, tx)
    step = make_train_step(cfg, nnx.graphdef(model), tx, task)
    dataset = task.dataset(0)
    leaf = lambda tree: np.asarray(jax.tree.leaves(tree)[3], np.float64)  # noqa: E731
    for n in range(4):
        ema_before = leaf(state["ema"])
        state, _ = step(state, jax.tree.map(np.asarray, dataset[n]), 0)
        d = min(0.99, (1 + n) / (10 + n)) if warmup else 0.99
        expected = d * ema_before + (1 - d) * leaf(state["params"])
        np.testing.assert_allclose(leaf(state["ema"]), expected, rtol=1e-5, atol=1e-7)
        assert float(ema_decay_at(n, 0.99, warmup)) == pytest.approx(d, rel=1e-6)


def test_initial_share_is_the_product_of_the_decays():
    for warmup in (False, True):
        for steps in (0, 1, 50, 600, 3000):
            decays = [float(ema_decay_at(n, 0.999, warmup)) for n in range(steps)]
            assert initial_share(steps, 0.999, warmup) == pytest.approx(float(np.prod(decays)), rel=1e-4)
    assert initial_share(600, 0.999, False) == pytest.approx(0.5486, abs=1e-4)  # the 55 %
    assert initial_share(100, 0.999, True) < 1e-3 < initial_share(100, 0.999, False)


def test_warmup_is_off_by_default():
    assert config_lib.ObjectiveConfig().ema_warmup is False
