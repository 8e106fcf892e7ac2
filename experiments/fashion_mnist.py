"""Class-conditional Self-Flow on Fashion-MNIST (28x28 grayscale, 10 classes).

Command:

    .venv/bin/selfflow train experiments/fashion_mnist.py --run-dir runs/fashion_mnist

Data: the idx files of Debian's `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`
puts them in /usr/share/datasets/fashion-mnist; elsewhere set the source's `path`), read by
`data_pipelines.image_files.FashionMnistSource`: 60,000 training images, the 10,000 test images
held out for validation. Tokens: 4x4 patches of the 28x28 image (49 tokens of 16 values).
Expected runtime: about 25 minutes on 2 CPU cores (3000 steps, tiny model, batch 64; measured
32 min 18 s while other jobs shared the cores, 2026-11-23; `selfflow bench-data` gives the step
at 151 images/s, i.e. ~21 min alone).
Expected result: fm_loss falls from 1.61 (step 20) to 0.23 (step 3000), measured; samples.png shows
one row per class (T-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle
boot), recognisable but rough at this size.
Smoke test: add `--set train.steps=20`.
"""

from selfflow.config import (
    Config,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    SourceConfig,
    TrainConfig,
)

CONFIG = Config(
    seed=0,
    model=ModelConfig(preset="tiny", patch_size=4),
    objective=ObjectiveConfig(kind="self_flow", gamma=0.8, mask_ratio=0.25, ema_decay=0.999),
    optim=OptimConfig(learning_rate=1e-3, warmup_steps=200),
    data=DataConfig(sources=(SourceConfig("fashion_mnist", "fashion_mnist"),), image_size=28, num_classes=10),
    train=TrainConfig(steps=3000, batch_size=64, log_every=20, checkpoint_every=500),
)
