"""Mixed multimodal Self-Flow on the procedural world: images, video, audio and paired audio-video.

Command:

    .venv/bin/selfflow train experiments/world_mixed.py --run-dir runs/world_mixed

Data: the embedded procedural world (balls pushed by an agent, every collision makes a sound);
16x16 frames at 10 fps, 1.6 s clips, 16 kHz audio as 32-band log-mel at 10 ms hops.
Layouts, as in the paper's mixture (image 57 % / video 30 % / audio 13 %, batch sizes chosen to
even out step time) plus a paired audio-video layout that trains joint generation:
  image        [image 16]                 first frames as still images
  video        [video 128]                16 frames, 4x4 patches, tubelets of 2 frames
  audio        [audio 40]                 160 mel frames in patches of 4
  audio_video  [video 128, audio 40]      one sequence on a shared 10 ms time axis (RoPE)
Each layout compiles once (four compiles in all); the layout of step n is a pure function of
(seed, n), so a resumed run replays the same schedule.

Expected runtime: about 4 minutes on 2 CPU cores (1000 steps, tiny model with RoPE; measured
4 min 25 s for `make run` with the venv installed, 2026-12-06, sampling included).
Expected result: metrics.jsonl logs fm_loss/<modality> per step; every modality's loss falls
well below its first logged value (measured: image 1.42 -> 0.16, video 1.60 -> 0.19,
audio 1.02 -> 0.35, first and last logged values, 2026-12-06); samples/<layout>/
holds, from the EMA weights, 4 samples per class (12 per layout): a PNG grid, MP4s, WAVs (+ spectrograms)
and for audio_video one MP4 per sample with its own sound. This is the README's main job (`make run`).
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
    train=TrainConfig(steps=1000, log_every=10, checkpoint_every=200),
    sample=SampleConfig(per_class=4),
    modalities=(ModalityConfig("image"), ModalityConfig("video"), ModalityConfig("audio")),
    layouts=(
        LayoutConfig("image", ("image",), weight=0.47, batch_size=38),
        LayoutConfig("video", ("video",), weight=0.25, batch_size=8),
        LayoutConfig("audio", ("audio",), weight=0.13, batch_size=16),
        LayoutConfig("audio_video", ("video", "audio"), weight=0.15, batch_size=8),
    ),
)
