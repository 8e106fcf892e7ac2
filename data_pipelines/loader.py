"""Grain pipelines from a data config to a resumable iterator of training batches.

Batch ``n`` of a run is a pure function of (seed, n): the source is shuffled with a seed,
reshuffled every epoch, repeated and batched as a random-access ``grain.MapDataset``, then read
by a threaded, prefetching iterator whose state (``{"next_index": n}``) is saved in each
checkpoint. A resumed run therefore gets exactly the batch an uninterrupted run would have got.
"""

from __future__ import annotations

import grain

from data_pipelines.shapes import ShapesSource


def build_source(data_cfg, seed: int):
    """The random-access source named by ``data.source``; items are {"image", "label"}."""
    if data_cfg.source == "shapes":
        return ShapesSource(num_examples=data_cfg.num_examples, image_size=data_cfg.image_size,
                            seed=seed)
    raise ValueError(f"data.source={data_cfg.source!r}: expected 'shapes'")


def batched_dataset(source, batch_size: int, seed: int, transform=None) -> grain.MapDataset:
    """Infinite MapDataset whose element n is the n-th batch (each example optionally mapped by
    ``transform`` first), reshuffled every epoch with ``seed``."""
    ds = grain.MapDataset.source(source)
    if transform is not None:
        ds = ds.map(transform)
    return ds.shuffle(seed=seed).repeat().batch(batch_size, drop_remainder=True)


def batch_iterator(dataset: grain.MapDataset, *, start: int = 0, read_threads: int = 2,
                   prefetch: int = 4) -> grain.DatasetIterator:
    """Threaded, prefetching iterator positioned at batch ``start``; has get_state/set_state."""
    iterator = iter(dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)))
    if start:
        iterator.set_state({"next_index": start})
    return iterator
