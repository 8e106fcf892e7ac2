"""Files a person can look at or listen to, made from generated samples (numpy, raw value ranges).

- :func:`save_video_mp4`: videos (B, T, H, W, 3) in [-1, 1] -> ONE MP4, the B clips side by side
  in a row, each frame upscaled ``scale``× (nearest neighbour), optionally with a mono soundtrack
  muxed in (``audio=`` waveform, ``sample_rate=``). Written with PyAV (bundled FFmpeg, no binary
  needed): H.264 (``libx264``, yuv420p, CRF ``MP4_CRF``) where the PyAV build has it (the
  av==18.1.0 wheels do), else MPEG-4 Part 2 (``mpeg4``); :func:`video_codec` says which. Full
  colour, and frame i is at exactly i/fps s for any fps that is a fraction with denominator at
  most 1001 (the time base is the Fraction 1/fps: 12.5 fps is exactly 80 ms a frame, 29.97 and
  30000/1001 are kept exact). yuv420p needs even sizes: an odd height/width gets one extra row/column
  (a copy of the last) at the bottom/right. The soundtrack is AAC (``aac``, else MP3 via
  ``libmp3lame``; :func:`audio_codec`), resampled by FFmpeg if the encoder lacks ``sample_rate``;
  its decoded length is the waveform's to within one codec frame (1024 samples for AAC).
- :func:`save_video_gif`: the same row of clips as ONE looping animated GIF (pillow). Kept as an
  option (``sample.video_format="gif"``) for places that show GIFs inline; the cost is a
  256-colour palette per frame and a 10 ms timing resolution (GIF durations are centiseconds).
  Pillow merges consecutive *identical* frames into one longer frame, so a static clip reads
  back with fewer than T frames (same total duration).
- :func:`save_audio_wavs`: normalised log-mels (B, frames, n_mels) -> one 16-bit WAV per sample
  (``{prefix}_{i:02d}.wav``, Griffin-Lim via :func:`modalities.audio.logmel_to_waveform`, or the
  caller's ``waveforms``) plus ``{prefix}_mel.png``, the B spectrograms stacked (time across, mel
  bins up).
- :func:`save_action_plot`: denormalised actions (B, T, A) -> a PNG with one panel per sample
  (at most ``MAX_ACTION_PANELS``), each action dimension a line over time in seconds; with
  proprio (B, T, P ≥ 2) a second row shows the x-y trajectory of proprio[..., :2].

Figures are drawn with matplotlib's Agg backend (no display needed) at a fixed size:
``PANEL_INCHES`` per panel at ``DPI``, no tight bounding box, so the pixel size is predictable.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from modalities.audio import AudioSpec, logmel_to_waveform, write_wav

PANEL_INCHES = (4.0, 3.0)  # (width, height) of one subplot panel
DPI = 100
MAX_ACTION_PANELS = 8
VIDEO_CODECS = ("libx264", "mpeg4")  # MP4 video encoders, in order of preference
AUDIO_CODECS = ("aac", "libmp3lame")  # MP4 soundtrack encoders, in order of preference
MP4_CRF = 18  # libx264 constant rate factor: visually near-lossless (mpeg4 uses MPEG4_QSCALE)
MPEG4_QSCALE = 3  # fixed quantiser of the mpeg4 fallback (2 = best .. 31 = worst)


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


def _pick_codec(preferred: tuple[str, ...], kind: str) -> str:
    import av

    for name in preferred:
        if name in av.codecs_available:
            return name
    raise RuntimeError(
        f"this PyAV build ({av.__version__}) has none of the {kind} encoders {', '.join(preferred)}"
    )


def video_codec() -> str:
    """The encoder :func:`save_video_mp4` uses: the first of ``VIDEO_CODECS`` this PyAV has."""
    return _pick_codec(VIDEO_CODECS, "video")


def audio_codec() -> str:
    """The soundtrack encoder: the first of ``AUDIO_CODECS`` this PyAV has."""
    return _pick_codec(AUDIO_CODECS, "audio")


def _video_row(videos) -> np.ndarray:
    """(B, T, H, W, 3) in [-1, 1] -> (T, H, B·W, 3) uint8: the clips side by side."""
    videos = _check_ndim("videos", videos, 5, "(batch, frames, height, width, 3)")
    b, t, h, w, c = videos.shape
    if c != 3 or min(b, t, h, w) < 1:
        raise ValueError(f"videos has shape {videos.shape}; expected (batch, frames, height, width, 3)")
    return _to_uint8(videos).transpose(1, 2, 0, 3, 4).reshape(t, h, b * w, 3)


def _check_rate(fps, scale) -> None:
    if isinstance(fps, bool) or not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps={fps!r} must be a positive finite number")
    if isinstance(scale, bool) or not (isinstance(scale, numbers.Integral) and scale >= 1):
        raise ValueError(f"scale={scale!r} must be an integer of at least 1")


def save_video_mp4(
    videos, path, fps: float = 10.0, scale: int = 4, audio=None, sample_rate: int | None = None
) -> Path:
    """videos (B, T, H, W, 3) in [-1, 1] -> one MP4 at ``fps``, B clips side by side, ``scale``×.

    Video: H.264 (``libx264``, yuv420p, CRF ``MP4_CRF``) because every browser and player opens
    it; ``mpeg4`` only if this PyAV build lacks libx264 (see :func:`video_codec`). Frame i is
    shown at exactly i/fps s (time base 1/fps as a Fraction, fps rounded to the nearest fraction
    with denominator ≤ 1001), the file lasts T/fps s. Frames are
    (H·scale, B·W·scale), plus one repeated row/column where that is odd (yuv420p).

    ``audio``: optional mono waveform (S,) in [-1, 1] (clipped) at ``sample_rate`` Hz, muxed as a
    second stream (AAC, else MP3; see :func:`audio_codec`); it keeps its own length S/sample_rate
    (not cut or padded to the video's).
    """
    import av

    pixels = _video_row(videos)
    _check_rate(fps, scale)
    wave = None
    if audio is not None:
        wave = np.asarray(audio, np.float32)
        if wave.ndim != 1 or wave.size == 0:
            raise ValueError(f"audio has shape {wave.shape}; expected a mono waveform (samples,)")
        if not np.all(np.isfinite(wave)):
            raise ValueError("audio has non-finite samples")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
            raise ValueError(f"sample_rate={sample_rate!r}: a positive integer (Hz) is required with audio")
        wave = np.clip(wave, -1.0, 1.0)

    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    t, height, width, _ = pixels.shape
    pad = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
    if height % 2 or width % 2:
        pixels = np.pad(pixels, pad, mode="edge")
    rate = (Fraction(fps) if isinstance(fps, numbers.Rational) else Fraction(float(fps))).limit_denominator(
        1001
    )  # 12.5 -> 25/2, 29.97 -> 2997/100, 30000/1001 stays
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    codec = video_codec()
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        video = out.add_stream(codec, rate=rate)
        video.width, video.height = pixels.shape[2], pixels.shape[1]
        video.pix_fmt = "yuv420p"
        video.time_base = video.codec_context.time_base = 1 / rate
        if codec == "libx264":
            video.options = {"crf": str(MP4_CRF)}
        else:
            video.codec_context.qscale = MPEG4_QSCALE
        sound = None
        if wave is not None:
            acodec = audio_codec()
            rates = av.codec.Codec(acodec, "w").audio_rates
            arate = int(sample_rate)
            if rates and arate not in rates:  # the encoder resamples to the nearest supported
                arate = min((r for r in rates if r >= arate), default=max(rates))
            sound = out.add_stream(acodec, rate=arate, layout="mono")
        for i, image in enumerate(pixels):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = int(sample_rate), 0, Fraction(1, int(sample_rate))
            out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


def save_video_gif(videos, path, fps: float = 10.0, scale: int = 4) -> Path:
    """videos (B, T, H, W, 3) in [-1, 1] -> one looping GIF, B clips side by side, ``scale``×."""
    pixels = _video_row(videos)  # (T, H, B·W, 3)
    _check_rate(fps, scale)
    _, h, bw, _ = pixels.shape
    size = (bw * scale, h * scale)
    frames = [Image.fromarray(f).resize(size, Image.NEAREST) for f in pixels]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=1000.0 / fps, loop=0)
    return path


def save_audio_wavs(logmels, spec: AudioSpec, directory, prefix: str = "audio", waveforms=None) -> list[Path]:
    """logmels (B, frames, n_mels) -> ``{prefix}_{i:02d}.wav`` per sample + ``{prefix}_mel.png``.

    ``waveforms`` (B, S) at spec.sample_rate: written instead of running Griffin-Lim again (pass
    :func:`modalities.audio.logmel_to_waveform`'s result when it is also needed elsewhere)."""
    logmels = _check_ndim("logmels", logmels, 3, "(batch, frames, n_mels)").astype(np.float32)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if waveforms is None:
        waves = logmel_to_waveform(logmels, spec)  # (B, frames·hop_length)
    else:
        waves = _check_ndim("waveforms", waveforms, 2, "(batch, samples)")
        if waves.shape[0] != logmels.shape[0]:
            raise ValueError(
                f"waveforms has shape {waves.shape}; expected ({logmels.shape[0]}, "
                f"samples) matching logmels {logmels.shape}"
            )
    paths = []
    for i, wave in enumerate(waves):
        p = directory / f"{prefix}_{i:02d}.wav"
        write_wav(p, wave, spec.sample_rate)
        paths.append(p)

    plt = _pyplot()
    b = logmels.shape[0]
    seconds = spec.frames * spec.hop_length / spec.sample_rate
    fig, axes = plt.subplots(b, 1, squeeze=False, figsize=(2 * PANEL_INCHES[0], PANEL_INCHES[1] * b))
    for i, ax in enumerate(axes[:, 0]):
        im = ax.imshow(
            logmels[i].T,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=-1.0,
            vmax=1.0,
            extent=(0.0, seconds, 0, spec.n_mels),
        )
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
            raise ValueError(
                f"proprio has shape {proprio.shape}; expected ({b}, {t}, proprio_dim) "
                f"matching actions {actions.shape}"
            )
    show_xy = proprio is not None and proprio.shape[-1] >= 2
    n = min(b, MAX_ACTION_PANELS)
    rows = 2 if show_xy else 1

    plt = _pyplot()
    fig, axes = plt.subplots(rows, n, squeeze=False, figsize=(PANEL_INCHES[0] * n, PANEL_INCHES[1] * rows))
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
