"""ImageNet 512×512, class-conditional Self-Flow on SiT-XL/2 (SD-VAE latents), 1M steps, with guidance.

Paper's numbers: none that are certainly the paper's. arXiv 2607.02508 (Table 5) lists Self-Flow at
512 px, 1M steps, with guidance: FID 2.12, sFID 4.10, IS 280.2, precision 0.83, recall 0.58; whether
that row comes from the Self-Flow paper or is that paper's own reproduction is not established
(../shared/reference/selfflow_paper.md §3.2 and open question 11). Guidance scale not stated.

Commands (from the repository root):

    .venv/bin/selfflow train paper_repro/configs/imagenet512_xl2.py --run-dir runs/imagenet512_xl2
    # assumption: cfg 1.8 on τ in [0, 0.7] as at 256 px, because the 512 px guidance is not stated; tune it
    .venv/bin/selfflow fid-samples --run-dir runs/imagenet512_xl2 --vae PATH/sd-vae-ft-ema \\
        --out runs/imagenet512_xl2/fid_cfg1.8.npz --num 50000 --steps 250 --cfg 1.8 --guidance-high 0.7
    python evaluator.py VIRTUAL_imagenet512.npz runs/imagenet512_xl2/fid_cfg1.8.npz   # ADM evaluator

Data: ImageNet-1k train centre-cropped to 512×512 and encoded once with the SD-VAE
(stabilityai/sd-vae-ft-ema) into a "latents" directory of {"image": float32 (64, 64, 4) = latent (NHWC)
× 0.18215, "label": int32 in [0, 1000)}, written with ``data_pipelines.latents.prepare(...,
modality="image", encode=...)`` (see imagenet256_xl2.py). 1024 tokens per image.
Hardware: GPUs or TPUs; estimate in paper_repro/README.md, "Compute estimates". Not reported by the paper.
Parameters (this config): 674.8M + 5.3M projector (the SiT-XL/2 of Table 1).
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

# One example: the SD-VAE latent of a 512 px image (512 / 8 = 64), 4 channels.
DATA_SHAPES = {"image": (64, 64, 4)}

CONFIG = Config(
    seed=0,  # assumption: any seed, because the paper's training seed is not stated
    model=ModelConfig(preset="XL/2", dtype="bfloat16"),  # SiT-XL/2 as at 256 px; BF16 stated
    objective=ObjectiveConfig(
        kind="self_flow",
        gamma=0.8,
        mask_ratio=0.25,  # stated (image)
        student_layer=8,
        teacher_layer=20,  # stated for the 28-block SiT-XL
        time_distribution="uniform",  # stated for ImageNet
        time_shift=1.0,  # assumption: no shift, because none is stated for ImageNet at either resolution
        label_dropout=0.1,  # assumption: 0.1 because it is the SiT/REPA default (as at 256 px)
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
        sources=(SourceConfig(name="imagenet512", kind="latents", path="data/imagenet512_latents"),),
        num_classes=1000,
        image_size=64,
        worker_count=8,
    ),
    train=TrainConfig(
        steps=1_000_000,  # as the 512 px row of arXiv 2607.02508 Table 5
        batch_size=256,  # assumption: 256 because it is the SiT/REPA batch; not stated for Self-Flow
        log_every=100,
        checkpoint_every=10_000,
        keep_checkpoints=3,  # bookkeeping
    ),
    sample=SampleConfig(method="sde", steps=250, cfg_scale=1.0, per_class=1, guidance_high=0.7),
)
