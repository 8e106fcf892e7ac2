"""The paper's scaling study (project-page figures scaling_score / scaling_flops): text-to-image at
depth 8 / 14 / 21 / 28 (the paper's 290M / 420M / 625M / 1B), Self-Flow against REPA, 1M steps
each, on paper_repro/configs/text_to_image_625m.py (its data, text encoder, width 1152 and 16 heads;
the depth-21 Self-Flow run is that file's run).

Paper's numbers (CLIP score at 1M steps, Self-Flow vs REPA, decoded from the figure;
../shared/reference/selfflow_paper.md §3.6): depth 8: 30.14 vs 30.00; depth 14: 30.60 vs 30.43;
depth 21: 30.88 vs 30.67; depth 28: 30.95 vs 30.76. The 625M Self-Flow model beats the 1B REPA one.

Commands (from the repository root):

    .venv/bin/selfflow sweep paper_repro/sweeps/scaling_text_to_image.py --dry-run
    .venv/bin/selfflow sweep paper_repro/sweeps/scaling_text_to_image.py --out runs/scaling_text_to_image
    .venv/bin/selfflow compare runs/scaling_text_to_image --out runs/scaling_text_to_image/curves.png --x compute

Data: as text_to_image_625m.py, with the DINOv2-B features REPA reads (its prepare with `pre=`).
The CLIP score is not implemented here (the runs log the training and alignment losses).
Parameters (compute.py; "Compute estimates"): 285M / 477M / 692M / 907M at depth 8 / 14 / 21 / 28
against the paper's 290M / 420M / 625M / 1B: the blocks differ (see text_to_image_625m.py) and the
split into double- and single-stream blocks at depths other than 21 is not stated.
Hardware: estimate in paper_repro/README.md, "Compute estimates". Two checks against the paper's
FLOPs-axis figure (scaling_flops, decoded; §1.3, §3.6): Self-Flow costs 1.25-1.30× REPA's FLOPs per
step in compute.py, the figure's 1.27-1.31 at depths 8 / 14 / 21; the figure's depth-21 Self-Flow
reaches CLIP ≈30.98 at ≈1.07e21 FLOPs and depth-28 REPA ≈30.83 at ≈1.12e21, past 1M steps on runs
that end near 1.5M, so at least ≈7e14 FLOPs per step, about 2.7× compute.py's 2.6e14 and 2.8e14 at
batch 256 and 128 caption rows: the paper's batch, caption length or FLOP count differs (not known which).
"""

from selfflow.sweep import Sweep

DEPTHS = (8, 14, 21, 28)  # stated: depth 8 / 14 / 21 / 28 (290M / 420M / 625M / 1B)


def double_stream(depth: int) -> int:
    """Double-stream blocks at ``depth``: a third of the blocks, rounded (7 of 21 is stated)."""
    return round(depth / 3)


SWEEP = Sweep(
    base="../configs/text_to_image_625m.py",
    common=(
        "train.steps=1000000",  # stated: the scaling curves run to 1M steps (the FLOPs-axis version to ~1.5M)
        "train.keep_every=0",
        # layers follow the stated 0.3·D / 0.7·D rule at every depth (8 -> 2/6, 14 -> 4/10, 21 -> 6/15, 28 -> 8/20)
        "objective.student_layer=None",
        "objective.teacher_layer=None",
    ),
    # assumption: a third of the blocks double-stream (3 / 5 / 7 / 9) because the split is stated only at depth 21 (7 + 14)
    # assumption: REPA aligns block round(0.3·D) with DINOv2-B at weight 0.5 (REPA's 8 of 28 for SiT-XL) because the paper's REPA settings for this sweep are not recovered
    variants={
        **{
            f"self_flow_depth{d}": (f"model.depth={d}", f"model.double_stream_blocks={double_stream(d)}")
            for d in DEPTHS
        },
        **{
            f"repa_depth{d}": (
                f"model.depth={d}",
                f"model.double_stream_blocks={double_stream(d)}",
                "objective.kind=repa",
                "objective.encoder=precomputed",
                "objective.gamma=0.5",
            )
            for d in DEPTHS
        },
    },
    seeds=(0,),
    metrics=("loss", "fm_loss", "rep_loss"),
)
