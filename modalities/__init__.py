"""The modality registry: one module (or object) per modality, each with the same interface
(see :class:`modalities.base.Modality`):

``NAME``, ``KEYS`` (the example keys its data sources yield), ``DEFAULT_MASK_RATIO``,
``DEFAULT_TIME_SHIFT``, a frozen ``Spec`` dataclass (``.token_dim``, ``.num_tokens``),
``spec_for(shapes, cfg, examples)`` (the run's spec from the shapes its sources yield),
``tokenize_batch(raw, spec)`` (a batch dict -> (B, N, token_dim)), ``tokenize(x, spec)``,
``detokenize(tokens, spec)`` (exact inverse) and ``positions(spec, time_offset=0.0)`` -> (N, 3)
float32 (t, h, w), t in 10 ms ticks shared by all modalities.

A fifth modality is a module with that interface passed to :func:`register`; configs can then
name it in layouts (see the README's "Extending").
"""

from __future__ import annotations

from types import ModuleType

from modalities import action, audio, image, text, video
from modalities.base import TICKS_PER_SECOND, TIME_UNIT_MS, Modality, ModalitySpec

MODALITIES: dict[str, ModuleType] = {}


def register(module) -> None:
    """Adds a modality (a module or object with the :class:`Modality` interface) under its NAME;
    a missing attribute is a TypeError naming it."""
    missing = [a for a in Modality.__annotations__ if not hasattr(module, a)]
    methods = [n for n, v in vars(Modality).items() if not n.startswith("_") and callable(v)]
    missing += [f for f in methods if not callable(getattr(module, f, None))]
    if missing:
        raise TypeError(
            f"modality {getattr(module, 'NAME', module)!r} lacks {', '.join(missing)} "
            "(see modalities.base.Modality)"
        )
    MODALITIES[module.NAME] = module


for _module in (image, video, audio, action, text):
    register(_module)


def get(name: str) -> ModuleType:
    """The modality module called ``name``; ValueError naming the known ones otherwise."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; known modalities: {', '.join(MODALITIES)}") from None


def keys_of(name: str) -> tuple[str, ...]:
    """The example keys a data source yields for modality ``name``."""
    return tuple(get(name).KEYS)


__all__ = [
    "MODALITIES",
    "register",
    "get",
    "keys_of",
    "image",
    "video",
    "audio",
    "action",
    "text",
    "Modality",
    "ModalitySpec",
    "TIME_UNIT_MS",
    "TICKS_PER_SECOND",
]
