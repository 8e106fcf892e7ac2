"""The benchmark of `selfflow bench`: SiT-S/2 (depth 12, width 384, 6 heads, 33M parameters) on
32x32 RGB images in patches of 2, i.e. 256 tokens per example as in the paper's ImageNet-256
latent setting, batch 8 (2048 tokens per step). Self-Flow with the paper's defaults: student
layer round(0.3*12) = 4, teacher layer round(0.7*12) = 8, mask ratio 0.25, gamma 0.8.

Command (from the repository root):

    .venv/bin/selfflow bench                       # this file; add --candidates, --no-torch
    .venv/bin/selfflow bench --set model.dtype=bfloat16

Measured numbers and what they mean: README.md, "Performance".
"""

from selfflow.bench import default_config

CONFIG = default_config()  # defined in the package, so an installed wheel has it too
