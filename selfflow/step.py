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
    the placement of the old one; metrics come back replicated. A frozen encoder's weights (REPA)
    are an argument of the compiled step, not constants baked into it.
    """
    decay, warmup = cfg.objective.ema_decay, cfg.objective.ema_warmup
    objective = make_objective(cfg, task.mask_ratios, task.loss_weights)
    encoder_params = getattr(getattr(objective, "encoder", None), "params", None)

    def step(state, raw, index, encoder_params):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        batch = task.segment_batch(index, raw)
        layout = task.layouts[index].layout
        teacher = nnx.merge(graphdef, state["ema"])
        extra = {} if encoder_params is None else {"encoder_params": encoder_params}
        if objective.scheduled:
            extra["step"] = state["step"]

        def loss_of(params):
            return objective.loss(
                student=nnx.merge(graphdef, params),
                teacher=teacher,
                batch=batch,
                layout=layout,
                key=key,
                **extra,
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
        jitted = jax.jit(step, static_argnums=2, donate_argnums=0)
    else:
        replicated = NamedSharding(jax.tree.leaves(shardings)[0].mesh, PartitionSpec())
        jitted = jax.jit(step, static_argnums=2, donate_argnums=0, out_shardings=(shardings, replicated))
    return _Step(jitted, encoder_params)


class _Step:
    """The jitted step with the encoder's weights bound: step(state, raw, index), and as jitted
    functions are, ``lower(state, raw, index)`` and the unjitted ``__wrapped__(state, raw, index)``."""

    def __init__(self, jitted, encoder_params):
        self.jitted, self.encoder_params = jitted, encoder_params

    def __call__(self, state, raw, index):
        return self.jitted(state, raw, index, self.encoder_params)

    def lower(self, state, raw, index):
        return self.jitted.lower(state, raw, index, self.encoder_params)

    def __wrapped__(self, state, raw, index):
        return self.jitted.__wrapped__(state, raw, index, self.encoder_params)

    def _cache_size(self) -> int:
        return self.jitted._cache_size()
