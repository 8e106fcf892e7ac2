"""Tests for the resumable training loop (selfflow.train): exact resume, interruption by signal
or crash, the non-finite guard, that training learns, and what a run directory records.

Every run uses a tiny model (depth 2, width 32, 16x16 images, batch 8), so a step is a few
milliseconds on CPU; the cost is XLA compilation, which a persistent compilation cache shared by
every ``train`` call (and the subprocesses) of the session pays only once per objective kind.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from selfflow.config import (
    Config,
    resolve,
)
from selfflow.metrics_writer import read_metrics
from selfflow.model import SelfFlowTransformer
from selfflow.run import load_run
from selfflow.tasks import Task
from selfflow.train import TrainingError

from helpers_train import (
    REF_STEPS,
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


def all_finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted REF_STEPS-step self_flow run; (host state, run dir)."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = run(tiny_config(), run_dir)
    assert result.final_step == REF_STEPS and not result.interrupted
    return host(result.state), run_dir


def reference_state(steps: int, reference, tmp_path) -> dict:
    """State of an uninterrupted run of ``steps`` steps (the fixture's when it has that many)."""
    if steps == REF_STEPS:
        return reference[0]
    return host(run(tiny_config(steps=steps), tmp_path / f"reference-{steps}").state)


# ------------------------------------------------------------------------------- resume


def test_resume_is_bit_identical(reference, tmp_path):
    ref_state, _ = reference
    a = tmp_path / "a"
    first = run(tiny_config(steps=4), a)
    assert first.final_step == 4 and checkpoint_steps(a)[-1] == 4
    resumed = run(with_steps(tiny_config(steps=4), REF_STEPS), a)
    assert resumed.final_step == REF_STEPS and int(resumed.state["step"]) == REF_STEPS
    assert_bit_identical(host(resumed.state), ref_state)
    # One trajectory in metrics.jsonl: each step exactly once, in order.
    assert logged_steps(a) == list(range(1, REF_STEPS + 1))
    # The restored checkpoint itself matches too (not only the in-memory state).
    _, saved, *_ = load_run(a)
    assert_bit_identical(host(saved), ref_state)

    # A run that is already complete is returned as is; nothing is retrained or re-logged.
    metrics_before = (a / "metrics.jsonl").read_text()
    again = run(with_steps(tiny_config(steps=4), REF_STEPS), a)
    assert again.final_step == REF_STEPS
    assert_bit_identical(host(again.state), ref_state)
    assert (a / "metrics.jsonl").read_text() == metrics_before


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir, at_least: int, timeout=120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = checkpoint_steps(run_dir)
        if steps and steps[-1] >= at_least:
            return steps[-1]
        if proc.poll() is not None:
            out, err = cli_output(Path(run_dir).parent)
            pytest.fail(
                f"selfflow train exited with {proc.returncode} before a checkpoint "
                f"of step >= {at_least}:\n{out}\n{err}"
            )
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    pytest.fail(f"no checkpoint of step >= {at_least} within {timeout} s")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_bit_identically(how, tmp_path, compilation_cache, reference):
    """A ``selfflow train`` process stopped mid-run (SIGTERM: graceful, checkpoint saved, exit
    143; SIGKILL: a crash, possibly during an asynchronous save) resumes to the exact state of an
    uninterrupted run. The subprocess is given far more steps than it can take before the signal
    (each step saves a checkpoint), and the resume then continues to a step count a few steps
    past the interruption, which ``train.steps`` may change on resume."""
    # (``reference`` also has the step compiled and cached before the subprocess starts.)
    run_dir = tmp_path / "run"
    proc = start_cli_train(
        tmp_path, run_dir, compilation_cache, "train.steps=100000", "train.checkpoint_every=1"
    )
    # SIGKILL after a few checkpoints, so that metrics.jsonl likely holds lines past the last one.
    polled = _wait_for_checkpoint(proc, run_dir, at_least=1 if how == "SIGTERM" else 3)
    proc.send_signal(getattr(signal, how))
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"selfflow train did not exit within 60 s of {how}")
    _, err = cli_output(tmp_path)
    latest = checkpoint_steps(run_dir)[-1]
    assert latest >= polled
    if how == "SIGTERM":
        assert proc.returncode == 128 + signal.SIGTERM == 143, err
        assert f"stopped by signal {int(signal.SIGTERM)}" in err
        # The step it stopped after is checkpointed and is the last logged step.
        assert logged_steps(run_dir) == list(range(1, latest + 1))
    else:
        assert proc.returncode == -signal.SIGKILL
        # Typically metrics.jsonl already holds the step after the last complete checkpoint and
        # checkpoints/ an unfinished "<step>.orbax-checkpoint-tmp"; the resume must drop both.
        assert logged_steps(run_dir)[:latest] == list(range(1, latest + 1))

    target = latest + 3
    resumed = run(with_steps(tiny_config(), target), run_dir)
    assert resumed.final_step == target
    assert_bit_identical(host(resumed.state), reference_state(target, reference, tmp_path))
    assert logged_steps(run_dir) == list(range(1, target + 1))


# ------------------------------------------------------------------------------- non-finite guard


class NaNImagesAt:
    """The configured batches, except that batch ``bad`` (i.e. step bad + 1) is all NaN."""

    def __init__(self, cfg: Config, bad: int):
        self.batches = Task(cfg).dataset(0)
        self.bad = bad

    def __getitem__(self, n: int) -> dict:
        batch = dict(self.batches[n])
        if n == self.bad:
            batch["image"] = np.full_like(batch["image"], np.nan)
        return batch


@pytest.mark.parametrize("log_every", [1, 10], ids=["logged_step", "unlogged_step"])
def test_non_finite_loss_stops_before_checkpointing_bad_state(log_every, tmp_path):
    """NaN data at step 5 stops training with the step named; the step-4 checkpoint is the latest
    and finite. With log_every=10 step 5 is not logged, so the check happens one step later,
    before the checkpoint of step 6 could be written."""
    cfg = tiny_config(steps=10, checkpoint_every=2, log_every=log_every)
    with pytest.raises(TrainingError) as info:
        run(cfg, tmp_path, dataset=NaNImagesAt(cfg, bad=4))
    message = str(info.value)
    assert re.search(r"\bat step 5\b", message), message
    assert "fm_loss" in message and "non-finite" in message, message
    assert "(step 4)" in message, message  # names the last good checkpoint
    assert checkpoint_steps(tmp_path)[-1] == 4
    restored_cfg, state, _, _, step = load_run(tmp_path)
    assert step == 4 and int(state["step"]) == 4
    assert restored_cfg == resolve(cfg)
    assert all_finite(state["params"]) and all_finite(state["ema"]) and all_finite(state["opt_state"])
    # No non-finite value and nothing after the last good step reached metrics.jsonl.
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(log_every, 5, log_every))
    assert all(math.isfinite(v) for r in records for v in r.values())


# ------------------------------------------------------------------------------- learning


def test_short_run_lowers_flow_matching_loss(tmp_path):
    """300 steps of the tiny model on the shapes data lower fm_loss by >= 30 % (about 50 % for
    seeds 0-3); the step program is the one already compiled for the other tests, so ~3 s."""
    cfg = tiny_config(steps=300, checkpoint_every=300)
    run(cfg, tmp_path)
    fm = [r["fm_loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(fm) == 300
    first, last = np.mean(fm[:5]), np.mean(fm[-10:])
    assert last <= 0.7 * first, f"fm_loss {first:.4f} -> {last:.4f}"


# ------------------------------------------------------------------------------- run directory


def test_metrics_and_tensorboard_are_written(reference):
    _, run_dir = reference
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, REF_STEPS + 1))
    for r in records:
        assert {"step", "loss", "fm_loss", "rep_loss", "grad_norm"} <= set(r), sorted(r)
        assert all(math.isfinite(r[k]) for k in ("loss", "fm_loss", "rep_loss", "grad_norm"))
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == REF_STEPS


def test_sample_every_samples_during_training(tmp_path):
    run(tiny_config(steps=4, checkpoint_every=4, sample_every=2), tmp_path, write_samples=True)
    # at step 2 (not at the last step, which writes samples/ itself)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["image", "step_0000002"]
    assert (tmp_path / "samples" / "step_0000002" / "image" / "0_image.png").is_file()
    assert (tmp_path / "samples" / "image" / "0_image.png").is_file()


@pytest.mark.parametrize("kind", ["flow_matching", "dts"])
def test_baselines_have_no_representation_loss(kind, tmp_path, monkeypatch):
    """flow_matching and dts never run the teacher: rep_loss is exactly 0 and loss == fm_loss."""

    def no_teacher(*args, **kwargs):
        raise AssertionError(f"objective.kind={kind!r} ran the teacher forward")

    monkeypatch.setattr(SelfFlowTransformer, "forward_until", no_teacher)
    run(tiny_config(steps=3, kind=kind), tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["rep_loss"] == 0.0
        assert r["loss"] == r["fm_loss"]


def test_self_flow_has_representation_loss(reference):
    _, run_dir = reference
    records = read_metrics(run_dir / "metrics.jsonl")
    gamma = tiny_config().objective.gamma
    for r in records:
        assert r["rep_loss"] > 0.0
        assert r["loss"] == pytest.approx(r["fm_loss"] + gamma * r["rep_loss"], rel=1e-5)
