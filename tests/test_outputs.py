"""selfflow.outputs: the GIF, WAV/mel-PNG and action-plot files read back correctly."""

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
    grey = [f[:h * scale, w * scale:2 * w * scale].mean() for f in frames]  # middle clip
    assert np.all(np.diff(grey) > 20), grey
    expected = np.clip((levels + 1) * 127.5 + 0.5, 0, 255)
    np.testing.assert_allclose(grey, expected, atol=3)
    assert frames[0][:h * scale, w * scale:2 * w * scale].std() < 1.0  # solid, not dithered


def test_video_gif_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\(batch, frames, height, width, 3\)"):
        outputs.save_video_gif(np.zeros((2, 4, 4, 3)), tmp_path / "v.gif")


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
        assert im.size == (round(outputs.MAX_ACTION_PANELS * w_in * outputs.DPI),
                           round(h_in * outputs.DPI))
    with pytest.raises(ValueError, match=r"\(batch, steps, action_dim\)"):
        outputs.save_action_plot(actions[0], tmp_path / "c.png")
    with pytest.raises(ValueError, match="proprio"):
        outputs.save_action_plot(actions, tmp_path / "d.png", proprio=proprio[:, :5])
