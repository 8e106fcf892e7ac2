"""Tests for AudioFileSource: layout and labels, resampling, downmix, crop/pad, bad files.

Fixtures are short files written with soundfile in tmp_path. The first librosa call in a process
is slow (import, soxr/numba warm-up), so the librosa-using tests are kept few.
"""

import os

import numpy as np
import pytest
import soundfile

from data_pipelines.audio_files import AudioFileSource
from data_pipelines.base import BadSampleError, SourceError
from modalities.audio import AudioSpec, waveform_to_logmel

SPEC = AudioSpec(frames=48, n_mels=32, patch_frames=4)  # 48 frames of 10 ms = 7680 samples at 16 kHz
SR = SPEC.sample_rate
FLOOR = -1.0  # normalised log-mel of silence


def sine(sr, seconds=0.5, freq=440.0, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def write(path, data, sr, subtype=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), data, sr, subtype=subtype)
    return path


def only(path, **kwargs):
    """The single example of a source over the folder holding just ``path``."""
    source = AudioFileSource(path.parent, SPEC, **kwargs)
    assert len(source) == 1
    return source[0]


def peak_band(logmel):
    return int(np.argmax(logmel.mean(axis=0)))


# ----------------------------------------------------------------------- layout (no decoding)


def touch(root, *relative):
    for rel in relative:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")


def test_layout_labels_and_schema(tmp_path):
    touch(
        tmp_path,
        "dog/b.wav",
        "dog/deep/er/a.FLAC",
        "cat/x.Mp3",
        "cat/y.oga",
        "cat/notes.txt",
        "readme.md",
        ".hidden/z.wav",
        "cat/._x.wav",
        ".y.wav",
    )
    source = AudioFileSource(tmp_path, SPEC, crop="start")
    assert source.classes == ("cat", "dog")
    rel = [os.path.relpath(source.files[i], tmp_path) for i in range(len(source))]
    assert rel == ["cat/x.Mp3", "cat/y.oga", "dog/b.wav", "dog/deep/er/a.FLAC"]
    assert source.labels.tolist() == [0, 0, 1, 1]
    assert source.where(2) == str(tmp_path / "dog/b.wav")
    assert {k: (f.shape, f.dtype) for k, f in source.schema.items()} == {
        "audio": ((48, 32), "float32"),
        "label": ((), "int32"),
    }
    assert "waveform" in AudioFileSource(tmp_path, SPEC, return_waveform=True).schema

    touch(tmp_path / "flat", "b.ogg", "a.wav", "notes.txt")  # no sub-folders: one class
    source = AudioFileSource(tmp_path / "flat", SPEC)
    assert source.classes == ("flat",) and source.labels.tolist() == [0, 0]
    assert [os.path.basename(f) for f in source.files] == ["a.wav", "b.ogg"]


def test_source_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        AudioFileSource(tmp_path / "missing", SPEC)
    touch(tmp_path, "notes.txt")
    with pytest.raises(SourceError, match="no .* files"):
        AudioFileSource(tmp_path, SPEC)
    touch(tmp_path, "a.wav", "cls/b.wav")
    with pytest.raises(SourceError, match="no class folder"):  # loose files beside class folders
        AudioFileSource(tmp_path, SPEC)
    (tmp_path / "a.wav").unlink()
    touch(tmp_path, "empty/notes.txt")
    with pytest.raises(SourceError, match="class folder.*with no"):
        AudioFileSource(tmp_path, SPEC)
    with pytest.raises(SourceError, match="crop"):
        AudioFileSource(tmp_path / "cls", SPEC, crop="end")


# ----------------------------------------------------------------------- decoding (librosa)


@pytest.mark.parametrize(
    "name, sr", [("a.wav", 22050), ("a.FLAC", 48000), ("a.ogg", 16000), ("a.mp3", 44100)]
)
def test_resampled_sine_peaks_in_the_same_band(tmp_path, name, sr):
    path = write(tmp_path / name, sine(sr), sr)
    ex = only(path, return_waveform=True)
    assert ex["audio"].shape == (SPEC.frames, SPEC.n_mels) and ex["audio"].dtype == np.float32
    assert ex["waveform"].shape == (SPEC.num_samples,) and ex["waveform"].dtype == np.float32
    assert np.abs(ex["waveform"]).max() <= 1.0 and ex["label"] == 0 and ex["label"].dtype == np.int32
    np.testing.assert_array_equal(ex["audio"], waveform_to_logmel(ex["waveform"], SPEC)[0])
    reference = waveform_to_logmel(sine(SR)[: SPEC.num_samples], SPEC)[0]
    assert peak_band(ex["audio"]) == peak_band(reference)
    assert ex["audio"].max() > 0.3  # an amplitude-0.5 tone is loud, not near the floor


def test_stereo_downmix(tmp_path):
    s = sine(SR)
    cancel = only(write(tmp_path / "cancel/a.wav", np.stack([s, -s], 1), SR, "FLOAT"))
    np.testing.assert_allclose(cancel["audio"], FLOOR, atol=1e-6)  # mean of channels: silence
    both = only(write(tmp_path / "both/a.wav", np.stack([s, s], 1), SR, "FLOAT"))
    mono = only(write(tmp_path / "mono/a.wav", s, SR, "FLOAT"))
    np.testing.assert_allclose(both["audio"], mono["audio"], atol=1e-6)


def test_crop_and_pad(tmp_path):
    n = SPEC.num_samples
    short = only(write(tmp_path / "short/a.wav", sine(SR, 0.25), SR), return_waveform=True)
    assert np.all(short["waveform"][4000:] == 0) and np.abs(short["waveform"][:4000]).max() > 0.4
    # frame i is centred at i·160 with a 400-sample window: frames >= 27 see only padding
    np.testing.assert_allclose(short["audio"][27:], FLOOR, atol=1e-6)
    assert short["audio"][:24].max() > 0.3

    quiet_then_loud = np.concatenate([np.zeros(SR, np.float32), sine(SR, 1.0)])
    path = write(tmp_path / "halves/a.wav", quiet_then_loud, SR)
    np.testing.assert_allclose(only(path, crop="start")["audio"], FLOOR, atol=1e-6)
    centre = only(path, crop="center")["audio"]  # samples 12160..19840 straddle the step at 16000
    assert centre[:20].max() < -0.9 and centre[-20:].max(axis=1).min() > 0.3

    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 2 * SR).astype(np.float32)
    path = write(tmp_path / "noise/a.wav", noise, SR, "FLOAT")

    def window(seed):
        return only(path, crop="random", seed=seed, return_waveform=True)["waveform"]

    first = window(3)
    np.testing.assert_array_equal(first, window(3))  # a pure function of (seed, index)
    start = int(np.random.default_rng([3, 0]).integers(0, len(noise) - n + 1))
    np.testing.assert_array_equal(first, noise[start : start + n])
    assert any(not np.array_equal(first, window(seed)) for seed in (4, 5))


def test_bad_files_raise_bad_sample_error(tmp_path):
    (tmp_path / "text.wav").write_text("this is not audio\n" * 20)
    (tmp_path / "empty.wav").write_bytes(b"")
    whole = write(tmp_path / "whole.wav", sine(SR), SR).read_bytes()
    (tmp_path / "whole.wav").unlink()
    (tmp_path / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    nan = sine(SR)
    nan[1000] = np.nan
    write(tmp_path / "nan.wav", nan, SR, "FLOAT")
    write(tmp_path / "silent.wav", np.zeros(SR // 2, np.float32), SR)
    source = AudioFileSource(tmp_path, SPEC)
    reasons = {
        "empty.wav": "empty file",
        "nan.wav": "NaN",
        "text.wav": "cannot decode",
        "truncated.wav": "truncated",
    }
    for i, path in enumerate(source.files):
        name = os.path.basename(path)
        if name == "silent.wav":
            np.testing.assert_allclose(source[i]["audio"], FLOOR, atol=1e-6)  # silence is fine
            continue
        with pytest.raises(BadSampleError) as info:
            source[i]
        assert path in str(info.value) and reasons[name] in info.value.reason
