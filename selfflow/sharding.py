"""Device meshes, logical axis names on every parameter, and placing state and batches on a mesh.

The mesh has three named axes: ``data`` (batch split, parameters replicated), ``fsdp`` (batch
split *and* parameters split along their ``embed`` dimension) and ``tensor`` (attention heads,
MLP and adaLN widths split). ``mesh.data = -1`` takes the devices the other axes leave.

Every parameter carries logical axis names from where it is made (``selfflow.layers.named``:
``nnx.with_partitioning`` metadata, e.g. an attention ``qkv`` kernel is ("embed", "heads"));
:func:`param_axes` reads them off a model. ``mesh.rules`` maps logical names to mesh axes over
:data:`DEFAULT_RULES` (``"embed=fsdp"``, ``"batch=data+fsdp"``, ``"vocab="`` = replicated). A
dimension that the mapped mesh axes do not divide stays replicated (e.g. a 12-value token
projection). The AdamW moments and the EMA teacher take the sharding of the parameter they belong
to; the batch is split over the ``batch`` rule's axes along its first axis, and so are the
activations that :func:`constrain_batch` pins inside a step run under :func:`use_mesh`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from selfflow.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
# adaLN widths stay whole on the tensor axis: with adaln=tensor together with fsdp, jax 0.10.2's
# partitioner on CPU returned forwards off by ~1e-2 (measured on a 2x2x2 mesh; every other
# combination agreed to 1e-7), so by default they are split by fsdp (their embed dim) only.
DEFAULT_RULES = ("batch=data+fsdp", "embed=fsdp", "heads=tensor", "mlp=tensor")

# The parsed rules of the innermost ``use_mesh`` (None outside one: DEFAULT_RULES).
_ACTIVE_RULES: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "selfflow_sharding_rules", default=None
)


# ---------------------------------------------------------------------------- mesh


def mesh_shape(mesh_cfg, num_devices: int) -> dict[str, int]:
    """Axis sizes with the one ``-1`` filled in (it takes all the devices the others leave).
    Without ``-1`` the mesh may use fewer devices than there are (the first ones), but its size
    must divide the device count; anything else is a ConfigError."""
    sizes = {a: getattr(mesh_cfg, a) for a in MESH_AXES}
    auto = [a for a, s in sizes.items() if s == -1]
    bad = [f"mesh.{a}={s}" for a, s in sizes.items() if s == 0 or s < -1]
    if bad or len(auto) > 1:
        raise ConfigError(
            f"{', '.join(bad) or ', '.join(f'mesh.{a}=-1' for a in auto)}: each mesh axis "
            "must be a positive size, and at most one may be -1 (the rest of the devices)"
        )
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if num_devices % fixed:
        raise ConfigError(
            f"mesh {_describe(sizes)} needs {fixed} devices, which does not divide the "
            f"{num_devices} available"
        )
    if auto:
        sizes[auto[0]] = num_devices // fixed
    return sizes


def _describe(sizes: dict) -> str:
    return " x ".join(f"{a}={s}" for a, s in sizes.items())


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_cfg, len(devices))
    used = devices[: math.prod(sizes.values())]
    return Mesh(np.array(used).reshape([sizes[a] for a in MESH_AXES]), MESH_AXES)


# ---------------------------------------------------------------------------- rules


def parse_rules(rules=()) -> dict[str, tuple[str, ...]]:
    """``("embed=fsdp", "batch=data+fsdp", "vocab=")`` over the defaults -> {logical: mesh axes}."""
    out = {}
    for text in (*DEFAULT_RULES, *rules):
        name, sep, axes = text.partition("=")
        mesh_axes = tuple(a for a in axes.split("+") if a)
        unknown = [a for a in mesh_axes if a not in MESH_AXES]
        if not sep or not name or unknown:
            raise ConfigError(
                f"mesh.rules entry {text!r}: expected 'logical=axis[+axis]' with axes in "
                f"{', '.join(MESH_AXES)} (or 'logical=' for replicated)"
            )
        out[name] = mesh_axes
    return out


def param_path(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_axes(model) -> dict:
    """Logical axis names of every parameter of ``model`` (a Module, abstract or not), read from
    the ``out_sharding`` metadata it was created with (``selfflow.layers.named``): a pure dict
    shaped like ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` with a tuple of names (one per
    dimension, None = never split) at each leaf. A parameter without names is a ValueError that
    names its path."""
    params = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(params):
        names = var.get_metadata().get("out_sharding")
        where = "/".join(map(str, path))
        if names is None:
            raise ValueError(
                f"parameter {where!r} has no logical axis names: create it with "
                "selfflow.layers.named(init, names) (nnx.with_partitioning)"
            )
        names = tuple(names)
        if len(names) != len(var.shape) or not all(n is None or isinstance(n, str) for n in names):
            raise ValueError(
                f"parameter {where!r} of shape {tuple(var.shape)} has logical axis names "
                f"{names!r}: expected one name (or None) per dimension"
            )
    return nnx.to_pure_dict(params, lambda var: tuple(var.get_metadata()["out_sharding"]))


def _axes_by_path(axes) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))[0]
    return {param_path(p): names for p, names in leaves}


def spec_for(shape, logical, rules: dict, mesh: Mesh) -> P:
    """PartitionSpec of an array with these logical axes; dims the mesh axes do not divide stay whole."""
    parts, used = [], set()
    for dim, name in zip(shape, logical):
        axes = tuple(a for a in rules.get(name, ()) if a not in used and mesh.shape[a] > 1)
        if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            parts.append(axes[0] if len(axes) == 1 else axes)
        else:
            parts.append(None)
    return P(*parts)


def param_shardings(params, mesh: Mesh, rules: dict, axes):
    """NamedSharding for every leaf of a params pytree (pure dict of arrays or shape structs);
    ``axes`` is :func:`param_axes` of the model (the same tree, logical names at the leaves)."""
    by_path = _axes_by_path(axes)

    def one(path, x):
        where = param_path(path)
        if where not in by_path:
            raise ValueError(
                f"parameter {where!r} has no logical axis names in the axes tree "
                "(build it with sharding.param_axes(model) of the same model)"
            )
        return NamedSharding(mesh, spec_for(x.shape, by_path[where], rules, mesh))

    return jax.tree_util.tree_map_with_path(one, params)


def state_shardings(state, mesh: Mesh, rules: dict, axes):
    """Shardings of a train state {step, params, ema, opt_state, rng}: params and EMA by their
    logical axes (``axes`` = :func:`param_axes` of the model); an optimizer leaf whose path ends
    with a parameter's path (AdamW's mu, nu) as that parameter; everything else replicated."""
    params = param_shardings(state["params"], mesh, rules, axes)
    by_path = {param_path(p): s for p, s in jax.tree_util.tree_flatten_with_path(params)[0]}
    replicated = NamedSharding(mesh, P())

    def opt_leaf(path, x):
        tail = []
        for k in reversed(path):  # the trailing dict keys: the parameter's path inside mu / nu
            if not isinstance(k, jax.tree_util.DictKey):
                break
            tail.insert(0, str(k.key))
        return by_path.get("/".join(tail), replicated)

    out = {k: jax.tree.map(lambda _: replicated, v) for k, v in state.items()}
    out["params"], out["ema"] = params, param_shardings(state["ema"], mesh, rules, axes)
    out["opt_state"] = jax.tree_util.tree_map_with_path(opt_leaf, state["opt_state"])
    return out


def batch_axes(mesh, rules: dict) -> tuple[str, ...]:
    """The mesh axes (of size > 1) the ``batch`` rule splits the leading axis over."""
    return tuple(a for a in rules.get("batch", ()) if mesh.shape[a] > 1)


def batch_sharding(mesh: Mesh, rules: dict) -> NamedSharding:
    axes = batch_axes(mesh, rules)
    return NamedSharding(mesh, P(axes if axes else None))


def batch_divisor(mesh: Mesh, rules: dict) -> int:
    return math.prod(mesh.shape[a] for a in rules.get("batch", ()))


def leading_axis(sharding: NamedSharding, ndim: int) -> NamedSharding:
    """The batch sharding for an array of rank ``ndim`` (only its first axis is split)."""
    return NamedSharding(sharding.mesh, P(*sharding.spec, *([None] * (ndim - 1))))


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
    """This host's part of a batch (numpy, leading batch axis) -> global arrays split over the
    batch axes, assembled without gathering on one host."""
    return {
        k: jax.make_array_from_process_local_data(leading_axis(sharding, np.ndim(v)), np.asarray(v))
        for k, v in batch.items()
    }


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=None):
    """``with use_mesh(mesh, rules):`` runs the block under ``jax.set_mesh(mesh)`` with ``rules``
    (parsed, as from :func:`parse_rules`, or rule strings; None = DEFAULT_RULES) visible to
    :func:`constrain_batch`. The rules are read when a step is traced: jit caches a trace by
    mesh, not by these rules, so a function jitted under one set of rules keeps them."""
    parsed = (
        parse_rules() if rules is None else dict(rules) if isinstance(rules, Mapping) else parse_rules(rules)
    )
    token = _ACTIVE_RULES.set(parsed)
    try:
        with jax.set_mesh(mesh):
            yield mesh
    finally:
        _ACTIVE_RULES.reset(token)


def active_rules() -> dict[str, tuple[str, ...]]:
    """The rules of the innermost :func:`use_mesh`; DEFAULT_RULES outside one."""
    rules = _ACTIVE_RULES.get()
    return parse_rules() if rules is None else rules


def constrain_batch(x: jax.Array) -> jax.Array:
    """Inside a step run under :func:`use_mesh` (or ``jax.set_mesh``, with DEFAULT_RULES): keeps
    activations (B, ...) split over the ``batch`` rule's mesh axes (of size > 1) so XLA does not
    replicate them after a parameter all-gather; a no-op without a mesh, or when the batch does
    not divide."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return x
    axes = batch_axes(mesh, active_rules())
    if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
        return x
    return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))


def initialize_distributed(mesh_cfg) -> bool:
    """``jax.distributed.initialize`` when configured (see ``MeshConfig``); True if it ran.

    Reads ``mesh.coordinator_address`` / ``num_processes`` / ``process_id``, or the environment
    variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; with none of them,
    ``distributed="always"`` lets JAX detect the cluster (SLURM, Open MPI, TPU)."""
    import os

    if mesh_cfg.distributed == "never":
        return False
    address = mesh_cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    count = mesh_cfg.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    pid = mesh_cfg.process_id if mesh_cfg.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1"))
    if mesh_cfg.distributed == "auto" and not address:
        return False
    if bool(count) != (pid >= 0):
        raise ConfigError(f"multi-host: num_processes={count} and process_id={pid}: set both or neither")
    kwargs = {
        "coordinator_address": address or None,
        "num_processes": count or None,
        "process_id": pid if pid >= 0 else None,
    }
    jax.distributed.initialize(**kwargs)
    return True
