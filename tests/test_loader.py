"""Grain pipeline: batch n is a pure function of (seed, n); iterators resume at any batch."""

import numpy as np
import pytest

from data_pipelines import loader
from selfflow.config import DataConfig


def _dataset(seed=0, batch=8):
    return loader.batched_dataset(loader.build_source(DataConfig(image_size=8, num_examples=20), seed),
                                  batch, seed)


def test_iterator_started_at_k_yields_batch_k_and_reports_its_position():
    ds = _dataset()
    it = loader.batch_iterator(ds, start=5, read_threads=2, prefetch=2)
    for k in (5, 6, 7):
        batch = next(it)
        np.testing.assert_array_equal(batch["image"], ds[k]["image"])
        np.testing.assert_array_equal(batch["label"], ds[k]["label"])
    assert it.get_state()["next_index"] == 8


def test_epochs_are_reshuffled_and_seed_changes_order():
    ds = _dataset(batch=20)  # one batch = one epoch of 20 examples
    first, second = ds[0]["label"], ds[1]["label"]
    assert sorted(first) == sorted(second) and not np.array_equal(first, second)
    assert not np.array_equal(_dataset(seed=1, batch=20)[0]["label"], first)


def test_batch_has_the_schema_the_trainer_expects():
    batch = _dataset()[0]
    assert batch["image"].shape == (8, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="data.source='nope'"):
        loader.build_source(DataConfig(source="nope"), 0)  # type: ignore[arg-type]
