"""Tests for the representation diagnostics (selfflow.diagnostics) and their logging in training.

Each statistic is checked on features with a known answer; the gradient ratio against an
independent computation (the gradient of the Self-Flow loss at γ minus that at γ = 0 is
γ ∇L_rep, since both draw the same noise and timesteps from the key).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from selfflow import config as config_lib
from selfflow.diagnostics import TRUNK, gradient_ratio, heldout_diagnostics, representation_stats
from selfflow.metrics_writer import read_metrics
from selfflow.model import build_model
from selfflow.objectives import make_objective
from selfflow.run import init_state, make_optimizer
from selfflow.tasks import Task
from selfflow.validation import validation_metrics

from helpers_config import tiny_image_config
from helpers_train import run, tiny_config

ALL = jnp.ones((6,), bool)


def features(seed, shape=(4, 6, 8)):
    return jax.random.normal(jax.random.key(seed), shape)


def test_identical_examples_have_full_mean_share_and_no_gap():
    """Every example's teacher features equal: all their energy is the batch mean, and another
    example's features are as close as the own ones."""
    target = jnp.broadcast_to(features(0, (1, 6, 8)), (4, 6, 8))
    stats = representation_stats(features(1), target, ALL)
    assert float(stats["rep/teacher_mean_share"]) == pytest.approx(1.0, rel=1e-6)
    assert float(stats["rep/cos_gap"]) == pytest.approx(0.0, abs=1e-6)


def test_a_student_equal_to_its_teacher_has_a_positive_gap():
    target = features(0)
    stats = representation_stats(target, target, ALL)
    assert float(stats["rep/cos_own"]) == pytest.approx(1.0, abs=1e-6)
    other = np.mean(
        np.sum(np.asarray(target) * np.roll(np.asarray(target), 1, axis=0), -1)
        / (np.linalg.norm(target, axis=-1) * np.linalg.norm(np.roll(np.asarray(target), 1, axis=0), axis=-1))
    )
    assert float(stats["rep/cos_other"]) == pytest.approx(other, abs=1e-5)
    assert float(stats["rep/cos_gap"]) == pytest.approx(1.0 - other, abs=1e-5) and 1.0 - other > 0.5


def test_mean_free_features_have_no_mean_share():
    half = features(0, (2, 6, 8))
    target = jnp.concatenate([half, -half])  # per-position batch mean exactly 0
    assert float(representation_stats(features(1), target, ALL)["rep/teacher_mean_share"]) == pytest.approx(
        0.0, abs=1e-6
    )


def test_only_generate_tokens_count():
    """Condition tokens (mask False) do not enter: changing them changes nothing."""
    mask = jnp.array([True, True, True, False, False, False])
    a, b = features(0), features(1)
    b2 = b.at[:, 3:].set(features(2)[:, 3:])
    s1, s2 = representation_stats(a, b, mask), representation_stats(a, b2, mask)
    for k in s1:
        assert float(s1[k]) == pytest.approx(float(s2[k]), abs=1e-6), k


def tiny_setup(gamma=0.8):
    cfg = config_lib.resolve(tiny_image_config(objective={"gamma": gamma}))
    task = Task(cfg)
    model = build_model(cfg, task.token_dims)
    state = init_state(cfg, model, make_optimizer(cfg.optim))
    # move the zero-initialised adaLN and projector away from zero so every gradient flows
    params = jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size), x.shape), state["params"]
    )
    ema = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(x.size + 1), x.shape), params)
    return cfg, task, nnx.graphdef(model), params, ema


def test_gradient_ratio_is_gamma_rep_over_gen_on_the_trunk():
    cfg, task, graphdef, params, ema = tiny_setup(gamma=0.8)
    batch = task.segment_batch(0, jax.tree.map(jnp.asarray, task.dataset(0)[0]))
    layout, key = task.layouts[0].layout, jax.random.key(3)
    sf = make_objective(cfg, task.mask_ratios, task.loss_weights)
    dts = make_objective(
        dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, gamma=0.0)),
        task.mask_ratios,
        task.loss_weights,
    )
    teacher = nnx.merge(graphdef, ema)

    def grads(objective):
        def f(p):
            return objective.loss(
                student=nnx.merge(graphdef, p), teacher=teacher, batch=batch, layout=layout, key=key
            )[0]

        return jax.grad(f)(params)[TRUNK]

    g_total, g_gen = grads(sf), grads(dts)
    expected = optax.tree.norm(jax.tree.map(jnp.subtract, g_total, g_gen)) / optax.tree.norm(g_gen)
    ratio = gradient_ratio(sf, graphdef, params, ema, batch, layout, key)
    assert float(ratio) == pytest.approx(float(expected), rel=1e-3)
    assert float(ratio) > 0


def test_heldout_diagnostics_work_for_a_run_without_a_teacher():
    cfg, task, graphdef, params, ema = tiny_setup()
    fm = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, kind="flow_matching"))
    a = heldout_diagnostics(fm, task, graphdef, params, ema, batches=2)
    b = heldout_diagnostics(fm, task, graphdef, params, ema, batches=2)
    assert a == b  # fixed data and randomness
    assert set(a) == {
        "rep/cos_own",
        "rep/cos_other",
        "rep/cos_gap",
        "rep/teacher_mean_share",
        "rep/grad_ratio",
    }
    assert all(np.isfinite(v) for v in a.values()) and 0 < a["rep/teacher_mean_share"] < 1


def test_training_logs_the_diagnostics(tmp_path):
    """A Self-Flow run logs rep/* every step it logs and rep/grad_ratio every grad_ratio_every;
    with keep_best, checkpoint steps carry the online student's held-out loss beside the EMA's."""
    cfg = tiny_config(steps=4, checkpoint_every=2, grad_ratio_every=2, keep_best=1)
    result = run(cfg, tmp_path / "sf")
    records = {r["step"]: r for r in read_metrics(tmp_path / "sf/metrics.jsonl")}
    assert all("rep/cos_gap" in r and "rep/teacher_mean_share" in r for r in records.values())
    assert [s for s, r in records.items() if "rep/grad_ratio" in r] == [2, 4]
    resolved = config_lib.resolve(cfg)
    task = Task(resolved)
    student = nnx.merge(nnx.graphdef(build_model(resolved, task.token_dims)), result.state["params"])
    online = validation_metrics(task, student, head="val_online/")
    assert records[4]["val_online/loss"] == pytest.approx(online["val_online/loss"], rel=1e-5)
    assert records[4]["val_online/loss"] != records[4]["val/loss"]

    run(tiny_config(steps=2, kind="flow_matching"), tmp_path / "fm")
    assert not any("rep/grad_ratio" in r for r in read_metrics(tmp_path / "fm/metrics.jsonl"))
    run(tiny_config(steps=2, grad_ratio_every=0), tmp_path / "off")
    assert not any("rep/grad_ratio" in r for r in read_metrics(tmp_path / "off/metrics.jsonl"))
