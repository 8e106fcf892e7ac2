"""Paper Table 2 / Fig. 1a: text-to-image with the 625M FLUX-style backbone, 1M steps. One run serves
rows 9 and 10 of paper_repro/README.md (its 200k-step checkpoints are Fig. 1a's points) and is the
depth-21 point of the text-to-image scaling sweep (paper_repro/sweeps/scaling_text_to_image.py).
Its backbone (and its text-encoder assumption) is shared by text_to_video_625m.py,
text_to_audio_625m.py, text_to_video_audio.py and robotics_rt1_text_video_action.py.

Paper's numbers (../shared/reference/selfflow_paper.md §3.3; internal 20M text-image pairs, metrics
on an internal hold-out set without guidance):
    Table 2 at 1M steps (FID / FD-DINOv2 / CLIP): Self-Flow 3.61 / 167.98 / 30.88; flow matching
        4.08 / 204.49 / 30.66; REPA (DINOv2) 3.92 / 173.35 / 30.67; SRA 3.70 / 176.79 / 30.78;
        REPA w/ SigLIP 2 3.97 / 196.75 / 30.68 (sFID, IS, precision, recall not recovered)
    Fig. 1a, FID at 200k / 400k / 600k / 800k / 1M steps (decoded from the figure): Self-Flow
        4.22 / 3.84 / 3.76 / 3.70 / 3.61, REPA 4.39 / 4.05 / 3.96 / 3.96 / 3.92 ("~2.8x faster")

Commands (from the repository root):

    .venv/bin/selfflow train paper_repro/configs/text_to_image_625m.py --run-dir runs/text_to_image_625m
    # the baselines of Table 2 (same data; REPA needs the DINOv2 features below):
    .venv/bin/selfflow train paper_repro/configs/text_to_image_625m.py --run-dir runs/text_to_image_625m_fm \\
        --set objective.kind=flow_matching
    .venv/bin/selfflow train paper_repro/configs/text_to_image_625m.py --run-dir runs/text_to_image_625m_repa \\
        --set objective.kind=repa --set objective.encoder=precomputed --set objective.student_layer=6 \\
        --set objective.gamma=0.5
    .venv/bin/selfflow train paper_repro/configs/text_to_image_625m.py --run-dir runs/text_to_image_625m_sra \\
        --set objective.kind=sra --set objective.student_layer=6 --set objective.teacher_layer=15 \\
        --set objective.gamma=0.5
    # assumption for both: REPA's block 8 of 28 (weight 0.5) and SRA's blocks 8 -> 20 of 28 (weight 0.5)
    # scaled to 21 blocks (round(0.3·21) = 6, round(0.7·21) = 15), because the paper's T2I baseline
    # settings are not recovered. REPA w/ SigLIP 2 has no encoder port here.
    .venv/bin/selfflow sample --run-dir runs/text_to_image_625m --out runs/text_to_image_625m/samples

Data: one "latents" directory, data/t2i_latents, whose examples are {"image": float32 (32, 32, 4) =
SD-VAE latent of a 256 px image × 0.18215 (the paper's token table: 256 tokens of 16 for T2I, as
ImageNet), "text": float32 (128, 4096) and "text_mask": uint8 (128,) = your text encoder's outputs,
"label": int32 0}. Write it from a folder of images with text-encoder sidecars (data/t2i_pairs/all/
<name>.png beside <name>.npz holding "embedding" (rows, 4096) and "length" or "mask"; README, "Text
conditioning"); `selfflow prepare` cannot name a source with text sidecars on its command line, so
from Python (`selfflow prepare`'s own pieces; drop `pre=` unless you train REPA):

    from dataclasses import replace
    from data_pipelines import latents, sources
    from selfflow.autoencoders import load_autoencoder
    from selfflow.autoencoders.latents import EncodedSource, manifest_entry
    from selfflow.config import SourceConfig, load_config_file
    from selfflow.encoders.precomputed import FeatureWriter
    cfg = load_config_file("paper_repro/configs/text_to_image_625m.py")
    pairs = SourceConfig("t2i", "image_folder", path="data/t2i_pairs", resize="adm", text="features")
    raw = sources.build(pairs, replace(cfg.data, image_size=256), cfg.seed)
    vae = "PATH/sd-vae-ft-ema/diffusion_pytorch_model.safetensors"
    ae = load_autoencoder(vae, "sd-vae")
    dino = FeatureWriter("dinov2:PATH/dinov2-base/model.safetensors", (16, 16))  # REPA's features
    latents.prepare(EncodedSource(raw, ae, pre=dino), "data/t2i_latents", name="t2i",
                    modality="image+text", autoencoder=manifest_entry(ae, vae), resume=True)

The paper's data (20M internal pairs) and text encoder are not available; no text encoder is part of
this repository. The paper's metrics are not computed here: `selfflow fid-samples` samples only
class-conditional [image] runs (not captions), and there is no CLIP score.
Hardware: GPUs or TPUs; estimate in paper_repro/README.md, "Compute estimates". Not reported by the paper.
Parameters (this config): 691.8M + 5.3M projector (paper: ~625M, +10.7 %). The stated shape is kept
(width 1152, 16 heads, MLP ratio 4, 7 double-stream + 14 single-stream blocks); the difference is the
block internals: ours are SiT blocks with their own adaLN (6D² each) and GELU MLPs, a double-stream
block is two of them, where FLUX.2 shares its modulation across blocks and uses SwiGLU MLPs; 18.1M of
ours are the 4096-wide text input projection, pooled-text MLP and (unused) text output layer.
`--set model.double_stream_blocks=5` gives 644.0M (+3.0 %) if matching the count matters more than
the stated split; the FLOPs per token do not change (a token passes one stream).
Smoke test of this file's wiring on any data of the same shapes: add `--set train.steps=2`
(and a small model: `--set model.depth=2 model.hidden_size=64 model.num_heads=4
model.double_stream_blocks=1 objective.student_layer=1 objective.teacher_layer=2`).
"""

import dataclasses

from selfflow.config import (
    Config,
    DataConfig,
    LayoutConfig,
    ModalityConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    SampleConfig,
    SourceConfig,
    TrainConfig,
)

# The text encoder's outputs, one token per row, padded to TEXT_TOKENS rows (data.text_tokens).
# assumption: 4096-wide rows (T5-v1.1-XXL's width, FLUX.1's text encoder) because the paper's text encoder is not identified
TEXT_DIM = 4096
# assumption: at most 128 rows because the captions' length is not stated (FLUX.1 pads to 256 or 512; rows cost tokens)
TEXT_TOKENS = 128
TEXT_SHAPES = {"text": (TEXT_TOKENS, TEXT_DIM), "text_mask": (TEXT_TOKENS,)}

# One example of the prepared data: the SD-VAE latent of a 256 px image (256 / 8 = 32), 4 channels.
DATA_SHAPES = {"image": (32, 32, 4), **TEXT_SHAPES}

# The 625M FLUX-style backbone (shared by every text-conditioned config of paper_repro).
MODEL = ModelConfig(
    preset="XL/2",
    depth=21,
    hidden_size=1152,
    num_heads=16,
    mlp_ratio=4.0,  # stated: width 1152, 16 heads, MLP ratio 4, 7 + 14 = 21 blocks
    positions="rope",  # stated: 3D RoPE, 24 channels per (t, h, w) axis = head dim 72
    rope_theta=10000.0,  # assumption: 10000 (FLUX's RoPE base) because the paper does not state it
    dtype="bfloat16",  # stated (BF16 mixed precision)
    text_pooled=True,  # assumption: the masked mean of the text tokens joins the adaLN conditioning (FLUX's pooled vector) because how the paper's model pools its text is not stated
    double_stream_blocks=7,  # stated: 7 double-stream blocks, then 14 single-stream ones
)

OPTIM = OptimConfig(
    learning_rate=1e-4,
    b1=0.9,
    b2=0.999,
    weight_decay=0.0,  # assumption: the ImageNet (REPA/SRA protocol) values, because the text-to-image optimiser is not recovered
    grad_clip_norm=1.0,  # stated (README)
    warmup_steps=0,  # assumption: no warm-up because none is stated (as for ImageNet)
)

# Text-conditioning settings of every text config here.
TEXT_DROPOUT = 0.1  # assumption: 10 % caption dropout (the SiT/REPA label-dropout default) because the paper's is not stated

CONFIG = Config(
    seed=0,  # assumption: any seed, because the paper's training seed is not stated
    # stated: 2×2 patches of the SD-VAE latent (the paper's token table: 256 tokens of 16 for T2I)
    model=dataclasses.replace(MODEL, patch_size=2),
    objective=ObjectiveConfig(
        kind="self_flow",
        gamma=0.8,  # stated
        student_layer=6,
        teacher_layer=15,  # assumption: round(0.3·21) and round(0.7·21), because only the 0.3·D / 0.7·D rule is stated for this model
        time_distribution="uniform",
        time_shift=1.0,  # stated: uniform p(t) for text-to-image (it beat logit-normal there)
        label_dropout=TEXT_DROPOUT,  # every label is 0; dropped with the caption (one uniform), so the null branch is unconditional
        text_dropout=TEXT_DROPOUT,
        ema_decay=0.9999,  # stated
    ),
    optim=OPTIM,
    data=DataConfig(
        sources=(SourceConfig("t2i", "latents", path="data/t2i_latents"),),
        num_classes=1,  # text-conditioned: one class, every label 0
        image_size=32,  # the latent grid (256 px / 8); the latents source yields its own shapes
        text_tokens=TEXT_TOKENS,
        worker_count=8,  # loader setting, not a paper value
    ),
    train=TrainConfig(
        steps=1_000_000,  # stated
        log_every=100,
        checkpoint_every=10_000,
        keep_checkpoints=3,  # bookkeeping
        keep_every=200_000,  # keeps Fig. 1a's 200k / 400k / 600k / 800k checkpoints
    ),
    # stated: 50 steps and guidance 3.5 for qualitative image samples (metrics: no guidance, sampler not recovered)
    sample=SampleConfig(steps=50, cfg_scale=3.5, per_class=8),
    modalities=(ModalityConfig("image", mask_ratio=0.25),),  # stated for images
    layouts=(
        # assumption: global batch 256 because the T2I batch is not stated; 256 is the REPA/SRA protocol's
        LayoutConfig("text_to_image", ("text:condition", "image"), weight=1.0, batch_size=256),
    ),
)
