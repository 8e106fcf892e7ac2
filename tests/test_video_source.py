"""VideoFileSource on small video files written with PyAV (tests/helpers_video.py): frame content,
fps resampling, determinism, labels, the audio track's log-mel, and every kind of bad input."""

from __future__ import annotations

import shutil

import av  # dev dependency (pyproject [dev]): writes the fixtures
import numpy as np
import pytest

from data_pipelines.base import BadSampleError, SourceError
from data_pipelines.video_files import VideoFileSource
from modalities.audio import AudioSpec, waveform_to_logmel

from helpers_video import FPS, SIZE, SR, colour_index, frame_colour, write_video


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One folder per case, written once for the module."""
    base = tmp_path_factory.mktemp("videos")
    out = {}

    def folder(name):
        out[name] = base / name
        out[name].mkdir()
        return out[name]

    write_video(folder("x264") / "clip.mp4")
    write_video(folder("mpeg4") / "clip.avi", codec="mpeg4")
    write_video(folder("long") / "long.mkv", n_frames=48)
    write_video(folder("wide") / "wide.mov", size=(32, 64))
    write_video(folder("pcm") / "tone.mkv", audio_codec="pcm_s16le")
    write_video(folder("aac") / "tone.mp4", audio_codec="aac")
    write_video(folder("onset_pcm") / "onset.mkv", audio_codec="pcm_s16le", tone_start=1.0)
    write_video(folder("onset_aac") / "onset.mp4", audio_codec="aac", tone_start=1.0)
    write_video(folder("audio_short") / "tone.mkv", audio_codec="pcm_s16le", audio_seconds=1.5)
    write_video(folder("audio_hop_short") / "tone.mkv", audio_codec="pcm_s16le", audio_seconds=2.0 - 100 / SR)
    classes = folder("classes")
    (classes / "dog" / "deeper").mkdir(parents=True)
    (classes / "cat").mkdir()
    (classes / ".hidden").mkdir()
    write_video(classes / "dog" / "b.MP4")
    write_video(classes / "dog" / "deeper" / "c.webm", codec="libvpx-vp9")
    write_video(classes / "cat" / "a.mkv")
    shutil.copy(out["x264"] / "clip.mp4", classes / ".hidden" / "h.mp4")
    (classes / "cat" / "notes.txt").write_text("not a video")
    good = (out["x264"] / "clip.mp4").read_bytes()
    (folder("truncated") / "cut.mp4").write_bytes(good[: int(0.4 * len(good))])
    (folder("text") / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    return out


def test_frames_shape_and_colours(files):
    for name in ("x264", "mpeg4", "wide"):
        source = VideoFileSource(files[name], frames=24, fps=FPS, image_size=SIZE)
        assert len(source) == 1 and source.classes == (name,)  # no sub-folders: one class
        example = source[0]
        assert set(example) == {"video", "label"}
        assert example["video"].shape == (24, SIZE, SIZE, 3)
        assert example["video"].dtype == np.float32 and example["label"].dtype == np.int32
        assert example["label"] == 0
        assert example["video"].min() >= -1.0 and example["video"].max() <= 1.0
        expected = np.stack([frame_colour(i) for i in range(24)]).astype(np.float32) / 127.5 - 1
        error = np.abs(example["video"] - expected[:, None, None, :]).mean()
        assert error < 0.1, (name, error)
        assert [colour_index(f) for f in example["video"]] == list(range(24)), name


def test_resize_shorter_side_then_centre_crop(files):
    # 64x32 (w x h) -> shorter side 16 -> 32x16 -> centre 16x16; a flat frame stays flat
    source = VideoFileSource(files["wide"], frames=4, fps=FPS, image_size=16)
    video = source[0]["video"]
    assert video.shape == (4, 16, 16, 3)
    assert video.std(axis=(1, 2)).max() < 0.05


@pytest.mark.parametrize("image_size", [8, 16, 24, 48, 72])
def test_widths_decord_cannot_return(files, image_size):
    """decord 0.6.0 breaks on RGB rows that FFmpeg pads to a multiple of the width; these sizes
    are decoded a little wider and brought to size with Pillow."""
    source = VideoFileSource(files["x264"], frames=6, fps=FPS, image_size=image_size)
    video = source[0]["video"]
    assert video.shape == (6, image_size, image_size, 3)
    first = colour_index(video[0])
    expected = np.stack([frame_colour(first + i) for i in range(6)]).astype(np.float32) / 127.5 - 1
    assert np.abs(video - expected[:, None, None, :]).mean() < 0.1


def test_width_model_matches_decord(files):
    """Every width the model calls safe really comes back from decord intact."""
    import decord

    from data_pipelines.video_files import decord_width_ok

    assert [w for w in range(1, 200) if not decord_width_ok(w)] == [1, 2, 3, 4, 6, 8, 12, 16, 24, 48, 72]
    path = str(files["x264"] / "clip.mp4")
    for width in range(5, 80):
        if decord_width_ok(width):
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, width=width, height=10)
            assert reader.get_batch([0]).asnumpy().shape == (1, 10, width, 3)


def test_resampling_to_lower_and_higher_fps(files):
    slow = VideoFileSource(files["long"], frames=8, fps=FPS / 2, image_size=SIZE, seed=3)
    for i in range(len(slow)):
        got = [colour_index(f) for f in slow[i]["video"]]
        assert got == list(range(got[0], got[0] + 16, 2)), got  # every second frame
    fast = VideoFileSource(files["long"], frames=8, fps=FPS * 2, image_size=SIZE)
    got = [colour_index(f) for f in fast[0]["video"]]
    steps = np.diff(got)  # each source frame twice: steps alternate 0, 1 (phase set by the start)
    assert set(steps) <= {0, 1} and (steps[1:] != steps[:-1]).all(), got


def test_deterministic_and_seeded(files):
    source = VideoFileSource(files["long"], frames=12, fps=FPS, image_size=SIZE, clips_per_video=3, seed=0)
    assert len(source) == 3 and source.where(2) == str(files["long"] / "long.mkv")
    first = source[1]["video"]
    np.testing.assert_array_equal(first, source[1]["video"])
    again = VideoFileSource(files["long"], frames=12, fps=FPS, image_size=SIZE, clips_per_video=3, seed=0)
    np.testing.assert_array_equal(first, again[1]["video"])
    starts = set()
    for seed in range(4):  # a 4 s file, a 1 s clip: the start moves with the seed
        other = VideoFileSource(files["long"], frames=12, fps=FPS, image_size=SIZE, seed=seed)
        video = other[0]["video"]
        got = [colour_index(f) for f in video]
        assert got == list(range(got[0], got[0] + 12))
        starts.add(got[0])
    assert len(starts) > 1
    # several clips of one file are drawn independently
    assert len({colour_index(source[i]["video"][0]) for i in range(3)}) > 1


def test_labels_from_class_folders(files):
    source = VideoFileSource(files["classes"], frames=6, fps=FPS, image_size=SIZE)
    assert source.classes == ("cat", "dog")
    names = [source.where(i).split("/")[-1] for i in range(len(source))]
    assert names == ["a.mkv", "b.MP4", "c.webm"]  # .txt and hidden folders skipped
    assert [int(source[i]["label"]) for i in range(len(source))] == [0, 1, 1]


def test_constructor_reads_only_the_listing(files, monkeypatch):
    import decord

    def no_decoding(*args, **kwargs):
        raise AssertionError("the constructor must not open videos")

    monkeypatch.setattr(decord, "VideoReader", no_decoding)
    monkeypatch.setattr(decord, "AudioReader", no_decoding)
    source = VideoFileSource(
        files["classes"], frames=12, fps=FPS, image_size=SIZE, audio=AudioSpec(frames=100), clips_per_video=5
    )
    assert len(source) == 15 and source.classes == ("cat", "dog")
    assert (
        VideoFileSource(files["text"], frames=4, fps=FPS, image_size=SIZE).where(0).endswith("notes.mp4")
    )  # a bad file is listed; it fails only when read


@pytest.mark.parametrize("case", ["pcm", "aac"])
def test_audio_track_log_mel(files, case):
    spec = AudioSpec(frames=100)  # 100 hops of 10 ms = 1 s = 12 frames at 12 fps
    source = VideoFileSource(files[case], frames=12, fps=FPS, image_size=SIZE, audio=spec, clips_per_video=2)
    clean = waveform_to_logmel(0.5 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR), spec)[0]
    peak_band = int(np.argmax(clean.mean(0)))
    for i in range(len(source)):
        example = source[i]
        assert example["audio"].shape == (spec.frames, spec.n_mels)
        assert example["audio"].dtype == np.float32
        assert int(np.argmax(example["audio"].mean(0))) == peak_band
        # away from the clip's edges it is the clean tone's spectrum
        assert np.abs(example["audio"][5:-5] - clean[5:-5]).mean() < 0.02


@pytest.mark.parametrize("case", ["onset_pcm", "onset_aac"])
def test_audio_span_is_the_clip_span(files, case):
    """2 s files, silent until the tone starts at 1 s; a 1 s clip starting at s (uniform in
    [0, 1] from default_rng([seed, i])) shows frames round(12 s).. and hears the onset at mel
    frame (1 - s) * 100."""
    spec = AudioSpec(frames=100)
    source = VideoFileSource(
        files[case], frames=12, fps=FPS, image_size=SIZE, audio=spec, clips_per_video=6, seed=1
    )
    for i in range(len(source)):
        start = np.random.default_rng([1, i]).uniform(0.0, 1.0)
        example = source[i]
        assert colour_index(example["video"][0]) == round(start * FPS)
        band = example["audio"].max(axis=1)  # silence is -1, the tone about +0.7
        onset = int(np.argmax(band > band.min() + 0.5 * (band.max() - band.min())))
        assert abs(onset - (1.0 - start) * 100) <= 2, (i, start, onset)


def test_audio_ending_less_than_a_hop_early_is_padded(files):
    spec = AudioSpec(frames=200)  # 2 s: the whole video; the track is 100 samples short
    example = VideoFileSource(files["audio_hop_short"], frames=24, fps=FPS, image_size=SIZE, audio=spec)[0]
    assert example["audio"].shape == (200, spec.n_mels) and np.isfinite(example["audio"]).all()


def bad_sample(source, index=0) -> str:
    with pytest.raises(BadSampleError) as info:
        source[index]
    message = str(info.value)
    assert source.where(index) in message
    return message


def test_bad_inputs_name_the_file(files):
    message = bad_sample(VideoFileSource(files["truncated"], frames=4, fps=FPS, image_size=SIZE))
    assert "cut.mp4" in message
    bad_sample(VideoFileSource(files["text"], frames=4, fps=FPS, image_size=SIZE))
    # too short: a 2 s video, a 2.5 s clip; both durations named
    message = bad_sample(VideoFileSource(files["x264"], frames=30, fps=FPS, image_size=SIZE))
    assert "2.000 s" in message and "2.500 s" in message
    # audio requested where there is no track
    message = bad_sample(
        VideoFileSource(files["x264"], frames=12, fps=FPS, image_size=SIZE, audio=AudioSpec(frames=100))
    )
    assert "no audio track" in message
    # the track ends 0.5 s before the clip does
    message = bad_sample(
        VideoFileSource(
            files["audio_short"], frames=24, fps=FPS, image_size=SIZE, audio=AudioSpec(frames=200)
        )
    )
    assert "audio track is 1.500 s" in message


def test_hole_in_the_frames(tmp_path):
    """An mkv whose middle is zeroed: decord indexes the frames on both sides of the hole and
    would read across it as if nothing were missing; the timestamps show the hole."""
    rng = np.random.default_rng(0)
    path = tmp_path / "holed.mkv"
    with av.open(str(path), "w") as container:  # noise, so the frames are most of the file
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(96):
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytearray(path.read_bytes())
    data[int(0.3 * len(data)) : int(0.5 * len(data))] = bytes(int(0.5 * len(data)) - int(0.3 * len(data)))
    path.write_bytes(bytes(data))
    message = bad_sample(VideoFileSource(tmp_path, frames=96, fps=FPS, image_size=SIZE))
    assert "frames are missing" in message


def test_bad_sample_error_survives_pickling(files):
    import pickle

    source = VideoFileSource(files["text"], frames=4, fps=FPS, image_size=SIZE)
    with pytest.raises(BadSampleError) as info:
        source[0]
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.where == source.where(0) and copy.reason == info.value.reason


def test_source_errors(files, tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        VideoFileSource(tmp_path / "nowhere", frames=4, fps=FPS, image_size=SIZE)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no videos here")
    with pytest.raises(SourceError, match="no video files"):
        VideoFileSource(tmp_path / "empty", frames=4, fps=FPS, image_size=SIZE)
    # 12 frames at 12 fps = 1 s, but 52 mel frames = 0.52 s
    with pytest.raises(SourceError) as info:
        VideoFileSource(files["pcm"], frames=12, fps=FPS, image_size=SIZE, audio=AudioSpec(frames=52))
    assert "0.5200 s" in str(info.value) and "1.0000 s" in str(info.value)
    mixed = tmp_path / "mixed"
    (mixed / "cls").mkdir(parents=True)
    shutil.copy(files["x264"] / "clip.mp4", mixed / "top.mp4")
    shutil.copy(files["x264"] / "clip.mp4", mixed / "cls" / "inner.mp4")
    with pytest.raises(SourceError, match="in no class folder"):
        VideoFileSource(mixed, frames=4, fps=FPS, image_size=SIZE)
    (mixed / "top.mp4").unlink()
    (mixed / "empty_class").mkdir()
    with pytest.raises(SourceError, match="empty_class"):
        VideoFileSource(mixed, frames=4, fps=FPS, image_size=SIZE)
    for bad in (
        dict(frames=0),
        dict(fps=0.0),
        dict(fps=float("nan")),
        dict(image_size=0),
        dict(clips_per_video=0),
        dict(seed=-1),
    ):
        kwargs = dict(frames=4, fps=FPS, image_size=SIZE) | bad
        with pytest.raises(SourceError):
            VideoFileSource(files["x264"], **kwargs)
