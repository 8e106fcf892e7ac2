"""Parameter counts and compute estimates of the paper_repro configs and sweeps, from the configs
alone (no data, no accelerator, no model is built).

Command (from the repository root):

    .venv/bin/python paper_repro/compute.py          # prints the table of README.md, "Compute estimates"

Each config file declares ``DATA_SHAPES``: the arrays one example of its prepared data must hold
(e.g. ``{"image": (32, 32, 4)}`` for SD-VAE latents of 256 px images). The token geometry follows
from them exactly as ``selfflow.tasks.Task`` derives it from a source's schema (same modality
specs and patch sizes), so nothing here needs the data itself.

- Parameters: counted analytically from depth, width, MLP ratio, classes and token dims (the
  formula of :func:`count_params`; ``tests/test_paper_configs.py`` checks it against a real
  ``build_model`` and against ``nnx.eval_shape`` of the SiT-XL/2 config).
- Training FLOPs: ``selfflow.flops.train_step_flops`` (matmul FLOPs of the student forward +
  backward and the teacher forward through ``teacher_layer``) per step, averaged over the layouts
  by their sampling weights, times ``train.steps``.
- H100-days: training FLOPs / (ASSUMED_MFU × H100_BF16_PEAK) / 86400. An **estimate, not a
  measurement**: the MFU a real run reaches is not known here (no GPU was available to measure).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import modalities  # noqa: E402
from modalities.text import NAME as TEXT  # noqa: E402
from selfflow import flops  # noqa: E402
from selfflow.config import (  # noqa: E402
    Config,
    apply_overrides,
    exec_python_file,
    layout_modalities,
    parse_segment,
    resolve,
)
from selfflow.layout import Layout, Segment  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
SWEEPS = HERE / "sweeps"

H100_BF16_PEAK = 989e12  # dense BF16 tensor-core peak of an H100 SXM, FLOP/s (NVIDIA datasheet)
ASSUMED_MFU = 0.40  # assumption: a typical MFU of a well-tuned transformer step; not measured here
FID_SAMPLES, FID_NFE = 50_000, 250  # the paper's ImageNet protocol (reference §4.1)
# Runs of the README table that are a config file plus overrides: (file, run name, overrides).
EXTRA_RUNS = (
    (
        "configs/imagenet256_xl2.py",
        "Table 1 flow-matching baseline",
        ("objective.kind=flow_matching", "train.steps=7000000"),
    ),
)


# ---------------------------------------------------------------------------- configs


def load(path: str | Path, overrides: tuple[str, ...] = ()) -> tuple[Config, dict]:
    """(validated CONFIG with ``overrides`` applied, DATA_SHAPES) of a paper_repro config file."""
    module = exec_python_file(Path(path), "config")
    shapes = getattr(module, "DATA_SHAPES", None)
    if not isinstance(shapes, dict):
        raise ValueError(f"{path}: expected a module-level DATA_SHAPES = {{key: shape}}")
    return resolve(apply_overrides(module.CONFIG, list(overrides))), shapes


def specs(cfg: Config, shapes: dict) -> dict:
    """Modality specs of the run, as ``selfflow.tasks.Task`` builds them (each modality's
    ``spec_for``) from the data's shapes; fitted statistics (actions) come from zeros, which
    changes no token count."""
    cfg = resolve(cfg)
    used = sorted(layout_modalities(cfg.layouts))

    def zeros(keys):
        return lambda n: {k: np.zeros((1, *shapes[k]), np.float32) for k in keys}

    out = {}
    for m in used:
        keys = modalities.keys_of(m)
        out[m] = modalities.get(m).spec_for({k: tuple(shapes[k]) for k in keys}, cfg, zeros(keys))
    return out


def class_conditional_images(cfg: Config) -> bool:
    """Whether the run is the one layout [image] (the FID protocol's models)."""
    return [lc.segments for lc in cfg.layouts] == [("image",)]


def token_dims(cfg: Config, shapes: dict) -> dict[str, int]:
    return {m: s.token_dim for m, s in specs(cfg, shapes).items()}


def layouts(cfg: Config, shapes: dict) -> list[tuple[Layout, int, float]]:
    """(layout, batch size, sampling weight) of every layout of the run."""
    sp = specs(cfg, shapes)
    out = []
    for lc in resolve(cfg).layouts:
        segments = tuple(Segment(m, sp[m].num_tokens, r) for m, r in map(parse_segment, lc.segments))
        out.append((Layout(lc.name, segments), lc.batch_size, lc.weight))
    return out


# ---------------------------------------------------------------------------- parameters


def count_params(cfg: Config, dims: dict[str, int], projector: bool = True) -> int:
    """Parameters of ``selfflow.model.build_model(cfg, dims)``, counted from the config.

    D width, M = int(D·mlp_ratio), per block: qkv (D·3D + 3D), out-proj (D² + D), MLP
    (D·M + M + M·D + D), adaLN (D·6D + 6D); a double-stream block (``model.double_stream_blocks``)
    is two such blocks (text and data weights); timestep MLP (256·D + D + D² + D); class table
    ((num_classes + 1)·D, the extra row is the null class); per modality an input projection
    (d·D + D; text: (d - 1)·D + D, its last channel is the padding mask) and a final layer
    (D·2D + 2D + D·d + d; text's is built but unused: text is only a condition); with text and
    ``model.text_pooled`` the pooled-text MLP ((d - 1)·D + D + D² + D); projector
    (D·2D + 2D + 2D·D + D). Positions (sin-cos or RoPE) have no parameters.
    """
    d, depth = cfg.model.resolved("hidden_size"), cfg.depth
    m = int(d * cfg.model.mlp_ratio)
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * m + m + m * d + d) + (6 * d * d + 6 * d)
    total = (depth + cfg.model.double_stream_blocks) * block
    total += (256 * d + d + d * d + d) + (cfg.data.num_classes + 1) * d
    for name, t in dims.items():
        features = t - (name == TEXT)
        total += (features * d + d) + (2 * d * d + 2 * d + d * t + t)
        if name == TEXT and cfg.model.text_pooled:
            total += (features * d + d) + (d * d + d)
    if projector:
        total += (2 * d * d + 2 * d) + (2 * d * d + d)
    return total


def projector_params(cfg: Config) -> int:
    d = cfg.model.resolved("hidden_size")
    return (2 * d * d + 2 * d) + (2 * d * d + d)


# ---------------------------------------------------------------------------- FLOPs


def step_flops(cfg: Config, shapes: dict) -> float:
    """Expected model FLOPs of one training step (layouts weighted by their sampling weights)."""
    dims, items = token_dims(cfg, shapes), layouts(cfg, shapes)
    total_weight = sum(w for _, _, w in items)
    return sum(w * flops.train_step_flops(cfg, lay, dims, b) for lay, b, w in items) / total_weight


def training_flops(cfg: Config, shapes: dict) -> float:
    return cfg.train.steps * step_flops(cfg, shapes)


def fid_sampling_flops(cfg: Config, shapes: dict, cfg_scale: float) -> float:
    """FLOPs of the paper's FID sampling: 50k samples, 250 model evaluations (guidance doubles
    the rows of every call in this upper bound; the official sampler guides only τ <= 0.7)."""
    ((lay, _, _),) = layouts(cfg, shapes)
    return flops.sampling_flops(cfg, lay, token_dims(cfg, shapes), FID_SAMPLES, FID_NFE, cfg_scale)


def h100_days(flop: float) -> float:
    return flop / (ASSUMED_MFU * H100_BF16_PEAK) / 86400.0


def fmt_days(days: float) -> str:
    """Rounded for a table: two significant figures."""
    if days < 0.001:
        return "<0.001"
    digits = max(0, 1 - int(math.floor(math.log10(days))))
    return f"{round(days, digits):,.{digits}f}"


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.1f}M"


# ---------------------------------------------------------------------------- the table


def sweep_runs(path: Path) -> list[tuple[str, Config, dict]]:
    """(run name, config, DATA_SHAPES of the base) of every run of a sweep file."""
    from selfflow.sweep import configs, load_sweep

    sweep, base = load_sweep(path)
    _, shapes = load(base)
    return [(name, cfg, shapes) for name, cfg in configs(sweep, base).items()]


def entries() -> list[dict]:
    """One entry per config file, per extra run and per sweep run, in file order."""
    rows = []
    sources = [(p, None, *load(p)) for p in sorted(CONFIGS.glob("*.py"))]
    sources += [(HERE / f, name, *load(HERE / f, overrides)) for f, name, overrides in EXTRA_RUNS]
    sources += [
        (p, name, cfg, shapes) for p in sorted(SWEEPS.glob("*.py")) for name, cfg, shapes in sweep_runs(p)
    ]
    for path, run, cfg, shapes in sources:
        dims = token_dims(cfg, shapes)
        total = training_flops(cfg, shapes)
        rows.append(
            dict(
                file=str(path.relative_to(ROOT)),
                run=run,
                cfg=cfg,
                params=count_params(cfg, dims, projector=False),
                projector=projector_params(cfg),
                tokens=" / ".join(f"{lay.name} {lay.num_tokens}" for lay, _, _ in layouts(cfg, shapes)),
                batch=" / ".join(str(b) for _, b, _ in layouts(cfg, shapes)),
                step_flops=step_flops(cfg, shapes),
                flops=total,
                days=h100_days(total),
            )
        )
    return rows


def days_by_file() -> dict[str, set[str]]:
    """Every formatted H100-days figure of the tables, by the file it belongs to: each run (config,
    extra run, sweep run), each sweep's sum, and the FID sampling rows."""
    out: dict[str, set[str]] = {}
    sums: dict[str, float] = {}
    for e in entries():
        out.setdefault(e["file"], set()).add(fmt_days(e["days"]))
        if e["file"].startswith("paper_repro/sweeps/"):
            sums[e["file"]] = sums.get(e["file"], 0.0) + e["days"]
    for name, days in sums.items():
        out[name].add(fmt_days(days))
    for path in sorted(CONFIGS.glob("*.py")):
        cfg, shapes = load(path)
        if class_conditional_images(cfg):
            for scale in (1.0, 2.0):
                out[str(path.relative_to(ROOT))].add(
                    fmt_days(h100_days(fid_sampling_flops(cfg, shapes, scale)))
                )
    return out


def table() -> str:
    lines = [
        "| file | run | parameters (+ projector) | tokens per example | batch | steps | "
        "FLOPs per step | training FLOPs | H100-days at 40 % MFU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = entries()
    for e in rows:
        lines.append(
            f"| `{e['file']}` | {e['run'] or '-'} | {fmt_params(e['params'])} (+ {fmt_params(e['projector'])}) "
            f"| {e['tokens']} | {e['batch']} | {e['cfg'].train.steps:,} | {e['step_flops']:.2e} "
            f"| {e['flops']:.2e} | {fmt_days(e['days'])} |"
        )
    for path in sorted(SWEEPS.glob("*.py")):
        name = str(path.relative_to(ROOT))
        runs = [e for e in rows if e["file"] == name]
        total = sum(e["flops"] for e in runs)
        lines.append(
            f"| `{name}` | all {len(runs)} runs | | | | | | {total:.2e} | {fmt_days(h100_days(total))} |"
        )
    lines += [
        "",
        "| FID sampling (50k samples, 250 evaluations) | guidance | FLOPs | H100-days at 40 % MFU |",
        "|---|---|---|---|",
    ]
    for path in sorted(CONFIGS.glob("*.py")):
        cfg, shapes = load(path)
        if not class_conditional_images(cfg):
            continue
        for scale in (1.0, 2.0):
            f = fid_sampling_flops(cfg, shapes, scale)
            lines.append(
                f"| `{path.relative_to(ROOT)}` | {'none (cfg 1)' if scale == 1.0 else 'cfg ≠ 1 (upper bound: both passes at all 250)'} "
                f"| {f:.2e} | {fmt_days(h100_days(f))} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
