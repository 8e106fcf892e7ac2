"""CPU reproduction 5: the paper's baselines under reproduction 4's warm-start protocol.

Every arm branches from the same shared flow-matching state as paper_repro/cpu/warm_start.py
(its `shared` run, trained there if missing: the same config and seed give the same state), with
its batches, noise, length, EMA and measurements; the flow matching, DTS and Self-Flow arms are
reproduction 4's. The protocol, fixed before the runs:

  full_mask          Self-Flow (γ 0.8) with the masked tokens at τ = 1 (the paper's Fig. 2b)
  diffusion_forcing  Self-Flow (γ 0.8) with every token at its own τ ~ p(t) (Fig. 2b)
  sra                SRA: one timestep, teacher at t − U(0, 0.2), γ 0.5 (SRA's cosine weight)
  repa               REPA: the eval classifier's last convolutional features of the clean image as
                     the frozen encoder (the CPU stand-in for DINOv2), λ = γ = 0.5 (REPA's),
                     projector 128 → 256 → 256 → 128 (REPA's 2048 is 1.8× its width 1152)

Student block 2 and teacher block 4 for all (SRA's and REPA's SiT-XL choices, 8 and 20 of 28, are
the same fractions of the depth). REPA's projector is new to the shared state: it starts freshly
initialised, its AdamW moments fresh (``train.init_optimizer`` carries all the others).

Command (from the repository root; resumable):

    .venv/bin/python paper_repro/cpu/baselines.py [--seeds 0 1] [--report]

Writes runs/paper_repro/warm_start/<arm>/seed<k> (beside reproduction 4's arms) and
paper_repro/results/baselines/ (results.json, results.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from selfflow.config import exec_python_file

ws = exec_python_file(Path(__file__).with_name("warm_start.py"), "warm_start")
RESULTS = ws.ROOT / "paper_repro/results/baselines"
CLASSIFIER_STEPS = 1000  # the eval classifier reproduction 4's FD uses (cached)
REPRODUCTION_4 = dict(ws.ARMS)  # flow_matching, dts, self_flow_0.8, self_flow_4
ARM_NAMES = ("full_mask", "diffusion_forcing", "sra", "repa")


def arms() -> dict[str, tuple[str, ...]]:
    return {
        "full_mask": ("objective.kind=self_flow", "objective.gamma=0.8", "objective.timesteps=full_mask"),
        "diffusion_forcing": (
            "objective.kind=self_flow",
            "objective.gamma=0.8",
            "objective.timesteps=diffusion_forcing",
        ),
        "sra": ("objective.kind=sra", "objective.gamma=0.5"),
        "repa": (
            "objective.kind=repa",
            f"objective.encoder=classifier:{classifier_path()}",
            "objective.encoder_dim=128",
            "objective.projector_dim=256",
            "objective.gamma=0.5",
        ),
    }


def classifier_path() -> Path:
    """The cached eval classifier of Fashion-MNIST (trained once, as reproduction 4's FD does)."""
    from selfflow.eval.classifier import classifier_entry, default_cache_dir

    return classifier_entry(ws.shared_config(), default_cache_dir(ws.STUDY), steps=CLASSIFIER_STEPS)


def run(seeds) -> dict:
    ws.ARMS.clear()
    ws.ARMS.update(arms())  # the study loop trains and measures these
    path = ws.STUDY / "measurements.json"
    measurements = ws._load(path)
    if "start" not in measurements:
        raise SystemExit(
            f"{path}: run paper_repro/cpu/warm_start.py first (the shared phase and its measurement)"
        )
    return ws.run_study(seeds)


def report() -> str:
    """Reproduction 4's arms and these in one table (the same branch point and protocol)."""
    measurements = ws._load(ws.STUDY / "measurements.json")
    ws.ARMS.clear()
    ws.ARMS.update({**REPRODUCTION_4, **{name: () for name in ARM_NAMES}})  # columns only
    table = ws.markdown(measurements)
    RESULTS.mkdir(parents=True, exist_ok=True)
    ws._save(RESULTS / "results.json", measurements)
    (RESULTS / "results.md").write_text(table)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    if not args.report:
        run(args.seeds)
    print(report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
