"""Action modality: continuous robot action chunks, optionally with proprioception.

Input: actions ``(B, T, A)`` and, when ``proprio_dim`` P > 0, proprioception ``(B, T, P)``.
Per time step the features are ``[action_0 … action_{A-1}, proprio_0 … proprio_{P-1}]``
(actions first), normalised per feature with the spec's stored ``mean`` / ``std`` (length A + P;
None = no normalisation), and ``chunk`` consecutive steps form one token, step-major:
``(B, T/chunk, chunk·(A + P))``. Normalising with fixed dataset statistics (not per batch) keeps
tokenize an exact, invertible function, so generated tokens decode to real actions.

Positions: t = ``time_offset`` + token_index · chunk · 100/hz ticks (the **start** time of the
token's first step, as for video and audio; at hz == fps a step lines up with a video frame),
h = w = 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modalities.base import TICKS_PER_SECOND, ModalitySpec, check_divisible, check_shape, grid_positions, xp

NAME = "action"
DEFAULT_MASK_RATIO = 0.5  # measured: experiments/sweeps/action_mask_ratio.md (0.5 <= 0.25 < 0.1 < 0)
DEFAULT_TIME_SHIFT = 1.0
KEYS = ("actions", "proprio")  # (B, T, A) and (B, T, P)
STATS_EXAMPLES = 256  # examples the normalisation statistics are fitted on


@dataclasses.dataclass(frozen=True)
class ActionSpec(ModalitySpec):
    """``steps`` steps of ``action_dim`` actions (+ ``proprio_dim`` proprio) at ``hz``."""

    name = NAME
    steps: int
    action_dim: int
    proprio_dim: int = 0
    chunk: int = 1
    hz: float = 10.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        check_divisible("steps", self.steps, "chunk", self.chunk)
        if self.hz <= 0:
            raise ValueError(f"hz={self.hz} must be positive")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together")
        for name in ("mean", "std"):
            stats = getattr(self, name)
            if stats is not None:
                object.__setattr__(self, name, tuple(float(v) for v in stats))  # hashable
                if len(getattr(self, name)) != self.feature_dim:
                    raise ValueError(
                        f"{name} has {len(stats)} values; expected feature_dim = "
                        f"action_dim + proprio_dim = {self.feature_dim}"
                    )

    @property
    def feature_dim(self) -> int:
        return self.action_dim + self.proprio_dim

    @property
    def step_ticks(self) -> float:
        """Duration of one step in ticks (10 at 10 Hz)."""
        return TICKS_PER_SECOND / self.hz

    @property
    def token_dim(self) -> int:
        return self.chunk * self.feature_dim

    @property
    def num_tokens(self) -> int:
        return self.steps // self.chunk

    def with_stats(self, actions, proprio=None) -> ActionSpec:
        """This spec with ``mean`` / ``std`` fitted on data (see :func:`fit_stats`)."""
        mean, std = fit_stats(actions, proprio)
        return dataclasses.replace(self, mean=mean, std=std)


Spec = ActionSpec


def fit_stats(actions, proprio=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-feature (mean, std) over every leading axis of ``(..., A)`` [+ ``(..., P)``] arrays.

    Features are ordered actions then proprio; std is floored at 1e-6 (constant features).
    """
    x = np.asarray(actions, np.float64)
    if proprio is not None:
        x = np.concatenate([x, np.asarray(proprio, np.float64)], axis=-1)
    x = x.reshape(-1, x.shape[-1])
    return tuple(x.mean(0).tolist()), tuple(np.maximum(x.std(0), 1e-6).tolist())


def normalize(features, spec: ActionSpec):
    """(..., A + P) raw features -> (features - mean) / std; identity without stats."""
    if spec.mean is None:
        return features
    m = xp(features)
    return (features - m.asarray(spec.mean, features.dtype)) / m.asarray(spec.std, features.dtype)


def denormalize(features, spec: ActionSpec):
    """Inverse of :func:`normalize`."""
    if spec.mean is None:
        return features
    m = xp(features)
    return features * m.asarray(spec.std, features.dtype) + m.asarray(spec.mean, features.dtype)


def tokenize(actions, spec: ActionSpec, proprio=None):
    """(B, T, A) [+ (B, T, P)] -> (B, T/chunk, chunk·(A + P)), normalised."""
    check_shape(
        "actions", actions.shape, (None, spec.steps, spec.action_dim), "(batch, spec.steps, spec.action_dim)"
    )
    if spec.proprio_dim == 0 and proprio is not None:
        raise ValueError("proprio was given but spec.proprio_dim = 0")
    if spec.proprio_dim:
        if proprio is None:
            raise ValueError(f"spec.proprio_dim = {spec.proprio_dim} but no proprio was given")
        check_shape(
            "proprio",
            proprio.shape,
            (actions.shape[0], spec.steps, spec.proprio_dim),
            "(batch, spec.steps, spec.proprio_dim)",
        )
        actions = xp(actions, proprio).concatenate([actions, proprio.astype(actions.dtype)], -1)
    x = normalize(actions, spec)
    return x.reshape(x.shape[0], spec.num_tokens, spec.token_dim)


def detokenize(tokens, spec: ActionSpec):
    """(B, N, chunk·(A + P)) -> (actions (B, T, A), proprio (B, T, P) or None), denormalised."""
    check_shape(
        "tokens",
        tokens.shape,
        (None, spec.num_tokens, spec.token_dim),
        "(batch, spec.num_tokens, spec.token_dim)",
    )
    x = denormalize(tokens.reshape(tokens.shape[0], spec.steps, spec.feature_dim), spec)
    a = spec.action_dim
    return x[..., :a], (x[..., a:] if spec.proprio_dim else None)


def positions(spec: ActionSpec, time_offset: float = 0.0) -> np.ndarray:
    """(N, 3) float32 (t, 0, 0), t = time_offset + index · chunk · 100/hz ticks."""
    times = time_offset + np.arange(spec.num_tokens) * spec.chunk * spec.step_ticks
    return grid_positions(times, 1, 1)


def spec_for(shapes: dict[str, tuple], cfg, examples) -> ActionSpec:
    """The run's spec: the sources' (T, A) actions and (T, P) proprio at ``data.fps``, normalised
    with statistics fitted on the first ``STATS_EXAMPLES`` examples (``examples(n)`` -> a dict of
    stacked arrays; stored with the run, so a loaded run never needs its data again)."""
    (steps, action_dim), proprio_dim = shapes["actions"], shapes["proprio"][1]
    sample = examples(STATS_EXAMPLES)
    spec = ActionSpec(steps=steps, action_dim=action_dim, proprio_dim=proprio_dim, hz=cfg.data.fps)
    return spec.with_stats(sample["actions"], sample["proprio"])


def tokenize_batch(raw: dict, spec: ActionSpec):
    """A batch dict with ``KEYS`` -> (B, N, token_dim) (actions and proprio, normalised)."""
    return tokenize(raw["actions"], spec, raw["proprio"])
