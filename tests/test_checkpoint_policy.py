"""Tests for checkpoint retention (train.keep_checkpoints / keep_every / keep_best, an Orbax
preservation policy) and for a crash in the middle of an asynchronous checkpoint save.

The policy is tested as a pure function of (steps, metrics), then end to end: a tiny run whose
surviving step directories must be exactly those the rules select, also after a resume (Orbax
re-reads the metrics stored with each checkpoint). Runs use the tiny run of tests/helpers_train.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from orbax.checkpoint.checkpoint_managers import PreservationContext

from selfflow import config as config_lib
from selfflow import run as run_lib
from selfflow import validation as validation_lib
from selfflow.checkpoint import RunCheckpoints, retention_policy
from selfflow.config import ConfigError, OptimConfig, TrainConfig
from selfflow.metrics_writer import read_metrics
from selfflow.run import load_run
from selfflow.tasks import Task

from helpers_config import mixed_config
from helpers_train import (
    assert_bit_identical,
    checkpoint_steps,
    cli_output,
    host,
    logged_steps,
    run,
    start_cli_train,
    tiny_config,
    with_steps,
)

# ------------------------------------------------------------------------------- the policy alone

# A metric value per step 1..20 with its extremes in the middle: (7 * step) % 20 is a permutation of
# 0..19; the smallest values are at steps 20 (0), 3 (1), 6 (2), the largest at 17 (19), 14 (18), 11 (17).
VALUES = {step: (7 * step) % 20 for step in range(1, 21)}


def kept(metrics: dict[int, dict | None], **train_kw) -> set[int]:
    """Steps of ``metrics`` ({step: checkpoint metrics}) that the policy of TrainConfig(**train_kw) keeps."""
    tcfg = config_lib.validate(dataclasses.replace(tiny_config(), train=TrainConfig(**train_kw))).train
    now = datetime.datetime.now(datetime.UTC)
    infos = [SimpleNamespace(step=s, time=now, metrics=m) for s, m in sorted(metrics.items())]
    flags = retention_policy(tcfg).should_preserve(infos, context=PreservationContext())
    return {info.step for info, keep in zip(infos, flags) if keep}


@pytest.mark.parametrize(
    "train_kw, expected",
    [
        (dict(keep_checkpoints=3), {18, 19, 20}),
        (dict(keep_checkpoints=1, keep_every=5), {5, 10, 15, 20}),
        (dict(keep_checkpoints=1, keep_every=8), {8, 16, 20}),
        (dict(keep_checkpoints=1, keep_best=3), {3, 6, 20}),
        (dict(keep_checkpoints=1, keep_best=3, best_mode="max"), {11, 14, 17, 20}),
        (dict(keep_checkpoints=2, keep_every=8, keep_best=2), {3, 8, 16, 19, 20}),
        (dict(keep_checkpoints=2, keep_every=8, keep_best=2, best_mode="max"), {8, 14, 16, 17, 19, 20}),
        # ranks by the named metric: "loss" is 19 - val/loss here, so its minima are val/loss's maxima
        (dict(keep_checkpoints=1, keep_best=3, best_metric="loss"), {11, 14, 17, 20}),
    ],
)
def test_policy_keeps_the_union_of_its_rules(train_kw, expected):
    metrics = {s: {"val/loss": v, "loss": 19 - v} for s, v in VALUES.items()}
    assert kept(metrics, **train_kw) == expected


@pytest.mark.parametrize("best_mode, expected", [("min", {12, 20}), ("max", {14, 17, 20})])
@pytest.mark.parametrize("old", [None, {"loss": -1.0}], ids=["no_metrics", "other_metric"])
def test_policy_does_not_keep_unranked_checkpoints_as_best(old, best_mode, expected):
    """Steps 1-10 were saved without the ranked metric (keep_best was off, or best_metric was
    another one): keep_best ranks only steps 11-20 (min: 20 and 12, max: 17 and 14), and the
    old ones are not kept forever."""
    metrics = {s: old if s <= 10 else {"val/loss": v} for s, v in VALUES.items()}
    assert kept(metrics, keep_checkpoints=1, keep_best=2, best_mode=best_mode) == expected


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("keep_every", -1, "train.keep_every=-1: expected >= 0"),
        ("keep_best", -2, "train.keep_best=-2: expected >= 0"),
        ("keep_checkpoints", 0, "train.keep_checkpoints=0: expected a positive integer"),
        ("best_metric", "accuracy", "train.best_metric='accuracy': expected 'val/loss'"),
        ("best_mode", "lowest", "train.best_mode='lowest': expected one of 'min', 'max'"),
    ],
)
def test_bad_retention_settings_are_config_errors(key, value, message):
    cfg = tiny_config()
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_lib.validate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **{key: value})))


def test_unknown_validation_metric_fails_before_training(tmp_path):
    """An image-only run validates val/image and val/loss; "val/video" is known to be wrong
    before anything is compiled, not after the first checkpoint."""
    with pytest.raises(ConfigError, match=r"train.best_metric='val/video'.*val/loss, val/image"):
        run(tiny_config(keep_best=1, best_metric="val/video"), tmp_path)
    assert checkpoint_steps(tmp_path) == []


def test_retention_settings_may_change_on_resume(tmp_path):
    cfg = tiny_config()
    changed = dataclasses.replace(
        cfg,
        train=dataclasses.replace(
            cfg.train, keep_checkpoints=5, keep_every=10, keep_best=2, best_metric="loss", best_mode="max"
        ),
    )
    run_lib.check_resumable(cfg, changed, tmp_path)
    with pytest.raises(ConfigError, match="seed"):  # the check itself still works
        run_lib.check_resumable(cfg, dataclasses.replace(changed, seed=1), tmp_path)


def test_validation_metric_names_of_a_mixed_run(monkeypatch):
    """Several layouts: val/<layout>/<modality> for every generated (not condition) segment, and
    val/loss their mean; validation_keys (checked before training) names exactly those."""
    fake = {
        "image": {"image": 1.0},
        "video": {"video": 2.0},
        "audio": {"audio": 3.0},
        "audio_video": {"video": 4.0, "audio": 5.0},
        "video_to_audio": {"audio": 6.0},
        "robot": {"video": 7.0, "action": 8.0},
    }
    task = Task(mixed_config(1))
    monkeypatch.setattr(
        validation_lib, "validation_losses", lambda task, model, index, batches: fake[task.names[index]]
    )
    metrics = validation_lib.validation_metrics(task, model=None)
    assert metrics == {
        "val/loss": 4.5,
        "val/image/image": 1.0,
        "val/video/video": 2.0,
        "val/audio/audio": 3.0,
        "val/audio_video/video": 4.0,
        "val/audio_video/audio": 5.0,
        "val/video_to_audio/audio": 6.0,
        "val/robot/video": 7.0,
        "val/robot/action": 8.0,
    }
    assert validation_lib.validation_keys(task) == list(metrics)


# ------------------------------------------------------------------------------- end to end


def diverging(cfg: config_lib.Config) -> config_lib.Config:
    """Learning rate 0.1: the tiny model improves for a few steps, then diverges, so its best
    checkpoint is an early one that only keep_best keeps (not the last two, not a multiple of 4)."""
    return dataclasses.replace(cfg, optim=OptimConfig(learning_rate=0.1))


def test_retention_in_a_run_and_across_a_resume(tmp_path):
    cfg = diverging(
        tiny_config(steps=6, checkpoint_every=1, log_every=3, keep_checkpoints=2, keep_every=4, keep_best=1)
    )
    run(cfg, tmp_path)
    records = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl")}
    # keep_best logs every checkpoint step (log_every=3 alone would log 3 and 6), with validation
    # and every training metric best_metric may name.
    assert sorted(records) == [1, 2, 3, 4, 5, 6]
    for r in records.values():
        assert set(config_lib.TRAINING_METRICS) <= set(r), sorted(r)
        assert r["val/loss"] == r["val/image"] > 0  # one layout, one modality: the mean is itself
    best = min(records, key=lambda s: records[s]["val/loss"])
    assert best not in {4, 5, 6}, (
        f"val/loss {[records[s]['val/loss'] for s in sorted(records)]}: "
        "the best step is kept by the other rules too; the test needs a run "
        "whose best is an early step"
    )
    assert checkpoint_steps(tmp_path) == sorted({5, 6} | {4} | {best})
    # Orbax stored the logged record with the checkpoint (what the policy ranks after a restart).
    ckpts = RunCheckpoints(tmp_path)
    try:
        assert ckpts.metrics(best) == pytest.approx({k: v for k, v in records[best].items() if k != "step"})
    finally:
        ckpts.close()

    run(with_steps(cfg, 10), tmp_path)
    records = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl")}
    assert sorted(records) == list(range(1, 11))
    assert min(records, key=lambda s: records[s]["val/loss"]) == best, (
        "steps 7-10 beat the earlier best; the resume check below then proves nothing"
    )
    # Kept only because its metrics were read back from disk: without them BestN would not rank
    # it (checkpoints without metrics are not kept as best) and it would be gone.
    assert checkpoint_steps(tmp_path) == sorted({9, 10} | {4, 8} | {best})


# ------------------------------------------------------------------------------- SIGKILL mid-save

# Orbax 0.12.8 writes step n to "<n>.orbax-checkpoint-tmp" (no unique suffix; atomicity.py
# _get_tmp_directory) and renames it to "<n>" once complete.
UNFINISHED = re.compile(r"(\d+)\.orbax-checkpoint-tmp")
STEPS = 12


def unfinished_steps(run_dir: Path) -> list[int]:
    try:
        return [
            int(m.group(1))
            for e in os.scandir(run_dir / "checkpoints")
            if (m := UNFINISHED.fullmatch(e.name))
        ]
    except FileNotFoundError:
        return []


def kill_during_save(tmp_path: Path, cache_dir, overrides, attempts: int = 3) -> tuple[Path, list[int]]:
    """Runs ``selfflow train`` and SIGKILLs it as soon as a save of step >= 2 is in flight (so
    step 1 is complete); retries when that save finished before the kill landed. Returns the
    run directory and the unfinished steps left in it."""
    for attempt in range(attempts):
        run_dir = tmp_path / f"run{attempt}"
        proc = start_cli_train(tmp_path, run_dir, cache_dir, *overrides)
        deadline = time.monotonic() + 120
        while proc.poll() is None and max(left := unfinished_steps(run_dir), default=0) < 2:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"no save of step >= 2 seen in {run_dir / 'checkpoints'} within 120 s")
            # Polling interval: coarse while the child starts, fine once saves follow each other.
            time.sleep(0.0005 if left else 0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode != -signal.SIGKILL:
            pytest.fail(
                f"selfflow train exited with {proc.returncode} before a save could be "
                f"interrupted:\n{cli_output(tmp_path)[1]}"
            )
        if left := unfinished_steps(run_dir):
            return run_dir, left
    pytest.fail(f"in {attempts} attempts every save seen in flight completed before SIGKILL landed")


def test_sigkill_during_async_save_resumes_bit_identically(tmp_path, compilation_cache):
    """``selfflow train`` SIGKILLed while Orbax writes a checkpoint in the background leaves an
    unfinished temporary directory; the same command then resumes from the last complete
    checkpoint and ends bit-identical to an uninterrupted run."""
    # The uninterrupted run first: it also puts the compiled step in the cache the children use.
    reference = tmp_path / "reference"
    run(tiny_config(steps=STEPS, checkpoint_every=STEPS), reference)
    overrides = (f"train.steps={STEPS}", "train.checkpoint_every=1")
    run_dir, left = kill_during_save(tmp_path, compilation_cache, overrides)
    complete = checkpoint_steps(run_dir)
    assert complete and max(complete) < STEPS and all(s > max(complete) for s in left), (complete, left)

    # The same command again: it resumes from the last complete checkpoint and finishes.
    proc = start_cli_train(tmp_path, run_dir, compilation_cache, *overrides)
    try:
        assert proc.wait(timeout=300) == 0, cli_output(tmp_path)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the resumed selfflow train did not finish within 300 s:\n{cli_output(tmp_path)[1]}")
    assert f"resuming from the checkpoint of step {max(complete)}" in cli_output(tmp_path)[1]
    assert logged_steps(run_dir) == list(range(1, STEPS + 1))
    # Saving the interrupted step again replaced its leftover temporary directory.
    assert unfinished_steps(run_dir) == []

    (_, resumed, *_), (_, uninterrupted, *_) = load_run(run_dir), load_run(reference)
    assert_bit_identical(host(resumed), host(uninterrupted))
