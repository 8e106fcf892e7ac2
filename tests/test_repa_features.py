"""REPA on encoder features stored in the data (``selfflow prepare --features``,
``objective.encoder="precomputed"``, selfflow.encoders.precomputed).

The stored features give the same loss as the encoder run in the step; a run trains on them
without loading an encoder; a stored grid or width that differs from the run's, or a source
without features, is one ConfigError naming the source before anything compiles.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from selfflow.config import ConfigError, SourceConfig, resolve
from selfflow.encoders import registry
from selfflow.metrics_writer import read_metrics
from selfflow.model import build_model
from selfflow.objectives import make_objective
from selfflow.tasks import Task
from selfflow.train import train

from helpers_cli import run_cli, write_pngs
from helpers_config import tiny_image_config

DIM = 8


class PatchMeanEncoder(nnx.Module):
    """(B, 16, 16, 3) -> (B, 4, 4, 8): tanh of each 4x4 patch's mean times a fixed matrix."""

    def __init__(self):
        w = np.random.default_rng(7).normal(size=(3, DIM)).astype(np.float32)
        self.w = nnx.Param(jnp.asarray(w))

    def __call__(self, images):
        b, h, w, c = images.shape
        return jnp.tanh(images.reshape(b, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4)) @ self.w[...])


registry.register_encoder("patch_mean_features", lambda arg: PatchMeanEncoder())


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    return write_pngs(tmp_path_factory.mktemp("pngs"), per_class=6)


def prepare(pngs, out, *extra) -> tuple[int, str, str]:
    return run_cli(
        "prepare",
        f"image_folder:{pngs}",
        "--out",
        out,
        "--set",
        "data.image_size=16",
        "model.patch_size=4",
        "--features",
        "patch_mean_features:",
        *extra,
    )


@pytest.fixture(scope="module")
def prepared(pngs, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    code, stdout, stderr = prepare(pngs, out)
    assert code == 0, stdout + stderr
    return out


def config(source_path, encoder="precomputed", **train):
    cfg = tiny_image_config(
        objective=dict(kind="repa", encoder=encoder, encoder_dim=DIM, projector_dim=16, gamma=0.5),
        data=dict(sources=(SourceConfig("prepared", "latents", path=str(source_path)),), num_classes=2),
        train=dict(batch_size=4, **train),
    )
    return cfg


def test_prepare_stores_features_on_the_token_grid(prepared, pngs):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["schema"]["encoder_features"] == {"shape": [4, 4, DIM], "dtype": "float32"}
    assert "patch_mean_features" in manifest["encode"] and "[4, 4]" in manifest["encode"]
    source = Task(config(prepared)).sources["prepared"]
    example = source[3]
    want = PatchMeanEncoder()(jnp.asarray(example["image"])[None])[0]
    np.testing.assert_allclose(example["encoder_features"], np.asarray(want), rtol=1e-6, atol=1e-7)


def test_precomputed_features_give_the_in_step_encoders_loss(prepared):
    """Same batch, same key: the loss from stored features equals the loss with the encoder run on
    the batch's clean images (the stored grid equals the token grid, so no resize differs)."""
    stored, live = resolve(config(prepared)), resolve(config(prepared, encoder="patch_mean_features:"))
    task = Task(stored)
    raw = jax.tree.map(jnp.asarray, task.dataset(0)[0])
    assert raw["encoder_features"].shape == (4, 4, 4, DIM)
    batch, layout = task.segment_batch(0, raw), task.layouts[0].layout
    model = build_model(stored, task.token_dims)
    losses = []
    for cfg in (stored, live):
        obj = make_objective(cfg, task.mask_ratios, task.loss_weights)
        _, metrics = obj.loss(student=model, teacher=None, batch=batch, layout=layout, key=jax.random.key(3))
        losses.append({k: float(metrics[k]) for k in ("loss", "rep_loss", "fm_loss")})
    assert losses[0]["rep_loss"] != 0.0
    for k in losses[0]:
        assert losses[0][k] == pytest.approx(losses[1][k], rel=1e-5, abs=1e-6), k


def test_trains_on_precomputed_features_without_an_encoder(prepared, tmp_path):
    cfg = config(prepared, steps=2, log_every=1, checkpoint_every=2)
    obj = make_objective(resolve(cfg), {"image": 0.25}, {"image": 1.0})
    assert obj.encoder is None  # nothing is loaded or run in the step
    result = train(cfg, tmp_path / "run", progress=False, write_samples=False)
    assert result.final_step == 2
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "rep_loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["rep_loss"]) and r["cos_sim"] != 1.0
        assert r["loss"] == pytest.approx(r["fm_loss"] + 0.5 * r["rep_loss"], rel=1e-5)


def test_a_grid_or_width_unlike_the_runs_is_one_error_naming_the_source(pngs, prepared, tmp_path):
    coarse = tmp_path / "coarse"
    code, stdout, stderr = prepare(pngs, coarse, "--features-grid", "2", "2")
    assert code == 0, stdout + stderr
    with pytest.raises(ConfigError) as e:
        Task(config(coarse)).dataset(0)
    msg = str(e.value)
    assert "\n" not in msg and "'prepared'" in msg and "(2, 2, 8)" in msg and "(4, 4, 8)" in msg
    wide = dataclasses.replace(
        config(prepared), objective=dataclasses.replace(config(prepared).objective, encoder_dim=16)
    )
    with pytest.raises(ConfigError, match=r"\(4, 4, 16\)"):
        Task(wide).dataset(0)


def test_a_source_without_features_is_one_error(pngs):
    cfg = tiny_image_config(
        objective=dict(kind="repa", encoder="precomputed", encoder_dim=DIM, projector_dim=16),
        data=dict(sources=(SourceConfig("pngs", "image_folder", path=str(pngs)),), num_classes=2),
        train=dict(batch_size=4),
    )
    with pytest.raises(ConfigError, match=r"source 'pngs' has no 'encoder_features'.*selfflow prepare"):
        Task(cfg).dataset(0)


def test_feature_flags_are_checked(pngs, tmp_path):
    code, _, err = run_cli(
        "prepare", f"image_folder:{pngs}", "--out", tmp_path / "o", "--features-grid", "2", "2"
    )
    assert code == 2 and "--features-grid needs --features" in err
    code, _, err = prepare(pngs, tmp_path / "o", "--features-grid", "0", "2")
    assert code == 2 and "--features-grid 0 2" in err
    code, _, err = run_cli(
        "prepare", f"image_folder:{pngs}", "--out", tmp_path / "o", "--features", "nonsense:x"
    )
    assert code == 2 and "nonsense" in err
