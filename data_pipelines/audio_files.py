"""Audio files from a folder tree as normalised log-mel examples (optionally class-labelled).

``AudioFileSource(root, spec)`` reads audio files (extensions ``.wav .flac .ogg .oga .mp3``, any
case; other files, and names starting with ``.`` such as macOS ``._x.wav`` resource forks or hidden
folders, are ignored). Layout (the same rules as ``image_files.ImageFolderSource``):

  root/dog/1.wav, root/cat/x/2.mp3, ...   every non-hidden sub-folder of ``root`` is a class; its
                                          id is the index of its name in sorted order (cat = 0,
                                          dog = 1), ``classes`` = the sorted names; all audio files
                                          anywhere inside it (recursive) belong to it
  root/a.wav, root/b.flac, ...            ``root`` has no sub-folders: one class 0 named after
                                          ``root`` (``classes == (root's name,)``)

Audio files directly in ``root`` beside sub-folders (they have no class), a class folder with no
audio file (a class with no examples; ids would shift if it were dropped), and a missing root or
one with no audio files raise :class:`SourceError`. So ``len(classes)`` is always the number of
labels. Order: class by class, inside a class by relative path, so index ``i`` names the same file
on every machine; ``files`` / ``labels`` hold the paths and ids.

Example ``i`` (``source.schema``):

  audio     float32 (spec.frames, spec.n_mels): ``modalities.audio.waveform_to_logmel`` of the clip
  label     int32 scalar
  waveform  float32 (spec.num_samples,) in [-1, 1], only with ``return_waveform=True``; ``audio``
            is exactly the log-mel of this waveform

Reading: ``librosa.load(file, sr=spec.sample_rate, mono=True)`` of the file opened with soundfile
(libsndfile: WAV, FLAC, Ogg Vorbis/Opus, MP3; passing the open file, not the path, stops librosa
from retrying a failed decode with audioread, which would hide libsndfile's error), resampled with
librosa's default (soxr, high quality), multi-channel audio downmixed to the mean of its channels.
The whole file is decoded for every read (also what the truncation check needs), so very long
files are slow: cut them into clips beforehand. Then the clip is cut to exactly
``spec.num_samples`` samples (= frames · hop_length):

  longer   cropped to a window starting at a random sample (``crop="random"``: uniform over all
           full windows, drawn from ``np.random.default_rng([seed, index])``, so a pure function of
           (seed, index): the same window for example i in every epoch and process), at the start
           (``"start"``), or in the middle (``"center"``, start = (length - num_samples) // 2)
  shorter  zero-padded at the end. Zeros are silence, whose log-mel is the floor (-1), i.e. the
           padded frames look like a quiet tail, not like an artefact; frames whose analysis
           window overlaps the end of the real audio are partly filled

and clipped to [-1, 1] (PCM never exceeds it; a float file or resampling overshoot can).

Bad files raise :class:`BadSampleError` (the path and why; the ``on_bad_sample`` policy then
decides), never a raw decoder traceback (the decoder's message is kept in the reason):
an empty (0-byte) file; a file the decoder cannot open (not audio, corrupt, unsupported); a
file with no samples; a truncated file: a WAV whose ``data`` chunk declares more bytes than the
file holds (libsndfile itself silently reads what is there), or any format that decodes to
noticeably fewer samples than its header announces (more than 1% short: that is how a cut MP3
shows; a cut FLAC or Ogg fails to decode. An MP3's frame count comes from its Xing/LAME header,
or is estimated from the file size without one, so a VBR MP3 lacking that header may be
misjudged); NaN or infinite samples (a float WAV can hold them).
Silence is a valid example.

librosa is imported on the first read, not at import time (it is slow to import, and its first
resample/mel call in a process compiles for a few seconds).
"""

from __future__ import annotations

import math
import os

import numpy as np

from data_pipelines.base import BadSampleError, Field, SourceError, check_example, check_index
from data_pipelines.folders import scan_class_folders
from modalities.audio import AudioSpec, waveform_to_logmel

EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3")
CROPS = ("random", "start", "center")
TRUNCATION_TOLERANCE = 0.01  # decoded length may fall this short of the header's frame count


def _wav_truncation(path: str) -> str | None:
    """For a RIFF/WAVE file: why its ``data`` chunk is cut short, or None (also for other formats).

    libsndfile clamps the frame count to what the file holds, so ``soundfile.info`` and the
    decoded length agree on a truncated WAV; only the chunk header still says how long it was.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        for _ in range(10_000):  # chunks before "data" (fmt, LIST, fact, ...); bounded for safety
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                return None  # no data chunk: the decoder reports that
            chunk_id, chunk_size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"data":
                available = size - pos - 8
                if chunk_size != 0xFFFFFFFF and chunk_size > available:  # 0xFFFFFFFF: streamed
                    return (
                        f"truncated WAV: its data chunk declares {chunk_size} bytes but the file "
                        f"holds only {available} ({available / chunk_size:.0%})"
                    )
                return None
            pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to even sizes
    return None


class AudioFileSource:
    """Random-access source of audio files under ``root`` as log-mel clips (see module docstring).

    Args:
      root: one sub-folder per class (searched recursively), or the audio files themselves.
      spec: the :class:`~modalities.audio.AudioSpec` (sample rate, frames, mel parameters).
      crop: how a longer file is cut to ``spec.num_samples``: "random", "start" or "center".
      seed: seeds the random crop (with the example index).
      return_waveform: also return the cut waveform as ``"waveform"``.
    """

    def __init__(
        self, root, spec: AudioSpec, crop: str = "random", seed: int = 0, return_waveform: bool = False
    ):
        if not isinstance(spec, AudioSpec):
            raise SourceError(f"spec must be a modalities.audio.AudioSpec, got {type(spec).__name__}")
        if crop not in CROPS:
            raise SourceError(f"crop={crop!r}: expected one of {CROPS}")
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise SourceError(f"seed must be a non-negative integer, got {seed!r}")
        found = scan_class_folders(root, EXTENSIONS, "audio")
        self.root, self.files, self.labels, self.classes = (
            found.root,
            found.files,
            found.labels,
            found.classes,
        )
        self.spec, self.crop, self.seed = spec, crop, int(seed)
        self.return_waveform = bool(return_waveform)

        self.schema = {"audio": Field((spec.frames, spec.n_mels), "float32"), "label": Field((), "int32")}
        if self.return_waveform:
            self.schema["waveform"] = Field((spec.num_samples,), "float32")

    def __len__(self) -> int:
        return len(self.files)

    def where(self, index: int) -> str:
        return self.files[check_index(index, len(self), "AudioFileSource")]

    def _load(self, path: str) -> np.ndarray:
        """The whole file as a mono float32 waveform at spec.sample_rate, or BadSampleError."""
        import soundfile

        try:
            if os.path.getsize(path) == 0:
                raise BadSampleError(path, "empty file (0 bytes)")
            audio_file = soundfile.SoundFile(path)
        except BadSampleError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to open is a bad file
            raise BadSampleError(path, f"cannot decode audio: {type(e).__name__}: {e}") from None
        with audio_file:
            frames, rate = audio_file.frames, audio_file.samplerate
            if frames <= 0 or rate <= 0:
                raise BadSampleError(path, f"no audio samples ({frames} frames at {rate} Hz)")
            truncated = _wav_truncation(path)
            if truncated:
                raise BadSampleError(path, truncated)

            import librosa  # lazy: slow to import

            load = librosa.load  # outside the try: a broken install is not a bad file
            try:  # an open SoundFile, not the path: librosa then re-raises a decoding error
                # instead of retrying with audioread, which would replace it with an empty one
                wave, _ = load(audio_file, sr=self.spec.sample_rate, mono=True)
            except (MemoryError, Warning):  # out of memory, or warnings made errors: not the file
                raise
            except Exception as e:  # noqa: BLE001 - wrap every decoder/resampler failure
                message = f"{type(e).__name__}: {e}"
                if "not finite" in str(e):
                    raise BadSampleError(path, f"audio holds NaN or infinite samples ({message})") from None
                raise BadSampleError(path, f"cannot decode audio: {message}") from None
        if not np.isfinite(wave).all():
            bad = int((~np.isfinite(wave)).sum())
            raise BadSampleError(path, f"audio holds {bad} NaN or infinite samples")
        expected = math.ceil(frames * self.spec.sample_rate / rate)
        if len(wave) < expected * (1 - TRUNCATION_TOLERANCE) - 1:
            raise BadSampleError(
                path,
                f"truncated: decoded {len(wave)} samples at "
                f"{self.spec.sample_rate} Hz; its header announces {frames} "
                f"frames at {rate} Hz (= {expected})",
            )
        return wave

    def _cut(self, wave: np.ndarray, index: int) -> np.ndarray:
        """Crops or zero-pads (at the end) to exactly spec.num_samples samples."""
        n, want = len(wave), self.spec.num_samples
        if n < want:
            return np.pad(wave, (0, want - n))
        if self.crop == "start":
            start = 0
        elif self.crop == "center":
            start = (n - want) // 2
        else:
            start = int(np.random.default_rng([self.seed, index]).integers(0, n - want + 1))
        return wave[start : start + want]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = check_index(index, len(self), "AudioFileSource")
        path = self.files[index]
        wave = np.clip(self._cut(self._load(path), index), -1.0, 1.0).astype(np.float32)
        example = {"audio": waveform_to_logmel(wave, self.spec)[0], "label": self.labels[index]}
        if self.return_waveform:
            example["waveform"] = wave
        return check_example(path, example, self.schema)

    def __repr__(self) -> str:
        return (
            f"AudioFileSource(root={self.root!r}, files={len(self)}, "
            f"classes={len(self.classes)}, crop={self.crop!r}, seed={self.seed})"
        )
