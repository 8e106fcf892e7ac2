"""Paper §4 mixed multimodal training (appendix table of the five loss weightings): one shared backbone
trained on image, video and audio batches, here with equal loss weights (w_I, w_V, w_A) = (1, 1, 1).
NOT the paper's setting: the paper's image, video and audio data are text-conditioned (text-image
pairs, text-video, text-audio) and this framework has no text conditioning, so this run is
unconditional. It keeps everything else the paper states: the modality mixture, batch sizes, mask
ratios, autoencoder token geometry and the shared 21-block trunk.

The three weightings shown on the project page (image-, video-, audio-weighted) are
multimodal_image_weighted.py, multimodal_video_weighted.py and multimodal_audio_weighted.py, which
change only the loss weights of this file.

Paper's numbers: the paper reports a relative improvement of Self-Flow over flow matching for every
modality in all five weightings (appendix table); the values of this table and the five
(w_I, w_V, w_A) were not recovered (../shared/reference/selfflow_paper.md §3.7, open question 7).

Commands (from the repository root):

    .venv/bin/selfflow train paper_repro/configs/multimodal_mixed.py --run-dir runs/multimodal_mixed
    # the flow-matching side of the comparison:
    .venv/bin/selfflow train paper_repro/configs/multimodal_mixed.py --run-dir runs/multimodal_mixed_fm \\
        --set objective.kind=flow_matching
    .venv/bin/selfflow eval --run-dir runs/multimodal_mixed   # this repository's proxies, not FID/FVD/FAD

Data: three "latents" directories written once with ``data_pipelines.latents.prepare(source, out,
name=..., modality=..., encode=...)``, every example with "label": int32 0 (unconditional):
    data/mm_image_latents  {"image": float32 (16, 16, 128)}: FLUX.2 AE latents of 256 px images,
                           already 2×2-patchified (32×32×32 -> 16×16×128; 256 tokens of 128)
    data/mm_video_latents  {"video": float32 (12, 12, 21, 48)}: WAN2.2 AE latents of 45-frame clips at
                           192p (1 + 44/4 = 12 latent frames, 16× spatial; 3024 tokens of 48)
    data/mm_audio_latents  {"audio": float32 (250, 64)}: Songbloom AE latents of 10 s clips (25 per s;
                           250 tokens of 64)
None of these autoencoders is part of this repository, and the paper's metrics (FID and FD-DINOv2 on
images, FVD with VideoMAEv2, FAD with CLAP) are not implemented here; `selfflow eval` gives only
its own proxies, and decoding generated latents to pixels or audio is not supported.
Hardware: GPUs or TPUs; estimate in paper_repro/README.md, "Compute estimates". Not reported by the paper.
Parameters (this config): 512.2M + 5.3M projector. The paper's backbone has ~625M: its 7 double-stream
blocks also carry a text stream, and FLUX.2 blocks use SwiGLU MLPs; neither has a counterpart here
(our 21 blocks are SiT blocks of width 1152, 16 heads, MLP ratio 4, as the paper's width and depth).
"""

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

# One example of each prepared directory (see the docstring).
DATA_SHAPES = {"image": (16, 16, 128), "video": (12, 12, 21, 48), "audio": (250, 64)}

# Per-modality loss weights (w_I, w_V, w_A); the weighted variants replace these.
LOSS_WEIGHTS = {
    "image": 1.0,
    "video": 1.0,
    "audio": 1.0,
}  # assumption: equal, because the paper's five weightings are not recovered


def modalities(weights: dict[str, float]) -> tuple[ModalityConfig, ...]:
    """Mask ratios as stated (image 0.25, video 0.1, audio 0.5) with the given loss weights."""
    return (
        ModalityConfig("image", mask_ratio=0.25, loss_weight=weights["image"]),
        ModalityConfig("video", mask_ratio=0.1, loss_weight=weights["video"]),
        ModalityConfig("audio", mask_ratio=0.5, loss_weight=weights["audio"]),
    )


CONFIG = Config(
    seed=0,  # assumption: any seed, because the paper's training seed is not stated
    model=ModelConfig(
        preset="XL/2",
        depth=21,
        hidden_size=1152,
        num_heads=16,
        mlp_ratio=4.0,  # stated: width 1152, 16 heads, MLP ratio 4, 7 + 14 = 21 blocks
        patch_size=1,  # unused with layouts (data.video_patch patches every modality); 1 keeps image_size checks trivial
        positions="rope",  # stated: 3D RoPE, 24 channels per (t, h, w) axis = head dim 72
        rope_theta=10000.0,  # assumption: 10000 (FLUX's RoPE base) because the paper does not state it
        dtype="bfloat16",  # stated (BF16 mixed precision)
    ),
    objective=ObjectiveConfig(
        kind="self_flow",
        gamma=0.8,  # stated
        student_layer=6,
        teacher_layer=15,  # assumption: round(0.3·21) and round(0.7·21), because the paper states only the 0.3·D / 0.7·D rule for this model
        time_distribution="uniform",  # stated for images; assumption for video and audio, because one p(t) serves every modality here (a third-party note gives train shifts video 2.95, audio 1.0)
        time_shift=1.0,
        label_dropout=0.0,  # assumption: no labels (every example has label 0), because the paper's text conditioning is not implemented
        ema_decay=0.9999,  # stated
    ),
    optim=OptimConfig(
        learning_rate=1e-4,
        b1=0.9,
        b2=0.999,
        weight_decay=0.0,  # assumption: the ImageNet (REPA/SRA protocol) values, because the multimodal optimiser settings are not recovered
        grad_clip_norm=1.0,  # stated (README)
        warmup_steps=0,  # assumption: no warm-up because none is stated (as for ImageNet)
    ),
    data=DataConfig(
        sources=(
            SourceConfig("mm_images", "latents", path="data/mm_image_latents"),
            SourceConfig("mm_videos", "latents", path="data/mm_video_latents"),
            SourceConfig("mm_audio", "latents", path="data/mm_audio_latents"),
        ),
        num_classes=1,  # unconditional: one class, every label 0
        video_patch=1,
        video_tubelet=1,  # the autoencoders' latents are the tokens (image pre-patchified 2×2)
        audio_patch_frames=1,  # one Songbloom latent per token
        fps=16.0,  # assumption: 16 fps source clips because their frame rate is not stated; WAN latents' manifest places latent frame i at video frame 4·i (modalities/video.py), so latent frames are 0.25 s apart in RoPE time
        worker_count=8,  # loader setting, not a paper value
    ),
    train=TrainConfig(
        steps=1_000_000,  # stated
        log_every=100,
        checkpoint_every=10_000,
        keep_checkpoints=3,  # bookkeeping
    ),
    sample=SampleConfig(
        steps=50, cfg_scale=1.0, per_class=4
    ),  # stated: 50 steps for qualitative samples; metrics without guidance
    modalities=modalities(LOSS_WEIGHTS),
    # One modality per batch, drawn with probabilities 57 / 30 / 13 % (stated), batch sizes 38 / 8 / 16 (stated;
    # assumption: used as the global batch of a step, because per device or global is not stated).
    layouts=(
        LayoutConfig("image", ("image",), weight=0.57, batch_size=38, sources=("mm_images",)),
        LayoutConfig("video", ("video",), weight=0.30, batch_size=8, sources=("mm_videos",)),
        LayoutConfig("audio", ("audio",), weight=0.13, batch_size=16, sources=("mm_audio",)),
    ),
)
