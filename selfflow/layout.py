"""Static token layouts and the mixed-training schedule.

A layout is an ordered tuple of segments ``(modality, num_tokens, role)``. Role ``generate``
tokens are noised and carry the loss; ``condition`` tokens stay clean (τ = 0), carry no loss and
are never in the dual-timestep mask (e.g. the observed first frame of a robotics rollout, or the
video when generating its sound). A layout is hashable and static: each one compiles once.

Examples: ``image [image 64]``; ``audio-video [video 128, audio 40]``;
``robotics [image 64 (condition), video 128, action 16]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

GENERATE, CONDITION = "generate", "condition"
# Index of a token's timestep in the factored form (values [t, s, 0] per sample).
T_INDEX, S_INDEX, CLEAN_INDEX = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Segment:
    modality: str
    num_tokens: int
    role: Literal["generate", "condition"] = GENERATE

    def __post_init__(self):
        if self.role not in (GENERATE, CONDITION):
            raise ValueError(f"segment role={self.role!r}: expected 'generate' or 'condition'")
        if self.num_tokens < 1:
            raise ValueError(f"segment {self.modality!r}: num_tokens={self.num_tokens}, expected >= 1")


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    segments: tuple[Segment, ...]

    def __post_init__(self):
        if not self.segments:
            raise ValueError(f"layout {self.name!r} has no segments")
        if not any(s.role == GENERATE for s in self.segments):
            raise ValueError(f"layout {self.name!r} has no 'generate' segment: nothing to learn")

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.segments)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(s.modality for s in self.segments)

    def slices(self) -> list[slice]:
        """Token range of each segment in the concatenated sequence."""
        bounds = np.cumsum([0] + [s.num_tokens for s in self.segments])
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def base_index(self) -> np.ndarray:
        """(N,) int32: T_INDEX on generate tokens, CLEAN_INDEX on condition tokens (τ = 0)."""
        return np.where(self.generate_mask(), T_INDEX, CLEAN_INDEX).astype(np.int32)

    def generate_mask(self) -> np.ndarray:
        """(N,) bool: True on tokens that are noised and carry the loss."""
        return np.concatenate([np.full(s.num_tokens, s.role == GENERATE) for s in self.segments])


class FactoredTimesteps(NamedTuple):
    """Per-token timesteps given as K distinct values per sample and each token's choice.

    values (B, K) float32; index (B, N) int32 in [0, K). Equivalent to the per-token array
    ``take_along_axis(values, index)`` (B, N) up to float rounding, but the conditioning and the
    adaLN modulations are computed K times per sample instead of N times.
    """

    values: jax.Array
    index: jax.Array

    def dense(self) -> jax.Array:
        """The per-token (B, N) timesteps this stands for."""
        return jnp.take_along_axis(self.values, self.index, axis=1)

    @classmethod
    def per_sample(cls, tau: jax.Array, num_tokens: int) -> FactoredTimesteps:
        """One timestep per sample: values (B, 1), every token uses it."""
        return cls(tau[:, None], jnp.zeros((tau.shape[0], num_tokens), jnp.int32))


def single(modality: str, num_tokens: int) -> Layout:
    return Layout(modality, (Segment(modality, num_tokens),))


def layout_schedule(seed: int, step: int, weights: Sequence[float]) -> int:
    """Index of the layout trained at ``step``: a pure function of (seed, step).

    Resuming at any step therefore reproduces the exact sequence of layouts.
    """
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"layout weights {list(weights)}: expected non-negative with a positive sum")
    u = np.random.default_rng([seed, 0x5F1A, step]).random()
    return int(min(np.searchsorted(np.cumsum(w) / w.sum(), u, side="right"), len(w) - 1))
