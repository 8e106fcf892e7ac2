"""The modality modules: exact token roundtrips, feature order, positions on the shared time axis,
audio analysis/resynthesis, action normalisation, the registry."""

import jax.numpy as jnp
import numpy as np
import pytest

import modalities
from modalities import action, audio, image, video
from modalities.base import TICKS_PER_SECOND, Modality


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------- roundtrips and shapes


@pytest.mark.parametrize("h, w, c, p", [(8, 12, 3, 2), (12, 8, 4, 4), (6, 10, 1, 1)])
def test_image_roundtrip_is_exact(h, w, c, p):
    spec = image.ImageSpec(h, w, c, p)
    x = _rand((2, h, w, c))
    tokens = image.tokenize(x, spec)
    assert tokens.shape == (2, spec.num_tokens, spec.token_dim) == (2, h * w // p**2, c * p * p)
    np.testing.assert_array_equal(np.asarray(image.detokenize(tokens, spec)), x)


@pytest.mark.parametrize(
    "t, h, w, c, p, tt", [(4, 8, 12, 3, 2, 2), (6, 12, 8, 2, 4, 3), (3, 4, 6, 1, 1, 1), (8, 4, 4, 4, 2, 4)]
)
def test_video_roundtrip_is_exact(t, h, w, c, p, tt):
    spec = video.VideoSpec(t, h, w, c, patch_size=p, tubelet=tt)
    x = _rand((2, t, h, w, c))
    tokens = video.tokenize(x, spec)
    assert tokens.shape == (2, spec.num_tokens, spec.token_dim)
    assert spec.num_tokens == (t // tt) * (h // p) * (w // p) and spec.token_dim == c * tt * p * p
    np.testing.assert_array_equal(np.asarray(video.detokenize(tokens, spec)), x)
    # jax input gives the same tokens (the same code runs under jit)
    np.testing.assert_array_equal(np.asarray(video.tokenize(jnp.asarray(x), spec)), tokens)


@pytest.mark.parametrize("frames, n_mels, pf", [(100, 64, 4), (12, 7, 3), (10, 16, 1)])
def test_audio_roundtrip_is_exact(frames, n_mels, pf):
    spec = audio.AudioSpec(frames, n_mels=n_mels, patch_frames=pf)
    x = _rand((3, frames, n_mels))
    tokens = audio.tokenize(x, spec)
    assert tokens.shape == (3, frames // pf, pf * n_mels) == (3, spec.num_tokens, spec.token_dim)
    np.testing.assert_array_equal(np.asarray(audio.detokenize(tokens, spec)), x)
    # frame-major: token 1 is frames pf..2pf-1 laid end to end
    np.testing.assert_array_equal(tokens[0, 1], x[0, pf : 2 * pf].ravel())


@pytest.mark.parametrize("chunk, p_dim", [(1, 0), (2, 3), (4, 1)])
def test_action_roundtrip_with_normalisation(chunk, p_dim):
    acts, prop = _rand((4, 8, 5), 1) * 3 + 2, (_rand((4, 8, p_dim), 2) * 0.1 - 1 if p_dim else None)
    spec = action.ActionSpec(8, 5, proprio_dim=p_dim, chunk=chunk).with_stats(acts, prop)
    tokens = action.tokenize(acts, spec, prop)
    assert tokens.shape == (4, 8 // chunk, chunk * (5 + p_dim)) == (4, spec.num_tokens, spec.token_dim)
    got_a, got_p = action.detokenize(tokens, spec)
    np.testing.assert_allclose(np.asarray(got_a), acts, atol=1e-5)
    if p_dim:
        np.testing.assert_allclose(np.asarray(got_p), prop, atol=1e-5)
    else:
        assert got_p is None


def test_bfloat16_roundtrip_keeps_dtype():
    spec = video.VideoSpec(2, 4, 4, 3)
    x = jnp.asarray(_rand((1, 2, 4, 4, 3)), jnp.bfloat16)
    back = video.detokenize(video.tokenize(x, spec), spec)
    assert back.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(back, np.float32), np.asarray(x, np.float32))


# ---------------------------------------------------------------- feature order


def test_image_feature_order_matches_manual_reference():
    h, w, c, p = 4, 6, 2, 2
    x = np.arange(2 * h * w * c, dtype=np.float32).reshape(2, h, w, c)
    tokens = np.asarray(image.tokenize(x, image.ImageSpec(h, w, c, p)))
    gw = w // p
    for b in range(2):
        for i in range(h // p):
            for j in range(gw):
                patch = x[b, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (p1, p2, c)
                ref = [patch[p1, p2, ch] for ch in range(c) for p1 in range(p) for p2 in range(p)]
                np.testing.assert_array_equal(tokens[b, i * gw + j], ref)


def test_legacy_image_calls_match_spec_calls():
    x = _rand((2, 8, 8, 3))
    spec = image.ImageSpec(8, 8, 3, 2)
    np.testing.assert_array_equal(np.asarray(image.tokenize(x, 2)), np.asarray(image.tokenize(x, spec)))
    tok = image.tokenize(x, 2)
    np.testing.assert_array_equal(np.asarray(image.detokenize(tok, 8, 8, 2)), x)
    np.testing.assert_array_equal(image.positions(8, 8, 2), image.positions(spec))
    assert image.token_dim(3, 2) == spec.token_dim == 12


def test_video_tubelet_constant_tensor_gives_tokens_constant_along_features():
    spec = video.VideoSpec(6, 4, 8, channels=2, patch_size=2, tubelet=3)
    gt, gh, gw = spec.grid
    values = np.arange(gt * gh * gw, dtype=np.float32).reshape(gt, gh, gw)
    # each tubelet (tubelet frames × p × p, all channels) holds one value
    x = values.repeat(3, 0).repeat(2, 1).repeat(2, 2)[None, ..., None].repeat(2, -1)
    tokens = np.asarray(video.tokenize(x, spec))
    assert (tokens == tokens[..., :1]).all()
    # tokens are ordered (time, row, col)
    np.testing.assert_array_equal(tokens[0, :, 0], values.ravel())


def test_video_feature_order_is_c_tt_p1_p2():
    spec = video.VideoSpec(2, 2, 2, channels=2, patch_size=2, tubelet=2)  # one token
    x = np.zeros((1, 2, 2, 2, 2), np.float32)
    x[0, 1, 0, 1, 1] = 1.0  # frame 1, row 0, col 1, channel 1
    tokens = np.asarray(video.tokenize(x, spec))
    # index = c·(tt·p·p) + tt·(p·p) + p1·p + p2 = 1·8 + 1·4 + 0·2 + 1
    assert tokens[0, 0].argmax() == 13 and tokens.sum() == 1.0


def test_action_features_are_actions_then_proprio_step_major():
    spec = action.ActionSpec(4, 2, proprio_dim=1, chunk=2)  # no stats: identity normalisation
    acts = np.arange(8, dtype=np.float32).reshape(1, 4, 2)
    prop = 100 + np.arange(4, dtype=np.float32).reshape(1, 4, 1)
    tokens = np.asarray(action.tokenize(acts, spec, prop))
    np.testing.assert_array_equal(tokens[0, 0], [0, 1, 100, 2, 3, 101])
    np.testing.assert_array_equal(tokens[0, 1], [4, 5, 102, 6, 7, 103])


# ---------------------------------------------------------------- positions


def _check_positions(pos, n):
    assert pos.shape == (n, 3) and pos.dtype == np.float32


def test_video_positions_step_in_time_and_enumerate_grid():
    spec = video.VideoSpec(8, 4, 6, patch_size=2, tubelet=2, fps=25.0)
    pos = video.positions(spec)
    _check_positions(pos, spec.num_tokens)
    gt, gh, gw = spec.grid
    grid = pos.reshape(gt, gh * gw, 3)
    np.testing.assert_allclose(np.diff(grid[:, 0, 0]), 2 * 1000 / 25 / 10)  # 8 ticks per tubelet
    assert (grid[..., 0] == grid[:, :1, 0]).all()  # one t per time-row
    hh, ww = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    for row in grid:
        np.testing.assert_array_equal(row[:, 1], hh.ravel())
        np.testing.assert_array_equal(row[:, 2], ww.ravel())


def test_image_positions():
    spec = image.ImageSpec(4, 6, patch_size=2)
    pos = image.positions(spec, time_offset=7.0)
    _check_positions(pos, 6)
    np.testing.assert_array_equal(pos, [[7, 0, 0], [7, 0, 1], [7, 0, 2], [7, 1, 0], [7, 1, 1], [7, 1, 2]])


def test_one_second_of_each_modality_shares_the_time_range():
    specs = {
        video: video.VideoSpec(10, 4, 4, tubelet=2, fps=10.0),
        audio: audio.AudioSpec(100, patch_frames=4),  # 100 frames of 10 ms
        action: action.ActionSpec(10, 7, hz=10.0),
        image: image.ImageSpec(4, 4),
    }
    for mod, spec in specs.items():
        pos = mod.positions(spec)
        _check_positions(pos, spec.num_tokens)
        assert pos[:, 0].min() == 0 and pos[:, 0].max() < TICKS_PER_SECOND == 100, mod.NAME
    assert audio.positions(specs[audio])[:, 1:].max() == 0
    assert action.positions(specs[action])[:, 1:].max() == 0
    # action steps at hz == fps line up with video frame starts
    video_t = np.unique(video.positions(specs[video])[:, 0])
    assert set(video_t) <= set(action.positions(specs[action])[:, 0])


@pytest.mark.parametrize(
    "mod, spec",
    [
        (image, image.ImageSpec(4, 4)),
        (video, video.VideoSpec(4, 4, 4)),
        (audio, audio.AudioSpec(8, n_mels=4, patch_frames=2)),
        (action, action.ActionSpec(6, 2, chunk=3, hz=5.0)),
    ],
)
def test_time_offset_shifts_t_only(mod, spec):
    base, shifted = mod.positions(spec), mod.positions(spec, time_offset=250.0)
    np.testing.assert_array_equal(shifted[:, 0], base[:, 0] + 250.0)
    np.testing.assert_array_equal(shifted[:, 1:], base[:, 1:])


# ---------------------------------------------------------------- audio analysis / resynthesis


@pytest.fixture(scope="module")
def tone():
    """1 s of a 440 Hz sine at 16 kHz, amplitude 0.5, and its log-mel (the only librosa input)."""
    spec = audio.AudioSpec(frames=100)
    wave = 0.5 * np.sin(2 * np.pi * 440 * np.arange(spec.sample_rate) / spec.sample_rate)
    return spec, wave, audio.waveform_to_logmel(wave, spec)


def test_logmel_of_tone_peaks_in_the_440hz_bin(tone):
    import librosa

    spec, _, logmel = tone
    assert logmel.shape == (1, 100, 64) and logmel.dtype == np.float32
    assert -1.0001 <= logmel.min() and logmel.max() <= 1.0  # normalised range
    centres = librosa.mel_frequencies(spec.n_mels + 2, fmin=spec.fmin, fmax=spec.fmax)[1:-1]
    assert logmel[0].mean(axis=0).argmax() == np.abs(centres - 440).argmin()


def test_logmel_to_waveform_recovers_tone(tone, tmp_path):
    spec, _, logmel = tone
    wave = audio.logmel_to_waveform(logmel, spec)
    assert wave.shape == (1, spec.num_samples)
    spectrum = np.abs(np.fft.rfft(wave[0]))
    peak_hz = np.fft.rfftfreq(wave.shape[1], 1 / spec.sample_rate)[spectrum.argmax()]
    assert abs(peak_hz - 440) < 0.05 * 440, peak_hz
    again = audio.waveform_to_logmel(wave, spec)
    assert np.abs(again - logmel).mean() < 0.1  # measured 0.044 (0.19 without KL refinement)
    import soundfile

    audio.write_wav(tmp_path / "tone.wav", wave[0], spec.sample_rate)
    read, sr = soundfile.read(tmp_path / "tone.wav")
    assert sr == spec.sample_rate and read.shape == (spec.num_samples,)
    np.testing.assert_allclose(read, wave[0], atol=1 / 2**15 + 1e-6)


# ---------------------------------------------------------------- action normalisation, errors


def test_fit_stats_then_tokenize_standardises_features():
    rng = np.random.default_rng(3)
    acts = rng.normal([1.0, -5.0, 20.0], [0.1, 3.0, 50.0], size=(16, 10, 3)).astype(np.float32)
    prop = rng.normal([0.5, 7.0], [2.0, 0.01], size=(16, 10, 2)).astype(np.float32)
    spec = action.ActionSpec(10, 3, proprio_dim=2, chunk=2).with_stats(acts, prop)
    feats = np.asarray(action.tokenize(acts, spec, prop)).reshape(-1, 5)
    np.testing.assert_allclose(feats.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(feats.std(0), 1, atol=1e-4)
    mean, std = action.fit_stats(np.ones((4, 3)))
    assert mean == (1.0, 1.0, 1.0) and std == (1e-6,) * 3  # floored


def test_action_bad_shapes_raise():
    spec = action.ActionSpec(8, 5, proprio_dim=2)
    with pytest.raises(ValueError, match=r"expected \(B, 8, 5\)"):
        action.tokenize(np.zeros((2, 8, 4), np.float32), spec, np.zeros((2, 8, 2), np.float32))
    with pytest.raises(ValueError, match=r"expected \(2, 8, 2\)"):
        action.tokenize(np.zeros((2, 8, 5), np.float32), spec, np.zeros((2, 8, 3), np.float32))
    with pytest.raises(ValueError, match="no proprio"):
        action.tokenize(np.zeros((2, 8, 5), np.float32), spec)
    with pytest.raises(ValueError, match="expected feature_dim"):
        action.ActionSpec(8, 5, mean=(0.0,) * 4, std=(1.0,) * 4)
    with pytest.raises(ValueError, match="steps=8 is not divisible by chunk=3"):
        action.ActionSpec(8, 5, chunk=3)


def test_other_bad_shapes_raise():
    with pytest.raises(ValueError, match="frames=5 is not divisible by tubelet=2"):
        video.VideoSpec(5, 4, 4)
    with pytest.raises(ValueError, match="width=6 is not divisible by patch_size=4"):
        video.VideoSpec(4, 8, 6, patch_size=4)
    with pytest.raises(ValueError, match=r"expected \(B, 4, 4, 4, 3\)"):
        video.tokenize(np.zeros((1, 4, 4, 4, 1)), video.VideoSpec(4, 4, 4))
    with pytest.raises(ValueError, match=r"expected \(B, 8, 4\)"):
        audio.tokenize(np.zeros((1, 8, 5)), audio.AudioSpec(8, n_mels=4, patch_frames=2))
    with pytest.raises(ValueError, match=r"expected \(B, 4, 6, 3\)"):
        image.tokenize(np.zeros((1, 4, 4, 3)), image.ImageSpec(4, 6))


# ---------------------------------------------------------------- registry and interface


def test_registry():
    assert modalities.get("video") is modalities.video
    assert set(modalities.MODALITIES) == {"image", "video", "audio", "action", "text"}
    with pytest.raises(ValueError, match="'smell'.*image, video, audio, action"):
        modalities.get("smell")


EXAMPLE_SPECS = {
    "image": image.ImageSpec(4, 6),
    "video": video.VideoSpec(4, 4, 6),
    "audio": audio.AudioSpec(8, n_mels=4, patch_frames=2),
    "action": action.ActionSpec(6, 3, chunk=2),
}
EXAMPLE_INPUTS = {"image": (2, 4, 6, 3), "video": (2, 4, 4, 6, 3), "audio": (2, 8, 4), "action": (2, 6, 3)}


@pytest.mark.parametrize("name", ["image", "video", "audio", "action"])
def test_every_module_has_the_interface(name):
    mod, spec = modalities.get(name), EXAMPLE_SPECS[name]
    assert isinstance(mod, Modality) and mod.NAME == name == spec.name
    assert isinstance(spec, mod.Spec) and 0 < mod.DEFAULT_MASK_RATIO < 1 and mod.DEFAULT_TIME_SHIFT > 0
    assert hash(spec) == hash(type(spec)(**vars(spec)))  # frozen, hashable: usable as a jit static
    with pytest.raises(AttributeError):
        spec.name_of_nothing = 1
    tokens = mod.tokenize(_rand(EXAMPLE_INPUTS[name]), spec)
    assert tokens.shape == (2, spec.num_tokens, spec.token_dim)
    assert mod.positions(spec).shape == (spec.num_tokens, 3)
