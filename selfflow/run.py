"""A run's state: building it, placing it on a mesh, and loading it back from a run directory.

Train state (a plain pytree, what Orbax saves):
    step       int32 ()            number of optimizer steps taken
    params     pure dict           float32 master weights of the student (+ projector)
    ema        pure dict           EMA teacher, initialised as an exact copy of ``params``
    opt_state  optax state         AdamW moments
    rng        uint32 (2,)         base key; step n uses fold_in(rng, n)

:func:`load_run` needs only the run directory: the checkpoint stores the resolved config and the
modality specs (token geometry, action statistics), so ``sample``, ``export`` and ``eval`` work
on a machine without the training data.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding

from selfflow import config as config_lib
from selfflow import sharding
from selfflow.checkpoint import CheckpointDamaged, RunCheckpoints
from selfflow.config import Config, ConfigError
from selfflow.model import SelfFlowTransformer, build_model
from selfflow.tasks import Task, specs_from_dict

# Keys that may change when a run is resumed (how long, how often, what is kept), everything else may not.
RESUMABLE_CHANGES = (
    "train.steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.keep_every",
    "train.keep_best",
    "train.best_metric",
    "train.best_mode",
    "train.sample_every",
    "train.eval_every",
    "train.eval_samples",
    "train.eval_classifier_steps",
    "train.eval_probe",
    "train.grad_ratio_every",
    "train.init_from",  # read only when a run starts; a resumed run continues from its own checkpoint
    "train.resume_step",  # which checkpoint to resume from, and what to do if it is damaged
    "train.on_bad_checkpoint",
    "sample.",
    "data.read_threads",
    "data.prefetch",
    "data.worker_count",
    "data.on_bad_sample",
    "mesh.",
    "model.conditioning",
    "model.remat",
)


def make_optimizer(ocfg: config_lib.OptimConfig) -> optax.GradientTransformation:
    lr = ocfg.learning_rate
    if ocfg.warmup_steps:
        lr = optax.linear_schedule(0.0, ocfg.learning_rate, ocfg.warmup_steps)
    return optax.chain(
        optax.clip_by_global_norm(ocfg.grad_clip_norm),
        optax.adamw(lr, b1=ocfg.b1, b2=ocfg.b2, weight_decay=ocfg.weight_decay),
    )


def init_state(cfg: Config, model: SelfFlowTransformer, tx: optax.GradientTransformation) -> dict:
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "ema": jax.tree.map(jnp.copy, params),
        "opt_state": tx.init(params),
        "rng": jax.random.key_data(jax.random.key(cfg.seed)),
    }


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run lives: the mesh, its logical-axis rules, the state's shardings and the batch's."""

    mesh: Any
    rules: dict
    state: Any
    batch: NamedSharding

    @classmethod
    def of(cls, cfg: Config, task: Task, state: dict, model: SelfFlowTransformer) -> Placement:
        mesh, rules = sharding.make_mesh(cfg.mesh), sharding.parse_rules(cfg.mesh.rules)
        divisor = sharding.batch_divisor(mesh, rules)
        for lt in task.layouts:
            if lt.batch_size % divisor:
                raise ConfigError(
                    f"layouts[{lt.layout.name!r}]: batch size {lt.batch_size} is not divisible "
                    f"by the {divisor} devices of the batch axes ({', '.join(rules['batch'])}); "
                    "change the batch size or the mesh"
                )
        shardings = sharding.state_shardings(state, mesh, rules, sharding.param_axes(model))
        return cls(mesh, rules, shardings, sharding.batch_sharding(mesh, rules))


def check_resumable(saved: Config, cfg: Config, run_dir: Path) -> None:
    """ConfigError listing every setting of ``cfg`` that differs from the run's and may not change."""
    flat_saved = _flatten(config_lib.resolved_dict(saved))
    flat_now = _flatten(config_lib.resolved_dict(cfg))
    diffs = [
        k
        for k in flat_now
        if flat_now[k] != flat_saved.get(k)
        and not any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUMABLE_CHANGES)
    ]
    if diffs:
        detail = "; ".join(f"{k}: run has {flat_saved.get(k)!r}, command says {flat_now[k]!r}" for k in diffs)
        raise ConfigError(
            f"{run_dir} holds a run with a different config ({detail}); "
            "use another --run-dir or the same settings"
        )


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


WEIGHTS = {"ema": "ema", "online": "params"}  # --weights choice -> train-state key


def select_weights(state: dict, weights: str) -> dict:
    """The parameter tree a reader asked for: ``ema`` (the EMA teacher, what training samples
    from) or ``online`` (the optimizer's weights: better early in a run or with a long EMA)."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r}: expected one of {', '.join(WEIGHTS)}")
    return state[WEIGHTS[weights]]


def run_task(ckpts: RunCheckpoints, step: int, cfg: Config) -> Task:
    """The task of a saved run, from the specs its checkpoint stores (older checkpoints without
    them rebuild the specs from the data, which must then be on disk)."""
    specs = ckpts.saved_specs(step)
    if specs is None:
        print(
            f"{ckpts.directory}/{step}: no stored modality specs (saved by an older version); "
            "rebuilding them from the training data",
            file=sys.stderr,
        )
        return Task(cfg)
    return Task(cfg, specs=specs_from_dict(specs))


def load_run(run_dir: str | Path, step: int | None = None) -> tuple[Config, dict, Any, Task, int]:
    """(config, train state, graphdef, task, step) of a run directory's checkpoint (the latest
    without ``step``), verified against its checksums; the training data is not read."""
    ckpts = RunCheckpoints.of_run(run_dir)
    try:
        step = ckpts.existing_step(step)
        cfg = ckpts.saved_config(step)
        task = run_task(ckpts, step, cfg)
        model = build_model(cfg, task.token_dims)
        template = init_state(cfg, model, make_optimizer(cfg.optim))
        state, _ = ckpts.restore(step, template)
    except CheckpointDamaged as e:
        raise e.with_hint(
            f"use an older checkpoint with --step K (`selfflow verify --run-dir {run_dir}` checks them all)"
        ) from e
    finally:
        ckpts.close()
    return cfg, state, nnx.graphdef(model), task, step
