"""Training: the train state, the jitted Self-Flow step, and the resumable loop.

Train state (a plain pytree, what Orbax saves):
    step       int32 ()            number of optimizer steps taken
    params     pure dict           float32 master weights of the student (+ projector)
    ema        pure dict           EMA teacher, initialised as an exact copy of ``params``
    opt_state  optax state         AdamW moments
    rng        uint32 (2,)         base key; step n uses fold_in(rng, n)

Batch n is a pure function of (seed, n) (see ``data_pipelines.loader``) and the step's
randomness is fold_in(rng, n), so a resumed run continues bit-identically on the same machine.

With ``train.keep_best`` every checkpoint step is logged together with the EMA model's held-out
validation loss (:func:`validation_metrics`): ``val/<modality>`` for a single-layout run,
``val/<layout>/<modality>`` for a mixed one, and ``val/loss``, their mean. That record is also
stored with the checkpoint, for the retention policy to rank.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from data_pipelines import loader
from data_pipelines.base import BadSampleError
from selfflow import config as config_lib
from selfflow import flops, objective, sharding
from selfflow.checkpoint import RunCheckpoints
from selfflow.config import Config, ConfigError
from selfflow.layout import CONDITION, layout_schedule
from selfflow.metrics_writer import MetricsWriter, plot_losses
from selfflow.model import SelfFlowTransformer, build_model, count_params
from selfflow.tasks import Task
from selfflow.validation import validation_losses

MONITORED = ("loss", "fm_loss", "rep_loss", "grad_norm")
VALIDATION_BATCHES = 2  # held-out batches per layout at each checkpoint (with train.keep_best)
# Keys that may change when a run is resumed (how long, how often, what is kept), everything else may not.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.keep_every", "train.keep_best", "train.best_metric",
                     "train.best_mode", "train.sample_every", "train.eval_every", "train.eval_samples",
                     "train.eval_classifier_steps", "train.eval_probe", "sample.", "data.read_threads",
                     "data.prefetch", "data.worker_count", "data.on_bad_sample", "mesh.",
                     "model.conditioning", "model.remat")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss or gradient, incompatible run directory)."""


def make_optimizer(ocfg: config_lib.OptimConfig) -> optax.GradientTransformation:
    lr = ocfg.learning_rate
    if ocfg.warmup_steps:
        lr = optax.linear_schedule(0.0, ocfg.learning_rate, ocfg.warmup_steps)
    return optax.chain(optax.clip_by_global_norm(ocfg.grad_clip_norm),
                       optax.adamw(lr, b1=ocfg.b1, b2=ocfg.b2, weight_decay=ocfg.weight_decay))


def init_state(cfg: Config, model: SelfFlowTransformer, tx: optax.GradientTransformation) -> dict:
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "ema": jax.tree.map(jnp.copy, params),
        "opt_state": tx.init(params),
        "rng": jax.random.key_data(jax.random.key(cfg.seed)),
    }


def make_train_step(cfg: Config, graphdef, tx: optax.GradientTransformation, task: Task,
                    shardings=None):
    """Returns step(state, raw_batch, layout_index) -> (state, metrics); state donated.

    ``layout_index`` is static: each layout compiles once, on its first occurrence.
    ``shardings`` (a tree like the state, see ``sharding.state_shardings``) pins the new state to
    the placement of the old one; metrics come back replicated.
    """
    decay = cfg.objective.ema_decay

    def step(state, raw, index):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        batch = task.segment_batch(index, raw)
        layout = task.layouts[index].layout
        teacher = nnx.merge(graphdef, state["ema"])

        def loss_of(params):
            return objective.segment_loss_fn(nnx.merge(graphdef, params), teacher, batch, layout,
                                             key, cfg, task.mask_ratios, task.loss_weights)

        (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state,
                         ema=objective.ema_update(state["ema"], params, decay))
        return new_state, metrics

    if shardings is None:
        return jax.jit(step, static_argnums=2, donate_argnums=0)
    replicated = NamedSharding(jax.tree.leaves(shardings)[0].mesh, PartitionSpec())
    return jax.jit(step, static_argnums=2, donate_argnums=0, out_shardings=(shardings, replicated))


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run lives: the mesh, the state's shardings and the batch's."""
    mesh: Any
    state: Any
    batch: NamedSharding

    @classmethod
    def of(cls, cfg: Config, task: Task, state: dict) -> "Placement":
        mesh, rules = sharding.make_mesh(cfg.mesh), sharding.parse_rules(cfg.mesh.rules)
        divisor = sharding.batch_divisor(mesh, rules)
        for lt in task.layouts:
            if lt.batch_size % divisor:
                raise ConfigError(f"layouts[{lt.layout.name!r}]: batch size {lt.batch_size} is not divisible "
                                  f"by the {divisor} devices of the batch axes ({', '.join(rules['batch'])}); "
                                  "change the batch size or the mesh")
        return cls(mesh, sharding.state_shardings(state, mesh, rules), sharding.batch_sharding(mesh, rules))


def layout_counts(cfg: Config, task: Task, steps: int) -> list[int]:
    """How many batches of each layout the first ``steps`` steps consumed (from the schedule)."""
    counts = [0] * len(task.layouts)
    for n in range(steps):
        counts[layout_schedule(cfg.seed, n, task.weights) if len(counts) > 1 else 0] += 1
    return counts


def _val_prefix(task: Task, index: int) -> str:
    return f"val/{task.names[index]}/" if len(task.names) > 1 else "val/"


def validation_keys(task: Task) -> list[str]:
    """The names :func:`validation_metrics` returns, known before anything runs."""
    return ["val/loss"] + list(dict.fromkeys(
        _val_prefix(task, i) + seg.modality for i, lt in enumerate(task.layouts)
        for seg in lt.layout.segments if seg.role != CONDITION))


def validation_metrics(task: Task, model) -> dict[str, float]:
    """Held-out velocity MSE of every layout's generated modalities and their mean ``val/loss``:
    a measure comparable across checkpoints (fixed data, noise and τ), unlike the training loss."""
    out = {_val_prefix(task, i) + m: v for i in range(len(task.layouts))
           for m, v in validation_losses(task, model, i, batches=VALIDATION_BATCHES).items()}
    return {"val/loss": float(np.mean(list(out.values()))), **out}


def check_finite(step: int, metrics: dict, last_good: int | None, ckpt_dir: Path) -> None:
    values = {k: float(v) for k, v in jax.device_get(metrics).items() if k in MONITORED}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        what = ", ".join(f"{k}={v}" for k, v in bad.items())
        kept = (f"the last good checkpoint (step {last_good}) in {ckpt_dir} was not overwritten"
                if last_good is not None else "no checkpoint had been written yet")
        raise TrainingError(f"non-finite {what} at step {step}; training stopped and {kept}")


def _check_resumable(saved: Config, cfg: Config, run_dir: Path) -> None:
    flat_saved = _flatten(config_lib.resolved_dict(saved))
    flat_now = _flatten(config_lib.resolved_dict(cfg))
    diffs = [k for k in flat_now if flat_now[k] != flat_saved.get(k)
             and not any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUMABLE_CHANGES)]
    if diffs:
        detail = "; ".join(f"{k}: run has {flat_saved.get(k)!r}, command says {flat_now[k]!r}"
                           for k in diffs)
        raise ConfigError(f"{run_dir} holds a run with a different config ({detail}); "
                          "use another --run-dir or the same settings")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


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


@dataclasses.dataclass
class TrainResult:
    state: dict
    final_step: int
    stop_signal: int | None  # SIGINT/SIGTERM that stopped the run early, else None
    run_dir: Path

    @property
    def interrupted(self) -> bool:
        return self.stop_signal is not None


def train(cfg: Config, run_dir: str | Path, *, dataset=None, progress: bool = True,
          write_samples: bool = True) -> TrainResult:
    """Trains ``cfg`` in ``run_dir``, resuming from its latest checkpoint if there is one.

    ``dataset`` overrides the configured data: a random-access sequence whose element n is
    batch n as {"image": (B, H, W, 3) float, "label": (B,) int} (tests use it to inject bad data).
    """
    config_lib.validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = Task(cfg)
    if cfg.train.best_metric.startswith("val/") and cfg.train.best_metric not in validation_keys(task):
        raise ConfigError(f"train.best_metric={cfg.train.best_metric!r}: expected one of the validation "
                          f"metrics of this run's layouts ({', '.join(validation_keys(task))})")
    model = build_model(cfg, task.token_dims)
    graphdef = nnx.graphdef(model)
    tx = make_optimizer(cfg.optim)
    state = init_state(cfg, model, tx)
    placement = Placement.of(cfg, task, state)
    state = jax.device_put(state, placement.state)
    if dataset is not None and len(task.layouts) != 1:
        raise ValueError("a dataset override needs a single-layout config")
    datasets = [dataset] if dataset is not None else [task.dataset(i) for i in range(len(task.layouts))]

    ckpts = RunCheckpoints(run_dir, retention=cfg.train)
    start = ckpts.latest_step() or 0
    last_good = ckpts.latest_step()
    try:
        if last_good is not None:
            _check_resumable(ckpts.saved_config(last_good), cfg, run_dir)
            state, data_state = ckpts.restore(last_good, state)
            start = int(state["step"])
            print(f"{run_dir}: resuming from the checkpoint of step {start}", file=sys.stderr)
            expected = layout_counts(cfg, task, start)
            if data_state.get("layout_batches", [data_state.get("next_index")]) != expected:
                raise TrainingError(f"{ckpts.directory}/{last_good}: data iterators at "
                                    f"{data_state} but step {start} implies batches {expected}")
        if jax.process_index() == 0:
            (run_dir / "config.json").write_text(config_lib.dumps(cfg))
        if start >= cfg.train.steps:
            print(f"{run_dir}: already trained for {start} steps (train.steps={cfg.train.steps})",
                  file=sys.stderr)
            return TrainResult(state, start, None, run_dir)
        with jax.set_mesh(placement.mesh):
            result = _loop(cfg, state, start, datasets, graphdef, tx, task, ckpts, run_dir, progress, placement)
    finally:
        ckpts.close()
    if write_samples and not result.interrupted:
        if jax.process_count() > 1:  # the EMA is split over hosts: sample afterwards on one
            print(f"multi-host run: write samples with `selfflow sample --run-dir {run_dir}` on one host",
                  file=sys.stderr)
            return result
        ema = jax.device_get(result.state["ema"])  # sampling runs on one device, whatever the mesh
        if cfg.layouts:
            from selfflow.layout_samples import write_layout_samples
            plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
            write_layout_samples(cfg, task, nnx.merge(graphdef, ema), run_dir / "samples",
                                 steps=cfg.sample.steps, cfg_scale=cfg.sample.cfg_scale,
                                 seed=cfg.sample.seed, per_layout=cfg.sample.per_class)
        else:
            write_outputs(cfg, ema, graphdef, task, run_dir)
    return result


def _loop(cfg, state, start, datasets, graphdef, tx, task, ckpts, run_dir, progress,
          placement: Placement) -> TrainResult:
    from tqdm import tqdm

    tcfg = cfg.train
    step_fn = make_train_step(cfg, graphdef, tx, task, placement.state)
    iterators = [
        loader.BatchIterator(ds, start=k, read_threads=cfg.data.read_threads, prefetch=cfg.data.prefetch,
                             worker_count=cfg.data.worker_count)
        if hasattr(ds, "to_iter_dataset") else _IndexIterator(ds, k)
        for ds, k in zip(datasets, layout_counts(cfg, task, start))]
    skipped = 0  # bad examples replaced since the start of this process
    main = jax.process_index() == 0  # one process writes logs; all take part in every step
    writer = MetricsWriter(run_dir, resume_step=start, enabled=main)
    n_params = count_params(nnx.merge(graphdef, state["params"]))
    bar = tqdm(total=tcfg.steps, initial=start, disable=not (progress and main), dynamic_ncols=True,
               desc=f"{cfg.objective.kind} {n_params / 1e6:.2f}M params", file=sys.stderr)
    last_good = ckpts.latest_step()
    pending: tuple[int, dict] | None = None
    # MFU: model FLOPs of the steps taken (selfflow.flops) over the matmul peak measured here.
    step_flops = [flops.train_step_flops(cfg, lt.layout, task.token_dims, lt.batch_size) for lt in task.layouts]
    peak = flops.matmul_peak(jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32) * jax.device_count()
    window_start, window_steps, window_flops = time.perf_counter(), 0, 0.0
    stop_signal = None
    try:
        with _StopRequest() as stop:
            for step in range(start, tcfg.steps):
                index = layout_schedule(cfg.seed, step, task.weights) if len(iterators) > 1 else 0
                batch = _next_batch(iterators[index], task.names[index], step)
                skipped += int(np.sum(batch.pop("skipped", 0)))
                state, metrics = step_fn(state, sharding.put_batch(batch, placement.batch), index)
                if pending is not None:  # check the previous step without stalling the pipeline
                    check_finite(*pending, last_good, ckpts.directory)
                done = step + 1
                pending = (done, metrics)
                window_steps += 1
                window_flops += step_flops[index]
                bar.update(1)
                final = done == tcfg.steps or stop.signal is not None
                checkpoint = done % tcfg.checkpoint_every == 0 or final
                ranked = checkpoint and tcfg.keep_best > 0  # the policy ranks this step's record
                evaluating = bool(tcfg.eval_every) and done % tcfg.eval_every == 0 and jax.process_count() == 1
                if done % tcfg.log_every == 0 or final or ranked or evaluating:
                    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    if len(iterators) > 1:
                        host["layout"] = index
                    host["data/skipped"] = skipped
                    elapsed = time.perf_counter() - window_start
                    host["steps_per_sec"] = window_steps / elapsed if elapsed > 0 else 0.0
                    host["perf/flops_per_step"] = window_flops / window_steps
                    host["perf/mfu"] = window_flops / elapsed / peak if elapsed > 0 else 0.0
                    host["perf/compiles"] = step_fn._cache_size()  # one per layout; more = recompiles
                    check_finite(done, host, last_good, ckpts.directory)
                    if ranked:
                        host.update(validation_metrics(task, nnx.merge(graphdef, state["ema"])))
                    if evaluating:
                        host.update(_proxies(cfg, task, nnx.merge(graphdef, jax.device_get(state["ema"])), run_dir))
                    window_start, window_steps, window_flops = time.perf_counter(), 0, 0.0
                    writer.write(done, host)
                    bar.set_postfix(layout=task.names[index], loss=f"{host['loss']:.4f}",
                                    rep=f"{host['rep_loss']:.3f}",
                                    cos=f"{host['cos_sim']:.3f}",
                                    sps=f"{host['steps_per_sec']:.2f}", mfu=f"{host['perf/mfu']:.0%}")
                if (tcfg.sample_every and done % tcfg.sample_every == 0 and not final and not cfg.layouts
                        and jax.process_count() == 1):
                    write_outputs(cfg, jax.device_get(state["ema"]), graphdef, task, run_dir,
                                  out=run_dir / "samples" / f"step_{done:07d}.png")
                if checkpoint:
                    check_finite(*pending, last_good, ckpts.directory)
                    ckpts.save(done, state, {"next_index": done, "layout_batches":
                                             [it.get_state()["next_index"] for it in iterators]}, cfg,
                               metrics=host if ranked else None)
                    last_good = done
                if stop.signal is not None and done < tcfg.steps:
                    stop_signal = stop.signal
                    print(f"\nstopped by signal {stop.signal} after step {done}; checkpoint saved, "
                          "rerun the same command to resume", file=sys.stderr)
                    break
    finally:
        bar.close()
        writer.close()
        for it in iterators:
            getattr(it, "close", lambda: None)()
    return TrainResult(state, int(state["step"]), stop_signal, run_dir)


def _proxies(cfg: Config, task: Task, ema_model, run_dir: Path) -> dict[str, float]:
    """The cheap proxies of :mod:`selfflow.eval.evaluate` (no Inception; probes only with
    ``train.eval_probe``) for the EMA model: ``eval/<layout>/<metric>``, ``eval/probe/layer_<l>``
    and the ``val/...`` losses."""
    from selfflow.eval.classifier import default_cache_dir
    from selfflow.eval.evaluate import EvalSettings, evaluate

    n = cfg.train.eval_probe
    settings = EvalSettings(num=cfg.train.eval_samples, probe=n > 0, probe_examples=(n, max(n // 2, 1)),
                            classifier_steps=cfg.train.eval_classifier_steps, seed=cfg.sample.seed)
    results = evaluate(cfg, task, ema_model, settings, default_cache_dir(run_dir))
    return {(k if k.startswith("val/") else f"eval/{k}"): v for k, v in results.items()}


def _next_batch(iterator, layout: str, step: int) -> dict:
    """The next batch; a bad example (``data.on_bad_sample=error``) stops the run naming its file."""
    try:
        return dict(next(iterator))
    except BadSampleError as e:
        raise TrainingError(f"bad data example at step {step} (layout {layout!r}): {e}") from None


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


def write_outputs(cfg: Config, ema_params, graphdef, task: Task, run_dir: Path,
                  out: Path | None = None, steps: int | None = None,
                  cfg_scale: float | None = None) -> Path:
    """Writes the EMA model's class-grid samples of an image run (and the loss plot)."""
    from modalities.image import detokenize
    from selfflow.sample import class_grid_samples, save_grid

    scfg, spec = cfg.sample, task.specs["image"]
    tokens, _ = class_grid_samples(
        nnx.merge(graphdef, ema_params), num_classes=cfg.data.num_classes,
        per_class=scfg.per_class, token_shape=(spec.num_tokens, spec.token_dim),
        positions=task.layouts[0].positions, steps=steps or scfg.steps,
        cfg_scale=scfg.cfg_scale if cfg_scale is None else cfg_scale, seed=scfg.seed, method=scfg.method,
        guidance_interval=(scfg.guidance_low, scfg.guidance_high))
    images = detokenize(tokens, spec)
    path = save_grid(np.asarray(images), cfg.data.num_classes, out or run_dir / "samples.png")
    if (run_dir / "metrics.jsonl").exists() and out is None:
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
    return path


def load_run(run_dir: str | Path, step: int | None = None) -> tuple[Config, dict, Any, Task, int]:
    """(config, train state, graphdef, task, step) of a run directory's checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise TrainingError(f"{run_dir}: no checkpoint found (no {run_dir / 'checkpoints'} directory)")
    ckpts = RunCheckpoints(run_dir)
    try:
        step = ckpts.latest_step() if step is None else step
        if step is None:
            raise TrainingError(f"{run_dir}: no checkpoint found under {ckpts.directory}")
        cfg = ckpts.saved_config(step)
        task = Task(cfg)
        model = build_model(cfg, task.token_dims)
        template = init_state(cfg, model, make_optimizer(cfg.optim))
        state, _ = ckpts.restore(step, template)
    finally:
        ckpts.close()
    return cfg, state, nnx.graphdef(model), task, step
