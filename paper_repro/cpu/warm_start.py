"""CPU reproduction 4: does Self-Flow's representation loss act once the teacher is trained?

Why this design: in reproductions 1-2 the runs start from scratch, so for hundreds of steps the EMA
teacher is worse than the student and its block-k features are mostly what every image shares
(the positional embedding): L_rep is then nearly satisfied for free and cannot show an effect.
Here a shared flow-matching phase trains the network and its EMA first; then every arm branches
from that same state (weights, EMA, AdamW state and step: ``train.init_from`` with
``train.init_optimizer``) with identical batches and noise for a given seed, and only the
objective differs. The protocol below was fixed before any run.

Command (from the repository root; resumable - rerunning trains and measures only what is missing):

    .venv/bin/python paper_repro/cpu/warm_start.py                 # everything, then the report
    .venv/bin/python paper_repro/cpu/warm_start.py --seeds 0       # one seed only
    .venv/bin/python paper_repro/cpu/warm_start.py --report        # tables and curves from what exists

Protocol (experiments/fashion_mnist.py: depth 6, width 128, 49 tokens of 4x4 patches, batch 64,
learning rate 1e-3 after 200 warm-up steps, AdamW):
  shared   flow matching, SHARED_STEPS steps, EMA 0.999, seed 0
  arms     from the shared run's last checkpoint, BRANCH_STEPS more steps, EMA 0.999:
             flow_matching   one timestep per sample
             dts             dual timesteps (mask 0.25), no representation loss
             self_flow_0.8   DTS + 0.8 · L_rep (the paper's γ), student block 2 -> teacher block 4
             self_flow_4     DTS + 4 · L_rep (dose-response)
           seeds 0 and 1: the branch's data order and noise (seed 0 continues the shared stream);
           every arm of a seed sees the same batches and the same ε, t.
Measured at the branch point (once) and at each arm's end:
  val/loss          held-out velocity MSE of the EMA weights (1024 test images x 5 τ, fixed noise)
  val_online/loss   the same for the online (student) weights
  fd                Fréchet distance in the Fashion-MNIST classifier's features, 1024 EMA samples
                    (20 Euler steps, fixed seed) vs 1024 test images; fd_real = real-vs-real floor
  rep/*             cos_own, cos_other, cos_gap, teacher_mean_share and ‖∇L_rep‖/‖∇L_gen‖ (γ = 1)
                    of student (online) vs teacher (EMA) on 512 test images, with Self-Flow's draw
                    (selfflow.diagnostics.heldout_diagnostics; also for arms that never trained L_rep)
  probe             linear probe of the online weights' blocks 1-6 at τ = 0 and τ = 0.5, 4096 training
                    and 2500 test images (±1 % standard error at worst); at the branch point also
                    the raw-pixel and randomly initialised network rows (selfflow.eval.probe)
Writes runs/paper_repro/warm_start/ (runs, measurements.json) and paper_repro/results/warm_start/
(results.json, results.md, curves.json, curves.png).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "runs/paper_repro/warm_start"
RESULTS = ROOT / "paper_repro/results/warm_start"
SHARED_STEPS = 2000
BRANCH_STEPS = 1000
SEEDS = (0, 1)
EMA_DECAY = 0.999
TAUS = (0.0, 0.5)
PROBE = (4096, 2500)  # (training, held-out) examples
FD_SAMPLES = 1024
VAL_BATCHES = 16  # of 64 held-out images
DIAG_BATCHES = 8
COMMON = (
    "train.batch_size=64",
    "train.log_every=25",
    "train.checkpoint_every=250",
    "train.keep_checkpoints=1",
    "train.grad_ratio_every=100",
    f"objective.ema_decay={EMA_DECAY}",
    "sample.steps=20",
)
ARMS = {
    "flow_matching": ("objective.kind=flow_matching",),
    "dts": ("objective.kind=dts",),
    "self_flow_0.8": ("objective.kind=self_flow", "objective.gamma=0.8"),
    "self_flow_4": ("objective.kind=self_flow", "objective.gamma=4.0"),
}
CURVES = ("fm_loss", "rep_loss", "rep/cos_gap", "rep/teacher_mean_share", "rep/grad_ratio")


def _config(overrides):
    from selfflow.config import load_config_file

    return load_config_file(ROOT / "experiments/fashion_mnist.py", list(COMMON) + list(overrides))


def shared_config():
    return _config(("seed=0", "objective.kind=flow_matching", f"train.steps={SHARED_STEPS}"))


def arm_config(arm: str, seed: int):
    return _config(
        (
            f"seed={seed}",
            *ARMS[arm],
            f"train.steps={SHARED_STEPS + BRANCH_STEPS}",
            f"train.init_from={STUDY / 'shared'}",
            "train.init_optimizer=true",
        )
    )


def arm_name(arm: str, seed: int) -> str:
    return f"{arm}/seed{seed}"


# ---------------------------------------------------------------------------- measuring a run


def measure(run_dir: Path, *, baselines: bool) -> dict:
    """Every figure of the protocol for a run directory's last checkpoint."""
    from flax import nnx

    from selfflow.diagnostics import heldout_diagnostics
    from selfflow.eval.classifier import default_cache_dir
    from selfflow.eval.evaluate import EvalSettings, evaluate
    from selfflow.eval.probe import probe_table
    from selfflow.run import load_run
    from selfflow.validation import validation_losses

    cfg, state, graphdef, task, step = load_run(run_dir)
    ema, online = nnx.merge(graphdef, state["ema"]), nnx.merge(graphdef, state["params"])
    out = {"step": step}
    out["val/loss"] = validation_losses(task, ema, 0, batches=VAL_BATCHES)["image"]
    out["val_online/loss"] = validation_losses(task, online, 0, batches=VAL_BATCHES)["image"]
    out.update(heldout_diagnostics(cfg, task, graphdef, state["params"], state["ema"], batches=DIAG_BATCHES))
    settings = EvalSettings(num=FD_SAMPLES, probe=False, seed=0, classifier_steps=1000)
    fd = evaluate(cfg, task, ema, settings, default_cache_dir(STUDY))
    out["fd"], out["fd_real"] = fd["image/image_fd"], fd["image/image_fd_real"]
    table = probe_table(
        online,
        task,
        range(1, online.depth + 1),
        taus=TAUS,
        n_train=PROBE[0],
        n_test=PROBE[1],
        baselines=baselines,
    )
    out.update({f"probe/{k}": v for k, v in table.items()})
    return out


# ---------------------------------------------------------------------------- the study


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def _train(cfg, run_dir: Path, what: str, measurements: dict) -> None:
    from selfflow.train import train

    started = time.time()
    result = train(cfg, run_dir, progress=False, write_samples=False)
    if result.interrupted:
        raise SystemExit(f"{what}: interrupted at step {result.final_step}; rerun to resume")
    seconds = measurements.setdefault("seconds", {})
    seconds[what] = seconds.get(what, 0.0) + time.time() - started


def run_study(seeds) -> dict:
    path = STUDY / "measurements.json"
    measurements = _load(path)
    _log(f"shared phase: flow matching, {SHARED_STEPS} steps")
    _train(shared_config(), STUDY / "shared", "shared", measurements)
    if "start" not in measurements:
        _log("measuring the branch point")
        measurements["start"] = measure(STUDY / "shared", baselines=True)
        _save(path, measurements)
    for seed in seeds:
        for arm in ARMS:
            name = arm_name(arm, seed)
            if name in measurements.get("end", {}):
                continue
            _log(f"{name}: {BRANCH_STEPS} steps")
            _train(arm_config(arm, seed), STUDY / arm / f"seed{seed}", name, measurements)
            _log(f"{name}: measuring")
            measurements.setdefault("end", {})[name] = measure(STUDY / arm / f"seed{seed}", baselines=False)
            _save(path, measurements)
    return measurements


# ---------------------------------------------------------------------------- the report

ROWS = (  # (results key, column title, digits)
    ("val/loss", "held-out loss (EMA)", 4),
    ("val_online/loss", "held-out loss (online)", 4),
    ("fd", "FD (1024)", 2),
    ("rep/cos_own", "cos own", 3),
    ("rep/cos_gap", "cos_gap", 4),
    ("rep/teacher_mean_share", "teacher mean share", 3),
    ("rep/grad_ratio", "‖∇L_rep‖/‖∇L_gen‖", 3),
    ("probe/tau_0/layer_2", "probe block 2, τ=0", 3),
    ("probe/tau_0.5/layer_2", "probe block 2, τ=0.5", 3),
    ("probe/tau_0/layer_4", "probe block 4, τ=0", 3),
    ("probe/tau_0.5/layer_4", "probe block 4, τ=0.5", 3),
)


def summary(measurements: dict) -> dict:
    """{arm: {key: (mean, std over seeds, n seeds)}} of the arms' end figures, and the start."""
    out = {"start": {k: (v, 0.0, 1) for k, v in measurements["start"].items() if isinstance(v, float)}}
    for arm in ARMS:
        runs = [v for k, v in measurements.get("end", {}).items() if k.split("/")[0] == arm]
        if not runs:
            continue
        out[arm] = {}
        for key in runs[0]:
            values = [r[key] for r in runs if isinstance(r.get(key), float)]
            if values:
                mean = sum(values) / len(values)
                std = (
                    math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                    if len(values) > 1
                    else 0.0
                )
                out[arm][key] = (mean, std, len(values))
    return out


def markdown(measurements: dict) -> str:
    """The README's table: one row per figure, one column per arm (mean ± std over seeds)."""
    s = summary(measurements)
    arms = [a for a in ("start", *ARMS) if a in s]
    seeds = {a: s[a]["val/loss"][2] for a in arms}
    head = ["figure"] + [("branch point" if a == "start" else f"{a} (n={seeds[a]})") for a in arms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, title, digits in ROWS:
        cells = []
        for a in arms:
            if key not in s[a]:
                cells.append("-")
                continue
            mean, std, n = s[a][key]
            cells.append(f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else ""))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    start = measurements["start"]
    base = [
        f"{k.removeprefix('probe/')} {start[k]:.3f}"
        for k in sorted(start)
        if "pixels" in k or "random/layer_2" in k
    ]
    se = start.get("probe/n_test")
    lines.append("")
    lines.append(
        "Probe baselines at the branch point: "
        + ", ".join(base)
        + (f"; held-out images {int(se)}, standard error ≤ {0.5 / math.sqrt(se):.3f}." if se else ".")
    )
    return "\n".join(lines) + "\n"


def curves(seeds) -> dict:
    """{run: {metric: [[step, value], ...]}} of the shared phase and every arm's logged metrics."""
    from selfflow.metrics_writer import read_metrics

    runs = {"shared": STUDY / "shared"} | {
        arm_name(a, s): STUDY / a / f"seed{s}"
        for s in seeds
        for a in ARMS
        if (STUDY / a / f"seed{s}").is_dir()
    }
    out = {}
    for name, run_dir in runs.items():
        records = read_metrics(run_dir / "metrics.jsonl")
        out[name] = {m: [[r["step"], r[m]] for r in records if m in r] for m in CURVES}
    return out


def plot(curve_data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ("fm_loss", "rep_loss", "rep/cos_gap", "rep/grad_ratio")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, metric in zip(axes, panels):
        for name, series in curve_data.items():
            points = series.get(metric) or []
            if not points or (name != "shared" and not name.endswith("seed0")):
                continue
            steps, values = zip(*points)
            arm = name.removesuffix("/seed0")
            ax.plot(steps, values, label=arm, lw=1, color=f"C{(['shared', *ARMS]).index(arm)}")
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.axvline(SHARED_STEPS, color="grey", lw=0.5, ls="--")
    axes[0].set_ylim(top=0.6)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("warm start (seed 0): shared flow matching to step 2000, then one arm per objective")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(seeds) -> None:
    measurements = _load(STUDY / "measurements.json")
    if "start" not in measurements:
        raise SystemExit(f"{STUDY / 'measurements.json'}: no measurements yet; run the study first")
    # this study's arms only (paper_repro/cpu/baselines.py adds its own to the same file)
    measurements["end"] = {k: v for k, v in measurements.get("end", {}).items() if k.split("/")[0] in ARMS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    _save(RESULTS / "results.json", measurements)
    curve_data = curves(seeds)
    _save(RESULTS / "curves.json", curve_data)
    plot(curve_data, RESULTS / "curves.png")
    (RESULTS / "results.md").write_text(markdown(measurements))
    print(markdown(measurements))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--report", action="store_true", help="only write the tables and curves")
    args = p.parse_args(argv)
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    if not args.report:
        run_study(args.seeds)
    report(args.seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
