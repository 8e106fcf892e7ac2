"""Held-out flow-matching loss in the inference setting: one timestep for all generated tokens.

Training losses are not comparable across objectives or mask ratios (dual timesteps change the
inputs the loss is measured on). This measures every run the same way: on held-out examples,
for a fixed grid of τ and fixed noise, condition segments clean, the MSE of the predicted
velocity per modality — lower is better, and it is what the sampler integrates.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfflow.layout import CONDITION
from selfflow.objective import inference_timesteps, interpolate
from selfflow.tasks import Task

TAU_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)


def validation_losses(task: Task, model, index: int, *, batches: int = 4, seed: int = 0,
                      taus=TAU_GRID) -> dict[str, float]:
    """Mean velocity MSE per generated modality of layout ``index`` on held-out batches."""
    lt = task.layouts[index]
    dataset = task.dataset(index, heldout=True)
    batch_losses = _batch_losses(task, index, tuple(taus))
    per_segment = np.mean([np.asarray(batch_losses(model, dataset[k], jax.random.key(seed + k)))
                           for k in range(batches)], axis=0)
    result: dict[str, list[float]] = {}
    for seg, value in zip(lt.layout.segments, per_segment):
        if seg.role != CONDITION:
            result.setdefault(seg.modality, []).append(float(value))
    return {m: float(np.mean(v)) for m, v in result.items()}


@functools.lru_cache(maxsize=32)
def _batch_losses(task: Task, index: int, taus: tuple):
    """The jitted per-batch losses of one layout, built once (the trainer validates at every
    checkpoint; rebuilding it would retrace each time)."""
    lt = task.layouts[index]

    @nnx.jit
    def batch_losses(model, raw, key):
        batch = task.segment_batch(index, raw)
        b = batch.labels.shape[0]
        generate = [seg.role != CONDITION for seg in lt.layout.segments]
        out = []
        for ti, tau in enumerate(taus):
            noise = [jax.random.normal(jax.random.fold_in(key, 100 * ti + j), x.shape)
                     for j, x in enumerate(batch.tokens)]
            xs = tuple(interpolate(x, e, jnp.full((b,), tau)) if g else x
                       for x, e, g in zip(batch.tokens, noise, generate))
            times = inference_timesteps(lt.layout, jnp.full((b,), tau, jnp.float32))
            vs = model(xs, times, batch.labels, jnp.asarray(lt.positions), modality=lt.layout.modalities)
            out.append([jnp.mean(jnp.square(v - (e - x))) if g else jnp.zeros(())
                        for v, x, e, g in zip(vs, batch.tokens, noise, generate)])
        return jnp.mean(jnp.asarray(out), axis=0)  # (segments,)

    return batch_losses
