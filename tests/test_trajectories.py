"""Tests for episode files, TrajectorySource windows, and the scripted PushT expert."""

import logging
import re
import zipfile

import h5py
import numpy as np
import pytest

from data_pipelines.base import BadSampleError, SourceError
from data_pipelines.trajectories import TrajectorySource, write_episode


def _episode(length, h=6, w=5, p=3, a=2, offset=0):
    """Known values: frames[t, y, x, c] = (offset + 7t + 3y + x + c) % 256, proprio[t] = t + 0.5 * j,
    actions[t] = -t - 0.25 * j (+ offset)."""
    t, y, x, c = np.meshgrid(np.arange(length), np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    frames = ((offset + 7 * t + 3 * y + x + c) % 256).astype(np.uint8)
    proprio = (np.arange(length)[:, None] + 0.5 * np.arange(p) + offset).astype(np.float32)
    actions = (-np.arange(length)[:, None] - 0.25 * np.arange(a) + offset).astype(np.float32)
    return frames, proprio, actions


def _write_raw(path, **arrays):
    """An episode file written without write_episode's checks (for bad inputs)."""
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v)
    return path


@pytest.fixture
def mixed_root(tmp_path):
    """Three episodes: npz (L=10, label 4), h5 (L=7, no label), hdf5 (L=3: shorter than window)."""
    specs = [("a.npz", 10, 4), ("b.h5", 7, None), ("c.hdf5", 3, 1)]
    for i, (name, length, label) in enumerate(specs):
        write_episode(tmp_path / name, *_episode(length, offset=10 * i), success=i % 2 == 0, label=label)
    return tmp_path


# ----------------------------------------------------------------------------- writing / reading


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".hdf5"])
def test_write_episode_round_trip(tmp_path, suffix):
    frames, proprio, actions = _episode(5)
    path = write_episode(
        tmp_path / f"ep{suffix}",
        frames,
        proprio.astype(np.float64),
        actions,
        success=True,
        label=3,
        extra={"reward": np.arange(5.0)},
    )
    if suffix == ".npz":
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        with zipfile.ZipFile(path) as zf:  # stored, so windows can be read by offset
            assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    else:
        with h5py.File(path, "r") as f:
            data = {k: f[k][()] for k in f}
    np.testing.assert_array_equal(data["frames"], frames)
    np.testing.assert_array_equal(data["proprio"], proprio)
    assert data["proprio"].dtype == np.float32 and data["actions"].dtype == np.float32
    assert bool(data["success"]) is True and int(data["label"]) == 3
    np.testing.assert_array_equal(data["reward"], np.arange(5.0))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"frames": np.zeros((4, 6, 5, 3), np.float32)}, "uint8"),
        ({"frames": np.zeros((4, 6, 5), np.uint8)}, "uint8"),
        ({"proprio": np.zeros((3, 3))}, "steps"),
        ({"actions": np.full((4, 2), np.nan)}, "non-finite"),
        ({"label": 1.5}, "label"),
    ],
)
def test_write_episode_rejects_bad_input(tmp_path, kwargs, match):
    frames, proprio, actions = _episode(4)
    args = {"frames": frames, "proprio": proprio, "actions": actions, **kwargs}
    with pytest.raises(ValueError, match=match):
        write_episode(tmp_path / "ep.npz", **args)
    with pytest.raises(ValueError, match="end in"):
        write_episode(tmp_path / "ep.pkl", *_episode(4))


def test_windows_have_exact_values(mixed_root, caplog):
    window, stride = 3, 2
    with caplog.at_level(logging.WARNING):
        src = TrajectorySource(mixed_root, window=window, stride=stride)
    # a: L=10 -> starts 0,2,4,6 (4); b: L=7 -> 0,2,4 (3); c: L=3 -> 0 (1).
    assert len(src) == sum((n - window) // stride + 1 for n in (10, 7, 3)) == 8
    assert src.table.tolist() == [[0, 0], [0, 2], [0, 4], [0, 6], [1, 0], [1, 2], [1, 4], [2, 0]]
    assert src.skipped_short == [] and src.bad_episodes == []
    assert {k: (f.shape, f.dtype) for k, f in src.schema.items()} == {
        "image": ((6, 5, 3), "float32"),
        "video": ((3, 6, 5, 3), "float32"),
        "proprio": ((3, 3), "float32"),
        "actions": ((3, 2), "float32"),
        "label": ((), "int32"),
    }
    for i, (e, start) in enumerate(src.table):
        frames, proprio, actions = _episode((10, 7, 3)[e], offset=10 * e)
        sl = slice(start, start + window)
        x = src[i]
        assert set(x) == {"image", "video", "proprio", "actions", "label"}
        for k, f in src.schema.items():
            assert x[k].shape == f.shape and x[k].dtype == f.dtype, k
        np.testing.assert_array_equal(x["video"], frames[sl].astype(np.float32) / 127.5 - 1.0)
        np.testing.assert_array_equal(x["image"], x["video"][0])  # the observation a policy sees
        np.testing.assert_array_equal(x["proprio"], proprio[sl])
        np.testing.assert_array_equal(x["actions"], actions[sl])
        assert int(x["label"]) == (4, 0, 1)[e]
        assert src.where(i) == f"{mixed_root / ('a.npz', 'b.h5', 'c.hdf5')[e]}[{start}:{start + window}]"
    assert src[0]["video"].min() == -1.0 and src[0]["video"].max() <= 1.0


def test_short_episodes_are_skipped_and_logged(mixed_root, caplog):
    with caplog.at_level(logging.WARNING):
        src = TrajectorySource(mixed_root, window=4)
    assert src.skipped_short == [(mixed_root / "c.hdf5", 3)]
    assert "shorter than window=4" in caplog.text and "c.hdf5" in caplog.text
    assert len(src) == (10 - 4 + 1) + (7 - 4 + 1)
    with pytest.raises(SourceError, match="no usable episode"):
        TrajectorySource(mixed_root, window=11)


def test_resize_and_determinism(mixed_root):
    from PIL import Image

    src = TrajectorySource(mixed_root, window=2, image_size=4, stride=3)
    again = TrajectorySource(mixed_root, window=2, image_size=4, stride=3)
    assert src.schema["video"].shape == (2, 4, 4, 3) and len(src) == len(again) == 3 + 2 + 1
    frames = _episode(10)[0]
    expected = np.stack([np.asarray(Image.fromarray(f).resize((4, 4), Image.BILINEAR)) for f in frames[:2]])
    np.testing.assert_array_equal(src[0]["video"], expected / np.float32(127.5) - 1.0)
    for i in range(len(src)):
        a, b = src[i], again[i]
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # image_size equal to the frame size: no resizing, same as None (square frames).
    root = mixed_root / "square"
    write_episode(root / "s.npz", *_episode(4, h=5, w=5))
    np.testing.assert_array_equal(
        TrajectorySource(root, 2, image_size=5)[1]["video"], TrajectorySource(root, 2)[1]["video"]
    )


def test_compressed_npz_is_read_whole(tmp_path):
    frames, proprio, actions = _episode(6)
    np.savez_compressed(tmp_path / "z.npz", frames=frames, proprio=proprio, actions=actions, label=2)
    src = TrajectorySource(tmp_path, window=2, stride=2)
    x = src[2]
    np.testing.assert_array_equal(x["proprio"], proprio[4:6])
    np.testing.assert_array_equal(x["video"], frames[4:6] / np.float32(127.5) - 1.0)
    assert int(x["label"]) == 2


def test_bad_arguments_and_empty_roots(tmp_path):
    with pytest.raises(SourceError, match="not a directory"):
        TrajectorySource(tmp_path / "missing", window=2)
    (tmp_path / "notes.txt").write_text("no episodes here")
    with pytest.raises(SourceError, match="no episode files"):
        TrajectorySource(tmp_path, window=2)
    for kwargs in (
        {"window": 0},
        {"window": 2, "stride": 0},
        {"window": 2.0},
        {"window": 2, "image_size": 0},
    ):
        with pytest.raises(SourceError):
            TrajectorySource(tmp_path, **kwargs)


@pytest.mark.parametrize(
    "field, bad, match",
    [
        ("proprio", (6, 2), "P \\(proprio dim\\) is 2, but .*a.npz has 3"),
        ("actions", (6, 4), "A \\(action dim\\) is 4, but .*a.npz has 2"),
        ("frames", (6, 8, 5, 3), "frame size \\(H, W\\) is \\(8, 5\\), but .*a.npz has \\(6, 5\\)"),
    ],
)
def test_inconsistent_dims_are_a_source_error(tmp_path, field, bad, match):
    write_episode(tmp_path / "a.npz", *_episode(6))
    write_episode(tmp_path / "b.npz", *_episode(6))
    frames, proprio, actions = _episode(6)
    arrays = {"frames": frames, "proprio": proprio, "actions": actions}
    arrays[field] = np.zeros(bad, arrays[field].dtype)
    write_episode(tmp_path / "c.h5", **arrays)
    with pytest.raises(SourceError, match="c.h5: " + match):
        TrajectorySource(tmp_path, window=2)


# ----------------------------------------------------------------------------- bad episodes


def _bad_variants():
    frames, proprio, actions = _episode(6)
    nan_actions = actions.copy()
    nan_actions[4, 1] = np.nan
    nan_proprio = proprio.copy()
    nan_proprio[1, 0] = np.nan
    return {
        "missing_actions": ({"frames": frames, "proprio": proprio}, "missing key"),
        "missing_frames": ({"proprio": proprio, "actions": actions}, "missing key"),
        "float_frames": (
            {"frames": frames.astype(np.float32), "proprio": proprio, "actions": actions},
            "uint8",
        ),
        "gray_frames": ({"frames": frames[..., 0], "proprio": proprio, "actions": actions}, "uint8"),
        "four_channels": (
            {"frames": np.concatenate([frames, frames[..., :1]], -1), "proprio": proprio, "actions": actions},
            "uint8",
        ),
        "lengths": ({"frames": frames, "proprio": proprio[:5], "actions": actions}, "lengths disagree"),
        "nan_actions": ({"frames": frames, "proprio": proprio, "actions": nan_actions}, "'actions'.*NaN"),
        "nan_proprio": ({"frames": frames, "proprio": nan_proprio, "actions": actions}, "'proprio'.*NaN"),
        "bad_label": (
            {"frames": frames, "proprio": proprio, "actions": actions, "label": np.array([1.5, 2.0])},
            "label",
        ),
    }


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("variant", sorted(_bad_variants()))
def test_bad_episode_raises_bad_sample_error_naming_the_file(tmp_path, suffix, variant):
    arrays, match = _bad_variants()[variant]
    write_episode(tmp_path / "a_good.npz", *_episode(6, offset=1))
    bad = _write_raw(tmp_path / f"b_bad{suffix}", **arrays)
    src = TrajectorySource(tmp_path, window=3)
    good = [i for i in range(len(src)) if src.episodes[src.table[i, 0]].path != bad]
    for i in good:  # the good episode is unaffected
        src[i]
    errors = []
    for i in range(len(src)):
        if i in good:
            continue
        try:
            src[i]
        except BadSampleError as e:
            errors.append(e)
    assert errors, "no window of the bad file raised"
    for e in errors:
        assert str(bad) in e.where and str(bad) in str(e)
        assert re.search(match, e.reason), e.reason
    if variant.startswith("nan"):  # found per window: only the windows holding the NaN fail
        assert len(errors) == 2 and len(src) == 4 + 4  # NaN rows 4 / 1 lie in 2 of the 4 windows
        assert src.bad_episodes == []
    else:  # found in the headers: one table entry for the whole episode
        assert len(errors) == 1 and len(src) == 4 + 1
        assert src.bad_episodes == [(bad, errors[0].reason)]
        assert src.where(len(src) - 1) == str(bad)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_raises_bad_sample_error(tmp_path, suffix, damage):
    write_episode(tmp_path / "a_good.npz", *_episode(6))
    bad = write_episode(tmp_path / f"b_bad{suffix}", *_episode(6))
    data = bad.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x13" * 4000, "empty": b""}[damage])
    src = TrajectorySource(tmp_path, window=3)
    assert len(src) == 4 + 1
    with pytest.raises(BadSampleError, match="truncated or corrupt") as info:
        src[4]
    assert info.value.where == str(bad)
    src[0]


def test_npz_data_truncated_after_construction(tmp_path):
    path = write_episode(tmp_path / "a.npz", *_episode(6))
    src = TrajectorySource(tmp_path, window=3)
    path.write_bytes(path.read_bytes()[:200])  # the file shrinks under the source
    with pytest.raises(BadSampleError) as info:
        src[3]
    assert info.value.where == f"{path}[3:6]"


def test_all_bad_root_is_a_source_error(tmp_path):
    frames, proprio, actions = _episode(6)
    _write_raw(tmp_path / "a.npz", frames=frames, proprio=proprio)
    with pytest.raises(SourceError, match="no usable episode.*1 bad.*missing key"):
        TrajectorySource(tmp_path, window=2)


def test_constructor_reads_only_headers(tmp_path, monkeypatch):
    """Building the table must not read array data: np.load / read_array / h5py reads are off."""
    write_episode(tmp_path / "a.npz", *_episode(50, h=32, w=32))
    write_episode(tmp_path / "b.h5", *_episode(40, h=32, w=32))

    def forbidden(*args, **kwargs):
        raise AssertionError("array data read at construction")

    monkeypatch.setattr(np, "load", forbidden)
    monkeypatch.setattr(np.lib.format, "read_array", forbidden)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", forbidden)
    monkeypatch.setattr(h5py.Dataset, "read_direct", forbidden)
    src = TrajectorySource(tmp_path, window=8, stride=4)
    assert len(src) == (50 - 8) // 4 + 1 + (40 - 8) // 4 + 1
    monkeypatch.undo()
    np.testing.assert_array_equal(src[len(src) - 1]["proprio"], _episode(40)[1][32:40])


# ----------------------------------------------------------------------------- PushT expert


def test_record_episodes_pusht(tmp_path):
    pytest.importorskip("gym_pusht")
    from data_pipelines.pusht_expert import record_episodes

    stats = {}
    paths = record_episodes(tmp_path / "a", 2, seed=3, max_steps=20, image_size=32, stats=stats)
    assert [p.name for p in paths] == ["episode_00000.npz", "episode_00001.npz"]
    assert stats["steps"] == [20, 20] and stats["steps_per_s"] > 0
    src = TrajectorySource(tmp_path / "a", window=8, stride=4)
    assert len(src) == 2 * ((20 - 8) // 4 + 1)
    assert src.schema["video"].shape == (8, 32, 32, 3) and src.schema["actions"].shape == (8, 2)
    x = src[1]
    assert x["video"].min() >= -1 and x["video"].max() <= 1 and x["video"].std() > 0.05
    for path in paths:
        with np.load(path) as z:
            proprio, actions = z["proprio"], z["actions"]
            assert z["frames"].shape == (20, 32, 32, 3) and z["success"].dtype == bool
        assert ((actions >= 0) & (actions <= 512)).all()
        # The actions are what moved the agent: it gets closer to the commanded target.
        before = np.linalg.norm(actions[:-1] - proprio[:-1], axis=1)
        after = np.linalg.norm(actions[:-1] - proprio[1:], axis=1)
        moving = before > 1.0
        assert moving.sum() >= 10 and (after[moving] < before[moving]).mean() >= 0.9
    # Deterministic: the same seed gives byte-identical files.
    again = record_episodes(tmp_path / "b", 2, seed=3, max_steps=20, image_size=32)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    other = record_episodes(tmp_path / "c", 1, seed=4, max_steps=20, image_size=32)
    assert other[0].read_bytes() != paths[0].read_bytes()
