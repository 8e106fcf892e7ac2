"""``selfflow sweep FILE``: train a grid of runs of one experiment and tabulate their metrics.

FILE is a Python file defining ``SWEEP = Sweep(...)``::

    SWEEP = Sweep(
        base="../experiments/fashion_mnist.py",         # relative to FILE (or to the working dir)
        common=("train.steps=2000",),                   # overrides of every run
        variants={"fm": ("objective.kind=flow_matching",), "selfflow": ()},
        grid={"objective.gamma": (0.4, 0.8)},           # crossed with every variant
        seeds=(0, 1),
        metrics=("fm_loss", "eval/image/classifier_fd"),  # last logged value of each, per run
    )

Run names read as their settings: ``selfflow__objective.gamma=0.4__seed1`` (the seed suffix only
with several seeds). A variant may set its own ``seed=N`` (with a single ``seeds`` entry): it
runs once with that seed, e.g. ``"reference_seed1": ("seed=1",)`` for seed noise. Every run's
config is loaded and validated before anything trains, so a typo in the last run fails at once.
Runs train one after another into ``OUT/<name>`` and resume like any run: rerunning a sweep skips
finished runs and continues an interrupted one.
``OUT/results.json`` and ``OUT/results.md`` hold one row per run (its overrides, steps, the
training seconds summed over invocations, the metrics) and, with several seeds, mean ± std.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

from selfflow.config import Config, ConfigError, exec_python_file, load_config_file
from selfflow.metrics_writer import read_metrics


@dataclasses.dataclass(frozen=True)
class Sweep:
    base: str
    common: tuple[str, ...] = ()
    variants: dict = dataclasses.field(default_factory=dict)  # name -> overrides
    grid: dict = dataclasses.field(default_factory=dict)  # key -> values
    seeds: tuple[int, ...] = (0,)
    metrics: tuple[str, ...] = ("loss", "fm_loss", "rep_loss")
    out: str = ""  # default: runs/sweeps/<FILE stem>


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    group: str  # the run's name without its seed: seeds of one group are averaged
    overrides: tuple[str, ...]
    seed: int


def load_sweep(path: str | Path) -> tuple[Sweep, Path]:
    """The file's ``SWEEP`` and the resolved path of its base experiment."""
    path = Path(path)
    sweep = getattr(exec_python_file(path, "sweep"), "SWEEP", None)
    if not isinstance(sweep, Sweep):
        raise ConfigError(f"{path}: expected a module-level SWEEP = selfflow.sweep.Sweep(...)")
    base = path.parent / sweep.base
    if not base.is_file():
        base = Path(sweep.base)
    if not base.is_file():
        raise ConfigError(
            f"{path}: base {sweep.base!r} is neither relative to {path.parent} nor to the working directory"
        )
    return sweep, base


def expand(sweep: Sweep) -> list[Run]:
    """Every run of the sweep: variants x grid points x seeds."""
    variants = list(sweep.variants.items()) or [("", ())]
    keys = list(sweep.grid)
    points = list(itertools.product(*(sweep.grid[k] for k in keys)))
    if not sweep.seeds:
        raise ConfigError("sweep: seeds is empty")
    if "seed" in sweep.grid:
        raise ConfigError(
            f"sweep: grid sets seed; use seeds=(...) for several seeds (got seeds={sweep.seeds})"
        )
    runs = []
    for (vname, voverrides), point in itertools.product(variants, points):
        settings = [f"{k}={_fmt(v)}" for k, v in zip(keys, point)]
        group = "__".join([p for p in (vname, *settings) if p]) or "base"
        own = [o for o in voverrides if o.split("=", 1)[0].strip() == "seed"]
        if own and len(sweep.seeds) > 1:
            raise ConfigError(
                f"sweep: variant {vname!r} sets seed; use seeds=(...) for several seeds "
                f"(got seeds={sweep.seeds})"
            )
        if own:  # a variant with its own seed (e.g. a second seed of one run): it runs once, with it
            try:
                seed = int(own[-1].split("=", 1)[1])
            except ValueError:
                raise ConfigError(f"sweep: variant {vname!r}: {own[-1]!r} is not an integer seed") from None
            runs.append(Run(group, group, (*sweep.common, *voverrides, *settings), seed))
            continue
        for seed in sweep.seeds:
            name = group + (f"__seed{seed}" if len(sweep.seeds) > 1 else "")
            runs.append(Run(name, group, (*sweep.common, *voverrides, *settings, f"seed={seed}"), seed))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep: duplicate run names {sorted({n for n in names if names.count(n) > 1})}")
    return runs


def _fmt(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def configs(sweep: Sweep, base: Path) -> dict[str, Config]:
    """Every run's validated config; a bad override names its run."""
    out = {}
    for run in expand(sweep):
        try:
            out[run.name] = load_config_file(base, list(run.overrides))
        except ConfigError as e:
            raise ConfigError(f"sweep run {run.name!r}: {e}") from None
    return out


def run_sweep(
    path: str | Path, out: str | Path | None = None, only: tuple[str, ...] = (), dry_run: bool = False
) -> list[dict]:
    from selfflow.train import train

    sweep, base = load_sweep(path)
    runs, cfgs = expand(sweep), configs(sweep, base)
    unknown = set(only) - {r.name for r in runs}
    if unknown:
        raise ConfigError(f"--only {sorted(unknown)}: not runs of {path} ({', '.join(r.name for r in runs)})")
    out = Path(out or sweep.out or Path("runs") / "sweeps" / Path(path).stem)
    if dry_run:
        for run in runs:
            print(f"{run.name}: {' '.join(run.overrides)}")
        return []
    for run in runs:
        if only and run.name not in only:
            continue
        run_dir = out / run.name
        record = run_dir / "sweep_run.json"
        seconds = json.loads(record.read_text())["seconds"] if record.exists() else 0.0
        start = time.perf_counter()
        print(f"sweep: {run.name} -> {run_dir}", file=sys.stderr)
        train(cfgs[run.name], run_dir, progress=False, write_samples=False)
        record.write_text(
            json.dumps({"seconds": seconds + time.perf_counter() - start, "overrides": list(run.overrides)})
        )
    rows = [
        _row(run, out / run.name, sweep.metrics)
        for run in runs
        if (out / run.name / "metrics.jsonl").exists()
    ]
    (out / "results.json").write_text(
        json.dumps({"base": str(base), "sweep": dataclasses.asdict(sweep), "rows": rows}, indent=1)
    )
    table = markdown(rows, sweep.metrics)
    (out / "results.md").write_text(f"# Sweep {Path(path).name}\n\nBase: `{base}`\n\n{table}")
    print(table)
    return rows


def _row(run: Run, run_dir: Path, metrics: tuple[str, ...]) -> dict:
    records = read_metrics(run_dir / "metrics.jsonl")
    last = {}
    for r in records:
        last.update(r)
    record = run_dir / "sweep_run.json"
    return {
        "name": run.name,
        "group": run.group,
        "seed": run.seed,
        "overrides": list(run.overrides),
        "run_dir": str(run_dir),
        "step": last.get("step", 0),
        "seconds": json.loads(record.read_text())["seconds"] if record.exists() else math.nan,
        "metrics": {m: last.get(m, math.nan) for m in metrics},
    }


def markdown(rows: list[dict], metrics: tuple[str, ...]) -> str:
    """One row per run; with several seeds per group, a second table of mean ± std."""
    head = ["run", "steps", "seconds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [r["name"], str(r["step"]), f"{r['seconds']:.0f}", *(_num(r["metrics"][m]) for m in metrics)]
            )
            + " |"
        )
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    if any(len(g) > 1 for g in groups.values()):
        lines += ["", "| group | seeds | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 2)]
        for name, group in groups.items():
            cells = []
            for m in metrics:
                values = [r["metrics"][m] for r in group if not math.isnan(r["metrics"][m])]
                cells.append(
                    "-"
                    if not values
                    else _num(statistics.mean(values))
                    + (f" ± {statistics.stdev(values):.4g}" if len(values) > 1 else "")
                )
            lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.4g}"
