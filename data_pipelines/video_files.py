"""Video files on disk (optionally with their audio track) as a Grain random-access source.

``VideoFileSource(root, frames, fps, image_size, audio=None, clips_per_video=1, seed=0)`` reads
the video files (``.mp4 .mkv .webm .avi .mov``, any case) under ``root``, recursively; other
files, and names starting with ``.`` (hidden folders, macOS ``._x.mp4`` resource forks), are
ignored.

Labels (the layout rules of ``image_files.ImageFolderSource`` and ``audio_files``):

  root/dog/1.mp4, root/cat/x/2.mkv, ...   every non-hidden sub-folder of ``root`` is a class; its
                                          id is the index of its name in sorted order (cat = 0,
                                          dog = 1), ``classes`` = the sorted names; all videos
                                          anywhere inside it (recursive) belong to it
  root/a.mp4, root/b.webm, ...            ``root`` has no sub-folders: one class 0 named after
                                          ``root`` (``classes == (root's name,)``)

Video files directly in ``root`` beside sub-folders (they have no class), a class folder with no
video (ids would shift if it were dropped), and a missing root or one with no video raise
:class:`SourceError`. Order: class by class, inside a class by relative path; ``files`` /
``labels`` hold the paths and ids.

Examples. ``len(source) == num_videos * clips_per_video``; example ``i`` is clip
``i % clips_per_video`` of video ``i // clips_per_video`` (the order above), and
``source.where(i)`` is that file's path. A clip is ``frames`` frames at the target ``fps``, so it
covers ``frames / fps`` seconds. Its start time is uniform in ``[0, duration - frames / fps]``,
drawn from ``np.random.default_rng([seed, i])``: the same (seed, i) always gives the same clip;
``clips_per_video > 1`` gives several independent random clips of each file.

Time axis and resampling. Times are the video stream's frame timestamps as decord reports them
(seconds from the stream's start); ``duration`` is the end of the last frame. Frame ``k`` of the
clip is the source frame whose timestamp is nearest to ``t_k = start + k / fps``: for a constant
frame-rate file that is frame ``round(t_k * native_fps)``, so a 12 fps file read at 6 fps gives
every second frame and one read at 24 fps repeats each frame. Variable frame rate is handled the
same way (nearest timestamp). A source frame further than one native frame period from ``t_k``
means frames are missing (a damaged file whose index has a hole): :class:`BadSampleError`.

Resize and crop. The shorter side is resized to ``image_size`` (aspect ratio kept), then the
centre ``image_size x image_size`` square is cut. The resize is done by decord inside the reader
(``VideoReader(width=, height=)``, FFmpeg's scaler working on the decoded YUV frame) rather than
with Pillow on full-size RGB frames: measured on 2 cores, 15 frames from a 300-frame H.264 file
(GOP 60), median of 20 clips: 640x360 -> 128: 86 ms (decord) vs 142 ms (Pillow bilinear);
1280x720 -> 128: 323 ms vs 540 ms; the same ordering at 64 and 256. Because the reader needs the
target width and height up front, the first read of a file opens it once more and decodes one
frame to learn its size; that size is then kept per path in the source (cached: 258 ms instead
of 323 ms at 720p). Frames that do not come back at the expected size (e.g. a rotated stream) are
resized with Pillow instead, so the output shape never depends on the file.

Schema of one example:

  video  float32 (frames, image_size, image_size, 3) RGB in [-1, 1]
  label  int32 scalar (see Labels)
  audio  float32 (audio.frames, audio.n_mels), only if ``audio`` (an
         :class:`modalities.audio.AudioSpec`) is given: the normalised log-mel
         (:func:`modalities.audio.waveform_to_logmel`) of the clip's audio.

Audio. The file's first audio track is decoded with ``decord.AudioReader(path,
sample_rate=audio.sample_rate, mono=True)`` and samples ``[round(start * sr), round(start * sr) +
audio.num_samples)`` are cut: the same time span as the video clip (sample 0 is the track's first
decoded sample; a start offset between the audio and video streams, such as AAC encoder priming
kept in some containers, is not corrected). The constructor checks that the spans agree:
``audio.num_samples / sample_rate`` must equal ``frames / fps`` to within half a mel hop
(audio spans come in whole hops), else :class:`SourceError` naming both durations. If the track
ends less than one hop before the span does, the rest is zeros; if it ends earlier, or the file
has no audio track, :class:`BadSampleError`. decord decodes the *whole* track on every read, so
audio from long files is slow; cut long recordings into short files first.

Bad files. Anything that cannot give a valid clip raises :class:`BadSampleError` naming the path
and the reason, for the pipeline's ``on_bad_sample`` policy to handle: a file decord cannot open
(not a video, truncated mp4 without its index, no video stream), a decode failure, frame
timestamps that are missing or invalid, a hole in the frames, frames that come back fewer or of
another shape than requested, a video shorter than one clip (named with its duration and the
duration needed; it is never padded), and the audio cases above. Decoding runs with decord's
``fault_tol`` set so that a frame decord could not decode and would silently replace by a copy
of its neighbour raises instead. A truncated file that decord indexes only up to the cut (e.g. an
mkv) is read as the shorter video it then is.

Cost of construction: the constructor lists ``root`` and nothing else: it opens no video (there
may be thousands), so a bad file is found only when an example from it is read.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from data_pipelines.base import BadSampleError, Field, SourceError, check_example, check_index
from data_pipelines.folders import scan_class_folders
from modalities.audio import AudioSpec, waveform_to_logmel

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")

# decord's fault_tol as a fraction of the frame count: any frame decord recovers by copying a
# neighbour (instead of decoding it) makes it raise DECORDError.
_FAULT_TOL = 1e-9
# Timestamps beyond +-this (about 115 days) come from FFmpeg's "no timestamp" value.
_MAX_TIMESTAMP_S = 1e7
# Slack (seconds) for float32 timestamps and millisecond container time bases.
_TIME_EPS = 1e-3
# Row alignment (bytes) of the frames FFmpeg's filters return: BUFFER_ALIGN of libavfilter 7.40
# (FFmpeg 4.1), the build inside decord 0.6.0's wheel; see decord_width_ok. Builds that align to
# 64 bytes are caught at read time and retried at a width that is a multiple of 64.
_LINE_ALIGN = 32


def _decord():
    import decord  # imported on first read: workers that never read video need not load it

    return decord


def _numpy(array) -> np.ndarray:
    """decord's output under any bridge (native NDArray, or a CPU framework tensor)."""
    return array.asnumpy() if hasattr(array, "asnumpy") else np.asarray(array)


def _reason(error: BaseException) -> str:
    """One readable line from a decord/FFmpeg error (their messages carry a C++ stack trace)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Stack trace")]
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not float(value).is_integer()
        or value < minimum
    ):
        raise SourceError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def resize_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, size, size, 3): shorter side to ``size`` (Pillow bilinear, only
    if it is not already ``size``), then the centre square."""
    height, width = frames.shape[1:3]
    if min(height, width) != size:
        from PIL import Image

        new_w, new_h = _scaled_size(width, height, size)
        frames = np.stack(
            [np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.BILINEAR)) for f in frames]
        )
        height, width = new_h, new_w
    top, left = (height - size) // 2, (width - size) // 2
    return frames[:, top : top + size, left : left + size]


def _scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side equal to ``size`` and the aspect ratio kept."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def _rgb_linesize(width: int, align: int = _LINE_ALIGN) -> int:
    """Bytes per row FFmpeg's filter frame pool gives an RGB24 frame ``width`` pixels wide: the
    width is padded to the smallest power-of-two multiple that makes the row ``align``-aligned."""
    step = 1
    while True:
        linesize = 3 * (-(-width // step) * step)
        if linesize % align == 0 or step >= align:
            return linesize
        step *= 2


def decord_width_ok(width: int, align: int = _LINE_ALIGN) -> bool:
    """Whether decord returns RGB frames ``width`` pixels wide intact. decord 0.6.0 takes the
    channel count of a frame as ``linesize / width`` whenever that divides evenly, so a padded row
    whose length is a multiple of the width (widths 1-4, 6, 8, 12, 16, 24, 48, 72 with FFmpeg
    4.1's 32-byte rows) makes it fail with "DECORDArrayCopyFromTo: The size must exactly match"."""
    linesize = _rgb_linesize(width, align)
    return linesize == 3 * width or linesize % width != 0


def _decodable_size(
    width: int, height: int, out_w: int, out_h: int, align: int = _LINE_ALIGN
) -> tuple[int, int]:
    """(out_w, out_h), or the nearest larger width decord can return with the height that keeps
    the aspect ratio (the frames then go through Pillow to the final size)."""
    if decord_width_ok(out_w, align):
        return out_w, out_h
    new_w = out_w + 1
    while not decord_width_ok(new_w, align):
        new_w += 1
    return new_w, max(out_h, round(height * new_w / width))


def nearest_frames(starts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame whose start time (sorted ``starts``) is nearest to each of ``times``
    (the earlier frame on a tie)."""
    right = np.clip(np.searchsorted(starts, times, side="left"), 0, len(starts) - 1)
    left = np.clip(right - 1, 0, len(starts) - 1)
    take_left = np.abs(times - starts[left]) <= np.abs(starts[right] - times)
    return np.where(take_left, left, right)


class VideoFileSource:
    """Grain random-access source of clips from the video files under ``root`` (see the module
    docstring for sampling, resizing, audio, labels and the errors raised)."""

    def __init__(
        self,
        root,
        frames: int,
        fps: float,
        image_size: int,
        audio: AudioSpec | None = None,
        clips_per_video: int = 1,
        seed: int = 0,
    ):
        self.frames = _positive_int("frames", frames)
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not (math.isfinite(fps) and fps > 0):
            raise SourceError(f"fps must be a positive number, got {fps!r}")
        self.fps = float(fps)
        self.image_size = _positive_int("image_size", image_size)
        self.clips_per_video = _positive_int("clips_per_video", clips_per_video)
        self.seed = _positive_int("seed", seed, minimum=0)
        if audio is not None and not isinstance(audio, AudioSpec):
            raise SourceError(
                f"audio must be a modalities.audio.AudioSpec or None, got {type(audio).__name__}"
            )
        self.audio = audio
        self.clip_seconds = self.frames / self.fps
        if audio is not None:
            audio_seconds = audio.num_samples / audio.sample_rate
            tolerance = 0.5 * audio.hop_length / audio.sample_rate
            if abs(audio_seconds - self.clip_seconds) > tolerance:
                raise SourceError(
                    f"the audio span ({audio.frames} mel frames x {audio.hop_length} samples at "
                    f"{audio.sample_rate} Hz = {audio_seconds:.4f} s) must equal the video clip "
                    f"({self.frames} frames at {self.fps:g} fps = {self.clip_seconds:.4f} s) to "
                    f"within half a hop ({tolerance:.4f} s)"
                )

        found = scan_class_folders(root, VIDEO_EXTENSIONS, "video")
        self.root, self.files, self.labels, self.classes = (
            found.root,
            found.files,
            found.labels,
            found.classes,
        )

        self.schema = {
            "video": Field((self.frames, self.image_size, self.image_size, 3), "float32"),
            "label": Field((), "int32"),
        }
        if audio is not None:
            self.schema["audio"] = Field((audio.frames, audio.n_mels), "float32")
        self._sizes: dict[str, tuple[int, int]] = {}  # path -> native (width, height)

    def __len__(self) -> int:
        return len(self.files) * self.clips_per_video

    def where(self, index: int) -> str:
        index = check_index(index, len(self), "VideoFileSource")
        return self.files[index // self.clips_per_video]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = check_index(index, len(self), "VideoFileSource")
        video_index = index // self.clips_per_video
        path = self.files[video_index]
        rng = np.random.default_rng([self.seed, index])
        video, start = self._read_video(path, rng)
        example = {"video": video, "label": self.labels[video_index]}
        if self.audio is not None:
            example["audio"] = self._read_audio(path, start)
        return check_example(path, example, self.schema)

    # -- video -------------------------------------------------------------------------------

    def _reader(self, path: str, width: int = -1, height: int = -1):
        decord = _decord()
        try:
            return decord.VideoReader(
                path, ctx=decord.cpu(0), num_threads=1, width=width, height=height, fault_tol=_FAULT_TOL
            )
        except (decord.DECORDError, RuntimeError, AssertionError, OSError, ValueError) as e:
            raise BadSampleError(
                path, f"decord cannot open it as a video (not a video, or truncated/corrupt): {_reason(e)}"
            ) from e

    def _native_size(self, path: str) -> tuple[int, int]:
        size = self._sizes.get(path)
        if size is None:
            decord = _decord()
            reader = self._reader(path)
            try:
                height, width = _numpy(reader.next()).shape[:2]
            except (decord.DECORDError, RuntimeError, StopIteration) as e:
                raise BadSampleError(path, f"cannot decode its first frame: {_reason(e)}") from e
            size = self._sizes[path] = (int(width), int(height))
        return size

    def _read_video(self, path: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """(frames, S, S, 3) float32 in [-1, 1] and the clip's start time in seconds."""
        decord = _decord()
        width, height = self._native_size(path)
        out_w, out_h = _decodable_size(width, height, *_scaled_size(width, height, self.image_size))
        reader = self._reader(path, *self._reader_size(width, height, out_w, out_h))
        try:
            count = len(reader)
            stamps = np.asarray(_numpy(reader.get_frame_timestamp(list(range(count)))), np.float64).reshape(
                count, 2
            )
            native_fps = float(reader.get_avg_fps())
        except (decord.DECORDError, RuntimeError) as e:
            raise BadSampleError(path, f"cannot read its frame index: {_reason(e)}") from e
        starts = stamps[:, 0]
        if (
            count < 1
            or not np.isfinite(stamps).all()
            or np.abs(stamps).max() > _MAX_TIMESTAMP_S
            or (np.diff(starts) < 0).any()
        ):
            raise BadSampleError(
                path, f"its {count} frame timestamps are missing or invalid (corrupt or truncated file)"
            )
        if math.isfinite(native_fps) and native_fps > 0:
            period = 1.0 / native_fps
        elif count > 1:
            period = float(np.median(np.diff(starts)))
        else:
            raise BadSampleError(path, "one frame and no frame rate: cannot tell its duration")
        end = stamps[-1, 1] if stamps[-1, 1] > starts[-1] else starts[-1] + period
        if end + _TIME_EPS < self.clip_seconds:
            raise BadSampleError(
                path,
                f"video is {end:.3f} s long ({count} frames at {native_fps:g} fps); a clip "
                f"needs {self.clip_seconds:.3f} s ({self.frames} frames at {self.fps:g} fps)",
            )
        start = float(rng.uniform(0.0, max(end - self.clip_seconds, 0.0)))
        times = start + np.arange(self.frames) / self.fps
        picks = nearest_frames(starts, times)
        gap = np.abs(starts[picks] - times)
        if (gap > period + _TIME_EPS).any():
            k = int(np.argmax(gap))
            raise BadSampleError(
                path,
                f"frames are missing: the nearest frame to t={times[k]:.3f} s is at "
                f"{starts[picks[k]]:.3f} s, more than one frame period ({period:.3f} s) "
                f"away (corrupt or truncated file)",
            )
        indices = [int(j) for j in picks]
        try:
            pixels = _numpy(reader.get_batch(indices))
        except (decord.DECORDError, RuntimeError, IndexError) as e:
            if "DECORDArrayCopyFromTo" not in str(e):
                raise BadSampleError(
                    path, f"decoding frames {indices[0]}..{indices[-1]} of {count} failed: {_reason(e)}"
                ) from e
            # an FFmpeg build with wider row alignment (see _LINE_ALIGN): retry at the nearest
            # width that is also whole with 64-byte rows
            out_w, out_h = _decodable_size(width, height, out_w, out_h, align=64)
            reader = self._reader(path, *self._reader_size(width, height, out_w, out_h))
            try:
                pixels = _numpy(reader.get_batch(indices))
            except (decord.DECORDError, RuntimeError, IndexError) as e2:
                raise BadSampleError(
                    path, f"decoding frames {indices[0]}..{indices[-1]} of {count} failed: {_reason(e2)}"
                ) from e2
        if pixels.ndim != 4 or pixels.shape[0] != self.frames or pixels.shape[-1] != 3:
            raise BadSampleError(
                path,
                f"decoded frames have shape {pixels.shape}, expected "
                f"{self.frames} RGB frames (fewer frames than requested)",
            )
        pixels = resize_crop(pixels, self.image_size)
        return pixels.astype(np.float32) / 127.5 - 1.0, start

    @staticmethod
    def _reader_size(width: int, height: int, out_w: int, out_h: int) -> tuple[int, int]:
        """decord's (width, height) arguments: -1, -1 (no scaler) for the native size."""
        return (-1, -1) if (out_w, out_h) == (width, height) else (out_w, out_h)

    # -- audio -------------------------------------------------------------------------------

    def _read_audio(self, path: str, start: float) -> np.ndarray:
        decord = _decord()
        spec = self.audio
        try:
            reader = decord.AudioReader(path, ctx=decord.cpu(0), sample_rate=spec.sample_rate, mono=True)
        except (decord.DECORDError, RuntimeError, AssertionError, OSError, ValueError) as e:
            if "find audio stream" in str(e):
                raise BadSampleError(path, "audio was requested but the file has no audio track") from e
            raise BadSampleError(path, f"cannot decode its audio track: {_reason(e)}") from e
        total = int(reader.shape[1])
        first = int(round(start * spec.sample_rate))
        stop = first + spec.num_samples
        missing = stop - total
        if missing >= spec.hop_length:
            raise BadSampleError(
                path,
                f"audio track is {total / spec.sample_rate:.3f} s long ({total} samples at "
                f"{spec.sample_rate} Hz) but the clip needs audio up to "
                f"{stop / spec.sample_rate:.3f} s",
            )
        try:
            wave = _numpy(reader.get_batch(range(first, min(stop, total))))
        except (decord.DECORDError, RuntimeError, IndexError) as e:
            raise BadSampleError(path, f"cannot read audio samples {first}..{stop}: {_reason(e)}") from e
        wave = np.asarray(wave, np.float32).reshape(-1)
        if missing > 0:
            wave = np.concatenate([wave, np.zeros(missing, np.float32)])
        if not np.isfinite(wave).all():
            raise BadSampleError(path, "audio track has non-finite samples")
        return waveform_to_logmel(wave, spec)[0]

    def __repr__(self) -> str:
        return (
            f"VideoFileSource(root={self.root!r}, frames={self.frames}, fps={self.fps:g}, "
            f"image_size={self.image_size}, audio={self.audio!r}, "
            f"clips_per_video={self.clips_per_video}, seed={self.seed}; "
            f"{len(self.files)} files, {len(self.classes)} classes)"
        )
