"""The jitted training step: objective, gradients, AdamW and the EMA update in one program.

Batch n is a pure function of (seed, n) (see ``data_pipelines.loader``) and the step's
randomness is fold_in(rng, n), so a resumed run continues bit-identically on the same machine.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from selfflow.config import Config
from selfflow.objective import ema_decay_at, ema_update
from selfflow.objectives import make_objective
from selfflow.tasks import Task


def make_train_step(cfg: Config, graphdef, tx: optax.GradientTransformation, task: Task, shardings=None):
    """Returns step(state, raw_batch, layout_index) -> (state, metrics); state donated.

    ``layout_index`` is static: each layout compiles once, on its first occurrence.
    ``shardings`` (a tree like the state, see ``sharding.state_shardings``) pins the new state to
    the placement of the old one; metrics come back replicated.
    """
    decay, warmup = cfg.objective.ema_decay, cfg.objective.ema_warmup
    objective = make_objective(cfg, task.mask_ratios, task.loss_weights)

    def step(state, raw, index):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        batch = task.segment_batch(index, raw)
        layout = task.layouts[index].layout
        teacher = nnx.merge(graphdef, state["ema"])

        def loss_of(params):
            return objective.loss(
                student=nnx.merge(graphdef, params), teacher=teacher, batch=batch, layout=layout, key=key
            )

        (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = dict(
            state,
            step=state["step"] + 1,
            params=params,
            opt_state=opt_state,
            ema=ema_update(state["ema"], params, ema_decay_at(state["step"], decay, warmup)),
        )
        return new_state, metrics

    if shardings is None:
        return jax.jit(step, static_argnums=2, donate_argnums=0)
    replicated = NamedSharding(jax.tree.leaves(shardings)[0].mesh, PartitionSpec())
    return jax.jit(step, static_argnums=2, donate_argnums=0, out_shardings=(shardings, replicated))
