"""Text consistency of generated samples: does a clip generated for a caption show what the caption says?

Why: a held-out loss gap (:mod:`selfflow.text_validation`) says a model reads its captions, not
that its samples obey them. Here an *attribute reader*, a small CNN trained on real clips to read
the caption's attributes back (:data:`data_pipelines.world_captions.ATTRIBUTES`: number of balls,
the agent's colour and size, which way it is pushed, how many collisions), scores generated clips
against the captions they were generated for. Per attribute and generated modality of a text layout:

=================  ==================================================================================
``given``          share of generated samples whose read attribute equals their own caption's
``shuffled``       the same against another sample's caption (the batch rolled by one): the
                   agreement a model that ignores its caption reaches on these captions
``real``           the reader on the real clips of the same captions: the ceiling, and how well
                   the attribute can be read from this modality at all (chance: ``1 / classes``)
``null``           (:func:`run_text_consistency` only) samples generated with the null caption,
                   scored against the captions: the unconditional model
=================  ==================================================================================

Actions need no reader: the push direction of generated actions is computed exactly as the
caption writer computes it (:func:`data_pipelines.world_captions.direction`). Captions that are not
world captions state no attribute, so layouts of other data get no score.

Reader: :class:`~selfflow.eval.classifier_net.SmallCNN` with one softmax head per attribute (the
logits split by attribute); video clips enter with their frames stacked on the channel axis (so
motion is visible to the first convolution), log-mel audio as a one-channel image. Trained with
Adam on ``train_examples`` real clips of the layout's training data for ``steps`` steps, scored on
held-out clips; cached beside the image classifier (``RUN_DIR/../.eval_cache``), keyed by the data
config, seed, layout sources, modality and settings.

Measured reader accuracy on held-out real clips of ``experiments/world_text.py`` (the ``real``
column of ``python -m selfflow.eval.text_consistency --run-dir runs/world_text --num 256``;
default settings; chance 1/3 for 3 classes, 1/2 for size, 1/4 for collisions): video ball count
0.879, agent colour 0.648, size 0.691, horizontal 0.516, vertical 0.473, collisions 0.520; audio
agent colour 0.816 (pitch is the material), size 0.828, collisions 0.934, ball count 0.613, push
direction at chance (0.31-0.36: sound does not say it). Compare a run's ``given`` with these,
not with 1.

In ``selfflow eval`` (``<layout>/text_<modality>_<attribute>``, ``_real`` beside it, ``_shuffled``
and the attribute mean ``<layout>/text_<modality>``). With the null caption too::

    python -m selfflow.eval.text_consistency --run-dir runs/world_text [--num 256]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_pipelines.world_captions import ATTRIBUTES, UNKNOWN, attributes, direction_ids
from data_pipelines.world_captions import direction as push_direction
from modalities.text import KEYS as TEXT_KEYS
from modalities.text import NAME as TEXT
from modalities.text import decode_caption
from selfflow.eval.classifier import load_entry, save_entry
from selfflow.eval.classifier_net import Settings, SmallCNN
from selfflow.eval.heldout import generated_for, heldout_examples

VERSION = 1  # bump when the reader or its inputs change: old cache entries no longer match
READ_MODALITIES = ("video", "audio")  # read by a trained reader; "action" is read exactly
DEFAULT_STEPS = 800
DEFAULT_TRAIN_EXAMPLES = 2048
BATCH = 64
NAMES = tuple(ATTRIBUTES)
SIZES = tuple(len(v) for v in ATTRIBUTES.values())


class TextConsistencyError(ValueError):
    """Data the reader cannot be trained on or cannot score."""


def caption_attributes(batch: dict) -> np.ndarray:
    """A batch's captions (``text`` (n, L) uint8 bytes) -> (n, A) int class ids, :data:`UNKNOWN`
    where a caption does not state an attribute. Encoder-feature text states nothing."""
    text = np.asarray(batch["text"])
    if text.ndim != 2 or text.dtype != np.uint8:
        return np.full((len(text), len(NAMES)), UNKNOWN, np.int64)
    return np.array([[attributes(decode_caption(row))[a] for a in NAMES] for row in text], np.int64)


def reader_input(modality: str, x) -> np.ndarray:
    """Real or generated examples -> the reader's (n, H, W, C) float32 images: video (n, T, H, W, C)
    frames stacked on channels (n, H, W, T·C), clipped to [-1, 1] as written samples are; audio
    log-mels (n, F, M) -> (n, F, M, 1)."""
    x = np.asarray(x, np.float32)
    if not np.all(np.isfinite(x)):
        raise TextConsistencyError(f"{modality} examples contain NaN or infinite values")
    if modality == "video":
        if x.ndim != 5:
            raise TextConsistencyError(f"video of shape {x.shape}: expected (n, frames, H, W, C)")
        n, t, h, w, c = x.shape
        return np.clip(x, -1.0, 1.0).transpose(0, 2, 3, 1, 4).reshape(n, h, w, t * c)
    if modality == "audio":
        if x.ndim != 3:
            raise TextConsistencyError(f"audio of shape {x.shape}: expected (n, frames, mels) log-mels")
        return x[..., None]
    raise TextConsistencyError(f"modality {modality!r} has no reader (readers: {', '.join(READ_MODALITIES)})")


def _split_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over attributes, each over the examples that state it."""
    total, start = 0.0, 0
    for a, size in enumerate(SIZES):
        y = labels[:, a]
        known = y != UNKNOWN
        ce = optax.softmax_cross_entropy_with_integer_labels(
            logits[:, start : start + size], jnp.maximum(y, 0)
        )
        total += jnp.sum(jnp.where(known, ce, 0.0)) / jnp.maximum(jnp.sum(known), 1)
        start += size
    return total / len(SIZES)


@nnx.jit
def _logits(model: SmallCNN, x: jax.Array) -> jax.Array:
    return model(x)


def predict(model: SmallCNN, x: np.ndarray) -> np.ndarray:
    """Reader inputs (n, H, W, C) -> (n, A) predicted class ids, BATCH at a time (padded)."""
    out = []
    for i in range(0, len(x), BATCH):
        chunk = x[i : i + BATCH]
        padded = np.concatenate([chunk, np.zeros((BATCH - len(chunk), *chunk.shape[1:]), np.float32)])
        logits = np.asarray(_logits(model, jnp.asarray(padded)))[: len(chunk)]
        out.append(np.stack([np.argmax(z, -1) for z in np.split(logits, np.cumsum(SIZES)[:-1], -1)], -1))
    return np.concatenate(out)


def examples_batch(task, index: int, n: int, *, heldout: bool = True) -> dict:
    """The first ``n`` held-out (or training) examples of layout ``index``, as a batch dict."""
    if heldout:
        return heldout_examples(task, index, n)
    dataset, batches = task.dataset(index), []
    while sum(len(b["label"]) for b in batches) < n:
        batches.append(dataset[len(batches)])
    return {key: np.concatenate([b[key] for b in batches])[:n] for key in batches[0]}


def examples(task, index: int, modality: str, n: int, *, heldout: bool) -> tuple[np.ndarray, np.ndarray]:
    """(reader inputs, (n, A) caption attributes) of :func:`examples_batch`."""
    raw = examples_batch(task, index, n, heldout=heldout)
    return reader_input(modality, raw[modality_key(modality)]), caption_attributes(raw)


def modality_key(modality: str) -> str:
    import modalities

    return modalities.keys_of(modality)[0]


def train_reader(task, index: int, modality: str, settings: Settings, train_examples: int):
    """Trains the reader of ``modality`` on layout ``index``'s training clips; returns (model, info
    with the held-out accuracy per attribute)."""
    x, y = examples(task, index, modality, train_examples, heldout=False)
    if np.all(y == UNKNOWN):
        raise TextConsistencyError(
            f"layout {task.names[index]!r}: its captions state none of {', '.join(NAMES)} (not world captions)"
        )
    model = SmallCNN(
        x.shape[-1],
        sum(SIZES),
        widths=settings.widths,
        feature_dim=settings.feature_dim,
        rngs=nnx.Rngs(settings.seed),
    )
    graphdef, params = nnx.graphdef(model), nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tx = optax.adam(optax.cosine_decay_schedule(settings.learning_rate, settings.steps))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(lambda p: _split_loss(nnx.merge(graphdef, p)(xb), yb))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(settings.seed)
    loss = float("nan")
    for _ in range(settings.steps):
        pick = rng.integers(0, len(x), settings.batch_size)
        params, opt_state, loss = step(params, opt_state, jnp.asarray(x[pick]), jnp.asarray(y[pick]))
    model = nnx.merge(graphdef, params)
    hx, hy = examples(task, index, modality, settings.heldout_examples, heldout=True)
    accuracy = agreement(predict(model, hx), hy)
    return model, {"heldout_accuracy": accuracy, "final_loss": float(loss), "train_examples": train_examples}


def agreement(predicted: np.ndarray, stated: np.ndarray) -> dict[str, float]:
    """{attribute: share of examples whose prediction equals the stated class}, over the examples
    that state it and whose prediction reads it (attributes read or stated nowhere are left out)."""
    out = {}
    for a, name in enumerate(NAMES):
        known = (stated[:, a] != UNKNOWN) & (predicted[:, a] != UNKNOWN)
        if known.any():
            out[name] = float(np.mean(predicted[known, a] == stated[known, a]))
    return out


def action_attributes(actions) -> np.ndarray:
    """(n, T, 2) actions -> (n, A) class ids: the push direction as the caption writer names it,
    every other attribute :data:`UNKNOWN`."""
    out = np.full((len(actions), len(NAMES)), UNKNOWN, np.int64)
    for i, a in enumerate(np.asarray(actions)):
        v, h = direction_ids(push_direction(a))
        out[i, NAMES.index("vertical")], out[i, NAMES.index("horizontal")] = v, h
    return out


@dataclasses.dataclass
class Readers:
    """The attribute readers of a run, trained (or loaded from ``cache_dir``) on first use."""

    cfg: object
    task: object
    cache_dir: Path
    steps: int = DEFAULT_STEPS
    train_examples: int = DEFAULT_TRAIN_EXAMPLES
    progress: Callable[[str], None] = lambda _: None
    _models: dict = dataclasses.field(default_factory=dict)

    def settings(self) -> Settings:
        return Settings(steps=self.steps, batch_size=BATCH, heldout_examples=512, version=VERSION)

    def entry(self, index: int, modality: str) -> Path:
        key = {
            "data": dataclasses.asdict(self.cfg.data),
            "seed": self.cfg.seed,
            "sources": list(self.task.layout_sources(index)),
            "modality": modality,
            "train_examples": self.train_examples,
            "settings": dataclasses.asdict(self.settings()),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return Path(self.cache_dir) / f"text-{modality}-{digest}"

    def read(self, index: int, modality: str, x) -> np.ndarray:
        """Examples of ``modality`` -> (n, A) attribute class ids."""
        if modality == "action":
            return action_attributes(x)
        entry = self.entry(index, modality)
        if entry not in self._models:
            inputs = reader_input(modality, x[:1])
            if (entry / "info.json").is_file():
                self._models[entry] = load_entry(entry, inputs.shape[1:], sum(SIZES), self.settings())[0]
            else:
                self.progress(
                    f"text-consistency reader for {modality} (trained once per dataset, then cached)"
                )
                model, info = train_reader(self.task, index, modality, self.settings(), self.train_examples)
                save_entry(entry, model, info)
                self._models[entry] = model
        return predict(self._models[entry], reader_input(modality, x))


def has_captions(task, index: int) -> bool:
    """Whether layout ``index`` has a text segment whose captions are bytes (readable words)."""
    lt = task.layouts[index]
    return TEXT in lt.layout.modalities and getattr(task.specs[TEXT], "kind", None) == "caption"


def layout_scores(readers: Readers, index: int, real: dict, fake: dict) -> dict[str, float]:
    """``text_<modality>_<attribute>`` (given), ``..._shuffled``, ``..._real`` and the attribute
    means ``text_<modality>`` for every generated modality of layout ``index`` that can be read,
    against the captions of ``real``; empty when the captions state nothing."""
    stated = caption_attributes(real)
    if np.all(stated == UNKNOWN):
        return {}
    out: dict[str, float] = {}
    for modality, generated in fake.items():
        if modality not in (*READ_MODALITIES, "action"):
            continue
        read = readers.read(index, modality, generated)
        scores = {
            "": agreement(read, stated),
            "_shuffled": agreement(read, np.roll(stated, 1, axis=0)),
            "_real": agreement(readers.read(index, modality, real[modality_key(modality)]), stated),
        }
        for suffix, per in scores.items():
            out.update({f"text_{modality}_{a}{suffix}": v for a, v in per.items()})
            if per:
                out[f"text_{modality}{suffix}"] = float(np.mean(list(per.values())))
    return out


def run_text_consistency(
    run_dir,
    *,
    num: int = 256,
    step: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    cfg_scale: float | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    """{layout: {modality: {attribute: {"given", "shuffled", "real", "null"}}}} of a run's EMA
    weights, for every layout with world captions."""
    from selfflow.eval.classifier import default_cache_dir
    from selfflow.run import load_run

    cfg, state, graphdef, task, _ = load_run(run_dir, step)
    model = nnx.merge(graphdef, jax.device_get(state["ema"]))
    readers = Readers(cfg, task, default_cache_dir(run_dir), progress=progress)

    def generate(index: int, raw: dict) -> dict:
        return generated_for(cfg, task, model, index, raw, seed=seed, steps=steps, cfg_scale=cfg_scale)

    result: dict = {}
    for index, name in enumerate(task.names):
        if not has_captions(task, index):
            continue
        real = heldout_examples(task, index, num)
        progress(f"layout {name}: sampling {num} examples with their captions and with none")
        given = layout_scores(readers, index, real, generate(index, real))
        null_real = {k: np.zeros_like(v) if k in TEXT_KEYS else v for k, v in real.items()}
        null_fake = generate(index, null_real)
        null = layout_scores(readers, index, real, null_fake)
        for key, value in given.items():
            if key.count("_") < 2 or key.endswith(("_real", "_shuffled")):
                continue
            modality, attribute = key.split("_", 2)[1:]
            result.setdefault(name, {}).setdefault(modality, {})[attribute] = {
                "given": value,
                "shuffled": given[f"{key}_shuffled"],
                "real": given[f"{key}_real"],
                "null": null[key],
            }
    return result


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--num", type=int, default=256, help="held-out captions (and samples) per layout")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: sample.steps)")
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: sample.cfg_scale)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import sys

    result = run_text_consistency(
        args.run_dir,
        num=args.num,
        step=args.step,
        seed=args.seed,
        steps=args.steps,
        cfg_scale=args.cfg,
        progress=lambda what: print(what, file=sys.stderr),
    )
    print(json.dumps(result, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
