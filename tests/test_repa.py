"""REPA (objective.kind="repa"): flow matching + γ · L_align against a frozen encoder's features of
the clean images (selfflow.objectives.REPA, selfflow.encoders.registry).

The loss is checked against a NumPy reference (features computed from the clean tokens without
detokenize, the hidden state from ``forward_until``, the projector in NumPy); the encoder gets no
gradient and is not in the train state; γ = 0 is flow matching; every configuration error is one
line before anything compiles; and a 2-step run of the tiny image config with the eval classifier
as encoder logs a live alignment. One tiny classifier (5 steps) is trained per module into a
temporary cache; the DINOv2 path uses a random 2-block network in the checkpoint layout.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import modalities
from selfflow import sharding
from selfflow.config import ConfigError, LayoutConfig, resolve, validate
from selfflow.encoders import registry
from selfflow.encoders.classifier import classifier_encoder, conv_feature_map
from selfflow.eval.classifier import classifier_entry
from selfflow.layout import single
from selfflow.metrics_writer import read_metrics
from selfflow.model import build_model, count_params
from selfflow.objective import SegmentBatch, noised_segments
from selfflow.objectives import make_objective
from selfflow.run import init_state, make_optimizer
from selfflow.train import train

from helpers_config import tiny_image_config, tiny_world_config

PATCH, SIZE, CHANNELS, BATCH = 4, 16, 3, 4
GRID = SIZE // PATCH  # 4 x 4 image tokens
FIXED_DIM = 8
IMAGE = modalities.get("image")
SPEC = IMAGE.Spec(SIZE, SIZE, CHANNELS, PATCH)


class PatchMean(nnx.Module):
    """A user encoder: the mean of each 4x4 pixel patch, times a fixed matrix, through tanh:
    (B, 16, 16, 3) -> (B, 4, 4, 8), already on the token grid (the resize is the identity)."""

    def __init__(self):
        w = np.random.default_rng(3).normal(size=(CHANNELS, FIXED_DIM)).astype(np.float32)
        self.w = nnx.Param(jnp.asarray(w))

    def __call__(self, images):
        b, h, w, c = images.shape
        pooled = images.reshape(b, h // PATCH, PATCH, w // PATCH, PATCH, c).mean(axis=(2, 4))
        return jnp.tanh(pooled @ self.w[...])


registry.register_encoder("patch_mean", lambda arg: PatchMean())


def repa_config(encoder: str, **objective):
    fields = dict(kind="repa", encoder=encoder, encoder_dim=FIXED_DIM, projector_dim=16, gamma=0.5)
    return tiny_image_config(objective={**fields, **objective})


def fixed_batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (BATCH, SIZE, SIZE, CHANNELS)).astype(np.float32)
    labels = jnp.asarray(rng.integers(0, 10, BATCH), jnp.int32)
    return images, SegmentBatch((IMAGE.tokenize(jnp.asarray(images), SPEC),), labels, IMAGE.positions(SPEC))


def objective_of(cfg):
    return make_objective(resolve(cfg), {"image": 0.25}, {"image": 1.0})


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """The cache entry of a 5-step eval classifier of the tiny config's 16 px shapes."""
    cache = tmp_path_factory.mktemp("repa_eval_cache")
    return classifier_entry(resolve(tiny_image_config()), cache, steps=5, batch_size=16, heldout_examples=64)


# ---------------------------------------------------------------------------- the loss


def test_loss_matches_a_numpy_reference():
    """loss = mean (v − (ε − x0))² + γ · (−mean cos(h_φ(h_1), y*)), everything after the draw in
    NumPy: y* from the clean tokens' patch means (no detokenize), h_1 from forward_until (not the
    hidden output of the forward pass), h_φ from the projector's arrays."""
    cfg = repa_config("patch_mean:", gamma=0.7)
    model, obj = build_model(resolve(cfg), {"image": 48}), objective_of(cfg)
    images, batch = fixed_batch()
    layout, key = single("image", GRID * GRID), jax.random.key(5)
    loss, metrics = jax.jit(
        lambda k: obj.loss(student=model, teacher=None, batch=batch, layout=layout, key=k)
    )(key)

    @jax.jit
    def reference_inputs(k):
        draw = obj.draw(k, batch, layout)  # FlowMatching's draw (tests/test_objective.py)
        inputs = noised_segments(draw.x0, draw.noise, draw.student_times.dense(), layout)
        args = (inputs, draw.student_times, draw.labels, batch.positions)
        v = model(*args, modalities=("image",)).velocity[0]
        return draw, v, model.forward_until(*args, layer=1, modalities=("image",))

    draw, v, h = reference_inputs(key)
    v, h = np.asarray(v, np.float64), np.asarray(h, np.float64)
    x0, eps = np.asarray(draw.x0[0], np.float64), np.asarray(draw.noise[0], np.float64)
    fm = np.mean((v - (eps - x0)) ** 2)

    tokens = x0.reshape(BATCH, GRID * GRID, CHANNELS, PATCH, PATCH)  # (c, p1, p2) per token
    target = np.tanh(tokens.mean(axis=(3, 4)) @ np.asarray(PatchMean().w[...], np.float64))
    p = nnx.to_pure_dict(nnx.state(model, nnx.Param))["repa_projector"]
    silu = lambda x: x / (1.0 + np.exp(-x))  # noqa: E731
    z = h
    for i, name in enumerate(("fc1", "fc2", "fc3")):
        z = z @ np.asarray(p[name]["kernel"], np.float64) + np.asarray(p[name]["bias"], np.float64)
        z = silu(z) if i < 2 else z
    cos = np.sum(z * target, -1) / (np.linalg.norm(z, axis=-1) * np.linalg.norm(target, axis=-1))
    align = -np.mean(cos)

    np.testing.assert_allclose(float(metrics["fm_loss"]), fm, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["rep_loss"]), align, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["cos_sim"]), -align, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), fm + 0.7 * align, rtol=1e-5)
    assert float(metrics["loss"]) == float(loss) and "fm_loss/image" in metrics
    assert abs(np.mean(cos)) < 0.99  # a real alignment, not a constant


def test_gamma_zero_is_flow_matching_on_the_same_key():
    """Same seed: the REPA model is the flow-matching model plus its projector (built last, so the
    shared weights are equal), and with γ = 0 the loss is flow matching's, bit for bit."""
    fm_cfg = tiny_image_config(objective=dict(kind="flow_matching"))
    repa_cfg = repa_config("patch_mean:", gamma=0.0)
    fm_model, repa_model = (
        build_model(resolve(fm_cfg), {"image": 48}),
        build_model(resolve(repa_cfg), {"image": 48}),
    )
    fm_params = nnx.to_pure_dict(nnx.state(fm_model, nnx.Param))
    repa_params = nnx.to_pure_dict(nnx.state(repa_model, nnx.Param))
    assert set(repa_params) - set(fm_params) == {"repa_projector"}
    jax.tree.map(np.testing.assert_array_equal, fm_params, {k: repa_params[k] for k in fm_params})

    _, batch = fixed_batch(1)
    layout, key = single("image", GRID * GRID), jax.random.key(11)
    fm_loss, _ = objective_of(fm_cfg).loss(
        student=fm_model, teacher=None, batch=batch, layout=layout, key=key
    )
    loss, metrics = objective_of(repa_cfg).loss(
        student=repa_model, teacher=None, batch=batch, layout=layout, key=key
    )
    assert float(loss) == float(fm_loss) == float(metrics["fm_loss"])
    assert float(metrics["rep_loss"]) != 0.0  # the alignment is still measured


def test_no_gradient_reaches_the_encoder(classifier):
    """d loss / d encoder weights is exactly zero while the projector's is not, and the train state
    holds the model's parameters only (the REPA projector included, the classifier not)."""
    cfg = repa_config(f"classifier:{classifier}", encoder_dim=128)
    model, obj = build_model(resolve(cfg), {"image": 48}), objective_of(cfg)
    _, batch = fixed_batch(2)
    layout, key = single("image", GRID * GRID), jax.random.key(3)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_of(model_params, encoder_params):
        student = nnx.merge(graphdef, model_params)
        return obj.loss(
            student=student, teacher=None, batch=batch, layout=layout, key=key, encoder_params=encoder_params
        )[0]

    g_model, g_encoder = jax.jit(jax.grad(loss_of, argnums=(0, 1)))(params, obj.encoder.params)
    leaves = jax.tree.leaves(g_encoder)
    assert len(leaves) == 12 and all(
        np.all(np.asarray(g) == 0.0) for g in leaves
    )  # 4 convolutions, feature and head layers
    projector = jax.tree.leaves(nnx.to_pure_dict(g_model)["repa_projector"])
    assert all(np.any(np.asarray(g) != 0.0) for g in projector)

    state = init_state(resolve(cfg), model, make_optimizer(resolve(cfg).optim))
    names = {registry_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
    assert not any(n.startswith(("convs", "feature", "head")) for n in names)
    assert any(n.startswith("repa_projector.fc3") for n in names)
    assert sum(x.size for x in jax.tree.leaves(state["params"])) == count_params(model)
    axes = sharding.param_axes(model)["repa_projector"]  # logical axes like every other layer
    assert axes["fc1"]["kernel"] == ("embed", "mlp") and axes["fc3"]["kernel"] == (None, "feature")


def registry_path(path) -> str:
    return ".".join(str(getattr(k, "key", k)) for k in path)


def test_classifier_features_are_its_last_convolution_on_the_token_grid(classifier):
    """The classifier encoder's map is the convolutions' output before the classifier's pool (its
    pooled features are the classifier's own), 2 x 2 x 128 for 16 px images, enlarged bilinearly
    (half-pixel centres) to the 4 x 4 token grid."""
    from selfflow.eval.classifier import SmallCNN

    enc = classifier_encoder(classifier)
    assert registry.check_encoder(enc, (SIZE, SIZE, CHANNELS), 128) == (2, 2)
    model = SmallCNN(CHANNELS, 10, rngs=nnx.Rngs(1))
    nnx.update(model, enc.params)
    images = jnp.asarray(fixed_batch(4)[0])
    fmap = conv_feature_map(model, images)
    pooled = nnx.gelu(model.feature(jnp.mean(fmap, axis=(1, 2))))
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(model.features(images)), rtol=1e-6)

    f = np.asarray(fmap, np.float64)
    y = np.asarray(registry.encoder_features(enc, images, (GRID, GRID))).reshape(BATCH, GRID, GRID, 128)
    assert f.shape == (BATCH, 2, 2, 128)
    # 2 -> 4 bilinear: output centres at -0.25, 0.25, 0.75, 1.25 in input pixels, edges clamped
    w = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    want = np.einsum("ih,jw,bhwd->bijd", w, w, f)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_dinov2_encoder_gives_its_patch_tokens_on_the_token_grid(tmp_path):
    """A random 2-block DINOv2 in the checkpoint layout: 16 px images go in at REPA's 224 px, the
    16 x 16 patch tokens come out resized to the 4 x 4 grid, as the DINOv2 port's own
    features_on_grid gives them; a too-narrow encoder_dim names the right one."""
    from safetensors.numpy import save_file

    from selfflow.encoders.dinov2 import Dinov2, Dinov2Arch, checkpoint_tensors

    net = Dinov2(Dinov2Arch(hidden=32, depth=2, heads=2, mlp_hidden=64, pos_grid=4), rngs=nnx.Rngs(0))
    save_file(checkpoint_tensors(net), str(tmp_path / "model.safetensors"))
    config = dict(
        model_type="dinov2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2
    )
    (tmp_path / "config.json").write_text(json.dumps({**config, "image_size": 56, "patch_size": 14}))
    spec = f"dinov2:{tmp_path / 'model.safetensors'}"
    enc = registry.load_encoder(spec)
    assert enc.feature_dim == 32 and registry.check_encoder(enc, (SIZE, SIZE, CHANNELS), 32) == (16, 16)
    assert registry.dinov2_input_size(256, 512) == (224, 448)
    images, batch = fixed_batch(5)
    y = registry.encoder_features(enc, jnp.asarray(images), (GRID, GRID))
    want = net.features_on_grid((jnp.asarray(images) + 1) / 2, (GRID, GRID), size=224)
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)

    cfg = repa_config(spec, encoder_dim=32)
    loss, metrics = objective_of(cfg).loss(
        student=build_model(resolve(cfg), {"image": 48}),
        teacher=None,
        batch=batch,
        layout=single("image", GRID * GRID),
        key=jax.random.key(0),
    )
    assert np.isfinite(float(loss)) and -1.0 <= float(metrics["cos_sim"]) <= 1.0
    with pytest.raises(ConfigError, match=r"objective.encoder=.*gives 32-dim .*objective.encoder_dim=32"):
        objective_of(repa_config(spec, encoder_dim=768))


# ---------------------------------------------------------------------------- errors


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="objective.encoder is empty") as e:
        validate(tiny_image_config(objective=dict(kind="repa")))
    one_line(e)
    with pytest.raises(ConfigError, match="unknown encoder 'clip'") as e:
        validate(repa_config("clip:/x"))
    one_line(e)
    with pytest.raises(ConfigError, match="objective.encoder='patch_mean:' is unused") as e:
        validate(tiny_image_config(objective=dict(kind="flow_matching", encoder="patch_mean:")))
    with pytest.raises(ConfigError, match="objective.student_layer=3: expected a block in"):
        validate(repa_config("patch_mean:", student_layer=3))  # depth 2
    validate(repa_config("patch_mean:", student_layer=2, teacher_layer=None))  # the last block is fine
    with pytest.raises(ConfigError, match="no layout has a generated image segment") as e:
        validate(
            tiny_world_config(
                (LayoutConfig("v", ("image:condition", "video"), 1.0, 2),),
                objective=dict(kind="repa", encoder="patch_mean:", encoder_dim=FIXED_DIM),
            )
        )
    one_line(e)


def test_encoder_file_errors_name_the_key_and_file(tmp_path, classifier):
    for spec in (f"classifier:{tmp_path}/none", f"dinov2:{tmp_path}/none.safetensors"):
        with pytest.raises(ConfigError, match=rf"objective.encoder='{spec}'.*{tmp_path}/none") as e:
            objective_of(repa_config(spec))
        one_line(e)
    weights = classifier / "classifier.safetensors"
    with pytest.raises(ConfigError, match="not a DINOv2 checkpoint") as e:  # a classifier given as DINOv2
        objective_of(repa_config(f"dinov2:{weights}"))
    one_line(e)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "classifier.safetensors").write_bytes(weights.read_bytes())
    with pytest.raises(ConfigError, match="not an eval classifier cache entry: no info.json") as e:
        objective_of(repa_config(f"classifier:{lone}"))
    one_line(e)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "info.json").write_text((classifier / "info.json").read_text())
    (bad / "classifier.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="not a readable safetensors file") as e:
        objective_of(repa_config(f"classifier:{bad}"))
    one_line(e)
    with pytest.raises(ConfigError, match="gives 128-dim features but objective.encoder_dim=8") as e:
        objective_of(repa_config(f"classifier:{classifier}"))
    one_line(e)


@pytest.mark.parametrize(
    "apply, channels, message",
    [
        (lambda p, x: jnp.zeros((x.shape[0], 0, 4, FIXED_DIM)), None, r"expected a feature map .* h, w >= 1"),
        (
            lambda p, x: jnp.zeros((x.shape[0], 16, FIXED_DIM)),
            None,
            r"shape \(1, 16, 8\), expected a feature map",
        ),
        (
            lambda p, x: jnp.zeros((x.shape[0], 2, 2, 5)),
            None,
            "gives 5-dim features but objective.encoder_dim=8",
        ),
        (
            lambda p, x: jnp.zeros((x.shape[0], 2, 2, FIXED_DIM)),
            (4,),
            "takes images of 4 channels .*latents",
        ),
    ],
)
def test_feature_maps_that_cannot_be_targets_are_config_errors(apply, channels, message):
    """Found from shapes (jax.eval_shape) when the step is traced, before XLA compiles anything."""
    registry.register_encoder("odd", lambda arg: registry.Encoder("odd", apply, {}, channels=channels))
    cfg = repa_config("odd:")
    _, batch = fixed_batch()
    with pytest.raises(ConfigError, match=message) as e:
        objective_of(cfg).loss(
            student=build_model(resolve(cfg), {"image": 48}),
            teacher=None,
            batch=batch,
            layout=single("image", GRID * GRID),
            key=jax.random.key(0),
        )
    one_line(e)


# ---------------------------------------------------------------------------- training


def test_two_training_steps_with_the_classifier_encoder(tmp_path, classifier):
    """The tiny image config trains 2 steps with REPA: rep_loss = −cos_sim is finite and cos_sim
    is a measured alignment, not flow matching's constant 1."""
    cfg = repa_config(
        f"classifier:{classifier}",
        encoder_dim=128,
        projector_dim=32,
    )
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=2, log_every=1, checkpoint_every=2)
    )
    result = train(cfg, tmp_path / "run", progress=False, write_samples=False)
    assert result.final_step == 2
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "rep_loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["rep_loss"]) and math.isfinite(r["cos_sim"])
        assert r["cos_sim"] != 1.0 and r["rep_loss"] == pytest.approx(-r["cos_sim"], abs=1e-6)
        assert r["loss"] == pytest.approx(r["fm_loss"] + 0.5 * r["rep_loss"], rel=1e-5)
