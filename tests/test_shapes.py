"""Tests for the procedural shapes dataset (pure numpy, no jax)."""

import numpy as np
import pytest

from data_pipelines.shapes import CLASS_COLORS, CLASS_NAMES, NUM_CLASSES, ShapesSource, render_batch


def _stack(source, indices):
    items = [source[i] for i in indices]
    return np.stack([it["image"] for it in items]), np.array([it["label"] for it in items])


def test_class_table():
    assert len(CLASS_NAMES) == NUM_CLASSES == 10
    assert len(set(CLASS_NAMES)) == 10
    assert CLASS_COLORS.shape == (10, 3)
    # Base colours pairwise distinct (RGB distance), so classes differ in colour alone.
    d = np.linalg.norm(CLASS_COLORS[:, None] - CLASS_COLORS[None], axis=-1)
    assert d[~np.eye(10, dtype=bool)].min() > 0.25


def test_determinism():
    a, b = ShapesSource(seed=3), ShapesSource(seed=3)
    for i in (0, 1, 17, 59_999):
        x, y = a[i], b[i]
        np.testing.assert_array_equal(x["image"], y["image"])
        assert x["label"] == y["label"]
    # Repeated access to the same source is also identical (no hidden state).
    np.testing.assert_array_equal(a[5]["image"], a[5]["image"])
    other = ShapesSource(seed=4)
    assert not np.array_equal(a[17]["image"], other[17]["image"])
    assert not np.array_equal(a[17]["image"], a[27]["image"])  # same class, different sample


def test_schema():
    for size in (8, 16, 32):
        src = ShapesSource(num_examples=50, image_size=size)
        assert len(src) == 50
        assert "ShapesSource" in repr(src) and f"image_size={size}" in repr(src)
        for i in range(0, 50, 7):
            ex = src[i]
            assert set(ex) == {"image", "label"}
            img, label = ex["image"], ex["label"]
            assert img.shape == (size, size, 3) and img.dtype == np.float32
            assert -1.0 <= img.min() and img.max() <= 1.0
            assert img.max() - img.min() > 0.5  # a visible shape on a dark background
            assert isinstance(label, np.int32) and 0 <= label < 10
    # numpy integer indices (as a Grain sampler may pass) work too.
    assert ShapesSource()[np.int64(3)]["label"] == ShapesSource()[3]["label"]


def test_render_batch():
    labels = np.arange(20) % 10
    imgs = render_batch(labels, np.random.default_rng(0), image_size=16)
    assert imgs.shape == (20, 16, 16, 3) and imgs.dtype == np.float32
    assert imgs.min() >= -1.0 and imgs.max() <= 1.0
    np.testing.assert_array_equal(imgs, render_batch(labels, np.random.default_rng(0), image_size=16))
    with pytest.raises(ValueError, match="10"):
        render_batch(np.array([10]), np.random.default_rng(0))


def test_balance():
    src = ShapesSource()
    labels = np.array([src[i]["label"] for i in range(1000)])
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10 and np.all(np.abs(counts - 100) <= 20), counts


def test_classes_separable_by_nearest_class_mean():
    src = ShapesSource(num_examples=2500, image_size=16, seed=1)
    x, y = _stack(src, range(2500))
    x = x.reshape(len(x), -1)
    x_train, y_train, x_test, y_test = x[:2000], y[:2000], x[2000:], y[2000:]
    means = np.stack([x_train[y_train == c].mean(0) for c in range(10)])
    pred = np.argmin(((x_test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    acc = (pred == y_test).mean()
    assert acc > 0.8, acc


@pytest.mark.parametrize(
    "kwargs, value",
    [
        ({"num_examples": 0}, "0"),
        ({"num_examples": -5}, "-5"),
        ({"image_size": 7}, "7"),
        ({"image_size": 0}, "0"),
        ({"seed": -1}, "-1"),
    ],
)
def test_bad_constructor_args(kwargs, value):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"{name}.*{value}"):
        ShapesSource(**kwargs)


@pytest.mark.parametrize("index", [10, 11, -1, 1000])
def test_index_out_of_range(index):
    src = ShapesSource(num_examples=10)
    with pytest.raises(IndexError, match=rf"{index}.*10"):
        src[index]
