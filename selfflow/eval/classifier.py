"""A Fréchet-distance proxy in the feature space of a small classifier trained on a run's real data.

Why: FID needs Inception weights and 299-pixel images; neither exists here, and Inception features
of 16x16 shapes or 28x28 grayscale clothes say little. Instead the project trains, once per
dataset, a small CNN on the run's own training images and measures the Fréchet distance between
real and generated images in its penultimate-layer features. Like FID it compares the Gaussian
statistics of features that separate the classes; unlike FID its absolute value means nothing
outside this project, so compare it only between runs scored with the *same cached classifier*
(same dataset key and training settings - the cache guarantees that every run on the same data
gets the same one).

Classifier (:class:`SmallCNN`): 3x3 convolutions of widths 32, 64, 128, 128 (strides 1, 2, 2, 2; GELU),
a global mean pool, a 128-unit GELU feature layer (the features) and a linear head; trained with
Adam (cosine-decayed learning rate) on softmax cross-entropy for a fixed number of steps on
training images, then scored on held-out images (``Task``'s held-out source: another seed for the
procedural sources, the test split of Fashion-MNIST; for file folders, which have no held-out
split, the training files, and ``info["heldout_is_train"]`` says so). Sources that yield video
(the world) are classified frame by frame: every frame of a clip is an image with the clip's
label. No batch norm and no augmentation: the network is a pure function of its weights, which
are a pure function of (dataset, settings, seed).

Cache: ``cache_dir/<kind>-<H>x<W>x<C>-<hash>/{classifier.safetensors, info.json}``; the hash
covers the dataset identity (:func:`dataset_key`: source kind, path, split, channels, image shape,
number of classes, and the data seed and size where they define the data) and the training
settings. A run directory's conventional place is :func:`default_cache_dir` (``RUN_DIR/../
.eval_cache``), shared by sibling runs. Entries are written to a temporary directory and renamed,
so concurrent evaluations never read half an entry.

Measured budgets and held-out accuracies (default settings: 1000 steps of batch 64, learning rate
2e-3, seed 0; accuracy on 2048 held-out images; 2 CPU cores shared with other test jobs (load ~5),
so the times are upper bounds; the accuracies are exactly reproducible). Command, per config:
``.venv/bin/python -m selfflow.eval.classifier experiments/<config>.py --cache-dir /tmp/clf``

  ===============================  ========================  ==========  ============  ======
  dataset (config)                 images                    train time  held-out acc  chance
  ===============================  ========================  ==========  ============  ======
  shapes (quickstart.py)           16x16x3, 10 classes       59 s        1.000         0.10
  fashion_mnist (fashion_mnist.py) 28x28x1, 10 classes       106 s       0.891         0.10
  world frames (world_mixed.py)    16x16x3 frames of 16-     51 s        0.924         0.33
                                   frame clips, 3 classes
                                   (1-3 balls)
  ===============================  ========================  ==========  ============  ======

Shapes is easy (each class has its own colour); the world's 2048
held-out frames come from 128 clips, so its accuracy is less precise than the count suggests.

Use::

    extract, info = image_feature_extractor(cfg, task, default_cache_dir(run_dir))
    fd = image_fd_proxy(extract, real_images, generated_images)   # both (n, H, W, C) in [-1, 1]

with n well above the feature width (128): the Fréchet distance of two finite samples is biased
upwards by roughly trace(Σ)/n each, so compare values at the same n.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_pipelines import loader
from selfflow.config import Config
from selfflow.eval.classifier_net import (  # noqa: F401  (re-exported: the cache's names)
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEARNING_RATE,
    DEFAULT_STEPS,
    FEATURE_DIM,
    HELDOUT_EXAMPLES,
    INFO_FILE,
    VERSION,
    WEIGHTS_FILE,
    WIDTHS,
    ClassifierError,
    Settings,
    SmallCNN,
)
from selfflow.eval.frechet import frechet_from_features
from selfflow.params import assign_params, flatten
from selfflow.tasks import Task

EVAL_BATCH = 256  # images per jitted feature call (the last batch is padded: one compile)
# Kinds whose examples depend on the run's seed (data_pipelines.sources.build passes it to them);
# for the others (files read as they are) the seed is left out of the dataset key.
SEEDED_KINDS = ("shapes", "world", "video_files", "audio_files", "trajectories")
PROCEDURAL_KINDS = ("shapes", "world")  # their size (data.num_examples) is part of the data


# ---------------------------------------------------------------------------- data


def image_source_names(task: Task) -> list[str]:
    """The run's sources that yield images or video (the ones a classifier can be trained on)."""
    return [n for n, s in task.sources.items() if "image" in s.schema or "video" in s.schema]


def resolve_source(task: Task, source: str | None) -> str:
    """``source``, or the run's only image/video source; a ClassifierError naming the choices."""
    names = image_source_names(task)
    if source is None:
        if len(names) != 1:
            raise ClassifierError(
                f"the run has {len(names)} image/video sources ({', '.join(names) or 'none'}); "
                "name one with source="
            )
        return names[0]
    if source not in names:
        raise ClassifierError(
            f"source {source!r} yields no images or video; image/video sources: {', '.join(names) or 'none'}"
        )
    return source


def image_key(source) -> str:
    """ "video" when the source yields clips (classified frame by frame: every frame, not only the
    first, which is what the world's "image" is), else "image"."""
    return "video" if "video" in source.schema else "image"


def frame_shape(source) -> tuple[int, int, int]:
    """(H, W, C) of the images (or video frames) of ``source``."""
    return tuple(int(s) for s in source.schema[image_key(source)].shape[-3:])


def dataset_key(cfg: Config, task: Task, source: str) -> dict:
    """What identifies the images of ``source`` (JSON-able): runs with equal keys train on the same
    images, so they share a classifier. Paths are made absolute; the file contents are not hashed
    (a folder whose files change under the same path needs a fresh cache directory)."""
    sc = task.source_configs[source]
    fields = {k: v for k, v in dataclasses.asdict(sc).items() if k not in ("name", "weight")}
    if sc.path:
        fields["path"] = os.path.abspath(sc.path)
    src = task.sources[source]
    key = {
        "source": fields,
        "key": image_key(src),
        "shape": list(frame_shape(src)),
        "num_classes": cfg.data.num_classes,
    }
    if key["key"] == "video":
        key["frames"], key["fps"] = int(src.schema["video"].shape[0]), cfg.data.fps
    if sc.kind in PROCEDURAL_KINDS:
        key["num_examples"] = cfg.data.num_examples
    if sc.kind in SEEDED_KINDS:
        key["seed"] = cfg.seed
    return key


def _frames(batch: dict) -> dict:
    """A batch of clips {"video": (b, T, H, W, C), "label": (b,)} or images -> {"image": (n, H, W, C),
    "label": (n,)} (every frame carries its clip's label)."""
    if "video" in batch:
        video = np.asarray(batch["video"])
        b, t = video.shape[:2]
        return {"image": video.reshape(b * t, *video.shape[2:]), "label": np.repeat(batch["label"], t)}
    return {"image": batch["image"], "label": batch["label"]}


def image_batches(
    task: Task, source: str, batch_size: int, seed: int, *, heldout: bool = False
) -> grain.MapDataset:
    """Infinite MapDataset of {"image": (n, H, W, C) float32 in [-1, 1], "label": (n,) int32}: the
    training (or held-out, see ``Task``) examples of ``source`` shuffled with ``seed``. For video,
    n = T * max(1, batch_size // T) frames of whole clips, else n = batch_size."""
    # Task._heldout_source is the one definition of "held out" for every source kind.
    src = task._heldout_source(source) if heldout else task.sources[source]
    key = image_key(src)
    per_batch = max(1, batch_size // src.schema["video"].shape[0]) if key == "video" else batch_size
    return loader.batched_dataset(
        src.select((key,)), per_batch, seed, on_bad_sample=task.cfg.data.on_bad_sample, shard=(0, 1)
    ).map(_frames)


def load_images(
    task: Task, source: str, n: int, *, heldout: bool = True, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images (frames) of :func:`image_batches` and their labels: (n, H, W, C), (n,).
    Different seeds give different orders, not disjoint sets; take disjoint sets as slices."""
    data = image_batches(task, source, EVAL_BATCH, seed, heldout=heldout)
    images, labels, k = [], [], 0
    while sum(len(x) for x in labels) < n:
        batch = data[k]
        images.append(batch["image"])
        labels.append(batch["label"])
        k += 1
    return np.concatenate(images)[:n], np.concatenate(labels)[:n].astype(np.int32)


# ---------------------------------------------------------------------------- training


def train_classifier(
    task: Task,
    source: str,
    settings: Settings,
    num_classes: int,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[SmallCNN, dict]:
    """Trains a :class:`SmallCNN` on the training images of ``source`` for ``settings.steps`` steps
    and scores it on ``settings.heldout_examples`` held-out images. Returns (model, metrics).
    ``progress(step, loss)`` is called after every step (a hook for logs and tests)."""
    src = task.sources[source]
    h, w, c = frame_shape(src)
    if min(h, w) < 4:
        raise ClassifierError(f"source {source!r}: images of {h}x{w} are too small (need at least 4x4)")
    model = SmallCNN(
        c, num_classes, widths=settings.widths, feature_dim=settings.feature_dim, rngs=nnx.Rngs(settings.seed)
    )
    graphdef, params = nnx.graphdef(model), nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tx = optax.adam(optax.cosine_decay_schedule(settings.learning_rate, settings.steps))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, images, labels):
        def loss_of(p):
            logits = nnx.merge(graphdef, p)(images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    batches = loader.BatchIterator(
        image_batches(task, source, settings.batch_size, settings.seed),
        read_threads=task.cfg.data.read_threads,
        prefetch=task.cfg.data.prefetch,
    )
    loss = math.nan
    try:
        for i in range(settings.steps):
            batch = next(batches)
            _check_labels(batch["label"], num_classes, source)
            params, opt_state, loss = step(
                params, opt_state, jnp.asarray(batch["image"]), jnp.asarray(batch["label"], jnp.int32)
            )
            if progress is not None:
                progress(i + 1, float(loss))
    finally:
        batches.close()
    train_seconds = time.perf_counter() - start
    model = nnx.merge(graphdef, params)
    images, labels = load_images(task, source, settings.heldout_examples, heldout=True, seed=settings.seed)
    _check_labels(labels, num_classes, source)
    accuracy = float(np.mean(predict(model, images) == labels))
    return model, {
        "heldout_accuracy": accuracy,
        "final_loss": float(loss),
        "train_seconds": round(train_seconds, 2),
        "heldout_is_train": task._heldout_source(source) is task.sources[source],
    }


def _check_labels(labels, num_classes: int, source: str) -> None:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ClassifierError(
            f"source {source!r} yields labels in [{labels.min()}, {labels.max()}] but the run "
            f"has data.num_classes={num_classes}"
        )


# ---------------------------------------------------------------------------- inference


@nnx.jit
def _features_and_logits(model: SmallCNN, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    f = model.features(images)
    return f, model.head(f)


def _batched(model: SmallCNN, images) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, d), logits (n, K)) of (n, H, W, C) images, EVAL_BATCH at a time (padded)."""
    images = np.asarray(images, np.float32)
    feats, logits = [], []
    for i in range(0, len(images), EVAL_BATCH):
        chunk = images[i : i + EVAL_BATCH]
        padded = np.concatenate([chunk, np.zeros((EVAL_BATCH - len(chunk), *chunk.shape[1:]), np.float32)])
        f, z = _features_and_logits(model, jnp.asarray(padded))
        feats.append(np.asarray(f)[: len(chunk)])
        logits.append(np.asarray(z)[: len(chunk)])
    return np.concatenate(feats), np.concatenate(logits)


def predict(model: SmallCNN, images) -> np.ndarray:
    """Predicted classes (n,) of (n, H, W, C) images."""
    return np.argmax(_batched(model, images)[1], axis=-1)


class FeatureExtractor:
    """``extract(images) -> (n, feature_dim) float64``: the classifier's penultimate features.

    ``images``: (n, H, W, C), or (..., H, W, C) such as video (n, T, H, W, C), which is scored
    frame by frame (flattened to (n·T, H, W, C)), in [-1, 1]; values outside are clipped, as
    writing samples to uint8 would. Must match the classifier's (H, W, C).
    """

    def __init__(self, model: SmallCNN, shape: tuple[int, int, int]):
        self.model, self.shape = model, tuple(shape)

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim < 4 or tuple(images.shape[-3:]) != self.shape:
            raise ClassifierError(
                f"images of shape {images.shape}: expected (n, {', '.join(map(str, self.shape))}) "
                "(or (..., H, W, C) frames), the shape of the classifier's dataset"
            )
        if not np.all(np.isfinite(images)):
            raise ClassifierError("images contain NaN or infinite values")
        images = np.clip(images.reshape(-1, *self.shape), -1.0, 1.0)
        return _batched(self.model, images)[0].astype(np.float64)


# ---------------------------------------------------------------------------- cache and API


def default_cache_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/../.eval_cache``: shared by the runs beside ``run_dir``."""
    return Path(run_dir).resolve().parent / ".eval_cache"


def cache_entry(cfg: Config, task: Task, source: str, settings: Settings, cache_dir: str | Path) -> Path:
    """The cache directory of this (dataset, settings) pair (it may not exist yet)."""
    dkey = dataset_key(cfg, task, source)
    blob = json.dumps({"dataset": dkey, "settings": dataclasses.asdict(settings)}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    h, w, c = dkey["shape"]
    return Path(cache_dir) / f"{dkey['source']['kind']}-{h}x{w}x{c}-{digest}"


def save_entry(entry: Path, model: SmallCNN, info: dict) -> None:
    """Writes the entry atomically: a temporary sibling directory renamed into place. If another
    process finished the same entry first, its copy is kept (both are the same function of the key)."""
    from safetensors.numpy import save_file

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))
    try:
        save_file(flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))), str(tmp / WEIGHTS_FILE))
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / INFO_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_entry(entry: Path, shape, num_classes: int, settings: Settings) -> tuple[SmallCNN, dict]:
    from safetensors.numpy import load_file

    abstract = nnx.eval_shape(
        lambda: SmallCNN(
            shape[-1], num_classes, widths=settings.widths, feature_dim=settings.feature_dim, rngs=nnx.Rngs(0)
        )
    )
    model = assign_params(abstract, load_file(str(entry / WEIGHTS_FILE)), str(entry / WEIGHTS_FILE))
    return model, json.loads((entry / INFO_FILE).read_text())


def image_classifier(
    cfg: Config,
    task: Task,
    cache_dir: str | Path,
    *,
    source: str | None = None,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    heldout_examples: int = HELDOUT_EXAMPLES,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[SmallCNN, dict]:
    """The classifier of the run's image source (``source``: a name of ``cfg.data.sources``; None =
    the only one that yields images or video): loaded from ``cache_dir`` or trained and cached.

    Returns (model, info); info holds the dataset key, the settings, ``heldout_accuracy``,
    ``train_seconds``, ``heldout_is_train``, ``entry`` (the cache directory) and ``cache_hit``.
    """
    source = resolve_source(task, source)
    settings = Settings(
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        heldout_examples=heldout_examples,
        seed=seed,
    )
    entry = cache_entry(cfg, task, source, settings, cache_dir)
    shape = frame_shape(task.sources[source])
    if (entry / INFO_FILE).is_file():
        model, info = load_entry(entry, shape, cfg.data.num_classes, settings)
        return model, {**info, "entry": str(entry), "cache_hit": True}
    model, metrics = train_classifier(task, source, settings, cfg.data.num_classes, progress)
    info = json.loads(
        json.dumps(
            {
                "dataset": dataset_key(cfg, task, source),  # as it reads back from disk
                "settings": dataclasses.asdict(settings),
                **metrics,
            }
        )
    )
    save_entry(entry, model, info)
    return model, {**info, "entry": str(entry), "cache_hit": False}


def image_feature_extractor(
    cfg: Config, task: Task, cache_dir: str | Path, **kwargs
) -> tuple[FeatureExtractor, dict]:
    """(extract, info): ``extract(images (n, H, W, C) in [-1, 1]) -> (n, 128) float64`` features of
    the run's cached classifier (see :func:`image_classifier` for the keywords and ``info``)."""
    model, info = image_classifier(cfg, task, cache_dir, **kwargs)
    return FeatureExtractor(model, tuple(info["dataset"]["shape"])), info


def image_fd_proxy(extract: Callable[[np.ndarray], np.ndarray], real_images, fake_images) -> float:
    """Fréchet distance between the classifier features of two image sets, (n, H, W, C) and
    (m, H, W, C) in [-1, 1]. Lower is closer; 0 for identical statistics."""
    return float(frechet_from_features(extract(real_images), extract(fake_images)))


def main(argv: list[str] | None = None) -> int:
    """``python -m selfflow.eval.classifier CONFIG --cache-dir DIR``: trains (or loads) the run's
    classifier and prints its info (held-out accuracy, training time) as JSON."""
    import argparse

    from selfflow.config import load_config_file

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("config", help="experiment file (CONFIG = selfflow.config.Config(...))")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--source", default=None)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = load_config_file(args.config, args.set)
    _, info = image_classifier(
        cfg,
        Task(cfg),
        args.cache_dir,
        source=args.source,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def classifier_entry(cfg: Config, cache_dir: str | Path, **kwargs) -> Path:
    """The cache entry of the run's eval classifier (``cfg``'s only image source), trained and cached
    first if missing: what the REPA encoder ``classifier:PATH`` names. ``kwargs``: those of
    :func:`image_classifier` (``steps``, ``batch_size``, ``source`` ...)."""
    _, info = image_classifier(cfg, Task(cfg), cache_dir, **kwargs)
    return Path(info["entry"])
