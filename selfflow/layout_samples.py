"""Samples of every layout of a multimodal run, written as files a person can look at or hear.

For each layout: condition segments come from the layout's first data batch (so "audio for
this video" or "future frames and actions after this frame" are generated for real inputs),
generate segments start from noise; the result is detokenised and written per modality:
image -> PNG grid, video -> animated GIF, audio -> WAV (+ spectrogram PNG), action -> PNG plot.
Condition inputs are written beside them (``*_given``) so a sample can be compared with its cue.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import modalities
from selfflow import outputs
from selfflow.layout import CONDITION
from selfflow.sample import euler_sample_segments, save_grid
from selfflow.tasks import Task


@nnx.jit(static_argnames=("layout", "steps", "cfg_scale", "null_class"))
def _sample(model, layout, start, labels, positions, steps, cfg_scale, null_class):
    return euler_sample_segments(model, layout, start, labels, positions, steps=steps,
                                 cfg_scale=cfg_scale, null_class=null_class)


def _write(name: str, tokens: np.ndarray, spec, directory: Path, stem: str) -> list[Path]:
    raw = modalities.get(name).detokenize(np.asarray(tokens, np.float32), spec)
    if name == "image":
        return [save_grid(np.asarray(raw), 1, directory / f"{stem}.png")]
    if name == "video":
        return [outputs.save_video_gif(np.asarray(raw), directory / f"{stem}.gif", fps=spec.fps)]
    if name == "audio":
        return outputs.save_audio_wavs(np.asarray(raw), spec, directory, prefix=stem)
    actions, proprio = raw
    return [outputs.save_action_plot(np.asarray(actions), directory / f"{stem}.png",
                                     proprio=None if proprio is None else np.asarray(proprio),
                                     hz=spec.hz)]


def write_layout_samples(cfg, task: Task, model, out_dir: str | Path, *, steps: int,
                         cfg_scale: float, seed: int, per_layout: int = 4) -> list[Path]:
    """Samples ``per_layout`` examples of each layout into ``out_dir/<layout>/``; returns the files."""
    out_dir, paths = Path(out_dir), []
    for i, lt in enumerate(task.layouts):
        raw = task.dataset(i)[0]
        raw = {k: v[:per_layout] for k, v in raw.items()}
        given = task.segment_batch(i, raw)
        key = jax.random.key(seed + i)
        start = tuple(t if seg.role == CONDITION else
                      jax.random.normal(jax.random.fold_in(key, j), t.shape, jnp.float32)
                      for j, (t, seg) in enumerate(zip(given.tokens, lt.layout.segments)))
        result = _sample(model, lt.layout, start, jnp.asarray(given.labels), jnp.asarray(lt.positions),
                         steps, float(cfg_scale), cfg.data.num_classes)
        directory = out_dir / lt.layout.name
        directory.mkdir(parents=True, exist_ok=True)
        for j, (seg, tokens) in enumerate(zip(lt.layout.segments, result)):
            stem = f"{j}_{seg.modality}" + ("_given" if seg.role == CONDITION else "")
            paths += _write(seg.modality, tokens, task.specs[seg.modality], directory, stem)
    return paths
