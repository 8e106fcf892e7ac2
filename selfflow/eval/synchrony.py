"""Audio-visual synchrony: do a clip's sounds happen when its video shows collisions?

Why: a joint audio-video model of the procedural world (:mod:`data_pipelines.world`) should make
a sound exactly when two balls, or a ball and a wall, collide - every sound there is caused by a
visible collision. Per-modality measures (:mod:`selfflow.eval.media`) cannot see this: a model
that generates realistic video and realistic audio independently scores perfectly on both.
This measure needs no ground truth: it estimates *when* things happen from each modality alone
and correlates the two time courses.

Visual event strength (:func:`visual_event_strength`). A collision is an abrupt velocity change;
the second temporal difference of the frames, f[j+1] - 2 f[j] + f[j-1], responds to exactly that
(constant motion cancels to first order). Raw pixels respond poorly: the world's balls are 1-2 px
discs with a 1 px anti-aliased edge, so a pixel's value is not linear in the ball position beyond
sub-pixel motion. Blurring each frame first (Gaussian, sigma = ``blur`` x image height, default
0.125 = 2 px at 16 x 16, edges extended with the nearest pixel) makes it nearly linear. Per frame
the strength is the L2 norm of the blurred second difference (background = the clip's median
colour, subtracted first). Measured on 64 default world clips against the true events (Pearson
correlation with the collision speeds spread over a triangle of +-1 frame, i.e. the ideal
response): raw pixels 0.34, blur 1.5 px 0.67, 2 px 0.75, 3 px 0.75, 4 px 0.70; "reflect" edges
0.69 (a ball bouncing off a wall meets its own mirror image and the pair barely accelerates),
zero padding 0.56 (the blurred ball leaks out of the frame near walls); blob tracking (connected
components, nearest-centroid matching) only 0.55, since balls merge at every ball-ball contact.
For reference the true ball accelerations at frame rate reach 0.94. Frame j's value covers the
velocity change between frames j-1 and j+1, so an impulse at time t contributes with weight
max(0, 1 - |t - j/fps| fps): a triangle of half-width one frame. Defined for frames 1..T-2.

Audio onset strength (:func:`audio_onset_strength`): positive spectral flux of the normalised
log-mel, mean over bands of max(0, L[k] - L[k-1]), at time (k - 1/2) / audio_frame_rate. Every
impact is a sharp onset (0.94 correlation with the ideal response on the same clips).

Common rate: the video's (coarser; 10 fps in the world). The onset strength is pooled to each
video frame's time with the same triangle the second difference applies to an impulse, so both
signals are the same linear function of an impulse train (audio outside the clip counts as
silent).

Score (:func:`av_synchrony`): the Pearson correlation of the two signals at lag 0, in [-1, 1]; 0
when either is constant (a static video, digital silence: nothing to synchronise, no credit).
:func:`synchrony_profile` gives the correlation over a window of lags (steps of one audio frame)
and the best lag, which tells a systematic offset (e.g. audio generated 100 ms late) from mere
absence of synchrony. The lag-0 correlation was chosen over "lag 0 minus the best other lag"
because it is bounded, has the same separation per unit of spread (measured, 64 clips: aligned
0.65 +- 0.27 vs audio rolled by 300 ms -0.13 +- 0.24; the margin variant 0.16 +- 0.33 vs
-0.82 +- 0.32) and does not depend on a window choice.

Measured (default world, 64 clips, seed 7): aligned 0.65; audio rolled by +-200 ms -0.03 / 0.08,
+-300 ms -0.13 / -0.04, +-500 ms -0.21 / -0.04; audio of another clip 0.01-0.07. Per-clip values
spread by ~0.27 (some clips have no collision: 6% of default clips are silent), so compare batch
means over tens of clips. The best lag of aligned clips is -15 ms (median over 16 clips; the
40 ms analysis window sees an onset before the frame it is centred on), of audio rolled by
+200 ms +180 ms. Only meaningful for content whose sounds are caused by visible
accelerations (the world); for other video it still runs, but its value means little.
"""

from __future__ import annotations

import math

import numpy as np

from selfflow.eval.media import checked_array

DEFAULT_BLUR = 0.125  # Gaussian sigma as a fraction of the frame height (2 px at 16 x 16)
DEFAULT_MAX_LAG_S = 0.4  # window of lags of synchrony_profile, seconds either side


def _check_rate(name: str, value) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number (frames per second), got {value!r}")
    return float(value)


def _check_video(video) -> np.ndarray:
    return checked_array(
        "video", video, 4, "(T, H, W, C), T >= 3 (a second difference needs three frames),", 3
    )


def _check_logmel(logmel) -> np.ndarray:
    return checked_array("logmel", logmel, 2, "(frames, n_mels)", 2)


def visual_event_strength(video, blur: float = DEFAULT_BLUR) -> np.ndarray:
    """(T, H, W, C) frames -> (T - 2,) float64 event strength of frames 1..T-2 (see module doc).

    ``blur``: Gaussian sigma as a fraction of the frame height (0 = raw pixels).
    """
    from scipy.ndimage import gaussian_filter

    video = _check_video(video)
    if not 0 <= blur < 1:
        raise ValueError(f"blur must be in [0, 1) (a fraction of the frame height), got {blur!r}")
    background = np.median(video.reshape(-1, video.shape[-1]), axis=0)
    sigma = blur * video.shape[1]
    frames = (
        gaussian_filter(video - background, (0, sigma, sigma, 0), mode="nearest")
        if sigma
        else video - background
    )
    second = frames[2:] - 2.0 * frames[1:-1] + frames[:-2]
    return np.sqrt((second**2).sum(axis=(1, 2, 3)))


def audio_onset_strength(logmel) -> np.ndarray:
    """(F, M) normalised log-mel -> (F - 1,) float64 positive spectral flux; value k - 1 is at time
    (k - 1/2) / audio_frame_rate (between frames k - 1 and k)."""
    logmel = _check_logmel(logmel)
    return np.maximum(np.diff(logmel, axis=0), 0.0).mean(axis=1)


def pool_onsets(
    onset: np.ndarray, times: np.ndarray, video_fps: float, audio_frame_rate: float
) -> np.ndarray:
    """:func:`audio_onset_strength` (F - 1,) pooled at ``times`` (n,) seconds -> (n,): weights
    max(0, 1 - |t_onset - t| video_fps), the triangle a frame second difference applies to an
    impulse (the common-rate resampling of the module docstring)."""
    onset_times = (np.arange(1, len(onset) + 1) - 0.5) / audio_frame_rate
    weights = np.maximum(0.0, 1.0 - np.abs(onset_times[None, :] - times[:, None]) * video_fps)
    return weights @ onset


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either signal is constant (no variation to correlate)."""
    a, b = a - a.mean(), b - b.mean()
    norm_a, norm_b = float(np.sqrt((a * a).sum())), float(np.sqrt((b * b).sum()))
    if norm_a <= 1e-12 or norm_b <= 1e-12:
        return 0.0
    return float((a * b).sum() / (norm_a * norm_b))


def _signals(video, logmel, video_fps, audio_frame_rate, blur):
    video_fps = _check_rate("video_fps", video_fps)
    audio_frame_rate = _check_rate("audio_frame_rate", audio_frame_rate)
    video, logmel = _check_video(video), _check_logmel(logmel)
    video_s, audio_s = video.shape[0] / video_fps, logmel.shape[0] / audio_frame_rate
    if abs(video_s - audio_s) > 1.0 / video_fps + 1.0 / audio_frame_rate:
        raise ValueError(
            f"video {video.shape} at video_fps={video_fps} lasts {video_s:.3f} s but "
            f"logmel {logmel.shape} at audio_frame_rate={audio_frame_rate} lasts "
            f"{audio_s:.3f} s; expected the same clip (check the rates)"
        )
    visual = visual_event_strength(video, blur)
    times = np.arange(1, video.shape[0] - 1) / video_fps
    return visual, audio_onset_strength(logmel), times, video_fps, audio_frame_rate


def av_synchrony(
    video, logmel, video_fps: float, audio_frame_rate: float, *, blur: float = DEFAULT_BLUR
) -> float:
    """Synchrony of one clip: Pearson correlation (lag 0) of visual event strength and audio onset
    strength at the video's frame times, in [-1, 1] (see module docstring).

    ``video`` (T, H, W, C), any value range (the world's [-1, 1]); ``logmel`` (F, M) normalised
    log-mel (``modalities.audio.waveform_to_logmel``) covering the same clip, frame k at time
    k / ``audio_frame_rate`` (sample_rate / hop_length: 100 for this project's 10 ms hops).
    """
    visual, onset, times, fps, rate = _signals(video, logmel, video_fps, audio_frame_rate, blur)
    return _correlation(visual, pool_onsets(onset, times, fps, rate))


def synchrony_profile(
    video,
    logmel,
    video_fps: float,
    audio_frame_rate: float,
    *,
    max_lag_s: float = DEFAULT_MAX_LAG_S,
    blur: float = DEFAULT_BLUR,
) -> dict:
    """Correlation as a function of the audio's lag, for diagnosing a systematic offset.

    Returns ``lags_s`` (L,) float64 (multiples of 1 / audio_frame_rate in [-max_lag_s, max_lag_s];
    positive = the audio is read that much later than the video), ``correlation`` (L,) and
    ``best_lag_s`` (the lag of the highest correlation; near 0 for synchronised clips, near +d
    for audio that runs d seconds late).
    """
    visual, onset, times, fps, rate = _signals(video, logmel, video_fps, audio_frame_rate, blur)
    if not math.isfinite(max_lag_s) or max_lag_s < 0:
        raise ValueError(f"max_lag_s must be a finite number >= 0, got {max_lag_s!r}")
    steps = int(math.floor(max_lag_s * rate + 1e-9))
    lags = np.arange(-steps, steps + 1) / rate
    corr = np.array([_correlation(visual, pool_onsets(onset, times + lag, fps, rate)) for lag in lags])
    return {"lags_s": lags, "correlation": corr, "best_lag_s": float(lags[int(np.argmax(corr))])}


def batch_av_synchrony(
    videos, logmels, video_fps: float, audio_frame_rate: float, *, blur: float = DEFAULT_BLUR
) -> float:
    """Mean :func:`av_synchrony` over a batch: ``videos`` (B, T, H, W, C), ``logmels`` (B, F, M)
    (clip b of one with clip b of the other). Per-clip values spread widely (~0.27 on real world
    clips), so use tens of clips."""
    videos, logmels = np.asarray(videos), np.asarray(logmels)
    if videos.ndim != 5 or logmels.ndim != 3 or len(videos) != len(logmels) or len(videos) == 0:
        raise ValueError(
            f"videos {videos.shape} and logmels {logmels.shape}: expected (B, T, H, W, C) "
            "and (B, F, M) with the same B >= 1"
        )
    return float(
        np.mean([av_synchrony(v, m, video_fps, audio_frame_rate, blur=blur) for v, m in zip(videos, logmels)])
    )
