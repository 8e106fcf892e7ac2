"""Training metrics: ``RUN_DIR/metrics.jsonl`` (one JSON object per logged step), TensorBoard
event files under ``RUN_DIR/tensorboard``, and a loss plot.

On resume, lines logged after the restored checkpoint (work lost in the crash) are dropped, so
the file describes exactly one trajectory.
"""

from __future__ import annotations

import json
from pathlib import Path


class MetricsWriter:
    """Writes on JAX process 0 only (``enabled=False`` elsewhere): one copy of the logs per run."""

    def __init__(self, run_dir: str | Path, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.path = Path(run_dir) / "metrics.jsonl"
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step else []
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        from tensorboardX import SummaryWriter  # imported lazily: pulls in protobuf

        self.tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step or None)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in metrics.items():
            self.tensorboard.add_scalar(f"train/{key}", float(value), int(step))

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(metrics_path: str | Path, out_path: str | Path) -> Path:
    """Plots the generation loss (per modality for multimodal runs) and rep_loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    if not records:
        raise ValueError(f"{metrics_path}: no metrics to plot")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    per_modality = sorted({k for r in records for k in r if k.startswith("fm_loss/")})
    for key in ("loss", "fm_loss") if len(per_modality) < 2 else per_modality:
        points = [
            (r["step"], r[key]) for r in records if key in r
        ]  # a modality logs only when its layout ran
        axes[0].plot(*zip(*points), label=key, alpha=0.8)
    axes[0].set_yscale("log")
    axes[0].set_title("generation loss")
    rep = [(r["step"], r["rep_loss"]) for r in records if "rep_loss" in r]  # not warning lines
    if any(v for _, v in rep):
        axes[1].plot(*zip(*rep), color="C2", label="rep_loss")
    axes[1].set_title("representation loss")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
