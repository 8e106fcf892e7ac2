"""Robotics on PushT episodes: joint video + action generation, and actions from observed video.

Commands (record the episodes once, then train):

    .venv/bin/python -m data_pipelines.pusht_expert --out data/pusht --episodes 100 --image-size 32
    .venv/bin/selfflow train experiments/pusht_video_action.py --run-dir runs/pusht_video_action

Data: episodes of gym-pusht (push a T block onto its target) recorded with the scripted expert of
`data_pipelines.pusht_expert` (npz: 32x32 frames, agent position, commanded target position),
read by `data_pipelines.trajectories.TrajectorySource` as 1.6 s windows at the simulator's 10 Hz
(16 steps, frames resized to 16x16). Actions and proprioception are normalised with statistics of
the first 256 windows (modalities.action).
Layouts:
  video_action    [video 128, action]                        joint generation of the future and the actions
  inverse         [video:condition, action]                  the actions that produced an observed clip
  policy          [image:condition, video, action]           from the current frame: the future and the
                                                             actions (selfflow.eval.policy.ModelPolicy
                                                             rolls it out in the simulator)
Expected runtime: about 6 minutes on 2 CPU cores (1500 steps, tiny model with RoPE; measured
5 min 26 s, plus 45 s to record the 100 episodes, 2026-11-23).
Expected result: fm_loss/action and fm_loss/video fall well below their first logged values
(measured: action 2.36 -> 0.36, video 1.61 -> 0.078, first and last logged values);
samples/<layout>/ holds the generated clips (GIF) and action plots.
Policy in the simulator: `.venv/bin/python -m selfflow.eval.policy runs/pusht_video_action --episodes 20`
(measured after this run, 20 held-out starts: success 0/20, mean max coverage 0.064, against
0.043 for random targets and 20/20 for the scripted expert: a 6-minute tiny model does not solve PushT).
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

CONFIG = Config(
    seed=0,
    model=ModelConfig(preset="tiny", positions="rope", patch_size=4),  # image patches = data.video_patch
    objective=ObjectiveConfig(kind="self_flow", gamma=0.8, ema_decay=0.99),
    optim=OptimConfig(learning_rate=2e-3, warmup_steps=100),
    data=DataConfig(
        sources=(SourceConfig("pusht", "trajectories", path="data/pusht", stride=4),),
        image_size=16,
        clip_seconds=1.6,
        fps=10.0,
        num_classes=1,
    ),
    train=TrainConfig(steps=1500, log_every=10, checkpoint_every=250),
    modalities=(ModalityConfig("video"), ModalityConfig("action")),
    layouts=(
        LayoutConfig("video_action", ("video", "action"), weight=0.35, batch_size=8),
        LayoutConfig("inverse", ("video:condition", "action"), weight=0.3, batch_size=8),
        LayoutConfig("policy", ("image:condition", "video", "action"), weight=0.35, batch_size=8),
    ),
)
