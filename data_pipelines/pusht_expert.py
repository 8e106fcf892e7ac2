"""Scripted PushT expert: records gym-pusht episodes as trajectory files.

Why: robotics experiments (video + proprioception + actions, :mod:`data_pipelines.trajectories`)
need demonstrations of a real manipulation task whose actions visibly cause what happens in the
frames. gym-pusht is installed; a scripted expert that reads the simulator's privileged state
makes as many episodes as wanted, deterministically, with no human teleoperation.

Environment (gym-pusht 0.1.8, ``gym_pusht/PushT-v0``, ``obs_type="pixels_agent_pos"``): a 512 x 512
pymunk world (x = image column, y = image row, pixels show it downscaled to ``image_size``); a
kinematic disc agent (radius 15) follows the action, an *absolute* target position in
[0, 512]^2, through a PD controller (k_p 100, k_v 20, 10 physics steps of 10 ms per env step, so
the agent covers ~30% of a far target's distance in the first step and moves ~0.4 x (target lead)
per step at steady state; measured). The T block (bar 120 x 30, stem 30 x 90, mass 1, moment 3000, centre of
mass 45 px from the top of the bar) is pushed quasi-statically: the space damping is 0, so a
body keeps no velocity between steps, and every contact is frictionless (the agent pushes along
the contact normal and slides along a face). Reward = min(coverage / 0.95, 1), where coverage is
the fraction of the goal T (fixed at (256, 256), angle pi/4) covered by the block; the episode
terminates with ``is_success`` when coverage > 0.95. The agent starts uniform in [50, 450]^2,
the block in [100, 400]^2 with a uniform angle.

Expert (uses ``env.unwrapped``: block pose, goal pose; pure function of the state, no randomness):
every step it scores a fixed set of pushes - contact points every ~8 px along the 8 outer faces
of the T, pushed along the face's inward normal - with the exact quasi-static rigid-body response
of a frictionless push at that point (impulse J along the normal n at lever arm r:
dv = J n / m, dtheta = J (r x n) / I). For each push it finds the push depth d* in [0, 40] px
that minimises the predicted error |e - dc|^2 + w^2 (dtheta_err - dtheta)^2 (e = goal - block
centre of mass, w = 60 px/rad), and takes the push with the largest relative error reduction
minus a travel cost (distance to its approach point, more when the straight path crosses the
block), with a bonus for keeping the current push (hysteresis). It then drives the agent to the
approach point 8 px behind the contact (around the block along a visibility graph of the
block's outline inflated by the agent radius + 4 px, backing out first if it is inside it) and
pushes: target = contact + min(d*, 16) px along the normal, so pushes slow down as the block
nears the goal. Travel targets are at most 40 px ahead of the agent. Rotation is handled by the
same rule (off-centre pushes turn the block), not by a separate phase.

Measured on this repository's 2-core CPU machine (one process), with
``python -m data_pipelines.pusht_expert --out /tmp/pusht --episodes 20 --seed 0``:
success 20/20 (100%), mean final coverage 0.958, mean final reward 1.000 (the episode ends at
the first step with coverage > 0.95, so final coverage is 0.95-0.98), 172 steps per episode on
average, 257 env steps/s including the expert (~0.5 ms/step), 96 x 96 rendering and writing
(~4.7 MB per uncompressed episode). Over episodes 0-199 of seed 0 (same expert, max_steps 300):
200/200 successes, 175 steps on average, longest 268. So the data are successful
demonstrations only, from a deterministic expert with no action noise: one strategy per state
and no failures or recoveries to learn from.

Episode file (``write_episode``, one per episode, ``episode_00000.npz`` ...): ``frames`` uint8
(L, S, S, 3) is the pixels observation *before* action t, ``proprio`` float32 (L, 2) the agent
position (agent_pos) before action t, ``actions`` float32 (L, 2) the commanded target position,
``success`` bool (the env's ``is_success`` after the last action), plus ``reward`` float32 (L,)
(reward after action t) and ``env_seed`` int64 (the seed given to ``env.reset``). The observation
after the last action is not stored, so all arrays have the same length L (<= max_steps; an
episode ends at success or at max_steps). Episode i of a run with seed s resets the environment
with ``env_seed = SeedSequence([s, i]).generate_state(1)[0]``, so runs with different seeds do not
share episodes, and the same (seed, i, max_steps, image_size) gives byte-identical files.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np

from data_pipelines.trajectories import write_episode

log = logging.getLogger(__name__)

AGENT_RADIUS = 15.0
BLOCK_MASS, BLOCK_MOMENT = 1.0, 3000.0
LOCAL_COG = np.array([0.0, 45.0])
# T outline in block-local coordinates (bar on top: y in [0, 30]; stem: y in [30, 120]).
LOCAL_OUTLINE = np.array(
    [(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], np.float64
)
# Faces the agent can push: (start, end, inward normal). Concave corners are kept clear by
# AGENT_RADIUS + CLEARANCE + 4 so that the approach point is outside the inflated block.
_FACES = (
    ((-57, 0), (57, 0), (0, 1)),  # top of the bar
    ((60, 3), (60, 27), (-1, 0)),  # right end of the bar
    ((-60, 3), (-60, 27), (1, 0)),  # left end of the bar
    ((57, 30), (38, 30), (0, -1)),  # underside of the bar, right
    ((-57, 30), (-38, 30), (0, -1)),  # underside of the bar, left
    ((15, 53), (15, 117), (-1, 0)),  # right side of the stem
    ((-15, 53), (-15, 117), (1, 0)),  # left side of the stem
    ((-12, 120), (12, 120), (0, -1)),  # bottom of the stem
)
CLEARANCE = 4.0  # agent path keeps this far from the block (beyond its radius)
APPROACH = 8.0  # approach point: this far behind the contact (beyond the agent radius)
ANGLE_WEIGHT = 60.0  # px per radian in the error the expert minimises
MAX_DEPTH = 40.0  # longest push considered per decision (px)
PUSH_LEAD = 16.0  # pushing target at most this far beyond the contact
TRAVEL_LEAD = 40.0  # travel target at most this far from the agent
TRAVEL_COST = 0.1  # score cost per 100 px of travel to a push's approach point
KEEP_BONUS = 0.15  # score bonus of the current push


def _contact_points(spacing: float = 8.0):
    points, normals = [], []
    for start, end, normal in _FACES:
        start, end = np.array(start, float), np.array(end, float)
        count = max(2, int(round(np.linalg.norm(end - start) / spacing)) + 1)
        for s in np.linspace(0.0, 1.0, count):
            points.append(start + s * (end - start))
            normals.append(normal)
    return np.array(points), np.array(normals, float)


LOCAL_POINTS, LOCAL_NORMALS = _contact_points()


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


class PushTExpert:
    """Greedy quasi-static pushing controller for ``gym_pusht`` (see module docstring).

    ``act()`` reads ``env.unwrapped``'s block, agent and goal and returns the next action (float64
    (2,), an absolute target position); it keeps only which push it is executing between calls.
    """

    def __init__(self, env):
        self.env = env.unwrapped
        self.current: int | None = None
        self.pushing = False

    def reset(self):
        self.current, self.pushing = None, False

    # ----------------------------------------------------------------- geometry of the state

    def _state(self):
        env = self.env
        block = env.block
        origin = np.array(block.position, float)
        theta = float(block.angle)
        goal_x, goal_y, goal_theta = (float(v) for v in env.goal_pose)
        rot = _rot(theta)
        com = origin + rot @ LOCAL_COG
        goal_com = np.array([goal_x, goal_y]) + _rot(goal_theta) @ LOCAL_COG
        return origin, theta, rot, com, goal_com - com, _wrap(goal_theta - theta)

    def _score(self, rot, com, origin, error, dtheta, agent, obstacle):
        import shapely

        r = (LOCAL_POINTS - LOCAL_COG) @ rot.T  # lever arms (N, 2), world frame
        n = LOCAL_NORMALS @ rot.T  # inward normals (N, 2)
        cross = r[:, 0] * n[:, 1] - r[:, 1] * n[:, 0]
        impulse = 1.0 / (1.0 / BLOCK_MASS + cross**2 / BLOCK_MOMENT)  # per px of push
        a = impulse[:, None] * n / BLOCK_MASS  # com displacement per px
        b = impulse * cross / BLOCK_MOMENT  # rotation per px
        w2 = ANGLE_WEIGHT**2
        depth = np.clip((a @ error + w2 * b * dtheta) / ((a * a).sum(1) + w2 * b * b), 0.0, MAX_DEPTH)
        cost0 = error @ error + w2 * dtheta**2
        rest = error[None] - a * depth[:, None]
        cost1 = (rest * rest).sum(1) + w2 * (dtheta - b * depth) ** 2
        gain = (cost0 - cost1) / max(cost0, 1e-9)
        contact = origin + LOCAL_POINTS @ rot.T
        approach = contact - n * (AGENT_RADIUS + APPROACH)
        lines = shapely.linestrings(np.stack([np.broadcast_to(agent, approach.shape), approach], 1))
        blocked = shapely.intersects(obstacle, lines)
        travel = np.linalg.norm(approach - agent, axis=1)
        around = 1.2 * (np.linalg.norm(agent - com) + np.linalg.norm(approach - com, axis=1))
        travel = np.where(blocked, np.maximum(travel, around), travel)
        if self.pushing and self.current is not None:
            travel[self.current] = 0.0
        score = gain - TRAVEL_COST * travel / 100.0
        reachable = ~shapely.contains_xy(obstacle, approach[:, 0], approach[:, 1])
        score = np.where(reachable & (depth > 0.5), score, -np.inf)
        if self.current is not None:
            score[self.current] += KEEP_BONUS
        return score, depth, contact, n, approach

    # ----------------------------------------------------------------------------- control

    def act(self) -> np.ndarray:
        import shapely

        origin, theta, rot, com, error, dtheta = self._state()
        agent = np.array(self.env.agent.position, float)
        block_poly = shapely.Polygon(origin + LOCAL_OUTLINE @ rot.T)
        obstacle = block_poly.buffer(AGENT_RADIUS + CLEARANCE, join_style="mitre")
        score, depth, contact, normal, approach = self._score(
            rot, com, origin, error, dtheta, agent, obstacle
        )
        best = int(np.argmax(score))
        if not np.isfinite(score[best]):  # nothing helps: stay clear of the block
            self.current, self.pushing = None, False
            return self._travel(agent, agent, obstacle)
        if best != self.current:
            self.current, self.pushing = best, False
        n, c = normal[best], contact[best]
        along = (agent - c) @ n  # < 0: behind the face
        lateral = abs((agent - c) @ np.array([-n[1], n[0]]))
        if not self.pushing and np.linalg.norm(agent - approach[best]) < 3.0:
            self.pushing = True
        if self.pushing and (lateral > 10.0 or along < -(AGENT_RADIUS + APPROACH + 6.0)):
            self.pushing = False
        if self.pushing:
            return c - n * AGENT_RADIUS + n * min(depth[best], PUSH_LEAD)
        return self._travel(agent, approach[best], obstacle)

    def _travel(self, agent, goal, obstacle) -> np.ndarray:
        """Next travel target from ``agent`` to ``goal`` without touching the block: straight if
        clear, else the next vertex of the shortest path over the inflated outline's vertices."""
        import shapely

        if shapely.contains_xy(obstacle, *agent):  # inside the inflated block: back out first
            outer = obstacle.buffer(3.0, join_style="mitre")
            exit_point = np.array(
                shapely.get_coordinates(shapely.shortest_line(outer.exterior, shapely.Point(agent)))[0]
            )
            return self._lead(agent, exit_point)
        if not obstacle.intersects(shapely.LineString([agent, goal])) or np.allclose(agent, goal):
            return self._lead(agent, goal)
        nodes = np.array(obstacle.buffer(3.0, join_style="mitre").exterior.coords[:-1])
        points = np.concatenate([agent[None], goal[None], nodes])
        k = len(points)
        i, j = np.triu_indices(k, 1)
        segments = shapely.linestrings(np.stack([points[i], points[j]], 1))
        free = ~shapely.intersects(obstacle, segments)
        dist = np.full((k, k), np.inf)
        length = np.linalg.norm(points[i] - points[j], axis=1)
        dist[i[free], j[free]] = dist[j[free], i[free]] = length[free]
        # Dijkstra from the goal (node 1), then step to the agent's best neighbour.
        best = np.full(k, np.inf)
        best[1] = 0.0
        done = np.zeros(k, bool)
        for _ in range(k):
            u = int(np.argmin(np.where(done, np.inf, best)))
            if not np.isfinite(best[u]):
                break
            done[u] = True
            best = np.minimum(best, best[u] + dist[u])
        via = int(np.argmin(dist[0] + best))
        if not np.isfinite(dist[0, via] + best[via]):
            return self._lead(agent, goal)
        return self._lead(agent, points[via])

    @staticmethod
    def _lead(agent, target) -> np.ndarray:
        step = target - agent
        norm = float(np.linalg.norm(step))
        return agent + step * min(1.0, TRAVEL_LEAD / norm) if norm > 0 else target.copy()


def make_env(image_size: int = 96, max_steps: int = 300):
    import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
    import gymnasium

    return gymnasium.make(
        "gym_pusht/PushT-v0",
        obs_type="pixels_agent_pos",
        render_mode="rgb_array",
        observation_width=image_size,
        observation_height=image_size,
        max_episode_steps=max_steps,
    )


def episode_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def run_episode(env, env_seed: int, max_steps: int = 300) -> dict:
    """One expert episode: arrays as stored (see module docstring) plus ``coverage`` float (L,)
    and ``steps``."""
    expert = PushTExpert(env)
    obs, info = env.reset(seed=env_seed)
    frames, proprio, actions, rewards, coverage = [], [], [], [], []
    success = False
    for _ in range(max_steps):
        action = expert.act()
        frames.append(obs["pixels"])
        proprio.append(obs["agent_pos"])
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        coverage.append(info["coverage"])
        success = bool(info["is_success"])
        if terminated or truncated:
            break
    return {
        "frames": np.stack(frames).astype(np.uint8),
        "proprio": np.asarray(proprio, np.float32),
        "actions": np.asarray(actions, np.float32),
        "success": success,
        "reward": np.asarray(rewards, np.float32),
        "coverage": np.asarray(coverage, np.float64),
        "env_seed": env_seed,
        "steps": len(actions),
    }


def record_episodes(
    out_dir,
    num_episodes: int,
    seed: int = 0,
    max_steps: int = 300,
    image_size: int = 96,
    fmt: str = "npz",
    stats: dict | None = None,
) -> list[Path]:
    """Records ``num_episodes`` expert episodes into ``out_dir/episode_{i:05d}.{fmt}``.

    ``fmt`` is "npz" (uncompressed) or "h5". When ``stats`` is a dict it is filled with
    ``success_rate``, ``mean_final_coverage``, ``mean_final_reward``, ``mean_max_coverage``,
    ``mean_steps``, ``steps_per_s`` (env steps incl. expert, rendering and writing) and
    per-episode lists ``success`` / ``final_coverage`` / ``steps``.
    """
    if isinstance(num_episodes, bool) or int(num_episodes) != num_episodes or num_episodes < 1:
        raise ValueError(f"num_episodes must be an integer >= 1, got {num_episodes!r}")
    if isinstance(max_steps, bool) or int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if fmt not in ("npz", "h5"):
        raise ValueError(f"fmt must be 'npz' or 'h5', got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = make_env(int(image_size), int(max_steps))
    paths, results = [], []
    start = time.perf_counter()
    try:
        for i in range(int(num_episodes)):
            ep = run_episode(env, episode_seed(int(seed), i), int(max_steps))
            path = out / f"episode_{i:05d}.{fmt}"
            write_episode(
                path,
                ep["frames"],
                ep["proprio"],
                ep["actions"],
                success=ep["success"],
                extra={"reward": ep["reward"], "env_seed": np.int64(ep["env_seed"])},
            )
            paths.append(path)
            results.append(ep)
            log.info(
                "%s: %d steps, success %s, final coverage %.3f",
                path,
                ep["steps"],
                ep["success"],
                ep["coverage"][-1],
            )
    finally:
        env.close()
    elapsed = time.perf_counter() - start
    if stats is not None:
        steps = [ep["steps"] for ep in results]
        stats.update(
            {
                "success": [ep["success"] for ep in results],
                "final_coverage": [float(ep["coverage"][-1]) for ep in results],
                "steps": steps,
                "success_rate": float(np.mean([ep["success"] for ep in results])),
                "mean_final_coverage": float(np.mean([ep["coverage"][-1] for ep in results])),
                "mean_final_reward": float(np.mean([ep["reward"][-1] for ep in results])),
                "mean_max_coverage": float(np.mean([ep["coverage"].max() for ep in results])),
                "mean_steps": float(np.mean(steps)),
                "steps_per_s": sum(steps) / elapsed,
            }
        )
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.pusht_expert", description="Record scripted-expert PushT episodes."
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--episodes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--format", choices=("npz", "h5"), default="npz")
    args = parser.parse_args(argv)
    stats: dict = {}
    try:
        paths = record_episodes(
            args.out,
            args.episodes,
            seed=args.seed,
            max_steps=args.max_steps,
            image_size=args.image_size,
            fmt=args.format,
            stats=stats,
        )
    except ValueError as e:
        parser.error(str(e))
    print(
        f"wrote {len(paths)} episodes to {args.out}: success {sum(stats['success'])}/{len(paths)} "
        f"({stats['success_rate']:.0%}), mean final coverage {stats['mean_final_coverage']:.3f}, "
        f"mean final reward {stats['mean_final_reward']:.3f}, mean max coverage "
        f"{stats['mean_max_coverage']:.3f}, mean {stats['mean_steps']:.0f} steps/episode, "
        f"{stats['steps_per_s']:.0f} steps/s"
    )
    print("final coverage per episode: " + " ".join(f"{c:.2f}" for c in stats["final_coverage"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
