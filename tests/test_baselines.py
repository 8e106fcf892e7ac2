"""The paper's baselines as configuration: timestep schemes (full masking, Diffusion-Forcing),
SRA's teacher rule and distances, and attention separation.

Statistical checks follow tests/test_objective.py's DTS tests (KS tests at p > 1e-3 on thousands of
draws); the distances are checked against independent NumPy / PyTorch references.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from selfflow import objective
from selfflow.config import ConfigError, ObjectiveConfig, resolve, validate
from selfflow.layout import CONDITION, Layout, Segment, single
from selfflow.model import build_model
from selfflow.objectives import make_objective
from selfflow.tasks import Task

from helpers_config import tiny_image_config

COND_LAYOUT = Layout("cv", (Segment("image", 4, CONDITION), Segment("video", 12)))


def draw(scheme: str, *, batch=4000, layout=None, ratio=0.25, seed=0, **fields):
    layout = layout or single("image", 16)
    ocfg = ObjectiveConfig(timesteps=scheme, **fields)
    ratios = {m: ratio for m in layout.modalities}
    student, teacher, mask = objective.layout_timesteps(
        jax.random.key(seed), batch, layout, ocfg, ratios, True
    )
    return np.asarray(student.dense()), np.asarray(teacher.dense()), np.asarray(mask)


# ---------------------------------------------------------------------------- timestep schemes


def test_full_mask_puts_the_masked_tokens_at_pure_noise():
    student, teacher, mask = draw("full_mask", batch=256, layout=single("image", 64))
    assert np.all(mask.sum(axis=1) == 16)  # round(0.25 * 64)
    assert np.all(student[mask] == 1.0) and np.all(student[~mask] < 1.0)
    t = student[~mask].reshape(256, 48)[:, 0]
    assert stats.kstest(t, "uniform").pvalue > 1e-3  # the unmasked tokens' t ~ p(t)
    np.testing.assert_array_equal(teacher, np.broadcast_to(t[:, None], teacher.shape))  # min(t, 1) = t


def test_diffusion_forcing_gives_every_token_its_own_timestep():
    student, teacher, mask = draw("diffusion_forcing", layout=COND_LAYOUT)
    generate = np.asarray(COND_LAYOUT.generate_mask())
    assert np.all(student[:, ~generate] == 0.0)  # condition tokens clean
    assert np.all(mask == generate[None])
    tau = student[:, generate]
    for token in (0, 5, 11):
        assert stats.kstest(tau[:, token], "uniform").pvalue > 1e-3
    corr = np.corrcoef(tau[:, :6].T)[np.triu_indices(6, 1)]
    assert np.max(np.abs(corr)) < 0.06  # independent across tokens (4000 draws: std 0.016)
    # the teacher: every generate token at the sample's minimum, condition tokens clean
    np.testing.assert_array_equal(teacher[:, generate], np.broadcast_to(tau.min(axis=1)[:, None], tau.shape))
    assert np.all(teacher[:, ~generate] == 0.0)


def test_dts_is_the_default_and_keeps_s_independent_of_t():
    student, teacher, mask = draw("dts")
    t = np.where(~mask, student, np.nan)
    s = np.where(mask, student, np.nan)
    t, s = np.nanmax(t, axis=1), np.nanmax(s, axis=1)
    assert abs(np.corrcoef(t, s)[0, 1]) < 0.05 and stats.kstest(s, "uniform").pvalue > 1e-3
    assert ObjectiveConfig().timesteps == "dts"


# ---------------------------------------------------------------------------- SRA


def sra_draw(batch=8000, t_max=0.0):
    cfg = resolve(tiny_image_config(objective={"kind": "sra", "time_gap": t_max}))
    task = Task(cfg)
    sra = make_objective(cfg, task.mask_ratios, task.loss_weights)
    raw = jax.tree.map(jnp.asarray, task.dataset(0)[0])
    raw = jax.tree.map(lambda x: jnp.concatenate([x] * (batch // x.shape[0])), raw)
    d = sra.draw(jax.random.key(1), task.segment_batch(0, raw), task.layouts[0].layout)
    return np.asarray(d.student_times.dense()), np.asarray(d.teacher_times.dense()), np.asarray(d.mask)


@pytest.mark.parametrize("t_max, expected", [(0.0, 0.2), (0.4, 0.4)])
def test_sra_teacher_sits_up_to_t_max_below_the_student(t_max, expected):
    student, teacher, mask = sra_draw(t_max=t_max)
    assert not mask.any()  # one student timestep, no masking
    t, tt = student[:, 0], teacher[:, 0]
    assert np.all(student == t[:, None]) and np.all(teacher == tt[:, None])
    assert np.all(tt <= t) and np.all(tt >= np.maximum(t - expected, 0.0) - 1e-6)
    far = t > expected
    assert stats.kstest((t - tt)[far] / expected, "uniform").pvalue > 1e-3  # t - t' ~ U(0, t_max)


def test_sra_without_its_loss_is_flow_matching():
    """Same key, γ = 0: SRA's generation loss is flow matching's on the same draw."""
    cfg = resolve(tiny_image_config(objective={"kind": "sra", "gamma": 0.0}))
    task = Task(cfg)
    model = build_model(cfg, task.token_dims)
    batch = task.segment_batch(0, jax.tree.map(jnp.asarray, task.dataset(0)[0]))
    layout, key = task.layouts[0].layout, jax.random.key(4)
    fm_cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, kind="flow_matching"))
    losses = [
        make_objective(c, task.mask_ratios, task.loss_weights).loss(
            student=model, teacher=model, batch=batch, layout=layout, key=key
        )[0]
        for c in (cfg, fm_cfg)
    ]
    assert float(losses[0]) == float(losses[1])


# ---------------------------------------------------------------------------- distances


def test_smooth_l1_distance_is_sra_huber():
    a, b = (np.random.default_rng(i).normal(scale=0.1, size=(3, 5, 8)).astype(np.float32) for i in (0, 1))
    diff = np.abs(a - b)
    expected = np.mean(np.where(diff < 0.05, 0.5 * diff**2 / 0.05, diff - 0.025))
    got = objective.representation_loss(jnp.asarray(a), jnp.asarray(b), distance="smooth_l1")
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert np.mean(diff < 0.05) > 0.2 and np.mean(diff >= 0.05) > 0.2  # both branches exercised


def test_cosine_tokens_is_torch_cosine_similarity_default_dim():
    """SRA's ``1 - F.cosine_similarity(xr, xr_t)`` on (B, N, D) features, then ``.mean()``."""
    torch = pytest.importorskip("torch")
    a, b = (np.random.default_rng(i).normal(size=(3, 5, 8)).astype(np.float32) for i in (0, 1))
    expected = float((1 - torch.nn.functional.cosine_similarity(torch.tensor(a), torch.tensor(b))).mean())
    got = objective.representation_loss(jnp.asarray(a), jnp.asarray(b), distance="cosine_tokens")
    assert float(got) == pytest.approx(expected, rel=1e-5)
    per_token = objective.representation_loss(jnp.asarray(a), jnp.asarray(b), distance="cosine")
    assert abs(float(per_token) - expected) > 1e-3  # the two axes really differ


# ---------------------------------------------------------------------------- attention separation


def test_attention_separation_blocks_the_other_group():
    """With separation, changing the masked tokens' inputs leaves every unmasked token's output
    unchanged (and vice versa); without it, it does not. Condition tokens see everything."""
    cfg = resolve(tiny_image_config(model={"depth": 2}))
    task = Task(cfg)
    model = build_model(cfg, task.token_dims)
    # adaLN-zero would make every block the identity: randomise the parameters
    from flax import nnx

    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(x.size), x.shape), params)
    model = nnx.merge(graphdef, params)
    layout = task.layouts[0].layout
    n, b = layout.num_tokens, 2
    mask = np.zeros((b, n), bool)
    mask[:, : n // 4] = True
    x = jax.random.normal(jax.random.key(0), (b, n, task.token_dims["image"]))
    x2 = x.at[:, : n // 4].add(1.0)  # change only the masked group
    tau, positions, labels = (
        jnp.full((b,), 0.5),
        jnp.asarray(task.layouts[0].positions),
        jnp.zeros((b,), jnp.int32),
    )
    sep = objective.separated_attention(jnp.asarray(mask), layout)

    def out(inp, attention_mask):
        return np.asarray(
            model(
                (inp,), tau, labels, positions, modalities=("image",), attention_mask=attention_mask
            ).velocity[0]
        )

    np.testing.assert_allclose(out(x, sep)[:, n // 4 :], out(x2, sep)[:, n // 4 :], atol=1e-6)
    assert np.max(np.abs(out(x, None)[:, n // 4 :] - out(x2, None)[:, n // 4 :])) > 1e-3
    m = np.zeros(16, bool)
    m[4:8] = True  # masked generate tokens; tokens 0-3 are the condition segment
    c = np.asarray(objective.separated_attention(jnp.asarray(m[None]), COND_LAYOUT)[0, 0])
    generate = np.asarray(COND_LAYOUT.generate_mask())
    expected = (m[:, None] == m[None, :]) | ~generate[:, None] | ~generate[None, :]
    np.testing.assert_array_equal(c, expected)
    assert not c[4, 12] and c[4, 0] and c[0, 12]


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "objective_fields, message",
    [
        ({"kind": "flow_matching", "timesteps": "full_mask"}, "replaces the dual timesteps"),
        ({"timesteps": "diffusion_forcing", "attention_separation": True}, "attention_separation"),
        ({"kind": "sra", "attention_separation": True}, "attention_separation"),
        ({"timesteps": "full_mask", "time_gap": 0.2}, "time_gap"),
        ({"kind": "flow_matching", "time_gap": 0.2}, "needs a second timestep"),
        ({"kind": "dts", "gamma_decay_steps": 10}, "has none"),
        ({"kind": "sra", "gamma_decay_start": -1}, "expected integers >= 0"),
    ],
)
def test_inconsistent_baseline_settings_are_config_errors(objective_fields, message):
    with pytest.raises(ConfigError, match=message):
        validate(tiny_image_config(objective=objective_fields))


def test_sra_accepts_a_time_gap():
    validate(tiny_image_config(objective={"kind": "sra", "time_gap": 0.3}))


def test_objectives_pass_the_separation_mask_to_the_student():
    """Self-Flow's and DTS's student forward uses the separation mask of its own draw."""
    calls = []

    class Spy:
        def __init__(self, model):
            self.model = model

        def __call__(self, *args, **kwargs):
            calls.append(kwargs.get("attention_mask"))
            return self.model(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.model, name)

    for separate in (False, True):
        cfg = resolve(tiny_image_config(objective={"kind": "dts", "attention_separation": separate}))
        task = Task(cfg)
        model = build_model(cfg, task.token_dims)
        dts = make_objective(cfg, task.mask_ratios, task.loss_weights)
        batch = task.segment_batch(0, jax.tree.map(jnp.asarray, task.dataset(0)[0]))
        layout, key = task.layouts[0].layout, jax.random.key(2)
        dts.loss(student=Spy(model), teacher=model, batch=batch, layout=layout, key=key)
        if separate:
            expected = objective.separated_attention(dts.draw(key, batch, layout).mask, layout)
            np.testing.assert_array_equal(np.asarray(calls[-1]), np.asarray(expected))
            assert not np.all(np.asarray(calls[-1]))  # something is blocked
        else:
            assert calls[-1] is None


# ---------------------------------------------------------------------------- SRA's weight schedule


def test_gamma_decay_is_sras_epoch_formula_at_epoch_starts():
    """SRA's ``train.py`` (256 px, smooth L1): 2 · 0.1^((e − 149)/1000 + 1) for epoch e > 149, else
    2 · 0.1; here γ = 0.2, start 149 epochs, ten-fold every 1000 epochs, in steps of E per epoch."""
    steps_per_epoch = 5004
    for e in (0, 100, 149, 150, 400, 800):
        sra = 2 * 0.1 ** ((e - 149) / 1000 + 1) if e > 149 else 2 * 0.1
        ours = objective.gamma_at(e * steps_per_epoch, 0.2, 149 * steps_per_epoch, 1000 * steps_per_epoch)
        assert float(ours) == pytest.approx(sra, rel=1e-5), e
    assert objective.gamma_at(123, 0.7, 0, 0) == 0.7  # no decay: the constant, not an array
    traced = jax.jit(lambda k: objective.gamma_at(k, 1.0, 10, 20))(jnp.int32(30))
    assert float(traced) == pytest.approx(0.1, rel=1e-6)


def test_training_uses_the_decayed_weight_at_each_step(tmp_path):
    """A 3-step SRA run with γ 0.5 decaying ten-fold per step from step 1: the logged
    rep_weight is 0.5, 0.5, 0.05 at optimizer steps 0, 1, 2 and each loss is fm + rep_weight · rep."""
    from selfflow.metrics_writer import read_metrics
    from selfflow.train import train

    cfg = tiny_image_config(
        objective={"kind": "sra", "gamma": 0.5, "gamma_decay_start": 1, "gamma_decay_steps": 1},
        train={"steps": 3, "log_every": 1, "checkpoint_every": 3},
    )
    train(cfg, tmp_path / "run", progress=False, write_samples=False)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "rep_weight" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["rep_weight"] for r in rows] == pytest.approx([0.5, 0.5, 0.05], rel=1e-6)
    for r in rows:
        assert r["loss"] == pytest.approx(r["fm_loss"] + r["rep_weight"] * r["rep_loss"], rel=1e-5)
        assert r["rep/grad_ratio"] > 0  # measured with the same decayed γ
