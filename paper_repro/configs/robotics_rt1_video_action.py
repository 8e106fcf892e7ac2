"""Paper §4 / App. E robotics: joint video-action prediction on RT-1, evaluated in SIMPLER.
NOT the paper's setting in four ways, because this framework cannot express them:
  1. the instruction (text) is replaced by a class label: your converter maps each RT-1 instruction
     string to an integer id (text conditioning is not implemented);
  2. training starts from scratch: the paper fine-tunes for 100k steps from its video-weighted
     multimodal run, and a run here cannot be initialised from a run with other modalities;
  3. one window holds frames and actions at the same rate (6 steps at RT-1's 3 Hz: the conditioning
     frame, 5 more frames and six 7-D actions), where the paper predicts 49 future frames and six
     7-D actions; frames are 128×128 RGB pixels, not WAN2.2 latents;
  4. SIMPLER is not part of this repository (`selfflow.eval.policy` rolls policies out in gym-pusht only).

Paper's numbers (SIMPLER Google-robot tasks, 50 instances × 2 per checkpoint; radar figure, axis maxima,
attributed to Self-Flow at 100k steps; ../shared/reference/selfflow_paper.md §3.8): Move Near 50 %,
Pick Coke Can 73 %, Open and Place 29 %, Open/Close Drawer 78 % (the figure's geometry suggests 78 %
may be flow matching's value). At 30k steps flow matching scores 0 on Open and Place.

Commands (from the repository root):

    .venv/bin/selfflow train paper_repro/configs/robotics_rt1_video_action.py --run-dir runs/robotics_rt1_video_action
    .venv/bin/selfflow train paper_repro/configs/robotics_rt1_video_action.py --run-dir runs/robotics_rt1_video_action_fm \\
        --set objective.kind=flow_matching

Data: RT-1 (73.5k episodes), converted by you into one episode file per episode under data/rt1_episodes
(`data_pipelines.trajectories.write_episode(path, frames, proprio, actions, label=...)`, .npz or .h5):
frames uint8 (L, H, W, 3) (resized to 128×128 by the source), actions float (L, 7) (the 7-D action:
end-effector translation, rotation, gripper), proprio float (L, 8) (assumption: the 7-D end-effector
pose and the gripper state, because the paper does not say what the model observes besides the image;
a proprio width of 0 is not accepted by the action tokenizer), label = instruction id < 1024.
Windows of 6 steps start every step. No RT-1 data or converter is included.
Hardware: GPUs or TPUs; estimate in paper_repro/README.md, "Compute estimates". Not reported by the paper.
Parameters (this config): 514.1M + 5.3M projector (the paper's model: 625M or 675M, the same backbone as
its multimodal runs; see multimodal_mixed.py for why ours is smaller).
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
    SourceConfig,
    TrainConfig,
)

# One example of the trajectory source: a window of 6 steps (clip_seconds · fps), frames resized to 128.
DATA_SHAPES = {"image": (128, 128, 3), "video": (6, 128, 128, 3), "actions": (6, 7), "proprio": (6, 8)}

CONFIG = Config(
    seed=0,  # assumption: any seed, because the paper's training seed is not stated
    model=ModelConfig(
        preset="XL/2",
        depth=21,
        hidden_size=1152,
        num_heads=16,
        mlp_ratio=4.0,  # stated: the multimodal backbone's width, heads and 21 blocks
        positions="rope",  # stated: 3D RoPE over (t, h, w)
        rope_theta=10000.0,  # assumption: 10000 (FLUX's RoPE base), because it is not stated
        dtype="bfloat16",  # stated (BF16 mixed precision)
        patch_size=8,  # the first-frame image is patched like the video (data.video_patch)
    ),
    objective=ObjectiveConfig(
        kind="self_flow",
        gamma=0.8,  # stated
        student_layer=6,
        teacher_layer=15,  # assumption: round(0.3·21), round(0.7·21), because only the 0.3·D / 0.7·D rule is stated
        time_distribution="uniform",
        time_shift=1.0,  # assumption: uniform, because the robotics p(t) is not stated
        label_dropout=0.1,  # assumption: the SiT/REPA default, because the paper's instruction dropout is not stated
        ema_decay=0.9999,  # stated
    ),
    optim=OptimConfig(
        learning_rate=1e-4,
        b1=0.9,
        b2=0.999,
        weight_decay=0.0,  # assumption: the ImageNet (REPA/SRA protocol) values, because the fine-tuning optimiser is not stated
        grad_clip_norm=1.0,  # stated (README)
        warmup_steps=0,  # assumption: no warm-up because none is stated (as for ImageNet)
    ),
    data=DataConfig(
        sources=(SourceConfig("rt1", "trajectories", path="data/rt1_episodes", stride=1),),
        num_classes=1024,  # assumption: instruction ids < 1024, because RT-1 has over 700 distinct instructions and text conditioning is not implemented
        image_size=128,  # assumption: 128×128 frames, because pixel frames replace the paper's WAN2.2 latents (192p)
        fps=3.0,
        clip_seconds=2.0,  # RT-1's 3 Hz control rate; assumption: 6-step windows, because the paper's six 7-D actions fix the action horizon
        video_patch=8,
        video_tubelet=2,  # assumption: 8×8 patches and 2-frame tubelets, because the paper's tokens are WAN2.2 latents we do not have
        worker_count=8,  # loader setting, not a paper value
    ),
    train=TrainConfig(
        steps=100_000,  # stated (100k fine-tuning steps)
        log_every=100,
        checkpoint_every=5_000,
        keep_checkpoints=3,  # bookkeeping
        keep_every=30_000,  # keeps the 30k-step checkpoint the paper also evaluates (kept: 30k, 60k, 90k, latest)
    ),
    sample=SampleConfig(
        steps=50, cfg_scale=1.0, per_class=1
    ),  # assumption: 50 Euler steps, no guidance, because the robotics sampler is not stated
    modalities=(
        ModalityConfig("video", mask_ratio=0.1),  # stated for video
        ModalityConfig(
            "action", mask_ratio=0.5
        ),  # assumption: 0.5, this repository's measured default (experiments/sweeps/action_mask_ratio.md), because the paper's action masking is not described
    ),
    layouts=(
        # from one clean frame (and the instruction, here a label): the next frames and the actions
        LayoutConfig(
            "policy", ("image:condition", "video", "action"), weight=1.0, batch_size=128
        ),  # assumption: global batch 128, because the robotics batch is not stated
    ),
)
