"""selfflow.outputs: the MP4 (with and without soundtrack), GIF, WAV/mel-PNG and action-plot files
read back correctly (MP4s decoded with PyAV)."""

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from modalities.audio import AudioSpec, waveform_to_logmel
from selfflow import outputs


def _gif_frames(path):
    with Image.open(path) as im:
        frames, durations = [], []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
            durations.append(im.info["duration"])
        return im.n_frames, im.size, im.info.get("loop"), frames, durations


def test_video_gif_frames_size_duration_and_order(tmp_path):
    b, t, h, w, scale = 3, 5, 6, 7, 3
    rng = np.random.default_rng(0)
    videos = rng.uniform(-1, 1, (b, t, h, w, 3)).astype(np.float32)
    levels = np.linspace(-0.8, 0.8, t)  # clip 1: frame t is a solid grey level g_t, increasing
    videos[1] = levels[:, None, None, None]
    path = outputs.save_video_gif(videos, tmp_path / "sub" / "v.gif", fps=8.0, scale=scale)
    n, size, loop, frames, durations = _gif_frames(path)
    assert n == t
    assert size == (b * w * scale, h * scale)
    assert loop == 0
    assert all(abs(d - 1000 / 8.0) <= 10 for d in durations)  # GIF stores centiseconds
    grey = [f[: h * scale, w * scale : 2 * w * scale].mean() for f in frames]  # middle clip
    assert np.all(np.diff(grey) > 20), grey
    expected = np.clip((levels + 1) * 127.5 + 0.5, 0, 255)
    np.testing.assert_allclose(grey, expected, atol=3)
    assert frames[0][: h * scale, w * scale : 2 * w * scale].std() < 1.0  # solid, not dithered


def test_video_gif_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\(batch, frames, height, width, 3\)"):
        outputs.save_video_gif(np.zeros((2, 4, 4, 3)), tmp_path / "v.gif")


def _decode_mp4(path):
    """-> (container streams summary, decoded RGB frames, frame times in s, mono audio, rate)."""
    with av.open(str(path)) as c:
        info = {"video": len(c.streams.video), "audio": len(c.streams.audio)}
        v = c.streams.video[0]
        info.update(
            codec=v.codec_context.name, size=(v.width, v.height), duration=float(v.duration * v.time_base)
        )
        frames, times = [], []
        for f in c.decode(v):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(f.pts * f.time_base)  # exact (Fraction)
        audio, rate = None, None
        if c.streams.audio:
            c.seek(0)
            a = c.streams.audio[0]
            rate = a.sample_rate
            info.update(audio_codec=a.codec_context.name, audio_duration=float(a.duration * a.time_base))
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(a)])
        return info, frames, times, audio, rate


def _moving_square(b, t, h, w):
    """Clip 0: a white 2×2 square on black moving one pixel right per frame (row 3); other clips:
    solid grey, brighter each frame. Returns videos in [-1, 1] and the square's column per frame."""
    videos = np.full((b, t, h, w, 3), -1.0, np.float32)
    cols = np.arange(t) + 1
    for i, col in enumerate(cols):
        videos[0, i, 3:5, col : col + 2] = 1.0
    videos[1:] = np.linspace(-0.8, 0.8, t)[None, :, None, None, None]
    return videos, cols


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_video_mp4_frames_size_timing_and_content(tmp_path, monkeypatch, codec):
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this PyAV build")
    monkeypatch.setattr(outputs, "VIDEO_CODECS", (codec,))
    assert outputs.video_codec() == codec
    b, t, h, w, scale, fps = 2, 9, 8, 12, 4, 12.5  # 12.5 fps: 80 ms a frame, not a whole ms count
    videos, cols = _moving_square(b, t, h, w)
    path = outputs.save_video_mp4(videos, tmp_path / "sub" / "v.mp4", fps=fps, scale=scale)
    assert path == tmp_path / "sub" / "v.mp4"
    info, frames, times, audio, _ = _decode_mp4(path)
    assert info["video"] == 1 and info["audio"] == 0 and audio is None
    assert info["codec"] == ("h264" if codec == "libx264" else "mpeg4")
    assert len(frames) == t
    assert info["size"] == (b * w * scale, h * scale)
    assert all(f.shape == (h * scale, b * w * scale, 3) for f in frames)
    assert times == [Fraction(2 * i, 25) for i in range(t)]  # exactly i / 12.5 s
    assert info["duration"] == pytest.approx(t / fps, abs=1e-6)
    expected = np.clip((videos + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    expected = expected.transpose(1, 2, 0, 3, 4).reshape(t, h, b * w, 3)
    expected = expected.repeat(scale, axis=1).repeat(scale, axis=2)
    for i, (frame, col) in enumerate(zip(frames, cols)):
        err = np.abs(frame.astype(np.float32) - expected[i])
        assert err.mean() < 4.0 and np.percentile(err, 99) < 40, (i, err.mean())
        clip0 = frame[:, : w * scale].mean(axis=2)
        ys, xs = np.nonzero(clip0 > 128)  # the square, found in the decoded frame
        assert abs(xs.mean() - (col + 1) * scale) < 1.0, (i, xs.mean())
        assert abs(ys.mean() - 4 * scale) < 1.0, (i, ys.mean())
        assert abs(len(xs) - (2 * scale) ** 2) <= 0.25 * (2 * scale) ** 2
        grey = frame[:, w * scale :].mean()  # clip 1: solid grey level of frame i
        assert abs(grey - expected[i, 0, w * scale, 0]) < 4.0


def test_video_mp4_odd_size_is_padded_to_even(tmp_path):
    rng = np.random.default_rng(0)
    videos = rng.uniform(-1, 1, (1, 3, 5, 7, 3)).astype(np.float32)
    videos[..., -1, :] = 1.0  # white last column: the padding repeats it
    info, frames, *_ = _decode_mp4(outputs.save_video_mp4(videos, tmp_path / "v.mp4", fps=7, scale=1))
    assert info["size"] == (8, 6) and len(frames) == 3
    assert frames[0][:5, 7].mean() > 200


def test_video_mp4_with_soundtrack(tmp_path):
    sr, seconds_tone, seconds_quiet = 16000, 0.75, 0.5
    n_tone, n_quiet = int(sr * seconds_tone), int(sr * seconds_quiet)
    wave = np.concatenate(
        [0.6 * np.sin(2 * np.pi * 440.0 * np.arange(n_tone) / sr), np.zeros(n_quiet)]
    ).astype(np.float32)  # loud tone, then silence
    b, t, h, w, fps = 1, 15, 8, 12, 12.5  # 1.2 s of video, 1.25 s of audio
    videos, _ = _moving_square(b, t, h, w)
    path = outputs.save_video_mp4(videos, tmp_path / "av.mp4", fps=fps, scale=2, audio=wave, sample_rate=sr)
    info, frames, times, audio, rate = _decode_mp4(path)
    assert info["video"] == 1 and info["audio"] == 1
    assert info["audio_codec"] == ("aac" if "aac" in av.codecs_available else "mp3")
    assert len(frames) == t and info["size"] == (w * 2, h * 2)
    assert info["duration"] == pytest.approx(t / fps, abs=1e-6)
    assert rate == sr
    frame = 1152 if info["audio_codec"] == "mp3" else 1024  # one codec frame
    assert abs(info["audio_duration"] - len(wave) / sr) <= frame / sr
    assert abs(len(audio) - len(wave)) <= frame
    # the tone is loud where it was, and quiet where the input was silent
    tone, quiet = audio[int(0.1 * sr) : int(0.6 * sr)], audio[int(0.95 * sr) : int(1.2 * sr)]
    rms_tone, rms_quiet = np.sqrt(np.mean(tone**2)), np.sqrt(np.mean(quiet**2))
    assert rms_tone == pytest.approx(0.6 / np.sqrt(2), rel=0.2), rms_tone
    assert rms_quiet < 0.01 * rms_tone, (rms_tone, rms_quiet)
    spectrum = np.abs(np.fft.rfft(tone * np.hanning(len(tone))))
    assert abs(np.fft.rfftfreq(len(tone), 1 / sr)[np.argmax(spectrum)] - 440.0) < 10.0


def test_video_mp4_soundtrack_at_a_rate_the_encoder_lacks(tmp_path):
    sr = 12345  # not an AAC rate: resampled, same duration
    wave = 0.5 * np.sin(2 * np.pi * 300.0 * np.arange(sr) / sr)
    path = outputs.save_video_mp4(
        np.zeros((1, 4, 4, 4, 3)), tmp_path / "v.mp4", fps=4.0, audio=wave, sample_rate=sr
    )
    info, _, _, audio, rate = _decode_mp4(path)
    assert info["audio"] == 1 and rate >= sr
    assert abs(info["audio_duration"] - 1.0) <= 1152 / rate
    assert np.sqrt(np.mean(audio[rate // 10 : -rate // 10] ** 2)) > 0.2


def test_video_mp4_rejects_bad_arguments(tmp_path):
    good = np.zeros((1, 2, 4, 4, 3), np.float32)
    with pytest.raises(
        ValueError, match=r"videos has shape \(2, 4, 4, 3\).*\(batch, frames, height, width, 3\)"
    ):
        outputs.save_video_mp4(np.zeros((2, 4, 4, 3)), tmp_path / "v.mp4")
    with pytest.raises(ValueError, match=r"videos has shape \(1, 2, 4, 4, 4\)"):
        outputs.save_video_mp4(np.zeros((1, 2, 4, 4, 4)), tmp_path / "v.mp4")
    with pytest.raises(ValueError, match=r"videos has shape \(1, 0, 4, 4, 3\)"):
        outputs.save_video_mp4(np.zeros((1, 0, 4, 4, 3)), tmp_path / "v.mp4")
    for fps in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fps="):
            outputs.save_video_mp4(good, tmp_path / "v.mp4", fps=fps)
    with pytest.raises(ValueError, match="scale="):
        outputs.save_video_mp4(good, tmp_path / "v.mp4", scale=0)
    with pytest.raises(ValueError, match=r"audio has shape \(2, 100\).*mono"):
        outputs.save_video_mp4(good, tmp_path / "v.mp4", audio=np.zeros((2, 100)), sample_rate=16000)
    with pytest.raises(ValueError, match="sample_rate=None.*required"):
        outputs.save_video_mp4(good, tmp_path / "v.mp4", audio=np.zeros(100))
    with pytest.raises(ValueError, match="sample_rate=0"):
        outputs.save_video_mp4(good, tmp_path / "v.mp4", audio=np.zeros(100), sample_rate=0)
    assert not (tmp_path / "v.mp4").exists()


def test_audio_wavs_tone_round_trip(tmp_path):
    import soundfile

    spec = AudioSpec(frames=30, n_mels=32, patch_frames=2)  # 30 · 160 samples = 0.3 s
    sr = spec.sample_rate
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(spec.num_samples) / sr)
    logmel = waveform_to_logmel(tone, spec)
    logmels = np.concatenate([logmel, logmel])  # B = 2
    paths = outputs.save_audio_wavs(logmels, spec, tmp_path / "aud", prefix="gen")
    assert [p.name for p in paths] == ["gen_00.wav", "gen_01.wav", "gen_mel.png"]
    wave, rate = soundfile.read(paths[0])
    assert rate == sr
    assert wave.shape == (spec.frames * spec.hop_length,)
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    peak = np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spectrum)]
    assert abs(peak - 1000.0) < 100.0, peak
    with Image.open(paths[-1]) as im:
        im.load()
        assert im.size[0] > 0 and im.size[1] > 0


def test_audio_wavs_writes_given_waveforms(tmp_path):
    import soundfile

    spec = AudioSpec(frames=8, n_mels=16, patch_frames=2)
    waves = np.stack([np.linspace(-0.5, 0.5, spec.num_samples), np.full(spec.num_samples, 0.25)])
    logmels = np.zeros((2, spec.frames, spec.n_mels), np.float32)
    paths = outputs.save_audio_wavs(logmels, spec, tmp_path, prefix="x", waveforms=waves)
    for path, wave in zip(paths[:2], waves):
        np.testing.assert_allclose(soundfile.read(path)[0], wave, atol=1 / 2**14)
    with pytest.raises(ValueError, match=r"waveforms has shape \(1, 1280\)"):
        outputs.save_audio_wavs(logmels, spec, tmp_path, waveforms=waves[:1])


def test_action_plot_size_and_validation(tmp_path):
    rng = np.random.default_rng(0)
    b, t, a = 3, 20, 4
    actions = rng.normal(size=(b, t, a))
    proprio = np.cumsum(rng.normal(size=(b, t, 3)), axis=1)
    w_in, h_in = outputs.PANEL_INCHES
    path = outputs.save_action_plot(actions, tmp_path / "a.png", proprio=proprio, hz=5.0)
    with Image.open(path) as im:
        assert im.size == (round(b * w_in * outputs.DPI), round(2 * h_in * outputs.DPI))
    # no proprio: one row; more samples than the cap: capped panels
    many = rng.normal(size=(outputs.MAX_ACTION_PANELS + 3, t, a))
    path = outputs.save_action_plot(many, tmp_path / "b.png")
    with Image.open(path) as im:
        assert im.size == (round(outputs.MAX_ACTION_PANELS * w_in * outputs.DPI), round(h_in * outputs.DPI))
    with pytest.raises(ValueError, match=r"\(batch, steps, action_dim\)"):
        outputs.save_action_plot(actions[0], tmp_path / "c.png")
    with pytest.raises(ValueError, match="proprio"):
        outputs.save_action_plot(actions, tmp_path / "d.png", proprio=proprio[:, :5])


@pytest.mark.parametrize("video_format", ["mp4", "gif"])
def test_layout_samples_write_video_and_muxed_audio_video(tmp_path, monkeypatch, video_format):
    """write_layout_samples on the procedural world with the sampler replaced by "return the
    batch's own tokens": file names per format, and the muxed MP4 of sample k is sample k's
    video (4x, T frames) with a soundtrack as long as its audio clip."""
    from selfflow import layout_samples
    from selfflow.config import (
        Config,
        DataConfig,
        LayoutConfig,
        MeshConfig,
        ModelConfig,
        ObjectiveConfig,
        SampleConfig,
        TrainConfig,
        validate,
    )
    from selfflow.tasks import Task

    cfg = validate(
        Config(
            model=ModelConfig(depth=2, hidden_size=32, num_heads=2, positions="rope"),
            objective=ObjectiveConfig(student_layer=1, teacher_layer=2),
            data=DataConfig(
                source="world", image_size=16, num_examples=8, num_classes=3, read_threads=1, prefetch=1
            ),
            train=TrainConfig(steps=1),
            mesh=MeshConfig(data=1),
            sample=SampleConfig(steps=2, video_format=video_format),
            layouts=(
                LayoutConfig("av", ("video", "audio"), 0.5, 6),
                LayoutConfig("v2a", ("video:condition", "audio"), 0.5, 2),
            ),
        )
    )
    task = Task(cfg)
    seen = {}

    def given_tokens(cfg_, task_, model_, index, raw, key, **kwargs):
        if "video" not in raw:  # "av" is sampled class by class (3 x 2 labels): stand in data for them
            raw = {k: v[: len(raw["label"])] for k, v in task_.dataset(index)[0].items()}
        seen[index] = raw
        return task_.segment_batch(index, raw).tokens

    monkeypatch.setattr(layout_samples, "generate", given_tokens)
    paths = layout_samples.write_layout_samples(
        cfg, task, None, tmp_path, steps=2, cfg_scale=1.0, seed=0, per_layout=2
    )
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    assert all(p.exists() for p in paths)
    ext = video_format
    av = 3 * 2  # 3 classes, per_layout = 2 each
    assert names == {
        f"av/0_video.{ext}",
        "av/1_audio_mel.png",
        *(f"av/1_audio_{k:02d}.wav" for k in range(av)),
        *(f"av/0_video_with_1_audio_{k:02d}.mp4" for k in range(av)),
        f"v2a/0_video_given.{ext}",
        "v2a/1_audio_00.wav",
        "v2a/1_audio_01.wav",
        "v2a/1_audio_mel.png",
        "v2a/0_video_given_with_1_audio_00.mp4",
        "v2a/0_video_given_with_1_audio_01.mp4",
    }

    vspec, aspec = task.specs["video"], task.specs["audio"]
    clips = np.asarray(seen[0]["video"], np.float32)  # (2, T, 16, 16, 3) in [-1, 1]
    for k in range(2):
        info, frames, _, audio, rate = _decode_mp4(tmp_path / f"av/0_video_with_1_audio_{k:02d}.mp4")
        assert info["video"] == 1 and info["audio"] == 1
        assert len(frames) == vspec.frames and info["size"] == (16 * 4, 16 * 4)
        assert info["duration"] == pytest.approx(vspec.frames / vspec.fps, abs=1e-6)
        assert rate == aspec.sample_rate
        assert abs(info["audio_duration"] - aspec.num_samples / aspec.sample_rate) <= 1152 / rate
        assert np.isfinite(audio).all()
        mid = np.clip((clips[:, vspec.frames // 2] + 1) * 127.5, 0, 255).repeat(4, 1).repeat(4, 2)
        err = [np.abs(frames[vspec.frames // 2].astype(np.float32) - m).mean() for m in mid]
        assert err[k] < 8.0 and err[k] == min(err), err  # sample k's own video
    if video_format == "mp4":
        info, frames, *_ = _decode_mp4(tmp_path / "av/0_video.mp4")
        assert info["audio"] == 0 and info["size"] == (av * 16 * 4, 16 * 4)  # the clips side by side
        assert len(frames) == vspec.frames
