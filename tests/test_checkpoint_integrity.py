"""Tests for checkpoint integrity: checksums saved with every checkpoint and checked on restore, a
flipped byte or a truncated file as a one-line error, ``selfflow verify``, ``train.resume_step`` and
``train.on_bad_checkpoint=previous`` (bit-identical resume, damaged checkpoint set aside and kept),
the non-finite stop's "good" checkpoint, and the checksum cost in ``selfflow bench``.

Runs use the tiny run of tests/helpers_train.py: one 4-step run with checkpoints 2 and 4, copied
and damaged per test (the middle byte of step 4's largest OCDBT data file flipped, or the file cut
in half).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from selfflow import cli
from selfflow.bench import checkpoint_cost
from selfflow.checkpoint import CheckpointDamaged, RunCheckpoints, differing_tensors, state_checksums
from selfflow.config import ConfigError, validate
from selfflow.errors import TrainingError
from selfflow.hooks import NonFinite
from selfflow.metrics_writer import read_metrics
from selfflow.run import load_run

from helpers_train import assert_bit_identical, checkpoint_steps, host, run, tiny_config, write_experiment

TENSOR = r"(?:params|ema|opt_state)\.[\w.]+"  # an Orbax tensor name, e.g. opt_state.1.0.mu.blocks.0.attn.qkv.kernel


def continued(**train_kw):
    """The saved run continued to step 6, keeping the last 2 checkpoints."""
    return tiny_config(steps=6, checkpoint_every=2, keep_checkpoints=2, **train_kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints 2 and 4 (copy it before damaging it)."""
    run_dir = tmp_path_factory.mktemp("integrity") / "run"
    run(tiny_config(steps=4, checkpoint_every=2), run_dir)
    assert checkpoint_steps(run_dir) == [2, 4]
    return run_dir


@pytest.fixture(scope="module")
def reference(saved, tmp_path_factory) -> tuple[Path, dict]:
    """The undamaged run continued from step 4 to 6: (run dir, host state)."""
    run_dir = tmp_path_factory.mktemp("integrity") / "reference"
    shutil.copytree(saved, run_dir)
    result = run(continued(), run_dir)
    return run_dir, host(result.state)


def damaged_copy(saved: Path, tmp_path: Path, how: str, step: int = 4) -> tuple[Path, Path]:
    """(run dir, damaged file): a copy of ``saved`` with the middle byte of the largest data file
    of ``step`` flipped ("flip") or that file cut in half ("truncate")."""
    run_dir = tmp_path / "run"
    shutil.copytree(saved, run_dir)
    files = (run_dir / "checkpoints" / str(step) / "state").glob("ocdbt.process_*/d/*")
    path = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) // 2 :]
    path.write_bytes(bytes(data))
    return run_dir, path


def contents(directory: Path) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def call(argv: list) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``selfflow ARGV`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def one_error_line(err: str) -> str:
    """The ``selfflow: error:`` line of stderr: there is exactly one, and no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("selfflow: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ------------------------------------------------------------------------------- checksums alone


def test_checksums_cover_every_shard_and_any_layout_can_check_them():
    """A tensor split over 8 devices has 8 checksummed shards; the same values on one device (or in
    numpy) check against them, one changed element or a missing tensor is named."""
    mesh = jax.make_mesh((8,), ("x",), devices=jax.devices()[:8])
    w = jax.device_put(np.arange(64 * 3, dtype=np.float32).reshape(64, 3), NamedSharding(mesh, P("x")))
    b = jax.device_put(np.ones(5, np.float32), NamedSharding(mesh, P()))  # replicated: saved once
    sums = state_checksums({"w": w, "b": b, "step": np.int32(3)})
    assert sums["hash"] == "crc32"
    assert sorted(sums["tensors"]["w"]) == sorted(f"{8 * i}:{8 * i + 8},0:3" for i in range(8))
    assert list(sums["tensors"]["b"]) == ["0:5"] and list(sums["tensors"]["step"]) == [""]

    one_device = {
        "w": jax.device_put(np.asarray(w), jax.devices()[0]),
        "b": np.asarray(b),
        "step": np.int32(3),
    }
    assert differing_tensors(sums, one_device) == []
    changed = np.asarray(w).copy()
    changed[37, 1] = np.nextafter(changed[37, 1], np.inf)  # one bit of one element
    assert differing_tensors(sums, {**one_device, "w": changed}) == ["w"]
    assert differing_tensors(sums, {"w": np.asarray(w), "step": np.int32(3)}) == ["b"]


# ------------------------------------------------------------------------------- detection


def test_flipped_byte_is_detected_on_restore_and_by_verify(saved, tmp_path):
    run_dir, _ = damaged_copy(saved, tmp_path, "flip")
    with pytest.raises(CheckpointDamaged) as info:
        load_run(run_dir)
    message = str(info.value)
    assert "\n" not in message
    assert re.match(
        rf"{re.escape(str(run_dir.absolute()))}/checkpoints/4: 1 tensor\(s\) differ from the checksums",
        message,
    ), message
    assert re.search(rf"saved with them: {TENSOR};", message), message
    assert "--step K" in message and f"selfflow verify --run-dir {run_dir}" in message, message
    assert load_run(run_dir, step=2)[4] == 2  # the older checkpoint still loads

    rc, out, _ = call(["verify", "--run-dir", run_dir])
    lines = out.splitlines()
    assert rc == 1 and len(lines) == 2, out
    ok = r"/checkpoints/2: ok \(\d+ tensors, [\d.]+ MB, every crc32 matches\)$"
    assert re.search(ok, lines[0]), lines[0]
    assert re.search(rf"/checkpoints/4: DAMAGED: 1 tensor\(s\) differ .*: {TENSOR}$", lines[1]), lines[1]
    assert call(["verify", "--run-dir", run_dir, "--step", 2])[:2] == (0, lines[0] + "\n")


def test_truncated_checkpoint_is_a_one_line_error(saved, tmp_path):
    """For a reader (``sample``) and for ``train`` (which leaves the checkpoint as it is)."""
    run_dir, _ = damaged_copy(saved, tmp_path, "truncate")
    before = contents(run_dir / "checkpoints")

    rc, _, err = call(["sample", "--run-dir", run_dir, "--out", tmp_path / "samples"])
    line = one_error_line(err)
    assert rc == 1
    assert re.match(
        rf"selfflow: error: {re.escape(str(run_dir.absolute()))}/checkpoints/4: tensor {TENSOR} cannot be "
        r"read \(OUT_OF_RANGE: .*\): a file is truncated or damaged; use an older checkpoint with --step K",
        line,
    ), line

    experiment = write_experiment(tmp_path, tiny_config(steps=4, checkpoint_every=2))
    rc, _, err = call(["train", experiment, "--run-dir", run_dir, "--no-progress", "--set", "train.steps=6"])
    line = one_error_line(err)
    assert rc == 1 and "/checkpoints/4: tensor " in line, line
    assert "older checkpoint (steps 2) with --set train.resume_step=K" in line, line
    assert "--set train.on_bad_checkpoint=previous" in line, line
    assert contents(run_dir / "checkpoints") == before  # not deleted, moved or overwritten


def test_checkpoints_without_checksums_load_with_a_note(saved, tmp_path, capsys):
    """A checkpoint saved before checksums existed (here: its ``checksums`` item removed)."""
    run_dir = tmp_path / "run"
    shutil.copytree(saved, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "4" / "checksums")
    assert load_run(run_dir)[4] == 4
    err = capsys.readouterr().err
    assert (
        f"{run_dir.absolute()}/checkpoints/4: no checksums (saved by an older version); loaded unverified\n"
        in err
    )
    rc, out, _ = call(["verify", "--run-dir", run_dir, "--step", 4])
    assert rc == 0 and out.endswith(
        "/checkpoints/4: readable, not verified (no checksums: saved by an older version)\n"
    )


def test_non_finite_stop_calls_good_only_a_checkpoint_that_verifies(saved, tmp_path):
    run_dir, _ = damaged_copy(saved, tmp_path, "flip")
    ckpts = RunCheckpoints(run_dir)
    try:
        with pytest.raises(TrainingError) as info:
            NonFinite(ckpts.directory, 4, ckpts).check(5, {"loss": math.nan})
    finally:
        ckpts.close()
    message = str(info.value)
    assert message.startswith("non-finite loss=nan at step 5; training stopped and "), message
    assert (
        "the last good checkpoint (step 2) in " in message and " verifies and was not overwritten" in message
    )
    assert re.search(rf"\(step 4 does not verify: 1 tensor\(s\) differ .*: {TENSOR}\)$", message), message


# ------------------------------------------------------------------------------- resuming


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_previous_resumes_bit_identically_from_the_older_checkpoint(
    saved, reference, tmp_path, damage, capsys
):
    """on_bad_checkpoint=previous: step 4 is set aside as 4.damaged (kept byte for byte, not counted
    by keep_checkpoints=2), the run resumes from step 2 and ends bit-identical to the undamaged run
    continued from step 4; metrics.jsonl holds the warning and each step once."""
    run_dir, _ = damaged_copy(saved, tmp_path, damage)
    bad = contents(run_dir / "checkpoints" / "4")
    result = run(continued(on_bad_checkpoint="previous"), run_dir)
    err = capsys.readouterr().err
    assert re.search(r"warning: .*/checkpoints/4: .*; trying the previous checkpoint\n", err), err
    assert (
        "resuming from the checkpoint of step 2" in err and "set aside (kept, not loaded): 4.damaged" in err
    )

    ref_dir, ref_state = reference
    assert_bit_identical(host(result.state), ref_state)
    assert checkpoint_steps(run_dir) == checkpoint_steps(ref_dir) == [4, 6]
    assert contents(run_dir / "checkpoints" / "4.damaged") == bad
    assert_bit_identical(host(load_run(run_dir)[1]), ref_state)  # the new checkpoint 6 verifies

    records = read_metrics(run_dir / "metrics.jsonl")
    warnings = [r for r in records if "warning" in r]
    assert len(warnings) == 1 and warnings[0]["step"] == 2, warnings
    assert re.fullmatch(
        r"resumed from step 2 \(train.on_bad_checkpoint=previous\): checkpoint 4 set aside as 4.damaged: .+",
        warnings[0]["warning"],
    )
    assert [r["step"] for r in records if "warning" not in r] == list(range(1, 7))

    rc, out, _ = call(["verify", "--run-dir", run_dir])
    assert rc == 0 and out.splitlines()[-1].endswith(
        "/checkpoints/4.damaged: set aside by a resume (never loaded or counted; delete it once inspected)"
    )


def test_resume_step_resumes_from_an_older_checkpoint(saved, reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(saved, run_dir)
    newer = contents(run_dir / "checkpoints" / "4")
    result = run(continued(resume_step=2), run_dir)
    assert_bit_identical(host(result.state), reference[1])
    assert checkpoint_steps(run_dir) == [4, 6]
    assert contents(run_dir / "checkpoints" / "4.superseded") == newer
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, 7))
    # rerunning the same command later continues from what was saved since, not from step 2 again
    again = run(tiny_config(steps=8, checkpoint_every=2, keep_checkpoints=2, resume_step=2), run_dir)
    assert int(again.state["step"]) == 8 and checkpoint_steps(run_dir) == [6, 8]
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, 9))


def test_resume_settings_are_checked(saved, tmp_path):
    cfg = tiny_config()
    for key, value, message in [
        ("resume_step", -1, "train.resume_step=-1: expected None (the latest) or a checkpoint step >= 0"),
        ("on_bad_checkpoint", "skip", "train.on_bad_checkpoint='skip': expected one of 'error', 'previous'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **{key: value})))
    run_dir = tmp_path / "run"
    shutil.copytree(saved, run_dir)
    with pytest.raises(
        ConfigError, match=r"train.resume_step=3: .*/checkpoints has no checkpoint of that step \(\[2, 4\]\)"
    ):
        run(continued(resume_step=3), run_dir)


# ------------------------------------------------------------------------------- cost


def test_bench_measures_the_checksums_beside_the_save(saved):
    cfg, state, *_ = load_run(saved)
    cost = checkpoint_cost(cfg, state, saves=2)
    assert cost["bytes"] == sum(x.nbytes for x in jax.tree.leaves(state))
    assert cost["checksum_seconds"] > 0 and 0 < cost["save_blocking_seconds"] <= cost["save_seconds"]
    assert cost["checksum_gb_per_s"] == pytest.approx(cost["bytes"] / cost["checksum_seconds"] / 1e9)
    json.dumps(cost)  # goes into `selfflow bench --json`
