"""Closest runnable proxy of the paper's scaling study (project-page figures scaling_score /
scaling_flops). NOT the paper's setting: the paper scales a text-to-image FLUX-style backbone
(290M / 420M / 625M / 1B parameters at depth 8 / 14 / 21 / 28, CLIP score against REPA) and text
conditioning is not implemented here. This sweep scales the class-conditional ImageNet-256 recipe
of paper_repro/configs/imagenet256_xl2.py over the same depths at the same width (1152, 16 heads),
Self-Flow against flow matching (REPA is not implemented), 1M steps each as the paper's curves.
Our parameter counts at these depths (SiT blocks, no text stream) are smaller than the paper's:
see paper_repro/README.md, "Compute estimates".

Paper's numbers (CLIP score at 1M steps, Self-Flow vs REPA; ../shared/reference/selfflow_paper.md §3.6):
depth 8: 30.14 vs 30.00; depth 14: 30.60 vs 30.43; depth 21: 30.88 vs 30.67; depth 28: 30.95 vs 30.76.

Commands (from the repository root):

    .venv/bin/selfflow sweep paper_repro/sweeps/scaling_proxy.py --dry-run
    .venv/bin/selfflow sweep paper_repro/sweeps/scaling_proxy.py --out runs/scaling_proxy
    .venv/bin/selfflow compare runs/scaling_proxy --out runs/scaling_proxy/curves.png --x compute

Data and hardware: as imagenet256_xl2.py; estimate in paper_repro/README.md, "Compute estimates".
"""

from selfflow.sweep import Sweep

SWEEP = Sweep(
    # assumption: class-conditional ImageNet-256 because the paper's text-to-image setting needs text conditioning
    base="../configs/imagenet256_xl2.py",
    common=(
        "train.steps=1000000",  # the paper's scaling curves run to 1M steps (FLOPs-axis version to ~1.5M)
        "train.keep_every=0",
        # layers follow the stated 0.3·D / 0.7·D rule at every depth (8 -> 2/6, 14 -> 4/10, 21 -> 6/15, 28 -> 8/20)
        "objective.student_layer=None",
        "objective.teacher_layer=None",
    ),
    # assumption: flow matching as the comparison because REPA (the paper's comparison) is not implemented
    variants={"self_flow": (), "flow_matching": ("objective.kind=flow_matching",)},
    grid={"model.depth": (8, 14, 21, 28)},  # stated depths; width 1152 and 16 heads of the paper's backbone
    seeds=(0,),
    metrics=("loss", "fm_loss", "rep_loss"),
)
