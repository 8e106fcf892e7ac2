"""Meshes on 8 simulated CPU devices: axis sizes and their errors, logical axes on every
parameter (from where it is made), parameters really split, activations split by the batch rule,
and the same loss and gradients on every mesh."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from selfflow import sharding
from selfflow.config import (
    Config,
    ConfigError,
    DataConfig,
    MeshConfig,
    ModelConfig,
    ObjectiveConfig,
    TrainConfig,
)
from selfflow.model import build_model
from selfflow.objectives import make_objective
from selfflow.run import init_state, make_optimizer
from selfflow.tasks import Task

CFG = Config(
    model=ModelConfig(preset="tiny", depth=2, hidden_size=64, num_heads=4, patch_size=4),
    data=DataConfig(image_size=16),
    objective=ObjectiveConfig(student_layer=1, teacher_layer=2),
    train=TrainConfig(batch_size=8),
)
MESHES = {
    "1 device": (MeshConfig(data=1), 1),
    "data 8": (MeshConfig(data=8), 8),
    "data 4 x fsdp 2": (MeshConfig(data=4, fsdp=2), 8),
    "data 2 x fsdp 2 x tensor 2": (MeshConfig(data=2, fsdp=2, tensor=2), 8),
}


def test_mesh_fills_the_auto_axis():
    assert sharding.mesh_shape(MeshConfig(data=-1, fsdp=2), 8) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert sharding.mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8)["fsdp"] == 2
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.make_mesh(MeshConfig(data=2, fsdp=2)).devices.size == 4  # the first 4 devices


@pytest.mark.parametrize(
    "mesh, message",
    [
        (MeshConfig(data=3), "data=3 x fsdp=1 x tensor=1 needs 3 devices, which does not divide the 8"),
        (MeshConfig(data=-1, fsdp=3), "needs 3 devices, which does not divide the 8 available"),
        (MeshConfig(data=-1, fsdp=-1), "at most one may be -1"),
        (MeshConfig(data=0), "mesh.data=0"),
    ],
)
def test_mesh_that_does_not_fit_the_devices_is_rejected(mesh, message):
    with pytest.raises(ConfigError, match=message):
        sharding.make_mesh(mesh)


def test_rules_override_the_defaults_and_bad_rules_are_named():
    rules = sharding.parse_rules(("embed=", "vocab=fsdp+tensor"))
    assert rules["embed"] == () and rules["vocab"] == ("fsdp", "tensor") and rules["mlp"] == ("tensor",)
    with pytest.raises(ConfigError, match="'embed=model'"):
        sharding.parse_rules(("embed=model",))


# What each parameter's logical names must be (module path regex -> kernel / table names; a
# bias takes the last name): the table selfflow.sharding looked names up in before they moved to
# where the parameters are made.
EXPECTED_AXES = {
    r"blocks/\d+/attn/qkv": ("embed", "heads"),
    r"blocks/\d+/attn/proj": ("heads", "embed"),
    r"(blocks/\d+/mlp|projector)/fc1": ("embed", "mlp"),
    r"(blocks/\d+/mlp|projector)/fc2": ("mlp", "embed"),
    r"(blocks/\d+|final_layers/[^/]+)/adaLN_modulation": ("embed", "adaln"),
    r"final_layers/[^/]+/linear": ("embed", "token"),
    r"x_embedders/[^/]+": ("token", "embed"),
    r"t_embedder/fc1": ("freq", "embed"),
    r"t_embedder/fc2": ("embed", None),
    r"y_embedder": ("vocab", "embed"),
}


def _expected_axes(path: str):
    module, _, leaf = path.rpartition("/")
    found = [axes for pattern, axes in EXPECTED_AXES.items() if re.fullmatch(pattern, module)]
    assert len(found) == 1, f"{path}: {len(found)} expectations"
    return found[0][-1:] if leaf == "bias" else found[0]


def test_every_parameter_carries_its_logical_axes_from_creation():
    model = build_model(CFG, {"image": 48, "video": 96, "audio": 128, "action": 24})
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    axes = sharding.param_axes(model)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    named = jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))[0]
    assert [sharding.param_path(p) for p, _ in named] == [sharding.param_path(p) for p, _ in leaves]
    for (path, x), (_, names) in zip(leaves, named):
        where = sharding.param_path(path)
        assert names == _expected_axes(where) and len(names) == x.ndim, where
    # a few written out in full
    assert axes["blocks"][1]["attn"]["qkv"] == {"kernel": ("embed", "heads"), "bias": ("heads",)}
    assert axes["t_embedder"]["fc2"] == {"kernel": ("embed", None), "bias": (None,)}
    assert axes["y_embedder"] == {"embedding": ("vocab", "embed")}
    assert axes["final_layers"]["action"]["linear"]["bias"] == ("token",)
    assert axes["x_embedders"]["audio"]["kernel"] == ("token", "embed")
    # Flax sees them as the parameters' sharding annotation
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    assert specs["blocks"][0]["mlp"]["fc2"]["kernel"].get_value() == jax.sharding.PartitionSpec(
        "mlp", "embed"
    )
    # ... and the abstract model (nnx.eval_shape, as `selfflow compile` builds it) has the same names
    assert (
        sharding.param_axes(
            nnx.eval_shape(lambda: build_model(CFG, {"image": 48, "video": 96, "audio": 128, "action": 24}))
        )
        == axes
    )


def test_building_the_model_places_nothing():
    """Names are metadata only: no eager sharding, with or without a mesh set."""
    model = build_model(CFG, {"image": 48})
    kernel = model.blocks[0].attn.qkv.kernel.get_value()
    assert isinstance(kernel.sharding, jax.sharding.SingleDeviceSharding)
    with jax.set_mesh(sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))):
        inside = build_model(CFG, {"image": 48})
    assert inside.blocks[0].attn.qkv.kernel.get_value().sharding.is_fully_replicated
    np.testing.assert_array_equal(
        np.asarray(inside.blocks[0].attn.qkv.kernel.get_value()), np.asarray(kernel)
    )


def test_a_parameter_without_logical_names_is_an_error_naming_it():
    model = build_model(CFG, {"image": 48})
    model.projector.fc2 = nnx.Linear(128, 64, use_bias=False, rngs=nnx.Rngs(0))  # made without names
    with pytest.raises(ValueError, match="'projector/fc2/kernel' has no logical axis names"):
        sharding.param_axes(model)
    model.projector.fc2.kernel = nnx.Param(jnp.zeros((128, 64)), out_sharding=("mlp",), eager_sharding=False)
    with pytest.raises(
        ValueError, match=r"'projector/fc2/kernel' of shape \(128, 64\) has logical axis names"
    ):
        sharding.param_axes(model)
    # an axes tree of another model: the parameter it lacks is named
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=4))
    small = build_model(CFG, {"image": 48})
    params = nnx.to_pure_dict(nnx.state(build_model(CFG, {"image": 48, "audio": 128}), nnx.Param))
    with pytest.raises(
        ValueError, match="'final_layers/audio/adaLN_modulation/bias' has no logical axis names"
    ):
        sharding.param_shardings(params, mesh, sharding.parse_rules(), sharding.param_axes(small))


def test_constrain_batch_splits_activations_over_the_batch_rule():
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=4))
    x = np.ones((8, 4, 64), np.float32)

    def batch_shard(x, context):
        f = jax.jit(lambda x: sharding.constrain_batch(x * 2))  # fresh: rules are read when tracing
        with context:
            return f(x).sharding.shard_shape(x.shape)[0]

    assert batch_shard(x, sharding.use_mesh(mesh, sharding.parse_rules())) == 1  # data x fsdp
    assert batch_shard(x, jax.set_mesh(mesh)) == 1  # without use_mesh: DEFAULT_RULES
    assert batch_shard(x, sharding.use_mesh(mesh, ("batch=data",))) == 4  # data (2) only
    assert batch_shard(x, sharding.use_mesh(mesh, sharding.parse_rules(("batch=fsdp",)))) == 2
    assert batch_shard(x, sharding.use_mesh(mesh, ("batch=",))) == 8  # replicated: no constraint
    assert batch_shard(x[:6], sharding.use_mesh(mesh)) == 6  # 6 does not divide over 8: a no-op
    assert sharding.constrain_batch(x) is x  # no mesh: a no-op
    with sharding.use_mesh(mesh, ("batch=data",)):
        with sharding.use_mesh(mesh, ("batch=fsdp",)):
            assert sharding.active_rules()["batch"] == ("fsdp",)
        assert sharding.active_rules()["batch"] == ("data",)
    assert sharding.active_rules() == sharding.parse_rules()

    # a transformer block ends on constrain_batch: its output follows the rule
    from selfflow.layers import Block

    graphdef, state = nnx.split(Block(64, 4, 4.0, nnx.Rngs(0)))

    def block_out(rules):
        f = jax.jit(lambda s, x, c: nnx.merge(graphdef, s)(x, c, None))
        with sharding.use_mesh(mesh, rules):
            out = f(state, x, x)
        return out.sharding.shard_shape(out.shape)

    assert block_out(("batch=data",)) == (4, 4, 64)
    assert block_out(None) == (1, 4, 64)


def _state(cfg=CFG):
    task = Task(cfg)
    model = build_model(cfg, task.token_dims)
    return task, model, init_state(cfg, model, make_optimizer(cfg.optim))


def test_parameters_optimizer_state_and_teacher_are_really_split():
    _, model, state = _state()
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    placed = jax.device_put(
        state, sharding.state_shardings(state, mesh, sharding.parse_rules(), sharding.param_axes(model))
    )
    block = placed["params"]["blocks"][0]
    assert block["attn"]["qkv"]["kernel"].sharding.shard_shape((64, 192)) == (
        32,
        96,
    )  # embed/fsdp, heads/tensor
    assert block["attn"]["proj"]["kernel"].sharding.shard_shape((64, 64)) == (32, 32)
    assert block["mlp"]["fc2"]["kernel"].sharding.shard_shape((256, 64)) == (128, 32)
    assert placed["params"]["y_embedder"]["embedding"].sharding.shard_shape((11, 64)) == (11, 32)
    assert (
        placed["ema"]["blocks"][0]["attn"]["qkv"]["kernel"].sharding
        == block["attn"]["qkv"]["kernel"].sharding
    )
    mu = placed["opt_state"][1][0].mu["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert mu.sharding == block["mlp"]["fc1"]["kernel"].sharding and mu.sharding.shard_shape(mu.shape) == (
        32,
        128,
    )
    assert placed["step"].sharding.is_fully_replicated
    # a 48-value token projection: fsdp divides the embed dim only
    assert placed["params"]["x_embedders"]["image"]["kernel"].sharding.shard_shape((48, 64)) == (48, 32)


def _loss_and_grads(mesh_cfg, n_devices):
    task, model, state = _state()
    graphdef = nnx.graphdef(model)
    mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:n_devices])
    rules = sharding.parse_rules()
    params = jax.device_put(
        state["params"], sharding.param_shardings(state["params"], mesh, rules, sharding.param_axes(model))
    )
    raw = dict(task.dataset(0, shard=(0, 1))[0])
    raw.pop("skipped")
    batch = sharding.put_batch(raw, sharding.batch_sharding(mesh, rules))

    obj = make_objective(task.cfg, task.mask_ratios, task.loss_weights)

    @jax.jit
    def loss_and_grads(params, raw):
        seg = task.segment_batch(0, raw)
        teacher = nnx.merge(graphdef, params)

        def loss(p):
            return obj.loss(
                student=nnx.merge(graphdef, p),
                teacher=teacher,
                batch=seg,
                layout=task.layouts[0].layout,
                key=jax.random.key(3),
            )[0]

        return jax.value_and_grad(loss)(params)

    with sharding.use_mesh(mesh, rules):
        value, grads = loss_and_grads(params, batch)
    return float(value), jax.tree.map(np.asarray, grads), batch["image"].sharding


def test_loss_and_gradients_agree_across_meshes():
    ref_loss, ref_grads, _ = _loss_and_grads(*MESHES["1 device"])
    for name in ("data 8", "data 4 x fsdp 2", "data 2 x fsdp 2 x tensor 2"):
        loss, grads, batch_sharding = _loss_and_grads(*MESHES[name])
        assert batch_sharding.shard_shape((8, 16, 16, 3))[0] < 8, name  # the batch is split
        assert loss == pytest.approx(ref_loss, rel=1e-5), name
        for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref_grads)):
            scale = float(np.abs(r).max()) or 1.0
            np.testing.assert_allclose(
                g, r, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{name}: {sharding.param_path(path)}"
            )


def test_fsdp_holds_less_state_per_device_than_data_parallel():
    import dataclasses

    from selfflow.compile_check import compile_report

    data8 = compile_report(dataclasses.replace(CFG, mesh=MeshConfig(data=8)))["layouts"]["image"]
    fsdp8 = compile_report(dataclasses.replace(CFG, mesh=MeshConfig(data=1, fsdp=8)))["layouts"]["image"]
    # arguments = the train state (+ batch): fsdp splits the parameters, AdamW moments and EMA
    assert fsdp8["arguments"] < 0.3 * data8["arguments"]


def test_compile_reports_memory_per_device_and_rejects_bad_meshes_before_compiling(tmp_path):
    import contextlib
    import io
    import re

    from selfflow import cli

    experiment = tmp_path / "exp.py"
    experiment.write_text(
        "from selfflow.config import *\n"
        "CONFIG = Config(model=ModelConfig(preset='tiny', depth=2, hidden_size=64, num_heads=4, patch_size=4),"
        " objective=ObjectiveConfig(student_layer=1, teacher_layer=2), data=DataConfig(image_size=16),"
        " train=TrainConfig(batch_size=8))\n"
    )

    def run(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["compile", str(experiment), *argv])
        return code, out.getvalue(), err.getvalue()

    code, out, err = run("--mesh", "data=2,fsdp=2,tensor=2", "--devices", "8")
    assert code == 0, err
    assert "mesh data=2 x fsdp=2 x tensor=2 (8 cpu devices)" in out
    assert re.search(r"peak_gib_per_device=\d+\.\d\d$", out.strip())
    code, _, err = run("--mesh", "data=3")
    assert code == 2 and "needs 3 devices, which does not divide the 8 available" in err
    code, _, err = run("--mesh", "data=8", "--set", "train.batch_size=12")
    assert code == 2 and "batch size 12 is not divisible by the 8 devices" in err


def test_checkpoint_written_on_8_devices_resumes_on_4_then_on_1(tmp_path):
    """8 -> 4 -> 1 devices: each resume restores the checkpoint onto the new mesh, and the losses
    of the continued steps equal those of an uninterrupted run on 8 devices."""
    import dataclasses

    from selfflow.config import SampleConfig
    from selfflow.metrics_writer import read_metrics
    from selfflow.train import train

    def cfg(mesh, steps):
        return dataclasses.replace(
            CFG,
            mesh=mesh,
            sample=SampleConfig(steps=2, per_class=1),
            train=TrainConfig(batch_size=8, steps=steps, checkpoint_every=1, log_every=1),
        )

    def losses(run_dir):
        return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}

    eight, four, one = MeshConfig(data=2, fsdp=4), MeshConfig(data=1, fsdp=4), MeshConfig(data=1)
    straight = train(cfg(eight, 4), tmp_path / "straight", progress=False, write_samples=False)
    run = tmp_path / "moved"
    train(cfg(eight, 2), run, progress=False, write_samples=False)
    on_four = train(cfg(four, 3), run, progress=False, write_samples=False)
    assert on_four.state["params"]["blocks"][0]["mlp"]["fc1"]["kernel"].sharding.mesh.size == 4
    on_one = train(cfg(one, 4), run, progress=False, write_samples=False)
    assert len(on_one.state["params"]["blocks"][0]["mlp"]["fc1"]["kernel"].sharding.device_set) == 1
    expected, got = losses(tmp_path / "straight"), losses(run)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step
    for a, b in zip(jax.tree.leaves(straight.state["params"]), jax.tree.leaves(on_one.state["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_joined_by_jax_distributed_train_like_one(tmp_path):
    """Two `selfflow train` processes (2 CPU devices each) joined by jax.distributed: each loads
    its half of every batch, and the logged losses equal a one-process run on 4 devices fed the
    same global batches (host 0's half first)."""
    import dataclasses
    import os
    import subprocess
    import sys

    from selfflow.config import SampleConfig
    from selfflow.metrics_writer import read_metrics
    from selfflow.train import train

    cfg = dataclasses.replace(
        CFG,
        sample=SampleConfig(steps=2, per_class=1),
        train=TrainConfig(batch_size=8, steps=3, checkpoint_every=3, log_every=1),
    )
    experiment = tmp_path / "exp.py"
    experiment.write_text(f"from selfflow.config import *\nCONFIG = {cfg!r}\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "selfflow.cli",
                "train",
                str(experiment),
                "--run-dir",
                str(tmp_path / "two"),
                "--no-progress",
                "--set",
                f"mesh.coordinator_address=localhost:{port}",
                "--set",
                "mesh.num_processes=2",
                "--set",
                f"mesh.process_id={i}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    two = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl")}

    task = Task(cfg)
    halves = [task.dataset(0, shard=(h, 2)) for h in range(2)]

    class GlobalBatches:
        def __getitem__(self, n):
            parts = [dict(h[n]) for h in halves]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    train(
        dataclasses.replace(cfg, mesh=MeshConfig(data=4)),
        tmp_path / "one",
        dataset=GlobalBatches(),
        progress=False,
        write_samples=False,
    )  # the first 4 of the 8 simulated devices
    one = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "one" / "metrics.jsonl")}
    assert sorted(two) == [1, 2, 3]
    for step in two:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step


def test_config_validation_names_a_bad_mesh():
    from selfflow.config import apply_overrides, validate

    with pytest.raises(ConfigError, match="'embed=model'"):
        validate(apply_overrides(Config(), ["mesh.rules=('embed=model',)"]))
    with pytest.raises(ConfigError, match="at most one may be -1"):
        validate(apply_overrides(Config(), ["mesh.fsdp=-1"]))
