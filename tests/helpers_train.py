"""Helpers for tests that train the tiny image model end to end (a helper module, not a test
module): the run config, running it, and reading back what a run directory holds."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from selfflow import train as train_lib
from selfflow.config import Config
from selfflow.metrics_writer import read_metrics
from selfflow.train import train

from helpers_config import tiny_image_config

REPO = Path(__file__).resolve().parents[1]
REF_STEPS = 7


def tiny_config(
    steps: int = REF_STEPS, checkpoint_every: int = 2, log_every: int = 1, kind: str = "self_flow", **train_kw
) -> Config:
    """The tiny image run (helpers_config.tiny_image_config) with these training settings."""
    return tiny_image_config(
        objective=dict(kind=kind),
        train=dict(steps=steps, log_every=log_every, checkpoint_every=checkpoint_every, **train_kw),
    )


def with_steps(cfg: Config, steps: int) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))


def run(cfg: Config, run_dir, **kw) -> train_lib.TrainResult:
    kw.setdefault("progress", False)
    kw.setdefault("write_samples", False)
    return train(cfg, run_dir, **kw)


def host(state: dict) -> dict:
    """A host (numpy) copy of a train state, safe to keep after later runs donate buffers."""
    return jax.tree.map(np.asarray, jax.device_get(state))


def assert_bit_identical(a: dict, b: dict, keys=("step", "params", "ema", "opt_state", "rng")):
    for key in keys:
        leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(a[key])
        leaves_b, tree_b = jax.tree_util.tree_flatten_with_path(b[key])
        assert tree_a == tree_b, f"{key}: tree structures differ"
        for (path, x), (_, y) in zip(leaves_a, leaves_b):
            x, y = np.asarray(x), np.asarray(y)
            where = f"{key}{jax.tree_util.keystr(path)}"
            assert x.dtype == y.dtype and x.shape == y.shape, where
            assert np.array_equal(x, y), f"{where}: max |diff| {np.max(np.abs(x - y))}"


def checkpoint_steps(run_dir) -> list[int]:
    """Finalised checkpoint steps, read from the file system (Orbax renames a step's temporary
    directory to ``<step>`` only once it is complete)."""
    d = Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if re.fullmatch(r"\d+", p.name)) if d.is_dir() else []


def logged_steps(run_dir) -> list[int]:
    return [r["step"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def write_experiment(directory: Path, cfg: Config) -> Path:
    """An experiment file defining CONFIG = cfg (dataclass reprs are valid Python)."""
    path = Path(directory) / "tiny_experiment.py"
    path.write_text(f"from selfflow.config import *\n\nCONFIG = {cfg!r}\n")
    return path


def start_cli_train(tmp_path, run_dir, cache_dir, *overrides) -> subprocess.Popen:
    """``selfflow train`` of tiny_config() with ``--set`` overrides in a subprocess whose stdout and
    stderr go to tmp_path/stdout.txt and stderr.txt (see cli_output)."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )
    cmd = [
        sys.executable,
        "-m",
        "selfflow.cli",
        "train",
        str(write_experiment(tmp_path, tiny_config())),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    for item in overrides:
        cmd += ["--set", item]
    # Output goes to files, not pipes, so a chatty child can never block on a full pipe.
    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)


def cli_output(tmp_path) -> tuple[str, str]:
    """(stdout, stderr) of the start_cli_train subprocess that wrote into tmp_path."""
    return (tmp_path / "stdout.txt").read_text(), (tmp_path / "stderr.txt").read_text()
