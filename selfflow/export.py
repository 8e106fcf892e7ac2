"""Export a run's weights for the next stage of a pipeline, and load them back.

``selfflow export --run-dir DIR --out PATH --format safetensors [--weights ema|online]`` writes
``PATH`` (a safetensors file; keys are parameter paths such as ``blocks.3.attn.qkv.kernel``,
float32, kernels stored (in, out) as in Flax) and ``PATH`` with suffix ``.json``: the resolved
config and the token dims, everything :func:`load_safetensors` needs to rebuild the model.
Loading checks the tensors against the model: missing, unexpected and mis-shaped tensors are
listed together in one error - never a partial load.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from selfflow import config as config_lib
from selfflow.errors import ParamsError
from selfflow.model import SelfFlowTransformer, build_model
from selfflow.params import assign_params, flatten, tensor_name  # noqa: F401  (re-exported)

# Kept under its old name: the export and import commands raise it for files that do not fit.
ExportError = ParamsError


def export_safetensors(run_dir, out, *, weights: str = "ema", step: int | None = None) -> tuple[Path, Path]:
    """Writes the run's ``weights`` ("ema" = the sampling weights, or "online") to ``out``."""
    from safetensors.numpy import save_file

    from selfflow.run import load_run, select_weights

    if weights not in ("ema", "online"):
        raise ExportError(f"weights={weights!r}: expected 'ema' or 'online'")
    cfg, state, _, task, step = load_run(run_dir, step)
    tensors = flatten(jax.device_get(select_weights(state, weights)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"format": "selfflow", "weights": weights, "step": str(step)})
    meta = out.with_suffix(".json")
    meta.write_text(
        json.dumps(
            {
                "config": config_lib.resolved_dict(cfg),
                "token_dims": task.token_dims,
                "weights": weights,
                "step": step,
            },
            indent=2,
            sort_keys=True,
        )
    )
    return out, meta


def load_safetensors(path) -> tuple[SelfFlowTransformer, config_lib.Config]:
    """The model an export describes, with its weights (``path``.json beside it gives the config)."""
    from safetensors.numpy import load_file

    path = Path(path)
    meta_path = path.with_suffix(".json")
    for p in (path, meta_path):
        if not p.is_file():
            raise ExportError(f"{p} does not exist (an export is a .safetensors file and its .json)")
    meta = json.loads(meta_path.read_text())
    cfg = config_lib.from_dict(meta["config"], where=str(meta_path))
    model = build_model(cfg, {k: int(v) for k, v in meta["token_dims"].items()})
    return assign_params(model, load_file(str(path)), f"{path} (the model of {meta_path})"), cfg


def load_official(path, key: str | None = None, **architecture):
    """An official Self-Flow ``.pt`` as our model with the official call interface; see
    :func:`selfflow.official.load_official`."""
    from selfflow.official import load_official as load

    return load(path, key, **architecture)


# ---------------------------------------------------------------------------- official .pt


def official_architecture(cfg: config_lib.Config, task, learn_sigma: bool) -> dict:
    """The official constructor keywords of a run's model (``task``: its :class:`~selfflow.tasks.Task`),
    or an error naming what does not fit (the official model is image-only, square, with fixed
    sin-cos positions)."""
    from selfflow.official import ARCH_KEYS

    m, spec = cfg.model, task.specs.get("image")
    problems = []
    if set(task.token_dims) != {"image"}:
        problems.append(f"modalities {sorted(task.token_dims)} (the official model has one: image)")
    if m.positions != "sincos":
        problems.append(f"model.positions={m.positions!r} (the official model uses the fixed 'sincos' table)")
    if spec is not None and spec.height != spec.width:
        problems.append(f"image size {spec.height}x{spec.width} (the official model is square)")
    if problems:
        raise ExportError("this run's model has no official counterpart: " + "; ".join(problems))
    arch = dict(
        input_size=spec.height,
        patch_size=spec.patch_size,
        in_channels=spec.channels,
        hidden_size=m.resolved("hidden_size"),
        depth=m.resolved("depth"),
        num_heads=m.resolved("num_heads"),
        mlp_ratio=m.mlp_ratio,
        num_classes=cfg.data.num_classes + 1,
        learn_sigma=learn_sigma,
    )
    return {k: arch[k] for k in ARCH_KEYS}


def export_official(
    run_dir, out, *, weights: str = "ema", step: int | None = None, learn_sigma: bool = True
) -> tuple[Path, Path]:
    """Writes the run's weights as an official ``.pt`` state dict (``learn_sigma``: with the unused
    variance channels, as the released checkpoint and the official sampler expect) and ``out``.json
    with the official constructor keywords."""
    from selfflow.official import to_official, write_pt
    from selfflow.run import load_run, select_weights

    if weights not in ("ema", "online"):
        raise ExportError(f"weights={weights!r}: expected 'ema' or 'online'")
    cfg, state, _, task, step = load_run(run_dir, step)
    arch = official_architecture(cfg, task, learn_sigma)
    params = flatten(jax.device_get(select_weights(state, weights)))
    out = write_pt(to_official(params, arch, cfg.model.time_embedding), out)
    meta = out.with_suffix(".json")
    meta.write_text(
        json.dumps(
            {"architecture": arch, "weights": weights, "step": step, "config": config_lib.resolved_dict(cfg)},
            indent=2,
            sort_keys=True,
        )
    )
    return out, meta


def import_official(path, cfg: config_lib.Config, out_dir, *, key: str | None = None) -> Path:
    """Makes ``out_dir`` a run of ``cfg`` at step 0 whose weights (online and EMA) are the official
    checkpoint's: ``selfflow train`` with the same config fine-tunes it, ``selfflow sample`` samples it.

    ``cfg`` must describe the checkpoint's model (an image-only config; its data must exist, as for
    training). ``learn_sigma`` is read from the file.
    """
    from selfflow import official
    from selfflow.checkpoint import RunCheckpoints
    from selfflow.run import init_state, make_optimizer
    from selfflow.tasks import Task

    out_dir = Path(out_dir)
    if (out_dir / "checkpoints").exists() and any((out_dir / "checkpoints").iterdir()):
        raise ExportError(f"{out_dir} already holds checkpoints; import into a new directory")
    sd = official.read_pt(path, key)
    task = Task(cfg)
    token_dim = task.token_dims.get("image", 0)
    rows = np.shape(sd.get("final_layer.linear.weight", ()))[:1]
    arch = official_architecture(cfg, task, learn_sigma=rows == (2 * token_dim,))
    params = official.from_official(sd, arch, where=str(path))
    if cfg.model.time_embedding == "tau":
        params["t_embedder.fc1.kernel"] = official.flip_time(params["t_embedder.fc1.kernel"])
    model = assign_params(build_model(cfg, task.token_dims), params, str(path))
    state = init_state(cfg, model, make_optimizer(cfg.optim))
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpts = RunCheckpoints(out_dir, keep=cfg.train.keep_checkpoints)
    try:
        ckpts.save(
            0, state, {"next_index": 0, "layout_batches": [0] * len(task.layouts)}, cfg, task.specs_dict()
        )
    finally:
        ckpts.close()
    (out_dir / "config.json").write_text(config_lib.dumps(cfg))
    return out_dir
