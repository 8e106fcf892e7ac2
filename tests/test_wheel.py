"""The installed package works outside the checkout: a wheel built from the project's files,
installed into a new virtual environment, runs ``selfflow --help``, ``selfflow bench --help`` and a
two-step ``selfflow train`` of a config file written in a temporary directory (no repository path
on ``sys.path``, nothing read from the checkout).

The new environment gets the project's dependencies from the running interpreter's site-packages
through a ``.pth`` line (installing JAX again would take minutes and the network); ``.pth`` files
inside that directory are not processed, so the checkout's editable install stays out of it, which
the test checks by where ``selfflow`` is imported from.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pyproject.toml", "README.md", "selfflow", "modalities", "data_pipelines")

CONFIG = """
from selfflow.config import Config, DataConfig, ModelConfig, ObjectiveConfig, SampleConfig, TrainConfig

CONFIG = Config(
    model=ModelConfig(preset="tiny", depth=2, hidden_size=32, num_heads=2, patch_size=4),
    objective=ObjectiveConfig(student_layer=1, teacher_layer=2),
    data=DataConfig(source="shapes", image_size=16, num_classes=10),
    train=TrainConfig(steps=2, batch_size=4, checkpoint_every=2, log_every=1),
    sample=SampleConfig(steps=2, per_class=1),
)
"""


def run(args, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """(venv, env): the wheel installed into a new venv that sees only the dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    for name in PROJECT_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    # with setuptools here, build with it; without (a Python 3.12+ venv), pip fetches it
    isolation = ["--no-build-isolation"] if _has("setuptools") else []
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", tmp / "dist", src], tmp, env)
    (wheel,) = (tmp / "dist").glob("selfflow-*.whl")

    target = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "selfflow_deps.pth").write_text("\n".join(deps) + "\n")
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
        tmp,
        env,
    )
    return target, env


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_the_wheel_imports_from_its_own_environment(installed, tmp_path):
    target, env = installed
    where = run(
        [target / "bin" / "python", "-c", "import selfflow, modalities; print(selfflow.__file__)"],
        tmp_path,
        env,
    )
    path = Path(where.stdout.strip()).resolve()
    assert target.resolve() in path.parents and ROOT not in path.parents


def test_help_bench_help_and_a_two_step_train_outside_the_checkout(installed, tmp_path):
    target, env = installed
    selfflow = target / "bin" / "selfflow"
    assert "train" in run([selfflow, "--help"], tmp_path, env).stdout
    assert "SiT-S/2" in run([selfflow, "bench", "--help"], tmp_path, env).stdout
    (tmp_path / "tiny.py").write_text(CONFIG)
    run([selfflow, "train", "tiny.py", "--run-dir", "run", "--no-progress"], tmp_path, env)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in rows) == 2
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
