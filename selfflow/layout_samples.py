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
from selfflow.sample import sample_segments, save_grid
from selfflow.tasks import Task


@nnx.jit(static_argnames=("layout", "method", "steps", "cfg_scale", "guidance_interval", "null_class"))
def _sample(model, layout, start, labels, positions, key, method, steps, cfg_scale, guidance_interval,
            null_class):
    return sample_segments(model, layout, start, labels, positions, method=method, steps=steps,
                           cfg_scale=cfg_scale, guidance_interval=guidance_interval, null_class=null_class,
                           key=key)


def generate(cfg, task: Task, model, index: int, raw: dict, key: jax.Array, *, steps: int | None = None,
             cfg_scale: float | None = None) -> tuple:
    """Every segment of layout ``index`` for the examples of ``raw`` (a batch dict as the layout's
    dataset yields): condition segments are the batch's own tokens, generate segments are sampled
    from noise (drawn from ``key``) with the run's ``sample`` settings (method, guidance interval;
    ``steps``/``cfg_scale`` override). Returns per segment (B, n_i, d_i) float32 tokens."""
    lt, sc = task.layouts[index], cfg.sample
    given = task.segment_batch(index, raw)
    start = tuple(t if seg.role == CONDITION else
                  jax.random.normal(jax.random.fold_in(key, j), t.shape, jnp.float32)
                  for j, (t, seg) in enumerate(zip(given.tokens, lt.layout.segments)))
    return _sample(model, lt.layout, start, jnp.asarray(given.labels), jnp.asarray(lt.positions),
                   jax.random.fold_in(key, len(start)), sc.method, steps or sc.steps,
                   float(sc.cfg_scale if cfg_scale is None else cfg_scale),
                   (float(sc.guidance_low), float(sc.guidance_high)), cfg.data.num_classes)


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
        result = generate(cfg, task, model, i, raw, jax.random.key(seed + i), steps=steps, cfg_scale=cfg_scale)
        directory = out_dir / lt.layout.name
        directory.mkdir(parents=True, exist_ok=True)
        for j, (seg, tokens) in enumerate(zip(lt.layout.segments, result)):
            stem = f"{j}_{seg.modality}" + ("_given" if seg.role == CONDITION else "")
            paths += _write(seg.modality, tokens, task.specs[seg.modality], directory, stem)
    return paths
