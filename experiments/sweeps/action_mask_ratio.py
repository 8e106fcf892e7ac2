"""Measures the action mask ratio: robotics layout, one run per ratio, held-out velocity MSE.

Command (from the repository root):

    .venv/bin/python experiments/sweeps/action_mask_ratio.py --steps 300 --out runs/action_mask_ratio

Each run trains experiments/world_paired.py's robotics layout alone ([image (condition), video,
action]) for --steps steps with objective.kind=self_flow and the action mask ratio set to one of
{0, 0.1, 0.25, 0.5} (video keeps 0.1), then measures the held-out velocity MSE per modality in
the inference setting (selfflow.validation). Writes results.json and results.md into --out.
Expected runtime: about 2 minutes per ratio on 2 CPU cores at --steps 300.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from flax import nnx

from selfflow.config import LayoutConfig, ModalityConfig, load_config_file
from selfflow.model import build_model
from selfflow.tasks import Task
from selfflow.train import train
from selfflow.validation import validation_losses

RATIOS = (0.0, 0.1, 0.25, 0.5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="runs/action_mask_ratio")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args(argv)
    base = load_config_file(
        Path(__file__).parents[1] / "world_paired.py",
        [f"train.steps={args.steps}", "train.checkpoint_every=1000000"],
    )
    rows = []
    for ratio in RATIOS:
        for seed in range(args.seeds):
            cfg = dataclasses.replace(
                base,
                seed=seed,
                layouts=(LayoutConfig("robotics", ("image:condition", "video", "action"), 1.0, 8),),
                modalities=(ModalityConfig("video"), ModalityConfig("action", mask_ratio=ratio)),
            )
            run_dir = Path(args.out) / f"ratio_{ratio}_seed_{seed}"
            result = train(cfg, run_dir, progress=False, write_samples=False)
            task = Task(cfg)
            model = nnx.merge(nnx.graphdef(build_model(cfg, task.token_dims)), result.state["ema"])
            losses = validation_losses(task, model, 0, batches=8)
            rows.append({"action_mask_ratio": ratio, "seed": seed, **losses})
            print(json.dumps(rows[-1]), file=sys.stderr)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2))
    lines = ["| action mask ratio | seed | held-out action MSE | held-out video MSE |", "|---|---|---|---|"]
    lines += [
        f"| {r['action_mask_ratio']} | {r['seed']} | {r['action']:.4f} | {r['video']:.4f} |" for r in rows
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
