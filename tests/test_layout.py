"""Layouts: segments and roles, per-modality masks, clean condition tokens, the layout schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from selfflow import objective
from selfflow.config import Config, ModelConfig, ObjectiveConfig
from selfflow.layout import CLEAN_INDEX, Layout, Segment, layout_schedule
from selfflow.model import ModelOutput, SelfFlowTransformer
from selfflow.objectives import make_objective

ROBOT = Layout("robotics", (Segment("image", 4, "condition"), Segment("video", 8), Segment("action", 6)))
RATIOS = {"image": 0.25, "video": 0.25, "action": 0.5}
DIMS = {"image": 4, "video": 8, "action": 2}


def test_layout_geometry():
    assert ROBOT.num_tokens == 18 and ROBOT.modalities == ("image", "video", "action")
    assert [(s.start, s.stop) for s in ROBOT.slices()] == [(0, 4), (4, 12), (12, 18)]
    np.testing.assert_array_equal(ROBOT.generate_mask(), [False] * 4 + [True] * 14)
    with pytest.raises(ValueError, match="role='clean'"):
        Segment("image", 4, "clean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no 'generate' segment"):
        Layout("x", (Segment("image", 4, "condition"),))


def test_masks_apply_each_modality_ratio_to_its_generate_tokens_only():
    student, teacher, mask = objective.layout_timesteps(
        jax.random.key(0), 500, ROBOT, ObjectiveConfig(), RATIOS, dual=True
    )
    mask, index = np.asarray(mask), np.asarray(student.index)
    assert not mask[:, :4].any()  # condition: never masked
    assert np.all(mask[:, 4:12].sum(1) == 2)  # video: round(0.25 · 8)
    assert np.all(mask[:, 12:].sum(1) == 3)  # action: round(0.5 · 6)
    assert np.all(index[:, :4] == CLEAN_INDEX)
    tau, t, s = (
        np.asarray(student.dense()),
        np.asarray(student.values[:, 0]),
        np.asarray(student.values[:, 1]),
    )
    assert np.all(tau[:, :4] == 0.0)
    np.testing.assert_array_equal(tau[:, 4:], np.where(mask[:, 4:], s[:, None], t[:, None]))
    tt = np.asarray(teacher.dense())
    assert np.all(tt[:, :4] == 0.0)
    np.testing.assert_array_equal(tt[:, 4:], np.broadcast_to(np.minimum(t, s)[:, None], (500, 14)))


def _model():
    model = SelfFlowTransformer(
        depth=2,
        hidden_size=16,
        num_heads=2,
        mlp_ratio=2.0,
        num_classes=10,
        token_dims=DIMS,
        positions="rope",
        rngs=nnx.Rngs(0),
    )
    state = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: 0.2 * jax.random.normal(next(keys), x.shape), state))
    return model


def _batch(b=3):
    ks = jax.random.split(jax.random.key(2), 3)
    tokens = tuple(
        jax.random.normal(k, (b, seg.num_tokens, DIMS[seg.modality])) for k, seg in zip(ks, ROBOT.segments)
    )
    positions = jnp.stack(
        [
            jnp.arange(ROBOT.num_tokens, dtype=jnp.float32),
            jnp.zeros(ROBOT.num_tokens),
            jnp.zeros(ROBOT.num_tokens),
        ],
        1,
    )
    return objective.SegmentBatch(tokens, jnp.arange(b) % 3, positions)


CFG = Config(model=ModelConfig(depth=2), objective=ObjectiveConfig(student_layer=1, teacher_layer=2))


def _loss(student, teacher, batch, key, loss_weights=None):
    obj = make_objective(CFG, RATIOS, loss_weights or {})
    return obj.loss(student=student, teacher=teacher, batch=batch, layout=ROBOT, key=key)


def test_model_returns_one_velocity_per_segment():
    model, batch = _model(), _batch()
    out = model(batch.tokens, jnp.full((3,), 0.5), batch.labels, batch.positions, modalities=ROBOT.modalities)
    assert isinstance(out, ModelOutput) and out.hidden is None
    assert [o.shape for o in out.velocity] == [(3, 4, 4), (3, 8, 8), (3, 6, 2)]
    with_hidden = model(
        batch.tokens,
        jnp.full((3,), 0.5),
        batch.labels,
        batch.positions,
        modalities=ROBOT.modalities,
        hidden_layer=1,
    )
    assert with_hidden.hidden.shape == (3, ROBOT.num_tokens, 16)


def test_condition_tokens_are_clean_inputs_and_carry_no_loss():
    model, batch = _model(), _batch()
    graphdef, params = nnx.split(model, nnx.Param)

    seen = []
    original = SelfFlowTransformer.__call__

    def spy(self, tokens, *args, **kwargs):
        seen.append(tokens)
        return original(self, tokens, *args, **kwargs)

    def loss(p):
        m = nnx.merge(graphdef, p)
        return _loss(m, m, batch, jax.random.key(3))[0]

    SelfFlowTransformer.__call__ = spy
    try:
        grads = jax.grad(loss)(params)
    finally:
        SelfFlowTransformer.__call__ = original
    # the image segment (condition) reaches the student exactly as given
    np.testing.assert_array_equal(np.asarray(seen[0][0]), np.asarray(batch.tokens[0]))
    # its output head gets no gradient: no loss on condition tokens
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["final_layers"]["image"]))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["final_layers"]["action"]))


def test_per_modality_loss_weights_and_metrics():
    model, batch = _model(), _batch()
    key = jax.random.key(4)
    _, m1 = _loss(model, model, batch, key)
    _, m2 = _loss(model, model, batch, key, {"video": 2.0, "action": 0.5})
    assert "fm_loss/image" not in m1  # condition-only modality has no loss
    assert float(m1["fm_loss"]) == pytest.approx(float(m1["fm_loss/video"] + m1["fm_loss/action"]), rel=1e-6)
    assert float(m2["fm_loss"]) == pytest.approx(
        2 * float(m1["fm_loss/video"]) + 0.5 * float(m1["fm_loss/action"]), rel=1e-6
    )
    assert float(m1["rep_loss"]) > 0


def test_layout_schedule_is_a_pure_function_of_seed_and_step_with_the_given_weights():
    weights = [0.57, 0.30, 0.13]
    draws = [layout_schedule(7, n, weights) for n in range(6000)]
    assert draws[1234] == layout_schedule(7, 1234, weights)  # resumable: no hidden state
    assert draws != [layout_schedule(8, n, weights) for n in range(6000)]
    counts = np.bincount(draws, minlength=3)
    assert stats.chisquare(counts, np.asarray(weights) * 6000).pvalue > 1e-3
    assert layout_schedule(0, 5, [0, 1, 0]) == 1
    with pytest.raises(ValueError, match="non-negative"):
        layout_schedule(0, 0, [0.5, -1])
