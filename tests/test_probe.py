"""Tests for the linear probe of the transformer's features (selfflow.eval.probe).

The probe itself is checked on synthetic features with a known answer (a planted linear signal,
and labels independent of the features); the feature extraction on a tiny random model (depth 2,
width 32, 16x16 shapes), whose adaLN modulations are randomised so that the class label reaches
the hidden states - with the zero init the label has no effect and the null-label check could
not fail.
"""

from __future__ import annotations

import inspect
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import selfflow.run
from modalities import image
from selfflow.config import Config, DataConfig, MeshConfig, TrainConfig
from selfflow.eval import probe
from selfflow.model import build_model
from selfflow.tasks import Task

from helpers_config import tiny_model

BATCH = 8


def planted(num_classes: int, n: int, signal_dims: int = 8, noise_dims: int = 24, seed: int = 0):
    """Gaussian features; labels = argmax of a random linear map of the first ``signal_dims``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, signal_dims + noise_dims))
    y = np.argmax(x[:, :signal_dims] @ rng.normal(size=(signal_dims, num_classes)), axis=1)
    return x, y


def test_probe_recovers_a_planted_linear_signal():
    """The classes are linearly separable, so a linear probe should be nearly perfect; 0.9 leaves
    room for 2000 training examples in 32 dims (measured 0.973). Least squares onto one-hot targets
    (the closed-form alternative) measured 0.86 here: this bound is what rules it out."""
    x, y = planted(4, 3000)
    acc = probe.linear_probe(x[:2000], y[:2000], x[2000:], y[2000:], 4)
    assert acc >= 0.9, acc


def test_probe_is_at_chance_without_signal():
    """With labels independent of the features the test accuracy is Binomial(m, 1/K)/m whatever
    the probe learnt; 4 binomial std around 1/K (a probe that leaked test labels would not be)."""
    x, _ = planted(4, 3000)
    y = np.random.default_rng(1).integers(0, 4, len(x))
    acc = probe.linear_probe(x[:2000], y[:2000], x[2000:], y[2000:], 4)
    assert abs(acc - 0.25) <= 4 * math.sqrt(0.25 * 0.75 / 1000), acc


def test_probe_is_deterministic():
    x, y = planted(3, 600, seed=2)
    args = (x[:400], y[:400], x[400:], y[400:], 3)
    assert probe.linear_probe(*args) == probe.linear_probe(*args)


def test_probe_errors():
    x, y = planted(3, 100)
    with pytest.raises(ValueError, match="labels in"):
        probe.linear_probe(x, y + 3, x, y, 3)
    with pytest.raises(ValueError, match="expected \\(n, d\\) and \\(n,\\)"):
        probe.linear_probe(x, y[:10], x, y, 3)
    with pytest.raises(ValueError, match="dims"):
        probe.linear_probe(x, y, x[:, :5], y, 3)


# ---------------------------------------------------------------------------- on a model


@pytest.fixture(scope="module")
def tiny():
    """(model, task): a random depth-2 model whose labels matter (randomised adaLN modulations)."""
    cfg = Config(
        model=tiny_model(),
        data=DataConfig(image_size=16),
        train=TrainConfig(batch_size=BATCH),
        mesh=MeshConfig(data=1),
    )
    task = Task(cfg)
    model = build_model(cfg, task.token_dims)
    for i, block in enumerate(model.blocks):
        kernel = block.adaLN_modulation.kernel
        kernel[...] = 0.5 * jax.random.normal(jax.random.key(i), kernel[...].shape)
    return model, task


def manual_features(model, task, labels_of, layer: int, batches: int) -> np.ndarray:
    """Mean-pooled hidden states after ``layer`` of the held-out batches at τ = 0, with the labels
    ``labels_of(batch)``, computed directly with forward_until."""
    spec = task.specs["image"]
    data = task.dataset(0, heldout=True)
    out = []
    for k in range(batches):
        raw = data[k]
        hidden = model.forward_until(
            (image.tokenize(jnp.asarray(raw["image"]), spec),),
            jnp.zeros((BATCH,)),
            jnp.asarray(labels_of(raw), jnp.int32),
            jnp.asarray(image.positions(spec)),
            layer=layer,
            modalities=("image",),
        )
        out.append(np.asarray(hidden).mean(axis=1))
    return np.concatenate(out)


def test_probe_features_use_the_null_label(tiny):
    model, task = tiny
    feats, labels = probe.probe_features(model, task, [1, 2], n=2 * BATCH, heldout=True)
    null = manual_features(model, task, lambda raw: np.full(BATCH, model.num_classes), 2, 2)
    true = manual_features(model, task, lambda raw: raw["label"], 2, 2)
    np.testing.assert_allclose(feats[2], null, rtol=1e-4, atol=1e-5)
    assert np.max(np.abs(true - null)) > 1e-2  # the label matters, so this check can fail
    np.testing.assert_array_equal(
        labels, np.concatenate([task.dataset(0, heldout=True)[k]["label"] for k in range(2)])
    )


def test_probe_features_at_noise_level(tiny):
    model, task = tiny
    clean, _ = probe.probe_features(model, task, [1], n=BATCH, heldout=False)
    noisy, _ = probe.probe_features(model, task, [1], n=BATCH, heldout=False, tau=0.5)
    again, _ = probe.probe_features(model, task, [1], n=BATCH, heldout=False, tau=0.5)
    assert noisy[1].shape == (BATCH, 32)
    np.testing.assert_array_equal(noisy[1], again[1])  # fixed noise per batch
    assert np.max(np.abs(noisy[1] - clean[1])) > 1e-3
    with pytest.raises(ValueError, match="tau"):
        probe.probe_features(model, task, [1], n=BATCH, heldout=False, tau=1.5)


def test_layer_probe_returns_one_accuracy_per_layer(tiny):
    model, task = tiny
    result = probe.layer_probe(model, task, [2, 1], n_train=6 * BATCH, n_test=3 * BATCH)
    assert sorted(result) == [1, 2]
    assert all(0.0 <= a <= 1.0 for a in result.values()), result
    with pytest.raises(ValueError, match=r"block indices in \[1, 2\]"):
        probe.layer_probe(model, task, [3], n_train=BATCH, n_test=BATCH)


# ---------------------------------------------------------------------------- the table with baselines

N_TRAIN, N_TEST = 3 * BATCH, 2 * BATCH
TAUS = (0.0, 0.5)


@pytest.fixture(scope="module")
def table(tiny):
    """probe_table of the tiny model at blocks 1 and 2, τ = 0 and 0.5, with the baselines."""
    model, task = tiny
    return probe.probe_table(model, task, [1, 2], taus=TAUS, n_train=N_TRAIN, n_test=N_TEST)


def flat_tokens(task, *, n: int, heldout: bool, tau: float, seed: int = 0):
    """(features (n, N·d), labels (n,)): the first n examples' tokens, computed directly - at τ > 0
    mixed with batch b's noise from fold_in(key(seed), 2b + heldout) - and flattened."""
    spec, data = task.specs["image"], task.dataset(0, heldout=heldout)
    feats, labels = [], []
    for b in range(math.ceil(n / BATCH)):
        raw = data[b]
        tokens = image.tokenize(jnp.asarray(raw["image"]), spec)
        if tau > 0:
            key = jax.random.fold_in(jax.random.key(seed), 2 * b + int(heldout))
            tokens = (1 - tau) * tokens + tau * jax.random.normal(key, tokens.shape)
        feats.append(np.asarray(tokens, np.float64).reshape(BATCH, -1))
        labels.append(raw["label"])
    return np.concatenate(feats)[:n], np.concatenate(labels)[:n]


def test_probe_table_has_every_tau_and_row(tiny, table):
    model, task = tiny
    rows = ["pixels", "random/layer_1", "random/layer_2", "layer_1", "layer_2"]
    assert list(table) == [f"tau_{t}/{r}" for t in ("0", "0.5") for r in rows] + ["n_test"]
    assert table["n_test"] == float(N_TEST)
    assert all(0.0 <= v <= 1.0 for k, v in table.items() if k != "n_test"), table
    alone = probe.probe_table(model, task, [2, 1], taus=TAUS, n_train=N_TRAIN, n_test=N_TEST, baselines=False)
    assert alone == {k: v for k, v in table.items() if "random" not in k and "pixels" not in k}


@pytest.mark.parametrize("tau", TAUS)
def test_probe_table_pixels_row_probes_the_flattened_tokens(tiny, table, tau):
    model, task = tiny
    train_x, train_y = flat_tokens(task, n=N_TRAIN, heldout=False, tau=tau)
    test_x, test_y = flat_tokens(task, n=N_TEST, heldout=True, tau=tau)
    expected = probe.linear_probe(train_x, train_y, test_x, test_y, task.cfg.data.num_classes)
    assert table[f"tau_{tau:g}/pixels"] == expected
    feats, labels = probe.probe_table_features(model, task, [1], n=N_TEST, heldout=True, taus=(tau,))
    np.testing.assert_array_equal(feats[tau]["pixels"], test_x)  # the accuracy alone is coarse
    np.testing.assert_array_equal(labels, test_y)


def test_probe_table_pixels_are_noised_with_a_fixed_noise(tiny):
    model, task = tiny
    both, _ = probe.probe_table_features(model, task, [1], n=BATCH, heldout=False, taus=(0.0, 0.5))
    again, _ = probe.probe_table_features(model, task, [1], n=BATCH, heldout=False, taus=(0.5,))
    assert both[0.5]["pixels"].shape == (BATCH, 16 * 48)  # 16 tokens of 4x4x3
    assert np.max(np.abs(both[0.5]["pixels"] - both[0.0]["pixels"])) > 0.1
    np.testing.assert_array_equal(both[0.5]["pixels"], again[0.5]["pixels"])
    # the model's row of the same pass saw those same noised tokens
    model_feats, _ = probe.probe_features(model, task, [1], n=BATCH, heldout=False, tau=0.5)
    np.testing.assert_array_equal(both[0.5]["layer_1"], model_feats[1])


@pytest.mark.parametrize("tau", TAUS)
def test_probe_table_random_rows_are_a_fresh_models_layer_probe(tiny, table, tau):
    model, task = tiny
    fresh = build_model(task.cfg, task.token_dims)
    expected = probe.layer_probe(fresh, task, [1, 2], n_train=N_TRAIN, n_test=N_TEST, tau=tau)
    assert {layer: table[f"tau_{tau:g}/random/layer_{layer}"] for layer in (1, 2)} == expected
    feats, _ = probe.probe_table_features(model, task, [1, 2], n=BATCH, heldout=True, taus=(tau,))
    fresh_feats, _ = probe.probe_features(fresh, task, [2], n=BATCH, heldout=True, tau=tau)
    np.testing.assert_array_equal(feats[tau]["random/layer_2"], fresh_feats[2])
    assert np.max(np.abs(feats[tau]["layer_2"] - fresh_feats[2])) > 1e-2  # not the trained model's
    # adaLN-zero: every block of the random network returns its input (the module docstring)
    np.testing.assert_array_equal(feats[tau]["random/layer_1"], feats[tau]["random/layer_2"])


def test_standard_error():
    assert probe.standard_error(0.8, 400) == math.sqrt(0.8 * 0.2 / 400)
    assert probe.standard_error(1.0, 7) == 0.0
    n_test = inspect.signature(probe.probe_table).parameters["n_test"].default
    assert probe.standard_error(0.5, n_test) <= 0.01  # ±1 % at worst
    with pytest.raises(ValueError, match="accuracy=1.5"):
        probe.standard_error(1.5, 10)
    with pytest.raises(ValueError, match="n=0"):
        probe.standard_error(0.5, 0)


def test_probe_table_errors(tiny, tmp_path):
    model, task = tiny
    for taus, match in [((0.0, 1.5), "tau=1.5"), ((), r"taus=\(\)"), ((float("nan"),), "tau=nan")]:
        with pytest.raises(ValueError, match=match):
            probe.probe_table(model, task, [1], taus=taus, n_train=BATCH, n_test=BATCH)
    with pytest.raises(ValueError, match=r"weights='best': expected one of \('ema', 'online'\)"):
        probe.run_probe_table(tmp_path / "no-run", weights="best")


def test_run_probe_table_loads_the_chosen_weights(tiny, table, monkeypatch):
    """A stand-in checkpoint whose EMA is the tiny model and whose online parameters are the fresh
    one: "online" must then give the random network's rows, "ema" the table's."""
    model, task = tiny
    params = {
        "ema": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        "params": nnx.to_pure_dict(nnx.state(build_model(task.cfg, task.token_dims), nnx.Param)),
    }
    monkeypatch.setattr(
        selfflow.run, "load_run", lambda run_dir, step: (None, params, nnx.graphdef(model), task, 0)
    )
    kwargs = dict(taus=(0.0,), n_train=N_TRAIN, n_test=N_TEST, baselines=False)
    ema = probe.run_probe_table("run", **kwargs)
    assert ema == {k: v for k, v in table.items() if k in ("tau_0/layer_1", "tau_0/layer_2", "n_test")}
    online = probe.run_probe_table("run", **kwargs, weights="online")
    assert online == {
        "tau_0/layer_1": table["tau_0/random/layer_1"],
        "tau_0/layer_2": table["tau_0/random/layer_2"],
        "n_test": float(N_TEST),
    }


def test_main_prints_the_table_only_with_baselines(monkeypatch, capsys):
    calls = {}

    def fake_table(run_dir, layers, **kwargs):
        calls["table"] = kwargs
        rows = {"pixels": 0.5, "random/layer_1": 0.25, "layer_1": 0.75}
        return {**{f"tau_{t}/{r}": a for t in ("0", "0.5") for r, a in rows.items()}, "n_test": 2500.0}

    def fake_layers(run_dir, layers, **kwargs):
        calls["layers"] = kwargs
        return {1: 0.5}

    monkeypatch.setattr(probe, "run_probe_table", fake_table)
    monkeypatch.setattr(probe, "run_layer_probe", fake_layers)
    assert probe.main(["run", "--baselines", "--weights", "online"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert calls["table"] == dict(
        taus=(0.0, 0.5),
        n_test=2500,
        baselines=True,
        step=None,
        weights="online",
        n_train=4096,
        modality="image",
    )
    assert lines[:5] == [
        "| features | τ = 0 | τ = 0.5 |",
        "|---|---|---|",
        "| pixels | 0.500 ± 0.010 | 0.500 ± 0.010 |",
        "| random/layer_1 | 0.250 ± 0.009 | 0.250 ± 0.009 |",
        "| layer_1 | 0.750 ± 0.009 | 0.750 ± 0.009 |",
    ]
    assert probe.main(["run"]) == 0  # without --baselines: the JSON as before
    assert json.loads(capsys.readouterr().out) == {"1": 0.5}
    assert calls["layers"] == dict(
        step=None, weights="ema", n_train=4096, n_test=2048, tau=0.0, modality="image"
    )
