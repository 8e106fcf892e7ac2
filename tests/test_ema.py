"""EMA warm-up (``objective.ema_warmup``): the training step follows TensorFlow's num_updates rule
step by step, and :func:`selfflow.objective.initial_share` says how much of an EMA is still the
initialisation (the end-of-training warning reads it)."""

from __future__ import annotations

import dataclasses

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


# ---------------------------------------------------------------------------- short runs


def test_a_short_ema_is_reported_at_the_end_of_training(tmp_path, capsys):
    from helpers_train import run, tiny_config

    run(tiny_config(steps=3), tmp_path / "short")  # EMA 0.9: 0.9^3 = 73 % the initialisation
    err = capsys.readouterr().err
    assert "warning: the EMA (objective.ema_decay=0.9) has averaged 3 steps" in err and "73%" in err
    warm = tiny_config(steps=3)
    warm = dataclasses.replace(warm, objective=dataclasses.replace(warm.objective, ema_warmup=True))
    run(warm, tmp_path / "warm")  # 0.1 · 0.18 · 0.25: 0.5 % left
    assert "warning: the EMA" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    from helpers_train import host, run, tiny_config

    run_dir = tmp_path_factory.mktemp("weights") / "run"
    return run_dir, host(run(tiny_config(steps=2), run_dir).state)


def _leaves_equal(model, tree) -> bool:
    mine = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(mine, jax.tree.leaves(tree), strict=True)
    )


@pytest.mark.parametrize("weights, key", [("ema", "ema"), ("online", "params")])
def test_sample_and_eval_use_the_chosen_weights(short_run, monkeypatch, tmp_path, weights, key):
    """`selfflow sample`, `eval` and `fid-samples` with `--weights` hand the chosen set to the
    sampler and the evaluator (the two sets differ after 2 steps at EMA 0.9)."""
    import selfflow.eval.evaluate as evaluate_mod
    import selfflow.layout_samples as samples_mod
    from selfflow.cli import main

    run_dir, state = short_run
    import selfflow.fid_samples as fid_mod

    seen = {}

    def capture(name, value, result):
        seen[name] = value
        return result

    monkeypatch.setattr(samples_mod, "write_run_samples", lambda cfg, task, m, out, **kw: capture("s", m, []))
    monkeypatch.setattr(evaluate_mod, "evaluate", lambda cfg, task, m, *a, **kw: capture("e", m, {"x": 1.0}))
    monkeypatch.setattr(
        fid_mod, "generate_npz", lambda velocity, **kw: capture("f", velocity.model, kw["out"])
    )
    run = ["--run-dir", str(run_dir), "--weights", weights]
    assert main(["sample", *run, "--out", str(tmp_path / "s")]) == 0
    assert main(["eval", *run, "--out", str(tmp_path / "e"), "--no-probe"]) == 0
    assert main(["fid-samples", *run, "--out", str(tmp_path / "f.npz"), "--num", "2"]) == 0
    other = "params" if key == "ema" else "ema"
    assert set(seen) == {"s", "e", "f"}
    for model in seen.values():
        assert _leaves_equal(model, state[key]) and not _leaves_equal(model, state[other])
    suffix = "" if weights == "ema" else "_online"
    assert (tmp_path / "e" / f"step_2{suffix}.json").is_file()
