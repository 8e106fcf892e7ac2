"""Every kind of file source in one run: world clips read back from MP4/WAV/npz files, mixed with
the generated world (a bench-data and end-to-end check of the file pipelines).

Commands:

    .venv/bin/python -m data_pipelines.world_files --out data/world_files --clips 200 --image-size 64
    .venv/bin/selfflow bench-data experiments/world_files_mixed.py
    .venv/bin/selfflow train experiments/world_files_mixed.py --run-dir runs/world_files_mixed

Data: `data/world_files` holds 2 s world clips (64x64 H.264 + AAC, float WAV, npz episodes), read
as 1.6 s clips at 10 fps, resized to 16x16, audio as 32-band log-mel (decord, librosa). Layouts:
  video        [video]            generated world clips and MP4 clips, mixed 1:1
  audio        [audio]            WAV files
  audio_video  [video, audio]     MP4 clips with their audio track
  robotics     [image:condition, video, action]   generated world clips
  video_action [video, action]    npz episodes (weight 0: measured by bench-data, not trained)
Expected runtime: about 7 minutes on 2 CPU cores (1000 steps, tiny model with RoPE; measured
6 min 36 s on a busy machine, plus 12 s to write the files, 2026-11-23).
Expected result: every modality's fm_loss falls below its first logged value (measured: video
1.55 -> 0.22, audio 1.88 -> 0.29, action 2.28 -> 1.07; the world's actions are an exogenous random
policy, so they stay partly unpredictable).
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
    SourceConfig,
    TrainConfig,
)

FILES = "data/world_files"

CONFIG = Config(
    seed=0,
    model=ModelConfig(preset="tiny", positions="rope", patch_size=4),  # image patches = data.video_patch
    objective=ObjectiveConfig(kind="self_flow", gamma=0.8, ema_decay=0.99),
    optim=OptimConfig(learning_rate=2e-3, warmup_steps=100),
    data=DataConfig(
        sources=(
            SourceConfig("world", "world"),
            SourceConfig("mp4", "video_files", path=f"{FILES}/video", with_audio=True),
            SourceConfig("wav", "audio_files", path=f"{FILES}/audio"),
            SourceConfig("episodes", "trajectories", path=f"{FILES}/episodes", stride=2),
        ),
        image_size=16,
        num_examples=20_000,
        num_classes=3,
    ),
    train=TrainConfig(steps=1000, log_every=10, checkpoint_every=200),
    modalities=(
        ModalityConfig("image"),
        ModalityConfig("video"),
        ModalityConfig("audio"),
        ModalityConfig("action"),
    ),
    layouts=(
        LayoutConfig("video", ("video",), weight=0.3, batch_size=8, sources=("world", "mp4")),
        LayoutConfig("audio", ("audio",), weight=0.2, batch_size=16, sources=("wav",)),
        LayoutConfig("audio_video", ("video", "audio"), weight=0.25, batch_size=8, sources=("mp4",)),
        LayoutConfig(
            "robotics", ("image:condition", "video", "action"), weight=0.25, batch_size=8, sources=("world",)
        ),
        LayoutConfig("video_action", ("video", "action"), weight=0.0, batch_size=8, sources=("episodes",)),
    ),
)
