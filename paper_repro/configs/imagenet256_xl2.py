"""Paper Table 1: class-conditional ImageNet 256×256, Self-Flow on SiT-XL/2 (SD-VAE latents), 4M steps.

One training run serves three rows of paper_repro/README.md: Table 1 without guidance, the same
model with guidance, and (with overrides) the vanilla flow-matching baseline and the linear probe.

Paper's numbers (../shared/reference/selfflow_paper.md §3.2; 50k samples, 250-step SDE, ADM evaluator):
    no guidance (Table 1, matches the HF model card): FID 5.70, sFID 4.97, IS 151.40, precision 0.72,
        recall 0.67 at 4M steps (vanilla SiT-XL/2 at 7M steps: FID 8.30, sFID 6.30, IS 130.57, 0.69, 0.67)
    with guidance (as reported by arXiv 2607.02508 Table 4; scale and interval not stated there):
        FID 1.47, sFID 4.54, IS 305.4, precision 0.80, recall 0.61 at 4M steps

Commands (from the repository root):

    .venv/bin/selfflow train paper_repro/configs/imagenet256_xl2.py --run-dir runs/imagenet256_xl2
    # Table 1, no guidance (the paper's setting: SiT Euler-Maruyama SDE, 250 evaluations, cfg 1):
    .venv/bin/selfflow fid-samples --run-dir runs/imagenet256_xl2 --vae PATH/sd-vae-ft-ema \\
        --out runs/imagenet256_xl2/fid_cfg1.npz --num 50000 --steps 250 --cfg 1.0
    # with guidance (assumption: cfg 1.8 on τ in [0, 0.7], REPA's setting for its 1.42 at 4M steps;
    # the scale behind 1.47 is not stated):
    .venv/bin/selfflow fid-samples --run-dir runs/imagenet256_xl2 --vae PATH/sd-vae-ft-ema \\
        --out runs/imagenet256_xl2/fid_cfg1.8.npz --num 50000 --steps 250 --cfg 1.8 --guidance-high 0.7
    # score either file with the ADM evaluator (openai/guided-diffusion, evaluations/evaluator.py):
    python evaluator.py VIRTUAL_imagenet256_labeled.npz runs/imagenet256_xl2/fid_cfg1.npz
    # vanilla flow-matching baseline of Table 1 (7M steps):
    .venv/bin/selfflow train paper_repro/configs/imagenet256_xl2.py --run-dir runs/imagenet256_xl2_fm \\
        --set objective.kind=flow_matching --set train.steps=7000000

Data: ImageNet-1k train (1.28M images), centre-cropped to 256×256 and encoded once with the SD-VAE
(stabilityai/sd-vae-ft-ema) into a "latents" directory whose examples are {"image": float32
(32, 32, 4) = VAE latent (NHWC) × 0.18215, "label": int32 in [0, 1000)}, written by
``selfflow prepare SOURCE --out data/imagenet256_latents --encode sd-vae --weights FILE`` (the JAX
SD-VAE, selfflow/autoencoders; add ``--features dinov2:PATH`` for REPA, paper_repro/README.md row 5).
fid-samples decodes with the autoencoder the manifest names (``--vae DIR``: diffusers' as a cross-check).
Hardware: GPUs or TPUs; the estimate of training compute (not measured) is in paper_repro/README.md,
"Compute estimates" (`.venv/bin/python paper_repro/compute.py`). The paper does not report its hardware.
Parameters (this config): 674.8M + 5.3M projector (paper: ~675M).
Smoke test of this file's wiring on any data of the same shapes: add `--set train.steps=2 --set train.batch_size=8`.
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

# One example of the prepared data: the SD-VAE latent of a 256 px image (256 / 8 = 32), 4 channels.
DATA_SHAPES = {"image": (32, 32, 4)}

CONFIG = Config(
    seed=0,  # assumption: any seed, because the paper's training seed is not stated
    # SiT-XL/2: depth 28, width 1152, 16 heads, patch 2, MLP ratio 4 (stated); BF16 mixed precision (stated)
    model=ModelConfig(preset="XL/2", dtype="bfloat16", positions="sincos", time_embedding="sit"),
    objective=ObjectiveConfig(
        kind="self_flow",
        gamma=0.8,  # stated (appendix)
        mask_ratio=0.25,  # stated (image)
        student_layer=8,
        teacher_layer=20,  # stated (official README: blocks 8 and 20 of 28)
        time_distribution="uniform",
        time_shift=1.0,  # stated: uniform p(t) for ImageNet
        label_dropout=0.1,  # assumption: 0.1 because the checkpoint has a null class (1000) and 0.1 is the SiT/REPA default
        ema_decay=0.9999,  # stated: the teacher is the EMA of the student
    ),
    optim=OptimConfig(
        learning_rate=1e-4,  # assumption: 1e-4 constant because the REPA/SRA protocols Self-Flow compares against use it
        b1=0.9,
        b2=0.999,  # assumption: AdamW defaults, because the paper states AdamW but not its betas
        weight_decay=0.0,  # assumption: 0 because the REPA/SRA protocols use none
        grad_clip_norm=1.0,  # stated (official README)
        warmup_steps=0,  # assumption: no warm-up because the REPA/SRA protocols use none
    ),
    data=DataConfig(
        sources=(SourceConfig(name="imagenet256", kind="latents", path="data/imagenet256_latents"),),
        num_classes=1000,
        image_size=32,  # the latent grid (256 px / 8); the latents source yields its own shapes
        worker_count=8,  # loader setting, not a paper value
    ),
    train=TrainConfig(
        steps=4_000_000,  # stated
        batch_size=256,  # assumption: global batch 256 because that is the SiT/REPA batch; Self-Flow's is not stated
        log_every=100,
        checkpoint_every=10_000,
        keep_checkpoints=3,  # bookkeeping, not paper values
        keep_every=500_000,  # keeps the 2M-step checkpoint for the linear probe row
    ),
    # End-of-training samples use the paper's FID sampler: SiT SDE, 250 evaluations, no guidance (stated).
    sample=SampleConfig(
        method="sde", steps=250, cfg_scale=1.0, per_class=1, guidance_low=0.0, guidance_high=0.7
    ),
)
