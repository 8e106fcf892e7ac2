"""Experiment configuration: frozen dataclasses, dotted overrides, validation.

An experiment is a Python file (see ``experiments/``) that defines ``CONFIG = Config(...)``.
The command line can override any leaf with ``--set section.key=value``. Every value is
type-checked and every cross-field rule (layers within depth, mask ratio in [0, 0.5], ...) is
checked *before* anything is compiled, so a typo costs a one-line error, not a JAX traceback.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from selfflow.errors import ConfigError  # noqa: F401  (re-exported: callers import it from here)

# SiT sizes (depth, width, heads), patch 2, MLP ratio 4; "tiny" is for tests and the CPU demo.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(depth=6, hidden_size=128, num_heads=4, patch_size=2),
    "S/2": dict(depth=12, hidden_size=384, num_heads=6, patch_size=2),
    "B/2": dict(depth=12, hidden_size=768, num_heads=12, patch_size=2),
    "L/2": dict(depth=24, hidden_size=1024, num_heads=16, patch_size=2),
    "XL/2": dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2),
}


# Training metrics the trainer logs at every logged step, whatever the layout (train.best_metric
# may name them; per-modality fm_loss/<m> is absent at steps where no layout with m ran).
TRAINING_METRICS = ("loss", "fm_loss", "rep_loss", "cos_sim", "grad_norm")
DEFAULT_BATCH_SIZE = 64
IMAGE_LAYOUT = "image"  # the name of the implicit layout of a config without layouts

# Number of classes each data source labels (the label table adds one null class).
SOURCE_CLASSES = {"shapes": 10, "world": 3, "fashion_mnist": 10}  # world: label = number of balls - 1


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny"
    # None = take the value from the preset.
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    mlp_ratio: float = 4.0
    positions: Literal["sincos", "rope"] = "sincos"
    rope_theta: float = 10000.0
    # What the timestep MLP embeds: "sit" = s = 1 − τ, as the official Self-Flow/SiT model (its
    # weights then map to ours bit for bit); "tau" = τ itself (runs saved before this option).
    time_embedding: Literal["sit", "tau"] = "sit"
    # Matmul precision: "bfloat16" = bf16 matmuls with float32 accumulation, float32 weights,
    # norms, timestep embeddings and losses.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # Speed/memory knobs that do not change the math: "factored" computes the conditioning and
    # the adaLN modulations once per distinct timestep of a sample (t, s, 0) and gathers them per
    # token; "per_token" computes them for every token (the official model's way). remat=True
    # recomputes each block's activations in the backward pass (less memory, ~1/3 more compute).
    conditioning: Literal["factored", "per_token"] = "factored"
    remat: bool = False
    # --- text conditioning (modalities/text.py; layouts with a "text:condition" segment) ---
    # The masked mean of the caption's token features, through an MLP, joins the timestep in the
    # adaLN conditioning (FLUX's pooled vector); the text tokens join the sequence in any case.
    text_pooled: bool = True
    # The first N blocks keep separate weights for text and data tokens (MM-DiT / FLUX double
    # stream; joint attention), the rest are shared; 0 = every block shared.
    double_stream_blocks: int = 0

    def resolved(self, key: str) -> int:
        value = getattr(self, key)
        return MODEL_PRESETS[self.preset][key] if value is None else value


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    # A registered objective (selfflow.objectives.OBJECTIVES): flow_matching, dts, self_flow, ...
    kind: str = "self_flow"
    gamma: float = 0.8
    # Share of each generate segment's tokens at the second timestep s: None = each modality's
    # DEFAULT_MASK_RATIO (image 0.25, video 0.1, audio 0.5, action 0.5); a value applies to every
    # modality without its own `modalities[...].mask_ratio`.
    mask_ratio: float | None = None
    # 1-indexed block outputs; None = round(0.3 * depth) and round(0.7 * depth).
    student_layer: int | None = None
    teacher_layer: int | None = None
    time_distribution: Literal["uniform", "logit_normal"] = "uniform"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    # SD3 shift t' = a t / (1 + (a - 1) t); a > 1 moves mass towards noise (tau = 1).
    time_shift: float = 1.0
    label_dropout: float = 0.1
    ema_decay: float = 0.9999
    # EMA warm-up (teacher and sampling weights alike): decay_n = min(ema_decay, (1 + n) / (10 + n)),
    # TensorFlow's num_updates rule. Off by default (the paper's constant decay); turn it on for
    # short runs, whose constant-decay EMA is still mostly the initialisation.
    ema_warmup: bool = False
    # The representation weight decays ten-fold every gamma_decay_steps optimizer steps after step
    # gamma_decay_start (0 = a constant gamma; selfflow.objective.gamma_at): SRA's published
    # smooth-L1 schedule (0.2 until epoch 149, then 0.1^(epochs/1000)) for self_flow, sra and repa.
    gamma_decay_start: int = 0
    gamma_decay_steps: int = 0
    # > 0: the second timestep is s = max(t - U(0, time_gap), 0) instead of an independent draw,
    # the SRA-style small gap (with mask_ratio=0 the teacher then sees t - U(0, gap), as SRA).
    # For objective.kind="sra" it is SRA's t_max (0 = SRA's default 0.2).
    time_gap: float = 0.0
    # Distance of the representation loss: "cosine" = 1 - cosine over the feature axis per token
    # (the paper), "l1" = mean absolute difference over the feature axis (the paper's unstable
    # ablation), "smooth_l1" = Huber with beta 0.05 (SRA's published runs), "cosine_tokens" =
    # 1 - cosine over the token axis per feature channel (what SRA's code computes with
    # F.cosine_similarity's default dim=1 on (B, N, D) features).
    rep_distance: Literal["cosine", "l1", "smooth_l1", "cosine_tokens"] = "cosine"
    # Timesteps of the dual-timestep objectives (Fig. 2b): "dts" = masked tokens at a second
    # timestep s ~ p(t); "full_mask" = masked tokens at tau = 1 (pure noise); "diffusion_forcing" =
    # every generate token its own tau ~ p(t). The teacher sees every token at the minimum.
    timesteps: Literal["dts", "full_mask", "diffusion_forcing"] = "dts"
    # Masked and unmasked tokens of the student do not attend to each other (SRA's follow-up,
    # vvvvvjdy/SRA SiT-SRA_DTS_AS); condition tokens attend and are attended by both groups.
    attention_separation: bool = False
    # REPA (kind="repa", selfflow.encoders.registry): the frozen encoder "name:arg" whose features of
    # the clean images the projected student tokens of block student_layer align with:
    # "dinov2:PATH" (model.safetensors of facebook/dinov2-<size>), "classifier:PATH" (an eval
    # classifier cache entry), a name given to register_encoder, or "precomputed" (features stored
    # in the data by `selfflow prepare --features`). encoder_dim = its feature width
    # (DINOv2 S/B/L/g 384/768/1024/1536, the eval classifier 128; 768 = REPA's DINOv2-B default),
    # the output of the projector D -> projector_dim -> projector_dim -> encoder_dim (REPA's 2048).
    encoder: str = ""
    encoder_dim: int = 768
    projector_dim: int = 2048
    # --- text conditioning ---
    # Rate at which a sample's caption is replaced by the null caption (no token) for
    # classifier-free guidance; drawn from the same uniform as label_dropout, so with equal rates
    # captions and labels are dropped together (the null branch is fully unconditional).
    text_dropout: float = 0.1


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 0.0
    grad_clip_norm: float = 1.0
    warmup_steps: int = 0


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """A named data source (see ``data_pipelines.sources``). A layout draws from every source
    that yields its modalities, or from those it names, mixed in proportion to ``weight``.
    Sizes (image size, clip length, fps, mel bands) come from the ``data`` section."""

    name: str
    kind: Literal[
        "shapes",
        "world",
        "image_folder",
        "fashion_mnist",
        "video_files",
        "audio_files",
        "trajectories",
        "latents",
    ]
    path: str = ""  # folder or file; fashion_mnist: "" = the Debian package's directory
    weight: float = 1.0
    split: Literal["train", "test"] = "train"  # fashion_mnist
    channels: int = 3  # image_folder: 3 = RGB, 1 = grayscale ("L")
    # image_folder: a wrong size is an error; "resize": centre square, BICUBIC; "adm": ADM's
    # center_crop_arr (BOX halving, BICUBIC, centre crop), the SiT/REPA/Self-Flow ImageNet preprocessing
    resize: Literal["error", "resize", "adm"] = "error"
    convert: bool = True  # image_folder: other modes (gray, CMYK, palette, alpha) -> RGB/L; False: bad sample
    with_audio: bool = False  # video_files: also decode the audio track as log-mel
    clips_per_video: int = 1  # video_files
    crop: Literal["random", "start", "center"] = "random"  # audio_files
    stride: int = 1  # trajectories: a window starts every `stride` steps
    # --- text conditioning --- file sources: "caption" reads <file stem>.txt or .json
    # ({"caption": ...}) beside each file; "features" reads <file stem>.npz (encoder outputs
    # "embedding" (L, D) with "length" or "mask"); "none" yields no text.
    text: Literal["none", "caption", "features"] = "none"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # Without `sources`: one source of this kind (generated, nothing to download).
    source: Literal["shapes", "world"] = "shapes"
    sources: tuple[SourceConfig, ...] = ()
    on_bad_sample: Literal["error", "skip"] = "error"
    worker_count: int = 0  # > 0: examples are read in that many worker processes
    image_size: int = 16
    num_examples: int = 60_000
    num_classes: int = 10
    read_threads: int = 2
    prefetch: int = 4
    # world source: clip length and frame rate; how video, audio and actions become tokens
    clip_seconds: float = 1.6
    fps: float = 10.0
    video_patch: int = 4
    video_tubelet: int = 2
    audio_patch_frames: int = 4
    n_mels: int = 32
    sample_rate: int = 16000
    # --- text conditioning --- every source pads its text to text_tokens tokens (with a mask):
    # captions to text_tokens * caption_bytes_per_token UTF-8 bytes, encoder features to
    # text_tokens rows; longer text is a bad sample naming its file.
    text_tokens: int = 32
    caption_bytes_per_token: int = 4


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (see ``selfflow.sharding``): axis sizes, one may be -1 (the rest of the devices),
    and logical-to-mesh rules over the defaults, e.g. ("embed=fsdp", "mlp=tensor", "vocab=")."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple[str, ...] = ()
    # Multi-host: jax.distributed.initialize(coordinator_address, num_processes, process_id);
    # "auto" initialises when these are set here or in the environment (JAX's own variables,
    # or a cluster JAX detects: SLURM, Open MPI, TPU pods).
    distributed: Literal["auto", "always", "never"] = "auto"
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    # Batch of the implicit image layout of a config without `layouts` (None = 64); with layouts,
    # each layout has its own batch_size and setting this is an error.
    batch_size: int | None = None
    log_every: int = 10
    checkpoint_every: int = 200
    # Retention: a checkpoint survives if any rule keeps it (see selfflow.checkpoint).
    keep_checkpoints: int = 3  # the last N
    keep_every: int = 0  # also, for good, every checkpoint whose step is a multiple of K (0 = off)
    # Also the N best by best_metric (0 = off); each checkpoint step is then logged with the EMA
    # model's held-out validation loss, which the checkpoint stores for ranking.
    keep_best: int = 0
    # "val/loss" (mean held-out velocity MSE), "val/<modality>" (one layout), "val/<layout>/<modality>"
    # (several), or a training metric of TRAINING_METRICS.
    best_metric: str = "val/loss"
    best_mode: Literal["min", "max"] = "min"  # min: lower is better
    sample_every: int = 0  # 0 = only at the end
    # Every K steps (0 = off): the cheap proxies of selfflow.eval on eval_samples generated examples
    # per layout (sampled with the `sample` settings), logged as eval/<layout>/<metric>.
    eval_every: int = 0
    eval_samples: int = 64
    eval_classifier_steps: int = 1000  # training budget of the image-FD classifier (cached per dataset)
    # > 0: each evaluation also runs the linear probe of every block (probe/layer_<l>) on this many
    # training examples, scored on half as many held-out ones (0 = off: the probe is the slow part).
    eval_probe: int = 0
    # rep/grad_ratio (two extra backward passes) every K steps of a teacher run; None = log_every, 0 = off
    grad_ratio_every: int | None = None
    # Warm start (see selfflow.init_from): a run directory (its latest checkpoint) or an exported
    # safetensors file. init_weights: "both" = student <- the source's online weights and EMA <- its
    # EMA; "ema" / "online" = both from that one set (an export holds one set: any of the three).
    # init_optimizer: also carry the AdamW state and the step counter (a run directory with the
    # same optimizer), so the new run continues the source's schedule and data stream.
    init_from: str = ""
    init_weights: Literal["both", "ema", "online"] = "both"
    init_optimizer: bool = False
    # init_new="fresh": tensors this run's model has and the source lacks (a new modality's or the
    # text projections, double-stream text weights) keep their initialisation, and the source's
    # tensors this model lacks are left out; shared tensors must still match. "error": any
    # difference is one error listing it (the default: a typo in the architecture is caught).
    init_new: Literal["error", "fresh"] = "error"
    # Resume from the checkpoint of this step instead of the latest (later ones are set aside as
    # <step>.superseded). A checkpoint that cannot be read or fails its checksums stops the run
    # ("error"), or is set aside as <step>.damaged for the newest older one that verifies ("previous").
    resume_step: int | None = None
    on_bad_checkpoint: Literal["error", "previous"] = "error"


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    steps: int = 50
    cfg_scale: float = 1.0
    # examples per class of a layout without condition segments; per layout with them (data-driven)
    per_class: int = 8
    seed: int = 0
    # euler / heun (ODE) or sde (SiT Euler–Maruyama, the official FID protocol); see selfflow.sample
    method: Literal["euler", "heun", "sde"] = "euler"
    # guidance (cfg_scale != 1) only for τ in [guidance_low, guidance_high]
    guidance_low: float = 0.0
    guidance_high: float = 1.0
    # how layout samples write video: H.264 MP4 (audio muxed in where the layout has audio) or GIF
    video_format: Literal["mp4", "gif"] = "mp4"


@dataclasses.dataclass(frozen=True)
class ModalityConfig:
    """Per-modality settings of a multimodal experiment."""

    name: str
    mask_ratio: float | None = None  # None = the modality module's DEFAULT_MASK_RATIO
    loss_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class LayoutConfig:
    """A named layout of a mixed run: its segments, sampling weight and batch size.

    ``segments`` are modality names in sequence order; ``"name:condition"`` marks a clean
    conditioning segment (e.g. ``("image:condition", "video", "action")``).
    """

    name: str
    segments: tuple[str, ...]
    weight: float = 1.0
    batch_size: int = 8
    sources: tuple[str, ...] = ()  # names in data.sources; () = every source with these modalities

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality of each segment, in order."""
        return tuple(parse_segment(text)[0] for text in self.segments)


def parse_segment(text: str) -> tuple[str, str]:
    """``"video"`` -> ("video", "generate"); ``"image:condition"`` -> ("image", "condition")."""
    name, _, role = text.partition(":")
    return name, role or "generate"


def layout_modalities(layouts) -> set[str]:
    """Every modality a segment of ``layouts`` names."""
    return {m for lc in layouts for m in lc.modalities}


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    mesh: MeshConfig = MeshConfig()
    # Per-modality settings and the layouts to mix. A config without layouts is resolved
    # (selfflow.config.resolve) to the one layout "image" = [image] of train.batch_size.
    modalities: tuple[ModalityConfig, ...] = ()
    layouts: tuple[LayoutConfig, ...] = ()

    # Derived values (everything downstream reads these, never the raw Optional fields).
    @property
    def depth(self) -> int:
        return self.model.resolved("depth")

    @property
    def student_layer(self) -> int:
        s = self.objective.student_layer
        return max(1, round(0.3 * self.depth)) if s is None else s

    @property
    def teacher_layer(self) -> int:
        t = self.objective.teacher_layer
        if t is not None:
            return t
        # round(0.7·depth), kept above the student layer where the depth allows (depth 2: 1 / 2)
        return min(self.depth, max(round(0.7 * self.depth), self.student_layer + 1))

    @property
    def uses_teacher(self) -> bool:
        """Whether the objective runs the EMA teacher (Self-Flow with γ > 0)."""
        from selfflow.objectives import OBJECTIVES

        return OBJECTIVES[self.objective.kind].uses_teacher(self.objective)

    @property
    def uses_dual_timesteps(self) -> bool:
        from selfflow.objectives import OBJECTIVES

        return OBJECTIVES[self.objective.kind].dual_timesteps


# ---------------------------------------------------------------------------- type checking


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Returns ``value`` (ints widened to float where a float is expected) or raises ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(key, value, inner)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, tuple):
            raise ConfigError(f"{key}={value!r}: expected a tuple")
        inner = args[0]
        for i, item in enumerate(value):
            if dataclasses.is_dataclass(inner):
                if not isinstance(item, inner):
                    raise ConfigError(f"{key}[{i}]={item!r}: expected {inner.__name__}(...)")
                _check_section(f"{key}[{i}].", item)
            else:
                _check_type(f"{key}[{i}]", item, inner)
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if type(value) is not annotation:
            raise ConfigError(f"{key}={value!r}: expected {annotation.__name__}, got {type(value).__name__}")
        return value
    raise TypeError(f"unsupported annotation for {key}: {annotation}")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_section(prefix: str, section: Any) -> None:
    for f in dataclasses.fields(section):
        key = f"{prefix}{f.name}"
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(f.type) or dataclasses.is_dataclass(value):
            _check_section(f"{key}.", value)
        else:
            _check_type(key, value, _hints(type(section))[f.name])


def validate(cfg: Config) -> Config:
    """Checks types and cross-field rules; returns ``cfg`` or raises ConfigError."""
    _check_section("", cfg)
    from selfflow.objectives import OBJECTIVES

    m, o, t = cfg.model, cfg.objective, cfg.train
    if o.kind not in OBJECTIVES:
        raise ConfigError(
            f"objective.kind={o.kind!r}: expected one of {', '.join(map(repr, OBJECTIVES))} "
            "(selfflow.objectives.register_objective adds more)"
        )
    if m.preset not in MODEL_PRESETS:
        raise ConfigError(f"model.preset={m.preset!r}: expected one of {', '.join(MODEL_PRESETS)}")
    depth, width, heads = cfg.depth, m.resolved("hidden_size"), m.resolved("num_heads")
    for key, value in (
        ("model.depth", depth),
        ("model.hidden_size", width),
        ("model.num_heads", heads),
        ("model.patch_size", m.resolved("patch_size")),
    ):
        if value < 1:
            raise ConfigError(f"{key}={value}: expected a positive integer")
    if width % heads:
        raise ConfigError(f"model.hidden_size={width} is not divisible by model.num_heads={heads}")
    if m.positions == "rope" and (width // heads) % 2:
        raise ConfigError(f"model.positions='rope' needs an even head dimension, got {width // heads}")
    if cfg.data.image_size % m.resolved("patch_size"):
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} is not divisible by "
            f"model.patch_size={m.resolved('patch_size')}"
        )
    if o.mask_ratio is not None and not 0.0 <= o.mask_ratio <= 0.5:
        raise ConfigError(f"objective.mask_ratio={o.mask_ratio}: expected a value in [0, 0.5]")
    if o.gamma < 0:
        raise ConfigError(f"objective.gamma={o.gamma}: expected >= 0")
    if not 0.0 <= o.time_gap <= 1.0:
        raise ConfigError(
            f"objective.time_gap={o.time_gap}: expected a value in [0, 1] (0 = s independent of t)"
        )
    if o.time_gap > 0 and not (cfg.uses_dual_timesteps or o.kind == "sra"):
        raise ConfigError(
            f"objective.time_gap={o.time_gap} needs a second timestep: objective.kind "
            f"is {o.kind!r}, expected 'dts', 'self_flow' or 'sra'"
        )
    if o.timesteps != "dts" and not cfg.uses_dual_timesteps:
        raise ConfigError(
            f"objective.timesteps={o.timesteps!r} replaces the dual timesteps: objective.kind is "
            f"{o.kind!r}, expected 'dts' or 'self_flow'"
        )
    if o.time_gap > 0 and o.timesteps != "dts":
        raise ConfigError(
            f"objective.time_gap={o.time_gap} draws s near t: it needs objective.timesteps='dts', "
            f"not {o.timesteps!r}"
        )
    if o.attention_separation and not (cfg.uses_dual_timesteps and o.timesteps != "diffusion_forcing"):
        raise ConfigError(
            "objective.attention_separation=true separates the masked tokens from the others: it needs "
            f"objective.kind 'dts' or 'self_flow' with timesteps 'dts' or 'full_mask' (have {o.kind!r}, "
            f"{o.timesteps!r})"
        )
    if o.encoder and not _uses_encoder(o.kind):
        raise ConfigError(
            f"objective.encoder={o.encoder!r} is unused: objective.kind={o.kind!r} has no encoder "
            "(expected 'repa')"
        )
    if o.gamma_decay_start < 0 or o.gamma_decay_steps < 0:
        raise ConfigError(
            f"objective.gamma_decay_start={o.gamma_decay_start}, gamma_decay_steps={o.gamma_decay_steps}: "
            "expected integers >= 0"
        )
    if o.gamma_decay_steps and o.kind not in ("self_flow", "sra", "repa"):
        raise ConfigError(
            f"objective.gamma_decay_steps={o.gamma_decay_steps} decays the representation weight γ: "
            f"objective.kind={o.kind!r} has none (expected 'self_flow', 'sra' or 'repa')"
        )
    if not 0.0 <= o.ema_decay < 1.0:
        raise ConfigError(f"objective.ema_decay={o.ema_decay}: expected a value in [0, 1)")
    if not 0.0 <= o.label_dropout < 1.0:
        raise ConfigError(f"objective.label_dropout={o.label_dropout}: expected a value in [0, 1)")
    if o.time_shift <= 0 or o.logit_normal_std <= 0:
        raise ConfigError(
            "objective.time_shift and objective.logit_normal_std must be > 0, got "
            f"{o.time_shift} and {o.logit_normal_std}"
        )
    # Layers matter when the teacher runs; values set explicitly are checked in any case.
    if _uses_encoder(o.kind):
        _validate_encoder_objective(cfg)  # one student block, no teacher
    elif cfg.uses_teacher or o.student_layer is not None or o.teacher_layer is not None:
        if not 1 <= cfg.teacher_layer <= depth:
            raise ConfigError(
                f"objective.teacher_layer={cfg.teacher_layer}: expected a block in [1, depth={depth}]"
            )
        if not 1 <= cfg.student_layer < cfg.teacher_layer:
            raise ConfigError(
                f"objective.student_layer={cfg.student_layer}: expected 1 <= "
                f"student_layer < teacher_layer={cfg.teacher_layer}"
                + (" (self_flow needs depth >= 2)" if depth < 2 else "")
            )
    for key in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            raise ConfigError(f"train.{key}={getattr(t, key)}: expected a positive integer")
    if t.sample_every < 0:
        raise ConfigError(f"train.sample_every={t.sample_every}: expected >= 0 (0 = only at the end)")
    for key in ("keep_every", "keep_best"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key}={getattr(t, key)}: expected >= 0 (0 = off)")
    if not (t.best_metric.startswith("val/") or t.best_metric in TRAINING_METRICS):
        raise ConfigError(
            f"train.best_metric={t.best_metric!r}: expected 'val/loss', 'val/<modality>', "
            f"'val/<layout>/<modality>' or a training metric ({', '.join(TRAINING_METRICS)})"
        )
    for key in ("steps", "per_class"):
        if getattr(cfg.sample, key) < 1:
            raise ConfigError(f"sample.{key}={getattr(cfg.sample, key)}: expected a positive integer")
    sc = cfg.sample
    if sc.method == "sde" and sc.steps < 2:
        raise ConfigError(f"sample.steps={sc.steps}: the sde method needs >= 2 (the last is its mean step)")
    if not 0.0 <= sc.guidance_low <= sc.guidance_high <= 1.0:
        raise ConfigError(
            f"sample.guidance_low={sc.guidance_low}, sample.guidance_high={sc.guidance_high}: "
            "expected 0 <= guidance_low <= guidance_high <= 1 (a τ interval)"
        )
    if t.eval_probe < 0 or t.eval_probe == 1:
        raise ConfigError(
            f"train.eval_probe={t.eval_probe}: expected 0 (off) or >= 2 probe training examples"
        )
    if t.grad_ratio_every is not None and t.grad_ratio_every < 0:
        raise ConfigError(
            f"train.grad_ratio_every={t.grad_ratio_every}: expected None (= log_every), 0 (off) or > 0"
        )
    if t.init_weights not in ("both", "ema", "online"):
        raise ConfigError(f"train.init_weights={t.init_weights!r}: expected 'both', 'ema' or 'online'")
    if t.init_new not in ("error", "fresh"):
        raise ConfigError(f"train.init_new={t.init_new!r}: expected 'error' or 'fresh'")
    if (t.init_optimizer or t.init_weights != "both" or t.init_new != "error") and not t.init_from:
        raise ConfigError(
            "train.init_weights / train.init_optimizer / train.init_new are set but train.init_from is "
            "empty: name the run directory or exported weights to start from"
        )
    if t.init_optimizer and t.init_new == "fresh":
        raise ConfigError(
            "train.init_new='fresh' with train.init_optimizer=true: a model with new tensors starts "
            "with a fresh optimizer; set train.init_optimizer=false"
        )
    if t.resume_step is not None and t.resume_step < 0:
        raise ConfigError(
            f"train.resume_step={t.resume_step}: expected None (the latest) or a checkpoint step >= 0"
        )
    if t.eval_every < 0 or t.eval_samples < 2 or t.eval_classifier_steps < 1:
        raise ConfigError(
            f"train.eval_every={t.eval_every}, train.eval_samples={t.eval_samples}: expected "
            "eval_every >= 0 (0 = off) and eval_samples >= 2 (a Fréchet distance needs two); "
            f"train.eval_classifier_steps={t.eval_classifier_steps}: expected >= 1"
        )
    _validate_multimodal(cfg)
    _validate_sources(cfg)
    _validate_unused(cfg)
    _validate_text(cfg)
    from selfflow.sharding import mesh_shape, parse_rules

    parse_rules(cfg.mesh.rules)  # names the bad rule
    mesh_shape(cfg.mesh, 0)  # axis sizes alone (the device count is checked when the mesh is built)
    if cfg.optim.learning_rate <= 0:
        raise ConfigError(f"optim.learning_rate={cfg.optim.learning_rate}: expected > 0")
    return cfg


def _uses_encoder(kind: str) -> bool:
    from selfflow.objectives import uses_encoder

    return uses_encoder(kind)


def _validate_encoder_objective(cfg: Config) -> None:
    """REPA's settings (files are opened later, when the objective is built: a run loads, samples
    and exports on a machine without the encoder). Unset, ``objective.encoder`` is an error here;
    set for an objective that does not use it, it is an error in :func:`validate`."""
    from selfflow.encoders.precomputed import PRECOMPUTED
    from selfflow.encoders.registry import ENCODERS, parse_encoder

    o, depth = cfg.objective, cfg.depth
    if not o.encoder:
        raise ConfigError(
            f"objective.kind={o.kind!r} aligns with a frozen encoder but objective.encoder is empty: "
            "set it to 'dinov2:PATH/model.safetensors', 'classifier:PATH', a registered encoder "
            f"({', '.join(ENCODERS)}) or '{PRECOMPUTED}' (features stored in the data by "
            "`selfflow prepare --features`)"
        )
    if o.encoder != PRECOMPUTED:
        parse_encoder(o.encoder)  # names an unknown encoder
    if o.encoder_dim < 1 or o.projector_dim < 1:
        raise ConfigError(
            f"objective.encoder_dim={o.encoder_dim}, objective.projector_dim={o.projector_dim}: "
            "expected positive integers (the encoder's feature width; REPA's projector width 2048)"
        )
    if not 1 <= cfg.student_layer <= depth:
        raise ConfigError(
            f"objective.student_layer={cfg.student_layer}: expected a block in [1, depth={depth}] "
            "(REPA's encoder_depth: 8 of SiT-XL's 28)"
        )
    layouts = cfg.layouts or (LayoutConfig(IMAGE_LAYOUT, ("image",)),)
    if not any(parse_segment(t) == ("image", "generate") for lc in layouts for t in lc.segments):
        raise ConfigError(
            f"objective.kind={o.kind!r} aligns generated image tokens with encoder features, but no "
            "layout has a generated image segment (REPA is image-only)"
        )


def _validate_multimodal(cfg: Config) -> None:
    import modalities

    names = [m.name for m in cfg.modalities]
    for i, m in enumerate(cfg.modalities):
        if m.name not in modalities.MODALITIES or names.count(m.name) > 1:
            raise ConfigError(
                f"modalities[{i}].name={m.name!r}: expected one of "
                f"{', '.join(modalities.MODALITIES)}, each at most once"
            )
        if m.mask_ratio is not None and not 0.0 <= m.mask_ratio <= 0.5:
            raise ConfigError(f"modalities[{i}].mask_ratio={m.mask_ratio}: expected a value in [0, 0.5]")
        if m.loss_weight < 0:
            raise ConfigError(f"modalities[{i}].loss_weight={m.loss_weight}: expected >= 0")
    layout_names = [lc.name for lc in cfg.layouts]
    for i, lc in enumerate(cfg.layouts):
        where = f"layouts[{i}] ({lc.name!r})"
        if layout_names.count(lc.name) > 1:
            raise ConfigError(f"{where}: layout names must be unique")
        if lc.weight < 0 or lc.batch_size < 1 or not lc.segments:
            raise ConfigError(
                f"{where}: expected weight >= 0, batch_size >= 1 and at least one "
                f"segment, got {lc.weight}, {lc.batch_size}, {lc.segments}"
            )
        roles = []
        for text in lc.segments:
            name, _, role = text.partition(":")
            if name not in modalities.MODALITIES or role not in ("", "generate", "condition"):
                raise ConfigError(
                    f"{where}: segment {text!r}: expected 'modality' or "
                    f"'modality:condition' with modality in {', '.join(modalities.MODALITIES)}"
                )
            roles.append(role or "generate")
        if "generate" not in roles:
            raise ConfigError(f"{where}: every segment is a condition; nothing to generate")
    if cfg.layouts and sum(lc.weight for lc in cfg.layouts) <= 0:
        raise ConfigError("layouts: the weights sum to 0; at least one layout needs weight > 0")
    if cfg.model.positions != "rope" and any(lc.modalities != ("image",) for lc in cfg.layouts):
        raise ConfigError(
            "model.positions='sincos' encodes only (h, w); layouts with other segments than "
            "one image need model.positions='rope' to place tokens in time"
        )


# --- text conditioning ---------------------------------------------------------------------


def _validate_text(cfg: Config) -> None:
    """Text is always a clean cue (``"text:condition"``); sizes and the caption dropout rate."""
    d, o = cfg.data, cfg.objective
    if d.text_tokens < 1 or d.caption_bytes_per_token < 1:
        raise ConfigError(
            f"data.text_tokens={d.text_tokens}, data.caption_bytes_per_token="
            f"{d.caption_bytes_per_token}: expected positive integers"
        )
    if not 0 <= cfg.model.double_stream_blocks <= cfg.depth:
        raise ConfigError(
            f"model.double_stream_blocks={cfg.model.double_stream_blocks}: expected 0..model.depth={cfg.depth}"
        )
    if not 0.0 <= o.text_dropout < 1.0:
        raise ConfigError(f"objective.text_dropout={o.text_dropout}: expected a value in [0, 1)")
    for i, lc in enumerate(cfg.layouts):
        for text in lc.segments:
            if parse_segment(text) == ("text", "generate"):
                raise ConfigError(
                    f"layouts[{i}] ({lc.name!r}): segment {text!r}: text is only a condition; "
                    "write 'text:condition'"
                )
    for i, s in enumerate(d.sources):
        if s.text != "none" and s.kind not in TEXT_SIDECAR_KINDS:
            raise ConfigError(
                f"data.sources[{i}] ({s.name!r}): text={s.text!r} reads sidecar files beside "
                f"each file: expected kind in {', '.join(TEXT_SIDECAR_KINDS)}, got {s.kind!r}"
            )


TEXT_SIDECAR_KINDS = ("image_folder", "video_files", "audio_files")


def _validate_sources(cfg: Config) -> None:
    d = cfg.data
    names = [s.name for s in d.sources]
    for i, s in enumerate(d.sources):
        where = f"data.sources[{i}] ({s.name!r})"
        if not s.name or names.count(s.name) > 1:
            raise ConfigError(f"{where}: source names must be non-empty and unique")
        if s.weight < 0 or s.channels not in (1, 3) or s.clips_per_video < 1 or s.stride < 1:
            raise ConfigError(
                f"{where}: expected weight >= 0, channels 1 or 3, clips_per_video >= 1 "
                f"and stride >= 1, got {s.weight}, {s.channels}, {s.clips_per_video}, {s.stride}"
            )
        if not s.path and s.kind not in ("shapes", "world", "fashion_mnist"):
            raise ConfigError(f"{where}: kind {s.kind!r} reads files; set path to its folder")
    for i, lc in enumerate(cfg.layouts):
        for name in lc.sources:
            if name not in names:
                raise ConfigError(
                    f"layouts[{i}] ({lc.name!r}): source {name!r} is not in data.sources "
                    f"(it has {', '.join(names) or 'none'})"
                )
    if d.worker_count < 0 or d.read_threads < 1:
        raise ConfigError(
            f"data.worker_count={d.worker_count}, data.read_threads={d.read_threads}: "
            "expected worker_count >= 0 and read_threads >= 1"
        )
    kinds = {s.kind for s in d.sources} or {d.source}
    if len(kinds) == 1 and (kind := kinds.pop()) in SOURCE_CLASSES:
        if d.num_classes != SOURCE_CLASSES[kind]:
            raise ConfigError(
                f"data.num_classes={d.num_classes}: data source {kind!r} has {SOURCE_CLASSES[kind]} classes"
            )


def _validate_unused(cfg: Config) -> None:
    """A setting given (not None) that this run would ignore is an error naming it."""
    segment_modalities = layout_modalities(cfg.layouts)
    if cfg.layouts and cfg.train.batch_size is not None:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is unused: this config has layouts, "
            "each with its own batch_size (set layouts[i].batch_size instead)"
        )
    if (
        (cfg.layouts or cfg.modalities)
        and cfg.model.patch_size is not None
        and "image" not in segment_modalities
    ):
        raise ConfigError(
            f"model.patch_size={cfg.model.patch_size} is unused: it is the image patch size and "
            "no layout has an image segment (video patches are data.video_patch)"
        )
    unused = [
        f"modalities[{i}] ({m.name!r})"
        for i, m in enumerate(cfg.modalities)
        if cfg.layouts and m.name not in segment_modalities
    ]
    if unused:
        raise ConfigError(f"{', '.join(unused)}: no layout has a segment of this modality")


def resolve(cfg: Config) -> Config:
    """Validates ``cfg`` and makes it explicit, so the rest of the code knows one kind of run:

    - a config without layouts becomes the one layout ``image`` = [image] of ``train.batch_size``;
    - every modality of the layouts gets its ``modalities`` entry with its resolved mask ratio (its
      own, else ``objective.mask_ratio``, else the modality's ``DEFAULT_MASK_RATIO``), after which
      ``objective.mask_ratio`` and ``train.batch_size`` are None (their values live in the entries).

    Idempotent: a resolved config resolves to itself (run directories store resolved configs).
    """
    import modalities

    validate(cfg)
    batch = DEFAULT_BATCH_SIZE if cfg.train.batch_size is None else cfg.train.batch_size
    layouts = cfg.layouts or (LayoutConfig(IMAGE_LAYOUT, ("image",), 1.0, batch),)
    given = {m.name: m for m in cfg.modalities}
    default_ratio = cfg.objective.mask_ratio

    def entry(name: str) -> ModalityConfig:
        own = given.get(name, ModalityConfig(name))
        ratio = (
            own.mask_ratio
            if own.mask_ratio is not None
            else default_ratio
            if default_ratio is not None
            else modalities.get(name).DEFAULT_MASK_RATIO
        )
        return ModalityConfig(name, mask_ratio=float(ratio), loss_weight=own.loss_weight)

    used = dict.fromkeys(m for lc in layouts for m in lc.modalities)
    return dataclasses.replace(
        cfg,
        layouts=layouts,
        modalities=tuple(entry(name) for name in used),
        objective=dataclasses.replace(cfg.objective, mask_ratio=None),
        train=dataclasses.replace(cfg.train, batch_size=None),
    )


# ---------------------------------------------------------------------------- overrides


def _parse_value(key: str, text: str, annotation: Any) -> Any:
    if annotation is str or (
        typing.get_origin(annotation) is Literal
        and all(isinstance(a, str) for a in typing.get_args(annotation))
    ):
        return text
    if text in ("None", "none", "null"):
        return None
    if text in ("true", "false"):
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # type check below names the key


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Applies ``["objective.gamma=0.5", ...]``; unknown keys and bad types raise ConfigError."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. objective.gamma=0.5")
        key, text = item.split("=", 1)
        cfg = _replace_path(cfg, key.strip().split("."), key.strip(), text.strip())
    return cfg


def _replace_path(node: Any, path: list[str], key: str, text: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(node)}
    if path[0] not in names:
        raise ConfigError(f"unknown config key {key!r}: {type(node).__name__} has {', '.join(sorted(names))}")
    child = getattr(node, path[0])
    if len(path) == 1:
        if dataclasses.is_dataclass(child):
            raise ConfigError(f"config key {key!r} is a section; set one of its keys instead")
        annotation = _hints(type(node))[path[0]]
        value = _check_type(key, _parse_value(key, text, annotation), annotation)
        return dataclasses.replace(node, **{path[0]: value})
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"unknown config key {key!r}: {'.'.join(path[:1])} is not a section")
    return dataclasses.replace(node, **{path[0]: _replace_path(child, path[1:], key, text)})


# ---------------------------------------------------------------------------- files and JSON


def load_config_file(path: str | Path, overrides: list[str] = ()) -> Config:
    """Imports ``CONFIG`` from an experiment file, applies overrides, validates."""
    path = Path(path)
    module = exec_python_file(path, "config")
    cfg = getattr(module, "CONFIG", None)
    if not isinstance(cfg, Config):
        raise ConfigError(f"{path}: expected a module-level CONFIG = selfflow.config.Config(...)")
    return resolve(apply_overrides(cfg, list(overrides)))


def exec_python_file(path: Path, what: str) -> types.ModuleType:
    """Runs a Python file as a module; a missing file or an error in it is a ConfigError naming
    the file and line."""
    if not path.is_file():
        raise ConfigError(f"{what} file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"selfflow_{what}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a typo in the experiment file: name the file and the line
        import traceback

        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
        where = f"{path}:{frames[-1].lineno}" if frames else str(path)
        if isinstance(e, SyntaxError):
            where = f"{path}:{e.lineno}"
        raise ConfigError(f"{where}: {type(e).__name__}: {e}") from e
    return module


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def resolved_dict(cfg: Config) -> dict:
    """``to_dict`` of :func:`resolve` with preset sizes and default layers replaced by the values
    actually used."""
    cfg = resolve(cfg)
    d = to_dict(cfg)
    images = "image" in layout_modalities(cfg.layouts)
    for key in ("depth", "hidden_size", "num_heads") + (("patch_size",) if images else ()):
        d["model"][key] = cfg.model.resolved(key)
    d["objective"]["student_layer"], d["objective"]["teacher_layer"] = cfg.student_layer, cfg.teacher_layer
    return d


# Keys added after runs were saved without them, and the value those runs used.
LEGACY_VALUES = {("model", "time_embedding"): "tau"}


def _legacy(data: dict) -> dict:
    """A run saved before configs were resolved (:func:`resolve`): its multimodal layouts ignored
    ``objective.mask_ratio``, ``train.batch_size`` and (without image segments) ``model.patch_size``,
    so they are dropped, not applied (resolved configs never hold them there)."""
    for (section, key), value in LEGACY_VALUES.items():
        if isinstance(data.get(section), dict):
            data[section].setdefault(key, value)
    layouts = data.get("layouts") or ()
    if layouts and isinstance(data.get("objective"), dict) and isinstance(data.get("train"), dict):
        data["objective"]["mask_ratio"] = None
        data["train"]["batch_size"] = None
    segments = [
        parse_segment(str(t))[0] for lc in layouts if isinstance(lc, dict) for t in lc.get("segments", ())
    ]
    if layouts and "image" not in segments and isinstance(data.get("model"), dict):
        data["model"]["patch_size"] = None  # saved resolved from the preset, never used
    return data


def from_dict(data: dict, where: str = "config") -> Config:
    """Rebuilds a Config from ``to_dict``/``resolved_dict`` output (e.g. a run's config.json)."""
    data = _legacy({k: dict(v) if isinstance(v, dict) else v for k, v in data.items()})

    def build(cls, values: dict, prefix: str):
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(names)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(prefix + k for k in sorted(unknown))}")
        kwargs = {}
        for name, value in values.items():
            sub = _hints(cls)[name]
            if dataclasses.is_dataclass(sub):
                value = build(sub, value, f"{prefix}{name}.")
            elif typing.get_origin(sub) is tuple and isinstance(
                value, (list, tuple)
            ):  # JSON arrays, asdict tuples
                inner = typing.get_args(sub)[0]
                value = tuple(
                    build(inner, v, f"{prefix}{name}[{i}].") if dataclasses.is_dataclass(inner) else v
                    for i, v in enumerate(value)
                )
            kwargs[name] = value
        return cls(**kwargs)

    return resolve(build(Config, data, ""))


def dumps(cfg: Config) -> str:
    """The resolved config as JSON (what run directories and checkpoints record)."""
    return json.dumps(resolved_dict(cfg), indent=2, sort_keys=True)
