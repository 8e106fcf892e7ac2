#!/usr/bin/env bash
# Writes requirements/py<major.minor>.lock: the exact versions installed in the environment of
# PYTHON (default .venv/bin/python), i.e. the set the test suite ran on. pip freeze, not a resolver:
# it records what was tested, including this machine's CPU build of torch (pip takes it from
# /opt/wheels), where a resolver against PyPI (uv pip compile, pip-compile) would pin the CUDA build
# and its nvidia-* packages, several GB that the CPU tests never use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
version="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
out="requirements/py${version}.lock"
{
  echo "# The set the fast suite passed on, Python $("$PY" -c 'import platform; print(platform.python_version())'), $(date -u +%Y-%m-%d)."
  echo "# Written by requirements/freeze.sh (make lock); install: pip install -r $out && pip install --no-deps -e ."
  "$PY" -m pip freeze --exclude-editable --all | grep -v -E '^(pip|setuptools|wheel)==' | LC_ALL=C sort -f
} > "$out"
echo "wrote $out ($(grep -vc '^#' "$out") packages)"
