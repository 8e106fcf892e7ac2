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

Integrity: every save also stores ``checksums`` (JSON): ``{"hash": "crc32", "tensors": {tensor:
{shard: hex}}}``, a CRC-32 of the bytes (C order) of every shard of every array, computed on the
host from the arrays being saved. Tensors are named as Orbax names them
(``opt_state.1.0.mu.blocks.0.attn.qkv.kernel``), a shard by its slice of the global array
(``"0:64,0:32"``; ``""`` for a scalar). Each host hashes the shards it saves (replica 0 of its
addressable shards) and the primary host writes the union. Restoring recomputes them from the
restored arrays (the slices each host holds) and raises :class:`CheckpointDamaged` naming every
tensor that differs; an Orbax/TensorStore read error (a truncated file) becomes the same one-line
error. Checkpoints saved before checksums existed load with a one-line note.

Why CRC-32 (``zlib.crc32``, the gzip/PNG polynomial): the standard library has it (no new
dependency), it releases the GIL (shards are hashed in parallel threads), runs at ~3.5 GB/s per core
on this project's CPU, catches every burst of up to 32 flipped bits and misses random damage with
probability 2**-32 per shard. TensorFlow's CRC32C would need the ``google-crc32c`` package for its
hardware speed; a cryptographic hash is 2-5x slower and guards against nothing accidental that
CRC-32 misses.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from selfflow import config as config_lib
from selfflow.errors import TrainingError

HASH = "crc32"
PARALLEL_BYTES = 64 * 2**20
SET_ASIDE = ("damaged", "superseded")  # labels of step directories a resume moved out of Orbax's sight


class CheckpointDamaged(TrainingError):
    """A checkpoint whose arrays cannot be read or differ from their checksums. Its message is one
    line: the step directory, ``problem`` (every tensor concerned) and ``hint`` (what to do)."""

    def __init__(self, step_dir: Path, problem: str, hint: str = ""):
        self.step_dir, self.problem = step_dir, problem
        super().__init__(f"{step_dir}: {problem}" + (f"; {hint}" if hint else ""))

    def with_hint(self, hint: str) -> CheckpointDamaged:
        return CheckpointDamaged(self.step_dir, self.problem, hint)


def abstract_like(tree: Any) -> Any:
    """Shape/dtype skeleton of ``tree`` (what Orbax restores into)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )


# ---------------------------------------------------------------------------- checksums


def state_checksums(state: Any) -> dict:
    """``{"hash": "crc32", "tensors": {tensor: {shard: 8 hex digits}}}`` of every array of
    ``state`` (this host's shards, merged with the other hosts'; a collective when there are several)."""
    shards = _local_shards(state)
    tensors: dict[str, dict[str, str]] = {}
    for (name, key, _), crc in zip(shards, _crc32_all([data for *_, data in shards])):
        tensors.setdefault(name, {})[key] = crc
    merged: dict[str, dict[str, str]] = {}
    for host in _all_hosts(tensors):
        for name, by_shard in host.items():
            merged.setdefault(name, {}).update(by_shard)
    return {"hash": HASH, "tensors": merged}


def differing_tensors(checksums: dict, state: Any) -> list[str]:
    """Tensors of ``state`` whose bytes differ from ``checksums`` (:func:`state_checksums`), or
    that only one of them has, over all hosts (each checks the slices it holds)."""
    if checksums.get("hash") != HASH:
        return [f"(checksums of unknown hash {checksums.get('hash')!r})"]
    stored = checksums["tensors"]
    leaves = {_name(path): x for path, x in jax.tree_util.tree_leaves_with_path(state)}
    bad = set(stored) ^ set(leaves)
    todo = [
        (name, crc, data)
        for name, by_shard in stored.items()
        if name in leaves
        for key, crc in by_shard.items()
        if (data := _host_slice(leaves[name], key)) is not None
    ]
    bad |= {name for (name, crc, _), got in zip(todo, _crc32_all([d for *_, d in todo])) if got != crc}
    return sorted(set().union(*_all_hosts(sorted(bad))))


def _name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".")


def _shard_key(index: tuple, shape: tuple) -> str:
    return ",".join("{}:{}".format(*s.indices(n)[:2]) for s, n in zip(index, shape))


def _local_shards(tree: Any) -> list[tuple[str, str, Any]]:
    """(tensor, shard, data) of every shard this host saves: replica 0 of its addressable shards."""
    out = []
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(x, jax.Array):
            out += [
                (_name(path), _shard_key(s.index, x.shape), s.data)
                for s in x.addressable_shards
                if s.replica_id == 0
            ]
        else:
            x = np.asarray(x)
            out.append((_name(path), _shard_key((slice(None),) * x.ndim, x.shape), x))
    return out


def _host_slice(x: Any, key: str) -> Any:
    """Slice ``key`` of ``x`` if this host holds it (an addressable shard with exactly that slice,
    else a slice of a fully addressable or numpy array), or None."""
    if isinstance(x, jax.Array):
        for s in x.addressable_shards:
            if _shard_key(s.index, x.shape) == key:
                return s.data
        if not x.is_fully_addressable:
            return None
    index = tuple(slice(*map(int, part.split(":"))) for part in key.split(",")) if key else ()
    return np.asarray(x)[index]


def _crc32_all(arrays: list) -> list[str]:
    """CRC-32 (8 hex digits) of each array's bytes in C order. Past PARALLEL_BYTES in all, in
    threads: zlib releases the GIL, and one thread's device-to-host copy overlaps the others'
    hashing (below it, starting the threads costs more than they save)."""

    def crc(x) -> str:
        return f"{zlib.crc32(np.ascontiguousarray(x).reshape(-1).view(np.uint8)):08x}"

    if sum(x.nbytes for x in arrays) < PARALLEL_BYTES:
        return [crc(x) for x in arrays]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(crc, arrays))


def _all_hosts(obj: Any) -> list:
    """The JSON-able ``obj`` of every JAX process, in process order (a collective)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int64(blob.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: blob.size] = blob
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:n])) for row, n in zip(rows, sizes)]


# TensorStore's read errors name the OCDBT key (tensor/chunk) and the reason.
_TENSORSTORE_READ = re.compile(r'(\w+): Error reading "([^"]+?)(?:/[\d.]+)?" in OCDBT database at .*?": (.*)')


def _read_failure(error: BaseException) -> str:
    """One line for an Orbax/TensorStore read error: the tensor and the reason where they are named."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in chain:
        if m := _TENSORSTORE_READ.search(str(e)):
            code, tensor, reason = m.groups()
            return (
                f"tensor {tensor} cannot be read ({code}: {reason.strip()}): a file is truncated or damaged"
            )
    last = chain[-1]
    first = (str(last).strip().splitlines() or [""])[0][:300]
    return f"cannot be read ({type(last).__name__}: {first}): a file is missing, truncated or damaged"


def _quiet_abandoned_reads() -> None:
    """A failed Orbax restore abandons its other reads in a closed event loop. When they finish or
    are collected, later, each reports an "Exception ignored in" traceback on stderr (after the
    one-line error, or in the middle of the training that resumed from an older checkpoint). From
    the first failure on, those two reports are dropped; every other goes to the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_abandoned_reads", False):
        return

    def hook(unraisable) -> None:
        abandoned = getattr(unraisable.object, "__qualname__", "") == "_read_array_index_and_device_put"
        closed = (
            isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
        )
        if not (abandoned or closed):
            previous(unraisable)

    hook.drops_abandoned_reads = True
    sys.unraisablehook = hook


def _saved_tree(path: Path) -> Any:
    """The tree of ArrayMetadata (shape, dtype, sharding) of a saved StandardSave item."""
    handler = ocp.StandardCheckpointHandler()
    try:
        return handler.metadata(path).tree
    finally:
        handler.close()


# ---------------------------------------------------------------------------- retention


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

    @classmethod
    def of_run(cls, run_dir: str | Path) -> RunCheckpoints:
        """A reader of ``run_dir``'s checkpoints; TrainingError if it has no checkpoint directory."""
        run_dir = Path(run_dir)
        if not (run_dir / "checkpoints").is_dir():
            raise TrainingError(f"{run_dir}: no checkpoint found (no {run_dir / 'checkpoints'} directory)")
        return cls(run_dir)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def existing_step(self, step: int | None) -> int:
        """``step`` (the latest for None); TrainingError naming the steps there are if it is not one."""
        latest = self.latest_step() if step is None else step
        if latest is None:
            raise TrainingError(f"{self.directory.parent}: no checkpoint found under {self.directory}")
        if latest not in self.all_steps():
            raise TrainingError(
                f"{self.directory.parent}: no checkpoint of step {latest} (it has {self.all_steps()})"
            )
        return latest

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

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
        stored with the checkpoint when the policy ranks by them. The checksums are computed here,
        before the asynchronous write, while ``state``'s buffers are still alive."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                checksums=ocp.args.JsonSave(state_checksums(state)),
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
        """Returns (state, data-iterator state) of ``step``; state follows ``state_template``.
        Raises :class:`CheckpointDamaged` if it cannot be read or differs from its checksums."""
        state, data, verified = self._read(step, abstract_like(state_template), data=ocp.args.JsonRestore())
        if verified is None:
            print(
                f"{self.step_dir(step)}: no checksums (saved by an older version); loaded unverified",
                file=sys.stderr,
            )
        return state, data

    def verify(self, step: int) -> dict | None:
        """Reads every array of ``step`` to host memory (whatever the devices) and checks it against
        its checksums: {"tensors": n, "bytes": b}, or None when it has none (saved by an older
        version; its arrays were still read). Raises :class:`CheckpointDamaged`."""
        tree = self._reading(step, lambda: _saved_tree(self.step_dir(step) / "state"))
        # numpy leaves make Orbax restore numpy arrays; broadcast_to allocates nothing
        host = jax.tree.map(lambda m: np.broadcast_to(np.zeros((), m.dtype), m.shape), tree)
        state, _, verified = self._read(step, host)
        if verified is None:
            return None
        leaves = jax.tree.leaves(state)
        return {"tensors": len(leaves), "bytes": sum(x.nbytes for x in leaves)}

    def _read(self, step: int, target: Any, **items) -> tuple[Any, Any, bool | None]:
        """(state, ``items``' restored values, verified: True, or None without checksums) of ``step``."""
        if (self.step_dir(step) / "checksums").exists():
            items["checksums"] = ocp.args.JsonRestore()
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), **items)
        out = self._reading(step, lambda: self.manager.restore(step, args=args))
        if "checksums" not in items:
            return out["state"], out.get("data"), None
        bad = differing_tensors(out["checksums"], out["state"])
        if bad:
            raise CheckpointDamaged(
                self.step_dir(step),
                f"{len(bad)} tensor(s) differ from the checksums saved with them: {', '.join(bad)}",
            )
        return out["state"], out.get("data"), True

    def _reading(self, step: int, read: Callable[[], Any]) -> Any:
        """``read()`` of ``step``; any error it raises becomes a one-line :class:`CheckpointDamaged`."""
        try:
            return read()
        except Exception as e:
            _quiet_abandoned_reads()
            raise CheckpointDamaged(self.step_dir(step), _read_failure(e)) from e

    def set_aside(self, step: int, label: str) -> Path:
        """Renames ``<step>`` to ``<step>.<label>`` (``label`` one of SET_ASIDE; ``-2``, ``-3``...
        if taken) and returns the new path. Orbax lists only ``<step>`` names, so it no longer
        loads, counts (retention) or deletes it, and the step can be saved again; the files stay."""
        target, n = self.directory / f"{step}.{label}", 2
        while target.exists():
            target, n = self.directory / f"{step}.{label}-{n}", n + 1
        if jax.process_index() == 0:
            self.step_dir(step).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"selfflow set aside {step}")
        self.manager.reload()
        return target

    def set_aside_paths(self) -> list[Path]:
        """Step directories set aside by :meth:`set_aside`, oldest step first."""
        found = [
            p
            for p in self.directory.iterdir()
            if re.fullmatch(rf"\d+\.({'|'.join(SET_ASIDE)})(-\d+)?", p.name)
        ]
        return sorted(found, key=lambda p: (int(p.name.split(".")[0]), p.name))

    def saved_config(self, step: int) -> config_lib.Config:
        args = ocp.args.Composite(config=ocp.args.JsonRestore())
        out = self._reading(step, lambda: self.manager.restore(step, args=args))
        return config_lib.from_dict(out["config"], where=f"{self.step_dir(step)}/config")

    def saved_specs(self, step: int) -> dict | None:
        """The modality specs stored with ``step``; None for checkpoints saved before they were."""
        if not (self.step_dir(step) / "specs").exists():
            return None
        args = ocp.args.Composite(specs=ocp.args.JsonRestore())
        return self._reading(step, lambda: self.manager.restore(step, args=args))["specs"]

    def wait(self) -> None:
        """Until the save in flight (if any) is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def verify_run(run_dir: str | Path, step: int | None = None) -> Iterator[tuple[str, bool]]:
    """(line, ok) for each checkpoint of ``run_dir`` (only ``step`` if given), oldest first, then
    for each step directory set aside by a resume (listed, not read)."""
    ckpts = RunCheckpoints.of_run(run_dir)
    try:
        steps = ckpts.all_steps() if step is None else [ckpts.existing_step(step)]
        if not steps:
            raise TrainingError(f"{run_dir}: no checkpoint found under {ckpts.directory}")
        for s in steps:
            try:
                checked = ckpts.verify(s)
            except CheckpointDamaged as e:
                yield f"{e.step_dir}: DAMAGED: {e.problem}", False
                continue
            if checked is None:
                yield (
                    f"{ckpts.step_dir(s)}: readable, not verified (no checksums: saved by an older version)",
                    True,
                )
            else:
                n, size = checked["tensors"], checked["bytes"] / 1e6
                yield f"{ckpts.step_dir(s)}: ok ({n} tensors, {size:.1f} MB, every {HASH} matches)", True
        if step is None:
            for path in ckpts.set_aside_paths():
                yield (
                    f"{path}: set aside by a resume (never loaded or counted; delete it once inspected)",
                    True,
                )
    finally:
        ckpts.close()
