"""Orbax checkpoints of a run: train state + data-iterator state + resolved config.

Layout: ``RUN_DIR/checkpoints/<step>/{state,data,config}``. Saves are asynchronous; every
path that exits (normal end, error, interrupt) calls :meth:`RunCheckpoints.close`, which waits
for the save in flight. Orbax writes each step to a temporary directory and renames it only
when complete, so a kill during a save never damages the previous checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from selfflow import config as config_lib


def abstract_like(tree: Any) -> Any:
    """Shape/dtype skeleton of ``tree`` (what Orbax restores into)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class RunCheckpoints:
    def __init__(self, run_dir: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(run_dir).absolute() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, cfg: config_lib.Config) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config_lib.resolved_dict(cfg))))

    def restore(self, step: int, state_template: Any) -> tuple[Any, dict]:
        """Returns (state, data-iterator state) of ``step``; state follows ``state_template``."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(state_template)),
            data=ocp.args.JsonRestore()))
        return out["state"], out["data"]

    def saved_config(self, step: int) -> config_lib.Config:
        out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return config_lib.from_dict(out["config"], where=f"{self.directory}/{step}/config")

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
