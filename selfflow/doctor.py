"""``selfflow doctor``: what this installation runs on, and the misinstalls that waste a day.

Prints Python and the versions of the libraries the framework is built on beside the versions it
declares (its package metadata: the tested set), the JAX backend and its devices, the process count
and index, the mesh the default config would build here, and the XLA / JAX environment variables
in effect. Then a warning line for each of:

- an NVIDIA GPU or a TPU on the machine while JAX runs on the CPU: the classic wrong-wheel install
  (``pip install -e '.[cuda12]'``, ``'.[cuda13]'`` or ``'.[tpu]'`` installs JAX's own extra);
- an installed version outside the declared one (untested here: it may work, or may not);
- a declared library that is not installed.

Every probe is a function of injectable inputs (:class:`Machine`), so the warnings are tested
with faked device lists; :func:`main` gathers the real ones. Exit status 0, or 1 with warnings.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "librosa")
ENVIRONMENT = (
    "JAX_PLATFORMS",
    "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "CUDA_VISIBLE_DEVICES",
    "TPU_NAME",
)


@dataclasses.dataclass
class Machine:
    """What :func:`report` reads: everything the machine and the installation say."""

    python: str
    versions: dict[str, str | None]  # installed library -> version (None: not installed)
    declared: dict[str, str]  # library -> the specifier the package declares, e.g. "==0.10.2"
    backend: str  # jax.default_backend()
    devices: list[str]  # str(device) of jax.devices()
    process: tuple[int, int]  # (index, count)
    nvidia_gpu: bool  # an NVIDIA driver or device node on the machine
    tpu: bool  # TPU device nodes or a TPU VM's environment
    environment: dict[str, str]


def declared_requirements(distribution: str = "selfflow") -> dict[str, str]:
    """{library: specifier} of the installed package's requirements (extras' markers left out)."""
    try:
        lines = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return {}
    out = {}
    for line in lines:
        if "extra ==" in line:
            continue
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*([^;]*)", line)
        if m:
            out[m.group(1).lower()] = m.group(2).strip()
    return out


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _nvidia_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def _tpu_present() -> bool:
    return (
        any(Path("/dev").glob("accel*")) or any(Path("/dev").glob("vfio/[0-9]*")) or "TPU_NAME" in os.environ
    )


def gather() -> Machine:
    """The real machine (imports JAX and asks it for its devices)."""
    import jax

    declared = declared_requirements()
    names = list(dict.fromkeys([*LIBRARIES, *(k for k in declared if k in LIBRARIES)]))
    return Machine(
        python=platform.python_version(),
        versions={n: _installed(n) for n in names},
        declared={n: declared[n] for n in names if n in declared},
        backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
        process=(jax.process_index(), jax.process_count()),
        nvidia_gpu=_nvidia_present() or shutil.which("nvidia-smi") is not None,
        tpu=_tpu_present(),
        environment={k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
    )


def _outside(version: str, specifier: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return bool(specifier) and Version(version) not in SpecifierSet(specifier)
    except InvalidVersion:
        return False


def warnings(m: Machine) -> list[str]:
    """One line per problem (see the module docstring)."""
    out = []
    if m.backend == "cpu" and m.nvidia_gpu:
        out.append(
            "an NVIDIA GPU is present but JAX runs on the CPU: install JAX's CUDA build, e.g. "
            "pip install -e '.[cuda12]' (or '.[cuda13]' with a CUDA 13 driver), in this venv"
        )
    if m.backend == "cpu" and m.tpu:
        out.append("a TPU is present but JAX runs on the CPU: pip install -e '.[tpu]' (libtpu) in this venv")
    for name, spec in m.declared.items():
        version = m.versions.get(name)
        if version is None:
            out.append(f"{name} is not installed (selfflow declares {name}{spec}): pip install -e .")
        elif _outside(version, spec):
            out.append(f"{name} {version} is outside the tested {name}{spec}: it may work, it was not tested")
    return out


def report(m: Machine, mesh_line: str) -> str:
    """The printed report: one fact per line, then the warnings."""
    lines = [f"python            {m.python}"]
    lines += [
        f"{name:<17} {m.versions.get(name) or 'not installed'}"
        + (f"   (declared {m.declared[name]})" if name in m.declared else "")
        for name in m.versions
    ]
    lines += [
        f"backend           {m.backend}",
        f"devices           {len(m.devices)}: {', '.join(m.devices[:4])}{' ...' if len(m.devices) > 4 else ''}",
        f"processes         index {m.process[0]} of {m.process[1]}",
        f"default mesh      {mesh_line}",
    ]
    lines += [f"{k:<17} {v}" for k, v in m.environment.items()] or [
        "environment       no JAX/XLA variables set"
    ]
    found = warnings(m)
    lines += [f"warning: {w}" for w in found] or ["ok: no problems found"]
    return "\n".join(lines)


def default_mesh_line(num_devices: int) -> str:
    """The mesh the default config (``MeshConfig()``) builds on ``num_devices`` devices."""
    from selfflow.config import MeshConfig
    from selfflow.errors import ConfigError
    from selfflow.sharding import mesh_shape

    try:
        sizes = mesh_shape(MeshConfig(), num_devices)
    except ConfigError as e:
        return f"none: {e}"
    return " x ".join(f"{axis}={size}" for axis, size in sizes.items())


def main() -> int:
    m = gather()
    print(report(m, default_mesh_line(len(m.devices))))
    return 1 if warnings(m) else 0


if __name__ == "__main__":
    sys.exit(main())
