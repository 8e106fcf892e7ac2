"""`selfflow sweep` and `selfflow compare`: grids expand as written, runs resume, tables equal the logs."""

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from selfflow.cli import main
from selfflow.config import ConfigError
from selfflow.metrics_writer import read_metrics
from selfflow.sweep import Sweep, configs, expand, run_sweep

TINY = (
    "model.depth=2",
    "model.hidden_size=32",
    "model.num_heads=2",
    "train.steps=4",
    "train.batch_size=8",
    "train.log_every=2",
    "train.checkpoint_every=2",
    "train.eval_every=0",
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(tmp_path, body: str):
    path = tmp_path / "grid.py"
    path.write_text(f"from selfflow.sweep import Sweep\nSWEEP = Sweep({body})\n")
    return path


def test_variants_grid_and_seeds_expand_to_named_runs():
    runs = expand(
        Sweep(
            base="b.py",
            common=("train.steps=3",),
            variants={"fm": ("objective.kind=flow_matching",), "sf": ()},
            grid={"objective.gamma": (0.4, 0.8)},
            seeds=(0, 1),
        )
    )
    assert [r.name for r in runs] == [
        f"{v}__objective.gamma={g}__seed{s}" for v in ("fm", "sf") for g in (0.4, 0.8) for s in (0, 1)
    ]
    assert runs[0].overrides == (
        "train.steps=3",
        "objective.kind=flow_matching",
        "objective.gamma=0.4",
        "seed=0",
    )
    assert runs[0].group == "fm__objective.gamma=0.4"
    assert [r.name for r in expand(Sweep(base="b.py"))] == ["base"]


def test_a_variant_may_set_its_own_seed_but_not_beside_several():
    runs = expand(Sweep(base="b.py", variants={"ref": (), "ref_seed1": ("objective.gamma=0.4", "seed=1")}))
    assert [(r.name, r.seed, r.overrides[-1]) for r in runs] == [
        ("ref", 0, "seed=0"),
        ("ref_seed1", 1, "seed=1"),
    ]
    cfgs = configs(Sweep(base="b.py", variants={"s": ("seed=3",)}), Path(REPO, "experiments/quickstart.py"))
    assert cfgs["s"].seed == 3
    with pytest.raises(ConfigError, match=r"variant 'ref_seed1' sets seed; use seeds"):
        expand(Sweep(base="b.py", variants={"ref_seed1": ("seed=1",)}, seeds=(0, 1)))
    with pytest.raises(ConfigError, match=r"'seed=x' is not an integer seed"):
        expand(Sweep(base="b.py", variants={"bad": ("seed=x",)}))
    with pytest.raises(ConfigError, match=r"grid sets seed"):
        expand(Sweep(base="b.py", grid={"seed": (1, 2)}))


def test_a_bad_override_in_any_run_fails_before_training(tmp_path):
    path = _write(
        tmp_path,
        f"base={REPO + '/experiments/quickstart.py'!r}, common={TINY!r}, "
        "grid={'objective.gamma': (0.4, 0.8, 'x')}",
    )
    with pytest.raises(ConfigError, match=r"objective.gamma=x"):
        run_sweep(path, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2


def test_sweep_trains_tabulates_and_resumes(tmp_path, capsys):
    path = _write(
        tmp_path,
        f"base={REPO + '/experiments/quickstart.py'!r}, common={TINY!r}, "
        "variants={'fm': ('objective.kind=flow_matching',), 'sf': ()}, "
        "metrics=('fm_loss', 'rep_loss', 'no_such_metric')",
    )
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    assert not out.exists() and "fm: " in capsys.readouterr().out
    rows = run_sweep(path, out=out)
    assert [r["name"] for r in rows] == ["fm", "sf"]
    for row in rows:
        last = read_metrics(out / row["name"] / "metrics.jsonl")[-1]
        assert row["step"] == last["step"] == 4
        assert row["metrics"]["fm_loss"] == last["fm_loss"]
        assert row["seconds"] > 0
    assert rows[0]["metrics"]["rep_loss"] == 0 < rows[1]["metrics"]["rep_loss"]
    table = (out / "results.md").read_text()
    assert "| fm | 4 |" in table and " - |" in table  # the unknown metric is shown as missing
    saved = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["fm", "sf"]
    # a rerun trains nothing: the checkpoints are untouched and the seconds are kept
    ckpt = out / "sf" / "checkpoints"
    before = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")}
    again = run_sweep(path, out=out, only=("sf",))
    assert {p: p.stat().st_mtime_ns for p in ckpt.rglob("*")} == before
    assert again[1]["seconds"] >= rows[1]["seconds"]
    with pytest.raises(ConfigError, match="nope"):
        run_sweep(path, out=out, only=("nope",))

    # compare: one PNG; the table's last values are the logs'
    png = tmp_path / "cmp.png"
    assert main(["compare", str(out), "--out", str(png), "--metric", "fm_loss"]) == 0
    text = capsys.readouterr().out
    assert Image.open(png).size[0] > 100
    for name in ("fm", "sf"):
        last = read_metrics(out / name / "metrics.jsonl")[-1]["fm_loss"]
        line = next(l for l in text.splitlines() if l.startswith(name + " "))
        assert float(line.split()[3]) == pytest.approx(last, rel=1e-3)
    # equal compute: x is the cumulative FLOPs; the Self-Flow run did more per step
    assert main(["compare", str(out / "fm"), str(out / "sf"), "--out", str(png), "--x", "compute"]) == 0
    assert main(["compare", str(out / "fm"), "--out", str(png), "--metric", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_compare_errors_name_the_run(tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert main(["compare", str(old), "--out", str(tmp_path / "a.png"), "--x", "compute"]) == 2
    assert "perf/flops_per_step" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "a.png")]) == 2
    assert "missing" in capsys.readouterr().err


def test_compute_axis_is_the_cumulative_flops(tmp_path):
    from selfflow.compare import _series

    records = [
        {"step": 2, "loss": 1.0, "perf/flops_per_step": 10.0},
        {"step": 6, "loss": 0.5, "perf/flops_per_step": 20.0},
    ]
    xs, ys = _series(records, "loss", "compute", tmp_path)
    assert xs.tolist() == [20.0, 100.0] and ys.tolist() == [1.0, 0.5]


def test_best_is_the_max_of_accuracies_and_the_min_of_losses():
    from selfflow.compare import best

    values = [0.5, float("nan"), 0.9, 0.7]
    assert best("eval/probe/layer_2", values) == 0.9 and best("cos_sim", values) == 0.9
    assert best("eval/policy/success_rate", values) == 0.9
    assert best("fm_loss", values) == 0.5 and best("eval/image/image_fd", values) == 0.5
