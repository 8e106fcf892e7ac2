"""Tiny configurations shared by the tests (a helper module, not a test module).

Each section argument (``model=``, ``data=``, ...) is a dict of that section's fields that replace
the defaults here; other keyword arguments are ``Config`` fields (``layouts``, ``seed``, ...).
"""

from __future__ import annotations

from selfflow.config import (
    Config,
    DataConfig,
    LayoutConfig,
    MeshConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    SampleConfig,
    TrainConfig,
    validate,
)

ONE_DEVICE = MeshConfig(data=1)  # the 8 simulated devices are for the sharding tests


def tiny_model(**fields) -> ModelConfig:
    """Depth 2, width 32, 2 heads, patch 4: a step is milliseconds on CPU."""
    return ModelConfig(
        **{"preset": "tiny", "depth": 2, "hidden_size": 32, "num_heads": 2, "patch_size": 4, **fields}
    )


def tiny_image_config(
    *,
    model: dict | None = None,
    data: dict | None = None,
    objective: dict | None = None,
    optim: dict | None = None,
    train: dict | None = None,
    sample: dict | None = None,
    **fields,
) -> Config:
    """A Self-Flow run of the tiny model on 16x16 shapes: student layer 1, teacher layer 2, EMA 0.9,
    learning rate 1e-3, batch 8 (without ``layouts``), 2 sampling steps of 1 image per class, on one device."""
    layouts = fields.get("layouts") or ()
    images = not layouts or any(t.partition(":")[0] == "image" for lc in layouts for t in lc.segments)
    return Config(
        model=tiny_model(**{**({} if images else {"patch_size": None}), **(model or {})}),
        data=DataConfig(**{"image_size": 16, **(data or {})}),
        objective=ObjectiveConfig(
            **{"student_layer": 1, "teacher_layer": 2, "ema_decay": 0.9, **(objective or {})}
        ),
        optim=OptimConfig(**{"learning_rate": 1e-3, **(optim or {})}),
        # batch 8 for the implicit image layout; given layouts carry their own batch sizes
        train=TrainConfig(**{"batch_size": None if fields.get("layouts") else 8, **(train or {})}),
        sample=SampleConfig(**{"steps": 2, "per_class": 1, **(sample or {})}),
        **{"mesh": ONE_DEVICE, **fields},
    )


def tiny_world_config(
    layouts: tuple[LayoutConfig, ...],
    *,
    model: dict | None = None,
    data: dict | None = None,
    objective: dict | None = None,
    optim: dict | None = None,
    train: dict | None = None,
    sample: dict | None = None,
    **fields,
) -> Config:
    """A validated run of the tiny model (RoPE positions, its own patch sizes) on 64 clips of the
    procedural world with 3 classes, one read thread: student layer 1, teacher layer 2, 2 sampling
    steps, on one device. The other settings are the defaults."""
    return validate(
        Config(
            model=ModelConfig(
                **{"depth": 2, "hidden_size": 32, "num_heads": 2, "positions": "rope", **(model or {})}
            ),
            objective=ObjectiveConfig(**{"student_layer": 1, "teacher_layer": 2, **(objective or {})}),
            optim=OptimConfig(**(optim or {})),
            data=DataConfig(
                **{
                    "source": "world",
                    "num_examples": 64,
                    "num_classes": 3,
                    "read_threads": 1,
                    "prefetch": 1,
                    **(data or {}),
                }
            ),
            train=TrainConfig(**(train or {})),
            sample=SampleConfig(**{"steps": 2, **(sample or {})}),
            **{"mesh": ONE_DEVICE, "layouts": tuple(layouts), **fields},
        )
    )


# test_export's run; test_official exports it in the official format too.
EXPORT_RUN = tiny_image_config(
    objective=dict(ema_decay=0.5), optim=dict(learning_rate=1e-2), train=dict(steps=3, checkpoint_every=3)
)

# The six-layout mixture of test_mixed (also named by test_checkpoint_policy).
MIXED_LAYOUTS = (
    LayoutConfig("image", ("image",), 0.3, 4),
    LayoutConfig("video", ("video",), 0.15, 2),
    LayoutConfig("audio", ("audio",), 0.15, 2),
    LayoutConfig("audio_video", ("video", "audio"), 0.15, 2),
    # paired: sound generated for a given video; robotics: first frame -> future frames + actions
    LayoutConfig("video_to_audio", ("video:condition", "audio"), 0.1, 2),
    LayoutConfig("robot", ("image:condition", "video", "action"), 0.15, 2),
)


def mixed_config(steps: int) -> Config:
    """test_mixed's run: MIXED_LAYOUTS for ``steps`` steps, EMA 0.9, learning rate 3e-3."""
    return tiny_world_config(
        MIXED_LAYOUTS,
        objective=dict(ema_decay=0.9),
        optim=dict(learning_rate=3e-3),
        train=dict(steps=steps, log_every=1, checkpoint_every=5),
        sample=dict(per_class=1),
    )
