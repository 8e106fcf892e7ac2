"""selfflow eval and the trainer's scheduled proxies: the right metrics for each layout, computed on
the right arrays (real-vs-real floors below real-vs-generated for a barely trained model, real
clips in sync), written as JSON and a markdown table."""

import dataclasses
import json

import numpy as np
import pytest

from selfflow import cli
from selfflow.config import LayoutConfig
from selfflow.eval.evaluate import EvalSettings, heldout_examples, markdown
from selfflow.tasks import Task
from selfflow.train import train

from helpers_config import tiny_image_config, tiny_world_config

IMAGE = tiny_image_config(
    data=dict(num_examples=512),
    objective=dict(ema_decay=0.5),
    optim=dict(learning_rate=1e-2),
    train=dict(
        steps=4, checkpoint_every=4, log_every=4, eval_every=2, eval_samples=16, eval_classifier_steps=5
    ),
)

WORLD = tiny_world_config(
    (
        LayoutConfig("audio_video", ("video", "audio"), 0.5, 4),
        LayoutConfig("robot", ("image:condition", "video", "action"), 0.5, 4),
    ),
    objective=dict(ema_decay=0.5),
    train=dict(steps=1, checkpoint_every=1),
    sample=dict(per_class=1, method="heun"),
)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    train(IMAGE, run, progress=False, write_samples=False)
    return run


def test_trainer_logs_the_proxies_on_its_schedule(image_run):
    records = [json.loads(line) for line in (image_run / "metrics.jsonl").read_text().splitlines()]
    evaluated = {r["step"]: r for r in records if "eval/image/image_fd" in r}
    assert sorted(evaluated) == [2, 4]
    for r in evaluated.values():
        assert r["eval/image/image_fd"] > r["eval/image/image_fd_real"] >= 0  # 4 steps: far from the data
        assert np.isfinite(r["val/loss"])
    assert (image_run.parent / ".eval_cache").is_dir()  # the classifier is shared by sibling runs
    assert not any(k.startswith("eval/probe/") for r in records for k in r)  # train.eval_probe=0: off


def test_trainer_logs_probes_with_eval_probe(tmp_path):
    cfg = dataclasses.replace(IMAGE, train=dataclasses.replace(IMAGE.train, steps=2, eval_probe=32))
    train(cfg, tmp_path / "run", progress=False, write_samples=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    probed = [r for r in records if "eval/probe/layer_1" in r]
    assert [r["step"] for r in probed] == [2]
    # 4 shape classes, 16 held-out examples: an accuracy is a multiple of 1/16 in [0, 1]
    for layer in (1, 2):
        acc = probed[0][f"eval/probe/layer_{layer}"]
        assert 0.0 <= acc <= 1.0 and (acc * 16) == pytest.approx(round(acc * 16))


def test_eval_writes_json_and_markdown_with_probes(image_run, capsys):
    out = image_run / "report"
    assert (
        cli.main(
            [
                "eval",
                "--run-dir",
                str(image_run),
                "--num",
                "16",
                "--classifier-steps",
                "5",
                "--probe-examples",
                "64",
                "32",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "step_4.json").read_text())
    metrics = report["metrics"]
    assert report["step"] == 4 and report["settings"]["num"] == 16
    assert set(metrics) == {
        "image/image_fd",
        "image/image_fd_real",
        "val/loss",
        "val/image",
        "probe/layer_1",
        "probe/layer_2",
    }
    assert all(0.0 <= metrics[f"probe/layer_{l}"] <= 1.0 for l in (1, 2))
    table = (out / "step_4.md").read_text()
    assert (
        f"| image/image_fd | {metrics['image/image_fd']:.4g} | {metrics['image/image_fd_real']:.4g} |"
        in table
    )
    assert "image_fd_real |" not in table  # floors sit beside their metric, not on rows of their own
    assert table in capsys.readouterr().out


def test_multimodal_layouts_get_their_own_measures(tmp_path):
    from selfflow.eval.evaluate import evaluate
    from selfflow.model import build_model

    task = Task(WORLD)
    model = build_model(WORLD, task.token_dims)
    results = evaluate(WORLD, task, model, EvalSettings(num=8, probe=False), tmp_path)
    assert {
        "audio_video/video_frame_fd",
        "audio_video/video_frame_fd_real",
        "audio_video/video_motion_fd",
        "audio_video/video_temporal_ratio",
        "audio_video/audio_fd",
        "audio_video/audio_fd_real",
        "audio_video/av_synchrony",
        "audio_video/av_synchrony_real",
        "robot/video_frame_fd",
        "robot/action_l2",
        "robot/action_mse",
    } <= set(results)
    assert "robot/image_fd" not in results  # the image is a condition there, never generated
    assert results["audio_video/av_synchrony_real"] > 0.3  # real world clips: sounds at the collisions
    assert results["audio_video/audio_fd"] > results["audio_video/audio_fd_real"]  # an untrained model
    assert results["robot/action_l2"] > 0 and np.isfinite(results["robot/action_mse"])


def test_heldout_examples_are_disjoint_and_contiguous():
    task = Task(dataclasses.replace(IMAGE, train=dataclasses.replace(IMAGE.train, batch_size=8)))
    first, second = heldout_examples(task, 0, 12), heldout_examples(task, 0, 12, skip=12)
    both = heldout_examples(task, 0, 24)
    np.testing.assert_array_equal(np.concatenate([first["image"], second["image"]]), both["image"])
    assert first["image"].shape == (12, 16, 16, 3)


def test_markdown_pairs_each_distance_with_its_floor():
    table = markdown({"a/x_fd": 2.0, "a/x_fd_real": 0.5, "val/loss": 0.25}, "t")
    assert "| a/x_fd | 2 | 0.5 |" in table and "| val/loss | 0.25 |  |" in table


def test_bad_settings_are_named(image_run, capsys):
    assert cli.main(["eval", "--run-dir", str(image_run), "--num", "1"]) == 2
    assert "num=1: expected >= 2" in capsys.readouterr().err
