"""Compile the real train step for a target mesh without running it (``selfflow compile``).

The state is never materialised: its shapes come from ``jax.eval_shape`` of the initialiser,
carry the shardings of :mod:`selfflow.sharding`, and the jitted step is lowered and compiled for
every layout. XLA's memory analysis then gives the bytes each device would hold (arguments,
outputs, temporaries), so an out-of-memory shows up before renting the machines.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from selfflow import sharding
from selfflow.config import Config, ConfigError
from selfflow.model import build_model
from selfflow.tasks import Task
from selfflow.train import init_state, make_optimizer, make_train_step


def compile_report(cfg: Config, devices=None) -> dict:
    task = Task(cfg)
    mesh = sharding.make_mesh(cfg.mesh, devices)
    rules = sharding.parse_rules(cfg.mesh.rules)
    divisor = sharding.batch_divisor(mesh, rules)
    for lt in task.layouts:
        if lt.batch_size % divisor:
            raise ConfigError(f"layouts[{lt.layout.name!r}]: batch size {lt.batch_size} is not divisible by the "
                              f"{divisor} devices of the batch axes ({', '.join(rules['batch'])})")
    tx = make_optimizer(cfg.optim)
    abstract_model = nnx.eval_shape(lambda: build_model(cfg, task.token_dims))
    abstract = jax.eval_shape(lambda: init_state(cfg, build_model(cfg, task.token_dims), tx))
    shardings = sharding.state_shardings(abstract, mesh, rules)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    step = make_train_step(cfg, nnx.graphdef(abstract_model), tx, task)
    batch_axes = sharding.batch_sharding(mesh, rules).spec
    layouts = {}
    with jax.set_mesh(mesh):
        for i, lt in enumerate(task.layouts):
            example = {k: v for k, v in task.dataset(i, shard=(0, 1))[0].items() if k != "skipped"}
            batch = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec(*batch_axes, *([None] * (np.ndim(v) - 1)))))
                for k, v in example.items()}
            compiled = step.lower(state, batch, i).compile()
            m = compiled.memory_analysis()
            layouts[lt.layout.name] = {
                "arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
                "temporaries": m.temp_size_in_bytes, "aliased": m.alias_size_in_bytes,
                "batch": lt.batch_size, "tokens": lt.layout.num_tokens}
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    return {"mesh": dict(mesh.shape), "devices": mesh.size, "platform": mesh.devices.flat[0].platform,
            "params": params, "layouts": layouts}


def peak_bytes(layout: dict) -> int:
    """Bytes a device holds during the step: inputs, plus outputs not aliased to donated
    inputs, plus temporaries."""
    return layout["arguments"] + layout["outputs"] - layout["aliased"] + layout["temporaries"]


def format_report(r: dict) -> str:
    gib = 2 ** 30
    lines = [f"{r['params'] / 1e6:.1f}M parameters on mesh "
             f"{' x '.join(f'{a}={s}' for a, s in r['mesh'].items())} ({r['devices']} {r['platform']} devices)",
             "per device, GiB:      arguments   outputs  temporaries   peak"]
    for name, v in r["layouts"].items():
        lines.append(f"  {name:14s} {v['arguments'] / gib:10.2f} {v['outputs'] / gib:9.2f} "
                     f"{v['temporaries'] / gib:12.2f} {peak_bytes(v) / gib:7.2f}   "
                     f"(batch {v['batch']} x {v['tokens']} tokens)")
    worst = max(peak_bytes(v) for v in r["layouts"].values())
    lines.append(f"peak_gib_per_device={worst / gib:.2f}")
    return "\n".join(lines)
