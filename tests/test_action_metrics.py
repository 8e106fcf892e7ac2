"""Action error and simulator rollouts (selfflow.eval.actions)."""

import numpy as np
import pytest

from data_pipelines.pusht_expert import episode_seed
from modalities import action as action_mod
from modalities.action import ActionSpec
from selfflow.eval import actions

# PushT-like statistics: targets around (256, 128) px with stds 100 and 50; proprio (agent x, y).
SPEC = ActionSpec(
    steps=4, action_dim=2, proprio_dim=2, mean=(256.0, 128.0, 250.0, 250.0), std=(100.0, 50.0, 80.0, 80.0)
)


# ------------------------------------------------------------------------------ action error


def test_identical_actions_have_zero_error():
    demo = np.random.default_rng(0).normal(size=(3, 4, 2))
    out = actions.action_error(demo, demo, SPEC)
    assert out["mse"] == 0.0 and out["l2"] == 0.0
    assert out["mse_per_step"].shape == out["l2_per_step"].shape == (4,)


def test_known_offset_in_original_units():
    """A normalised offset of (0.03, 0.08) is (3, 4) px with std (100, 50): L2 5, MSE 12.5."""
    demo = np.random.default_rng(1).normal(size=(3, 4, 2))
    pred = demo + np.array([0.03, 0.08])
    out = actions.action_error(pred, demo, SPEC)
    np.testing.assert_allclose([out["mse"], out["l2"]], [12.5, 5.0], rtol=1e-9)
    # The same error from (actions + proprio) features (proprio dropped), and from raw units.
    proprio = np.random.default_rng(2).normal(size=(3, 4, 2))
    full = actions.action_error(
        np.concatenate([pred, proprio + 1.0], -1), np.concatenate([demo, proprio], -1), SPEC
    )
    np.testing.assert_allclose([full["mse"], full["l2"]], [12.5, 5.0], rtol=1e-9)
    raw_demo = action_mod.denormalize(np.concatenate([demo, proprio], -1), SPEC)[..., :2]
    raw = actions.action_error(raw_demo + np.array([3.0, 4.0]), raw_demo)
    np.testing.assert_allclose([raw["mse"], raw["l2"]], [12.5, 5.0], rtol=1e-9)
    # Normalised error would be far smaller: the spec matters.
    plain = actions.action_error(pred, demo)
    assert plain["l2"] < 0.1


def test_per_step_error_grows_with_the_offset():
    demo = np.zeros((5, 2))  # one sequence (T, A)
    pred = np.arange(5)[:, None] * np.array([3.0, 4.0])
    out = actions.action_error(pred, demo)
    np.testing.assert_allclose(out["l2_per_step"], 5.0 * np.arange(5))
    np.testing.assert_allclose(out["mse_per_step"], 12.5 * np.arange(5) ** 2)
    np.testing.assert_allclose(out["l2"], 10.0)


@pytest.mark.parametrize(
    "pred, demo, spec, match",
    [
        (np.zeros((2, 4, 2)), np.zeros((2, 3, 2)), None, r"\(2, 4, 2\).*\(2, 3, 2\)"),
        (np.zeros(4), np.zeros(4), None, r"\(B, T, A\) or \(T, A\)"),
        (np.zeros((2, 4, 3)), np.zeros((2, 4, 3)), SPEC, r"last axis must be 2.*or 4"),
        (np.full((4, 2), np.nan), np.zeros((4, 2)), None, r"pred_actions.*NaN"),
    ],
)
def test_action_error_bad_inputs(pred, demo, spec, match):
    with pytest.raises(ValueError, match=match):
        actions.action_error(pred, demo, spec)


# ------------------------------------------------------------------------------ rollouts


class FakeEnv:
    """Coverage = first action coordinate / 100 (clipped); success above 0.95 terminates;
    truncates after ``limit`` steps. Records every reset seed and action."""

    def __init__(self, limit=1000):
        self.limit, self.seeds, self.actions = limit, [], []

    class action_space:  # noqa: N801 - mimics gymnasium's Box
        shape = (2,)

    def reset(self, seed=None):
        self.seed, self.count = seed, 0
        self.seeds.append(seed)
        return {"agent_pos": np.zeros(2), "step": 0}, {}

    def step(self, action):
        self.actions.append(np.asarray(action))
        self.count += 1
        coverage = float(np.clip(action[0] / 100.0, 0.0, 1.0))
        success = coverage > 0.95
        return (
            {"agent_pos": np.zeros(2), "step": self.count},
            coverage,
            success,
            self.count >= self.limit,
            {"coverage": coverage, "is_success": success},
        )

    def close(self):
        raise AssertionError("rollout_success must not close an env it did not create")


class ClimbPolicy:
    """Chunks of 3 rising actions; gives up (action 10) in episodes whose seed is odd."""

    def __init__(self):
        self.calls = self.resets = 0

    def reset(self, env):
        self.resets += 1
        self.odd = env.seed % 2 == 1

    def __call__(self, observation):
        self.calls += 1
        if self.odd:
            return np.array([10.0, 0.0])
        return np.array([[40.0, 0], [70.0, 0], [99.0, 0]])


def test_rollout_bookkeeping_with_a_fake_env():
    env, policy = FakeEnv(), ClimbPolicy()
    out = actions.rollout_success(policy, 6, seed=3, max_steps=20, env=env)
    seeds = [episode_seed(3, i) for i in range(6)]
    assert env.seeds == out["env_seed"] == seeds and policy.resets == 6
    odd = [s % 2 == 1 for s in seeds]
    assert 0 < sum(odd) < 6  # both kinds of episode happen
    assert out["success"] == [not o for o in odd]
    assert out["steps"] == [20 if o else 3 for o in odd]
    assert out["final_coverage"] == [0.1 if o else 0.99 for o in odd]
    assert out["max_coverage"] == out["final_coverage"]
    assert out["success_rate"] == pytest.approx(1 - np.mean(odd))
    assert out["mean_final_coverage"] == pytest.approx(np.mean(out["final_coverage"]))
    assert out["mean_steps"] == pytest.approx(np.mean(out["steps"]))
    # A chunk runs open-loop: one query per chunk of 3 (success episodes), one per step otherwise.
    assert policy.calls == sum(20 if o else 1 for o in odd)


def test_rollout_executes_part_of_each_chunk_and_stops_at_truncation():
    env, policy = FakeEnv(limit=2), ClimbPolicy()
    policy.reset = lambda e: setattr(policy, "odd", False)  # always climb
    out = actions.rollout_success(policy, 2, seed=0, max_steps=50, env=env, execute=1)
    assert out["steps"] == [2, 2] and out["success"] == [False, False]
    assert policy.calls == 4  # execute=1: a new query every step
    assert [a[0] for a in env.actions] == [40.0, 40.0, 40.0, 40.0]
    assert out["final_coverage"] == [0.4, 0.4]


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(3), r"shape \(3,\)"),
        (np.zeros((0, 2)), r"\(0, 2\)"),
        (np.array([np.inf, 0.0]), "non-finite"),
    ],
)
def test_rollout_rejects_bad_policy_output(bad, match):
    with pytest.raises(ValueError, match=match):
        actions.rollout_success(lambda obs: bad, 1, seed=0, max_steps=5, env=FakeEnv())


def test_expert_beats_random_and_idle_policies_in_pusht():
    """gym-pusht, 3 held-out initial states (seed 7), 300 steps: the scripted expert solves them
    (measured 3/3, final coverage 0.956-0.962 in 221-244 steps; ~2.6 s); random targets and staying put never do."""
    pytest.importorskip("gym_pusht")
    expert = actions.rollout_success(actions.ExpertPolicy(), 3, seed=7, max_steps=300, image_size=32)
    random = actions.rollout_success(actions.RandomPolicy(seed=0), 3, seed=7, max_steps=300, image_size=32)
    idle = actions.rollout_success(lambda obs: obs["agent_pos"], 3, seed=7, max_steps=100, image_size=32)
    assert expert["success_rate"] >= 2 / 3 and expert["mean_final_coverage"] > 0.9, expert
    assert random["success_rate"] == 0 and idle["success_rate"] == 0, (random, idle)
    assert expert["mean_max_coverage"] > random["mean_max_coverage"] + 0.5
    assert random["steps"] == [300] * 3 and idle["steps"] == [100] * 3
