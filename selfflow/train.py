"""The resumable training loop.

``train(cfg, run_dir)`` builds the task, model and state (:mod:`selfflow.run`), resumes from the
run directory's latest checkpoint if there is one, and runs the loop: take the layout the
schedule gives for this step, read its next batch, run the jitted step (:mod:`selfflow.step`),
then the periodic hooks (:mod:`selfflow.hooks`: validation, evaluation, logging, samples,
checkpoints). At the end it writes samples of every layout from the EMA weights and the loss plot.

Batch n is a pure function of (seed, n) and step n's randomness is fold_in(rng, n), so a resumed
run continues bit-identically on the same machine. SIGINT/SIGTERM stop after the current step
with a checkpoint. With ``train.keep_best`` every checkpoint step is logged with the EMA model's
held-out validation losses (:mod:`selfflow.validation`), which the checkpoint stores for ranking.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from selfflow import config as config_lib
from selfflow import hooks as hooks_lib
from selfflow import init_from, sharding
from selfflow.checkpoint import CheckpointDamaged, RunCheckpoints
from selfflow.config import Config, ConfigError
from selfflow.errors import TrainingError
from selfflow.layout import layout_schedule
from selfflow.layout_samples import write_run_samples
from selfflow.metrics_writer import MetricsWriter, plot_losses
from selfflow.model import build_model, count_params
from selfflow.objective import initial_share
from selfflow.run import Placement, check_resumable, init_state, make_optimizer
from selfflow.step import make_train_step
from selfflow.tasks import Task
from selfflow.validation import validation_keys

__all__ = ["train", "TrainResult", "TrainingError", "layout_counts", "default_hooks"]


@dataclasses.dataclass
class TrainResult:
    state: dict
    final_step: int
    stop_signal: int | None  # SIGINT/SIGTERM that stopped the run early, else None
    run_dir: Path

    @property
    def interrupted(self) -> bool:
        return self.stop_signal is not None


def layout_counts(cfg: Config, task: Task, steps: int) -> list[int]:
    """How many batches of each layout the first ``steps`` steps consumed (from the schedule)."""
    counts = [0] * len(task.layouts)
    for n in range(steps):
        counts[_layout_at(cfg, task, n)] += 1
    return counts


def _layout_at(cfg: Config, task: Task, step: int) -> int:
    return layout_schedule(cfg.seed, step, task.weights) if len(task.layouts) > 1 else 0


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    dataset=None,
    progress: bool = True,
    write_samples: bool = True,
    hooks=None,
) -> TrainResult:
    """Trains ``cfg`` in ``run_dir``, resuming from its latest checkpoint if there is one.

    ``dataset`` overrides the configured data of a one-layout run: a random-access sequence whose
    element n is batch n (a dict with the layout's keys and "label"; tests use it to inject bad
    data). ``hooks``: extra periodic actions (see :mod:`selfflow.hooks`) run after the default ones.
    """
    cfg = config_lib.resolve(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = Task(cfg)
    if cfg.train.best_metric.startswith("val/") and cfg.train.best_metric not in validation_keys(task):
        raise ConfigError(
            f"train.best_metric={cfg.train.best_metric!r}: expected one of the validation "
            f"metrics of this run's layouts ({', '.join(validation_keys(task))})"
        )
    if dataset is not None and len(task.layouts) != 1:
        raise ValueError("a dataset override needs a one-layout config")
    model = build_model(cfg, task.token_dims)
    graphdef, tx = nnx.graphdef(model), make_optimizer(cfg.optim)
    state = init_state(cfg, model, tx)
    placement = Placement.of(cfg, task, state, model)

    ckpts = RunCheckpoints(run_dir, retention=cfg.train)
    try:
        if ckpts.latest_step() is None:  # a new run: maybe a warm start
            state = init_from.initialise(cfg, state)
        state, start = _resume(cfg, task, ckpts, run_dir, jax.device_put(state, placement.state))
        if jax.process_index() == 0:
            (run_dir / "config.json").write_text(config_lib.dumps(cfg))
        if start >= cfg.train.steps:
            print(
                f"{run_dir}: already trained for {start} steps (train.steps={cfg.train.steps})",
                file=sys.stderr,
            )
            return TrainResult(state, start, None, run_dir)
        datasets = [dataset] if dataset is not None else [task.dataset(i) for i in range(len(task.layouts))]
        with sharding.use_mesh(placement.mesh, placement.rules):
            result = _loop(
                cfg,
                task,
                state,
                start,
                datasets,
                graphdef,
                tx,
                ckpts,
                run_dir,
                progress,
                placement,
                list(hooks or ()),
            )
    finally:
        ckpts.close()
    if not result.interrupted:
        _warn_short_ema(cfg, result.final_step)
    if write_samples and not result.interrupted:
        if jax.process_count() > 1:  # the EMA is split over hosts: sample afterwards on one
            print(
                f"multi-host run: write samples with `selfflow sample --run-dir {run_dir}` on one host",
                file=sys.stderr,
            )
            return result
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
        ema = jax.device_get(result.state["ema"])  # sampling runs on one device, whatever the mesh
        write_run_samples(cfg, task, nnx.merge(graphdef, ema), run_dir / "samples")
    return result


def _warn_short_ema(cfg: Config, steps: int) -> None:
    """One stderr line when the EMA is still mostly the initialisation (its share > 1/e, i.e. fewer
    steps than the EMA's horizon 1/(1 − decay)): samples, `eval` and the teacher then use it."""
    o = cfg.objective
    share = initial_share(steps, o.ema_decay, o.ema_warmup)
    if cfg.train.init_from or share <= math.exp(-1):  # a warm start's EMA began trained
        return
    print(
        f"warning: the EMA (objective.ema_decay={o.ema_decay}) has averaged {steps} steps, fewer than "
        f"its horizon of ~{1 / (1 - o.ema_decay):.0f}: {share:.0%} of it is still the initialisation, "
        "which samples, `selfflow eval` and the Self-Flow teacher use; sample with --weights online, "
        "train longer, or set objective.ema_warmup=true",
        file=sys.stderr,
    )


def _resume(cfg: Config, task: Task, ckpts: RunCheckpoints, run_dir: Path, state: dict):
    """(state, step) of the checkpoint to resume from: the latest, or ``train.resume_step``;
    (``state``, its step) for a new run (0, or the source's step of a warm start that carries the
    optimizer). A damaged checkpoint (unreadable, or failing its checksums) stops the run
    (``train.on_bad_checkpoint=error``) or, with ``previous``, is set aside as ``<step>.damaged``
    for the newest older one that verifies, with a warning on stderr and in metrics.jsonl. The
    checkpoints after the one resumed from are set aside (never deleted), so the run can save
    those steps again and retention does not count them."""
    steps, wanted, fallback = ckpts.all_steps(), cfg.train.resume_step, cfg.train.on_bad_checkpoint
    if wanted is not None and steps and steps[-1] > wanted and list(ckpts.directory.glob("*.superseded")):
        # applied by an earlier invocation (it set the newer steps aside): rerunning the same
        # command must continue from what that run saved since, not go back to K again
        print(
            f"{run_dir}: train.resume_step={wanted} was applied before (see the *.superseded "
            f"checkpoints); resuming from the latest, step {steps[-1]}",
            file=sys.stderr,
        )
        wanted = None
    if wanted is not None and wanted not in steps:
        raise ConfigError(
            f"train.resume_step={wanted}: {ckpts.directory} has no checkpoint of that step ({steps})"
        )
    if not steps:
        return state, int(state["step"])
    candidates = [s for s in reversed(steps) if wanted is None or s <= wanted]
    damaged = {}
    for last in candidates if fallback == "previous" else candidates[:1]:
        try:
            check_resumable(ckpts.saved_config(last), cfg, run_dir)
            restored, data_state = ckpts.restore(last, state)
            break
        except CheckpointDamaged as e:
            if fallback == "error":
                older = ", ".join(map(str, candidates[1:])) or "none"
                raise e.with_hint(
                    f"it is left as it is; resume from an older checkpoint (steps {older}) with "
                    "--set train.resume_step=K, or the newest that verifies with --set "
                    f"train.on_bad_checkpoint=previous (`selfflow verify --run-dir {run_dir}` checks them all)"
                ) from e
            damaged[last] = e.problem
            print(f"warning: {e}; trying the previous checkpoint", file=sys.stderr)
    else:
        raise TrainingError(
            f"{ckpts.directory}: no checkpoint verifies ({'; '.join(f'step {s}: {p}' for s, p in damaged.items())}); "
            "train from scratch in another --run-dir"
        )
    start = int(restored["step"])
    expected = layout_counts(cfg, task, start)
    if data_state.get("layout_batches", [data_state.get("next_index")]) != expected:
        raise TrainingError(
            f"{ckpts.directory}/{last}: data iterators at {data_state} but step {start} "
            f"implies batches {expected}"
        )
    print(f"{run_dir}: resuming from the checkpoint of step {start}", file=sys.stderr)
    moved = {
        s: ckpts.set_aside(s, "damaged" if s in damaged else "superseded").name for s in steps if s > last
    }
    if moved:
        print(f"{run_dir}: set aside (kept, not loaded): {', '.join(moved.values())}", file=sys.stderr)
    if damaged and jax.process_index() == 0:
        # A line MetricsWriter keeps (step <= the resumed step) but cannot write (its values are floats).
        warning = f"resumed from step {start} (train.on_bad_checkpoint=previous): " + "; ".join(
            f"checkpoint {s} set aside as {moved[s]}: {p}" for s, p in damaged.items()
        )
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": start, "warning": warning}) + "\n")
    return restored, start


def default_hooks(cfg, task, graphdef, run_dir, ckpts, iterators, guard, writer, bar) -> list:
    """The loop's periodic actions in the order they run (see :mod:`selfflow.hooks`)."""
    sample = hooks_lib.Sample(
        cfg, lambda model, out: write_run_samples(cfg, task, model, out), graphdef, run_dir
    )
    return [
        hooks_lib.Diagnose(cfg, task, graphdef),
        hooks_lib.Validate(cfg, task, graphdef),
        hooks_lib.Evaluate(cfg, task, graphdef, run_dir),
        hooks_lib.Log(cfg, task, writer, bar),
        sample,
        hooks_lib.Checkpoint(cfg, task, ckpts, iterators, guard),
    ]


def _loop(
    cfg, task, state, start, datasets, graphdef, tx, ckpts, run_dir, progress, placement, extra_hooks
) -> TrainResult:
    from tqdm import tqdm

    from data_pipelines import loader

    step_fn = make_train_step(cfg, graphdef, tx, task, placement.state)
    iterators = [
        loader.BatchIterator(
            ds,
            start=k,
            read_threads=cfg.data.read_threads,
            prefetch=cfg.data.prefetch,
            worker_count=cfg.data.worker_count,
        )
        if hasattr(ds, "to_iter_dataset")
        else _IndexIterator(ds, k)
        for ds, k in zip(datasets, layout_counts(cfg, task, start))
    ]
    main = jax.process_index() == 0  # one process writes logs; all take part in every step
    writer = MetricsWriter(run_dir, resume_step=start, enabled=main)
    n_params = count_params(nnx.merge(graphdef, state["params"]))
    bar = tqdm(
        total=cfg.train.steps,
        initial=start,
        disable=not (progress and main),
        dynamic_ncols=True,
        desc=f"{cfg.objective.kind} {n_params / 1e6:.2f}M params",
        file=sys.stderr,
    )
    guard = hooks_lib.NonFinite(ckpts.directory, ckpts.latest_step())
    perf = hooks_lib.PerfWindow(cfg, task)
    hooks = default_hooks(cfg, task, graphdef, run_dir, ckpts, iterators, guard, writer, bar) + extra_hooks
    skipped, pending, stop_signal = 0, None, None  # skipped: bad examples replaced in this process

    def record(index, metrics, step):
        """The host metrics line of ``step``, checked finite (StepInfo.record makes it on demand)."""
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if len(task.layouts) > 1:
            host["layout"] = index
        host.update({"data/skipped": skipped, **perf.read(), "perf/compiles": step_fn._cache_size()})
        guard.check(step, host)
        return host

    try:
        with _StopRequest() as stop:
            for step in range(start, cfg.train.steps):
                index = _layout_at(cfg, task, step)
                batch = _next_batch(iterators[index], task.names[index], step)
                skipped += int(np.sum(batch.pop("skipped", 0)))
                placed = sharding.put_batch(batch, placement.batch)
                state, metrics = step_fn(state, placed, index)
                if pending is not None:  # check the previous step without stalling the pipeline
                    guard.check(*pending)
                pending = (step + 1, metrics)
                perf.add(index)
                bar.update(1)
                info = hooks_lib.StepInfo(
                    step=step + 1,
                    final=step + 1 == cfg.train.steps or stop.signal is not None,
                    index=index,
                    state=state,
                    metrics=metrics,
                    batch=placed,
                    make_record=functools.partial(record, index, metrics, step + 1),
                )
                for hook in hooks:
                    if hook.due(info):
                        hook(info)
                if stop.signal is not None and step + 1 < cfg.train.steps:
                    stop_signal = stop.signal
                    print(
                        f"\nstopped by signal {stop.signal} after step {step + 1}; checkpoint saved, "
                        "rerun the same command to resume",
                        file=sys.stderr,
                    )
                    break
    finally:
        bar.close()
        writer.close()
        for it in iterators:
            getattr(it, "close", lambda: None)()
    return TrainResult(state, int(state["step"]), stop_signal, run_dir)


def _next_batch(iterator, layout: str, step: int) -> dict:
    """The next batch; a bad example (``data.on_bad_sample=error``) stops the run naming its file."""
    from data_pipelines.base import BadSampleError

    try:
        return dict(next(iterator))
    except BadSampleError as e:
        raise TrainingError(f"bad data example at step {step} (layout {layout!r}): {e}") from None


class _StopRequest:
    """SIGTERM/SIGINT set a flag; the loop checkpoints after the current step and exits."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _IndexIterator:
    """Iterator over a random-access batch sequence with the grain iterator's state protocol."""

    def __init__(self, dataset, start: int):
        self.dataset, self.index = dataset, start

    def __next__(self):
        item = self.dataset[self.index]
        self.index += 1
        return item

    def get_state(self) -> dict:
        return {"next_index": self.index}
