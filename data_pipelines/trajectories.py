"""Robot trajectories from episode files: fixed-length windows of video, proprioception, actions.

Why: robotics layouts (``image:condition, video, action``) train on windows of recorded
episodes (e.g. :mod:`data_pipelines.pusht_expert`). One episode per file keeps recording, copying
and inspecting simple; fixed-length windows give the fixed shapes a batch needs.

Episode file (one per episode, written by :func:`write_episode`), ``.npz`` (uncompressed,
``np.savez``) or ``.h5`` / ``.hdf5`` (h5py, one dataset per array at the root):

  frames   uint8 (L, H, W, 3)   RGB frame t
  proprio  float (L, P)         proprioception at step t
  actions  float (L, A)         action taken at step t
  success  optional scalar bool/int (not read by the source)
  label    optional scalar int  (the examples' ``label``; 0 when absent)

Other arrays may be present and are ignored.

``TrajectorySource(root, window, image_size=None, stride=1, seed=0)``: every ``.npz`` / ``.h5`` /
``.hdf5`` file under ``root`` (recursively, sorted by path; names starting with "." are ignored)
is an episode. Example i is the window
``[start, start + window)`` of one episode, windows starting every ``stride`` steps
(starts 0, stride, ..., so an episode of length L gives floor((L - window) / stride) + 1 windows,
none when L < window), in file order; a precomputed table maps i -> (episode, start). Schema:

  video    float32 (window, S, S, 3) in [-1, 1]  frames / 127.5 - 1; resized to S = image_size with
           Pillow bilinear when image_size is given and differs from (H, W) (else S x S = H x W)
  proprio  float32 (window, P)
  actions  float32 (window, A)
  label    int32 scalar (the episode's ``label``, or 0)

``seed`` is accepted for the common source signature; examples do not depend on it (the window
table is a pure function of the files, ``window`` and ``stride``).

What the constructor reads: for each file only the array *headers* - the zip directory and the
.npy header of each member of an npz (a few hundred bytes, found by offset; no array data), or
the dataset shapes / dtypes of an HDF5 file (metadata only). From these it checks each episode
(keys present, frames uint8 (L, H, W, 3), proprio / actions 2-D numeric, equal lengths) and that
all well-formed episodes agree on P, A and (H, W) - else :class:`SourceError` naming the first
file that differs, with both values. Episodes shorter than ``window`` contribute no windows
(logged; ``self.skipped_short`` lists (path, length)). A root with no usable episode (none, or
all too short or bad) is a :class:`SourceError`.

What ``source[i]`` reads: only rows [start, start + window) of frames / proprio / actions (for an
uncompressed npz member a seek to its data offset; an HDF5 slice), plus ``label``. A compressed npz
member (``np.savez_compressed``) cannot be sliced, so it is decompressed whole on every read:
correct but slow - store episodes with ``np.savez`` or ``.h5``.

Bad input raises :class:`BadSampleError` (path, reason) at read time, so the ``on_bad_sample``
policy (:mod:`data_pipelines.guard`) decides: a missing key, frames not uint8 (L, H, W, 3),
proprio / actions not 2-D numeric, frame / proprio / action lengths that disagree, a truncated or
corrupt file (``zipfile.BadZipFile``, an ``OSError`` from h5py), a bad ``label``, NaN or inf in
the window's proprio or actions. Problems visible in the headers are found by the constructor;
such an episode gets exactly *one* table entry (start 0), whose read raises the error - one bad
file is then one bad example (the "skip" policy moves to the next index), not one per window,
and ``self.bad_episodes`` lists (path, reason). NaN is found per window (only the rows read).
``where(i)`` is ``"path[start:start+window]"`` (``"path"`` for a bad episode's entry).

Speed (2-core CPU, the 20 episodes of ``python -m data_pipelines.pusht_expert --out /tmp/pusht
--episodes 20``, 3130 windows of 16 steps, 96 x 96 frames, random order, one thread): construction
11 ms (npz) / 16 ms (h5); ~1600 windows/s from npz and ~670 from h5 at 96 x 96; ~440 / ~310 with
image_size=64, where the Pillow resize dominates. The source pickles (Grain worker processes).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from data_pipelines.base import BadSampleError, Field, SourceError, check_index, to_unit_range

log = logging.getLogger(__name__)

SUFFIXES = (".npz", ".h5", ".hdf5")
KEYS = ("frames", "proprio", "actions")


# ------------------------------------------------------------------------------------ writing


def write_episode(path, frames, proprio, actions, success=None, label=None, extra=None) -> Path:
    """Writes one episode to ``path``: ``.npz`` (uncompressed ``np.savez``) or ``.h5`` / ``.hdf5``.

    ``frames`` uint8 (L, H, W, 3); ``proprio`` (L, P) and ``actions`` (L, A) are stored as
    float32; ``success`` (bool) and ``label`` (int) are stored as scalars when given; ``extra``
    maps further names to arrays stored as they are. The file is written under a temporary name
    and renamed, so an interrupted write leaves no truncated episode. Raises ValueError for
    inputs that would make a bad episode.
    """
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in SUFFIXES:
        raise ValueError(f"{path}: episode files end in {', '.join(SUFFIXES)}")
    frames = np.asarray(frames)
    proprio, actions = np.asarray(proprio), np.asarray(actions)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (L, H, W, 3), got {frames.dtype} {frames.shape}")
    for name, value in (("proprio", proprio), ("actions", actions)):
        if value.ndim != 2 or value.dtype.kind not in "fiu":
            raise ValueError(f"{name} must be a numeric (L, D) array, got {value.dtype} {value.shape}")
        if len(value) != len(frames):
            raise ValueError(f"{name} has {len(value)} steps but frames has {len(frames)}")
        if not np.isfinite(value).all():
            raise ValueError(f"{name} has non-finite values")
    arrays = {"frames": frames, "proprio": proprio.astype(np.float32), "actions": actions.astype(np.float32)}
    if success is not None:
        arrays["success"] = np.bool_(bool(success))
    if label is not None:
        if isinstance(label, bool) or int(label) != label:
            raise ValueError(f"label must be an integer, got {label!r}")
        arrays["label"] = np.int64(label)
    for name, value in (extra or {}).items():
        if name in arrays:
            raise ValueError(f"extra array {name!r} clashes with an episode array")
        arrays[name] = np.asarray(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                for name, value in arrays.items():
                    f.create_dataset(name, data=value)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------ headers


@dataclasses.dataclass(frozen=True)
class _Array:
    """Header of one stored array; ``offset`` is the data's byte offset in the file for an
    uncompressed, C-ordered npz member (None: read the member whole, or h5py)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int | None = None


@dataclasses.dataclass
class _Episode:
    path: Path
    fmt: str  # "npz" | "h5"
    length: int = 0
    arrays: dict | None = None  # name -> _Array
    bad: str | None = None  # reason the episode cannot be read


def _npz_headers(path: Path) -> dict[str, _Array]:
    out = {}
    with open(path, "rb") as raw, zipfile.ZipFile(raw) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    shape, fortran, dtype = np.lib.format._read_array_header(f, version)
                header_len = f.tell()
            offset = None
            if info.compress_type == zipfile.ZIP_STORED and not fortran and not dtype.hasobject:
                raw.seek(info.header_offset)
                local = raw.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise zipfile.BadZipFile(f"bad local header for member {info.filename!r}")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                offset = info.header_offset + 30 + name_len + extra_len + header_len
            out[info.filename[:-4]] = _Array(tuple(int(s) for s in shape), np.dtype(dtype), offset)
    return out


def _h5_headers(path: Path) -> dict[str, _Array]:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for name, item in f.items():
            if isinstance(item, h5py.Dataset):
                out[name] = _Array(tuple(int(s) for s in item.shape), np.dtype(item.dtype))
    return out


def _check_headers(arrays: dict[str, _Array]) -> tuple[int, str | None]:
    """(length, reason the episode is bad or None) from the headers alone."""
    missing = [k for k in KEYS if k not in arrays]
    lengths = [arrays[k].shape[0] for k in KEYS if k in arrays and arrays[k].shape]
    length = min(lengths) if lengths else 0
    if missing:
        return length, f"missing key(s) {missing} (has {sorted(arrays)})"
    frames = arrays["frames"]
    if frames.dtype != np.uint8 or len(frames.shape) != 4 or frames.shape[-1] != 3:
        return length, f"frames must be uint8 (L, H, W, 3), got {frames.dtype} {frames.shape}"
    for key in ("proprio", "actions"):
        a = arrays[key]
        if len(a.shape) != 2 or a.dtype.kind not in "fiu":
            return length, f"{key} must be a numeric (L, D) array, got {a.dtype} {a.shape}"
    shapes = {k: arrays[k].shape[0] for k in KEYS}
    if len(set(shapes.values())) != 1:
        return length, f"lengths disagree: {shapes}"
    if "label" in arrays:
        label = arrays["label"]
        if label.shape not in ((), (1,)) or label.dtype.kind not in "iub":
            return length, f"label must be an integer scalar, got {label.dtype} {label.shape}"
    return length, None


# ------------------------------------------------------------------------------------ source


def resize_frames(frames: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 (T, H, W, 3) -> float32 (T, size, size, 3) in [-1, 1] (bilinear; None keeps H, W):
    recorded frames, and a live observation given to a policy, go through this one function."""
    if size is not None and frames.shape[1:3] != (size, size):
        from PIL import Image

        frames = np.stack(
            [np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames]
        )
    return to_unit_range(frames)


class TrajectorySource:
    """Grain random-access source of episode windows (see module docstring)."""

    def __init__(self, root, window: int, image_size: int | None = None, stride: int = 1, seed: int = 0):
        for name, value, low in (("window", window, 1), ("stride", stride, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise SourceError(f"{name} must be an integer >= {low}, got {value!r}")
        if image_size is not None and (
            isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1
        ):
            raise SourceError(f"image_size must be None or an integer >= 1, got {image_size!r}")
        self.root = Path(root)
        self.window, self.stride, self.seed = int(window), int(stride), int(seed)
        self.image_size = None if image_size is None else int(image_size)
        if not self.root.is_dir():
            raise SourceError(f"trajectory root {self.root} is not a directory")
        files = sorted(
            p
            for p in self.root.rglob("*")
            if p.suffix.lower() in SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise SourceError(f"no episode files ({', '.join(SUFFIXES)}) under {self.root}")
        self.episodes = [self._read_headers(p) for p in files]
        self._check_consistent()

        self.skipped_short: list[tuple[Path, int]] = []
        self.bad_episodes: list[tuple[Path, str]] = []
        table = []
        for e, ep in enumerate(self.episodes):
            if ep.bad is not None:
                self.bad_episodes.append((ep.path, ep.bad))
                table.append((e, 0))
            elif ep.length < self.window:
                self.skipped_short.append((ep.path, ep.length))
            else:
                starts = range(0, ep.length - self.window + 1, self.stride)
                table.extend((e, s) for s in starts)
        usable = len(self.episodes) - len(self.bad_episodes) - len(self.skipped_short)
        if self.skipped_short:
            log.warning(
                "%s: %d of %d episodes are shorter than window=%d and contribute no windows "
                "(first: %s, length %d)",
                self.root,
                len(self.skipped_short),
                len(self.episodes),
                self.window,
                *self.skipped_short[0],
            )
        if self.bad_episodes:
            log.warning(
                "%s: %d bad episode file(s), one failing example each (first: %s: %s)",
                self.root,
                len(self.bad_episodes),
                *self.bad_episodes[0],
            )
        if usable == 0:
            detail = []
            if self.skipped_short:
                detail.append(
                    f"{len(self.skipped_short)} shorter than window={self.window} "
                    f"(longest {max(n for _, n in self.skipped_short)})"
                )
            if self.bad_episodes:
                detail.append(
                    f"{len(self.bad_episodes)} bad (first {self.bad_episodes[0][0]}: "
                    f"{self.bad_episodes[0][1]})"
                )
            raise SourceError(
                f"no usable episode under {self.root}: {len(self.episodes)} files, " + "; ".join(detail)
            )
        self.table = np.asarray(table, np.int64).reshape(-1, 2)  # (num_examples, [episode, start])

        ref = next(ep for ep in self.episodes if ep.bad is None)
        _, height, width, _ = ref.arrays["frames"].shape
        self.frame_size = (height, width)
        size = (self.image_size, self.image_size) if self.image_size is not None else (height, width)
        self.schema = {
            "image": Field((*size, 3), "float32"),  # the window's first frame: a policy's observation
            "video": Field((self.window, *size, 3), "float32"),
            "proprio": Field((self.window, ref.arrays["proprio"].shape[1]), "float32"),
            "actions": Field((self.window, ref.arrays["actions"].shape[1]), "float32"),
            "label": Field((), "int32"),
        }

    def _read_headers(self, path: Path) -> _Episode:
        fmt = "npz" if path.suffix.lower() == ".npz" else "h5"
        ep = _Episode(path, fmt)
        try:
            ep.arrays = _npz_headers(path) if fmt == "npz" else _h5_headers(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as e:
            ep.bad = f"cannot read the file ({type(e).__name__}: {e}); truncated or corrupt?"
            return ep
        ep.length, ep.bad = _check_headers(ep.arrays)
        return ep

    def _check_consistent(self):
        ref = None
        for ep in self.episodes:
            if ep.bad is not None:
                continue
            dims = {
                "P (proprio dim)": ep.arrays["proprio"].shape[1],
                "A (action dim)": ep.arrays["actions"].shape[1],
                "frame size (H, W)": ep.arrays["frames"].shape[1:3],
            }
            if ref is None:
                ref = (ep.path, dims)
                continue
            for name, value in dims.items():
                if value != ref[1][name]:
                    raise SourceError(
                        f"{ep.path}: {name} is {value}, but {ref[0]} has {ref[1][name]}; "
                        "all episodes under one root must agree"
                    )

    # ------------------------------------------------------------------------------- access

    def __len__(self) -> int:
        return len(self.table)

    def where(self, index: int) -> str:
        e, start = self.table[check_index(index, len(self.table), "TrajectorySource")]
        ep = self.episodes[e]
        return str(ep.path) if ep.bad is not None else f"{ep.path}[{start}:{start + self.window}]"

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = check_index(index, len(self.table), "TrajectorySource")
        e, start = (int(v) for v in self.table[index])
        ep = self.episodes[e]
        where = self.where(index)
        if ep.bad is not None:
            raise BadSampleError(where, ep.bad)
        try:
            rows = self._read_npz(ep, start) if ep.fmt == "npz" else self._read_h5(ep, start)
        except BadSampleError as e:
            raise BadSampleError(where, e.reason) from None
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
            raise BadSampleError(
                where, f"cannot read the file ({type(e).__name__}: {e}); truncated or corrupt?"
            ) from None
        frames, proprio, actions, label = rows
        for name, value in (("proprio", proprio), ("actions", actions)):
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                bad = int((~np.isfinite(value)).sum())
                raise BadSampleError(where, f"{name!r} has {bad} non-finite values (NaN or inf)")
        video = resize_frames(frames, self.image_size)
        return {
            "image": video[0],
            "video": video,
            "proprio": proprio.astype(np.float32),
            "actions": actions.astype(np.float32),
            "label": np.int32(label),
        }

    def _read_npz(self, ep: _Episode, start: int):
        stop = start + self.window
        out = []
        with open(ep.path, "rb") as raw:
            zf = None
            try:
                for key in KEYS:
                    arr = ep.arrays[key]
                    if arr.offset is not None:
                        row = math.prod(arr.shape[1:]) * arr.dtype.itemsize
                        raw.seek(arr.offset + start * row)
                        data = raw.read(row * self.window)
                        if len(data) != row * self.window:
                            raise BadSampleError(
                                str(ep.path),
                                f"truncated: {key!r} rows {start}:{stop} end past the end of the file",
                            )
                        value = np.frombuffer(data, arr.dtype).reshape(self.window, *arr.shape[1:])
                    else:
                        zf = zf or zipfile.ZipFile(raw)
                        with zf.open(key + ".npy") as f:
                            value = np.lib.format.read_array(f, allow_pickle=False)[start:stop]
                    out.append(value)
                label = 0
                if "label" in ep.arrays:
                    zf = zf or zipfile.ZipFile(raw)
                    with zf.open("label.npy") as f:
                        label = np.lib.format.read_array(f, allow_pickle=False)
                    label = int(np.asarray(label).reshape(()))
            finally:
                if zf is not None:
                    zf.close()
        return (*out, label)

    def _read_h5(self, ep: _Episode, start: int):
        import h5py

        stop = start + self.window
        with h5py.File(ep.path, "r") as f:
            out = [f[key][start:stop] for key in KEYS]
            label = int(np.asarray(f["label"][()]).reshape(())) if "label" in f else 0
        for key, value in zip(KEYS, out):
            if len(value) != self.window:
                raise BadSampleError(str(ep.path), f"{key!r} has {len(value)} rows at {start}:{stop}")
        return (*out, label)

    def __repr__(self) -> str:
        return (
            f"TrajectorySource(root={str(self.root)!r}, window={self.window}, "
            f"image_size={self.image_size}, stride={self.stride}, seed={self.seed}; "
            f"{len(self.episodes)} episodes, {len(self)} windows)"
        )
