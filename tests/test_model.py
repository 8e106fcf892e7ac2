"""The transformer: per-token timesteps, truncated forward, positions, presets, the train step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modalities import image as image_modality
from selfflow import layers, objective
from selfflow.config import Config, DataConfig, ModelConfig, ObjectiveConfig, OptimConfig
from selfflow.model import SelfFlowTransformer, build_model, count_params
from selfflow.objectives import make_objective
from selfflow.run import init_state, make_optimizer
from selfflow.step import make_train_step
from selfflow.tasks import Task

B, GRID, PATCH, CH = 3, 4, 2, 3
N, TOKEN_DIM = GRID * GRID, CH * PATCH * PATCH
POS = jnp.asarray(image_modality.positions(GRID * PATCH, GRID * PATCH, PATCH))
IMAGE = ("image",)


def _model(positions="sincos", depth=4, seed=0, dtype=jnp.float32):
    model = SelfFlowTransformer(
        depth=depth,
        hidden_size=32,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=10,
        token_dims={"image": TOKEN_DIM},
        positions=positions,
        dtype=dtype,
        rngs=nnx.Rngs(seed),
    )
    # adaLN-Zero makes a fresh model output 0; give every weight a non-zero value.
    state = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: 0.3 * jax.random.normal(next(keys), x.shape), state))
    return model


def _velocity(model, x, t, y, positions=POS):
    """The one-segment (image) velocity (B, N, C)."""
    return model((x,), t, y, positions, modalities=IMAGE).velocity[0]


def _hidden(model, x, t, y, layer):
    return model.forward_until((x,), t, y, POS, layer=layer, modalities=IMAGE)


def _inputs(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k1, (B, N, TOKEN_DIM))
    t = jax.random.uniform(k2, (B,))
    return x, t, jnp.array([1, 5, 10])  # 10 = null class


def test_scalar_timestep_equals_same_value_per_token():
    model = _model()
    x, t, y = _inputs()
    out_scalar = _velocity(model, x, t, y)
    out_tokens = _velocity(model, x, jnp.broadcast_to(t[:, None], (B, N)), y)
    np.testing.assert_array_equal(np.asarray(out_scalar), np.asarray(out_tokens))


def test_each_token_is_conditioned_on_its_own_timestep():
    model = _model()
    x, t, y = _inputs()
    tau = jnp.broadcast_to(t[:, None], (B, N))
    out = np.asarray(_velocity(model, x, tau, y, POS))
    changed = np.asarray(_velocity(model, x, tau.at[:, 5].set(0.99), y, POS))
    assert np.abs(changed - out).max() > 1e-3
    # token 5 changes most: its own modulation changed, the others only through attention
    per_token = np.abs(changed - out).mean(axis=(0, 2))
    assert per_token.argmax() == 5


def test_forward_until_equals_hidden_state_of_full_forward():
    model = _model(depth=5)
    x, t, y = _inputs()
    for k in (1, 3, 5):
        out = model((x,), t, y, POS, modalities=IMAGE, hidden_layer=k)
        np.testing.assert_array_equal(np.asarray(_hidden(model, x, t, y, k)), np.asarray(out.hidden))
    assert model((x,), t, y, POS, modalities=IMAGE).hidden is None  # only when asked for


def test_forward_until_never_runs_later_blocks():
    model = _model(depth=4)
    x, t, y = _inputs()
    expected = _hidden(model, x, t, y, 2)
    for block in model.blocks[2:]:  # poison blocks 3 and 4
        nnx.update(block, jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), nnx.state(block, nnx.Param)))
    got = _hidden(model, x, t, y, 2)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    assert np.isnan(np.asarray(_velocity(model, x, t, y, POS))).all()


def test_bad_layer_index_is_rejected():
    model = _model(depth=4)
    x, t, y = _inputs()
    with pytest.raises(ValueError, match=r"layer=5.*\[1, 4\]"):
        _hidden(model, x, t, y, 5)


def test_sincos_table_matches_dit_reference():
    dim, grid = 16, 3

    def ref_1d(d, pos):  # MAE/DiT get_1d_sincos_pos_embed_from_grid
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    ref = np.concatenate([ref_1d(dim // 2, gw), ref_1d(dim // 2, gh)], axis=1)  # DiT: grid[0] = w
    got = layers.sincos_2d(jnp.asarray(image_modality.positions(grid, grid, 1)), dim)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    head_dim = 12
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 2, 1, head_dim))
    pos = jnp.array([[0.0, 1.0, 2.0], [3.0, 0.0, 5.0]])

    def score(p):
        angles = layers.rope_angles(p, head_dim, 10_000.0)
        rq, rk = layers.apply_rope(q, angles), layers.apply_rope(k, angles)
        return float(jnp.sum(rq[0, 0] * rk[0, 1]))

    base = score(pos)
    assert score(pos + jnp.array([2.0, -1.0, 7.0])) == pytest.approx(base, rel=1e-4, abs=1e-5)
    assert abs(score(pos.at[1, 2].add(1.0)) - base) > 1e-3  # but absolute changes matter
    assert layers.rope_axis_dims(72) == (24, 24, 24)


def test_rope_model_uses_positions():
    model = _model(positions="rope")
    x, t, y = _inputs()
    a = np.asarray(_velocity(model, x, t, y, POS))
    b = np.asarray(_velocity(model, x, t, y, POS.at[:, 2].set(POS[::-1, 2])))
    assert np.isfinite(a).all() and np.abs(a - b).max() > 1e-4


def test_bfloat16_compute_tracks_float32():
    x, t, y = _inputs()
    ref = np.asarray(_velocity(_model(), x, t, y))
    bf = np.asarray(_velocity(_model(dtype=jnp.bfloat16), x, t, y))
    assert bf.dtype == np.float32  # outputs, norms and embeddings stay float32
    assert np.abs(bf - ref).max() / np.abs(ref).max() < 0.1


def test_sit_xl2_preset_has_the_published_size():
    # SiT-XL/2 (SD-VAE latents: 4 channels, patch 2 -> token dim 16, 1000 classes): ≈675 M + 5.3 M projector.
    model = nnx.eval_shape(
        lambda: SelfFlowTransformer(
            depth=28,
            hidden_size=1152,
            num_heads=16,
            mlp_ratio=4.0,
            num_classes=1000,
            token_dims={"image": 16},
            rngs=nnx.Rngs(0),
        )
    )
    total = count_params(model)
    projector = 2 * 1152 * 2304 + 2304 + 1152
    assert math.isclose(total - projector, 675e6, rel_tol=0.005), total


def test_train_step_changes_teacher_only_through_ema_and_no_gradient_reaches_it():
    cfg = Config(
        model=ModelConfig(depth=2, hidden_size=32, num_heads=2, patch_size=4),
        data=DataConfig(image_size=8),
        objective=ObjectiveConfig(student_layer=1, teacher_layer=2, ema_decay=0.9),
        optim=OptimConfig(learning_rate=1e-2),
    )
    full_task = Task(cfg)
    model = build_model(cfg, full_task.token_dims)
    graphdef = nnx.graphdef(model)
    tx = make_optimizer(cfg.optim)
    state = init_state(cfg, model, tx)
    # the teacher starts as an exact copy
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(state["ema"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    images = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    labels = jnp.arange(4)
    ema_before = jax.tree.map(np.asarray, state["ema"])

    # gradient of the loss w.r.t. the teacher's weights is exactly zero (stop-gradient)
    batch = full_task.segment_batch(0, {"image": images, "label": labels})
    obj = make_objective(full_task.cfg, full_task.mask_ratios, full_task.loss_weights)

    def loss_of_teacher(ema):
        student = nnx.merge(graphdef, state["params"])
        return obj.loss(
            student=student,
            teacher=nnx.merge(graphdef, ema),
            batch=batch,
            layout=full_task.layouts[0].layout,
            key=jax.random.key(1),
        )[0]

    teacher_grads = jax.grad(loss_of_teacher)(state["ema"])
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(teacher_grads))

    step = make_train_step(cfg, graphdef, tx, full_task)
    new_state, metrics = step(state, {"image": images, "label": labels}, 0)
    assert float(metrics["rep_loss"]) > 0
    expected = objective.ema_update(ema_before, new_state["params"], 0.9)
    moved = 0
    for want, got, old in zip(
        jax.tree.leaves(expected), jax.tree.leaves(new_state["ema"]), jax.tree.leaves(ema_before)
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
        moved += int(not np.array_equal(np.asarray(got), old))
    assert moved > 0


def test_factored_timesteps_match_per_token_timesteps():
    from selfflow.model import FactoredTimesteps

    model = _model()
    x, t, y = _inputs()
    s = jnp.array([0.9, 0.05, 0.5])
    mask = jax.random.bernoulli(jax.random.key(3), 0.3, (B, N))
    dense = jnp.where(mask, s[:, None], t[:, None])
    factored = FactoredTimesteps(jnp.stack([t, s], 1), mask.astype(jnp.int32))
    ref = np.asarray(_velocity(model, x, dense, y, POS))
    # equal up to rounding, which this random-init model amplifies (|v| up to 20): measured max |Δ| 0
    # on JAX 0.10.2, 4.5e-3 on 0.12.1, where jit vs eager of one path already differ by 1.8e-4; a
    # token given the other timestep moves its velocity by O(1)
    np.testing.assert_allclose(np.asarray(_velocity(model, x, factored, y, POS)), ref, rtol=1e-5, atol=1e-2)
    one = np.asarray(_velocity(model, x, FactoredTimesteps.per_sample(t, N), y, POS))
    np.testing.assert_allclose(one, np.asarray(_velocity(model, x, t, y, POS)), rtol=1e-5, atol=1e-2)


def _loss_and_grads(cfg_overrides):
    cfg = Config(
        model=ModelConfig(depth=3, hidden_size=32, num_heads=2, patch_size=2, **cfg_overrides),
        data=DataConfig(image_size=8),
        objective=ObjectiveConfig(student_layer=1, teacher_layer=2),
    )
    task = Task(cfg)
    model = build_model(cfg, task.token_dims)
    state = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: 0.2 * jax.random.normal(next(keys), x.shape), state))
    graphdef, params = nnx.split(model, nnx.Param)
    raw = dict(task.dataset(0)[0])
    raw.pop("skipped")
    batch, layout = task.segment_batch(0, raw), task.layouts[0].layout
    obj = make_objective(task.cfg, task.mask_ratios, task.loss_weights)

    def loss(p):
        m = nnx.merge(graphdef, p)
        return obj.loss(student=m, teacher=m, batch=batch, layout=layout, key=jax.random.key(1))[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    remats = sum(e.primitive.name == "remat2" for e in jax.make_jaxpr(loss)(params).eqns)
    assert remats == (task.cfg.depth + task.cfg.teacher_layer if cfg_overrides.get("remat") else 0)
    return float(value), jax.tree.leaves(grads)


@pytest.mark.parametrize("knob", [{"conditioning": "per_token"}, {"remat": True}])
def test_speed_knobs_do_not_change_the_loss_or_its_gradient(knob):
    ref_loss, ref_grads = _loss_and_grads({})
    loss, grads = _loss_and_grads(knob)
    assert abs(loss - ref_loss) < 1e-5 * abs(ref_loss)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6)
