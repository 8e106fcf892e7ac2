"""Orbax checkpoints of a run: train state + data-iterator state + resolved config + modality specs.

Layout: ``RUN_DIR/checkpoints/<step>/{state,data,config,specs}`` (``specs``: each modality's token
geometry and fitted statistics, so a run loads without its data). Saves are asynchronous; every
path that exits (normal end, error, interrupt) calls :meth:`RunCheckpoints.close`, which waits
for the save in flight. Orbax writes each step to a temporary directory and renames it only
when complete (``<step>.orbax-checkpoint-tmp`` -> ``<step>``), so a kill during a save never damages
the previous checkpoint; the unfinished directory stays until that step is saved again.

Retention (``train.keep_*``) is an Orbax preservation policy: a checkpoint survives if any rule
keeps it. Orbax stores each checkpoint's metrics in ``<step>/metrics/metrics`` (JSON) and re-reads
them when a manager opens the directory, so "the N best" holds across restarts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from selfflow import config as config_lib


def abstract_like(tree: Any) -> Any:
    """Shape/dtype skeleton of ``tree`` (what Orbax restores into)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )


def retention_policy(tcfg: config_lib.TrainConfig) -> policies.PreservationPolicy:
    """Keeps the last ``keep_checkpoints``, every step that is a multiple of ``keep_every`` and the
    ``keep_best`` best by ``best_metric``.

    Checkpoints without metrics (saved while keep_best was 0) are not ranked, so they are not
    kept as "best" forever; the other rules still apply to them.
    """
    keep = [policies.LatestN(n=tcfg.keep_checkpoints)]
    if tcfg.keep_every:
        keep.append(policies.EveryNSteps(interval_steps=tcfg.keep_every))
    if tcfg.keep_best:
        # BestN sorts ascending (descending with reverse=True) and keeps the last n.
        keep.append(
            policies.BestN(
                get_metric_fn=metric_fn(tcfg),
                reverse=tcfg.best_mode == "min",
                n=tcfg.keep_best,
                keep_checkpoints_without_metrics=False,
            )
        )
    return policies.AnyPreservationPolicy(keep)


def metric_fn(tcfg: config_lib.TrainConfig):
    """Checkpoint metrics -> the ranked value; a checkpoint saved without ``best_metric`` (the run
    was resumed with another one) ranks last instead of stopping the run."""
    worst = math.inf if tcfg.best_mode == "min" else -math.inf
    return lambda metrics: float(metrics.get(tcfg.best_metric, worst))


class RunCheckpoints:
    def __init__(
        self,
        run_dir: str | Path,
        keep: int = 3,
        async_save: bool = True,
        retention: config_lib.TrainConfig | None = None,
    ):
        """``retention`` (a run's train config) sets the retention policy; without it, as for
        readers of a run, the last ``keep`` are kept (a manager deletes only when it saves)."""
        self.directory = Path(run_dir).absolute() / "checkpoints"
        tcfg = retention or config_lib.TrainConfig(keep_checkpoints=keep)
        # best_fn is what makes Orbax write the metrics passed to save(); without it they are dropped.
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=retention_policy(tcfg),
                create=True,
                enable_async_checkpointing=async_save,
                best_fn=metric_fn(tcfg) if tcfg.keep_best else None,
                best_mode=tcfg.best_mode,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        data_state: dict,
        cfg: config_lib.Config,
        specs: dict,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """``specs``: {modality: spec fields} (``Task.specs_dict``); ``metrics`` ({name: value}) are
        stored with the checkpoint when the policy ranks by them."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(config_lib.resolved_dict(cfg)),
                specs=ocp.args.JsonSave(specs),
            ),
            metrics=metrics,
        )

    def metrics(self, step: int) -> dict | None:
        """The metrics stored with checkpoint ``step`` (None if it has none)."""
        return self.manager.metrics(step)

    def restore(self, step: int, state_template: Any) -> tuple[Any, dict]:
        """Returns (state, data-iterator state) of ``step``; state follows ``state_template``."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(state_template)), data=ocp.args.JsonRestore()
            ),
        )
        return out["state"], out["data"]

    def saved_config(self, step: int) -> config_lib.Config:
        out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return config_lib.from_dict(out["config"], where=f"{self.directory}/{step}/config")

    def saved_specs(self, step: int) -> dict | None:
        """The modality specs stored with ``step``; None for checkpoints saved before they were."""
        if not (self.directory / str(step) / "specs").exists():
            return None
        return self.manager.restore(step, args=ocp.args.Composite(specs=ocp.args.JsonRestore()))["specs"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
