"""Warm starts: a new run begins from another run's weights (``train.init_from``).

The paper initialises its joint video-audio model from the multimodal one and RT-1 from the
video-weighted run; the warm-start experiment branches several objectives from one shared
flow-matching phase. Any objective may start from any source: every run's model holds the same
tensors (the projector included), so only the architecture and token dims must agree.

Sources:
    a run directory      its latest checkpoint: online weights, EMA, AdamW state and step
    a .safetensors file  an export (``selfflow export``): one set of weights

``train.init_weights``: ``both`` (student <- online, EMA <- EMA; an export's one set goes to
both), ``ema`` or ``online`` (both from that set). ``train.init_optimizer`` also carries the
AdamW moments, the schedule's count and the step counter: the new run then continues the
source's learning-rate schedule and data stream (batch n is a function of (seed, n)) and
``train.steps`` counts from the source's step. Without it the run starts at step 0 with fresh
AdamW state (and warm-up, if configured). The base key is always the new run's ``seed``.

A source that does not fit is one :class:`~selfflow.errors.ParamsError` listing every missing,
unexpected and mis-shaped tensor; nothing is partially loaded. The one exception is an objective's
own head (REPA's ``repa_projector``, present only in REPA runs): missing in the source, it keeps
its fresh initialisation (and, with ``init_optimizer``, fresh AdamW moments); present in the source
but not in this run's model, it is left out.

``train.init_new="fresh"`` extends that to every tensor: a model that adds to the source's (the
paper's joint video-audio model from its multimodal one: audio and text projections the source
lacks, image projections it has) keeps its own initialisation for the new tensors and leaves the
source's extra ones out, naming both counts; tensors of the same name must still have the same
shape. It needs a fresh optimizer (``init_optimizer=false``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

from selfflow.config import Config, ConfigError
from selfflow.errors import ParamsError
from selfflow.params import flatten, shape_problems, tensor_name

OBJECTIVE_HEADS = ("repa_projector.",)  # tensors only some objectives' models have


def _source_sets(cfg: Config) -> tuple[dict, dict | None, str]:
    """({"online": flat, "ema": flat} or the export's one set under both, the source run's
    state (None for an export), a description for messages)."""
    source = Path(cfg.train.init_from)
    if source.is_dir():
        from selfflow.run import load_run

        _, state, _, _, step = load_run(source)
        state = jax.device_get(state)
        sets = {"online": flatten(state["params"]), "ema": flatten(state["ema"])}
        return sets, state, f"{source} (step {step})"
    if source.is_file() and source.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(str(source))
        return {"online": tensors, "ema": tensors}, None, str(source)
    raise ConfigError(
        f"train.init_from={cfg.train.init_from!r}: expected a run directory (with checkpoints/) "
        "or an exported .safetensors file; it is neither"
    )


def _nested_like(template: dict, flat: dict[str, np.ndarray]) -> dict:
    """``flat`` tensors in ``template``'s nesting and dtypes (the template's own where ``flat``
    lacks one: an objective head the source has not)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = [np.asarray(flat.get(tensor_name(p), x), dtype=np.asarray(x).dtype) for p, x in paths]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _carried_optimizer(template, source, where: str):
    """``template`` (a fresh optimizer state) with every leaf the source has at the same path and
    shape; an objective head's moments the source lacks stay fresh. Anything else that does not
    match is a ConfigError (a different optim.* setup)."""

    def is_head(key: str) -> bool:
        return any(head.rstrip(".") in key for head in OBJECTIVE_HEADS)

    theirs = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(source)[0]}
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves, missing = [], []
    for path, x in paths:
        key = jax.tree_util.keystr(path)
        y = theirs.get(key)
        if y is not None and np.shape(y) == np.shape(x):
            leaves.append(np.asarray(y, dtype=np.asarray(x).dtype))
        elif is_head(key):
            leaves.append(np.asarray(x))
        else:
            missing.append(key)
    mine = {jax.tree_util.keystr(p) for p, _ in paths}
    missing += [k for k in theirs if k not in mine and not is_head(k)]
    if missing:
        raise ConfigError(
            f"train.init_optimizer=true: the optimizer state of {where} does not fit this run's "
            f"({len(missing)} leaves differ, e.g. {missing[:2]}; a different optim.* setup, e.g. "
            "warm-up on in one and off in the other); use the source's optim settings or set "
            "train.init_optimizer=false"
        )
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _examples(names: list[str], most: int = 3) -> str:
    """`` (e.g. a, b, c)`` for a log line; empty for no names."""
    return f" (e.g. {', '.join(names[:most])})" if names else ""


def initialise(cfg: Config, state: dict) -> dict:
    """``state`` (a fresh train state) with the weights, and optionally the optimizer state and
    step, of ``cfg.train.init_from``; ``state`` unchanged when it is empty."""
    t = cfg.train
    if not t.init_from:
        return state
    sets, source_state, where = _source_sets(cfg)
    expected = {k: np.shape(v) for k, v in flatten(state["params"]).items()}
    got = {k: np.shape(v) for k, v in sets["online"].items()}
    differing = sorted(set(expected) ^ set(got))
    heads = differing if t.init_new == "fresh" else [k for k in differing if k.startswith(OBJECTIVE_HEADS)]
    problems = shape_problems(
        {k: v for k, v in expected.items() if k not in heads},
        {k: v for k, v in got.items() if k not in heads},
    )
    if problems:
        hint = (
            ""
            if t.init_new == "fresh"
            else (
                "; if this run's model adds to the source's, train.init_new=fresh keeps the new tensors' "
                "initialisation"
            )
        )
        raise ParamsError(
            f"train.init_from: {where} does not fit this run's model ({len(problems)} tensors): "
            + "; ".join(problems)
            + hint
        )
    online = sets["online" if t.init_weights in ("both", "online") else "ema"]
    ema = sets["ema" if t.init_weights in ("both", "ema") else "online"]
    new = dict(state, params=_nested_like(state["params"], online), ema=_nested_like(state["params"], ema))
    new_tensors = [k for k in heads if k in expected]
    if t.init_new == "fresh":
        carried = (
            f"fresh optimizer state, step 0; {len(expected) - len(new_tensors)} tensors from the source, "
            f"{len(new_tensors)} new ones initialised here{_examples(new_tensors)}, "
            f"{len(heads) - len(new_tensors)} of the source's left out{_examples(sorted(set(heads) - set(new_tensors)))}"
        )
    else:
        carried = "fresh optimizer state, step 0" + (
            f"; {len(heads)} head tensors freshly initialised or left out" if heads else ""
        )
    if t.init_optimizer:
        if source_state is None:
            raise ConfigError(
                f"train.init_optimizer=true: {where} is an export and holds no optimizer state; "
                "start from a run directory or set train.init_optimizer=false"
            )
        new["opt_state"] = _carried_optimizer(state["opt_state"], source_state["opt_state"], where)
        new["step"] = np.asarray(source_state["step"], dtype=np.int32)
        carried = f"optimizer state and step {int(new['step'])} carried"
        if int(new["step"]) >= t.steps:
            raise ConfigError(
                f"train.steps={t.steps}: with train.init_optimizer=true the run continues from the "
                f"source's step {int(new['step'])}; set train.steps above it (the steps count on)"
            )
    print(
        f"initialised from {where}: weights {t.init_weights}, {carried}",
        file=sys.stderr,
    )
    return new
