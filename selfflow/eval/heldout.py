"""Held-out examples of a layout and the samples generated for their conditions: what every
metric of :mod:`selfflow.eval.evaluate` and :mod:`selfflow.eval.text_consistency` compares."""

from __future__ import annotations

import math

import jax
import numpy as np

import modalities
from selfflow.layout import GENERATE
from selfflow.tasks import Task


def heldout_examples(task: Task, index: int, num: int, *, skip: int = 0) -> dict:
    """The first ``num`` held-out examples of layout ``index`` after ``skip`` (whole batches)."""
    batch = task.layouts[index].batch_size
    first = skip // batch
    count = math.ceil((skip - first * batch + num) / batch)
    dataset = task.dataset(index, heldout=True)
    batches = [dataset[first + k] for k in range(count)]
    start = skip - first * batch
    return {k: np.concatenate([b[k] for b in batches])[start : start + num] for k in batches[0]}


def generated_for(
    cfg, task: Task, model, index: int, real: dict, *, seed: int, steps: int | None, cfg_scale: float | None
) -> dict:
    """Detokenised generated segments of layout ``index`` conditioned on ``real``: {modality: array}
    (action: actions only), in chunks of the layout's batch size, the noise of chunk c drawn from
    ``fold_in(key(seed), 1000 * index + c)``; ``steps``/``cfg_scale`` None: the run's."""
    from selfflow.layout_samples import generate

    lt = task.layouts[index]
    chunks = []
    for c, start in enumerate(range(0, len(real["label"]), lt.batch_size)):
        raw = {k: v[start : start + lt.batch_size] for k, v in real.items()}
        key = jax.random.fold_in(jax.random.key(seed), 1000 * index + c)
        chunks.append(generate(cfg, task, model, index, raw, key, steps=steps, cfg_scale=cfg_scale))
    out = {}
    for j, seg in enumerate(lt.layout.segments):
        if seg.role != GENERATE:
            continue
        tokens = np.concatenate([np.asarray(ch[j]) for ch in chunks])
        value = modalities.get(seg.modality).detokenize(tokens, task.specs[seg.modality])
        out[seg.modality] = np.asarray(value[0] if seg.modality == "action" else value)
    return out
