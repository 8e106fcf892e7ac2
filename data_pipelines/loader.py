"""Grain pipelines: sources -> per-host shards -> seeded shuffle -> mixture -> batches -> iterator.

Batch ``n`` of a run is a pure function of (seed, n): each source is wrapped in the bad-sample
policy (:mod:`.guard`), cut to this host's shard (``shard_index::shard_count``, by default
``jax.process_index()::jax.process_count()``, the role of Grain's ``ShardByJaxProcess``),
shuffled with its seed and reshuffled every epoch, repeated, mixed with the other sources of the
layout in proportion to their weights (``MapDataset.mix``, a fixed interleaving) and batched -
all as a random-access ``grain.MapDataset``. :class:`BatchIterator` reads it from batch ``start``
with threads and prefetch, or with worker processes; its state (``{"next_index": n}``) is saved in
each checkpoint, so a resumed run gets exactly the batch an uninterrupted run would have got.
"""

from __future__ import annotations

import grain

from data_pipelines.guard import GuardedSource, KnownBad


def host_shard() -> tuple[int, int]:
    """(index, count) of this process among the JAX processes."""
    import jax

    return jax.process_index(), jax.process_count()


def example_stream(
    source,
    seed: int,
    *,
    on_bad_sample: str = "error",
    name: str = "",
    shard: tuple[int, int] | None = None,
    known_bad: KnownBad | None = None,
) -> grain.MapDataset:
    """Infinite MapDataset of this host's examples of ``source``, reshuffled every epoch.

    Each example gains ``skipped`` (see :mod:`.guard`; ``known_bad`` shares the memory of bad
    files with other streams of the same source). The shard is taken before shuffling, so hosts
    see disjoint examples that together cover the source.
    """
    index, count = shard or host_shard()
    ds = grain.MapDataset.source(GuardedSource(source, on_bad_sample, name, known_bad))
    if count > 1:
        if len(ds) < count:
            raise ValueError(f"source {name!r} has {len(ds)} examples, fewer than the {count} hosts")
        ds = ds[index::count]
    return ds.shuffle(seed=seed).repeat()


def mixed_batches(streams, weights, batch_size: int) -> grain.MapDataset:
    """Batches of a weighted mixture of example streams (one stream: no mixing)."""
    if len(streams) > 1:
        if sum(weights) <= 0:
            raise ValueError(f"mixture weights {list(weights)} sum to 0")
        ds = grain.MapDataset.mix(list(streams), [float(w) for w in weights])
    else:
        ds = streams[0]
    return ds.batch(batch_size, drop_remainder=True)


def batched_dataset(
    source, batch_size: int, seed: int, *, on_bad_sample: str = "error", shard: tuple[int, int] | None = None
) -> grain.MapDataset:
    """Infinite MapDataset whose element n is the n-th batch of one source."""
    return mixed_batches(
        [example_stream(source, seed, on_bad_sample=on_bad_sample, shard=shard)], [1.0], batch_size
    )


def _mark_flags_parsed() -> None:
    """grain 0.2.18 reads absl flags in its worker processes and fails with
    ``UnparsedFlagAccessError`` unless they were parsed (fixed upstream in google/grain#1361)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _one_blas_thread(worker_index: int, worker_count: int) -> None:
    """Worker processes already run in parallel; BLAS threads inside each oversubscribe the
    cores (measured: the world's log-mel ran at ~230 examples/s in 2 workers with OpenBLAS
    threads, ~790 with one)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


class BatchIterator:
    """Reads a batched MapDataset from batch ``start``: ``read_threads`` threads and ``prefetch``
    batches ahead, or ``worker_count`` worker processes. ``get_state()`` is the position of the
    next batch; the trainer checkpoints it and resumes with ``start``."""

    def __init__(
        self,
        dataset: grain.MapDataset,
        *,
        start: int = 0,
        read_threads: int = 2,
        prefetch: int = 4,
        worker_count: int = 0,
    ):
        self.next_index = start
        it = dataset[start:].to_iter_dataset(
            grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
        )
        if worker_count > 0:
            _mark_flags_parsed()
            it = it.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=worker_count), worker_init_fn=_one_blas_thread
            )
        self._it = iter(it)

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        self.next_index += 1
        return batch

    def get_state(self) -> dict:
        return {"next_index": self.next_index}

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close:
            close()
