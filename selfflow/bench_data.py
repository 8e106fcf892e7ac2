"""Data throughput beside training throughput, measured in one run (``selfflow bench-data``).

For each source: examples/s read one at a time in this process, in index order after one
warm-up read (decode cost alone; each file is met for the first time). For each
layout: examples/s out of its full pipeline (mixture, shuffling, batching, with the configured
threads or worker processes), and examples/s the jitted train step consumes (compiled first,
then timed). ``pipeline_over_step`` > 1 means the data keeps up with training; the last line
gives the smallest of them: ``min_pipeline_over_step=R``.
"""

from __future__ import annotations

import time

import jax
from flax import nnx

from data_pipelines import loader
from selfflow.config import Config
from selfflow.model import build_model
from selfflow.run import init_state, make_optimizer
from selfflow.step import make_train_step
from selfflow.tasks import Task


def _rate(fn, min_seconds: float, min_calls: int) -> float:
    """Calls ``fn`` until both limits are reached; returns calls per second."""
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start)


def bench_data(cfg: Config, *, seconds: float = 2.0, steps: int = 3) -> dict:
    task = Task(cfg)
    sources = {}
    for name, source in task.sources.items():
        keys = {k for i, lt in enumerate(task.layouts) if name in task.layout_sources(i) for k in lt.keys}
        selected = source.select(sorted(keys)) if keys else source
        selected[len(selected) - 1]  # warm-up outside the timing: imports, numba's first mel
        counter = iter(range(10**12))
        sources[name] = _rate(lambda s=selected, c=counter: s[next(c) % len(s)], seconds, 4)

    model = build_model(cfg, task.token_dims)
    tx = make_optimizer(cfg.optim)
    step_fn = make_train_step(cfg, nnx.graphdef(model), tx, task)
    holder = {"state": init_state(cfg, model, tx)}
    layouts = {}
    for i, lt in enumerate(task.layouts):
        it = loader.BatchIterator(
            task.dataset(i),
            read_threads=cfg.data.read_threads,
            prefetch=cfg.data.prefetch,
            worker_count=cfg.data.worker_count,
        )
        for _ in range(1 + 2 * cfg.data.worker_count):  # start threads/workers; every worker warm
            batch = dict(next(it))
        pipeline = _rate(lambda it=it: next(it), seconds, 4) * lt.batch_size
        it.close()
        batch.pop("skipped")
        raw = jax.device_put(batch)

        def one_step(raw=raw, i=i):
            holder["state"], metrics = step_fn(holder["state"], raw, i)
            jax.block_until_ready(metrics["loss"])

        one_step()  # compile
        consumed = _rate(one_step, 0.0, steps) * lt.batch_size
        layouts[lt.layout.name] = {
            "batch": lt.batch_size,
            "sources": list(task.layout_sources(i)),
            "pipeline": pipeline,
            "step": consumed,
            "ratio": pipeline / consumed,
        }
    return {
        "sources": sources,
        "layouts": layouts,
        "worker_count": cfg.data.worker_count,
        "read_threads": cfg.data.read_threads,
        "min_ratio": min(v["ratio"] for v in layouts.values()),
    }


def format_report(r: dict) -> str:
    lines = ["examples/s read one at a time (decode only, this process):"]
    lines += [f"  source {name:20s} {rate:10.1f}" for name, rate in r["sources"].items()]
    lines.append(
        f"examples/s per layout: pipeline ({r['read_threads']} threads, "
        f"{r['worker_count']} workers) vs consumed by the train step:"
    )
    for name, v in r["layouts"].items():
        lines.append(
            f"  layout {name:20s} pipeline {v['pipeline']:10.1f}  step {v['step']:10.1f}  "
            f"pipeline_over_step={v['ratio']:.2f}  (batch {v['batch']}, sources "
            f"{', '.join(v['sources'])})"
        )
    lines.append(f"min_pipeline_over_step={r['min_ratio']:.2f}")
    return "\n".join(lines)
