"""The frozen-encoder record every encoder factory returns (a leaf module: the registry and the
encoders import it, so neither imports the other to name it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
    """A frozen encoder: ``apply(params, images) -> (B, h, w, D)`` with images (B, H, W, C) float32
    in [-1, 1]; ``params`` its weights (any pytree of arrays). ``feature_dim`` (D) and ``channels``
    (the C it accepts) when known without running it, else None (then checked on the first trace)."""

    name: str
    apply: Callable[[Any, jax.Array], jax.Array]
    params: Any
    feature_dim: int | None = None
    channels: tuple[int, ...] | None = None

    @property
    def num_params(self) -> int:
        return sum(int(x.size) for x in jax.tree.leaves(self.params))
