"""CPU reproduction 2: the paper's ablations (Fig. 11 and §4.4) on Fashion-MNIST, at 250 steps.

Command (from the repository root; 38 min on 2 CPU cores, measured), then the README's table:

    .venv/bin/selfflow sweep paper_repro/cpu/ablations.py
    .venv/bin/python paper_repro/cpu/ablations.py [runs/paper_repro/ablations/results.json]

The settings of reproduction 1 (paper_repro/cpu/fashion_objectives.py: tiny model, batch 64,
evaluation of the EMA model every 125 steps with 256 samples and the per-block probes) except the
EMA decay: 0.99 instead of 0.995, so that at step 250 the initial weights hold 8 % of the EMA
(0.99^250), as at reproduction 1's step 500 (0.995^500); with 0.995 they hold 29 % and the first
four runs' FDs all fell in 206.0-209.2 (an aborted first attempt). Each run changes one thing of
the reference Self-Flow run (mask 0.25, gamma 0.8, teacher at min(t, s),
cosine, student block 2, teacher block 4 of 6):
  mask ratio     0 (one student timestep, L_rep kept), 0.1, 0.25 (reference), 0.5
  gamma          0 (= DTS only, no teacher), 0.4, 0.8 (reference)
  teacher time   min(t, s) (reference) vs an SRA-like gap: s = t - U(0, 0.2)
  distance       cosine (reference) vs l1 (per-token mean absolute difference)
  layers         student block 1 (teacher 4); teacher block 6 (the last; student 2)
  seed           the reference with seeds 1 and 2: the run-to-run spread the effects must exceed
"""

from pathlib import Path

from selfflow.config import exec_python_file
from selfflow.sweep import Sweep

STEPS = 250
EMA_DECAY = 0.99
COMMON = tuple(
    o
    for o in exec_python_file(Path(__file__).with_name("fashion_objectives.py"), "sweep").COMMON
    if not o.startswith("objective.ema_decay=")
)

# name -> (what it changes, as paper_repro/README.md's table says it; overrides)
VARIANTS = {
    "reference": ("-", ()),
    # seed noise of the reference: differences below it are not effects
    "reference_seed1": ("reference, seed 1", ("seed=1",)),
    "reference_seed2": ("reference, seed 2", ("seed=2",)),
    "mask_0": ("mask 0 (one student timestep, L_rep kept)", ("objective.mask_ratio=0.0",)),
    "mask_0.1": ("mask 0.1", ("objective.mask_ratio=0.1",)),
    "mask_0.5": ("mask 0.5", ("objective.mask_ratio=0.5",)),
    "gamma_0": ("γ 0 (DTS only)", ("objective.kind=dts",)),
    "gamma_0.4": ("γ 0.4", ("objective.gamma=0.4",)),
    "time_gap_0.2": ("second timestep s = t − U(0, 0.2)", ("objective.time_gap=0.2",)),
    "l1": ("ℓ1 instead of cosine", ("objective.rep_distance=l1",)),
    "student_layer_1": ("student block 1", ("objective.student_layer=1",)),
    "teacher_layer_6": ("teacher block 6 (last)", ("objective.teacher_layer=6",)),
}

SWEEP = Sweep(
    base="../../experiments/fashion_mnist.py",
    common=COMMON + (f"train.steps={STEPS}", f"objective.ema_decay={EMA_DECAY}"),
    variants={name: overrides for name, (_, overrides) in VARIANTS.items()},
    metrics=(
        "fm_loss",
        "rep_loss",
        "eval/image/image_fd",
        "val/loss",
        "eval/probe/layer_2",
        "eval/probe/layer_4",
    ),
    out="runs/paper_repro/ablations",
)


def readme_table(rows: list[dict]) -> str:
    """The seed-spread line and the table of paper_repro/README.md from the sweep's results.json rows:
    FD, its distance from the reference seeds' mean in their standard deviations, the best block's
    probe, the held-out velocity loss and L_rep."""
    import statistics

    seeds = [r["metrics"]["eval/image/image_fd"] for r in rows if r["group"].startswith("reference")]
    mean, std = statistics.mean(seeds), statistics.stdev(seeds)
    lines = [
        "Reference seeds "
        + " / ".join(str(i) for i in range(len(seeds)))
        + ": FD "
        + " / ".join(f"{fd:.1f}" for fd in seeds)
        + f", mean {mean:.1f}, standard deviation {std:.1f}.",
        "",
        "| run | what changes | FD at 250 | (FD − seed mean) / seed std | best block probe | val/loss | rep_loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, fd = r["metrics"], r["metrics"]["eval/image/image_fd"]
        probe = max(m["eval/probe/layer_2"], m["eval/probe/layer_4"])
        lines.append(
            f"| {r['name']} | {VARIANTS[r['name']][0]} | {fd:.1f} | {(fd - mean) / std:+.1f} | "
            f"{probe:.3f} | {m['val/loss']:.3f} | {m['rep_loss']:.3f} |"
        )
    return "\n".join(lines)


if (
    __name__ == "__main__"
):  # the README's table from a finished sweep (`selfflow sweep` loads this file as a module)
    import json
    import sys

    results = sys.argv[1] if len(sys.argv) > 1 else f"{SWEEP.out}/results.json"
    print(readme_table(json.loads(Path(results).read_text())["rows"]))
