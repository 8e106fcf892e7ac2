"""Small video files written with PyAV for the tests (a helper module, not a test module): flat
colour frames whose index can be read back from a decoded frame, with an optional tone track."""

from __future__ import annotations

import fractions

import av  # dev dependency (pyproject [dev])
import numpy as np

FPS = 12
SIZE = 32
SR = 16000
STEP = 5  # colour step per frame: frame i is the flat colour (5i, 255 - 5i, 128); i < 52


def frame_colour(i: int) -> np.ndarray:
    return np.array([STEP * i, 255 - STEP * i, 128], np.uint8)


def colour_index(frame: np.ndarray) -> int:
    """Which frame a decoded [-1, 1] frame shows: R - G = 10 i - 255 steps by 10 per frame, and
    the codec's errors in R and G (a few levels, mostly luma) largely cancel in the difference."""
    r, g, _ = (frame.reshape(-1, 3).mean(0) + 1.0) * 127.5
    return int(round((r - g + 255) / (2 * STEP)))


def write_video(
    path,
    n_frames=24,
    fps=FPS,
    size=(SIZE, SIZE),
    codec="libx264",
    audio_codec=None,
    audio_seconds=None,
    tone_start=0.0,
):
    """``n_frames`` flat-colour frames (frame i = frame_colour(i)), yuv420p; optionally a mono
    ``audio_codec`` track at 16 kHz of ``audio_seconds`` s (default: as long as the video):
    silence until ``tone_start`` s, then an amplitude-0.5 440 Hz sine."""
    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 2_000_000  # mpeg4 at its default rate skips small colour steps
        audio = None
        if audio_codec is not None:
            audio = container.add_stream(audio_codec, rate=SR)
            audio.layout = "mono"
        for i in range(n_frames):
            image = np.broadcast_to(frame_colour(i), (height, width, 3)).copy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            total = int(round((n_frames / fps if audio_seconds is None else audio_seconds) * SR))
            times = np.arange(total) / SR
            wave = np.where(times >= tone_start, 0.5 * np.sin(2 * np.pi * 440.0 * times), 0.0)
            chunk = audio.frame_size or 1024
            for pos in range(0, total, chunk):
                piece = wave[pos : pos + chunk]
                if audio.format.name == "s16":
                    samples = (piece * 32767).astype(np.int16)[None]
                else:
                    samples = piece.astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(samples, format=audio.format.name, layout="mono")
                frame.sample_rate, frame.pts = SR, pos
                frame.time_base = fractions.Fraction(1, SR)
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path
