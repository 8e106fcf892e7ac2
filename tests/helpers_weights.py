"""Random weights for NNX modules without their eager initialisers (which compile one program per
shape): what the autoencoder tests load, save and compare."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def random_weights(build: Callable[[], nnx.Module], seed: int = 0, gain: str = "scale") -> nnx.Module:
    """``build()``'s module with kernels ~ N(0, 1/fan_in), batch-norm variances in [0.5, 1.5],
    ``gain`` leaves (norm scales) ~ 1 + N(0, 0.1) and every other leaf ~ N(0, 0.1)."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(nnx.eval_shape(build))

    def draw(path, x):
        leaf = str(getattr(path[-1], "key", path[-1]))
        if leaf == "kernel":
            return rng.normal(0, np.prod(x.shape[:-1]) ** -0.5, x.shape).astype(np.float32)
        if leaf == "running_var":
            return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
        return (float(leaf == gain) + rng.normal(0, 0.1, x.shape)).astype(np.float32)

    pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    return nnx.merge(graphdef, state)
