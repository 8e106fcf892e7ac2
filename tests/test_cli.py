"""Tests for the ``selfflow`` command line (selfflow.cli.main): configuration errors are one-line
messages with exit status 2 before anything is compiled, resume compatibility, ``sample`` and a
finished ``train`` run's outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfflow import cli
from selfflow import train as train_lib
from selfflow.config import Config, from_dict, load_config_file, resolve
from selfflow.metrics_writer import read_metrics
from selfflow.sample import save_grid

import helpers_train
from helpers_config import tiny_image_config

STEPS = 3
PER_CLASS = 2  # != 1 so that rows (classes) and columns (samples per class) are told apart

CONFIG = tiny_image_config(
    train=dict(steps=STEPS, log_every=1, checkpoint_every=2), sample=dict(per_class=PER_CLASS)
)


def write_experiment(directory: Path, cfg: Config = CONFIG) -> Path:
    """An experiment file defining CONFIG = cfg."""
    return helpers_train.write_experiment(directory, cfg)


def call(argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``selfflow ARGV`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def train_argv(experiment, run_dir, *overrides) -> list[str]:
    argv = ["train", str(experiment), "--run-dir", str(run_dir), "--no-progress"]
    for item in overrides:
        argv += ["--set", item]
    return argv


def error_line(err: str) -> str:
    """The single ``selfflow: error: ...`` line of stderr (fails if there is anything else)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("selfflow: error: "), lines[0]
    return lines[0]


def checkpoint_steps(run_dir) -> list[int]:
    d = Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished ``selfflow train`` run: (experiment file, run dir, exit status, stdout, stderr)."""
    base = tmp_path_factory.mktemp("cli")
    experiment = write_experiment(base)
    run_dir = base / "run"
    rc, out, err = call(train_argv(experiment, run_dir))
    return experiment, run_dir, rc, out, err


# ------------------------------------------------------------------------------- config errors


BAD_OVERRIDES = [
    pytest.param(["objective.gama=0.5"], "objective.gama", id="unknown_key"),
    pytest.param(["objective.teacher_layer=3"], "objective.teacher_layer", id="teacher_past_depth"),
    pytest.param(["objective.student_layer=2"], "objective.student_layer", id="student_eq_teacher"),
    pytest.param(
        ["objective.student_layer=2", "objective.teacher_layer=1"],
        "objective.student_layer",
        id="student_gt_teacher",
    ),
    pytest.param(["objective.mask_ratio=0.6"], "objective.mask_ratio", id="mask_ratio_0.6"),
    pytest.param(["objective.mask_ratio=-0.1"], "objective.mask_ratio", id="mask_ratio_-0.1"),
    pytest.param(["train.steps=abc"], "train.steps", id="steps_not_int"),
    pytest.param(["train.batch_size=2.5"], "train.batch_size", id="batch_size_float"),
    pytest.param(["train.steps=true"], "train.steps", id="steps_bool"),
    pytest.param(["objective.kind=diffusion"], "objective.kind", id="kind_not_a_choice"),
    pytest.param(["objective.gamma"], "objective.gamma", id="no_equals_sign"),
    pytest.param(["objective=3"], "objective", id="section_not_leaf"),
    # Values that would otherwise only be noticed after training (or as a NaN at step 1).
    pytest.param(["sample.per_class=0"], "sample.per_class", id="per_class_0"),
    pytest.param(["sample.steps=0"], "sample.steps", id="sample_steps_0"),
    pytest.param(["data.num_classes=5"], "data.num_classes", id="num_classes_mismatch"),
]


@pytest.fixture
def no_compile(monkeypatch):
    """Fails the test if training gets as far as building the model or the jitted step."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a bad configuration reached model building / compilation")

    monkeypatch.setattr(train_lib, "build_model", forbidden)
    monkeypatch.setattr(train_lib, "make_train_step", forbidden)


@pytest.mark.parametrize("overrides, key", BAD_OVERRIDES)
def test_bad_config_is_a_one_line_usage_error(overrides, key, tmp_path, no_compile):
    experiment = write_experiment(tmp_path)
    run_dir = tmp_path / "run"
    rc, out, err = call(train_argv(experiment, run_dir, *overrides))
    assert rc == 2
    assert key in error_line(err)
    assert out == ""
    assert checkpoint_steps(run_dir) == [] and not (run_dir / "checkpoints").exists()


def test_missing_config_file_is_a_usage_error(tmp_path, no_compile):
    missing = tmp_path / "no_such_experiment.py"
    rc, _, err = call(train_argv(missing, tmp_path / "run"))
    assert rc == 2
    line = error_line(err)
    assert str(missing) in line and "does not exist" in line
    assert not (tmp_path / "run").exists()


def test_set_takes_several_pairs_and_repeats():
    """``--set a=1 b=2`` (as the README's ``[--set key=value ...]``) and repeated ``--set`` add up, in order."""
    for command in (
        ["train", "x.py"],
        ["bench"],
        ["bench-data", "x.py"],
        ["prepare", "world", "--out", "d"],
        ["compile", "x.py"],
        ["import", "--official", "f.pt", "--config", "x.py", "--out", "d"],
    ):
        args = cli._parser().parse_args(
            [*command, "--set", "train.steps=2", "seed=3", "--set", "train.log_every=1"]
        )
        assert args.overrides == ["train.steps=2", "seed=3", "train.log_every=1"], command


def test_command_line_usage_error_exits_2(tmp_path, capsys):
    """argparse usage errors exit with 2 too (as SystemExit, not a return value)."""
    with pytest.raises(SystemExit) as info:
        cli.main(["train", str(write_experiment(tmp_path)), "--no-such-flag"])
    assert info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_sample_rejects_non_positive_steps(tmp_path, no_compile):
    rc, _, err = call(["sample", "--run-dir", tmp_path, "--out", tmp_path / "x.png", "--steps", "0"])
    assert rc == 2 and "--steps" in error_line(err)


@pytest.mark.parametrize("kind", ["flow_matching", "self_flow"])
def test_default_layers_are_valid_for_depth_2(kind, tmp_path):
    experiment = write_experiment(tmp_path)
    cfg = load_config_file(
        experiment, ["objective.student_layer=None", "objective.teacher_layer=None", f"objective.kind={kind}"]
    )
    assert cfg.depth == 2 and 1 <= cfg.student_layer < cfg.teacher_layer <= 2


# ------------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "override, key",
    [
        ("objective.gamma=0.5", "objective.gamma"),
        ("model.dtype=bfloat16", "model.dtype"),
        ("seed=1", "seed"),
    ],
)
def test_resume_with_changed_setting_is_rejected(override, key, trained, tmp_path):
    experiment, src, rc, _, _ = trained
    assert rc == 0
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    config_before = (run_dir / "config.json").read_text()
    metrics_before = (run_dir / "metrics.jsonl").read_text()

    rc, _, err = call(train_argv(experiment, run_dir, override, f"train.steps={STEPS + 2}"))
    assert rc == 2
    line = error_line(err)
    assert f"{key}:" in line and str(run_dir) in line, line
    assert checkpoint_steps(run_dir)[-1] == STEPS
    assert (run_dir / "config.json").read_text() == config_before
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before


def test_resume_with_more_steps_continues(trained, tmp_path):
    experiment, src, rc, _, _ = trained
    assert rc == 0
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    rc, out, err = call(train_argv(experiment, run_dir, f"train.steps={STEPS + 2}"))
    assert rc == 0, err
    assert f"trained {STEPS + 2} steps" in out
    assert checkpoint_steps(run_dir)[-1] == STEPS + 2
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, STEPS + 3))
    assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == STEPS + 2


# ------------------------------------------------------------------------------- sample


def test_sample_writes_class_grid(trained, tmp_path, monkeypatch):
    _, run_dir, rc, _, _ = trained
    assert rc == 0
    import selfflow.layout_samples

    calls = []
    real = selfflow.layout_samples.generate

    def spy(cfg, task, model, index, raw, key, **kwargs):
        calls.append({**kwargs, "labels": np.asarray(raw["label"])})
        return real(cfg, task, model, index, raw, key, **kwargs)

    monkeypatch.setattr(selfflow.layout_samples, "generate", spy)
    rc, stdout, err = call(
        ["sample", "--run-dir", run_dir, "--out", tmp_path / "grid", "--steps", "3", "--cfg", "1.5"]
    )
    out = tmp_path / "grid" / "image" / "0_image.png"
    assert rc == 0, err
    assert f"step {STEPS}" in stdout
    # The command-line values reach the sampler (a 3-step model is too weakly conditioned for
    # the guidance scale to change the 8-bit image, so this is checked on the call).
    assert len(calls) == 1
    assert calls[0]["steps"] == 3 and calls[0]["cfg_scale"] == 1.5
    np.testing.assert_array_equal(
        calls[0]["labels"], np.repeat(np.arange(CONFIG.data.num_classes), PER_CLASS)
    )
    scale = inspect.signature(save_grid).parameters["scale"].default
    size = CONFIG.data.image_size * scale
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        # PIL sizes are (width, height): one column per sample, one row per class.
        assert image.size == (PER_CLASS * size, CONFIG.data.num_classes * size)
        pixels = np.asarray(image)
    assert pixels.std() > 0  # not a blank image

    # Deterministic for the same arguments.
    rc, _, _ = call(
        ["sample", "--run-dir", run_dir, "--out", tmp_path / "again", "--steps", "3", "--cfg", "1.5"]
    )
    assert rc == 0
    with Image.open(tmp_path / "again" / "image" / "0_image.png") as again:
        assert np.array_equal(np.asarray(again), pixels)
    # Sampling with --out leaves the run's own outputs alone.
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix == ".png") == ["loss.png"]
    assert [p.name for p in (run_dir / "samples").iterdir()] == ["image"]


def test_sample_without_checkpoint_fails(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = call(["sample", "--run-dir", empty, "--out", tmp_path / "x.png"])
    assert rc == 1
    assert "no checkpoint found" in error_line(err)
    assert not (tmp_path / "x.png").exists()


def test_sample_does_not_create_missing_run_dir(tmp_path):
    missing = tmp_path / "typo"
    rc, _, err = call(["sample", "--run-dir", missing, "--out", tmp_path / "x.png"])
    assert rc == 1 and "no checkpoint found" in error_line(err)
    assert not missing.exists()


def test_plot_without_metrics_is_a_one_line_error(tmp_path):
    rc, _, err = call(["plot", "--run-dir", tmp_path])
    assert rc in (1, 2)
    assert "metrics" in error_line(err)


# ------------------------------------------------------------------------------- train outputs


def test_finished_train_run_writes_outputs(trained):
    _, run_dir, rc, out, err = trained
    assert rc == 0, err
    assert f"trained {STEPS} steps" in out
    for name in ("samples/image/0_image.png", "loss.png", "config.json", "metrics.jsonl"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert checkpoint_steps(run_dir)[-1] == STEPS  # the final step, not only multiples of 2
    assert from_dict(json.loads((run_dir / "config.json").read_text())) == resolve(CONFIG)
    with Image.open(run_dir / "samples" / "image" / "0_image.png") as image:
        scale = inspect.signature(save_grid).parameters["scale"].default
        size = CONFIG.data.image_size * scale
        assert image.size == (PER_CLASS * size, CONFIG.data.num_classes * size)
    with Image.open(run_dir / "loss.png") as image:
        assert image.format == "PNG"


def test_overrides_are_applied_and_recorded(trained, tmp_path):
    """--set values reach the run: config.json of a one-step run holds them."""
    experiment, *_ = trained
    run_dir = tmp_path / "run"
    rc, _, err = call(
        train_argv(experiment, run_dir, "train.steps=1", "sample.per_class=1", "train.log_every=5")
    )
    assert rc == 0, err
    expected = dataclasses.replace(
        CONFIG,
        train=dataclasses.replace(CONFIG.train, steps=1, log_every=5),
        sample=dataclasses.replace(CONFIG.sample, per_class=1),
    )
    assert from_dict(json.loads((run_dir / "config.json").read_text())) == resolve(expected)
    assert checkpoint_steps(run_dir) == [1]
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1]  # final step logged
