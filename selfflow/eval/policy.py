"""A trained generate-actions layout as a PushT policy for :func:`selfflow.eval.actions.rollout_success`.

:class:`ModelPolicy` turns a layout of the form ``("image:condition", ..., "action")`` into the
policy interface of :mod:`selfflow.eval.actions`: each query conditions on the current
observation frame and returns the generated action chunk (absolute target positions, original
units). Other generated segments (e.g. a future ``video``) are sampled with it and ignored.

Per query: ``observation["pixels"]`` (uint8 (S, S, 3)) is resized to the run's image size and
scaled to [-1, 1] by the very code :class:`data_pipelines.trajectories.TrajectorySource` applies to
recorded frames (Pillow bilinear, ``to_unit_range``), so a policy sees what training saw; the raw
batch of size 1 holds that frame as ``image``, zeros of the dataset's shapes for the generated
segments' keys (``task.segment_batch`` still reads them) and ``label`` (default 0);
:func:`selfflow.layout_samples.generate` samples it with the run's ``sample`` settings (method,
steps, cfg scale, guidance interval; ``steps`` / ``cfg_scale`` override) and the action segment
is detokenised (``modalities.action.detokenize``). The sampling key is
``fold_in(key(seed), k)`` for the k-th query since the last ``reset``, so rollouts from the same
initial state are identical.

PushT: train ``experiments/pusht_video_action.py`` (its ``policy`` layout; the trajectory source
yields each window's first frame as ``image``), then::

    rollout_success(ModelPolicy(cfg, task, ema_model, "policy", execute=8), episodes=50, seed=10_000)

with a seed whose episodes were not recorded for training.
"""

from __future__ import annotations

import jax
import numpy as np

from modalities import action as action_mod
from selfflow.layout import CONDITION, GENERATE


def resize_observation(pixels, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (size, size, 3) in [-1, 1], exactly as ``TrajectorySource``
    turns a recorded frame into ``image``/``video``."""
    from data_pipelines.trajectories import resize_frames

    frames = np.asarray(pixels)
    if frames.dtype != np.uint8 or frames.ndim != 3 or frames.shape[-1] != 3:
        raise ValueError(f"observation pixels must be uint8 (H, W, 3), got {frames.dtype} {frames.shape}")
    return resize_frames(frames[None], int(size))[0]


class ModelPolicy:
    """``policy(observation) -> (T, A)`` target positions from layout ``layout`` (name or index)
    of ``task``; ``execute`` keeps only the chunk's first ``execute`` actions (None: all)."""

    def __init__(
        self,
        cfg,
        task,
        model,
        layout: str | int,
        *,
        execute: int | None = None,
        seed: int = 0,
        label: int = 0,
        steps: int | None = None,
        cfg_scale: float | None = None,
    ):
        if isinstance(layout, str):
            if layout not in task.names:
                raise ValueError(f"no layout {layout!r} in this run (layouts: {task.names})")
            index = task.names.index(layout)
        else:
            if isinstance(layout, bool) or not 0 <= int(layout) < len(task.layouts):
                raise ValueError(f"layout index {layout!r} out of range (layouts: {task.names})")
            index = int(layout)
        if execute is not None and (isinstance(execute, bool) or int(execute) != execute or execute < 1):
            raise ValueError(f"execute must be None or an integer >= 1, got {execute!r}")
        lt = task.layouts[index]
        segments = lt.layout.segments
        described = ", ".join(f"{s.modality}:{s.role}" for s in segments)
        images = [j for j, s in enumerate(segments) if s.modality == "image" and s.role == CONDITION]
        actions = [j for j, s in enumerate(segments) if s.modality == "action" and s.role == GENERATE]
        others = [
            f"{s.modality}:{s.role}"
            for j, s in enumerate(segments)
            if s.role == CONDITION and j not in images
        ]
        if len(images) != 1 or len(actions) != 1 or others:
            problem = (
                "no image:condition segment"
                if not images
                else "no generated action segment"
                if not actions
                else "more than one image:condition or generated action segment"
                if len(images) > 1 or len(actions) > 1
                else f"condition segments other than the image ({', '.join(others)})"
            )
            raise ValueError(
                f"layout {lt.layout.name!r} ({described}) cannot act as a policy: {problem}; "
                "expected ('image:condition', ..., 'action') with every other segment generated"
            )
        spec = task.specs["image"]
        if spec.height != spec.width:
            raise ValueError(
                f"layout {lt.layout.name!r}: image spec {spec.height}x{spec.width} is not square"
            )
        self.cfg, self.task, self.model, self.index = cfg, task, model, index
        self.action_segment, self.execute, self.seed = actions[0], execute, int(seed)
        self.label, self.steps, self.cfg_scale = int(label), steps, cfg_scale
        self.image_size = spec.height
        schema = task.sources[task.layout_sources(index)[0]].schema
        self._zeros = {k: np.zeros((1, *schema[k].shape), np.float32) for k in lt.keys if k != "image"}
        self.calls = 0

    def reset(self, env=None) -> None:
        self.calls = 0

    def raw_batch(self, observation) -> dict:
        """The batch of size 1 that a query samples from (see module docstring)."""
        image = resize_observation(observation["pixels"], self.image_size)
        return {**self._zeros, "image": image[None], "label": np.full((1,), self.label, np.int32)}

    def __call__(self, observation) -> np.ndarray:
        from selfflow.layout_samples import generate

        key = jax.random.fold_in(jax.random.key(self.seed), self.calls)
        self.calls += 1
        tokens = generate(
            self.cfg,
            self.task,
            self.model,
            self.index,
            self.raw_batch(observation),
            key,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
        )[self.action_segment]
        actions, _ = action_mod.detokenize(np.asarray(tokens, np.float32), self.task.specs["action"])
        chunk = np.asarray(actions[0], np.float64)
        return chunk[: self.execute] if self.execute else chunk


def simulator_report(
    run_dir,
    layout: str = "policy",
    *,
    episodes: int = 20,
    seed: int = 10_000,
    execute: int = 8,
    max_steps: int = 300,
    image_size: int = 32,
) -> tuple[int, dict]:
    """(checkpoint step, {model | expert | random: success_rate, mean_final_coverage,
    mean_max_coverage}): the run's EMA ``layout`` rolled out in gym-pusht beside the scripted expert
    and a random policy on the same ``episodes`` initial states (``seed``: not the training ones)."""
    from flax import nnx

    from selfflow.eval.actions import ExpertPolicy, RandomPolicy, rollout_success
    from selfflow.run import load_run

    cfg, state, graphdef, task, step = load_run(run_dir)
    policies = {
        "model": ModelPolicy(cfg, task, nnx.merge(graphdef, state["ema"]), layout, execute=execute),
        "expert": ExpertPolicy(),
        "random": RandomPolicy(seed=seed),
    }
    report = {}
    for name, policy in policies.items():
        result = rollout_success(
            policy,
            episodes,
            seed,
            max_steps,
            image_size=image_size,
            execute=execute if name == "model" else None,
        )
        report[name] = {k: result[k] for k in ("success_rate", "mean_final_coverage", "mean_max_coverage")}
    return step, report


def main(argv: list[str] | None = None) -> int:
    """``python -m selfflow.eval.policy RUN_DIR``: rolls the run's EMA policy layout out in gym-pusht
    and prints its success rate and coverage as JSON, beside the scripted expert's and a random
    policy's on the same initial states."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("run_dir")
    p.add_argument("--layout", default="policy")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=10_000, help="episode seeds (not the recorded training ones)")
    p.add_argument("--execute", type=int, default=8, help="actions of each chunk run before the next query")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--image-size", type=int, default=32, help="rendered frame size (as recorded)")
    args = p.parse_args(argv)
    step, report = simulator_report(
        args.run_dir,
        args.layout,
        episodes=args.episodes,
        seed=args.seed,
        execute=args.execute,
        max_steps=args.max_steps,
        image_size=args.image_size,
    )
    print(json.dumps({"step": step, **report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
