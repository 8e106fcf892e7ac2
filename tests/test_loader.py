"""Grain pipeline: batch n is a pure function of (seed, n); iterators resume at any batch, also
with worker processes; hosts get disjoint shards; mixtures follow their weights; bad examples
stop the pipeline naming the file, or are replaced and counted."""

import pickle

import numpy as np
import pytest

from data_pipelines import loader
from data_pipelines.base import BadSampleError, Field
from data_pipelines.guard import GuardedSource, KnownBad
from data_pipelines.shapes import ShapesSource


class Numbered:
    """Example i is {"x": [i, i], "label": i}; examples in ``bad`` raise BadSampleError."""

    schema = {"x": Field((2,), "float32"), "label": Field((), "int32")}

    def __init__(self, n, bad=(), offset=0):
        self.n, self.bad, self.offset = n, set(bad), offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise BadSampleError(self.where(i), "truncated file")
        return {"x": np.full(2, self.offset + i, np.float32), "label": np.int32(self.offset + i)}

    def where(self, i):
        return f"/data/clip_{i}.mp4"


def _dataset(seed=0, batch=8):
    return loader.batched_dataset(
        ShapesSource(num_examples=20, image_size=8, seed=seed), batch, seed, shard=(0, 1)
    )


def test_iterator_started_at_k_yields_batch_k_and_reports_its_position():
    ds = _dataset()
    it = loader.BatchIterator(ds, start=5, read_threads=2, prefetch=2)
    for k in (5, 6, 7):
        batch = next(it)
        np.testing.assert_array_equal(batch["image"], ds[k]["image"])
        np.testing.assert_array_equal(batch["label"], ds[k]["label"])
    assert it.get_state()["next_index"] == 8


def test_worker_processes_give_the_same_batches_and_resume():
    ds = loader.batched_dataset(Numbered(30), 4, seed=3, shard=(0, 1))
    it = loader.BatchIterator(ds, start=0, worker_count=2)
    first = [next(it)["label"] for _ in range(6)]
    state = it.get_state()
    it.close()
    resumed = loader.BatchIterator(ds, start=state["next_index"], worker_count=2)
    nxt = next(resumed)["label"]
    resumed.close()
    for k, labels in enumerate(first):
        np.testing.assert_array_equal(labels, ds[k]["label"])
    assert state == {"next_index": 6}
    np.testing.assert_array_equal(nxt, ds[6]["label"])


def test_epochs_are_reshuffled_and_seed_changes_order():
    ds = _dataset(batch=20)  # one batch = one epoch of 20 examples
    first, second = ds[0]["label"], ds[1]["label"]
    assert sorted(first) == sorted(second) and not np.array_equal(first, second)
    assert not np.array_equal(_dataset(seed=1, batch=20)[0]["label"], first)


def test_batch_has_the_schema_the_trainer_expects():
    batch = _dataset()[0]
    assert batch["image"].shape == (8, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    np.testing.assert_array_equal(batch["skipped"], np.zeros(8))


def test_two_hosts_see_disjoint_shards_that_cover_the_source():
    n = 23
    seen = []
    for host in range(2):
        stream = loader.example_stream(Numbered(n), seed=5, shard=(host, 2))
        per_epoch = (n - host + 1) // 2  # host 0 gets 12 examples, host 1 gets 11
        seen.append([int(stream[i]["label"]) for i in range(per_epoch)])
        assert len(set(seen[-1])) == per_epoch
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(n))


def test_mixture_follows_weights_and_is_deterministic():
    streams = [
        loader.example_stream(Numbered(50), 0, shard=(0, 1)),
        loader.example_stream(Numbered(50, offset=1000), 1, shard=(0, 1)),
    ]
    ds = loader.mixed_batches(streams, [3.0, 1.0], batch_size=40)
    labels = np.concatenate([ds[k]["label"] for k in range(10)])
    share = np.mean(labels >= 1000)
    assert share == pytest.approx(0.25, abs=0.03)
    again = loader.mixed_batches(streams, [3.0, 1.0], batch_size=40)
    np.testing.assert_array_equal(again[7]["label"], ds[7]["label"])


def test_bad_example_raises_naming_the_file():
    ds = loader.batched_dataset(Numbered(10, bad={4}), 10, 0, shard=(0, 1))
    with pytest.raises(BadSampleError, match=r"/data/clip_4\.mp4: truncated file.*on_bad_sample=skip"):
        ds[0]


def test_skip_replaces_bad_examples_counts_and_logs_them(caplog):
    src = GuardedSource(Numbered(10, bad={4, 5}), "skip", name="clips")
    with caplog.at_level("WARNING"):
        example = src[4]
    assert int(example["label"]) == 6 and int(example["skipped"]) == 2  # 4 and 5 passed over
    assert "/data/clip_4.mp4" in caplog.text and "/data/clip_5.mp4" in caplog.text
    ds = loader.batched_dataset(Numbered(10, bad={4, 5}), 10, 0, on_bad_sample="skip", shard=(0, 1))
    batch = ds[0]
    assert int(batch["skipped"].sum()) == 3  # examples 4 (two bad files) and 5 (one)
    assert 4 not in batch["label"] and 5 not in batch["label"]


class Counting(Numbered):
    """Numbered that counts how often each example is read (decoded)."""

    def __init__(self, n, bad=()):
        super().__init__(n, bad)
        self.reads = {}

    def __getitem__(self, i):
        self.reads[i] = self.reads.get(i, 0) + 1
        return super().__getitem__(i)


BAD = {1, 3, 5, 6}  # of 8: per epoch, examples 1, 3 and 6 pass over one bad file, 5 over two


def _skipping(source, seed=2):
    """Batches of 4 of an 8-example source: one epoch every 2 batches."""
    return loader.batched_dataset(source, 4, seed, on_bad_sample="skip", shard=(0, 1))


def test_skip_logs_and_decodes_each_bad_file_once_but_counts_every_replacement(caplog):
    """Over 15 epochs the 4 bad files are decoded and logged once each (not once per epoch), and
    ``skipped`` still counts all 15 x 5 replacements."""
    source = Counting(8, bad=BAD)
    ds = _skipping(source)
    with caplog.at_level("WARNING", logger="data_pipelines.guard"):
        batches = [ds[k] for k in range(30)]
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 4, logged
    for i in BAD:
        assert sum(f"/data/clip_{i}.mp4" in m for m in logged) == 1
        assert source.reads[i] == 1
    assert sum(int(b["skipped"].sum()) for b in batches) == 15 * 5
    assert not BAD & set(np.concatenate([b["label"] for b in batches]).tolist())


def test_known_bad_files_do_not_change_the_batches_of_a_resumed_run():
    """The replacement is a function of the index alone: batches read after every bad file is known
    (a long run) equal those of a fresh pipeline started there (a resume), in this process and in
    worker processes (each with its own, empty, memory)."""
    warm = _skipping(Counting(8, bad=BAD))
    straight = [warm[k] for k in range(30)]
    for k in (0, 7, 29):
        cold = _skipping(Counting(8, bad=BAD))[k]
        for key in ("x", "label", "skipped"):
            np.testing.assert_array_equal(cold[key], straight[k][key])
    it = loader.BatchIterator(warm, start=25, worker_count=2)  # workers: their own memory
    try:
        for k in range(25, 30):
            batch = next(it)
            for key in ("x", "label", "skipped"):
                np.testing.assert_array_equal(batch[key], straight[k][key])
    finally:
        it.close()


def test_guards_of_one_source_share_what_they_know():
    """A run's layouts and its validation read one source through several guards sharing one
    KnownBad: the second guard neither decodes nor logs the file again; a pickled copy (a worker
    process) starts empty."""
    source, known = Counting(8, bad=BAD), KnownBad()
    for _ in range(2):
        assert int(GuardedSource(source, "skip", known_bad=known)[5]["skipped"]) == 2
    assert known.indices == {5, 6} and source.reads == {5: 1, 6: 1, 7: 2}
    assert pickle.loads(pickle.dumps(known)).indices == set()


def test_skip_gives_up_when_everything_is_bad():
    with pytest.raises(BadSampleError, match="all bad"):
        GuardedSource(Numbered(5, bad=range(5)), "skip")[0]


def test_bad_policy_name_is_rejected():
    with pytest.raises(ValueError, match="on_bad_sample='ignore'"):
        GuardedSource(Numbered(3), "ignore")


def test_worker_processes_work_without_parsed_absl_flags(tmp_path):
    """The CLI does not parse absl flags; grain 0.2.18's workers need them marked parsed."""
    import subprocess
    import sys

    code = (
        "from data_pipelines import loader\n"
        "from data_pipelines.shapes import ShapesSource\n"
        "ds = loader.batched_dataset(ShapesSource(16, 8), 4, 0, shard=(0, 1))\n"
        "it = loader.BatchIterator(ds, worker_count=2)\n"
        "print(sorted(next(it)['label'].tolist()) == sorted(ds[0]['label'].tolist()))\n"
        "it.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]
