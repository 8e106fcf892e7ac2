"""Audio and video set measures (selfflow.eval.media) on procedural-world clips."""

import numpy as np
import pytest

from data_pipelines.sources import WorldExamples
from data_pipelines.world import WorldSource
from modalities import audio as audio_mod
from modalities.audio import data_spec as audio_spec
from selfflow.config import DataConfig
from selfflow.eval import media

SPEC = audio_spec(DataConfig(source="world"))  # 160 frames x 32 mel bands
HALF = 64  # clips per set


@pytest.fixture(scope="module")
def world():
    """Two disjoint sets of 64 clips each: videos (2, 64, 16, 16, 16, 3), logmels (2, 64, 160, 32)."""
    source = WorldExamples(WorldSource(2 * HALF, seed=21), SPEC, keys=("video", "audio"))
    examples = [source[i] for i in range(2 * HALF)]
    videos = np.stack([e["video"] for e in examples]).reshape(2, HALF, *examples[0]["video"].shape)
    logmels = np.stack([e["audio"] for e in examples]).reshape(2, HALF, *examples[0]["audio"].shape)
    return videos, logmels


# ------------------------------------------------------------------------------------ audio


def test_audio_fd_separates_real_from_wrong_sounds(world):
    _, (a, b) = world
    rng = np.random.default_rng(0)
    same = media.audio_fd(a, a)
    real = media.audio_fd(a, b)
    permuted = media.audio_fd(a, b[..., rng.permutation(SPEC.n_mels)])  # pitches scrambled
    noise = rng.uniform(-1, 1, (HALF, SPEC.num_samples)).astype(np.float32) * 1e-3
    silent = media.audio_fd(a, audio_mod.waveform_to_logmel(noise, SPEC))
    # Measured here: same ~1e-8, real 0.045, permuted 0.60, silent 1.07.
    assert abs(same) < 1e-6, same
    assert 0 < real < 0.1, real
    assert permuted > 5 * real and silent > 5 * real, (real, permuted, silent)


def test_logmel_features_are_the_documented_statistics():
    x = np.zeros((1, 4, 2))
    x[0, :, 0] = [0.0, 1.0, 0.0, 1.0]  # band 0: up, down, up
    x[0, :, 1] = [3.0, 2.0, 1.0, 0.0]  # band 1: only falls
    f = media.logmel_clip_features(x)
    np.testing.assert_allclose(f[0], [0.5, 1.5, 0.5, np.sqrt(1.25), np.sqrt(2 / 3), 0.0])


# ------------------------------------------------------------------------------------ video


def test_temporal_consistency_ratio(world):
    (a, b), _ = world
    rng = np.random.default_rng(1)
    shuffled = np.stack([clip[rng.permutation(len(clip))] for clip in b])
    frozen = np.repeat(b[:, :1], b.shape[1], axis=1)
    real = media.temporal_consistency_ratio(a, b)
    # Measured here: real 0.90, shuffled 2.3 (0.9-1.02 and ~2.8 on other sets of 64), frozen 0.
    assert 0.8 < real < 1.25, real
    assert media.temporal_consistency_ratio(a, shuffled) > 1.8
    assert media.temporal_consistency_ratio(a, frozen) == 0.0
    assert media.temporal_consistency_ratio(a, a) == 1.0


def test_frame_fd_real_vs_noise(world):
    (a, b), _ = world
    rng = np.random.default_rng(2)
    noise = rng.uniform(-1, 1, b.shape)
    real, against_noise = media.video_frame_fd(a, b), media.video_frame_fd(a, noise)
    # Measured here: 0.13 between the real sets, 30 against noise.
    assert abs(media.video_frame_fd(a, a)) < 1e-6
    assert against_noise > 20 * real, (real, against_noise)


def test_motion_fd_sees_temporal_order(world):
    (a, b), _ = world
    rng = np.random.default_rng(3)
    shuffled = np.stack([clip[rng.permutation(len(clip))] for clip in b])
    real, jumbled = media.motion_fd(a, b), media.motion_fd(a, shuffled)
    # Per-frame statistics cannot see the order; motion statistics can (measured 0.013 vs 0.15).
    np.testing.assert_allclose(media.video_frame_fd(a, shuffled), media.video_frame_fd(a, b), rtol=1e-6)
    assert jumbled > 4 * real, (real, jumbled)


def test_frame_features_thumbnail_and_histogram():
    img = np.full((1, 4, 4, 3), -1.0)
    img[0, :2, :2] = 1.0  # top-left quarter white
    f = media.frame_features(img, grid=2, bins=2)
    thumb, hist = f[0, :12], f[0, 12:]
    np.testing.assert_allclose(thumb, [1, 1, 1] + [-1, -1, -1] * 3)  # cells row-major, RGB
    np.testing.assert_allclose(hist, [0.75, 0.25] * 3)  # per channel: dark, bright
    assert media.frame_features(np.zeros((5, 16, 16, 3))).shape == (5, 4 * 4 * 3 + 8 * 3)


def test_frame_fd_accepts_a_feature_extractor(world):
    (a, b), _ = world
    seen = []

    def mean_colour(images):
        seen.append(images.shape)
        return images.mean(axis=(1, 2))

    value = media.video_frame_fd(a, b[:10], extract=mean_colour)
    assert seen == [(HALF * 16, 16, 16, 3), (10 * 16, 16, 16, 3)]
    from selfflow.eval.frechet import frechet_from_features

    expected = frechet_from_features(
        a.reshape(-1, 16, 16, 3).mean(axis=(1, 2)), b[:10].reshape(-1, 16, 16, 3).mean(axis=(1, 2))
    )
    np.testing.assert_allclose(value, expected)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: media.audio_fd(np.zeros((4, 160, 32)), np.zeros((4, 160, 16))),
            r"real \(4, 160, 32\).*\(4, 160, 16\)",
        ),
        (lambda: media.audio_fd(np.zeros((160, 32)), np.zeros((4, 160, 32))), r"real has shape \(160, 32\)"),
        (
            lambda: media.temporal_consistency_ratio(np.zeros((2, 4, 8, 8, 3)), np.ones((2, 4, 8, 8, 3))),
            "static",
        ),
        (lambda: media.frame_features(np.zeros((2, 6, 6, 3)), grid=4), r"6x6.*4x4"),
        (lambda: media.video_frame_fd(np.zeros((8, 3)), np.zeros((8, 3))), r"real has shape \(8, 3\)"),
        (
            lambda: media.video_frame_fd(np.zeros((2, 4, 8, 8, 3)), np.zeros((2, 4, 16, 16, 3))),
            r"different shapes \(8, 8, 3\) and \(16, 16, 3\)",
        ),
        (
            lambda: media.motion_fd(np.zeros((4, 5, 8, 8, 3)), np.zeros((4, 6, 8, 8, 3))),
            r"\(4, 5, 8, 8, 3\).*\(4, 6, 8, 8, 3\)",
        ),
        (lambda: media.mean_frame_difference(np.full((2, 3, 4, 4, 3), np.nan)), "NaN"),
    ],
)
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
