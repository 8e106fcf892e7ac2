"""Paper §4: joint text-conditioned video-audio generation, initialised from the multimodal model vs
from the video-only (text-to-video) model. Backbone, text encoder, optimiser and caption dropout are
text_to_image_625m.py's; video as text_to_video_625m.py, plus each clip's audio track.

Paper's numbers (../shared/reference/selfflow_paper.md §3.7): initialising from the multimodal model
beats initialising from the video-only model, and a video-only Self-Flow initialisation beats a
multimodal flow-matching one; the numbers were not recovered.

Commands (from the repository root). The paper's two arms start from another run's weights
(`train.init_from`, README "Warm starts"):

    # arm 1: from the multimodal model (a text-conditioned image / video / audio run)
    .venv/bin/selfflow train paper_repro/configs/text_to_video_audio.py --run-dir runs/text_to_video_audio_from_mm \\
        --set train.init_from=runs/MULTIMODAL_RUN --set train.init_new=fresh
    # arm 2: from the video-only model (paper_repro/configs/text_to_video_625m.py)
    .venv/bin/selfflow train paper_repro/configs/text_to_video_audio.py --run-dir runs/text_to_video_audio_from_t2v \\
        --set train.init_from=runs/text_to_video_625m --set train.init_new=fresh
    # the paper's third comparison: arm 1 from a flow-matching multimodal run; a from-scratch
    # reference is this file as it is:
    .venv/bin/selfflow train paper_repro/configs/text_to_video_audio.py --run-dir runs/text_to_video_audio

`train.init_new=fresh` (README "Warm starts") loads every tensor the source shares with this model
and keeps this model's initialisation for the rest. Counted on the abstract models of these
configs: from text_to_video_625m.py, 305 of this model's 311 tensors come from the source and 6 are
new (the audio projections); from multimodal_mixed.py, 161 are shared and 150 new, because that
config has no double-stream blocks (its 7 first blocks lack the text weights) and no text
projection, and its 76 image tensors are left out. So arm 1 needs a multimodal run with this
backbone (double_stream_blocks=7) and text, which paper_repro does not configure (multimodal_*.py
are unconditional).

Data: one "latents" directory, data/t2av_latents, whose examples are {"video": float32 (12, 12, 21, 48)
(WAN2.2 latents as text_to_video_625m.py), "audio": float32 (48, 64) = Songbloom AE latents of the
clip's audio track (the paper's token table: 48 latents of 64 for the audio of video-audio clips),
"text" float32 (128, 4096), "text_mask" uint8 (128,), "label": int32 0}: the paper's 2M audio-video
pairs are internal; the Songbloom autoencoder is not part of this repository (write the examples with
`data_pipelines.latents.prepare` from your own source, as text_to_audio_625m.py). No joint metric of
the paper is implemented here (`selfflow eval` has its own AV-synchrony proxy for log-mel audio).
Hardware: GPUs or TPUs; estimate in paper_repro/README.md, "Compute estimates". Not reported by the paper.
Parameters (this config): 694.7M + 5.3M projector (the backbone of text_to_image_625m.py with video and audio projections; paper ~625M).
Smoke test of this file's wiring on any data of the same shapes: add `--set train.steps=2` and a
small model (as in text_to_image_625m.py).
"""

import dataclasses
from pathlib import Path

from selfflow.config import (
    DataConfig,
    LayoutConfig,
    ModalityConfig,
    SampleConfig,
    SourceConfig,
    TrainConfig,
    exec_python_file,
)

_BASE = exec_python_file(Path(__file__).with_name("text_to_image_625m.py"), "config")
_VIDEO = exec_python_file(Path(__file__).with_name("text_to_video_625m.py"), "config")

# One example: the clip's WAN2.2 latents, its audio track's 48 Songbloom latents and the text rows.
DATA_SHAPES = {"video": _VIDEO.DATA_SHAPES["video"], "audio": (48, 64), **_BASE.TEXT_SHAPES}

CONFIG = dataclasses.replace(
    _VIDEO.CONFIG,
    # assumption: the video run's p(t) (SD3 shift 2.95) for both modalities, because one p(t) serves a run here and the joint run's is not stated
    objective=_VIDEO.CONFIG.objective,
    data=DataConfig(
        sources=(SourceConfig("t2av", "latents", path="data/t2av_latents"),),
        num_classes=1,  # text-conditioned: one class, every label 0
        text_tokens=_BASE.TEXT_TOKENS,
        # Audio latents sit one 10 ms tick apart here (Songbloom's are 40 ms apart) and WAN latent
        # frame i at video frame 4·i: the video clock runs 4× fast too, so both keep their true ratio.
        # assumption: 4 × 24 fps (text_to_video_625m.py's clips) because audio latents cannot be spaced 40 ms apart here; decoded clips would play 4× fast
        fps=96.0,
        video_patch=1,
        video_tubelet=1,  # the WAN2.2 latents are the tokens
        audio_patch_frames=1,  # one Songbloom latent per token (stated: 48 latents of 64)
        worker_count=8,  # loader setting, not a paper value
    ),
    train=TrainConfig(
        # assumption: 100k steps, the length of the paper's other fine-tuning from its multimodal run (RT-1), because the joint video-audio run's length is not stated
        steps=100_000,
        log_every=100,
        checkpoint_every=5_000,
        keep_checkpoints=3,  # bookkeeping
    ),
    # stated: 50 steps, guidance 5 for video and audio samples (the paper's metrics use no guidance)
    sample=SampleConfig(steps=50, cfg_scale=5.0, per_class=4),
    modalities=(
        ModalityConfig("video", mask_ratio=0.1),  # stated for video
        ModalityConfig("audio", mask_ratio=0.5),  # stated for audio
    ),
    layouts=(
        # assumption: global batch 8, the paper's video batch of its multimodal run, because the joint run's batch is not stated
        LayoutConfig("text_to_video_audio", ("text:condition", "video", "audio"), weight=1.0, batch_size=8),
    ),
)
