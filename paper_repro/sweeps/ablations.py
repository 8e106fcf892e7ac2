"""Paper Fig. 11a / §4.4 / App. H ablations that this framework can express, as one sweep over the
Table 1 config (paper_repro/configs/imagenet256_xl2.py) shortened to 400k steps.

Paper's numbers (../shared/reference/selfflow_paper.md §3.9; exact FIDs not recovered, only effects):
    no representation loss (DTS only)           FID worse by > 4, the largest drop      -> run dts_only
    no masking (one timestep, L_rep kept)       FID worse by > 1                        -> run no_masking
    student layer l in {4, 8, 12} (D = 28)      similar                                  -> student_layer_4 / _12
    teacher layer too shallow                   weak semantics, worse                    -> teacher_layer_14 / _24
    mask ratio                                  image 0.25 chosen; no image table recovered -> mask_ratio_0.1 / _0.5
    gamma                                       0.8 chosen; no sweep recovered          -> gamma_0.5 / _1.2
    DTS alone vs vanilla flow matching          DTS alone slightly better                -> dts_only vs flow_matching
    second timestep s in [t - 0.2, t] (SRA-like) about as bad as no masking              -> time_gap_0.2
    l1 instead of cosine for L_rep              unstable late in training                -> l1
Not expressible here (no config key): "full masking" (masked tokens at t = 1) and Diffusion-Forcing
per-token timesteps (Fig. 2b).

Commands (from the repository root):

    .venv/bin/selfflow sweep paper_repro/sweeps/ablations.py --dry-run     # the runs and their overrides
    .venv/bin/selfflow sweep paper_repro/sweeps/ablations.py --out runs/ablations
    .venv/bin/selfflow sweep paper_repro/sweeps/ablations.py --out runs/ablations --only dts_only

Every run is the Table 1 recipe with its overrides; FID then needs `selfflow fid-samples` on each
run directory (runs/ablations/<run>) as in imagenet256_xl2.py (the paper's ablation sample count is
not recovered; 10k samples is the SRA2SF ablation protocol).
Data and hardware: as imagenet256_xl2.py; estimate in paper_repro/README.md, "Compute estimates".

What "no_masking" means here: mask ratio 0, so the student sees every token at t while the teacher
still sees min(t, s) with s drawn independently (the L_rep target stays cleaner); the paper's exact
variant is not recovered.
"""

from selfflow.sweep import Sweep

SWEEP = Sweep(
    base="../configs/imagenet256_xl2.py",
    # assumption: 400k steps, because the paper's ablation length is not recovered (SRA2SF reports its ablations at 400k and 800k)
    common=("train.steps=400000", "train.keep_every=0"),
    variants={
        "self_flow": (),
        "flow_matching": ("objective.kind=flow_matching",),
        "dts_only": ("objective.kind=dts",),
        "no_masking": ("objective.mask_ratio=0.0",),
        "mask_ratio_0.1": (
            "objective.mask_ratio=0.1",
        ),  # assumption: 0.1 / 0.5 bracket 0.25, because the image grid is not recovered
        "mask_ratio_0.5": ("objective.mask_ratio=0.5",),
        "gamma_0.5": (
            "objective.gamma=0.5",
        ),  # assumption: 0.5 and 1.2 because 0.5 is REPA's and SRA2SF's alignment weight and 1.2 brackets 0.8 from above
        "gamma_1.2": ("objective.gamma=1.2",),
        "student_layer_4": ("objective.student_layer=4",),  # stated grid (App. H): 4, 8, 12
        "student_layer_12": ("objective.student_layer=12",),
        "teacher_layer_14": (
            "objective.teacher_layer=14",
        ),  # assumption: 0.5·D and ~0.85·D, because the teacher grid is not recovered
        "teacher_layer_24": ("objective.teacher_layer=24",),
        "time_gap_0.2": ("objective.time_gap=0.2",),  # masking kept: only s is restricted
        "l1": ("objective.rep_distance=l1",),
    },
    seeds=(0,),
    metrics=("loss", "fm_loss", "rep_loss", "cos_sim"),
)
