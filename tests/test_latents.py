"""Tests for pre-computed examples on disk (data_pipelines.latents): prepare -> LatentSource."""

import json
import os
import pickle

import grain
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from data_pipelines import latents
from data_pipelines.base import BadSampleError, Field, SourceError
from data_pipelines.latents import LatentSource, decode_example, encode_example, prepare


class TinySource:
    """``n`` examples: image (4, 4, 3) float32 = i + arange/100, label int32 = 10 * i;
    example ``bad`` (if given) raises BadSampleError naming "f<bad>.png"."""

    schema = {"image": Field((4, 4, 3), "float32"), "label": Field((), "int32")}

    def __init__(self, n=10, bad=None):
        self.n, self.bad = n, bad

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            raise BadSampleError(self.where(i), "bad")
        return self.expected(i)

    @staticmethod
    def expected(i):
        image = (i + np.arange(48, dtype=np.float32).reshape(4, 4, 3) / 100).astype(np.float32)
        return {"image": image, "label": np.int32(10 * i)}

    def where(self, i):
        return f"f{i}.png"

    def __repr__(self):
        return f"TinySource(n={self.n}, bad={self.bad})"


def _assert_same(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == np.asarray(b[k]).dtype and a[k].shape == np.shape(b[k]), k
        assert a[k].tobytes() == np.asarray(b[k]).tobytes(), k  # bit-identical


def test_record_roundtrip():
    ex = {
        "image": np.random.default_rng(0).standard_normal((16, 16, 3)).astype(np.float32),
        "label": np.int32(7),
        "mask": np.array([True, False]),
        "big": np.arange(3, dtype=">i8"),
        "empty": np.zeros((0, 5), np.float16),
    }
    out = decode_example(encode_example(ex))
    _assert_same(out, ex)
    out["image"][0, 0, 0] = 1.0  # decoded arrays are writable copies
    with pytest.raises(ValueError, match="unsupported dtype"):
        encode_example({"x": np.array(["a"], dtype=object)})
    record = encode_example(ex)
    for bad in (b"", b"XXXX" + record[4:], record[:-1], record + b"\0", record[:12]):
        with pytest.raises(ValueError):
            decode_example(bad)


def test_prepare_and_read_back(tmp_path):
    src = TinySource()
    manifest = prepare(src, tmp_path, name="tiny", modality="image", shard_size=4)
    files = [f"tiny-{i:05d}-of-00003.array_record" for i in range(3)]
    assert manifest["count"] == 10
    assert manifest["shards"] == [{"file": f, "count": c} for f, c in zip(files, (4, 4, 2))]
    assert manifest["schema"] == {
        "image": {"shape": [4, 4, 3], "dtype": "float32"},
        "label": {"shape": [], "dtype": "int32"},
    }
    assert manifest["name"] == "tiny" and manifest["modality"] == "image"
    assert manifest["format_version"] == latents.FORMAT_VERSION
    assert manifest["source"] == repr(src) and manifest["created"]
    assert manifest["num_skipped"] == 0 and manifest["skipped"] == []
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert sorted(os.listdir(tmp_path)) == sorted(files + ["manifest.json"])  # no temp files left
    for f, c in zip(files, (4, 4, 2)):
        reader = ArrayRecordReader(str(tmp_path / f))
        assert reader.num_records() == c and "group_size:1," in reader.writer_options_string()
        reader.close()

    ls = LatentSource(tmp_path)
    assert len(ls) == 10 and ls.modality == "image" and ls.manifest == manifest
    assert ls.schema == TinySource.schema
    for i in range(10):
        _assert_same(ls[i], TinySource.expected(i))
    assert ls.where(0) == f"{tmp_path / files[0]}#0"
    assert ls.where(5) == f"{tmp_path / files[1]}#1"
    assert ls.where(9) == f"{tmp_path / files[2]}#1"
    with pytest.raises(IndexError):
        ls[10]

    # Grain reads it like any source.
    batch = next(iter(grain.MapDataset.source(ls).batch(3)))
    np.testing.assert_array_equal(batch["label"], [0, 10, 20])


def test_encode_and_limit(tmp_path):
    def encode(ex):
        return {"latent": ex["image"][::2, ::2].astype(np.float16) * 2, "label": ex["label"]}

    manifest = prepare(
        TinySource(), tmp_path, name="enc", modality="image", encode=encode, limit=5, shard_size=100
    )
    assert manifest["count"] == 5 and len(manifest["shards"]) == 1 and manifest["limit"] == 5
    assert manifest["schema"]["latent"] == {"shape": [2, 2, 3], "dtype": "float16"}
    ls = LatentSource(tmp_path)
    for i in range(5):
        _assert_same(ls[i], encode(TinySource.expected(i)))


def test_skip_bad_sample(tmp_path):
    manifest = prepare(
        TinySource(bad=3), tmp_path, name="tiny", modality="image", shard_size=4, on_bad_sample="skip"
    )
    assert manifest["count"] == 9 and [s["count"] for s in manifest["shards"]] == [4, 4, 1]
    assert manifest["num_skipped"] == 1
    assert manifest["skipped"] == [{"index": 3, "where": "f3.png", "reason": "bad"}]
    ls = LatentSource(tmp_path)
    assert [int(ls[i]["label"]) for i in range(9)] == [0, 10, 20, 40, 50, 60, 70, 80, 90]


def test_error_bad_sample(tmp_path):
    with pytest.raises(BadSampleError, match="f3.png"):
        prepare(TinySource(bad=3), tmp_path, name="tiny", modality="image", shard_size=4)
    assert sorted(os.listdir(tmp_path)) == []  # temp shards removed, no manifest


def test_example_unlike_first(tmp_path):
    def encode(ex):  # example 6 has a different shape, example 8 a different dtype
        i = int(ex["label"]) // 10
        if i == 6:
            ex["image"] = ex["image"][:2]
        if i == 8:
            ex["label"] = ex["label"].astype(np.int64)
        return ex

    with pytest.raises(BadSampleError, match=r"f6\.png.*'image'"):
        prepare(TinySource(), tmp_path, name="t", modality="image", encode=encode)
    manifest = prepare(
        TinySource(), tmp_path, name="t", modality="image", encode=encode, on_bad_sample="skip"
    )
    assert manifest["count"] == 8 and [s["where"] for s in manifest["skipped"]] == ["f6.png", "f8.png"]


def test_interrupted_prepare_leaves_no_manifest(tmp_path):
    prepare(TinySource(), tmp_path, name="tiny", modality="image", shard_size=4)
    assert (tmp_path / "manifest.json").exists()

    def encode(ex):
        if int(ex["label"]) == 70:
            raise RuntimeError("encoder crashed")
        return ex

    with pytest.raises(RuntimeError, match="encoder crashed"):
        prepare(TinySource(), tmp_path, name="tiny", modality="image", shard_size=4, encode=encode)
    assert not (tmp_path / "manifest.json").exists()  # the old one is gone too
    assert not any(p.name.endswith((".partial", ".tmp")) for p in tmp_path.iterdir())
    with pytest.raises(SourceError, match="manifest.json"):
        LatentSource(tmp_path)


def test_reprepare_replaces_old_shards(tmp_path):
    prepare(TinySource(), tmp_path, name="tiny", modality="image", shard_size=2)  # 5 shards
    prepare(TinySource(), tmp_path, name="tiny", modality="image", shard_size=4)  # 3 shards
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".array_record"]) == 3
    assert len(LatentSource(tmp_path)) == 10


def test_missing_shard(tmp_path):
    prepare(TinySource(), tmp_path, name="tiny", modality="image", shard_size=4)
    (tmp_path / "tiny-00001-of-00003.array_record").unlink()
    with pytest.raises(SourceError, match="tiny-00001-of-00003.array_record.*missing"):
        LatentSource(tmp_path)


@pytest.mark.parametrize("keep", ["half", "64k", "100"])
def test_truncated_shard(tmp_path, keep):
    prepare(TinySource(), tmp_path, name="tiny", modality="image", shard_size=4)
    shard = tmp_path / "tiny-00002-of-00003.array_record"
    data = shard.read_bytes()
    shard.write_bytes(data[: {"half": len(data) // 2, "64k": 65536, "100": 100}[keep]])
    with pytest.raises(SourceError, match="tiny-00002-of-00003.array_record"):
        LatentSource(tmp_path)


def test_shard_count_mismatch(tmp_path):
    manifest = prepare(TinySource(), tmp_path, name="tiny", modality="image", shard_size=4)
    manifest["shards"][0]["count"] = 3
    manifest["shards"][1]["count"] = 5
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SourceError, match="tiny-00000-of-00003.array_record.*3"):
        LatentSource(tmp_path)


@pytest.mark.parametrize(
    "change", ["invalid_json", "version", "missing_key", "count", "not_object", "path_escape"]
)
def test_corrupted_manifest(tmp_path, change):
    manifest = prepare(TinySource(), tmp_path, name="tiny", modality="image", shard_size=4)
    path = tmp_path / "manifest.json"
    if change == "invalid_json":
        path.write_text(path.read_text()[:-20])
    else:
        if change == "version":
            manifest["format_version"] = 99
        elif change == "missing_key":
            del manifest["schema"]
        elif change == "count":
            manifest["count"] = 11
        elif change == "not_object":
            manifest = [manifest]
        elif change == "path_escape":
            manifest["shards"][0]["file"] = "../elsewhere.array_record"
        path.write_text(json.dumps(manifest))
    with pytest.raises(SourceError, match="manifest.json"):
        LatentSource(tmp_path)


def test_missing_manifest(tmp_path):
    with pytest.raises(SourceError, match="manifest.json"):
        LatentSource(tmp_path / "nowhere")


def test_corrupt_record(tmp_path):
    prepare(TinySource(), tmp_path, name="tiny", modality="image", shard_size=4)
    shard = tmp_path / "tiny-00001-of-00003.array_record"

    # A flipped byte inside record 2 of shard 1 (example 6): the chunk checksum catches it.
    data = bytearray(shard.read_bytes())
    at = data.find(TinySource.expected(6)["image"].tobytes())
    assert at >= 0  # shards are uncompressed
    data[at + 5] ^= 0xFF
    shard.write_bytes(bytes(data))
    ls = LatentSource(tmp_path)
    with pytest.raises(BadSampleError, match=r"tiny-00001-of-00003\.array_record#2"):
        ls[6]
    _assert_same(ls[5], TinySource.expected(5))  # its neighbours still read

    # A valid container whose record 1 is not a record of ours.
    writer = ArrayRecordWriter(str(shard), latents.WRITER_OPTIONS)
    for i in range(4, 8):
        writer.write(b"garbage" if i == 5 else encode_example(TinySource.expected(i)))
    writer.close()
    ls = LatentSource(tmp_path)
    with pytest.raises(BadSampleError, match=r"tiny-00001-of-00003\.array_record#1.*corrupt"):
        ls[5]
    _assert_same(ls[6], TinySource.expected(6))


def test_pickle(tmp_path, monkeypatch):
    prepare(TinySource(), tmp_path / "data", name="tiny", modality="image", shard_size=4)
    monkeypatch.chdir(tmp_path)
    ls = LatentSource("data")  # relative path: the copy must not depend on the cwd
    _assert_same(ls[1], TinySource.expected(1))  # readers open before pickling
    monkeypatch.chdir("/")
    copy = pickle.loads(pickle.dumps(ls))
    assert len(copy) == 10 and copy.schema == ls.schema and copy.manifest == ls.manifest
    for i in (9, 0, 5):
        _assert_same(copy[i], TinySource.expected(i))


def test_bad_arguments(tmp_path):
    for kwargs in (
        {"name": "a/b"},
        {"name": ""},
        {"shard_size": 0},
        {"on_bad_sample": "ignore"},
        {"limit": -1},
        {"modality": ""},
    ):
        args = {"name": "tiny", "modality": "image", **kwargs}
        with pytest.raises(ValueError):
            prepare(TinySource(), tmp_path, **args)
    with pytest.raises(SourceError, match="no example"):
        prepare(TinySource(), tmp_path, name="tiny", modality="image", limit=0)
