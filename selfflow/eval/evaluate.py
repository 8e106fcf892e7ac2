"""A run's numbers: every proxy of :mod:`selfflow.eval` that applies to its layouts, in one table.

For each layout, ``num`` held-out examples are read; their condition segments (and labels) condition
the sampler, which generates the layout's other segments from noise with the run's ``sample``
settings (method, steps, guidance), from the EMA weights. Each generated modality is compared with
the real examples of the same held-out batches:

=========  ==================================================================================
image      ``image_fd``: Fréchet distance in the features of the run's cached classifier
           (:mod:`~selfflow.eval.classifier`); ``inception_fid`` too with ``inception=PATH``
           (the pytorch-fid weight file); ``image_fd_dinov2`` with ``dinov2=PATH`` (FD-DINOv2:
           DINOv2 CLS features at 224 px, :mod:`~selfflow.eval.dinov2_fd`; ViT-L/14 for the
           published protocol)
video      ``video_frame_fd`` (per-frame features, :mod:`~selfflow.eval.media`),
           ``video_motion_fd`` and ``video_temporal_ratio`` (1 = as smooth as real clips)
audio      ``audio_fd`` (log-mel statistics)
audio +    ``av_synchrony``: do the sounds coincide with the collisions (:mod:`~selfflow.eval.
video      synchrony`; ``av_synchrony_real`` is the real clips' score)
action     ``action_l2`` / ``action_mse`` against the held-out demonstrations, original units
text       ``text_<modality>_<attribute>``: text consistency, the share of samples whose
           attributes (read by a reader trained on real clips) match their caption, with
           ``_shuffled`` (another sample's caption) and ``_real`` (the real clips); for captions
           written by the world (:mod:`~selfflow.eval.text_consistency`)
=========  ==================================================================================

A run on autoencoder latents (``selfflow prepare --encode``) is decoded with the autoencoder its
manifest names (``autoencoder_weights=FILE`` overrides the recorded file) wherever a metric needs
pixels: Inception FID and FD-DINOv2 of images, every video metric of WAN latents; ``image_fd`` stays
in latent space, where its classifier was trained.

Fréchet distances of finite sets are biased upwards, so each comes with ``<name>_real``: the same
distance between the real set and a second, disjoint real set of the same size — the floor a
perfect model would reach at this ``num``. Also reported: ``val/...`` (held-out velocity MSE,
:func:`selfflow.train.validation_metrics`) and, with ``probe=True``, ``probe/layer_<l>``: held-out
linear-probe accuracy of the trunk's features after block l (:mod:`~selfflow.eval.probe`).

``selfflow eval --run-dir DIR`` writes ``DIR/eval/step_<k>.json`` and ``.md``; the trainer runs the
cheap part (no probe, no Inception) every ``train.eval_every`` steps.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx

import modalities
from modalities.audio import MEL_HOP_SECONDS
from selfflow.eval.heldout import generated_for, heldout_examples
from selfflow.layout import GENERATE
from selfflow.tasks import Task


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    num: int = 256  # generated (and real) examples per layout
    steps: int | None = None  # sampler steps (None: sample.steps)
    cfg_scale: float | None = None  # None: sample.cfg_scale
    seed: int = 0
    probe: bool = True  # linear probes of every block (the slow part)
    probe_examples: tuple[int, int] = (2048, 1024)  # (train, held-out) examples of the probe
    classifier_steps: int = 1000  # training budget of the image classifier (cached per dataset)
    inception: str | None = None  # pytorch-fid weight file: also the Inception FID of images
    dinov2: str | None = None  # DINOv2 model.safetensors: also FD-DINOv2 of images
    # weights of the autoencoder that wrote the run's latents (None: the file its manifest records)
    autoencoder_weights: str | None = None
    text_reader_steps: int = 800  # training budget of the text-consistency readers (cached per dataset)

    def __post_init__(self):
        if self.num < 2:
            raise ValueError(f"num={self.num}: expected >= 2 examples (a Fréchet distance needs two)")
        if self.text_reader_steps < 1:
            raise ValueError(f"text_reader_steps={self.text_reader_steps}: expected a positive integer")


def _real(real: dict, modality: str) -> np.ndarray:
    return np.asarray(real[modalities.keys_of(modality)[0]])


def layout_metrics(
    cfg,
    task: Task,
    model,
    index: int,
    settings: EvalSettings,
    image_features: Callable | None,
    inception=None,
    dinov2=None,
    text_readers=None,
    decode=None,
) -> dict[str, float]:
    """The proxies of one layout (see the module docstring), unprefixed. ``text_readers``: a
    :class:`~selfflow.eval.text_consistency.Readers` (None: no text consistency). ``decode``: the
    run's latent decoder (:func:`selfflow.autoencoders.latents.latent_decoder`; its ``modality``
    says which segments it decodes), applied to real and generated latents after the classifier
    FD, so every later metric sees pixels."""
    from selfflow.eval import actions, frechet, media, synchrony, text_consistency

    real = heldout_examples(task, index, settings.num)
    fake = generated_for(
        cfg, task, model, index, real, seed=settings.seed, steps=settings.steps, cfg_scale=settings.cfg_scale
    )
    generated = set(fake)
    lt = task.layouts[index]
    present = set(lt.layout.modalities)
    other = None  # a second real set: the floor of every Fréchet distance
    if generated & {"image", "video", "audio"}:
        other = heldout_examples(task, index, settings.num, skip=settings.num)
    out: dict[str, float] = {}
    if "image" in generated and image_features is not None:
        real_images = _real(real, "image")
        out["image_fd"] = frechet.frechet_from_features(
            image_features(real_images), image_features(fake["image"])
        )
        out["image_fd_real"] = frechet.frechet_from_features(
            image_features(real_images), image_features(_real(other, "image"))
        )
    if decode is not None and decode.modality in generated:
        m, key = decode.modality, modalities.keys_of(decode.modality)[0]
        fake = {**fake, m: decode(fake[m])}
        real, other = ({**batch, key: decode(batch[key])} for batch in (real, other))
    if "image" in generated and inception is not None:
        from selfflow.eval.inception import extract
        from selfflow.sample import to_uint8

        def pool3(images):
            pixels = to_uint8(np.repeat(images, 3, -1) if images.shape[-1] == 1 else images)
            return extract(inception, pixels)[0]

        out["inception_fid"] = frechet.frechet_from_features(
            pool3(_real(real, "image")), pool3(fake["image"])
        )
        out["inception_fid_real"] = frechet.frechet_from_features(
            pool3(_real(real, "image")), pool3(_real(other, "image"))
        )
    if "image" in generated and dinov2 is not None:
        from selfflow.eval.dinov2_fd import extract_cls
        from selfflow.sample import to_uint8

        cls = lambda images: extract_cls(dinov2, to_uint8(images))  # as the sample files hold them
        real_cls = cls(_real(real, "image"))
        out["image_fd_dinov2"] = frechet.frechet_from_features(real_cls, cls(fake["image"]))
        out["image_fd_dinov2_real"] = frechet.frechet_from_features(real_cls, cls(_real(other, "image")))
    if "video" in generated:
        rv, ov, fv = _real(real, "video"), _real(other, "video"), fake["video"]
        out["video_frame_fd"] = media.video_frame_fd(rv, fv)
        out["video_frame_fd_real"] = media.video_frame_fd(rv, ov)
        out["video_motion_fd"] = media.motion_fd(rv, fv)
        out["video_motion_fd_real"] = media.motion_fd(rv, ov)
        out["video_temporal_ratio"] = media.temporal_consistency_ratio(rv, fv)
    if "audio" in generated:
        out["audio_fd"] = media.audio_fd(_real(real, "audio"), fake["audio"])
        out["audio_fd_real"] = media.audio_fd(_real(real, "audio"), _real(other, "audio"))
    if {"audio", "video"} <= present and generated & {"audio", "video"}:
        fps, rate = task.specs["video"].fps, 1.0 / MEL_HOP_SECONDS
        pick = lambda m: fake[m] if m in fake else _real(real, m)
        out["av_synchrony"] = synchrony.batch_av_synchrony(pick("video"), pick("audio"), fps, rate)
        out["av_synchrony_real"] = synchrony.batch_av_synchrony(
            _real(real, "video"), _real(real, "audio"), fps, rate
        )
    if "action" in generated:
        err = actions.action_error(fake["action"], np.asarray(real["actions"]))
        out["action_l2"], out["action_mse"] = float(err["l2"]), float(err["mse"])
    if text_readers is not None and text_consistency.has_captions(task, index):
        out.update(text_consistency.layout_scores(text_readers, index, real, fake))
    return {k: float(v) for k, v in out.items()}


def latent_pixels(cfg, task: Task, settings: EvalSettings) -> Callable | None:
    """The decoder of a run on autoencoder latents, when a metric needs pixels: Inception FID or
    FD-DINOv2 of image latents, every video metric of WAN latents (the classifier FD of images
    stays in latent space, where its classifier was trained). None for pixel data or when no metric
    needs it, so periodic evaluations of image-latent runs load no autoencoder."""
    from selfflow.autoencoders.latents import latent_decoder, run_autoencoder

    dirs = [sc.path for sc in cfg.data.sources if sc.kind == "latents"]
    if not dirs:
        return None
    generated = {s.modality for lt in task.layouts for s in lt.layout.segments if s.role == GENERATE}
    wanted = {"video"} | ({"image"} if settings.inception or settings.dinov2 else set())
    if not generated & wanted:
        return None
    ae = run_autoencoder(dirs, weights=settings.autoencoder_weights)
    decode = None if ae is None else latent_decoder(ae)
    return decode if decode is not None and decode.modality in generated & wanted else None


def evaluate(
    cfg,
    task: Task,
    model,
    settings: EvalSettings,
    cache_dir: str | Path,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, float]:
    """Every metric of the run for ``model`` (its EMA weights): {"<layout>/<metric>": value,
    "val/...": ..., "probe/layer_<l>": ...}."""
    from selfflow.validation import validation_metrics

    image_features = inception = dinov2 = None
    imaging = [
        i
        for i, lt in enumerate(task.layouts)
        if any(s.modality == "image" and s.role == GENERATE for s in lt.layout.segments)
    ]
    if imaging:
        from selfflow.eval.classifier import image_feature_extractor

        progress("image classifier (trained once per dataset, then cached)")
        image_features, _ = image_feature_extractor(
            cfg, task, cache_dir, source=task.layout_sources(imaging[0])[0], steps=settings.classifier_steps
        )
        if settings.inception:
            from selfflow.eval.inception import load_pytorch_fid_weights

            inception = load_pytorch_fid_weights(settings.inception)
        if settings.dinov2:
            from selfflow.encoders.dinov2 import load_dinov2

            dinov2 = load_dinov2(settings.dinov2)
    from selfflow.eval.text_consistency import Readers

    text_readers = Readers(cfg, task, Path(cache_dir), steps=settings.text_reader_steps, progress=progress)
    decode = latent_pixels(cfg, task, settings)
    results = {}
    for i, name in enumerate(task.names):
        progress(f"layout {name}: sampling {settings.num} examples")
        results.update(
            {
                f"{name}/{k}": v
                for k, v in layout_metrics(
                    cfg, task, model, i, settings, image_features, inception, dinov2, text_readers, decode
                ).items()
            }
        )
    results.update(validation_metrics(task, model))
    if settings.probe:
        from selfflow.eval.probe import PROBED_MODALITIES, layer_probe

        modality = next((m for m in PROBED_MODALITIES if m in task.specs), None)
        if modality is not None:
            progress(f"linear probes of every block ({modality})")
            n_train, n_test = settings.probe_examples
            accuracy = layer_probe(
                model,
                task,
                range(1, model.depth + 1),
                n_train=n_train,
                n_test=n_test,
                seed=settings.seed,
                modality=modality,
            )
            results.update({f"probe/layer_{layer}": acc for layer, acc in accuracy.items()})
    return results


def markdown(results: dict[str, float], title: str) -> str:
    """A table: one row per metric, with the real-vs-real floor beside its Fréchet distance."""
    rows = [f"# {title}", "", "| metric | value | real vs real |", "|---|---|---|"]
    for key in sorted(results):
        if key.endswith("_real") and key[: -len("_real")] in results:
            continue
        floor = results.get(f"{key}_real")
        rows.append(f"| {key} | {results[key]:.4g} | {'' if floor is None else f'{floor:.4g}'} |")
    return "\n".join(rows) + "\n"


def evaluate_run(
    run_dir,
    settings: EvalSettings = EvalSettings(),
    *,
    step: int | None = None,
    weights: str = "ema",
    out_dir=None,
    cache_dir=None,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[dict, Path, Path]:
    """Evaluates a run directory's EMA (or ``weights="online"``) weights; writes ``step_<k>.json``
    and ``.md`` (``step_<k>_online.*`` for the online weights) into ``out_dir`` (default
    ``RUN_DIR/eval``). Returns (results, json path, markdown path)."""
    from selfflow.eval.classifier import default_cache_dir
    from selfflow.run import load_run, select_weights

    cfg, state, graphdef, task, step = load_run(run_dir, step)
    model = nnx.merge(graphdef, jax.device_get(select_weights(state, weights)))
    results = evaluate(cfg, task, model, settings, cache_dir or default_cache_dir(run_dir), progress)
    out_dir = Path(out_dir or Path(run_dir) / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"step_{step}" + ("" if weights == "ema" else f"_{weights}")
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(
        json.dumps(
            {"step": step, "weights": weights, "settings": dataclasses.asdict(settings), "metrics": results},
            indent=2,
            sort_keys=True,
        )
    )
    md_path.write_text(
        markdown(results, f"{run_dir} at step {step} (EMA weights, {settings.num} samples per layout)")
    )
    return results, json_path, md_path
