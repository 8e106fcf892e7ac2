"""Model FLOPs of a train step and of sampling, for MFU: the matmuls the algorithm needs.

Counted (2 FLOPs per multiply-add), per sample of a layout with N tokens, segments of n_i
tokens and d_i channels, width D, MLP width M, depth L, R conditioning rows per sample (R = 3
under the factored timesteps every step uses: values [t, s, 0]; see ``model.FactoredTimesteps``),
F = 256 sinusoid frequencies:

    embed      Σ_i 2·n_i·d_i·D                         input projections
    condition  R·2·(F·D + D·D)                         timestep MLP
    block      N·2·(3D² + D² + 2·D·M) + 4·N²·D          qkv, out-proj, MLP; QKᵀ and AV
               + R·2·D·6D                               adaLN modulation
    final      Σ_i (R·2·D·2D + 2·n_i·D·d_i)             per-segment adaLN and output layer,
                                                        generated segments only
    projector  N·2·(D·2D + 2D·D)                        student head (Self-Flow only)

A train step is the student's forward + backward (backward = 2× forward, except that the input
projections and the first timestep layer, whose inputs are data, need no input gradient: 1×)
plus, for Self-Flow, the teacher's forward through ``teacher_layer`` blocks (no final layer).
Elementwise work (norms, softmax, GELU, the optimizer) is not counted, as in the usual MFU
convention (PaLM, MaxText). ``tests/test_flops.py`` checks these formulas against the matmuls
JAX actually traces for the step, after dead-code elimination.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.extend.core import jaxprs_in_params

from selfflow.config import Config
from selfflow.layers import GATHER_GRADIENT
from selfflow.layout import CONDITION, Layout

FREQ_DIM = 256
CONDITION_ROWS = 3  # factored timesteps: [t, s, 0] per sample


def _dims(cfg: Config) -> tuple[int, int, int]:
    d = cfg.model.resolved("hidden_size")
    return cfg.depth, d, int(d * cfg.model.mlp_ratio)


def forward_parts(
    cfg: Config,
    layout: Layout,
    token_dims: dict[str, int],
    *,
    blocks: int | None = None,
    final: bool = True,
    rows: int = CONDITION_ROWS,
) -> dict[str, float]:
    """Per-sample forward FLOPs by part; ``blocks`` = how many blocks run (default all)."""
    depth, d, m = _dims(cfg)
    n = layout.num_tokens
    blocks = depth if blocks is None else blocks
    seg = [(s.num_tokens, token_dims[s.modality]) for s in layout.segments]
    parts = {
        "embed": sum(2 * ni * di * d for ni, di in seg),
        "time_fc1": rows * 2 * FREQ_DIM * d,
        "time_fc2": rows * 2 * d * d,
        "blocks": blocks * (n * 2 * (4 * d * d + 2 * d * m) + 4 * n * n * d + rows * 2 * d * 6 * d),
    }
    if final:  # condition segments' outputs are never used (and XLA removes them)
        parts["final"] = sum(
            rows * 2 * d * 2 * d + 2 * s.num_tokens * d * token_dims[s.modality]
            for s in layout.segments
            if s.role != CONDITION
        )
    return parts


def train_step_flops(cfg: Config, layout: Layout, token_dims: dict[str, int], batch: int) -> float:
    """Model FLOPs of one optimizer step on a batch of ``layout`` (see the module docstring)."""
    fwd = forward_parts(cfg, layout, token_dims)
    if cfg.uses_teacher:
        _, d, _ = _dims(cfg)
        fwd["projector"] = layout.num_tokens * 2 * 4 * d * d
    data_input = fwd["embed"] + fwd["time_fc1"]  # no input gradient: forward + weight gradient
    student = 3 * sum(fwd.values()) - data_input
    teacher = (
        sum(forward_parts(cfg, layout, token_dims, blocks=cfg.teacher_layer, final=False).values())
        if cfg.uses_teacher
        else 0
    )
    return float(batch * (student + teacher))


def sampling_flops(
    cfg: Config, layout: Layout, token_dims: dict[str, int], batch: int, evaluations: int, cfg_scale: float
) -> float:
    """Model FLOPs of sampling ``batch`` examples with ``evaluations`` model calls each
    (guidance doubles the rows of every call)."""
    rows = batch * (2 if cfg_scale != 1.0 else 1)
    return float(rows * evaluations * sum(forward_parts(cfg, layout, token_dims).values()))


def peak_matmul_call(dtype=jnp.float32, n: int = 2048):
    """(call, flops): ``call()`` runs a compiled n³ matmul in ``dtype`` with float32
    accumulation on the default device (compiled and warmed up here)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    return (lambda: f(a, b)), 2.0 * n**3


def matmul_peak(dtype=jnp.float32, n: int = 1024, reps: int = 3) -> float:
    """Best FLOP/s of :func:`peak_matmul_call` over ``reps`` calls: the MFU denominator
    measured on this machine, not a datasheet figure."""
    import time

    call, count = peak_matmul_call(dtype, n)
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        call().block_until_ready()
        best = min(best, time.perf_counter() - start)
    return count / best


# ---------------------------------------------------------------------------- what JAX traces


def traced_matmul_flops(fn, *args, **kwargs) -> int:
    """FLOPs of every ``dot_general`` in ``fn``'s jaxpr after dead-code elimination (sub-jaxprs
    included; a scan body counts once per iteration). An independent count for the tests.
    The one-hot contractions of the per-token gather's backward (``layers._gather_rows``) are
    left out: they are a gather's gradient (< 2 % of the step), not model FLOPs."""
    from jax._src.interpreters import partial_eval as pe

    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    return _count(jaxpr)


def _count(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general" and GATHER_GRADIENT not in str(eqn.source_info.name_stack):
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[i] for i in lc)
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for sub in jaxprs_in_params(eqn.params):
            total += times * _count(sub)
    return total
