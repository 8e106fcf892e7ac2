"""``selfflow bench``: the Self-Flow step against vanilla flow matching, MFU, bf16, PyTorch.

Everything is measured in one process, in interleaved rounds (each round runs every candidate
in turn), so machine noise hits all alike; each figure is the median over rounds of the mean
time per call within a round. Measured:

- the matmul peak of this device in the same rounds: a 2048³ float32 matmul, and bf16 with
  float32 accumulation — the MFU denominators;
- the train step (forward, backward, AdamW, EMA; state donated) of flow matching and of
  Self-Flow on the same model and batch, and of Self-Flow in bf16 when the config is float32;
  each with its model FLOPs (:mod:`selfflow.flops`), FLOP/s, MFU against the peak of its
  precision, XLA's planned peak memory, and the number of recompilations during the rounds;
- sampling throughput: Euler steps of the EMA model on the layout's batch, in examples/s;
- saving the Self-Flow state as training does (:meth:`RunCheckpoints.save`: asynchronous, with its
  checksums), the part that blocks the loop and the whole save, beside the checksums alone (GB/s);
- the same model and Self-Flow step in PyTorch (:mod:`selfflow.torch_step`, when torch is
  installed: the ``torch`` extra), with the same weights, algorithm and batch.

With ``candidates=True`` it also times the Self-Flow step with each speed option switched to its
alternative (per-token conditioning, an untruncated teacher, rematerialisation), to show what
each one buys. The last line is machine-readable:
``selfflow_over_fm=R mfu=M selfflow_over_torch=T`` (Self-Flow step ÷ flow-matching step; the
Self-Flow step's MFU as a fraction of the float32 matmul peak for a float32 config, of the bf16
peak for a bf16 config; our Self-Flow step ÷ PyTorch's, ``nan`` without torch).
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from selfflow import flops
from selfflow.config import Config
from selfflow.model import build_model, count_params
from selfflow.run import init_state, make_optimizer
from selfflow.step import make_train_step
from selfflow.tasks import Task


class Candidate(NamedTuple):
    run: Callable[[int], float]  # run(n) -> seconds per call over n calls
    flops: float  # model FLOPs per call
    info: dict


def default_config():
    """``selfflow bench``'s default: SiT-S/2 (depth 12, width 384, 6 heads, 33M parameters) on 32x32
    RGB images in patches of 2, i.e. 256 tokens per example as in the paper's ImageNet-256 latent
    setting, batch 8 (2048 tokens per step); Self-Flow with the paper's defaults (student block
    round(0.3·12) = 4, teacher block round(0.7·12) = 8, mask ratio 0.25, γ 0.8). In the package, not
    a file of the repository, so an installed wheel benches without a checkout;
    ``experiments/bench_s2.py`` is the same config as a file to copy and edit."""
    from selfflow.config import Config, DataConfig, ModelConfig, ObjectiveConfig, SampleConfig, TrainConfig

    return Config(
        seed=0,
        model=ModelConfig(preset="S/2"),
        objective=ObjectiveConfig(kind="self_flow"),
        data=DataConfig(source="shapes", image_size=32),
        train=TrainConfig(steps=100, batch_size=8),
        sample=SampleConfig(steps=8),
    )


def _with(cfg: Config, **sections) -> Config:
    """cfg with ``section={key: value}`` replacements, e.g. objective={"kind": "dts"}."""
    return dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    )


def _timer(call, sync) -> Callable[[int], float]:
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            out = call()
        sync(out)
        return (time.perf_counter() - start) / n

    return run


def matmul_peak(dtype) -> Candidate:
    """A 2048³ matmul in ``dtype`` with float32 accumulation (:func:`flops.peak_matmul_call`)."""
    call, count = flops.peak_matmul_call(dtype, 2048)
    return Candidate(_timer(call, jax.block_until_ready), count, {})


def train_step(cfg: Config) -> Candidate:
    """The jitted train step exactly as training runs it, on the first layout's first batch."""
    task = Task(cfg)
    model = build_model(cfg, task.token_dims)
    tx = make_optimizer(cfg.optim)
    step = make_train_step(cfg, nnx.graphdef(model), tx, task)
    holder = {"state": init_state(cfg, model, tx)}
    raw = dict(task.dataset(0)[0])
    raw.pop("skipped")
    raw = jax.device_put(raw)
    memory = step.lower(holder["state"], raw, 0).compile().memory_analysis()

    def call():
        holder["state"], metrics = step(holder["state"], raw, 0)
        return metrics["loss"]

    jax.block_until_ready((call(), call()))  # compile + warm-up
    compiled = step._cache_size()
    lt = task.layouts[0]
    info = {
        "params": count_params(model),
        "state": lambda: holder["state"],
        "compiles_at_start": compiled,
        "step_fn": step,
        "peak_bytes": _planned_peak(memory),
        "batch": lt.batch_size,
        "tokens": lt.layout.num_tokens,
    }
    return Candidate(
        _timer(call, jax.block_until_ready),
        flops.train_step_flops(cfg, lt.layout, task.token_dims, lt.batch_size),
        info,
    )


def _planned_peak(memory) -> float:
    """XLA's planned peak bytes of one executable: arguments + outputs + temporaries − donated."""
    if memory is None:
        return math.nan
    return float(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )


def checkpoint_cost(cfg: Config, state: dict, saves: int = 3) -> dict:
    """Median seconds over ``saves`` saves of ``state`` by :meth:`RunCheckpoints.save` (into a
    temporary directory): the part that blocks the training loop (device-to-host copy and the
    checksums) and the whole save; and of :func:`state_checksums` alone, with its GB/s."""
    from selfflow.checkpoint import RunCheckpoints, state_checksums

    specs = Task(cfg).specs_dict()
    times = {"checksum": [], "blocking": [], "save": []}
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = RunCheckpoints(tmp, keep=1)
        try:
            for step in range(1, saves + 1):
                start = time.perf_counter()
                state_checksums(state)
                times["checksum"].append(time.perf_counter() - start)
                start = time.perf_counter()
                ckpts.save(step, state, {"next_index": step}, cfg, specs)
                times["blocking"].append(time.perf_counter() - start)
                ckpts.wait()
                times["save"].append(time.perf_counter() - start)
        finally:
            ckpts.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    return {
        "bytes": nbytes,
        "save_seconds": med["save"],
        "save_blocking_seconds": med["blocking"],
        "checksum_seconds": med["checksum"],
        "checksum_gb_per_s": nbytes / med["checksum"] / 1e9,
    }


def sampler(cfg: Config, steps: int) -> Candidate:
    """Euler sampling (``steps`` model calls, no guidance) of the first layout's batch."""
    from selfflow.layout_samples import generate

    task = Task(cfg)
    model = build_model(cfg, task.token_dims)
    raw = dict(task.dataset(0)[0])
    key = jax.random.key(0)
    sample_cfg = _with(cfg, sample={"method": "euler"})
    call = lambda: generate(sample_cfg, task, model, 0, raw, key, steps=steps, cfg_scale=1.0)  # noqa: E731
    jax.block_until_ready(call())
    lt = task.layouts[0]
    return Candidate(
        _timer(call, jax.block_until_ready),
        flops.sampling_flops(cfg, lt.layout, task.token_dims, lt.batch_size, steps, 1.0),
        {"examples": lt.batch_size, "steps": steps},
    )


def torch_step(cfg: Config, kind: str) -> Candidate | None:
    """The same model and step in PyTorch (CPU), or None when torch is not installed."""
    try:
        from selfflow import torch_step as ts
    except ImportError:
        return None
    task = Task(cfg)
    lt = task.layouts[0]
    if len(lt.layout.segments) != 1 or cfg.objective.rep_distance != "cosine":
        return None  # the PyTorch model covers single-modality layouts and the cosine L_rep
    params = nnx.to_pure_dict(nnx.state(build_model(cfg, task.token_dims), nnx.Param))
    step, inputs = ts.build_bench_step(
        cfg,
        kind,
        params,
        lt.batch_size,
        lt.layout.num_tokens,
        task.token_dims[lt.layout.segments[0].modality],
        lt.positions,
    )
    step.step(**inputs)  # warm-up
    return Candidate(
        _timer(lambda: step.step(**inputs), lambda _: None),
        flops.train_step_flops(
            _with(cfg, objective={"kind": kind}), lt.layout, task.token_dims, lt.batch_size
        ),
        {},
    )


def bench(
    cfg: Config,
    *,
    rounds: int = 5,
    steps_per_round: int = 3,
    torch: bool = True,
    candidates: bool = False,
    sample_steps: int = 8,
) -> dict:
    """Builds every candidate, times them in interleaved rounds, returns the report dict."""
    f32 = cfg.model.dtype == "float32"
    runners: dict[str, Candidate] = {
        "peak_f32": matmul_peak(jnp.float32),
        "peak_bf16": matmul_peak(jnp.bfloat16),
        "fm": train_step(_with(cfg, objective={"kind": "flow_matching"})),
        "selfflow": train_step(_with(cfg, objective={"kind": "self_flow"})),
    }
    if f32:
        runners["selfflow_bf16"] = train_step(
            _with(cfg, objective={"kind": "self_flow"}, model={"dtype": "bfloat16"})
        )
    if candidates:
        sf = _with(cfg, objective={"kind": "self_flow"})
        runners["per_token_conditioning"] = train_step(_with(sf, model={"conditioning": "per_token"}))
        runners["untruncated_teacher"] = train_step(_with(sf, objective={"teacher_layer": cfg.depth}))
        runners["remat"] = train_step(_with(sf, model={"remat": True}))
    runners["sampling"] = sampler(cfg, sample_steps)
    if torch:
        for kind, name in (("flow_matching", "torch_fm"), ("self_flow", "torch_selfflow")):
            candidate = torch_step(cfg, kind)
            if candidate is not None:
                runners[name] = candidate
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, c in runners.items():
            reps = steps_per_round if not name.startswith("peak") else 5
            times[name].append(c.run(reps))
    med = {name: statistics.median(v) for name, v in times.items()}
    peak = {
        "float32": runners["peak_f32"].flops / med["peak_f32"],
        "bfloat16": runners["peak_bf16"].flops / med["peak_bf16"],
    }
    rows = {}
    for name, c in runners.items():
        if name.startswith("peak"):
            continue
        row = {"seconds": med[name], "flops": c.flops, "flops_per_s": c.flops / med[name]}
        dtype = "bfloat16" if name == "selfflow_bf16" or not (f32 or name.startswith("torch")) else "float32"
        row["mfu"] = row["flops_per_s"] / peak[dtype]
        row["mfu_of"] = dtype
        if "step_fn" in c.info:
            row["recompiles"] = c.info["step_fn"]._cache_size() - c.info["compiles_at_start"]
            row["peak_bytes"] = c.info["peak_bytes"]
        rows[name] = row
    first = Task(cfg).layouts[0]
    ratio = lambda a, b: rows[a]["seconds"] / rows[b]["seconds"] if a in rows and b in rows else math.nan  # noqa: E731
    return {
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
        "threads": os.cpu_count(),
        "params": runners["selfflow"].info["params"],
        "depth": cfg.depth,
        "width": cfg.model.resolved("hidden_size"),
        "dtype": cfg.model.dtype,
        "batch": first.batch_size,
        "tokens": first.layout.num_tokens,
        "student_layer": cfg.student_layer,
        "teacher_layer": cfg.teacher_layer,
        "rounds": rounds,
        "steps_per_round": steps_per_round,
        "peak_flops": peak,
        "rows": rows,
        "sampling": {
            "examples_per_s": runners["sampling"].info["examples"] / med["sampling"],
            "steps": sample_steps,
        },
        "checkpoint": checkpoint_cost(
            _with(cfg, objective={"kind": "self_flow"}), runners["selfflow"].info["state"]()
        ),
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0,
        "selfflow_over_fm": ratio("selfflow", "fm"),
        "bf16_over_f32": ratio("selfflow_bf16", "selfflow"),
        "selfflow_over_torch": ratio("selfflow", "torch_selfflow"),
        "fm_over_torch": ratio("fm", "torch_fm"),
        "mfu": rows["selfflow"]["mfu"],
    }


SHORT = {"float32": "f32", "bfloat16": "bf16"}
LABELS = {
    "fm": "flow matching step",
    "selfflow": "Self-Flow step",
    "selfflow_bf16": "Self-Flow step, bf16",
    "per_token_conditioning": "Self-Flow, per-token adaLN",
    "untruncated_teacher": "Self-Flow, teacher runs all blocks",
    "remat": "Self-Flow, remat blocks",
    "sampling": "sampling (Euler step)",
    "torch_fm": "PyTorch flow matching step",
    "torch_selfflow": "PyTorch Self-Flow step",
}


def format_report(r: dict) -> str:
    gib = 2**30
    lines = [
        f"device {r['device']} ({r['device_kind']}, {r['threads']} CPU threads): {r['params'] / 1e6:.2f}M params, "
        f"depth {r['depth']}, width {r['width']}, {r['dtype']}, batch {r['batch']} x {r['tokens']} tokens, "
        f"student/teacher layers {r['student_layer']}/{r['teacher_layer']}",
        f"matmul peak: float32 {r['peak_flops']['float32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 (f32 accumulation) {r['peak_flops']['bfloat16'] / 1e9:.1f} GFLOP/s",
        f"median of {r['rounds']} interleaved rounds x {r['steps_per_round']} calls:",
        f"  {'':36s} {'ms/call':>9s} {'GFLOP/call':>11s} {'GFLOP/s':>8s} {'MFU':>12s} {'XLA peak mem':>13s} recompiles",
    ]
    for name, row in r["rows"].items():
        mem = f"{row['peak_bytes'] / gib:9.2f} GiB" if "peak_bytes" in row else ""
        lines.append(
            f"  {LABELS.get(name, name):36s} {row['seconds'] * 1e3:9.1f} {row['flops'] / 1e9:11.2f} "
            f"{row['flops_per_s'] / 1e9:8.1f} {row['mfu']:6.1%} of {SHORT[row['mfu_of']]:4s} {mem:>13s} "
            f"{row.get('recompiles', '')}"
        )
    s, c = r["sampling"], r["checkpoint"]
    lines += [
        f"sampling: {s['examples_per_s'] * s['steps']:.1f} example-steps/s "
        f"({s['examples_per_s']:.2f} examples/s at {s['steps']} Euler steps)",
        f"checkpoint of the Self-Flow state ({c['bytes'] / 1e6:.1f} MB): save {c['save_seconds'] * 1e3:.1f} ms, "
        f"{c['save_blocking_seconds'] * 1e3:.1f} ms of it blocking the loop; its crc32 checksums "
        f"{c['checksum_seconds'] * 1e3:.1f} ms = {c['checksum_gb_per_s']:.2f} GB/s "
        f"({c['checksum_seconds'] / c['save_seconds']:.0%} of the save)",
        f"process max RSS {r['max_rss_bytes'] / gib:.2f} GiB",
        f"ratios: Self-Flow / FM {r['selfflow_over_fm']:.3f}; bf16 / f32 Self-Flow {r['bf16_over_f32']:.3f}; "
        f"ours / PyTorch: FM {r['fm_over_torch']:.3f}, Self-Flow {r['selfflow_over_torch']:.3f}",
        f"selfflow_over_fm={r['selfflow_over_fm']:.3f} mfu={r['mfu']:.3f} "
        f"selfflow_over_torch={r['selfflow_over_torch']:.3f}",
    ]
    return "\n".join(lines)
