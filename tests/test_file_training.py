"""Training on file sources: named sources mixed in a layout, a bad file stops the run naming it
(on_bad_sample=error) or is replaced and counted in the metrics (skip), and configuration errors
name the layout and the sources."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from selfflow.config import Config, ConfigError, LayoutConfig, SourceConfig
from selfflow.metrics_writer import read_metrics
from selfflow.tasks import Task
from selfflow.train import TrainingError, train

from helpers_config import tiny_image_config

COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255)}


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """8 flat-colour 16x16 PNGs per class in red/ and blue/."""
    root = tmp_path_factory.mktemp("pngs")
    for name, rgb in COLORS.items():
        (root / name).mkdir()
        for i in range(8):
            Image.new("RGB", (16, 16), rgb).save(root / name / f"{i}.png")
    return root


def config(sources, steps=3, on_bad_sample="error", layouts=()) -> Config:
    return tiny_image_config(
        data=dict(num_classes=10, sources=tuple(sources), on_bad_sample=on_bad_sample),
        train=dict(steps=steps, log_every=1, checkpoint_every=10),
        layouts=tuple(layouts),
    )


def folder_with_bad_png(png_folder, tmp_path):
    root = tmp_path / "pngs"
    for name in COLORS:
        (root / name).mkdir(parents=True)
        for p in sorted((png_folder / name).iterdir()):
            (root / name / p.name).write_bytes(p.read_bytes())
    bad = root / "red" / "3.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    return root, bad


def test_mixture_of_sources_in_one_layout(png_folder):
    cfg = config(
        [
            SourceConfig("pngs", "image_folder", path=str(png_folder), weight=1.0),
            SourceConfig("shapes", "shapes", weight=1.0),
        ]
    )
    task = Task(cfg)
    assert task.layout_sources(0) == ("pngs", "shapes")
    images = np.concatenate([task.dataset(0)[k]["image"] for k in range(8)])  # 64 examples
    flat = np.all(images.std(axis=(1, 2)) < 1e-6, axis=-1)  # the PNGs are flat colours
    assert 0.3 < flat.mean() < 0.7


def test_bad_file_stops_training_naming_the_file(png_folder, tmp_path):
    root, bad = folder_with_bad_png(png_folder, tmp_path)
    cfg = config([SourceConfig("pngs", "image_folder", path=str(root))], steps=6)
    with pytest.raises(TrainingError, match=rf"{bad}.*on_bad_sample=skip"):
        train(cfg, tmp_path / "run", progress=False, write_samples=False)


def test_skip_replaces_the_bad_file_and_counts_it(png_folder, tmp_path):
    root, bad = folder_with_bad_png(png_folder, tmp_path)
    cfg = config([SourceConfig("pngs", "image_folder", path=str(root))], steps=6, on_bad_sample="skip")
    result = train(cfg, tmp_path / "run", progress=False, write_samples=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert result.final_step == 6
    # 16 files, batch 8, 6 steps = 3 epochs: the bad file is met (and replaced) once per epoch
    assert rows[-1]["data/skipped"] == 3
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_layout_without_a_source_for_its_modality_is_rejected(png_folder):
    cfg = config(
        [SourceConfig("pngs", "image_folder", path=str(png_folder))],
        layouts=[LayoutConfig("v", ("video",), batch_size=4)],
    )
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, positions="rope"))
    with pytest.raises(
        ConfigError,
        match=r"layouts\['v'\]: no data source yields all of \['video'\] "
        r"\(sources: pngs \(image_folder: image, label\)\)",
    ):
        Task(cfg)


def test_sources_of_different_shapes_in_one_layout_are_rejected(png_folder, tmp_path):
    gray = tmp_path / "gray" / "a"
    gray.mkdir(parents=True)
    Image.new("L", (16, 16)).save(gray / "0.png")
    cfg = config(
        [
            SourceConfig("pngs", "image_folder", path=str(png_folder)),
            SourceConfig("gray", "image_folder", path=str(gray.parent), channels=1),
        ]
    )
    with pytest.raises(
        ConfigError,
        match=r"sources 'pngs' and 'gray' yield 'image' of shapes "
        r"\(16, 16, 3\) and \(16, 16, 1\)",
    ):
        Task(cfg)


def test_unknown_source_name_in_a_layout_is_rejected():
    from selfflow.config import validate

    cfg = config(
        [SourceConfig("shapes", "shapes")], layouts=[LayoutConfig("i", ("image",), sources=("nope",))]
    )
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, positions="rope"))
    with pytest.raises(ConfigError, match=r"source 'nope' is not in data.sources \(it has shapes\)"):
        validate(cfg)


def test_file_source_without_a_path_is_rejected():
    from selfflow.config import validate

    with pytest.raises(ConfigError, match=r"data.sources\[0\] \('clips'\): kind 'video_files' reads files"):
        validate(config([SourceConfig("clips", "video_files")]))


def test_robot_episodes_train_a_video_action_layout(tmp_path):
    from data_pipelines.trajectories import write_episode

    rng = np.random.default_rng(0)
    for e in range(2):
        length = 12
        write_episode(
            tmp_path / "eps" / f"episode_{e}.npz",
            frames=rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8),
            proprio=rng.uniform(0, 512, (length, 2)),
            actions=rng.uniform(0, 512, (length, 2)),
        )
    cfg = config(
        [SourceConfig("pusht", "trajectories", path=str(tmp_path / "eps"), stride=2)],
        steps=2,
        layouts=[
            LayoutConfig("inverse", ("video:condition", "action"), batch_size=4),
            LayoutConfig("policy", ("image:condition", "video", "action"), batch_size=4),
        ],
    )
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, positions="rope"),
        data=dataclasses.replace(cfg.data, image_size=8, clip_seconds=0.8, fps=10.0, num_classes=1),
    )
    task = Task(cfg)
    spec = task.specs["action"]
    assert (spec.steps, spec.action_dim, spec.proprio_dim) == (8, 2, 2)
    assert task.specs["video"].frames == 8
    train(cfg, tmp_path / "run", progress=False, write_samples=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["fm_loss/action"]) for r in rows)
    assert task.specs["image"].height == 8  # the policy layout's observation: the window's first frame


def test_resumed_mixture_with_workers_continues_exactly(png_folder, tmp_path):
    """Mixture of two sources read by 2 worker processes: 2 steps + resume for 2 more gives the
    parameters of 4 uninterrupted steps (the iterator position comes back from the checkpoint)."""
    import jax

    cfg = config(
        [
            SourceConfig("pngs", "image_folder", path=str(png_folder), weight=2.0),
            SourceConfig("shapes", "shapes"),
        ],
        steps=4,
    )
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, worker_count=2),
        train=dataclasses.replace(cfg.train, checkpoint_every=2),
    )
    straight = train(cfg, tmp_path / "straight", progress=False, write_samples=False).state
    half = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2))
    train(half, tmp_path / "resumed", progress=False, write_samples=False)
    resumed = train(cfg, tmp_path / "resumed", progress=False, write_samples=False).state
    for a, b in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_action_sources_of_different_dims_cannot_share_the_modality(tmp_path):
    from data_pipelines.trajectories import write_episode

    write_episode(
        tmp_path / "eps" / "e.npz",
        frames=np.zeros((20, 16, 16, 3), np.uint8),
        proprio=np.zeros((20, 2)),
        actions=np.zeros((20, 2)),
    )
    cfg = config(
        [SourceConfig("world", "world"), SourceConfig("pusht", "trajectories", path=str(tmp_path / "eps"))],
        layouts=[
            LayoutConfig("world_actions", ("video:condition", "action"), sources=("world",)),
            LayoutConfig("pusht_actions", ("video:condition", "action"), sources=("pusht",)),
        ],
    )
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, positions="rope"),
        data=dataclasses.replace(cfg.data, num_classes=3, num_examples=50),
    )
    with pytest.raises(
        ConfigError,
        match=r"sources 'world' and 'pusht' yield 'proprio' of shapes \(16, 4\) "
        r"and \(16, 2\)",
    ):
        Task(cfg)


def test_a_stopped_run_resumes_with_skip_and_workers(png_folder, tmp_path):
    """The error message suggests on_bad_sample=skip: a resume with it (and with worker
    processes) is accepted on the same run directory; a model change is not."""
    from selfflow.run import check_resumable as _check_resumable

    cfg = config([SourceConfig("pngs", "image_folder", path=str(png_folder))])
    changed = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, on_bad_sample="skip", worker_count=2)
    )
    _check_resumable(cfg, changed, tmp_path)
    with pytest.raises(ConfigError, match="model.depth"):
        _check_resumable(
            cfg, dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, depth=3)), tmp_path
        )
