"""`selfflow doctor`: its warnings on faked machines (device lists, installed versions), and the
real report on this machine."""

from __future__ import annotations

import dataclasses

import pytest
from packaging.specifiers import SpecifierSet

from selfflow import doctor

HEALTHY = doctor.Machine(
    python="3.11.7",
    versions={"jax": "0.10.2", "flax": "0.12.8"},
    declared={"jax": "==0.10.2", "flax": ">=0.12,<0.13"},
    backend="gpu",
    devices=["cuda:0"],
    process=(0, 1),
    nvidia_gpu=True,
    tpu=False,
    environment={},
)


def test_a_healthy_machine_has_no_warnings():
    assert doctor.warnings(HEALTHY) == []
    assert "ok: no problems found" in doctor.report(HEALTHY, "data=1")


def test_a_gpu_with_a_cpu_jax_is_the_wrong_wheel():
    m = dataclasses.replace(HEALTHY, backend="cpu", devices=["TFRT_CPU_0"])
    (warning,) = doctor.warnings(m)
    assert "NVIDIA GPU is present but JAX runs on the CPU" in warning and ".[cuda12]" in warning


def test_a_tpu_with_a_cpu_jax_is_the_wrong_wheel():
    m = dataclasses.replace(HEALTHY, backend="cpu", nvidia_gpu=False, tpu=True)
    (warning,) = doctor.warnings(m)
    assert "TPU is present" in warning and ".[tpu]" in warning


def test_a_cpu_machine_on_the_cpu_is_fine():
    m = dataclasses.replace(HEALTHY, backend="cpu", nvidia_gpu=False)
    assert doctor.warnings(m) == []


@pytest.mark.parametrize(
    "versions, expected",
    [
        ({"jax": "0.11.0", "flax": "0.12.8"}, "jax 0.11.0 is outside the tested jax==0.10.2"),
        ({"jax": "0.10.2", "flax": "0.13.1"}, "flax 0.13.1 is outside the tested flax>=0.12,<0.13"),
        ({"jax": "0.10.2", "flax": None}, "flax is not installed"),
    ],
)
def test_versions_outside_the_declared_range_are_named(versions, expected):
    (warning,) = doctor.warnings(dataclasses.replace(HEALTHY, versions=versions))
    assert warning.startswith(expected)


def test_the_report_names_devices_processes_mesh_and_environment():
    m = dataclasses.replace(
        HEALTHY, devices=[f"cuda:{i}" for i in range(8)], process=(1, 2), environment={"XLA_FLAGS": "--x"}
    )
    text = doctor.report(m, doctor.default_mesh_line(8))
    assert "devices           8: cuda:0, cuda:1, cuda:2, cuda:3 ..." in text
    assert "index 1 of 2" in text and "XLA_FLAGS" in text and "--x" in text
    assert "data=8 x fsdp=1 x tensor=1" in text  # the default mesh puts every device on data


def test_declared_requirements_are_this_packages_ranges():
    """What doctor reads from the installed metadata is pyproject.toml's dependency list."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    want = {r.name.lower(): r.specifier for r in map(Requirement, project["dependencies"])}
    declared = doctor.declared_requirements()
    assert set(declared) == set(want)
    assert all(SpecifierSet(declared[name]) == want[name] for name in want)
    assert "0.10.2" in SpecifierSet(declared["jax"])  # the 3.11 lock's JAX
    assert doctor.declared_requirements("no-such-distribution-xyz") == {}


def test_doctor_on_this_machine(capsys):
    from selfflow.cli import main

    status = main(["doctor"])
    out = capsys.readouterr().out
    assert "backend" in out and "default mesh" in out
    assert status == (1 if "warning:" in out else 0)
