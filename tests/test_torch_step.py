"""The PyTorch model and step of the bench compute what our JAX model and step compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from selfflow import objective  # noqa: E402
from selfflow.config import load_config_file  # noqa: E402
from selfflow.layout import single  # noqa: E402
from selfflow.model import FactoredTimesteps, build_model  # noqa: E402
from selfflow.tasks import Task  # noqa: E402
from selfflow.torch_step import TorchSelfFlowStep, random_inputs  # noqa: E402

CFG = load_config_file(
    "experiments/quickstart.py",
    [
        "model.depth=3",
        "model.hidden_size=32",
        "model.num_heads=2",
        "objective.student_layer=1",
        "objective.teacher_layer=2",
        "optim.learning_rate=1e-2",
        "optim.warmup_steps=0",
        "objective.ema_decay=0.5",
    ],
)
IMAGE = ("image",)


def _setup(kind):
    task = Task(CFG)
    model = build_model(CFG, task.token_dims)
    state = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(3), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: 0.2 * jax.random.normal(next(keys), x.shape), state))
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    lt = task.layouts[0]
    step = TorchSelfFlowStep(CFG, kind, params, lt.positions)
    inputs = random_inputs(
        4, lt.layout.num_tokens, task.token_dims["image"], CFG.data.num_classes, 0.25, seed=1
    )
    return model, step, inputs, jnp.asarray(lt.positions)


def _jax(inputs):
    return {k: jnp.asarray(v.numpy()) for k, v in inputs.items()}


def _jax_loss(model, teacher, x, positions):
    """Our objective's pieces with the torch step's explicit randomness."""
    t, s, mask, x0, noise = x["t"], x["s"], x["mask"], x["x0"], x["noise"]
    zero = jnp.zeros_like(t)
    index = mask.astype(jnp.int32)
    tau = jnp.where(mask, s[:, None], t[:, None])[..., None]
    out = model(
        ((1 - tau) * x0 + tau * noise,),
        FactoredTimesteps(jnp.stack([t, s, zero], 1), index),
        x["labels"],
        positions,
        modalities=IMAGE,
        hidden_layer=CFG.student_layer,
    )
    tmin = jnp.minimum(t, s)
    target = teacher.forward_until(
        ((1 - tmin[:, None, None]) * x0 + tmin[:, None, None] * noise,),
        FactoredTimesteps(jnp.stack([tmin, tmin, zero], 1), jnp.zeros_like(index)),
        x["labels"],
        positions,
        layer=CFG.teacher_layer,
        modalities=IMAGE,
    )
    fm = objective.velocity_mse(out.velocity, (x0,), (noise,), single("image", x0.shape[1]))["image"]
    return fm + CFG.objective.gamma * objective.representation_loss(model.project(out.hidden), target)


def _named_torch_grads(step):
    s = step.student
    pairs = {
        ("x_embedders", "image", "kernel"): s.x_embed.weight,
        ("t_embedder", "fc1", "kernel"): s.t_fc1.weight,
        ("projector", "fc2", "kernel"): s.proj2.weight,
        ("y_embedder", "embedding"): s.y_embed.weight,
        ("blocks", 0, "attn", "qkv", "kernel"): s.blocks[0].qkv.weight,
        ("blocks", 1, "adaLN_modulation", "kernel"): s.blocks[1].ada.weight,
        ("final_layers", "image", "linear", "kernel"): s.final.weight,
    }
    return pairs


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def test_velocity_and_features_match_jax():
    model, step, inputs, positions = _setup("self_flow")
    x = _jax(inputs)
    values = jnp.stack([x["t"], x["s"], jnp.zeros_like(x["t"])], 1)
    index = jnp.asarray(np.random.default_rng(0).integers(0, 3, x["mask"].shape), jnp.int32)
    ref_v, ref_h = model(
        (x["x0"],), FactoredTimesteps(values, index), x["labels"], positions, modalities=IMAGE, hidden_layer=2
    )
    (ref_v,) = ref_v
    with torch.no_grad():
        v, h = step.student(
            inputs["x0"],
            torch.from_numpy(np.asarray(values)),
            torch.from_numpy(np.asarray(index)).long(),
            inputs["labels"],
            return_layer=2,
        )
    for got, ref in ((v, ref_v), (h, ref_h)):
        err = np.abs(got.numpy() - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max()
        assert err < 1e-5, err


def test_self_flow_loss_and_gradients_match_jax():
    model, step, inputs, positions = _setup("self_flow")
    x = _jax(inputs)
    graphdef, params = nnx.split(model, nnx.Param)
    teacher = nnx.merge(graphdef, params)
    loss, grads = jax.value_and_grad(lambda p: _jax_loss(nnx.merge(graphdef, p), teacher, x, positions))(
        params
    )
    t_loss, _, rep = step.loss(**inputs)
    assert float(rep) > 0.01  # the representation term is really there
    assert abs(float(t_loss) - float(loss)) < 1e-5 * abs(float(loss))
    t_loss.backward()
    grads = nnx.to_pure_dict(grads)
    for path, weight in _named_torch_grads(step).items():
        ref = np.asarray(_get(grads, path))
        got = weight.grad.numpy()
        got = got if path[-1] == "embedding" else got.T  # nn.Linear stores (out, in)
        assert np.linalg.norm(got - ref) < 1e-4 * np.linalg.norm(ref), path


def test_step_is_optax_adamw_after_clipping_and_an_ema_update():
    from selfflow.run import make_optimizer

    model, step, inputs, positions = _setup("self_flow")
    graphdef, params = nnx.split(model, nnx.Param)
    teacher = nnx.merge(graphdef, params)
    grads = jax.grad(lambda p: _jax_loss(nnx.merge(graphdef, p), teacher, _jax(inputs), positions))(params)
    tx = make_optimizer(CFG.optim)
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = nnx.to_pure_dict(jax.tree.map(lambda p, u: p + u, params, updates))
    teacher_before = [p.detach().clone() for p in step.ema]
    step.step(**inputs)
    for path, weight in _named_torch_grads(step).items():
        got = weight.detach().numpy()
        got = got if path[-1] == "embedding" else got.T
        want, before = np.asarray(_get(expected, path)), np.asarray(_get(nnx.to_pure_dict(params), path))
        # Adam's first step is ~lr*g/(|g|+eps): where |g| ~ eps, float32 gradient noise moves single
        # elements by ~1e-3 lr, so compare the whole update tensor, not elementwise.
        assert np.linalg.norm((got - before) - (want - before)) < 1e-3 * np.linalg.norm(want - before), path
    for e, e0, p in zip(step.ema, teacher_before, step.params):
        torch.testing.assert_close(e, 0.5 * e0 + 0.5 * p.detach())  # decay 0.5
