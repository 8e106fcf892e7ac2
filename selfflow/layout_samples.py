"""Samples of every layout of a run, written as files a person can look at or hear.

For each layout with condition segments: they come from the layout's first data batch (so
"audio for this video" or "future frames and actions after this frame" are generated for real
inputs), ``per_layout`` examples. A layout without condition segments needs no data: it samples
``per_layout`` examples of every class, class by class (an image is then a grid with one row per
class). Generate segments start from noise; the result is detokenised and written per modality into
``<out_dir>/<layout>/`` with the stem ``{j}_{modality}`` (j = segment index in the layout):
image -> PNG grid, video -> MP4 (H.264; ``sample.video_format="gif"``: animated GIF), the
batch's clips side by side (latent video no autoencoder decoded: ``{stem}.npy``), audio -> one
WAV per sample (``{stem}_{i:02d}.wav``) + spectrogram PNG (``{stem}_mel.png``), action -> PNG
plot. Condition inputs are written beside them with ``_given`` in the stem
(``0_video_given.mp4``) so a sample can be compared with its cue.

A layout with a video and an audio segment (either role) also gets, for every sample i and
every such pair, ``{video stem}_with_{audio stem}_{i:02d}.mp4``: that sample's video with its
own audio muxed in as the soundtrack (e.g. ``0_video_with_1_audio_00.mp4``, or
``0_video_given_with_1_audio_00.mp4`` for sound generated for a given video). These are MP4
whatever ``sample.video_format`` says (a GIF has no sound); the soundtrack is the very waveform
of the sample's WAV (Griffin-Lim runs once per audio segment).

Prompting (``captions=``, ``selfflow sample --caption``): only the layouts with a text condition
segment are sampled, one example per caption, the captions replacing the batch's text and its other
cues (a first frame, the class label) taken from the first data batch as above, reused in turn when
there are more captions than examples. A given caption is written from the bytes given, not from
its tokens (a byte outside the run's vocabulary would come back as nothing), so
``0_text_given.txt`` holds the captions as typed, one per line, in the order of the samples.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import modalities
from modalities import text as text_modality
from modalities.audio import logmel_to_waveform
from selfflow import outputs
from selfflow.layout import CONDITION
from selfflow.sample import sample_segments, save_grid
from selfflow.tasks import Task


@nnx.jit(static_argnames=("layout", "method", "steps", "cfg_scale", "guidance_interval", "null_class"))
def _sample(
    model, layout, start, labels, positions, key, method, steps, cfg_scale, guidance_interval, null_class
):
    return sample_segments(
        model,
        layout,
        start,
        labels,
        positions,
        method=method,
        steps=steps,
        cfg_scale=cfg_scale,
        guidance_interval=guidance_interval,
        null_class=null_class,
        key=key,
    )


def generate(
    cfg,
    task: Task,
    model,
    index: int,
    raw: dict,
    key: jax.Array,
    *,
    steps: int | None = None,
    cfg_scale: float | None = None,
) -> tuple:
    """Every segment of layout ``index`` for the examples of ``raw``: a batch dict as the layout's
    dataset yields (condition segments are the batch's own tokens), or just ``{"label": (B,)}`` for
    a layout without condition segments. Generate segments are sampled from noise (drawn from
    ``key``) with the run's ``sample`` settings (method, guidance interval; ``steps``/``cfg_scale``
    override). Returns per segment (B, n_i, d_i) float32 tokens."""
    lt, sc = task.layouts[index], cfg.sample
    labels = jnp.asarray(raw["label"])
    start = tuple(
        jnp.asarray(modalities.get(seg.modality).tokenize_batch(raw, task.specs[seg.modality]), jnp.float32)
        if seg.role == CONDITION
        else jax.random.normal(
            jax.random.fold_in(key, j),
            (labels.shape[0], seg.num_tokens, task.token_dims[seg.modality]),
            jnp.float32,
        )
        for j, seg in enumerate(lt.layout.segments)
    )
    return _sample(
        model,
        lt.layout,
        start,
        labels,
        jnp.asarray(lt.positions),
        jax.random.fold_in(key, len(start)),
        sc.method,
        steps or sc.steps,
        float(sc.cfg_scale if cfg_scale is None else cfg_scale),
        (float(sc.guidance_low), float(sc.guidance_high)),
        cfg.data.num_classes,
    )


def _write_image(raw, spec, directory: Path, stem: str, *, rows: int, **_) -> list[Path]:
    return [save_grid(np.asarray(raw), rows, directory / f"{stem}.png")]


def _write_video(raw, spec, directory: Path, stem: str, *, video_format: str, **_) -> list[Path]:
    if np.shape(raw)[-1] != 3:  # latents no autoencoder decoded (e.g. at the end of training)
        return _write_array(raw, spec, directory, stem)
    if video_format == "gif":
        return [outputs.save_video_gif(np.asarray(raw), directory / f"{stem}.gif", fps=spec.fps)]
    return [outputs.save_video_mp4(np.asarray(raw), directory / f"{stem}.mp4", fps=spec.fps)]


def _write_audio(raw, spec, directory: Path, stem: str, *, waveforms=None, **_) -> list[Path]:
    return outputs.save_audio_wavs(np.asarray(raw), spec, directory, prefix=stem, waveforms=waveforms)


def _write_action(raw, spec, directory: Path, stem: str, **_) -> list[Path]:
    actions, proprio = raw
    return [
        outputs.save_action_plot(
            np.asarray(actions),
            directory / f"{stem}.png",
            proprio=None if proprio is None else np.asarray(proprio),
            hz=spec.hz,
        )
    ]


def _write_text(raw, spec, directory: Path, stem: str, **_) -> list[Path]:
    """Captions as ``{stem}.txt``, one per line; encoder features as ``{stem}.npz`` (text, mask)."""
    text, mask = raw
    if spec.kind == text_modality.CAPTION:
        path = directory / f"{stem}.txt"
        path.write_text("".join(text_modality.decode_caption(row) + "\n" for row in np.asarray(text)))
        return [path]
    path = directory / f"{stem}.npz"
    np.savez(path, text=np.asarray(text), mask=np.asarray(mask))
    return [path]


def _write_array(raw, spec, directory: Path, stem: str, **_) -> list[Path]:
    """Any other modality: its detokenised array as ``{stem}.npy``."""
    path = directory / f"{stem}.npy"
    np.save(path, np.asarray(raw))
    return [path]


# How each modality's detokenised samples become files: writer(raw, spec, directory, stem, *,
# rows, video_format, waveforms) -> paths. A modality without a writer gets ``{stem}.npy``;
# a plug-in modality may add its own here.
WRITERS = {
    "image": _write_image,
    "video": _write_video,
    "audio": _write_audio,
    "action": _write_action,
    "text": _write_text,
}


def _examples(cfg, task: Task, index: int, per_layout: int) -> tuple[dict, int]:
    """(raw batch, image grid rows): the first data batch's ``per_layout`` examples for a layout with
    condition segments; else ``per_layout`` labels of every class, one grid row per class."""
    if any(seg.role == CONDITION for seg in task.layouts[index].layout.segments):
        raw = task.dataset(index)[0]
        return {k: v[:per_layout] for k, v in raw.items()}, 1
    classes = cfg.data.num_classes
    return {"label": np.repeat(np.arange(classes, dtype=np.int32), per_layout)}, classes


class PromptError(ValueError):
    """Captions or layout names a run cannot take; the message is one line naming the offending value
    (the command line turns it into a usage error)."""


def text_layouts(task: Task) -> list[int]:
    """Indices of the layouts with a text condition segment: the ones a caption can prompt."""
    return [
        i
        for i, lt in enumerate(task.layouts)
        if any(seg.modality == text_modality.NAME and seg.role == CONDITION for seg in lt.layout.segments)
    ]


def check_captions(task: Task, captions) -> dict[str, np.ndarray]:
    """The batch dict ``{"text", "text_mask"}`` of ``captions``, or a :class:`PromptError` saying
    why the run cannot take them: no text layout (its layouts named), encoder-feature text (no byte
    vocabulary to tokenise a caption with), a caption over the padded length (named, with its byte
    length and the limit; a prompt is never cut short, it would silently say something else)."""
    names = [lt.layout.name for lt in task.layouts]
    if not text_layouts(task):
        raise PromptError(f"captions need a layout with a text:condition segment; this run has {names}")
    spec = task.specs[text_modality.NAME]
    if spec.kind != text_modality.CAPTION:
        raise PromptError(
            "this run's text is encoder features (SourceConfig(text='features')): it has no byte "
            "vocabulary, so a caption cannot be tokenised; give features as the raw batch of "
            "selfflow.layout_samples.generate"
        )
    if not captions:
        raise PromptError("no captions given")
    for caption in captions:
        size = len(caption.encode("utf-8"))
        if size > spec.length:
            raise PromptError(
                f"caption {caption!r} is {size} bytes, longer than the {spec.length} this run reads "
                f"(data.text_tokens {spec.num_tokens} x data.caption_bytes_per_token {spec.bytes_per_token})"
            )
        try:
            text_modality.encode_caption(caption, spec.length)  # its other complaints (a NUL byte)
        except ValueError as e:
            raise PromptError(f"caption {caption!r}: {e}") from None
    return text_modality.encode_captions(list(captions), spec)


def unknown_characters(caption: str, spec) -> str:
    """The characters of ``caption`` with a byte outside the run's vocabulary (the model reads each
    such byte as one shared unknown id), in order of first appearance."""
    known = set(spec.vocab)
    return "".join(dict.fromkeys(ch for ch in caption if any(b not in known for b in ch.encode("utf-8"))))


def _select_layouts(task: Task, indices, names, *, prompted: bool) -> list[int]:
    """The indices among ``indices`` of the layouts ``names``; a name that is not a layout of the
    run, or (``prompted``) not a text-conditioned one, is a :class:`PromptError` listing the choices."""
    by_name = {task.layouts[i].layout.name: i for i in indices}
    for name in names:
        if name not in by_name:
            all_names = [lt.layout.name for lt in task.layouts]
            if prompted and name in all_names:
                raise PromptError(
                    f"layout {name!r} has no text:condition segment to prompt; the run's text layouts "
                    f"are {list(by_name)}"
                )
            raise PromptError(f"layout {name!r} is not in this run; it has {all_names}")
    return [i for i in indices if task.layouts[i].layout.name in names]


def _prompted_examples(task: Task, index: int, encoded: dict[str, np.ndarray]) -> dict:
    """Layout ``index``'s first data batch cycled to one example per caption, its text replaced by
    the encoded captions: the other cues stay real data, as in unprompted samples."""
    raw = task.dataset(index)[0]
    rows = np.arange(len(encoded["text"])) % len(raw["label"])
    return {**{k: np.asarray(v)[rows] for k, v in raw.items()}, **encoded}


def write_layout_samples(
    cfg,
    task: Task,
    model,
    out_dir: str | Path,
    *,
    steps: int,
    cfg_scale: float,
    seed: int,
    per_layout: int = 4,
    image_decoder=None,
    captions=None,
    layouts=None,
) -> list[Path]:
    """Samples ``per_layout`` examples of each layout into ``out_dir/<layout>/``; returns the files
    (named as the module docstring says). ``image_decoder(latents) -> pixels`` in [-1, 1], if given,
    turns image segments of a latent run into pixels first (the run's autoencoder; video segments
    instead when its ``modality`` attribute says ``"video"``, a WAN autoencoder). ``captions``
    (strings): one example per caption of each text-conditioned layout instead (see the module
    docstring; :class:`PromptError` if the run cannot take them). ``layouts`` (names): only these."""
    out_dir, paths = Path(out_dir), []
    video_format = cfg.sample.video_format
    indices = range(len(task.layouts))
    if captions is not None:
        encoded = check_captions(task, captions)
        indices = text_layouts(task)
    if layouts is not None:
        indices = _select_layouts(task, indices, layouts, prompted=captions is not None)
    for i in indices:
        lt = task.layouts[i]
        if captions is None:
            raw, rows = _examples(cfg, task, i, per_layout)
        else:
            raw, rows = _prompted_examples(task, i, encoded), 1
        result = generate(
            cfg, task, model, i, raw, jax.random.key(seed + i), steps=steps, cfg_scale=cfg_scale
        )
        directory = out_dir / lt.layout.name
        directory.mkdir(parents=True, exist_ok=True)
        videos, sounds = [], []  # (stem, (B, T, H, W, 3)) / (stem, (B, S) waveforms)
        for j, (seg, tokens) in enumerate(zip(lt.layout.segments, result)):
            stem = f"{j}_{seg.modality}" + ("_given" if seg.role == CONDITION else "")
            spec = task.specs[seg.modality]
            decoded = modalities.get(seg.modality).detokenize(np.asarray(tokens, np.float32), spec)
            if captions is not None and seg.modality == text_modality.NAME:
                decoded = (raw["text"], raw["text_mask"])  # as given (see the module docstring)
            if image_decoder is not None and seg.modality == getattr(image_decoder, "modality", "image"):
                decoded = image_decoder(decoded)  # a latent run's autoencoder (video: WAN)
            waves = None
            if seg.modality == "video" and np.shape(decoded)[-1] == 3:
                videos.append((stem, np.asarray(decoded)))
            elif seg.modality == "audio":
                waves = logmel_to_waveform(np.asarray(decoded, np.float32), spec)
                sounds.append((stem, waves))
            write = WRITERS.get(seg.modality, _write_array)
            paths += write(
                decoded, spec, directory, stem, rows=rows, video_format=video_format, waveforms=waves
            )
        for video_stem, video in videos:  # every (video, audio) pair: one MP4 per sample
            for audio_stem, waves in sounds:
                for k in range(video.shape[0]):
                    paths.append(
                        outputs.save_video_mp4(
                            video[k : k + 1],
                            directory / f"{video_stem}_with_{audio_stem}_{k:02d}.mp4",
                            fps=task.specs["video"].fps,
                            audio=waves[k],
                            sample_rate=task.specs["audio"].sample_rate,
                        )
                    )
    return paths


def write_run_samples(
    cfg,
    task: Task,
    model,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    cfg_scale: float | None = None,
    image_decoder=None,
    captions=None,
    layouts=None,
) -> list[Path]:
    """:func:`write_layout_samples` with the run's ``sample`` settings (``steps``/``cfg_scale``
    override them): what training writes at its end and ``selfflow sample`` writes (``captions``,
    ``layouts``: its ``--caption`` and ``--layout``)."""
    s = cfg.sample
    return write_layout_samples(
        cfg,
        task,
        model,
        out_dir,
        steps=steps or s.steps,
        cfg_scale=s.cfg_scale if cfg_scale is None else cfg_scale,
        seed=s.seed,
        per_layout=s.per_class,
        image_decoder=image_decoder,
        captions=captions,
        layouts=layouts,
    )
