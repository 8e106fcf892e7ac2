"""Paper §4 mixed multimodal training, the video-weighted loss weighting (project-page radar figure):
multimodal_mixed.py with the video loss weighted up. NOT the paper's setting: unconditional here, the
paper's runs are text-conditioned (see multimodal_mixed.py for everything this file shares).
The paper initialises its robotics model (robotics_rt1_video_action.py) from this weighting's run;
that initialisation is not supported here (see that file).

Paper's numbers (flow matching -> Self-Flow, 1M steps, read off the radar figure, approximate;
../shared/reference/selfflow_paper.md §3.7): image FID 3.20 -> 3.07, video FVD 61.9 -> 58.0, audio FAD 159.5 -> 156.0.

Commands (from the repository root):

    .venv/bin/selfflow train paper_repro/configs/multimodal_video_weighted.py --run-dir runs/multimodal_video_weighted
    .venv/bin/selfflow train paper_repro/configs/multimodal_video_weighted.py --run-dir runs/multimodal_video_weighted_fm \\
        --set objective.kind=flow_matching

Data and hardware: as multimodal_mixed.py (FLUX.2 AE image, WAN2.2 AE video and Songbloom AE audio
latents; estimate in paper_repro/README.md, "Compute estimates").
Parameters (this config): 512.2M + 5.3M projector (as multimodal_mixed.py).
"""

import dataclasses
from pathlib import Path

from selfflow.config import exec_python_file

_BASE = exec_python_file(Path(__file__).with_name("multimodal_mixed.py"), "config")

DATA_SHAPES = _BASE.DATA_SHAPES

# assumption: 2 : 1 : 1 with video favoured, because the paper's (w_I, w_V, w_A) values are not recovered
LOSS_WEIGHTS = {"image": 1.0, "video": 2.0, "audio": 1.0}

CONFIG = dataclasses.replace(_BASE.CONFIG, modalities=_BASE.modalities(LOSS_WEIGHTS))
