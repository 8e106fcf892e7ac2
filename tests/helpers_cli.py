"""Shared by the CLI tests: run ``selfflow`` in-process, and a folder of class-folder PNGs."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from PIL import Image

from selfflow import cli


def run_cli(*argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``selfflow ARGV`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def write_pngs(root, per_class: int, classes=("a", "b"), size: int = 16):
    """``root/<class>/<i>.png``: random RGB images, ``per_class`` in each class folder."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir()
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root
