"""Paper §4 / App. E robotics (RT-1, SIMPLER) conditioned on the instruction's text, as the paper's
model is: robotics_rt1_video_action.py with the class id replaced by text-encoder features of the
instruction and the text-conditioned backbone of text_to_image_625m.py (7 double-stream blocks,
pooled text). Everything else (windows, pixels, action masking, optimiser, steps) is that file's.
Still NOT the paper's setting in three of its four ways (see robotics_rt1_video_action.py): trained
from scratch (the paper fine-tunes from its video-weighted multimodal run; `train.init_from` needs a
source with exactly this model's tensors, and the multimodal configs here are unconditional, without
action projections), 6 pixel frames at the action rate instead of 49 WAN2.2-latent frames, and no
SIMPLER evaluation.

Paper's numbers: as robotics_rt1_video_action.py (SIMPLER success at 100k steps, radar figure axis
maxima attributed to Self-Flow: Move Near 50 %, Pick Coke Can 73 %, Open and Place 29 %, Open/Close
Drawer 78 %; ../shared/reference/selfflow_paper.md §3.8).

Commands (from the repository root):

    .venv/bin/selfflow train paper_repro/configs/robotics_rt1_text_video_action.py --run-dir runs/robotics_rt1_text_video_action
    .venv/bin/selfflow train paper_repro/configs/robotics_rt1_text_video_action.py \\
        --run-dir runs/robotics_rt1_text_video_action_fm --set objective.kind=flow_matching

Data: the episode files of robotics_rt1_video_action.py (data/rt1_episodes, `label` = the episode's
instruction id) and your text encoder's outputs for each distinct instruction, stored in
data/rt1_instructions.npz as "embedding" float32 (K, 128, 4096) and "mask" uint8 (K, 128) (row k =
instruction id k; text_to_image_625m.py's text encoder). The `trajectories` source reads no text, so
its windows are written once, with the instruction's features added, to the latents directory
data/rt1_text_windows that this config trains on (3.5 MB per window at these shapes, 2.1 MB of it the
text rows; a window starts at every step):

    import numpy as np
    from data_pipelines import latents, sources
    from selfflow.config import SourceConfig, load_config_file
    cfg = load_config_file("paper_repro/configs/robotics_rt1_text_video_action.py")
    raw = sources.build(SourceConfig("rt1", "trajectories", path="data/rt1_episodes"), cfg.data, cfg.seed)
    table = np.load("data/rt1_instructions.npz")
    embedding, mask = table["embedding"], table["mask"]
    def with_instruction(example):
        k = int(example["label"])
        return {**example, "text": embedding[k], "text_mask": mask[k], "label": np.int32(0)}
    latents.prepare(raw, "data/rt1_text_windows", name="rt1", modality="image+video+action+text",
                    encode=with_instruction)

Hardware: GPUs or TPUs; estimate in paper_repro/README.md, "Compute estimates". Not reported by the paper.
Parameters (this config): 698.5M + 5.3M projector (the text backbone of text_to_image_625m.py with
robotics_rt1_video_action.py's video, image and action projections; the paper's model: 625M or 675M).
"""

import dataclasses
from pathlib import Path

from selfflow.config import LayoutConfig, SourceConfig, exec_python_file

_TEXT = exec_python_file(Path(__file__).with_name("text_to_image_625m.py"), "config")
_BASE = exec_python_file(Path(__file__).with_name("robotics_rt1_video_action.py"), "config")

# One window (as robotics_rt1_video_action.py) plus the instruction's text rows.
DATA_SHAPES = {**_BASE.DATA_SHAPES, **_TEXT.TEXT_SHAPES}

CONFIG = dataclasses.replace(
    _BASE.CONFIG,
    model=dataclasses.replace(_TEXT.MODEL, patch_size=_BASE.CONFIG.model.patch_size),
    objective=dataclasses.replace(
        _BASE.CONFIG.objective,
        # assumption: instruction dropout 0.1 (as the captions of text_to_image_625m.py) because the paper's is not stated
        label_dropout=_TEXT.TEXT_DROPOUT,
        text_dropout=_TEXT.TEXT_DROPOUT,
    ),
    data=dataclasses.replace(
        _BASE.CONFIG.data,
        sources=(SourceConfig("rt1", "latents", path="data/rt1_text_windows"),),
        num_classes=1,  # the instruction is text: one class, every label 0
        text_tokens=_TEXT.TEXT_TOKENS,
    ),
    layouts=(
        # from one clean frame and the instruction: the next frames and the actions (batch as the base file)
        LayoutConfig(
            "policy",
            ("text:condition", "image:condition", "video", "action"),
            weight=1.0,
            batch_size=_BASE.CONFIG.layouts[0].batch_size,
        ),
    ),
)
