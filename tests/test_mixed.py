"""Mixed multimodal training on the procedural world: every modality learns, each layout
compiles once, and the layout schedule survives a resume bit-identically."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from selfflow import train as train_lib
from selfflow.config import LayoutConfig, validate
from selfflow.layout import layout_schedule

from helpers_config import MIXED_LAYOUTS as LAYOUTS  # the six-layout mixture
from helpers_config import mixed_config


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """60 steps of the six-layout mixture, with the compiled step function captured."""
    captured = []
    original = train_lib.make_train_step

    def capture(*args, **kwargs):
        captured.append(original(*args, **kwargs))
        return captured[-1]

    train_lib.make_train_step = capture
    try:
        run_dir = tmp_path_factory.mktemp("mixed")
        result = train_lib.train(mixed_config(60), run_dir, progress=False, write_samples=False)
    finally:
        train_lib.make_train_step = original
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return result, records, captured[0]


def test_every_modality_loss_falls(mixed_run):
    _, records, _ = mixed_run
    for modality in ("image", "video", "audio"):  # action: slower, see the next test
        losses = [r[f"fm_loss/{modality}"] for r in records if f"fm_loss/{modality}" in r]
        assert len(losses) >= 8, modality
        first, last = np.mean(losses[:3]), np.mean(losses[-3:])
        assert last < 0.75 * first, (modality, first, last)


def test_action_loss_falls(tmp_path):
    """Normalised actions have little structure for an untrained model (loss starts near 2 =
    var(ε − x0)); a longer action-only run shows the action path learns."""
    base = mixed_config(120)
    cfg = dataclasses.replace(
        base,
        layouts=(LayoutConfig("action", ("action",), 1.0, 32),),
        train=dataclasses.replace(base.train, checkpoint_every=120),
    )
    train_lib.train(cfg, tmp_path, progress=False, write_samples=False)
    losses = [
        json.loads(line)["fm_loss/action"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10]), (losses[:10], losses[-10:])


def test_each_layout_compiles_once(mixed_run):
    _, records, step_fn = mixed_run
    used = {layout_schedule(0, n, [lc.weight for lc in LAYOUTS]) for n in range(60)}
    assert used == set(range(len(LAYOUTS)))
    assert step_fn._cache_size() == len(used)  # 60 steps, one program per layout: no recompiles
    assert [int(r["layout"]) for r in records] == [
        layout_schedule(0, n, [lc.weight for lc in LAYOUTS]) for n in range(60)
    ]


def test_mixed_run_resumes_bit_identically(mixed_run, tmp_path):
    reference, _, _ = mixed_run
    partial = train_lib.train(mixed_config(23), tmp_path, progress=False, write_samples=False)
    assert partial.final_step == 23
    resumed = train_lib.train(mixed_config(60), tmp_path, progress=False, write_samples=False)
    assert resumed.final_step == 60
    for key in ("params", "ema", "opt_state"):
        a, b = jax.tree.leaves(resumed.state[key]), jax.tree.leaves(reference.state[key])
        assert len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)), (
            key
        )


def test_multimodal_config_errors_name_the_layout():
    from selfflow.config import ConfigError

    base = mixed_config(1)
    with pytest.raises(ConfigError, match=r"layouts\[0\].*segment 'smell'"):
        validate(dataclasses.replace(base, layouts=(LayoutConfig("x", ("smell",)),)))
    with pytest.raises(ConfigError, match="nothing to generate"):
        validate(dataclasses.replace(base, layouts=(LayoutConfig("x", ("image:condition",)),)))
    with pytest.raises(ConfigError, match="positions='rope'"):
        validate(dataclasses.replace(base, model=dataclasses.replace(base.model, positions="sincos")))


def test_samples_are_written_per_layout_and_modality(mixed_run, tmp_path):
    from flax import nnx

    from selfflow.layout_samples import write_layout_samples
    from selfflow.model import build_model
    from selfflow.tasks import Task

    result, _, _ = mixed_run
    cfg = mixed_config(60)
    task = Task(cfg)
    model = nnx.merge(nnx.graphdef(build_model(cfg, task.token_dims)), result.state["ema"])
    paths = write_layout_samples(cfg, task, model, tmp_path, steps=2, cfg_scale=1.0, seed=0, per_layout=2)
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    assert {
        "image/0_image.png",
        "video/0_video.mp4",
        "audio/0_audio_00.wav",
        "audio/0_audio_01.wav",
        "audio_video/0_video.mp4",
        "video_to_audio/0_video_given.mp4",
        "video_to_audio/1_audio_mel.png",
        "audio_video/0_video_with_1_audio_00.mp4",
        "audio_video/0_video_with_1_audio_01.mp4",
        "video_to_audio/0_video_given_with_1_audio_01.mp4",
        "robot/0_image_given.png",
        "robot/1_video.mp4",
        "robot/2_action.png",
    } <= names
    import av

    with av.open(str(tmp_path / "robot/1_video.mp4")) as mp4:
        stream = mp4.streams.video[0]
        assert (stream.width, stream.height) == (2 * 16 * 4, 16 * 4)  # two clips side by side, 4x
    with av.open(str(tmp_path / "audio_video/0_video_with_1_audio_00.mp4")) as mp4:
        assert len(mp4.streams.video) == len(mp4.streams.audio) == 1
        assert (mp4.streams.video[0].width, mp4.streams.video[0].height) == (16 * 4, 16 * 4)  # one clip


def test_heldout_validation_loss_is_lower_after_training(mixed_run):
    from flax import nnx

    from selfflow.model import build_model
    from selfflow.tasks import Task
    from selfflow.validation import validation_losses

    result, _, _ = mixed_run
    cfg = mixed_config(60)
    task = Task(cfg)
    index = task.names.index("audio_video")
    heldout, train_data = task.dataset(index, heldout=True)[0], task.dataset(index)[0]
    assert not np.array_equal(heldout["video"], train_data["video"])  # other clips
    fresh = build_model(cfg, task.token_dims)
    trained = nnx.merge(nnx.graphdef(fresh), result.state["ema"])
    before = validation_losses(task, fresh, index, batches=2)
    after = validation_losses(task, trained, index, batches=2)
    assert set(after) == {"video", "audio"}
    assert all(after[m] < before[m] for m in after), (before, after)
    assert validation_losses(task, trained, index, batches=2) == after  # fixed noise and data


def test_log_shows_compiles_flops_and_mfu_per_step(mixed_run):
    from selfflow import flops
    from selfflow.tasks import Task

    _, records, _ = mixed_run
    cfg = mixed_config(60)
    task = Task(cfg)
    seen = set()
    for r in records:
        lt = task.layouts[int(r["layout"])]
        seen.add(int(r["layout"]))
        assert r["perf/compiles"] == len(seen)  # a new program only for a layout's first step
        assert r["perf/flops_per_step"] == flops.train_step_flops(
            cfg, lt.layout, task.token_dims, lt.batch_size
        )
        assert 0 < r["perf/mfu"] < 1
