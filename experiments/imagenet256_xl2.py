"""ImageNet 256×256, class-conditional Self-Flow with SiT-XL/2 on SD-VAE latents: the model of the
released checkpoint (black-forest-labs/Self-Flow, ``selfflow_imagenet256.pt``) and the paper's recipe.

Needs data and accelerators that are not here: ImageNet-1k train encoded once with the SD-VAE
(``stabilityai/sd-vae-ft-ema``) into a ``latents`` directory whose examples are
{"image": float32 (32, 32, 4) = VAE latent (NHWC) × 0.18215, "label": int in [0, 1000)}; write it with
``data_pipelines.latents.prepare(source, "data/imagenet256_latents", name="imagenet256",
modality="image", encode=...)`` from any Grain source of your images and an ``encode`` that runs the VAE.

Commands:

    # fine-tune the released checkpoint (step 0 = its weights, online and EMA):
    selfflow import --official checkpoints/selfflow_imagenet256.pt --config experiments/imagenet256_xl2.py --out runs/in256
    selfflow train experiments/imagenet256_xl2.py --run-dir runs/in256
    # or train from scratch: the second command alone.
    # 50k samples for the ADM evaluator (FID/IS/precision/recall), as the official sampler:
    selfflow fid-samples --official checkpoints/selfflow_imagenet256.pt --vae PATH/sd-vae-ft-ema --out samples_50000.npz

Recipe (../shared/reference/selfflow_paper.md §1-2): SiT-XL/2 (depth 28, width 1152, 16 heads, patch 2,
~675M parameters), per-token adaLN; γ = 0.8, mask ratio 0.25, student block 8, teacher block 20 (EMA
teacher, decay 0.9999, sees every token at min(t, s)), uniform p(t), label dropout 0.1; AdamW lr 1e-4,
betas (0.9, 0.999), no weight decay, grad clip 1; global batch 256 (our assumption: the SiT/REPA batch,
not stated for Self-Flow); bf16 matmuls; 4M steps. Paper: FID 5.7 at 4M steps without guidance.
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

CONFIG = Config(
    seed=0,
    model=ModelConfig(preset="XL/2", dtype="bfloat16"),
    objective=ObjectiveConfig(
        kind="self_flow",
        gamma=0.8,
        mask_ratio=0.25,
        student_layer=8,
        teacher_layer=20,
        time_distribution="uniform",
        label_dropout=0.1,
        ema_decay=0.9999,
    ),
    optim=OptimConfig(learning_rate=1e-4, b1=0.9, b2=0.999, weight_decay=0.0, grad_clip_norm=1.0),
    data=DataConfig(
        sources=(SourceConfig(name="imagenet256", kind="latents", path="data/imagenet256_latents"),),
        num_classes=1000,
        worker_count=8,
    ),
    train=TrainConfig(
        steps=4_000_000, batch_size=256, log_every=100, checkpoint_every=10_000, keep_checkpoints=3
    ),
    sample=SampleConfig(steps=250, cfg_scale=1.0, per_class=1),
)
