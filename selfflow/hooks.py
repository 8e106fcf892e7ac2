"""Periodic actions of the training loop: logging, validation, evaluation, sampling, checkpoints.

The loop (:mod:`selfflow.train`) runs one step, then every hook whose ``due(info)`` holds, in
order. A hook sees a :class:`StepInfo`: the steps done, whether this is the last step of the
process, the layout trained, the new state, the step's metrics on device, and ``info.record`` —
the host-side metrics line of this step, computed (and checked finite) the first time a hook
asks for it. Hooks that add to the record (validation, evaluation) run before :class:`Log`,
which writes the record whenever one was made; :class:`Checkpoint` stores it for ranking.

Modelled on big_vision's ``itstime`` and clu's periodic actions: a new periodic action is a
class with ``due`` and ``__call__`` appended to the list :func:`selfflow.train.default_hooks`
returns (or passed to ``train(..., hooks=...)``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from selfflow import flops
from selfflow.checkpoint import CheckpointDamaged
from selfflow.config import Config
from selfflow.errors import TrainingError
from selfflow.tasks import Task

MONITORED = ("loss", "fm_loss", "rep_loss", "grad_norm")


def every(interval: int, step: int) -> bool:
    """True on multiples of ``interval`` (0 = never)."""
    return interval > 0 and step % interval == 0


@dataclasses.dataclass
class StepInfo:
    step: int  # steps done (1 after the first)
    final: bool  # the last step this process runs (end of training or a stop request)
    index: int  # layout trained
    state: dict
    metrics: dict  # device arrays
    batch: dict  # the step's raw batch, placed on the devices
    make_record: Callable[[], dict]
    _record: dict | None = None

    @property
    def record(self) -> dict:
        """The host metrics of this step (computed once, on first use)."""
        if self._record is None:
            self._record = self.make_record()
        return self._record

    @property
    def has_record(self) -> bool:
        return self._record is not None


class NonFinite:
    """Raises TrainingError naming the metric and the newest checkpoint that verifies.

    A checkpoint is called good only once it verified: at the stop, the save in flight is waited
    for and the checkpoints up to ``last_good`` are read back and checked against their checksums,
    newest first (``ckpts``, a RunCheckpoints, is set by the :class:`Checkpoint` hook; without it
    the message says the checkpoint was not verified)."""

    def __init__(self, ckpt_dir: Path, last_good: int | None, ckpts=None):
        self.ckpt_dir, self.last_good, self.ckpts = ckpt_dir, last_good, ckpts

    def check(self, step: int, metrics: dict) -> None:
        values = {k: float(v) for k, v in jax.device_get(metrics).items() if k in MONITORED}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            what = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise TrainingError(f"non-finite {what} at step {step}; training stopped and {self._kept()}")

    def _kept(self) -> str:
        """What the stop leaves: the newest checkpoint that verifies (and those that did not)."""
        if self.last_good is None:
            return "no checkpoint had been written yet"
        if self.ckpts is None:
            return f"the last checkpoint (step {self.last_good}, not verified) in {self.ckpt_dir} was not overwritten"
        self.ckpts.wait()
        failed = []
        for step in reversed([s for s in self.ckpts.all_steps() if s <= self.last_good]):
            try:
                checked = self.ckpts.verify(step)
            except CheckpointDamaged as e:
                failed.append(f"step {step} does not verify: {e.problem}")
                continue
            kept = (
                f"the last good checkpoint (step {step}) in {self.ckpt_dir} verifies"
                if checked
                else f"the last checkpoint (step {step}) in {self.ckpt_dir} has no checksums to verify"
            )
            return f"{kept} and was not overwritten" + (f" ({'; '.join(failed)})" if failed else "")
        return f"no checkpoint in {self.ckpt_dir} verifies ({'; '.join(failed) or 'none left'})"


class PerfWindow:
    """Steps/s, model FLOPs per step and MFU over the steps since the last record."""

    def __init__(self, cfg: Config, task: Task):
        self.step_flops = [
            flops.train_step_flops(cfg, lt.layout, task.token_dims, lt.batch_size) for lt in task.layouts
        ]
        dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
        self.peak = flops.matmul_peak(dtype) * jax.device_count()  # measured here (selfflow.flops)
        self.reset()

    def reset(self) -> None:
        self.start, self.steps, self.flops = time.perf_counter(), 0, 0.0

    def add(self, index: int) -> None:
        self.steps += 1
        self.flops += self.step_flops[index]

    def read(self) -> dict:
        elapsed = time.perf_counter() - self.start
        out = {
            "steps_per_sec": self.steps / elapsed if elapsed > 0 else 0.0,
            "perf/flops_per_step": self.flops / max(self.steps, 1),
            "perf/mfu": self.flops / elapsed / self.peak if elapsed > 0 else 0.0,
        }
        self.reset()
        return out


class Validate:
    """At checkpoint steps with ``train.keep_best``: the EMA model's held-out losses join the record
    (the checkpoint stores them for the retention policy to rank), and the online student's."""

    def __init__(self, cfg: Config, task: Task, graphdef):
        self.cfg, self.task, self.graphdef = cfg, task, graphdef

    def due(self, info: StepInfo) -> bool:
        t = self.cfg.train
        return t.keep_best > 0 and (every(t.checkpoint_every, info.step) or info.final)

    def __call__(self, info: StepInfo) -> None:
        from selfflow.validation import validation_metrics

        ema = nnx.merge(self.graphdef, jax.device_get(info.state["ema"]))
        info.record.update(validation_metrics(self.task, ema))
        info.record.update(_online_validation(self.task, self.graphdef, info.state))


def _online_validation(task: Task, graphdef, state: dict) -> dict:
    """The online student's held-out losses as ``val_online/...``, logged beside the EMA teacher's
    ``val/...``: early in a run, or with a long EMA horizon, the teacher lags the student."""
    from selfflow.validation import validation_metrics

    return validation_metrics(task, nnx.merge(graphdef, jax.device_get(state["params"])), head="val_online/")


class Evaluate:
    """Every ``train.eval_every`` steps (one process): the cheap proxies of :mod:`selfflow.eval`
    for the EMA model, as ``eval/<layout>/<metric>``, ``eval/probe/layer_<l>`` and ``val/...``, and
    the online student's held-out losses as ``val_online/...``."""

    def __init__(self, cfg: Config, task: Task, graphdef, run_dir: Path):
        self.cfg, self.task, self.graphdef, self.run_dir = cfg, task, graphdef, run_dir

    def due(self, info: StepInfo) -> bool:
        return every(self.cfg.train.eval_every, info.step) and jax.process_count() == 1

    def __call__(self, info: StepInfo) -> None:
        from selfflow.eval.classifier import default_cache_dir
        from selfflow.eval.evaluate import EvalSettings, evaluate

        t, n = self.cfg.train, self.cfg.train.eval_probe
        settings = EvalSettings(
            num=t.eval_samples,
            probe=n > 0,
            probe_examples=(n, max(n // 2, 1)),
            classifier_steps=t.eval_classifier_steps,
            seed=self.cfg.sample.seed,
        )
        model = nnx.merge(self.graphdef, jax.device_get(info.state["ema"]))
        results = evaluate(self.cfg, self.task, model, settings, default_cache_dir(self.run_dir))
        info.record.update({(k if k.startswith("val/") else f"eval/{k}"): v for k, v in results.items()})
        info.record.update(_online_validation(self.task, self.graphdef, info.state))


class Diagnose:
    """Every ``train.grad_ratio_every`` steps (default: ``log_every``) of a run whose objective
    uses the teacher: ``rep/grad_ratio`` = ‖γ∇L_rep‖/‖∇L_gen‖ on the trunk, measured on the step's
    batch and randomness with the updated weights (see :mod:`selfflow.diagnostics`)."""

    def __init__(self, cfg: Config, task: Task, graphdef):
        from selfflow.objectives import make_objective

        self.cfg, self.task, self.graphdef = cfg, task, graphdef
        every_k = cfg.train.grad_ratio_every
        self.interval = cfg.train.log_every if every_k is None else every_k
        objective = make_objective(cfg, task.mask_ratios, task.loss_weights) if cfg.uses_teacher else None
        self.objective = objective if hasattr(objective, "terms") else None

    def due(self, info: StepInfo) -> bool:
        return self.objective is not None and every(self.interval, info.step)

    def __call__(self, info: StepInfo) -> None:
        from selfflow.diagnostics import jitted_gradient_ratio

        key = jax.random.fold_in(jax.random.wrap_key_data(info.state["rng"]), info.step - 1)
        ratio = jitted_gradient_ratio(self.objective, self.graphdef, self.task, info.index)
        args = (info.state["params"], info.state["ema"], info.batch, key, info.step - 1)
        info.record["rep/grad_ratio"] = float(ratio(*args))


class Log:
    """Every ``train.log_every`` steps, at the last one, and whenever a hook made a record: writes
    it to metrics.jsonl / TensorBoard and the progress bar."""

    def __init__(self, cfg: Config, task: Task, writer, bar):
        self.cfg, self.task, self.writer, self.bar = cfg, task, writer, bar

    def due(self, info: StepInfo) -> bool:
        return every(self.cfg.train.log_every, info.step) or info.final or info.has_record

    def __call__(self, info: StepInfo) -> None:
        record = info.record
        self.writer.write(info.step, record)
        self.bar.set_postfix(
            layout=self.task.names[info.index],
            loss=f"{record['loss']:.4f}",
            rep=f"{record['rep_loss']:.3f}",
            cos=f"{record['cos_sim']:.3f}",
            sps=f"{record['steps_per_sec']:.2f}",
            mfu=f"{record['perf/mfu']:.0%}",
        )


class Sample:
    """Every ``train.sample_every`` steps before the last (one process): samples of every layout
    from the EMA weights into ``samples/step_<K>/`` (the end of training writes ``samples/``)."""

    def __init__(self, cfg: Config, write: Callable[[Any, Path], Any], graphdef, run_dir: Path):
        self.cfg, self.write, self.graphdef, self.run_dir = cfg, write, graphdef, run_dir

    def due(self, info: StepInfo) -> bool:
        return every(self.cfg.train.sample_every, info.step) and not info.final and jax.process_count() == 1

    def __call__(self, info: StepInfo) -> None:
        model = nnx.merge(self.graphdef, jax.device_get(info.state["ema"]))
        self.write(model, self.run_dir / "samples" / f"step_{info.step:07d}")


class Checkpoint:
    """Every ``train.checkpoint_every`` steps and at the last one: the state, its checksums, the data
    iterators' positions, the config and the specs (after checking the step's metrics are finite)."""

    def __init__(self, cfg: Config, task: Task, ckpts, iterators: list, guard: NonFinite):
        self.cfg, self.task, self.ckpts, self.iterators, self.guard = cfg, task, ckpts, iterators, guard
        guard.ckpts = ckpts  # so that a stop reads back (verifies) what this hook saved

    def due(self, info: StepInfo) -> bool:
        return every(self.cfg.train.checkpoint_every, info.step) or info.final

    def __call__(self, info: StepInfo) -> None:
        self.guard.check(info.step, info.metrics)
        data = {
            "next_index": info.step,
            "layout_batches": [it.get_state()["next_index"] for it in self.iterators],
        }
        ranked = info.record if self.cfg.train.keep_best > 0 else None
        self.ckpts.save(info.step, info.state, data, self.cfg, self.task.specs_dict(), metrics=ranked)
        self.guard.last_good = info.step
