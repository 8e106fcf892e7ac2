"""Tests for warm starts (``train.init_from``, selfflow.init_from) on the tiny image run.

The strongest check: a run of 2 steps continued by a warm start that carries the optimizer to
step 4 is bit-identical to one run of 4 steps (same seed, so the same batches and noise).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from selfflow import init_from
from selfflow.config import ConfigError, validate
from selfflow.errors import ParamsError
from selfflow.export import export_safetensors
from selfflow.model import build_model
from selfflow.run import init_state, load_run, make_optimizer
from selfflow.tasks import Task

from helpers_config import tiny_image_config
from helpers_train import assert_bit_identical, host, run, tiny_config, with_steps


def warm(cfg, **train_fields):
    return validate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_fields)))


def fresh_state(cfg):
    from selfflow import config as config_lib

    cfg = config_lib.resolve(cfg)
    model = build_model(cfg, Task(cfg).token_dims)
    return init_state(cfg, model, make_optimizer(cfg.optim))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 2-step Self-Flow run (EMA 0.9, so online and EMA weights differ) and its final state."""
    run_dir = tmp_path_factory.mktemp("source")
    result = run(tiny_config(steps=2), run_dir)
    return run_dir, host(result.state)


def assert_tree_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_continuing_with_the_optimizer_is_bit_identical_to_one_run(source, tmp_path):
    src, _ = source
    straight = host(run(tiny_config(steps=4), tmp_path / "straight").state)
    branch = host(
        run(warm(tiny_config(steps=4), init_from=str(src), init_optimizer=True), tmp_path / "b").state
    )
    assert int(branch["step"]) == 4
    assert_bit_identical(straight, branch)


@pytest.mark.parametrize(
    "weights, online_from, ema_from",
    [("both", "params", "ema"), ("ema", "ema", "ema"), ("online", "params", "params")],
)
def test_init_weights_choose_the_sets(source, weights, online_from, ema_from):
    src, src_state = source
    cfg = warm(tiny_config(kind="flow_matching"), init_from=str(src), init_weights=weights)
    fresh = fresh_state(cfg)
    state = init_from.initialise(cfg, fresh)
    assert_tree_equal(state["params"], src_state[online_from])
    assert_tree_equal(state["ema"], src_state[ema_from])
    assert int(state["step"]) == 0  # no optimizer carried: a new run from step 0
    assert_tree_equal(state["opt_state"], fresh["opt_state"])
    with pytest.raises(AssertionError):  # the sets differ, so the choice is visible
        assert_tree_equal(src_state["params"], src_state["ema"])


def test_an_export_initialises_both_sets(source, tmp_path):
    src, src_state = source
    out, _ = export_safetensors(src, tmp_path / "w.safetensors", weights="online")
    cfg = warm(tiny_config(), init_from=str(out))
    state = init_from.initialise(cfg, fresh_state(cfg))
    assert_tree_equal(state["params"], src_state["params"])
    assert_tree_equal(state["ema"], src_state["params"])
    with pytest.raises(ConfigError, match="holds no optimizer state"):
        cfg = warm(tiny_config(), init_from=str(out), init_optimizer=True)
        init_from.initialise(cfg, fresh_state(cfg))


def test_mismatched_shapes_are_one_error_listing_every_tensor(source):
    src, _ = source
    cfg = warm(tiny_image_config(model={"hidden_size": 48}), init_from=str(src))
    with pytest.raises(ParamsError) as info:
        init_from.initialise(cfg, fresh_state(cfg))
    message = str(info.value)
    assert str(src) in message and "blocks.0." in message and "blocks.1." in message
    assert "projector" in message and "y_embedder" in message
    from selfflow.params import flatten

    mine = {k: v.shape for k, v in flatten(fresh_state(cfg)["params"]).items()}
    theirs = {k: v.shape for k, v in flatten(source[1]["params"]).items()}
    differing = [k for k in mine if mine[k] != theirs[k]]
    assert len(differing) > 20 and f"({len(differing)} tensors)" in message
    assert all(k in message for k in differing)


def test_bad_sources_and_optimizer_mismatches_are_config_errors(source, tmp_path):
    src, _ = source
    cfg = warm(tiny_config(), init_from=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="neither"):
        init_from.initialise(cfg, fresh_state(cfg))
    other_optim = dataclasses.replace(
        tiny_config(steps=4), optim=dataclasses.replace(tiny_config().optim, warmup_steps=5)
    )
    cfg = warm(other_optim, init_from=str(src), init_optimizer=True)
    with pytest.raises(ConfigError, match="optimizer state of"):
        init_from.initialise(cfg, fresh_state(cfg))
    cfg = warm(tiny_config(steps=2), init_from=str(src), init_optimizer=True)
    with pytest.raises(ConfigError, match="train.steps=2"):
        init_from.initialise(cfg, fresh_state(cfg))
    with pytest.raises(ConfigError, match="init_from is empty"):
        warm(tiny_config(), init_weights="ema")


def test_a_resumed_warm_start_continues_from_its_own_checkpoint(source, tmp_path):
    """The second invocation resumes the branch; the source is not read again (deleting it
    would break a re-initialisation) and the result equals an uninterrupted branch."""
    import shutil

    src, _ = source
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    cfg = warm(tiny_config(steps=6), init_from=str(copy), init_optimizer=True)
    whole = host(run(cfg, tmp_path / "whole").state)
    run(with_steps(cfg, 4), tmp_path / "parts")
    shutil.rmtree(copy)
    parts = host(run(cfg, tmp_path / "parts").state)
    assert_bit_identical(whole, parts)
    cfg_saved, _, _, _, step = load_run(tmp_path / "parts")
    assert step == 6 and cfg_saved.train.init_from == str(copy)


def test_an_objective_head_the_source_lacks_keeps_its_initialisation(source):
    """A REPA run from a Self-Flow run: every shared tensor comes from the source, REPA's projector
    (absent there) stays as initialised; the reverse direction leaves the head out."""
    src, src_state = source
    repa = {"kind": "repa", "encoder": "classifier:unused", "encoder_dim": 8, "projector_dim": 16}
    cfg = warm(tiny_image_config(objective=repa, train={"steps": 2}), init_from=str(src))
    fresh = fresh_state(cfg)
    state = init_from.initialise(cfg, fresh)
    assert_tree_equal(state["params"]["repa_projector"], fresh["params"]["repa_projector"])
    shared = {k: v for k, v in state["params"].items() if k != "repa_projector"}
    assert_tree_equal(shared, src_state["params"])


def test_the_optimizer_carries_to_a_run_with_an_extra_head(source):
    """A REPA branch of a Self-Flow run with init_optimizer: every shared moment is the source's,
    the new head's moments start fresh, and the step counts on."""
    src, src_state = source
    repa = {"kind": "repa", "encoder": "classifier:unused", "encoder_dim": 8, "projector_dim": 16}
    cfg = warm(tiny_image_config(objective=repa, train={"steps": 4}), init_from=str(src), init_optimizer=True)
    fresh = fresh_state(cfg)
    state = init_from.initialise(cfg, fresh)
    assert int(state["step"]) == 2
    flat = lambda tree: {
        jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }  # noqa: E731
    new, old, init = flat(state["opt_state"]), flat(src_state["opt_state"]), flat(fresh["opt_state"])
    heads = [k for k in new if "repa_projector" in k]
    assert heads and all(np.array_equal(new[k], init[k]) for k in heads)
    assert all(np.array_equal(new[k], old[k]) for k in new if k not in heads)


def test_a_model_that_adds_to_the_source_keeps_its_new_tensors_fresh(tmp_path):
    """train.init_new=fresh: a video + audio-video model from a video-only run takes every shared
    tensor from the source (online and EMA), keeps its own initialisation for the audio tensors, and
    a source with tensors the model lacks loads with those left out. Without it the difference is
    one error that names the option; shapes must match either way."""
    from selfflow.config import LayoutConfig
    from selfflow.params import flatten

    from helpers_config import tiny_world_config

    video = LayoutConfig("video", ("video",), 1.0, 2)
    both = (video, LayoutConfig("audio_video", ("audio", "video"), 1.0, 2))
    steps = {"steps": 1, "checkpoint_every": 1, "log_every": 1}
    src_state = host(run(tiny_world_config((video,), train=steps), tmp_path / "video").state)
    target = tiny_world_config(both, train=steps)
    with pytest.raises(ParamsError, match="train.init_new=fresh keeps the new tensors") as info:
        init_from.initialise(warm(target, init_from=str(tmp_path / "video")), fresh_state(target))
    assert "audio" in str(info.value)

    cfg = warm(target, init_from=str(tmp_path / "video"), init_new="fresh")
    fresh = fresh_state(cfg)
    state = init_from.initialise(cfg, fresh)
    for kind in ("params", "ema"):
        new, old, init = flatten(state[kind]), flatten(src_state[kind]), flatten(fresh[kind])
        added = [k for k in new if k not in old]
        assert added and all("audio" in k for k in added), added
        assert all(np.array_equal(new[k], init[k]) for k in added)
        assert all(np.array_equal(new[k], old[k]) for k in new if k in old)
    assert not np.array_equal(
        flatten(fresh["params"])["blocks.0.attn.qkv.kernel"], new["blocks.0.attn.qkv.kernel"]
    )

    # the reverse: the audio-video run's extra tensors are left out of a video-only model
    run(target, tmp_path / "both")
    back = warm(tiny_world_config((video,), train=steps), init_from=str(tmp_path / "both"), init_new="fresh")
    loaded = flatten(init_from.initialise(back, fresh_state(back))["params"])
    assert set(loaded) == set(flatten(src_state["params"]))

    wider = warm(
        tiny_world_config(both, model={"hidden_size": 48}, train=steps),
        init_from=str(tmp_path / "video"),
        init_new="fresh",
    )
    with pytest.raises(ParamsError, match="does not fit"):
        init_from.initialise(wider, fresh_state(wider))
    with pytest.raises(ConfigError, match="init_new='fresh' with train.init_optimizer=true"):
        warm(target, init_from=str(tmp_path / "video"), init_new="fresh", init_optimizer=True)
    with pytest.raises(ConfigError, match="init_from is empty"):
        warm(target, init_new="fresh")
