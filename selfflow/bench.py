"""Side-by-side step timing: Self-Flow versus vanilla flow matching on the same model.

Both train steps are compiled first, then timed in interleaved rounds (FM, Self-Flow, FM, ...)
so machine noise hits both alike; the reported figure is the median over rounds of the mean
step time within a round. The last line is machine-readable: ``selfflow_over_fm=R``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
from flax import nnx

from selfflow.config import Config
from selfflow.model import build_model, count_params
from selfflow.tasks import Task
from selfflow.train import init_state, make_optimizer, make_train_step


def _stepper(cfg: Config, kind: str):
    cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, kind=kind))
    task = Task(cfg)
    model = build_model(cfg, task.token_dims)
    tx = make_optimizer(cfg.optim)
    step = make_train_step(cfg, nnx.graphdef(model), tx, task)
    state = init_state(cfg, model, tx)
    raw = dict(task.dataset(0)[0])  # the first layout's first batch
    raw.pop("skipped")
    raw = jax.device_put(raw)
    holder = {"state": state}

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            holder["state"], metrics = step(holder["state"], raw, 0)
        jax.block_until_ready(metrics["loss"])
        return (time.perf_counter() - start) / n

    run(2)  # compile + warm-up
    return run, count_params(model)


def bench_step_ratio(cfg: Config, *, rounds: int = 5, steps_per_round: int = 3) -> dict:
    kinds = ("flow_matching", "self_flow")
    runners = {k: _stepper(cfg, k) for k in kinds}
    times = {k: [] for k in kinds}
    for _ in range(rounds):
        for k in kinds:
            times[k].append(runners[k][0](steps_per_round))
    med = {k: statistics.median(v) for k, v in times.items()}
    first = Task(cfg).layouts[0]
    return {
        "params": runners["self_flow"][1], "batch": first.batch_size, "tokens": first.layout.num_tokens,
        "depth": cfg.depth, "student_layer": cfg.student_layer, "teacher_layer": cfg.teacher_layer,
        "fm_step_s": med["flow_matching"], "selfflow_step_s": med["self_flow"],
        "selfflow_over_fm": med["self_flow"] / med["flow_matching"],
        "rounds": rounds, "steps_per_round": steps_per_round, "device": str(jax.devices()[0]),
    }


def format_report(r: dict) -> str:
    return "\n".join([
        f"device {r['device']}: {r['params'] / 1e6:.2f}M params, depth {r['depth']}, batch {r['batch']}"
        f" x {r['tokens']} tokens, student/teacher layers {r['student_layer']}/{r['teacher_layer']}",
        f"median of {r['rounds']} interleaved rounds x {r['steps_per_round']} steps:",
        f"  flow matching step  {r['fm_step_s'] * 1e3:9.1f} ms",
        f"  Self-Flow step      {r['selfflow_step_s'] * 1e3:9.1f} ms",
        f"selfflow_over_fm={r['selfflow_over_fm']:.3f}",
    ])
