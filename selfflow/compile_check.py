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
from selfflow.config import Config
from selfflow.model import build_model
from selfflow.run import Placement, init_state, make_optimizer
from selfflow.step import make_train_step
from selfflow.tasks import Task


def compile_report(cfg: Config) -> dict:
    task = Task(cfg)
    tx = make_optimizer(cfg.optim)
    abstract_model = nnx.eval_shape(lambda: build_model(cfg, task.token_dims))
    abstract = jax.eval_shape(lambda: init_state(cfg, build_model(cfg, task.token_dims), tx))
    placement = Placement.of(cfg, task, abstract, abstract_model)  # the mesh and batch checks of a real run
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, placement.state
    )
    step = make_train_step(cfg, nnx.graphdef(abstract_model), tx, task)
    layouts = {}
    with sharding.use_mesh(placement.mesh, placement.rules):
        for i, lt in enumerate(task.layouts):
            example = {
                k: np.asarray(v) for k, v in task.dataset(i, shard=(0, 1))[0].items() if k != "skipped"
            }
            batch = {
                k: jax.ShapeDtypeStruct(
                    v.shape, v.dtype, sharding=sharding.leading_axis(placement.batch, v.ndim)
                )
                for k, v in example.items()
            }
            compiled = step.lower(state, batch, i).compile()
            m = compiled.memory_analysis()
            layouts[lt.layout.name] = {
                "arguments": m.argument_size_in_bytes,
                "outputs": m.output_size_in_bytes,
                "temporaries": m.temp_size_in_bytes,
                "aliased": m.alias_size_in_bytes,
                "batch": lt.batch_size,
                "tokens": lt.layout.num_tokens,
            }
    mesh = placement.mesh
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    return {
        "mesh": dict(mesh.shape),
        "devices": mesh.size,
        "platform": mesh.devices.flat[0].platform,
        "params": params,
        "layouts": layouts,
    }


def peak_bytes(layout: dict) -> int:
    """Bytes a device holds during the step: inputs, plus outputs not aliased to donated
    inputs, plus temporaries."""
    return layout["arguments"] + layout["outputs"] - layout["aliased"] + layout["temporaries"]


def format_report(r: dict) -> str:
    gib = 2**30
    lines = [
        f"{r['params'] / 1e6:.1f}M parameters on mesh "
        f"{' x '.join(f'{a}={s}' for a, s in r['mesh'].items())} ({r['devices']} {r['platform']} devices)",
        "per device, GiB:      arguments   outputs  temporaries   peak",
    ]
    for name, v in r["layouts"].items():
        lines.append(
            f"  {name:14s} {v['arguments'] / gib:10.2f} {v['outputs'] / gib:9.2f} "
            f"{v['temporaries'] / gib:12.2f} {peak_bytes(v) / gib:7.2f}   "
            f"(batch {v['batch']} x {v['tokens']} tokens)"
        )
    worst = max(peak_bytes(v) for v in r["layouts"].values())
    lines.append(f"peak_gib_per_device={worst / gib:.2f}")
    return "\n".join(lines)
