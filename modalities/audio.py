"""Audio modality: log-mel spectrograms (or any 1D latent sequence) patched along time.

Input ``(B, frames, n_mels)``: a token is ``patch_frames`` consecutive frames flattened
frame-major (features ordered (frame, mel)), so ``(B, frames/patch_frames, patch_frames·n_mels)``.
The same code serves latent sequences ``(B, L, C)`` from an audio autoencoder: then ``frames``
is L, ``n_mels`` is just the channel count C, and the mel parameters are unused except
``hop_length / sample_rate``, the duration of one frame.

Positions: t = ``time_offset`` + token_index · patch_frames · frame_ticks (the **start** time of
the token's first frame, as for video and action), h = w = 0. With the defaults one frame is
hop_length / sample_rate = 160 / 16000 s = 10 ms = 1 tick, so a 1 s clip is 100 frames.

Normalisation (fixed, no statistics): ``(log10(mel_power + 1e-5) + 1.5) / 3.5``. The floor
1e-5 maps silence to exactly -1; a full-scale (amplitude 1) 440 Hz sine peaks at log10 ≈ 2.16,
i.e. ≈ +1.05; an amplitude-0.1 sine at ≈ +0.48 (measured with the default spec).
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np

from modalities.base import TICKS_PER_SECOND, ModalitySpec, check_divisible, check_shape, grid_positions

NAME = "audio"
DEFAULT_MASK_RATIO = 0.5
DEFAULT_TIME_SHIFT = 1.0
KEYS = ("audio",)  # normalised log-mel (B, frames, n_mels)
MEL_HOP_SECONDS = 0.01  # 10 ms log-mel frames: one tick of the shared time axis


@dataclasses.dataclass(frozen=True)
class AudioSpec(ModalitySpec):
    """``frames`` mel frames (or latent steps) of ``n_mels`` features; frames % patch_frames == 0.

    Mel analysis (librosa, centred frames, Hann window, Slaney mel): ``sample_rate``,
    ``n_fft``, ``hop_length``, ``fmin``, ``fmax``; normalised log-mel =
    (log10(mel + log_floor) - norm_center) / norm_scale.
    """

    name = NAME
    frames: int
    n_mels: int = 64
    patch_frames: int = 4
    sample_rate: int = 16000
    hop_length: int = 160
    n_fft: int = 400
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = 1e-5
    norm_center: float = -1.5
    norm_scale: float = 3.5

    def __post_init__(self):
        check_divisible("frames", self.frames, "patch_frames", self.patch_frames)

    @property
    def frame_ticks(self) -> float:
        """Duration of one frame in ticks (1.0 with the defaults)."""
        return self.hop_length / self.sample_rate * TICKS_PER_SECOND

    @property
    def num_samples(self) -> int:
        """Waveform length that ``frames`` frames describe (frames · hop_length)."""
        return self.frames * self.hop_length

    @property
    def token_dim(self) -> int:
        return self.patch_frames * self.n_mels

    @property
    def num_tokens(self) -> int:
        return self.frames // self.patch_frames


Spec = AudioSpec


def data_spec(data_cfg) -> AudioSpec:
    """The log-mel analysis of a run's ``data`` section: 10 ms hops, 40 ms windows, ``n_mels``
    bands to Nyquist, ``clip_seconds`` long."""
    sr = data_cfg.sample_rate
    hop = int(round(sr * MEL_HOP_SECONDS))
    return AudioSpec(
        frames=int(round(data_cfg.clip_seconds / MEL_HOP_SECONDS)),
        n_mels=data_cfg.n_mels,
        patch_frames=data_cfg.audio_patch_frames,
        sample_rate=sr,
        hop_length=hop,
        n_fft=4 * hop,
        fmax=sr / 2,
    )


def spec_for(shapes: dict[str, tuple], cfg, examples) -> AudioSpec:
    """:func:`data_spec` with the frame and band counts the sources actually yield (latent
    sequences may differ from the log-mel analysis)."""
    spec = data_spec(cfg.data)
    frames, bands = shapes["audio"]
    if (frames, bands) != (spec.frames, spec.n_mels):
        spec = dataclasses.replace(spec, frames=frames, n_mels=bands)
    return spec


def tokenize_batch(raw: dict, spec: AudioSpec):
    """A batch dict with ``KEYS`` -> (B, N, token_dim)."""
    return tokenize(raw["audio"], spec)


def tokenize(mel, spec: AudioSpec):
    """(B, frames, n_mels) -> (B, frames/patch_frames, patch_frames·n_mels), frame-major."""
    check_shape("audio", mel.shape, (None, spec.frames, spec.n_mels), "(batch, frames, n_mels)")
    return mel.reshape(mel.shape[0], spec.num_tokens, spec.token_dim)


def detokenize(tokens, spec: AudioSpec):
    """(B, N, patch_frames·n_mels) -> (B, frames, n_mels); the exact inverse of :func:`tokenize`."""
    check_shape(
        "tokens",
        tokens.shape,
        (None, spec.num_tokens, spec.token_dim),
        "(batch, spec.num_tokens, spec.token_dim)",
    )
    return tokens.reshape(tokens.shape[0], spec.frames, spec.n_mels)


def positions(spec: AudioSpec, time_offset: float = 0.0) -> np.ndarray:
    """(N, 3) float32 (t, 0, 0), t = time_offset + index · patch_frames · frame_ticks."""
    times = time_offset + np.arange(spec.num_tokens) * spec.patch_frames * spec.frame_ticks
    return grid_positions(times, 1, 1)


def _mel_kwargs(spec: AudioSpec) -> dict:
    return dict(sr=spec.sample_rate, n_fft=spec.n_fft, fmin=spec.fmin, fmax=spec.fmax)


def waveform_to_logmel(wave, spec: AudioSpec) -> np.ndarray:
    """(S,) or (B, S) waveform at spec.sample_rate -> (B, spec.frames, n_mels) float32 in ~[-1, 1].

    librosa gives 1 + S // hop_length centred frames (frame i centred at sample i·hop_length,
    i.e. at tick i·frame_ticks); the first ``spec.frames`` are kept, so S must be at least
    (frames - 1) · hop_length (a 1 s clip at 16 kHz gives 101 frames, of which 100 are kept).
    """
    import librosa  # lazy: librosa (numba) is slow to import

    wave = np.asarray(wave, np.float32)
    wave = wave[None] if wave.ndim == 1 else wave
    if wave.ndim != 2:
        raise ValueError(f"waveform has shape {wave.shape}; expected (S,) or (B, S)")
    need = (spec.frames - 1) * spec.hop_length
    if wave.shape[1] < need:
        raise ValueError(
            f"waveform of {wave.shape[1]} samples is too short for {spec.frames} "
            f"frames; expected at least {need} = (frames - 1) · hop_length"
        )
    mel = librosa.feature.melspectrogram(
        y=wave, hop_length=spec.hop_length, n_mels=spec.n_mels, **_mel_kwargs(spec)
    )  # (B, n_mels, frames), power
    mel = np.swapaxes(mel, 1, 2)[:, : spec.frames]
    out = (np.log10(mel + spec.log_floor) - spec.norm_center) / spec.norm_scale
    return out.astype(np.float32)


def logmel_to_waveform(
    logmel, spec: AudioSpec, n_iter: int = 32, refine_iters: int = 50, seed: int = 0
) -> np.ndarray:
    """(B, frames, n_mels) -> (B, frames·hop_length) float32 (or (frames, n_mels) -> (S,)).

    Approximate inverse of :func:`waveform_to_logmel`: undo the normalisation, invert the mel
    filter bank, recover phase with ``n_iter`` Griffin-Lim iterations from a seeded random start
    (deterministic). The filter-bank inverse is least squares clipped at zero, then
    ``refine_iters`` multiplicative KL-divergence updates: least squares fits absolute power and
    smears a tone over neighbouring bins, which the log scale shows as large errors (measured on
    a 440 Hz tone: mean |Δ log-mel| 0.19 -> 0.044, FFT peak 418 -> 441 Hz); KL fits ratios.
    The mel frame :func:`waveform_to_logmel` dropped is re-created by repeating the last one.
    """
    import librosa

    logmel = np.asarray(logmel, np.float32)
    single = logmel.ndim == 2
    logmel = logmel[None] if single else logmel
    check_shape("logmel", logmel.shape, (None, spec.frames, spec.n_mels), "(batch, frames, n_mels)")
    mel = np.maximum(10.0 ** (logmel * spec.norm_scale + spec.norm_center) - spec.log_floor, 0.0)
    mel = np.swapaxes(mel, 1, 2)  # (B, n_mels, frames), power
    basis = librosa.filters.mel(n_mels=spec.n_mels, **_mel_kwargs(spec))  # (n_mels, n_fft/2+1)
    # least squares clipped at 0 as the start: closed form (librosa.util.nnls iterates L-BFGS-B, which
    # ran for over 20 min on an untrained model's output with librosa 1.0 / SciPy 1.18); the KL
    # updates below then reach the same fit (mel error of the 440 Hz tone < 1e-4 either way)
    power = np.maximum(np.einsum("fm,bmt->bft", np.linalg.pinv(basis), mel), 0.0) + 1e-10
    column_sums = basis.sum(axis=0)[:, None] + 1e-12
    for _ in range(refine_iters):
        power *= (basis.T @ (mel / (basis @ power + 1e-12))) / column_sums
    # frames·hop samples have 1 + frames centred STFT frames: repeat the last (dropped) one
    magnitude = np.sqrt(np.concatenate([power, power[..., -1:]], axis=-1))
    # librosa 1.0 renamed random_state to rng (the old name warns, and goes in 1.2)
    seed_arg = "rng" if "rng" in inspect.signature(librosa.griffinlim).parameters else "random_state"
    wave = librosa.griffinlim(
        magnitude,
        n_iter=n_iter,
        hop_length=spec.hop_length,
        n_fft=spec.n_fft,
        length=spec.num_samples,
        **{seed_arg: seed},
    )
    wave = wave.astype(np.float32)
    return wave[0] if single else wave


def write_wav(path, waveform, sample_rate: int) -> None:
    """Writes a mono (S,) (or (1, S)) waveform as 16-bit PCM WAV, clipped to [-1, 1]."""
    import soundfile

    wave = np.asarray(waveform, np.float32)
    wave = wave[0] if wave.ndim == 2 and wave.shape[0] == 1 else wave
    if wave.ndim != 1:
        raise ValueError(f"waveform has shape {wave.shape}; expected (S,) mono samples")
    soundfile.write(str(path), np.clip(wave, -1.0, 1.0), int(sample_rate), subtype="PCM_16")
