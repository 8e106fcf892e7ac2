"""Diagnostics of the representation loss: is the student aligned with *its own* teacher features,
how much of those features is shared by every example, and how strongly does L_rep pull.

Why: at small scale the teacher's block-k features can be dominated by what every example shares
(the positional embedding, the timestep), so a high ``cos_sim`` can be reached without any
content-specific alignment, and L_rep then barely moves the trunk. These numbers tell a healthy
run from one where L_rep is satisfied for free (see the README's "Reading the diagnostics"):

    rep/cos_own           per-token cosine of the projected student features to the teacher's of
                          the same example (= ``cos_sim`` for the cosine distance)
    rep/cos_other         the same against another example's teacher features (the batch rolled
                          by one: same positions and timesteps, other content)
    rep/cos_gap           cos_own − cos_other: the content-specific alignment L_rep should raise
    rep/teacher_mean_share  share of the teacher features' energy that is the per-position batch
                          mean, B·Σ_n ‖μ_n‖² / Σ_{b,n} ‖x_bn‖² (1 = every example identical)
    rep/grad_ratio        ‖γ ∇L_rep‖ / ‖∇L_gen‖ over the trunk's parameters (the blocks)

The first four come with every Self-Flow step (:class:`~selfflow.objectives.SelfFlow` adds them
to its metrics, at the cost of one more cosine); the gradient ratio needs two backward passes and
is measured every ``train.log_every`` steps by :class:`selfflow.hooks.Diagnose`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from selfflow.objective import representation_stats  # noqa: F401  (re-exported: defined with the losses)
from selfflow.objectives import make_objective

TRUNK = "blocks"  # the parameters the gradient ratio is measured on


def gradient_ratio(objective, graphdef, params, ema, batch, layout, key, step=None) -> jax.Array:
    """‖γ ∇L_rep‖ / ‖∇L_gen‖ on the trunk for one batch: one forward, two backward passes through
    ``objective.terms`` (a :class:`~selfflow.objectives.SelfFlow`); γ at ``step`` when it decays."""
    teacher = nnx.merge(graphdef, ema)

    def terms(p):
        gen, rep, _ = objective.terms(
            student=nnx.merge(graphdef, p), teacher=teacher, batch=batch, layout=layout, key=key
        )
        return gen, rep

    _, pull_back = jax.vjp(terms, params)
    one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
    (grad_gen,) = pull_back((one, zero))
    (grad_rep,) = pull_back((zero, one))
    gen_norm = optax.tree.norm(grad_gen[TRUNK])
    return objective.weight(step) * optax.tree.norm(grad_rep[TRUNK]) / jnp.maximum(gen_norm, 1e-30)


@functools.lru_cache(maxsize=8)
def jitted_gradient_ratio(objective, graphdef, task, index: int):
    """(params, ema, raw batch, key, step) -> ratio, compiled once per (objective, layout)."""
    layout = task.layouts[index].layout

    @jax.jit
    def ratio(params, ema, raw, key, step):
        batch = task.segment_batch(index, raw)
        return gradient_ratio(objective, graphdef, params, ema, batch, layout, key, step)

    return ratio


def heldout_diagnostics(cfg, task, graphdef, params, ema, *, batches: int = 4, seed: int = 0) -> dict:
    """The ``rep/*`` statistics and the gradient ratio (at γ = 1, i.e. ‖∇L_rep‖/‖∇L_gen‖) of a
    student (``params``) against a teacher (``ema``) on held-out batches of the first layout, with
    fixed randomness: comparable across runs and objectives, including runs that never trained L_rep
    (their projector is then as initialised). Uses Self-Flow's draw with the run's other settings."""
    probe_cfg = dataclasses.replace(
        cfg, objective=dataclasses.replace(cfg.objective, kind="self_flow", gamma=1.0)
    )
    objective = make_objective(probe_cfg, task.mask_ratios, task.loss_weights)
    layout = task.layouts[0].layout

    @jax.jit
    def one(params, ema, raw, key):
        batch = task.segment_batch(0, raw)
        _, _, metrics = objective.terms(
            student=nnx.merge(graphdef, params),
            teacher=nnx.merge(graphdef, ema),
            batch=batch,
            layout=layout,
            key=key,
        )
        ratio = gradient_ratio(objective, graphdef, params, ema, batch, layout, key)
        return {k: v for k, v in metrics.items() if k.startswith("rep/")} | {"rep/grad_ratio": ratio}

    dataset = task.dataset(0, heldout=True)
    per_batch = [
        jax.device_get(one(params, ema, dataset[k], jax.random.key(seed + k))) for k in range(batches)
    ]
    return {k: float(np.mean([b[k] for b in per_batch])) for k in per_batch[0]}
