"""Parameter trees as flat ``{"blocks.0.attn.qkv.kernel": array}`` dicts, and loading them into a model.

A leaf module (it imports no other selfflow module) shared by export, the official-checkpoint
converter and the evaluation classifiers' cache.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from selfflow.errors import ParamsError


def tensor_name(path) -> str:
    """A pytree path -> "blocks.0.attn.qkv.kernel"."""
    return ".".join(str(getattr(k, "key", k)) for k in path)


def flatten(params: dict) -> dict[str, np.ndarray]:
    """Nested params -> {"blocks.0.attn.qkv.kernel": array}."""
    return {tensor_name(path): np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def shape_problems(expected: dict[str, tuple], got: dict[str, tuple]) -> list[str]:
    """Every missing, unexpected and mis-shaped tensor of ``got`` against ``expected`` (name -> shape)."""
    problems = [f"missing {k} {tuple(s)}" for k, s in expected.items() if k not in got]
    problems += [f"unexpected {k} {tuple(got[k])}" for k in got if k not in expected]
    problems += [
        f"{k}: shape {tuple(got[k])}, expected {tuple(s)}"
        for k, s in expected.items()
        if k in got and tuple(got[k]) != tuple(s)
    ]
    return problems


def assign_params(model: nnx.Module, tensors: dict[str, np.ndarray], where: str) -> nnx.Module:
    """Puts flat ``tensors`` (names as :func:`tensor_name`) into ``model`` (also an abstract one from
    ``nnx.eval_shape``), after checking that every name and shape matches: missing, unexpected and
    mis-shaped tensors are listed together in one :class:`ParamsError` - never a partial load."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    pure = nnx.to_pure_dict(params)
    expected = {tensor_name(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(pure)[0]}
    problems = shape_problems(expected, {k: np.shape(v) for k, v in tensors.items()})
    if problems:
        raise ParamsError(f"{where} does not match the model: " + "; ".join(problems))
    nnx.replace_by_pure_dict(
        params,
        jax.tree_util.tree_map_with_path(
            lambda p, x: jax.numpy.asarray(tensors[tensor_name(p)], x.dtype), pure
        ),
    )
    return nnx.merge(graphdef, params, rest)


def torch_to_nnx(name: str, arr: np.ndarray) -> np.ndarray:
    """A PyTorch tensor in NNX's layout, by the NNX tensor ``name``: conv kernels (O, I, H, W) ->
    (H, W, I, O), linear weights (out, in) -> (in, out); anything else as it is."""
    if name.endswith(".kernel") and arr.ndim == 4:
        return np.transpose(arr, (2, 3, 1, 0))
    if name.endswith(".kernel") and arr.ndim == 2:
        return arr.T
    return arr


def nnx_to_torch(name: str, arr: np.ndarray) -> np.ndarray:
    """The inverse of :func:`torch_to_nnx` (also on an empty array, to map a shape)."""
    if name.endswith(".kernel") and arr.ndim == 4:
        return np.transpose(arr, (3, 2, 0, 1))
    if name.endswith(".kernel") and arr.ndim == 2:
        return arr.T
    return arr
