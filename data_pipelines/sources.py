"""From a ``SourceConfig`` to a source that yields canonical examples (see :mod:`.base`).

One function per kind; the sizes come from the ``data`` section so that every source of a run
yields the same shapes (image ``image_size``², clips of ``clip_seconds`` at ``fps``, log-mel
with the run's :func:`modalities.audio.data_spec`). File readers are imported lazily: a run on the procedural
world never imports decord or librosa's decoders.

Every source here has ``schema`` and ``select(keys)``, which returns a source yielding only
``keys`` (plus ``label``): the world computes its log-mel only when a layout reads audio. Sources
whose labels are class ids ``0..len(classes) - 1`` have ``classes`` (the names); it is ``None``
where the number of classes is not known up front (trajectories, latents). :mod:`selfflow.tasks`
checks it against ``data.num_classes``.
"""

from __future__ import annotations

import numpy as np

import modalities
from data_pipelines.base import Field, SourceError
from data_pipelines.world_captions import caption_bytes
from modalities import audio as audio_mod
from modalities.audio import AudioSpec


def clip_frames(data_cfg) -> int:
    return int(round(data_cfg.clip_seconds * data_cfg.fps))


def caption_length(data_cfg) -> int:
    """Bytes every caption is padded to: ``text_tokens`` tokens of ``caption_bytes_per_token``."""
    return data_cfg.text_tokens * data_cfg.caption_bytes_per_token


class Selected:
    """``source`` restricted to ``keys`` (and ``label``)."""

    def __init__(self, source, keys):
        self.source, self.keys = source, tuple(dict.fromkeys((*keys, "label")))
        missing = [k for k in self.keys if k not in source.schema]
        if missing:
            raise SourceError(f"{source!r} does not yield {missing} (it has {sorted(source.schema)})")
        self.schema = {k: source.schema[k] for k in self.keys}
        self.classes = getattr(source, "classes", None)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        example = self.source[index]
        return {k: example[k] for k in self.keys}

    def where(self, index):
        return self.source.where(index)

    def select(self, keys):
        return Selected(self.source, keys)

    def __repr__(self):
        return f"{self.source!r}[{', '.join(self.keys)}]"


class WorldExamples:
    """The procedural world's clips as canonical examples: ``image`` = the first frame,
    ``video``, ``audio`` (log-mel of the waveform), ``actions``, ``proprio``, the caption as
    ``text``/``text_mask`` (``caption_length`` bytes, :mod:`data_pipelines.world_captions`), and
    ``label`` = number of balls − 1."""

    def __init__(self, world_source, spec: AudioSpec, keys=None, caption_length: int = 128):
        self.world, self.spec, self.caption_length = world_source, spec, caption_length
        c, n = world_source.config, world_source.config.image_size
        t_a = c.num_actions
        full = {
            "image": Field((n, n, 3), "float32"),
            "video": Field((c.num_frames, n, n, 3), "float32"),
            "audio": Field((spec.frames, spec.n_mels), "float32"),
            "actions": Field((t_a, 2), "float32"),
            "proprio": Field((t_a, 4), "float32"),
            "text": Field((caption_length,), "uint8"),
            "text_mask": Field((caption_length,), "uint8"),
            "label": Field((), "int32"),
        }
        self.keys = tuple(full) if keys is None else tuple(dict.fromkeys((*keys, "label")))
        self.schema = {k: full[k] for k in self.keys}
        self.classes = tuple(f"{b} ball(s)" for b in range(1, c.max_balls + 1))

    def __len__(self):
        return len(self.world)

    def __getitem__(self, index):
        clip = self.world[index]
        out = {"label": np.int32(clip["num_balls"] - 1)}
        for key in self.keys:
            if key == "image":
                out["image"] = clip["video"][0]
            elif key == "audio":  # the slow part: only when asked for
                out["audio"] = audio_mod.waveform_to_logmel(clip["audio"], self.spec)[0]
            elif key == "text":
                out["text"], out["text_mask"] = caption_bytes(clip, self.caption_length)
            elif key not in ("label", "text_mask"):
                out[key] = clip[key]
        return out

    def where(self, index):
        return f"world[seed={self.world.seed}][{index}]"

    def select(self, keys):
        return WorldExamples(self.world, self.spec, keys, self.caption_length)

    def __repr__(self):
        return f"WorldExamples({self.world!r})"


def build(sc, data_cfg, seed: int):
    """The source a ``SourceConfig`` describes, with the sizes of ``data_cfg``."""
    d = data_cfg
    kind = sc.kind
    if kind == "shapes":
        from data_pipelines.shapes import ShapesSource

        return Selected(
            ShapesSource(num_examples=d.num_examples, image_size=d.image_size, seed=seed), ("image",)
        )
    if kind == "world":
        from data_pipelines.world import WorldConfig, WorldSource

        world = WorldConfig(
            image_size=d.image_size, duration=d.clip_seconds, fps=int(d.fps), sample_rate=d.sample_rate
        )
        return WorldExamples(
            WorldSource(d.num_examples, world, seed=seed),
            audio_mod.data_spec(d),
            caption_length=caption_length(d),
        )
    if kind == "image_folder":
        from data_pipelines.image_files import ImageFolderSource

        src = ImageFolderSource(
            sc.path, image_size=d.image_size, channels=sc.channels, resize=sc.resize, convert=sc.convert
        )
    elif kind == "fashion_mnist":
        from data_pipelines.image_files import FashionMnistSource

        kwargs = {"directory": sc.path} if sc.path else {}
        src = FashionMnistSource(split=sc.split, image_size=d.image_size, **kwargs)
    elif kind == "video_files":
        from data_pipelines.video_files import VideoFileSource

        src = VideoFileSource(
            sc.path,
            frames=clip_frames(d),
            fps=d.fps,
            image_size=d.image_size,
            audio=audio_mod.data_spec(d) if sc.with_audio else None,
            clips_per_video=sc.clips_per_video,
            seed=seed,
        )
    elif kind == "audio_files":
        from data_pipelines.audio_files import AudioFileSource

        src = AudioFileSource(sc.path, audio_mod.data_spec(d), crop=sc.crop, seed=seed)
    elif kind == "trajectories":
        from data_pipelines.trajectories import TrajectorySource

        src = TrajectorySource(
            sc.path, window=clip_frames(d), image_size=d.image_size, stride=sc.stride, seed=seed
        )
    elif kind == "latents":
        from data_pipelines.latents import LatentSource

        src = LatentSource(sc.path, seed=seed)
    else:  # config validation names the allowed kinds; this guards direct calls
        raise SourceError(f"source {sc.name!r}: unknown kind {kind!r}")
    text = getattr(sc, "text", "none")
    if text != "none":  # captions or encoder features beside each file
        from data_pipelines.text_sidecars import CAPTION, TextSidecars

        src = TextSidecars(src, text, caption_length(d) if text == CAPTION else d.text_tokens)
    return Selected(src, tuple(k for k in src.schema if k != "label"))


def default_sources(data_cfg) -> tuple:
    """``data.sources``, or the one generated source ``data.source`` names."""
    if data_cfg.sources:
        return data_cfg.sources
    from selfflow.config import SourceConfig

    return (SourceConfig(name=data_cfg.source, kind=data_cfg.source),)


def provides(source, modality: str) -> bool:
    return all(k in source.schema for k in modalities.keys_of(modality))
