"""Tests for the classifier-feature Fréchet proxy (selfflow.eval.classifier).

One tiny classifier (40 steps of batch 32 on 16x16 shapes, a few seconds on CPU) is trained per
module into a temporary cache; the tests check that it learns, that its Fréchet distance tells
real images from wrong ones, and that the cache is keyed by the dataset and reused.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from selfflow.config import Config, DataConfig, MeshConfig, SourceConfig
from selfflow.eval import classifier as clf
from selfflow.tasks import Task

STEPS, BATCH, HELDOUT = 40, 32, 512
TINY = dict(steps=STEPS, batch_size=BATCH, heldout_examples=HELDOUT)


def shapes_config(**data) -> Config:
    return Config(data=DataConfig(**{"image_size": 16, **data}), mesh=MeshConfig(data=1))


class StepCounter:
    """The ``progress`` hook: counts training steps (0 means nothing was trained)."""

    def __init__(self):
        self.steps = 0

    def __call__(self, step, loss):
        self.steps += 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(cfg, task, cache dir, extract, info, steps counted) of the tiny shapes classifier."""
    cache = tmp_path_factory.mktemp("eval_cache")
    cfg = shapes_config()
    task = Task(cfg)
    counter = StepCounter()
    extract, info = clf.image_feature_extractor(cfg, task, cache, progress=counter, **TINY)
    return cfg, task, cache, extract, info, counter.steps


def test_classifier_learns_shapes(trained):
    """Chance is 0.10 (10 balanced classes); at 512 held-out images its binomial std is 0.013, so
    0.6 is ~38 std above chance: only a classifier that learnt the classes gets there. Each shape
    class has its own colour, so 40 steps suffice (measured: 0.91; 0.09 after 1 step)."""
    *_, info, steps = trained
    assert steps == STEPS and not info["cache_hit"]
    assert not info["heldout_is_train"]
    assert info["heldout_accuracy"] >= 0.6, info
    assert info["dataset"]["shape"] == [16, 16, 3] and info["dataset"]["num_classes"] == 10


def test_fd_proxy_separates_real_from_wrong_images(trained):
    """Two disjoint real sets are far closer than real vs one class or vs noise (measured: 1.6 vs
    397 and 320). The factor 50 also needs the training: with the classifier after 1 step the
    one-class distance was only 14x the real-real one."""
    _, task, _, extract, _, _ = trained
    real, labels = clf.load_images(task, "shapes", 1024, heldout=True)
    a, b = real[:512], real[512:]  # disjoint held-out sets
    train_images, train_labels = clf.load_images(task, "shapes", 2048, heldout=False)
    one_class = train_images[train_labels == 0]  # ~205 circles
    noise = np.random.default_rng(0).uniform(-1, 1, (512, 16, 16, 3)).astype(np.float32)
    same = clf.image_fd_proxy(extract, a, b)
    to_class = clf.image_fd_proxy(extract, a, one_class)
    to_noise = clf.image_fd_proxy(extract, a, noise)
    assert abs(clf.image_fd_proxy(extract, a, a)) < 1e-6 * max(to_noise, 1.0)
    assert 0 <= same < to_class / 50, (same, to_class)
    assert same < to_noise / 50, (same, to_noise)


def test_extract_shapes_and_errors(trained):
    *_, extract, _, _ = trained
    images = np.zeros((3, 16, 16, 3), np.float32)
    feats = extract(images)
    assert feats.shape == (3, clf.FEATURE_DIM) and feats.dtype == np.float64
    clip = np.zeros((2, 4, 16, 16, 3), np.float32)  # video: scored frame by frame
    assert extract(clip).shape == (8, clf.FEATURE_DIM)
    # values beyond [-1, 1] are clipped, as writing uint8 samples would
    np.testing.assert_array_equal(extract(np.full((1, 16, 16, 3), 5.0)), extract(np.ones((1, 16, 16, 3))))
    with pytest.raises(clf.ClassifierError, match=r"expected \(n, 16, 16, 3\)"):
        extract(np.zeros((3, 28, 28, 1), np.float32))
    with pytest.raises(clf.ClassifierError, match="NaN"):
        extract(np.full((1, 16, 16, 3), np.nan, np.float32))


def test_cache_is_reused_and_keyed_by_dataset(trained, monkeypatch):
    cfg, task, cache, extract, info, _ = trained

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded, not retrained")

    with monkeypatch.context() as m:
        m.setattr(clf, "train_classifier", no_training)
        counter = StepCounter()
        again, info2 = clf.image_feature_extractor(cfg, Task(cfg), cache, progress=counter, **TINY)
    assert info2["cache_hit"] and counter.steps == 0 and info2["entry"] == info["entry"]
    assert info2["heldout_accuracy"] == info["heldout_accuracy"]
    images, _ = clf.load_images(task, "shapes", 64)
    np.testing.assert_array_equal(again(images), extract(images))

    other = shapes_config(num_examples=1000)  # another shapes dataset: its own classifier
    counter = StepCounter()
    _, info3 = clf.image_feature_extractor(other, Task(other), cache, progress=counter, **TINY)
    assert counter.steps == STEPS and not info3["cache_hit"] and info3["entry"] != info["entry"]


def test_dataset_key_fields():
    """The key changes with what defines the images, not with how the generator is trained."""
    base = shapes_config()
    key = clf.dataset_key(base, Task(base), "shapes")
    for changed in (
        shapes_config(image_size=8),
        shapes_config(num_examples=500),
        dataclasses.replace(base, seed=1),
    ):
        assert clf.dataset_key(changed, Task(changed), "shapes") != key
    # (12 classes is not a valid shapes run, so its task is the base's)
    assert clf.dataset_key(shapes_config(num_classes=12), Task(base), "shapes") != key
    same = dataclasses.replace(
        base,
        train=dataclasses.replace(base.train, batch_size=8, steps=3),
        optim=dataclasses.replace(base.optim, learning_rate=0.1),
    )
    assert clf.dataset_key(same, Task(same), "shapes") == key
    named = Config(
        data=DataConfig(image_size=16, sources=(SourceConfig("other_name", "shapes", weight=2.0),)),
        mesh=MeshConfig(data=1),
    )
    assert clf.dataset_key(named, Task(named), "other_name") == key


def test_world_frames_are_images():
    """Video sources are classified frame by frame: each clip gives T images with its label."""
    cfg = Config(
        data=DataConfig(source="world", image_size=16, num_classes=3, num_examples=64),
        mesh=MeshConfig(data=1),
    )
    task = Task(cfg)
    frames = task.sources["world"].schema["video"].shape[0]
    batch = clf.image_batches(task, "world", 2 * frames, seed=0)[0]
    assert batch["image"].shape == (2 * frames, 16, 16, 3)
    assert np.all(batch["label"].reshape(2, frames) == batch["label"][::frames, None])
    key = clf.dataset_key(cfg, task, "world")
    assert key["key"] == "video" and key["frames"] == frames


def test_source_must_yield_images():
    cfg = shapes_config()
    with pytest.raises(clf.ClassifierError, match="yields no images"):
        clf.resolve_source(Task(cfg), "nope")
