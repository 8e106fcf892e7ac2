"""The MFU numerator: the documented FLOP formulas equal the matmuls JAX traces for the step."""

import jax
import pytest
from flax import nnx

from selfflow import flops
from selfflow.config import load_config_file
from selfflow.model import FactoredTimesteps, build_model
from selfflow.objective import inference_timesteps
from selfflow.run import init_state, make_optimizer
from selfflow.step import make_train_step
from selfflow.tasks import Task

TINY = ["model.depth=3", "model.hidden_size=32", "model.num_heads=2"]
BATCH = {"quickstart": ["train.batch_size=4"], "world_paired": []}  # layouts carry their own batch sizes


def _traced_step_flops(cfg, task, index):
    model = build_model(cfg, task.token_dims)
    tx = make_optimizer(cfg.optim)
    step = make_train_step(cfg, nnx.graphdef(model), tx, task)
    raw = dict(task.dataset(index)[0])
    raw.pop("skipped")
    return flops.traced_matmul_flops(
        lambda s, r: step.__wrapped__(s, r, index), init_state(cfg, model, tx), raw
    )


@pytest.mark.parametrize("kind", ["flow_matching", "dts", "self_flow"])
@pytest.mark.parametrize("config,layout", [("quickstart", "image"), ("world_paired", "robotics")])
def test_train_step_formula_matches_traced_matmuls(kind, config, layout):
    cfg = load_config_file(f"experiments/{config}.py", [*TINY, *BATCH[config], f"objective.kind={kind}"])
    task = Task(cfg)
    index = task.names.index(layout)
    lt = task.layouts[index]
    expected = flops.train_step_flops(cfg, lt.layout, task.token_dims, lt.batch_size)
    assert _traced_step_flops(cfg, task, index) == expected


def test_teacher_and_projector_are_the_self_flow_surcharge():
    fm = load_config_file(
        "experiments/quickstart.py", [*TINY, *BATCH["quickstart"], "objective.kind=flow_matching"]
    )
    sf = load_config_file(
        "experiments/quickstart.py",
        [*TINY, *BATCH["quickstart"], "objective.kind=self_flow", "objective.teacher_layer=2"],
    )
    task = Task(sf)
    layout, dims, b = task.layouts[0].layout, task.token_dims, task.layouts[0].batch_size
    d, n = 32, layout.num_tokens
    teacher = sum(flops.forward_parts(sf, layout, dims, blocks=2, final=False).values())
    projector = 3 * n * 8 * d * d
    assert flops.train_step_flops(sf, layout, dims, b) - flops.train_step_flops(fm, layout, dims, b) == b * (
        teacher + projector
    )


def test_sampling_formula_matches_one_traced_model_call():
    cfg = load_config_file("experiments/quickstart.py", [*TINY, *BATCH["quickstart"]])
    task = Task(cfg)
    lt = task.layouts[0]
    model = build_model(cfg, task.token_dims)
    b, n = 5, lt.layout.num_tokens
    x = jax.numpy.zeros((b, n, task.token_dims["image"]))
    times = inference_timesteps(lt.layout, jax.numpy.full((b,), 0.5))
    traced = flops.traced_matmul_flops(
        lambda x, t: model((x,), t, jax.numpy.zeros((b,), int), lt.positions, modalities=("image",)).velocity,
        x,
        times,
    )
    assert isinstance(times, FactoredTimesteps)
    assert traced == flops.sampling_flops(cfg, lt.layout, task.token_dims, b, evaluations=1, cfg_scale=1.0)
    assert flops.sampling_flops(cfg, lt.layout, task.token_dims, b, 10, 2.0) == 20 * traced
