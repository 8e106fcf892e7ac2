"""Does a text-conditioned run use its captions? The held-out velocity MSE of
:mod:`selfflow.validation` (fixed τ grid, fixed noise, EMA weights) with each example's own
caption, with another example's caption (the batch's captions rolled by one) and with the null
caption (no token).

A model that reads its captions has ``given`` < ``shuffled``: a wrong caption misleads it. The gap
``shuffled − given`` is a cheap, classifier-free measure of text alignment; ``null`` is the
unconditional branch that guidance extrapolates away from.

    python -m selfflow.text_validation --run-dir runs/world_text [--batches 8]

prints one JSON object: {layout: {modality: {"given": ..., "shuffled": ..., "null": ...}}} for
every layout with a text segment.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
from flax import nnx

from modalities.text import KEYS as TEXT_KEYS
from modalities.text import NAME as TEXT
from selfflow.tasks import Task
from selfflow.validation import TAU_GRID, _batch_losses

VARIANTS = ("given", "shuffled", "null")


def _variant(raw: dict, variant: str) -> dict:
    """The batch with its captions as given, rolled by one example, or all null."""
    if variant == "given":
        return raw
    change = (lambda a: np.roll(a, 1, axis=0)) if variant == "shuffled" else np.zeros_like
    return {k: change(v) if k in TEXT_KEYS else v for k, v in raw.items()}


def caption_losses(task: Task, model, index: int, *, batches: int = 4, seed: int = 0) -> dict:
    """{modality: {variant: mean velocity MSE}} of layout ``index`` on held-out batches (the same
    examples, noise and τ for every variant)."""
    dataset, losses = task.dataset(index, heldout=True), _batch_losses(task, index, TAU_GRID)
    out: dict = {}
    for k in range(batches):
        raw = dataset[k]
        for variant in VARIANTS:
            values = jax.device_get(losses(model, _variant(raw, variant), jax.random.key(seed + k)))
            for m, v in values.items():
                out.setdefault(m, {}).setdefault(variant, []).append(float(v))
    return {m: {v: float(np.mean(x)) for v, x in per.items()} for m, per in out.items()}


def run_caption_losses(run_dir: str, batches: int = 4, step: int | None = None) -> dict:
    """:func:`caption_losses` of every text layout of a run's checkpoint (EMA weights)."""
    from selfflow.run import load_run

    _, state, graphdef, task, _ = load_run(run_dir, step)
    model = nnx.merge(graphdef, state["ema"])
    return {
        lt.layout.name: caption_losses(task, model, i, batches=batches)
        for i, lt in enumerate(task.layouts)
        if TEXT in lt.layout.modalities
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--step", type=int, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(run_caption_losses(args.run_dir, args.batches, args.step), indent=1))


if __name__ == "__main__":
    main()
