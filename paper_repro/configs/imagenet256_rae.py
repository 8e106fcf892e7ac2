"""Paper Table 1 / Fig. 4a (RAE rows): class-conditional ImageNet 256×256 on RAE latents, 1M steps.

Paper's numbers (../shared/reference/selfflow_paper.md §3.2, per two secondary sources): FID 3.24 for
the flow-matching baseline and 2.95 with Self-Flow, both at 1M steps. Sampler, guidance and sample
count of these two numbers are not recovered (assumed: as Table 1, 50k samples, no guidance).

Commands (from the repository root):

    .venv/bin/selfflow train paper_repro/configs/imagenet256_rae.py --run-dir runs/imagenet256_rae
    # the baseline row (3.24):
    .venv/bin/selfflow train paper_repro/configs/imagenet256_rae.py --run-dir runs/imagenet256_rae_fm \\
        --set objective.kind=flow_matching

Data: ImageNet-1k train encoded once with a representation autoencoder (RAE: a frozen DINOv2-B
encoder; 256 px -> a 16×16 grid of 768-dim features) into a "latents" directory of {"image":
float32 (16, 16, 768) normalised RAE latents, "label": int32 in [0, 1000)}, written from Python with
``data_pipelines.latents.prepare(..., modality="image", encode=...)``. The RAE encoder and decoder are
not part of this repository, and `selfflow fid-samples --vae` decodes only diffusers AutoencoderKL
latents: decoding the sampled RAE latents to pixels (and so the FID) is not supported here.
Hardware: GPUs or TPUs; estimate in paper_repro/README.md, "Compute estimates". Not reported by the paper.
Parameters (this config): 676.5M + 5.3M projector (the paper's RAE backbone is not recovered).
"""

from selfflow.config import (
    Config,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    SampleConfig,
    SourceConfig,
    TrainConfig,
)

# One example: a 16×16 grid of 768-dim RAE (DINOv2-B) latents of a 256 px image.
DATA_SHAPES = {"image": (16, 16, 768)}

CONFIG = Config(
    seed=0,  # assumption: any seed, because the paper's training seed is not stated
    model=ModelConfig(
        preset="XL/2",  # assumption: the SiT-XL trunk (depth 28, width 1152, 16 heads) because the paper's RAE backbone is not recovered
        patch_size=1,  # assumption: patch 1 because the 16×16 RAE grid already gives the 256 tokens of Table 1's setting
        dtype="bfloat16",  # stated (BF16 mixed precision)
    ),
    objective=ObjectiveConfig(
        kind="self_flow",
        gamma=0.8,
        mask_ratio=0.25,  # stated (image)
        student_layer=8,
        teacher_layer=20,  # stated for the 28-block SiT-XL (0.3·D / 0.7·D)
        time_distribution="uniform",
        time_shift=6.93,  # assumption: sqrt(256·768 / 4096) = 6.93, RAE's dimension-dependent shift, because the paper's RAE shift is not recovered (a third-party note lists 6.93 among its image shifts)
        label_dropout=0.1,  # assumption: 0.1 because it is the SiT/REPA default, as for Table 1
        ema_decay=0.9999,  # stated
    ),
    optim=OptimConfig(
        learning_rate=1e-4,
        b1=0.9,
        b2=0.999,
        weight_decay=0.0,  # assumption: the REPA/SRA protocol values, because Self-Flow's are not recovered
        grad_clip_norm=1.0,  # stated
        warmup_steps=0,  # assumption: no warm-up because the REPA/SRA protocols use none
    ),
    data=DataConfig(
        sources=(SourceConfig(name="imagenet256_rae", kind="latents", path="data/imagenet256_rae_latents"),),
        num_classes=1000,
        image_size=16,
        worker_count=8,
    ),
    train=TrainConfig(
        steps=1_000_000,  # stated (the RAE comparison is at 1M steps)
        batch_size=256,  # assumption: 256 because it is the SiT/REPA batch used for Table 1
        log_every=100,
        checkpoint_every=10_000,
        keep_checkpoints=3,  # bookkeeping
    ),
    sample=SampleConfig(
        method="sde", steps=250, cfg_scale=1.0, per_class=1
    ),  # assumption: Table 1's sampler, because the RAE rows' sampler is not recovered
)
