"""Action measures: error against held-out demonstrations, and success when acting in the simulator.

Why: a low flow-matching loss on action tokens does not say whether the generated actions are
*good*. Two complementary checks: :func:`action_error` compares generated actions with held-out
demonstrations step by step (cheap, offline, but one demonstration is one of many good answers),
and :func:`rollout_success` lets a policy act in gym-pusht (:mod:`data_pipelines.pusht_expert`)
and reports how often it solves the task (the real criterion, but slower and closed-loop).

Units. Errors are in the original action units (PushT: absolute target positions in the
simulator's 512 x 512 pixels; the world: forces in [-1, 1]), never in the model's normalised
token space, whose scale differs per feature (``ActionSpec.mean`` / ``std``): pass normalised
arrays with their ``spec`` and they are denormalised with ``modalities.action.denormalize``
first. Arrays from ``modalities.action.detokenize`` are already in original units.

Policy interface (what :func:`rollout_success` calls):

* ``policy(observation) -> actions``: ``observation`` is the environment's observation as
  ``env.step`` returns it (``make_env``'s ``obs_type="pixels_agent_pos"``: ``{"pixels": uint8
  (S, S, 3), "agent_pos": float (2,)}``); ``actions`` is one action (A,) or a chunk (K, A) of
  absolute target positions. The first ``execute`` actions of a chunk (all by default) are
  executed open-loop before the policy is asked again (receding horizon), as a generated action
  chunk is used.
* optional ``policy.reset(env)``: called after every ``env.reset`` and before the first query, so
  a stateful policy can clear its state and a privileged one can read the simulator
  (:class:`ExpertPolicy`, the scripted expert, which reads the block pose from ``env.unwrapped``).

A generated-action model becomes a policy through a layout that conditions on the current
observation and generates the action chunk, ``("image:condition", "video", "action")`` (the
``policy`` layout of ``experiments/pusht_video_action.py``): :class:`selfflow.eval.policy.ModelPolicy`.

Success (gym-pusht 0.1.8): ``info["is_success"]``, i.e. coverage of the goal T by the block
> ``env.success_threshold`` = 0.95 (the episode then terminates); ``info["coverage"]`` is that
fraction. An episode fails when it reaches ``max_steps`` first.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modalities import action as action_mod
from modalities.action import ActionSpec

# ------------------------------------------------------------------------------ action error


def _original_units(name: str, x: np.ndarray, spec: ActionSpec | None) -> np.ndarray:
    """``x`` (..., A) or (..., A + P) normalised -> (..., A) original units (proprio dropped)."""
    if spec is None:
        return x
    a = spec.action_dim
    if x.shape[-1] == spec.feature_dim:
        return action_mod.denormalize(x, spec)[..., :a]
    if x.shape[-1] == a:
        if spec.mean is None:
            return x
        actions_only = dataclasses.replace(spec, proprio_dim=0, mean=spec.mean[:a], std=spec.std[:a])
        return action_mod.denormalize(x, actions_only)
    raise ValueError(
        f"{name} has shape {x.shape}; with spec (action_dim={a}, proprio_dim="
        f"{spec.proprio_dim}) the last axis must be {a} (actions) or "
        f"{spec.feature_dim} (actions + proprio)"
    )


def action_error(pred_actions, demo_actions, spec: ActionSpec | None = None) -> dict:
    """Error of predicted against demonstrated actions, in original action units.

    ``pred_actions``, ``demo_actions``: the same shape (B, T, A) (or (T, A): one sequence) in
    original units, or - with ``spec`` - normalised as in the model's tokens ((..., A), or
    (..., A + P) whose proprio part is dropped), denormalised with ``spec`` first.
    Returns ``mse`` (mean squared error per action coordinate), ``l2`` (mean Euclidean distance
    per step, e.g. pixels for PushT targets), and ``mse_per_step`` / ``l2_per_step`` (T,)
    (averaged over the batch: how error grows along a generated chunk).
    """
    pred = np.asarray(pred_actions, np.float64)
    demo = np.asarray(demo_actions, np.float64)
    if pred.shape != demo.shape:
        raise ValueError(
            f"pred_actions {pred.shape} and demo_actions {demo.shape} must have the "
            "same shape (B, T, A) or (T, A)"
        )
    if pred.ndim not in (2, 3) or pred.size == 0:
        raise ValueError(f"pred_actions has shape {pred.shape}; expected (B, T, A) or (T, A), non-empty")
    for name, value in (("pred_actions", pred), ("demo_actions", demo)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    pred, demo = (_original_units(n, v, spec) for n, v in (("pred_actions", pred), ("demo_actions", demo)))
    diff = (pred - demo).reshape(-1, *pred.shape[-2:])  # (B, T, A)
    squared = (diff**2).mean(axis=(0, 2))  # (T,)
    dist = np.sqrt((diff**2).sum(-1)).mean(0)  # (T,)
    return {
        "mse": float(squared.mean()),
        "l2": float(dist.mean()),
        "mse_per_step": squared,
        "l2_per_step": dist,
    }


# ------------------------------------------------------------------------------- policies


class ExpertPolicy:
    """The scripted PushT expert (:class:`data_pipelines.pusht_expert.PushTExpert`) as a policy:
    privileged (it reads the simulator state in ``reset(env)``, not the observation), so it is a
    reference for what success looks like, not a learned policy."""

    def __init__(self):
        self.expert = None

    def reset(self, env) -> None:
        from data_pipelines.pusht_expert import PushTExpert

        self.expert = PushTExpert(env)

    def __call__(self, observation) -> np.ndarray:
        if self.expert is None:
            raise RuntimeError("ExpertPolicy needs reset(env) before it can act")
        return self.expert.act()


class RandomPolicy:
    """Uniform random target positions in [low, high]^dim (a floor to compare policies with)."""

    def __init__(self, seed: int = 0, low: float = 0.0, high: float = 512.0, dim: int = 2):
        self.rng, self.low, self.high, self.dim = np.random.default_rng(seed), low, high, dim

    def __call__(self, observation) -> np.ndarray:
        return self.rng.uniform(self.low, self.high, self.dim)


# ------------------------------------------------------------------------------- rollouts


def _chunk(actions, dim: int, step: int) -> np.ndarray:
    chunk = np.asarray(actions, np.float64)
    chunk = chunk[None] if chunk.ndim == 1 else chunk
    if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != dim:
        raise ValueError(
            f"policy returned actions of shape {np.shape(actions)} at step {step}; "
            f"expected ({dim},) or a chunk (K, {dim}) with K >= 1"
        )
    if not np.isfinite(chunk).all():
        raise ValueError(f"policy returned non-finite actions at step {step}")
    return chunk


def rollout_success(
    policy,
    episodes: int,
    seed: int,
    max_steps: int = 300,
    *,
    env=None,
    execute: int | None = None,
    image_size: int = 96,
) -> dict:
    """Rolls ``policy`` out for ``episodes`` PushT episodes; returns success and coverage.

    Episode i resets the environment with ``episode_seed(seed, i)`` (as the expert's recordings
    do: use a ``seed`` other than the training episodes' for held-out initial states) and runs
    until success (termination), truncation, or ``max_steps`` steps. ``policy``: see the module
    docstring; ``execute``: how many actions of each returned chunk run before the next query
    (None = all). ``env``: any gymnasium-style environment whose ``step`` info has
    ``coverage`` and ``is_success`` (default: ``pusht_expert.make_env(image_size, max_steps)``,
    created and closed here).

    Returns ``success_rate``, ``mean_final_coverage``, ``mean_max_coverage``, ``mean_steps`` and
    per-episode lists ``success``, ``final_coverage``, ``max_coverage``, ``steps``, ``env_seed``.
    """
    from data_pipelines.pusht_expert import episode_seed, make_env

    for name, value, low in (("episodes", episodes, 1), ("max_steps", max_steps, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if execute is not None and (isinstance(execute, bool) or int(execute) != execute or execute < 1):
        raise ValueError(f"execute must be None or an integer >= 1, got {execute!r}")
    own_env = env is None
    env = make_env(int(image_size), int(max_steps)) if own_env else env
    shape = getattr(getattr(env, "action_space", None), "shape", None)
    dim = int(shape[0]) if shape else 2
    results = {"success": [], "final_coverage": [], "max_coverage": [], "steps": [], "env_seed": []}
    try:
        for i in range(int(episodes)):
            env_seed = episode_seed(int(seed), i)
            obs, _ = env.reset(seed=env_seed)
            if hasattr(policy, "reset"):
                policy.reset(env)
            queue: list = []
            coverage, success, steps = [], False, 0
            while steps < max_steps:
                if not queue:
                    chunk = _chunk(policy(obs), dim, steps)
                    queue = list(chunk[:execute] if execute else chunk)
                obs, _, terminated, truncated, info = env.step(queue.pop(0))
                steps += 1
                coverage.append(float(info["coverage"]))
                success = bool(info["is_success"])
                if terminated or truncated:
                    break
            results["success"].append(success)
            results["final_coverage"].append(coverage[-1])
            results["max_coverage"].append(max(coverage))
            results["steps"].append(steps)
            results["env_seed"].append(env_seed)
    finally:
        if own_env:
            env.close()
    return {
        "success_rate": float(np.mean(results["success"])),
        "mean_final_coverage": float(np.mean(results["final_coverage"])),
        "mean_max_coverage": float(np.mean(results["max_coverage"])),
        "mean_steps": float(np.mean(results["steps"])),
        **results,
    }
