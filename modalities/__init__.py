"""One module per modality, each with the same interface (see :mod:`modalities.base`):

``NAME``, ``DEFAULT_MASK_RATIO``, ``DEFAULT_TIME_SHIFT``, a frozen ``Spec`` dataclass
(``.token_dim``, ``.num_tokens``), ``tokenize(x, spec) -> (B, N, token_dim)``,
``detokenize(tokens, spec)`` (exact inverse) and ``positions(spec, time_offset=0.0)`` ->
(N, 3) float32 (t, h, w), t in 10 ms ticks shared by all modalities.
"""

from __future__ import annotations

from types import ModuleType

from modalities import action, audio, image, video
from modalities.base import TICKS_PER_SECOND, TIME_UNIT_MS, Modality, ModalitySpec

MODALITIES: dict[str, ModuleType] = {"image": image, "video": video, "audio": audio,
                                     "action": action}


def get(name: str) -> ModuleType:
    """The modality module called ``name``; ValueError naming the known ones otherwise."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; known modalities: "
                         f"{', '.join(MODALITIES)}") from None


__all__ = ["MODALITIES", "get", "image", "video", "audio", "action", "Modality", "ModalitySpec",
           "TIME_UNIT_MS", "TICKS_PER_SECOND"]
