"""Data problems that used to surface late or noisily: more class folders than data.num_classes
(a NaN at step 1, now a ConfigError before anything is built or compiled; fewer is a warning),
and bad files under on_bad_sample=skip (logged once each over many epochs, every replacement
still counted in data/skipped, and a resumed run still bit-identical to an uninterrupted one)."""

import dataclasses
import re

import jax
import numpy as np
import pytest
from PIL import Image

from selfflow.config import ConfigError, SourceConfig
from selfflow.metrics_writer import read_metrics
from selfflow.tasks import Task
from selfflow.train import train

from helpers_config import tiny_image_config


def class_folders(root, count, per_class=1, size=16):
    """``count`` class folders of ``per_class`` random 16x16 RGB PNGs; returns ``root`` as a str."""
    rng = np.random.default_rng(count)
    for c in range(count):
        (root / f"class{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c:02d}" / f"{i}.png")
    return str(root)


def config(sources, num_classes=10, on_bad_sample="error", **train):
    return tiny_image_config(
        data=dict(num_classes=num_classes, sources=tuple(sources), on_bad_sample=on_bad_sample),
        train={"steps": 3, "log_every": 1, "checkpoint_every": 10, **train},
    )


def test_more_class_folders_than_num_classes_stops_before_compiling(tmp_path, monkeypatch):
    path = class_folders(tmp_path / "mine", 12)
    mine = SourceConfig("mine", "image_folder", path=path)
    # Nothing past the task may run: the model is built (and then compiled) only after it.
    monkeypatch.setattr("selfflow.train.build_model", lambda *a: pytest.fail("built the model"))
    expected = (
        f"data.sources[0] ('mine', image_folder {path}): 12 class folders but "
        "data.num_classes=10; set data.num_classes=12 (or more)"
    )
    with pytest.raises(ConfigError, match=re.escape(expected)):
        train(config([mine]), tmp_path / "run", progress=False, write_samples=False)
    Task(config([mine], num_classes=12))  # enough: fine

    # In a mixture the source is named by its index; generated sources count too (shapes: 10).
    shapes = SourceConfig("shapes", "shapes")
    with pytest.raises(ConfigError, match=re.escape("data.sources[1] ('mine', image_folder")):
        Task(config([shapes, mine], num_classes=11))
    three = SourceConfig("three", "image_folder", path=class_folders(tmp_path / "three", 3))
    with pytest.raises(ConfigError, match=re.escape("data.sources[0] ('shapes', shapes): 10 classes but")):
        Task(config([shapes, three], num_classes=5))


def test_fewer_class_folders_than_num_classes_is_a_warning(tmp_path, caplog):
    path = class_folders(tmp_path / "mine", 3)
    with caplog.at_level("WARNING", logger="selfflow.tasks"):
        Task(config([SourceConfig("mine", "image_folder", path=path)], num_classes=10))
    (record,) = caplog.records
    assert (
        f"data.num_classes=10 but the sources have at most 3 classes (data.sources[0] ('mine', "
        f"image_folder {path}): 3 class folders): class ids 3..9 have no examples" in record.getMessage()
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="selfflow.tasks"):
        Task(config([SourceConfig("mine", "image_folder", path=path)], num_classes=3))
    assert not caplog.records


def test_skip_logs_each_bad_file_once_and_a_resumed_run_is_identical(tmp_path, caplog):
    """4 bad files of 8, batch 8 (one epoch per step), 6 steps with held-out validation at each
    checkpoint (the same files): each bad file is logged once, data/skipped counts all 6 per epoch,
    and 3 steps + resume for 3 more give the parameters of 6 uninterrupted steps."""
    root = tmp_path / "data"
    class_folders(root, 2, per_class=4)
    files = sorted(root.glob("*/*.png"))  # the source's order
    bad = [files[i] for i in (1, 2, 5, 6)]  # per epoch: 1 and 5 pass over two files, 2 and 6 one
    for path in bad:
        path.write_bytes(path.read_bytes()[:60])  # truncated
    cfg = config(
        [SourceConfig("pngs", "image_folder", path=str(root))],
        num_classes=2,
        on_bad_sample="skip",
        steps=6,
        checkpoint_every=3,
        keep_best=1,
    )
    with caplog.at_level("WARNING", logger="data_pipelines.guard"):
        straight = train(cfg, tmp_path / "straight", progress=False, write_samples=False).state
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 4 and all(sum(str(p) in m for m in logged) == 1 for p in bad), logged
    rows = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert [r["data/skipped"] for r in rows] == [6, 12, 18, 24, 30, 36]

    half = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=3))
    train(half, tmp_path / "resumed", progress=False, write_samples=False)
    resumed = train(cfg, tmp_path / "resumed", progress=False, write_samples=False).state
    for a, b in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
