"""Paper §4 mixed multimodal training, the image-weighted loss weighting (project-page radar figure):
multimodal_mixed.py with the image loss weighted up. NOT the paper's setting: unconditional here, the
paper's runs are text-conditioned (see multimodal_mixed.py for everything this file shares).

Paper's numbers (flow matching -> Self-Flow, 1M steps, read off the radar figure, approximate;
../shared/reference/selfflow_paper.md §3.7): image FID 2.77 -> 2.70, video FVD 93.8 -> 90.2, audio FAD 156.2 -> 152.0.

Commands (from the repository root):

    .venv/bin/selfflow train paper_repro/configs/multimodal_image_weighted.py --run-dir runs/multimodal_image_weighted
    .venv/bin/selfflow train paper_repro/configs/multimodal_image_weighted.py --run-dir runs/multimodal_image_weighted_fm \\
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

# assumption: 2 : 1 : 1 with image favoured, because the paper's (w_I, w_V, w_A) values are not recovered
LOSS_WEIGHTS = {"image": 2.0, "video": 1.0, "audio": 1.0}

CONFIG = dataclasses.replace(_BASE.CONFIG, modalities=_BASE.modalities(LOSS_WEIGHTS))
