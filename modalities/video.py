"""Video modality: spatio-temporal tubelets of frames or latents, and their (t, h, w) positions.

A ``(B, T, H, W, C)`` clip is cut into tubelets of ``tubelet`` frames × p × p pixels. Tokens are
ordered (time, row, col) — time slowest, then row-major over the patch grid, so each time-row
of tokens is one image-like grid — and each token's features are ordered ``(c, tt, p1, p2)``
(channel slowest, as in the image modality; a tubelet of 1 frame gives the image layout).

Positions: t = ``time_offset`` + the **start** time of the tubelet's first frame in ticks
(frame_index · 100/fps; 10 ms per tick, see :mod:`modalities.base`), consistent with audio and
action tokens, which also use start times; (h, w) = patch row/col.

Latent video (``selfflow prepare --encode wan2.1|wan2.2``): the frames are WAN latent frames,
``channels`` = the autoencoder's ``z_dim``, ``frames`` = ``1 + (T - 1) / 4`` for T video frames.
``fps`` stays the video's frame rate (``data.fps``: what decoded samples play at) and
``frame_stride`` (4, the manifest's ``frames_per_latent``) is the video frames per stored frame:
latent frame i sits at video frame ``4 i``. Latent frame 0 is video frame 0 alone and latent frame
i >= 1 summarises frames ``4 i - 3 .. 4 i``, so this is the last of its frames rather than its
start: chosen so that latent frames stay evenly spaced (0.4 s apart at 10 fps) on the clock that
audio and action tokens use, at most 3 video frames after the start-time convention above.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from modalities.base import TICKS_PER_SECOND, ModalitySpec, check_divisible, check_shape, grid_positions

NAME = "video"
DEFAULT_MASK_RATIO = 0.1
DEFAULT_TIME_SHIFT = 1.0
KEYS = ("video",)  # (B, T, H, W, C) float


@dataclasses.dataclass(frozen=True)
class VideoSpec(ModalitySpec):
    """``frames`` frames of H×W×C at ``fps``; frames % tubelet == 0, H % p == W % p == 0.
    ``frame_stride``: video frames per stored frame (1 for pixels, 4 for WAN latents, see the module
    docstring); positions step by ``tubelet · frame_stride`` video frames."""

    name = NAME
    frames: int
    height: int
    width: int
    channels: int = 3
    patch_size: int = 2
    tubelet: int = 2
    fps: float = 10.0
    frame_stride: int = 1

    def __post_init__(self):
        check_divisible("frames", self.frames, "tubelet", self.tubelet)
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride={self.frame_stride} must be >= 1")
        check_divisible("height", self.height, "patch_size", self.patch_size)
        check_divisible("width", self.width, "patch_size", self.patch_size)
        if self.fps <= 0:
            raise ValueError(f"fps={self.fps} must be positive")

    @property
    def grid(self) -> tuple[int, int, int]:
        """(time, rows, cols) tubelets."""
        return (self.frames // self.tubelet, self.height // self.patch_size, self.width // self.patch_size)

    @property
    def frame_ticks(self) -> float:
        """Duration of one frame in ticks (10 at 10 fps)."""
        return TICKS_PER_SECOND / self.fps

    @property
    def token_dim(self) -> int:
        return self.channels * self.tubelet * self.patch_size * self.patch_size

    @property
    def num_tokens(self) -> int:
        gt, gh, gw = self.grid
        return gt * gh * gw


Spec = VideoSpec


def tokenize(video, spec: VideoSpec):
    """(B, T, H, W, C) -> (B, N, C·tubelet·p·p), N = (T/tubelet)·(H/p)·(W/p)."""
    check_shape(
        "video",
        video.shape,
        (None, spec.frames, spec.height, spec.width, spec.channels),
        "(batch, frames, height, width, channels)",
    )
    b, c, tt, p = video.shape[0], spec.channels, spec.tubelet, spec.patch_size
    gt, gh, gw = spec.grid
    x = video.reshape(b, gt, tt, gh, p, gw, p, c)
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # b, gt, gh, gw, c, tt, p1, p2
    return x.reshape(b, spec.num_tokens, spec.token_dim)


def detokenize(tokens, spec: VideoSpec):
    """(B, N, C·tubelet·p·p) -> (B, T, H, W, C); the exact inverse of :func:`tokenize`."""
    check_shape(
        "tokens",
        tokens.shape,
        (None, spec.num_tokens, spec.token_dim),
        "(batch, spec.num_tokens, spec.token_dim)",
    )
    b, c, tt, p = tokens.shape[0], spec.channels, spec.tubelet, spec.patch_size
    gt, gh, gw = spec.grid
    x = tokens.reshape(b, gt, gh, gw, c, tt, p, p)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)  # b, gt, tt, gh, p1, gw, p2, c
    return x.reshape(b, spec.frames, spec.height, spec.width, c)


def positions(spec: VideoSpec, time_offset: float = 0.0) -> np.ndarray:
    """(N, 3) float32 (t, h, w); t steps by tubelet·frame_stride·100/fps ticks between token time-rows."""
    gt, gh, gw = spec.grid
    times = time_offset + np.arange(gt) * spec.tubelet * spec.frame_stride * spec.frame_ticks
    return grid_positions(times, gh, gw)


def latent_frame_stride(data_cfg) -> int:
    """Video frames per stored frame of the run's video: the ``frames_per_latent`` that the manifest
    of a ``kind="latents"`` source holding ``video`` records for its autoencoder (WAN: 4), else 1.
    Read from ``manifest.json`` directly (modalities import nothing of the data pipelines); a
    manifest that cannot be read is left to the latents source to report."""
    strides = set()
    for sc in data_cfg.sources:
        if sc.kind != "latents":
            continue
        # a directory written in parts (prepare --process-count N) has one manifest per part
        paths = [Path(sc.path) / "manifest.json", *sorted(Path(sc.path).glob("part-*-of-*/manifest.json"))]
        try:
            manifest = json.loads(next(p for p in paths if p.is_file()).read_text())
        except (OSError, ValueError, StopIteration):
            continue
        record = manifest.get("autoencoder") if isinstance(manifest, dict) else None
        if "video" in (manifest.get("schema") or {}) and isinstance(record, dict):
            strides.add(int(record.get("frames_per_latent") or 1))
    if len(strides) > 1:
        raise ValueError(f"the run's latent video sources have different frames_per_latent {sorted(strides)}")
    return strides.pop() if strides else 1


def spec_for(shapes: dict[str, tuple], cfg, examples) -> VideoSpec:
    """The run's spec: the sources' (T, H, W, C) clips in ``data.video_patch`` × ``video_tubelet``
    tubelets at ``data.fps``; WAN latent clips with their :func:`latent_frame_stride`."""
    t, h, w, c = shapes["video"]
    d = cfg.data
    return VideoSpec(t, h, w, c, d.video_patch, d.video_tubelet, d.fps, latent_frame_stride(d))


def tokenize_batch(raw: dict, spec: VideoSpec):
    """A batch dict with ``KEYS`` -> (B, N, token_dim)."""
    return tokenize(raw["video"], spec)
