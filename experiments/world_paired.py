"""Paired sequences on the procedural world: sound for a given video, and robotics rollouts.

Command:

    .venv/bin/selfflow train experiments/world_paired.py --run-dir runs/world_paired

Layouts (one sequence each, on the shared 10 ms time axis with multi-axis RoPE):
  audio_video     [video 128, audio 40]                       joint generation
  video_to_audio  [video 128 (condition), audio 40]           the sound of a given clip
  robotics        [image 16 (condition), video 128, action 16] from the first frame: future
                                                              frames and the agent's actions
Condition segments stay clean (τ = 0) and carry no loss; samples/ holds, per layout, the given
inputs (`*_given`) beside what the model generated (GIF, WAV + spectrogram, action plots).

Expected runtime: about 10 minutes on 2 CPU cores (800 steps, tiny model).
Expected result: fm_loss/video and fm_loss/audio fall well below their first logged values;
fm_loss/action falls more slowly (normalised actions start near var(ε − x0) = 2).
Smoke test: add `--set train.steps=20`.
"""

from selfflow.config import (
    Config,
    DataConfig,
    LayoutConfig,
    ModalityConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    SampleConfig,
    TrainConfig,
)

CONFIG = Config(
    seed=0,
    model=ModelConfig(preset="tiny", positions="rope", patch_size=4),  # image patches = data.video_patch
    objective=ObjectiveConfig(kind="self_flow", gamma=0.8, ema_decay=0.99),
    optim=OptimConfig(learning_rate=2e-3, warmup_steps=100),
    data=DataConfig(source="world", image_size=16, num_examples=20_000, num_classes=3),
    train=TrainConfig(steps=800, log_every=10, checkpoint_every=200),
    sample=SampleConfig(steps=40, cfg_scale=1.0, per_class=4),
    modalities=(ModalityConfig("video"), ModalityConfig("audio"), ModalityConfig("action", loss_weight=1.0)),
    layouts=(
        LayoutConfig("audio_video", ("video", "audio"), weight=0.4, batch_size=8),
        LayoutConfig("video_to_audio", ("video:condition", "audio"), weight=0.3, batch_size=8),
        LayoutConfig("robotics", ("image:condition", "video", "action"), weight=0.3, batch_size=8),
    ),
)
