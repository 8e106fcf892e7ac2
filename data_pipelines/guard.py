"""The ``on_bad_sample`` policy: stop on a bad file, or replace it, name it and count it.

``GuardedSource(source, "error")`` re-raises a :class:`~data_pipelines.base.BadSampleError`
(its message names the file and the reason), so training stops on the first bad file.
``GuardedSource(source, "skip")`` logs the file and reads a replacement instead: the next index
(``index + 1``, ``index + 2``, ... modulo the length), so the replacement is a pure function of
the index and a resumed run still gets exactly the batch it would have got. Every example
carries ``skipped`` (int32, the number of bad files passed over to produce it); batching sums
per batch, and the trainer logs it as ``data/skipped`` - a count that also works when examples
are read in worker processes, where a shared counter would not.
"""

from __future__ import annotations

import logging

import numpy as np

from data_pipelines.base import BadSampleError

POLICIES = ("error", "skip")
MAX_CONSECUTIVE_BAD = 64  # beyond this, "skip" gives up: the data is broken, not a few files

log = logging.getLogger(__name__)


class GuardedSource:
    """Wraps a source (see :mod:`data_pipelines.base`) with the bad-sample policy."""

    def __init__(self, source, on_bad_sample: str = "error", name: str = ""):
        if on_bad_sample not in POLICIES:
            raise ValueError(f"on_bad_sample={on_bad_sample!r}: expected one of {POLICIES}")
        if len(source) == 0:
            raise ValueError(f"source {name or source!r} has no examples")
        self.source, self.policy, self.name = source, on_bad_sample, name or type(source).__name__

    def __len__(self) -> int:
        return len(self.source)

    def where(self, index: int) -> str:
        where = getattr(self.source, "where", None)
        return where(index) if where else f"{self.name}[{index}]"

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index, n = int(index), len(self.source)
        for attempt in range(min(MAX_CONSECUTIVE_BAD, n)):
            try:
                example = dict(self.source[(index + attempt) % n])
            except BadSampleError as e:
                if self.policy == "error":
                    raise BadSampleError(
                        e.where,
                        f"{e.reason} (source {self.name!r}; set "
                        "data.on_bad_sample=skip to replace bad examples)",
                    ) from None
                log.warning("skipping bad sample %s (source %r)", e, self.name)
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
