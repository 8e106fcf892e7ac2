"""Finding the files of a folder source, with classes from sub-folder names.

Shared by the image, video and audio folder sources. Rules: every non-hidden first-level
sub-folder of ``root`` is a class (id = its index in sorted order), searched recursively
(folder links followed once, names starting with "." skipped), files sorted by their path
relative to the class folder. When ``root`` has no sub-folders, the files directly in it form
one class named after ``root``. Files directly in ``root`` next to sub-folders, and a class
folder without files, are errors (dropping a class would shift every later class id).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from data_pipelines.base import SourceError


@dataclasses.dataclass(frozen=True)
class ClassFolders:
    root: str  # absolute
    files: tuple[str, ...]
    labels: np.ndarray  # int32 (len(files),)
    classes: tuple[str, ...]


def has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions


def walk_files(top: str, extensions: tuple[str, ...]) -> list[str]:
    """Files with one of ``extensions`` (lower case, any case on disk) under ``top``."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop, or the same directory linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if has_extension(f, extensions))
    return sorted(found, key=lambda p: os.path.relpath(p, top).split(os.sep))


def scan_class_folders(root, extensions: tuple[str, ...], what: str) -> ClassFolders:
    """The files of ``root`` by the rules above; ``what`` ("image", ...) names them in errors."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        problem = "does not exist" if not os.path.exists(root) else "is not a directory"
        raise SourceError(f"{what} root {root} {problem}")
    kinds = "/".join(extensions)
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    class_dirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    loose = [
        e
        for e in entries
        if e not in class_dirs and has_extension(e, extensions) and os.path.isfile(os.path.join(root, e))
    ]
    if class_dirs and loose:
        shown = ", ".join(os.path.join(root, e) for e in loose[:5])
        more = f" and {len(loose) - 5} more" if len(loose) > 5 else ""
        raise SourceError(
            f"{len(loose)} {what} file(s) directly under {root} are in no class folder: "
            f"{shown}{more}; move them into {root}/<class_name>/ (files directly under "
            f"root are only accepted, as one class, when root has no sub-folders)"
        )
    files, labels = [], []
    if class_dirs:
        per_class = [walk_files(os.path.join(root, name), extensions) for name in class_dirs]
        for label, found in enumerate(per_class):
            files += found
            labels += [label] * len(found)
        if not files:
            raise SourceError(
                f"no {what} files ({kinds}, any case) under {root} "
                f"(searched {len(class_dirs)} class folder(s))"
            )
        empty = [os.path.join(root, n) for n, found in zip(class_dirs, per_class) if not found]
        if empty:
            raise SourceError(
                f"class folder(s) with no {kinds} files: {', '.join(empty)} "
                "(every sub-folder of root is a class)"
            )
        classes = tuple(class_dirs)
    else:
        files = [os.path.join(root, e) for e in loose]
        if not files:
            raise SourceError(f"no {what} files ({kinds}, any case) under {root}")
        labels = [0] * len(files)
        classes = (os.path.basename(root),)
    return ClassFolders(root, tuple(files), np.asarray(labels, np.int32), classes)
