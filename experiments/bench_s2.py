"""The benchmark of `selfflow bench`: SiT-S/2 (depth 12, width 384, 6 heads, 33M parameters) on
32x32 RGB images in patches of 2, i.e. 256 tokens per example as in the paper's ImageNet-256
latent setting, batch 8 (2048 tokens per step). Self-Flow with the paper's defaults: student
layer round(0.3*12) = 4, teacher layer round(0.7*12) = 8, mask ratio 0.25, gamma 0.8.

Command (from the repository root):

    .venv/bin/selfflow bench                       # this file; add --candidates, --no-torch
    .venv/bin/selfflow bench --set model.dtype=bfloat16

Measured numbers and what they mean: README.md, "Performance".
"""

from selfflow.config import Config, DataConfig, ModelConfig, ObjectiveConfig, SampleConfig, TrainConfig

CONFIG = Config(
    seed=0,
    model=ModelConfig(preset="S/2"),
    objective=ObjectiveConfig(kind="self_flow"),
    data=DataConfig(source="shapes", image_size=32),
    train=TrainConfig(steps=100, batch_size=8),
    sample=SampleConfig(steps=8),
)
