"""``selfflow compare RUN...``: the training curves of several runs in one PNG, and a table.

Each RUN is a run directory (its ``metrics.jsonl``) or a ``selfflow sweep`` output directory
(expanded to its runs via ``results.json``). One subplot per metric, one line per run; ``x`` is
the step, or the training compute in FLOPs (``step × perf/flops_per_step``, as logged since
MFU logging) for equal-compute comparisons. ``smooth`` = trailing mean over that many points.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from selfflow.metrics_writer import read_metrics

DEFAULT_METRICS = ("loss", "fm_loss", "rep_loss")
# Metrics whose best value is the largest (accuracies, similarities, rates); every other is a loss
# or a distance, best when smallest.
HIGHER_IS_BETTER = (
    "probe",
    "cos_sim",
    "accuracy",
    "success",
    "coverage",
    "synchrony",
    "steps_per_sec",
    "mfu",
)


def best(metric: str, values) -> float:
    """The best of a metric's logged values: max for HIGHER_IS_BETTER names, else min (NaNs ignored)."""
    higher = any(word in metric for word in HIGHER_IS_BETTER)
    return float((np.nanmax if higher else np.nanmin)(values))


class CompareError(ValueError):
    """A run or metric that cannot be compared; the message names it."""


def run_dirs(paths: list[str | Path]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if (p / "metrics.jsonl").exists():
            out.append(p)
        elif (p / "results.json").exists():
            out += [Path(r["run_dir"]) for r in json.loads((p / "results.json").read_text())["rows"]]
        else:
            raise CompareError(
                f"{p}: no metrics.jsonl (not a run directory) and no results.json (not a sweep directory)"
            )
    return out


def _series(records: list[dict], metric: str, x: str, run: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in records if metric in r]
    steps = np.array([r["step"] for r in rows], float)
    if x == "compute":
        if any("perf/flops_per_step" not in r for r in rows):
            raise CompareError(
                f"{run}: no perf/flops_per_step in its metrics (trained before FLOP logging); use --x step"
            )
        # FLOPs so far: each logged record covers the steps since the previous one
        per_step = np.array([r["perf/flops_per_step"] for r in rows])
        steps = np.cumsum(np.diff(np.concatenate([[0.0], steps])) * per_step)
    return steps, np.array([r[metric] for r in rows], float)


def _smooth(y: np.ndarray, w: int) -> np.ndarray:
    if w <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.concatenate([[0.0], y]))
    n = np.arange(1, len(y) + 1)
    lo = np.maximum(n - w, 0)
    return (c[n] - c[lo]) / (n - lo)


def compare(
    paths: list[str | Path],
    out: str | Path,
    *,
    metrics: tuple[str, ...] = (),
    x: str = "step",
    smooth: int = 1,
    labels: list[str] | None = None,
) -> str:
    """Writes the PNG and returns the text table (last and best value of each metric per run; see ``best``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in ("step", "compute"):
        raise CompareError(f"x={x!r}: expected 'step' or 'compute'")
    dirs = run_dirs(paths)
    labels = labels or [d.name for d in dirs]
    if len(labels) != len(dirs):
        raise CompareError(f"{len(labels)} labels for {len(dirs)} runs")
    records = {d: read_metrics(d / "metrics.jsonl") for d in dirs}
    logged = {k for recs in records.values() for r in recs for k in r if k != "step"}
    if not metrics:
        metrics = tuple(
            m
            for m in DEFAULT_METRICS
            if m in logged
            and (m != "rep_loss" or any(r.get(m, 0) for recs in records.values() for r in recs))
        )
    missing = [m for m in metrics if m not in logged]
    if missing:
        raise CompareError(
            f"metrics {missing} were logged by none of the runs; they logged: {', '.join(sorted(logged))}"
        )
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    table = [f"{'run':30s} {'metric':28s} {'last step':>9s} {'last':>10s} {'best':>10s}"]
    for ax, metric in zip(axes[0], metrics):
        for d, label in zip(dirs, labels):
            xs, ys = _series(records[d], metric, x, d)
            if len(ys) == 0:
                table.append(f"{label:30s} {metric:28s} {'(not logged)':>9s}")
                continue
            ax.plot(xs, _smooth(ys, smooth), label=label)
            last_step = max(r["step"] for r in records[d] if metric in r)
            table.append(f"{label:30s} {metric:28s} {last_step:9d} {ys[-1]:10.4g} {best(metric, ys):10.4g}")
        ax.set_title(metric)
        ax.set_xlabel("step" if x == "step" else "training FLOPs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return "\n".join(table)
