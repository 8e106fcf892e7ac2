"""Held-out flow-matching loss in the inference setting: one timestep for all generated tokens.

Training losses are not comparable across objectives or mask ratios (dual timesteps change the
inputs the loss is measured on). This measures every run the same way: on held-out examples,
for a fixed grid of τ and fixed noise, condition segments clean, the MSE of the predicted
velocity per modality — lower is better, and it is what the sampler integrates.

Names: ``val/<modality>`` for a one-layout run, ``val/<layout>/<modality>`` for several, and
``val/loss``, their mean (what ``train.best_metric`` ranks checkpoints by). The trainer measures
the EMA weights (the teacher, and what is sampled) as ``val/...`` and the online student as
``val_online/...``: early in a run, or with a long EMA horizon, the teacher lags the student.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfflow.layout import CONDITION
from selfflow.objective import inference_timesteps, noise_like, noised_segments, velocity_mse
from selfflow.tasks import Task

TAU_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)
VALIDATION_BATCHES = 2  # held-out batches per layout at each checkpoint (with train.keep_best)


def validation_losses(
    task: Task, model, index: int, *, batches: int = 4, seed: int = 0, taus=TAU_GRID
) -> dict[str, float]:
    """Mean velocity MSE per generated modality of layout ``index`` on held-out batches."""
    dataset = task.dataset(index, heldout=True)
    batch_losses = _batch_losses(task, index, tuple(taus))
    per_batch = [
        jax.device_get(batch_losses(model, dataset[k], jax.random.key(seed + k))) for k in range(batches)
    ]
    return {m: float(np.mean([b[m] for b in per_batch])) for m in per_batch[0]}


@functools.lru_cache(maxsize=32)
def _batch_losses(task: Task, index: int, taus: tuple):
    """The jitted per-batch losses of one layout, built once (the trainer validates at every
    checkpoint; rebuilding it would retrace each time)."""
    lt = task.layouts[index]

    @nnx.jit
    def batch_losses(model, raw, key):
        batch = task.segment_batch(index, raw)
        x0 = tuple(t.astype(jnp.float32) for t in batch.tokens)
        b = batch.labels.shape[0]
        per_tau = []
        for ti, tau in enumerate(taus):
            noise = noise_like(jax.random.fold_in(key, ti), x0)
            taus_b = jnp.full((b,), tau, jnp.float32)
            out = model(
                noised_segments(x0, noise, taus_b, lt.layout),
                inference_timesteps(lt.layout, taus_b),
                batch.labels,
                jnp.asarray(lt.positions),
                modalities=lt.layout.modalities,
            )
            per_tau.append(velocity_mse(out.velocity, x0, noise, lt.layout))
        return {m: jnp.mean(jnp.stack([d[m] for d in per_tau])) for m in per_tau[0]}

    return batch_losses


def _prefix(task: Task, index: int, head: str = "val/") -> str:
    return f"{head}{task.names[index]}/" if len(task.names) > 1 else head


def validation_keys(task: Task) -> list[str]:
    """The names :func:`validation_metrics` returns, known before anything runs."""
    return ["val/loss"] + list(
        dict.fromkeys(
            _prefix(task, i) + seg.modality
            for i, lt in enumerate(task.layouts)
            for seg in lt.layout.segments
            if seg.role != CONDITION
        )
    )


def validation_metrics(task: Task, model, head: str = "val/") -> dict[str, float]:
    """Held-out velocity MSE of every layout's generated modalities and their mean ``val/loss``:
    a measure comparable across checkpoints (fixed data, noise and τ), unlike the training loss.
    ``head`` prefixes the names (the trainer logs the online student's as ``val_online/...``
    beside the EMA teacher's ``val/...``)."""
    out = {
        _prefix(task, i, head) + m: v
        for i in range(len(task.layouts))
        for m, v in validation_losses(task, model, i, batches=VALIDATION_BATCHES).items()
    }
    return {f"{head}loss": float(np.mean(list(out.values()))), **out}
