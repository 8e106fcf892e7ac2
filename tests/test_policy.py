"""ModelPolicy: a generate-actions layout as a rollout policy (selfflow.eval.policy).

The run is a tiny randomly initialised model on the procedural world (16x16 images, 16-step
action chunks of dimension 2: cheaper than recording PushT episodes). The condition frame is
checked against what ``TrajectorySource`` makes of the same frame recorded in an episode file.
"""

import numpy as np
import pytest

from selfflow import layout_samples
from selfflow.config import LayoutConfig
from selfflow.eval.actions import rollout_success
from selfflow.eval.policy import ModelPolicy

from helpers_config import tiny_world_config

LAYOUTS = (
    LayoutConfig("policy", ("image:condition", "video", "action"), 0.5, 2),
    LayoutConfig("no_image", ("video", "action"), 0.25, 2),
    LayoutConfig("no_action", ("image:condition", "video"), 0.25, 2),
)


@pytest.fixture(scope="module")
def run():
    from selfflow.model import build_model
    from selfflow.tasks import Task

    cfg = tiny_world_config(LAYOUTS, data=dict(image_size=16, num_examples=8), train=dict(steps=1))
    task = Task(cfg)
    return cfg, task, build_model(cfg, task.token_dims, seed=0)


def _observation(seed=0, size=32):
    rng = np.random.default_rng(seed)
    return {
        "pixels": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "agent_pos": np.array([100.0, 200.0]),
    }


class Recorder:
    def __init__(self, policy):
        self.policy, self.chunks = policy, []

    def reset(self, env):
        self.policy.reset(env)

    def __call__(self, observation):
        self.chunks.append(self.policy(observation))
        return self.chunks[-1]


def test_chunk_shape_and_condition_frame(run, monkeypatch, tmp_path):
    from data_pipelines.trajectories import TrajectorySource, write_episode

    cfg, task, model = run
    seen = []
    real = layout_samples.generate

    def capture(cfg_, task_, model_, index, raw, key, **kwargs):
        seen.append((index, raw))
        return real(cfg_, task_, model_, index, raw, key, **kwargs)

    monkeypatch.setattr(layout_samples, "generate", capture)
    obs = _observation()
    chunk = ModelPolicy(cfg, task, model, "policy")(obs)
    assert isinstance(chunk, np.ndarray) and chunk.dtype.kind == "f" and chunk.shape == (16, 2)
    assert np.isfinite(chunk).all()
    assert ModelPolicy(cfg, task, model, 0, execute=5)(obs).shape == (5, 2)

    index, raw = seen[0]
    assert index == task.names.index("policy")
    # The frame recorded in an episode and read back at the run's image size: what training sees.
    write_episode(tmp_path / "ep.npz", obs["pixels"][None], np.zeros((1, 2)), np.zeros((1, 2)))
    expected = TrajectorySource(tmp_path, window=1, image_size=16)[0]["video"][0]
    assert raw["image"].shape == (1, 16, 16, 3) and raw["image"].dtype == np.float32
    np.testing.assert_array_equal(raw["image"][0], expected)
    assert raw["video"].shape == (1, 16, 16, 16, 3) and not raw["video"].any()
    assert raw["actions"].shape == (1, 16, 2) and not raw["actions"].any()
    assert raw["proprio"].shape[:2] == (1, 16) and not raw["proprio"].any()
    assert raw["label"].tolist() == [0]


def test_rollouts_are_deterministic_and_bounded(run):
    pytest.importorskip("gym_pusht")
    cfg, task, model = run
    policy = Recorder(ModelPolicy(cfg, task, model, "policy", seed=1))
    first = rollout_success(policy, episodes=1, seed=5, max_steps=20, image_size=32)
    chunks = policy.chunks
    policy.chunks = []
    second = rollout_success(policy, episodes=1, seed=5, max_steps=20, image_size=32)
    assert 0.0 <= first["success_rate"] <= 1.0 and first["steps"][0] <= 20
    assert len(chunks) == 2  # 16-step chunks run open-loop: queries at steps 0 and 16
    assert len(policy.chunks) == 2
    for a, b in zip(chunks, policy.chunks):
        np.testing.assert_array_equal(a, b)
    assert first["final_coverage"] == second["final_coverage"]
    assert not np.array_equal(chunks[0], chunks[1])  # a new key per query
    other = Recorder(ModelPolicy(cfg, task, model, "policy", seed=2))
    rollout_success(other, episodes=1, seed=5, max_steps=1, image_size=32)
    assert not np.array_equal(other.chunks[0], chunks[0])  # the seed matters


@pytest.mark.parametrize(
    "layout, match",
    [
        ("no_image", r"'no_image' \(video:generate, action:generate\).*no image:condition segment"),
        ("no_action", r"'no_action' \(image:condition, video:generate\).*no generated action segment"),
        ("missing", r"no layout 'missing'"),
        (7, "layout index 7 out of range"),
    ],
)
def test_bad_layouts_are_rejected(run, layout, match):
    cfg, task, model = run
    with pytest.raises(ValueError, match=match):
        ModelPolicy(cfg, task, model, layout)


def test_command_reports_model_expert_and_random(run, tmp_path, capsys):
    import json

    pytest.importorskip("gym_pusht")
    from selfflow.eval import policy as policy_mod
    from selfflow.train import train

    cfg, _, _ = run
    train(cfg, tmp_path / "run", progress=False, write_samples=False)
    assert (
        policy_mod.main([str(tmp_path / "run"), "--episodes", "1", "--max-steps", "6", "--execute", "3"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 1 and set(report) == {"step", "model", "expert", "random"}
    for name in ("model", "expert", "random"):
        assert 0.0 <= report[name]["success_rate"] <= 1.0
        assert 0.0 <= report[name]["mean_final_coverage"] <= report[name]["mean_max_coverage"] <= 1.0
