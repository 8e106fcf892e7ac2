"""What every modality module shares: the spec base class, the module protocol, the time unit.

A modality module turns raw arrays into tokens ``(B, N, token_dim)`` and back, and says where
each token sits in (time, height, width) so one transformer can attend over image, video,
audio and action tokens in one sequence (multi-axis RoPE reads all three axes; the fixed 2D
sin-cos of the SiT layout reads only h, w).

Time axis: ONE unit for every modality, ``TIME_UNIT_MS`` = 10 ms per tick (100 ticks per
second), so a sound and the video frame it belongs to get nearby t. A token's t is the **start**
time of the first frame / mel frame / action step it covers (not its centre), in every modality,
plus the caller's ``time_offset`` (ticks), which places a segment later in time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax.numpy as jnp
import numpy as np

TIME_UNIT_MS = 10
TICKS_PER_SECOND = 1000.0 / TIME_UNIT_MS  # 100 ticks = 1 s


def seconds_to_ticks(seconds: float) -> float:
    return seconds * TICKS_PER_SECOND


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """Base of the per-modality specs: frozen (hashable, so a spec can be a static jit argument).

    Subclasses are frozen dataclasses that add their geometry fields and define ``token_dim``
    (features per token) and ``num_tokens`` (tokens per sample).
    """

    name: ClassVar[str] = ""

    @property
    def token_dim(self) -> int:
        raise NotImplementedError

    @property
    def num_tokens(self) -> int:
        raise NotImplementedError


@runtime_checkable
class Modality(Protocol):
    """The interface of a modality *module* (``isinstance(modalities.video, Modality)`` holds).

    ``spec_for(shapes, cfg, examples)``: the run's spec, from ``shapes`` ({key: per-example shape}
    for each of ``KEYS``, as the sources yield them), the run's Config and ``examples(n)`` (a dict of
    the first n examples' arrays stacked, for specs with fitted statistics). The trainer stores the
    spec with the run. ``tokenize_batch(raw, spec)``: a batch dict holding ``KEYS`` -> tokens.
    """

    NAME: str
    KEYS: tuple
    DEFAULT_MASK_RATIO: float
    DEFAULT_TIME_SHIFT: float
    Spec: type

    def spec_for(self, shapes: dict, cfg: Any, examples: Any) -> Any: ...
    def tokenize_batch(self, raw: dict, spec: Any) -> Any: ...  # -> (B, N, token_dim)
    def tokenize(self, x: Any, spec: Any) -> Any: ...  # -> (B, N, token_dim)
    def detokenize(self, tokens: Any, spec: Any) -> Any: ...  # exact inverse of tokenize
    def positions(self, spec: Any, time_offset: float = 0.0) -> np.ndarray: ...  # (N, 3) f32


def xp(*arrays):
    """numpy for all-numpy inputs (keeps float64, no device copy), else jax.numpy (jit-able)."""
    return np if all(isinstance(a, np.ndarray) for a in arrays) else jnp


def check_divisible(what: str, size: int, by_name: str, by: int) -> None:
    if by <= 0 or size % by:
        raise ValueError(f"{what}={size} is not divisible by {by_name}={by}")


def check_shape(name: str, shape: tuple, expected: tuple, meaning: str) -> None:
    """``expected`` uses None for 'any' (the batch); the message names the expected shape."""
    ok = len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))
    if not ok:
        want = "(" + ", ".join("B" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} has shape {tuple(shape)}; expected {want} = {meaning}")


def grid_positions(times, rows: int, cols: int) -> np.ndarray:
    """(len(times)·rows·cols, 3) float32 (t, h, w), time slowest then row then column."""
    tt, hh, ww = np.meshgrid(np.asarray(times, np.float64), np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([tt.ravel(), hh.ravel(), ww.ravel()], axis=-1).astype(np.float32)
