"""A modality, an objective and a periodic action added from outside the package, as the README's
"Extending" shows: they validate, train, checkpoint, sample and load back without any change to
selfflow/."""

import dataclasses
import shutil
import types

import jax.numpy as jnp
import numpy as np
import pytest

import modalities
from data_pipelines.base import Field
from data_pipelines.latents import prepare
from modalities.base import ModalitySpec, grid_positions
from selfflow.config import (
    Config,
    ConfigError,
    DataConfig,
    LayoutConfig,
    MeshConfig,
    ModelConfig,
    ObjectiveConfig,
    SampleConfig,
    SourceConfig,
    TrainConfig,
    validate,
)
from selfflow.metrics_writer import read_metrics
from selfflow.objectives import OBJECTIVES, FlowMatching, register_objective
from selfflow.run import load_run
from selfflow.train import train

LENGTH, CHUNK = 16, 4


# ---------------------------------------------------------------------------- a toy modality


@dataclasses.dataclass(frozen=True)
class SignalSpec(ModalitySpec):
    """A 1-D signal of ``length`` samples, ``chunk`` samples per token."""

    length: int
    chunk: int = CHUNK

    @property
    def token_dim(self) -> int:
        return self.chunk

    @property
    def num_tokens(self) -> int:
        return self.length // self.chunk


def _toy_modality():
    m = types.SimpleNamespace(
        NAME="signal", KEYS=("signal",), DEFAULT_MASK_RATIO=0.25, DEFAULT_TIME_SHIFT=1.0, Spec=SignalSpec
    )
    m.spec_for = lambda shapes, cfg, examples: SignalSpec(length=shapes["signal"][0])
    m.tokenize = lambda x, spec: x.reshape(x.shape[0], spec.num_tokens, spec.chunk)
    m.detokenize = lambda tokens, spec: tokens.reshape(tokens.shape[0], spec.length)
    m.tokenize_batch = lambda raw, spec: m.tokenize(raw["signal"], spec)
    m.positions = lambda spec, time_offset=0.0: grid_positions(time_offset + np.arange(spec.num_tokens), 1, 1)
    return m


class SineSource:
    """Class 0: a slow sine, class 1: a fast one."""

    schema = {"signal": Field((LENGTH,), "float32"), "label": Field((), "int32")}

    def __len__(self):
        return 32

    def __getitem__(self, i):
        label = i % 2
        t = np.arange(LENGTH) / LENGTH
        return {
            "signal": np.sin(2 * np.pi * (1 + 3 * label) * t + i).astype(np.float32),
            "label": np.int32(label),
        }

    def where(self, i):
        return f"sine[{i}]"


# ---------------------------------------------------------------------------- a toy objective


class MeanAbsoluteVelocity(FlowMatching):
    """Flow matching with an L1 velocity loss (one τ per sample, no teacher)."""

    kind = "toy_l1"

    def loss(self, *, student, teacher, batch, layout, key):
        draw = self.draw(key, batch, layout)
        out = self.forward_student(student, draw, batch, layout)
        l1 = jnp.mean(jnp.abs(out.velocity[0] - (draw.noise[0] - draw.x0[0])))
        zero = jnp.zeros((), jnp.float32)
        return l1, {"loss": l1, "fm_loss": l1, "rep_loss": zero, "cos_sim": zero + 1, "toy/l1": l1}


@pytest.fixture
def registered():
    modalities.register(_toy_modality())
    register_objective(MeanAbsoluteVelocity)
    yield
    modalities.MODALITIES.pop("signal")
    OBJECTIVES.pop("toy_l1")


def _config(data_dir, kind="toy_l1"):
    return Config(
        model=ModelConfig(depth=2, hidden_size=32, num_heads=2, positions="rope"),
        objective=ObjectiveConfig(kind=kind, ema_decay=0.5),
        data=DataConfig(
            sources=(SourceConfig("sines", "latents", path=str(data_dir)),),
            num_classes=2,
            read_threads=1,
            prefetch=1,
        ),
        train=TrainConfig(steps=4, log_every=1, checkpoint_every=4),
        sample=SampleConfig(steps=2, per_class=3),
        mesh=MeshConfig(data=1),
        layouts=(LayoutConfig("signal", ("signal",), 1.0, 8),),
    )


def test_unregistered_names_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="objective.kind='toy_l1'"):
        validate(dataclasses.replace(Config(), objective=ObjectiveConfig(kind="toy_l1")))
    with pytest.raises(ConfigError, match="segment 'signal'"):
        validate(_config(tmp_path, kind="flow_matching"))


def test_toy_modality_and_objective_train_sample_and_load_without_data(tmp_path, registered):
    prepare(SineSource(), tmp_path / "data", name="sines", modality="signal", shard_size=16)
    run_dir = tmp_path / "run"

    class EveryOtherStep:  # a periodic action handed to the loop (see selfflow.hooks)
        seen = []

        def due(self, info):
            return info.step % 2 == 0

        def __call__(self, info):
            self.seen.append((info.step, float(info.metrics["toy/l1"]), int(info.state["step"])))

    result = train(_config(tmp_path / "data"), run_dir, progress=False, hooks=[EveryOtherStep()])
    assert result.final_step == 4
    assert [(s, n) for s, _, n in EveryOtherStep.seen] == [(2, 2), (4, 4)]  # after the step, with its state
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["loss"] == r["toy/l1"] > 0 for r in records)  # the toy objective's loss was trained
    samples = np.load(run_dir / "samples" / "signal" / "0_signal.npy")
    assert samples.shape == (2 * 3, LENGTH) and np.isfinite(samples).all()  # 3 per class, detokenised

    shutil.rmtree(tmp_path / "data")  # a run loads from its checkpoint alone
    cfg, state, _, task, step = load_run(run_dir)
    assert step == 4 and task.specs["signal"] == SignalSpec(LENGTH)
    assert cfg.objective.kind == "toy_l1" and "x_embedders" in state["params"]
