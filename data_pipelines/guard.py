"""The ``on_bad_sample`` policy: stop on a bad file, or replace it, name it and count it.

``GuardedSource(source, "error")`` re-raises a :class:`~data_pipelines.base.BadSampleError`
(its message names the file and the reason), so training stops on the first bad file.
``GuardedSource(source, "skip")`` reads a replacement instead: the next index (``index + 1``,
``index + 2``, ... modulo the length), so the replacement is a pure function of the index and a
resumed run still gets exactly the batch it would have got. Every example carries ``skipped``
(int32, the number of bad files passed over to produce it); batching sums per batch, and the
trainer logs it as ``data/skipped`` - a count that also works when examples are read in worker
processes, where a shared counter would not.

A bad file is logged (a warning naming it and the reason) the first time it is met and then
remembered (:class:`KnownBad`), so later epochs neither decode nor log it again; every replacement
still counts in ``skipped``. The memory is per process (each worker process and each resumed run
starts empty: it pickles empty) and can be shared by the guards that read one source (a run's
layouts and its validation, see :meth:`selfflow.tasks.Task.dataset`). It decides only whether a
file is decoded again, never the replacement: a known-bad index is passed over exactly as decoding
it would have been, so batches do not depend on which process read what before. It assumes a bad
file stays bad during the run.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from data_pipelines.base import BadSampleError

POLICIES = ("error", "skip")
MAX_CONSECUTIVE_BAD = 64  # beyond this, "skip" gives up: the data is broken, not a few files

log = logging.getLogger(__name__)


class KnownBad:
    """The indices of one source found bad in this process (thread-safe); pickles empty, so each
    worker process keeps its own."""

    def __init__(self):
        self.indices: set[int] = set()
        self._lock = threading.Lock()

    def __contains__(self, index: int) -> bool:
        return index in self.indices

    def add(self, index: int) -> bool:
        """Marks ``index`` bad; True the first time (the caller logs it then)."""
        with self._lock:
            first = index not in self.indices
            self.indices.add(index)
        return first

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


class GuardedSource:
    """Wraps a source (see :mod:`data_pipelines.base`) with the bad-sample policy; ``known_bad``
    shares the memory of bad files with other guards of the same source (default: its own)."""

    def __init__(
        self, source, on_bad_sample: str = "error", name: str = "", known_bad: KnownBad | None = None
    ):
        if on_bad_sample not in POLICIES:
            raise ValueError(f"on_bad_sample={on_bad_sample!r}: expected one of {POLICIES}")
        if len(source) == 0:
            raise ValueError(f"source {name or source!r} has no examples")
        self.source, self.policy, self.name = source, on_bad_sample, name or type(source).__name__
        self.known_bad = KnownBad() if known_bad is None else known_bad

    def __len__(self) -> int:
        return len(self.source)

    def where(self, index: int) -> str:
        where = getattr(self.source, "where", None)
        return where(index) if where else f"{self.name}[{index}]"

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index, n = int(index), len(self.source)
        for attempt in range(min(MAX_CONSECUTIVE_BAD, n)):
            candidate = (index + attempt) % n
            if candidate in self.known_bad:
                continue
            try:
                example = dict(self.source[candidate])
            except BadSampleError as e:
                if self.policy == "error":
                    raise BadSampleError(
                        e.where,
                        f"{e.reason} (source {self.name!r}; set "
                        "data.on_bad_sample=skip to replace bad examples)",
                    ) from None
                if self.known_bad.add(candidate):
                    log.warning(
                        "skipping bad sample %s (source %r; logged once, every replacement "
                        "counts in data/skipped)",
                        e,
                        self.name,
                    )
                continue
            example["skipped"] = np.int32(attempt)
            return example
        raise BadSampleError(
            self.where(index),
            f"this and the next {min(MAX_CONSECUTIVE_BAD, n) - 1} "
            f"examples of source {self.name!r} are all bad; check the data",
        )

    def __repr__(self) -> str:
        return f"GuardedSource({self.source!r}, on_bad_sample={self.policy!r})"
