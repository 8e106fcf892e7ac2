"""What every data source shares: its example schema, and how it reports a bad sample.

A *source* is a Grain random-access data source: ``len(source)`` and ``source[i]`` -> one
example, a dict of numpy arrays whose keys, shapes and dtypes are fixed for the source
(``source.schema``). ``source.where(i)`` names what example ``i`` is read from (a file path,
or ``"<kind>[i]"`` for generated data), so a failure can name it.

Canonical example keys (what :mod:`selfflow.tasks` tokenises):

  image    float32 (H, W, C) in [-1, 1]
  video    float32 (T, H, W, 3) in [-1, 1]
  audio    float32 (frames, n_mels) normalised log-mel (``modalities.audio.waveform_to_logmel``)
  actions  float32 (T_a, A);   proprio float32 (T_a, P)
  label    int32 scalar (class id; 0 where the data has none)

A file that cannot give a valid example (truncated or corrupt, undecodable, wrong mode or size,
NaN, wrong shape) raises :class:`BadSampleError` naming the file and the reason; the pipeline's
``on_bad_sample`` policy (``data_pipelines.guard``) decides whether that stops training or the
example is replaced and counted.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np


class BadSampleError(ValueError):
    """One example cannot be used: ``where`` (file path or source[index]) and ``reason``."""

    def __init__(self, where: str, reason: str):
        self.where, self.reason = str(where), reason
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # survives the trip back from a worker process
        return BadSampleError, (self.where, self.reason)


class SourceError(ValueError):
    """A source cannot be built at all (missing directory, no files, bad option)."""


@dataclasses.dataclass(frozen=True)
class Field:
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict) -> Field:
        return cls(tuple(int(s) for s in d["shape"]), str(d["dtype"]))


Schema = dict[str, Field]


class Source(Protocol):
    schema: Schema

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...

    def where(self, index: int) -> str: ...


def check_example(where: str, example: dict, schema: Schema) -> dict[str, np.ndarray]:
    """Returns ``example`` as numpy arrays cast to the schema's dtypes, or raises
    :class:`BadSampleError` for a missing key, a wrong shape, or a non-finite float."""
    out = {}
    for key, field in schema.items():
        if key not in example:
            raise BadSampleError(where, f"missing key {key!r} (expected {field.shape} {field.dtype})")
        value = np.asarray(example[key])
        if value.shape != field.shape:
            raise BadSampleError(where, f"{key!r} has shape {value.shape}, expected {field.shape}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = int((~np.isfinite(value)).sum())
            raise BadSampleError(where, f"{key!r} has {bad} non-finite values (NaN or inf)")
        out[key] = value.astype(field.dtype, copy=False)
    return out


def check_index(index, length: int, name: str) -> int:
    index = int(index)
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for {name} of length {length}")
    return index


def to_unit_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return pixels.astype(np.float32) / 127.5 - 1.0
