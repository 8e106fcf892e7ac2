"""Files a person can look at or listen to, made from generated samples (numpy, raw value ranges).

- :func:`save_video_gif`: videos (B, T, H, W, 3) in [-1, 1] -> ONE looping animated GIF, the B
  clips side by side in a row, each frame upscaled ``scale``× (nearest neighbour). GIF rather
  than MP4 because pillow writes it with no encoder binary (ffmpeg) installed; the cost is a
  256-colour palette per frame and a 10 ms timing resolution (GIF durations are centiseconds).
  Pillow merges consecutive *identical* frames into one longer frame, so a static clip reads
  back with fewer than T frames (same total duration).
- :func:`save_audio_wavs`: normalised log-mels (B, frames, n_mels) -> one 16-bit WAV per sample
  (``{prefix}_{i:02d}.wav``, Griffin-Lim via :func:`modalities.audio.logmel_to_waveform`) plus
  ``{prefix}_mel.png``, the B spectrograms stacked (time across, mel bins up).
- :func:`save_action_plot`: denormalised actions (B, T, A) -> a PNG with one panel per sample
  (at most ``MAX_ACTION_PANELS``), each action dimension a line over time in seconds; with
  proprio (B, T, P ≥ 2) a second row shows the x-y trajectory of proprio[..., :2].

Figures are drawn with matplotlib's Agg backend (no display needed) at a fixed size:
``PANEL_INCHES`` per panel at ``DPI``, no tight bounding box, so the pixel size is predictable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from modalities.audio import AudioSpec, logmel_to_waveform, write_wav

PANEL_INCHES = (4.0, 3.0)  # (width, height) of one subplot panel
DPI = 100
MAX_ACTION_PANELS = 8


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(x, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _check_ndim(name: str, x: np.ndarray, ndim: int, expected: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} has shape {x.shape}; expected {expected}")
    return x


def save_video_gif(videos, path, fps: float = 10.0, scale: int = 4) -> Path:
    """videos (B, T, H, W, 3) in [-1, 1] -> one looping GIF, B clips side by side, ``scale``×."""
    videos = _check_ndim("videos", videos, 5, "(batch, frames, height, width, 3)")
    b, t, h, w, c = videos.shape
    if c != 3:
        raise ValueError(f"videos has shape {videos.shape}; expected (batch, frames, height, width, 3)")
    if fps <= 0 or scale < 1:
        raise ValueError(f"fps={fps} must be positive and scale={scale} at least 1")
    pixels = _to_uint8(videos).transpose(1, 2, 0, 3, 4).reshape(t, h, b * w, 3)  # row of clips
    size = (b * w * scale, h * scale)
    frames = [Image.fromarray(f).resize(size, Image.NEAREST) for f in pixels]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:],
                   duration=1000.0 / fps, loop=0)
    return path


def save_audio_wavs(logmels, spec: AudioSpec, directory, prefix: str = "audio") -> list[Path]:
    """logmels (B, frames, n_mels) -> ``{prefix}_{i:02d}.wav`` per sample + ``{prefix}_mel.png``."""
    logmels = _check_ndim("logmels", logmels, 3, "(batch, frames, n_mels)").astype(np.float32)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    waves = logmel_to_waveform(logmels, spec)  # (B, frames·hop_length)
    paths = []
    for i, wave in enumerate(waves):
        p = directory / f"{prefix}_{i:02d}.wav"
        write_wav(p, wave, spec.sample_rate)
        paths.append(p)

    plt = _pyplot()
    b = logmels.shape[0]
    seconds = spec.frames * spec.hop_length / spec.sample_rate
    fig, axes = plt.subplots(b, 1, squeeze=False,
                             figsize=(2 * PANEL_INCHES[0], PANEL_INCHES[1] * b))
    for i, ax in enumerate(axes[:, 0]):
        im = ax.imshow(logmels[i].T, origin="lower", aspect="auto", cmap="magma",
                       vmin=-1.0, vmax=1.0, extent=(0.0, seconds, 0, spec.n_mels))
        ax.set_title(f"{prefix} {i}")
        ax.set_ylabel("mel bin")
        fig.colorbar(im, ax=ax)
    axes[-1, 0].set_xlabel("time (s)")
    png = directory / f"{prefix}_mel.png"
    fig.savefig(png, dpi=DPI)
    plt.close(fig)
    paths.append(png)
    return paths


def save_action_plot(actions, path, proprio=None, hz: float = 10.0) -> Path:
    """actions (B, T, A) -> PNG: one panel per sample (≤ 8), actions over time in seconds;
    with proprio (B, T, P ≥ 2) a second row of x-y trajectories of proprio[..., :2]."""
    actions = _check_ndim("actions", actions, 3, "(batch, steps, action_dim)")
    if hz <= 0:
        raise ValueError(f"hz={hz} must be positive")
    b, t, a = actions.shape
    if proprio is not None:
        proprio = _check_ndim("proprio", proprio, 3, "(batch, steps, proprio_dim)")
        if proprio.shape[:2] != (b, t):
            raise ValueError(f"proprio has shape {proprio.shape}; expected ({b}, {t}, proprio_dim) "
                             f"matching actions {actions.shape}")
    show_xy = proprio is not None and proprio.shape[-1] >= 2
    n = min(b, MAX_ACTION_PANELS)
    rows = 2 if show_xy else 1

    plt = _pyplot()
    fig, axes = plt.subplots(rows, n, squeeze=False,
                             figsize=(PANEL_INCHES[0] * n, PANEL_INCHES[1] * rows))
    time = np.arange(t) / hz
    for i in range(n):
        ax = axes[0, i]
        for d in range(a):
            ax.plot(time, actions[i, :, d], label=f"a{d}")
        ax.set_title(f"sample {i}")
        ax.set_xlabel("time (s)")
        if i == 0:
            ax.set_ylabel("action")
            if a <= 10:
                ax.legend(fontsize="small")
        if show_xy:
            ax = axes[1, i]
            xy = proprio[i, :, :2]
            ax.plot(xy[:, 0], xy[:, 1], "-", color="tab:blue")
            ax.plot(xy[0, 0], xy[0, 1], "o", color="tab:green", label="start")
            ax.plot(xy[-1, 0], xy[-1, 1], "s", color="tab:red", label="end")
            ax.set_xlabel("proprio x")
            ax.set_ylabel("proprio y")
            ax.set_aspect("equal", adjustable="datalim")
            if i == 0:
                ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
