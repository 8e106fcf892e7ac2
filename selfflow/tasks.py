"""From a config to what the trainer needs for each layout of a run.

A :class:`Task` knows the modality specs (token geometry), the :class:`~selfflow.layout.Layout`
of every named layout with its batch size and sampling weight, each layout's token positions
(segments placed on the shared (t, h, w) axes) and its Grain pipeline, and turns a raw batch
into a :class:`~selfflow.objective.SegmentBatch` inside the jitted step.

Data: the named sources of ``data.sources`` (or the one ``data.source`` names), built by
:mod:`data_pipelines.sources`, yield the canonical keys of :mod:`data_pipelines.base`; each
modality's spec comes from the shapes its sources yield. A layout mixes every source that yields
all of its modalities (or the sources it names), in proportion to the sources' weights.
A config without ``layouts`` trains the single layout ``[image]`` on ``train.batch_size``.
"""

from __future__ import annotations

import dataclasses
import zlib

import grain
import numpy as np

import modalities
from data_pipelines import loader
from data_pipelines import sources as sources_lib
from modalities import action as action_mod
from modalities.action import ActionSpec
from modalities.image import ImageSpec
from modalities.video import VideoSpec
from selfflow.config import Config, ConfigError, LayoutConfig
from selfflow.layout import GENERATE, Layout, Segment
from selfflow.objective import SegmentBatch

STATS_CLIPS = 256  # world clips used to fit the action normalisation
HELDOUT_SEED_OFFSET = 1_000_003  # held-out examples: the data seed shifted by this


@dataclasses.dataclass(frozen=True)
class LayoutTask:
    layout: Layout
    batch_size: int
    weight: float
    positions: np.ndarray  # (N, 3) float32
    sources: tuple[str, ...] = ()  # the data sources this layout mixes
    keys: tuple[str, ...] = ()  # the example keys it reads


def parse_segment(text: str) -> tuple[str, str]:
    """``"video"`` -> ("video", "generate"); ``"image:condition"`` -> ("image", "condition")."""
    name, _, role = text.partition(":")
    return name, role or GENERATE


class Task:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        d = cfg.data
        self.source_configs = {sc.name: sc for sc in sources_lib.default_sources(d)}
        self.sources = {name: sources_lib.build(sc, d, cfg.seed) for name, sc in self.source_configs.items()}
        layouts = cfg.layouts or (LayoutConfig("image", ("image",), 1.0, cfg.train.batch_size),)
        drawn = [self._layout_sources(lc) for lc in layouts]
        used = {parse_segment(t)[0] for lc in layouts for t in lc.segments}
        self.specs = {m: self._spec(m, [n for lc, names in zip(layouts, drawn) for n in names
                                        if m in {parse_segment(t)[0] for t in lc.segments}])
                      for m in sorted(used)}
        self.layouts = [self._layout_task(lc, names) for lc, names in zip(layouts, drawn)]
        self.names = [lt.layout.name for lt in self.layouts]
        settings = {m.name: m for m in cfg.modalities}
        self.token_dims = {m: self.specs[m].token_dim for m in sorted(used)}
        self.mask_ratios = {m: (settings[m].mask_ratio if m in settings and settings[m].mask_ratio is not None
                                else (cfg.objective.mask_ratio if not cfg.layouts
                                      else modalities.get(m).DEFAULT_MASK_RATIO)) for m in used}
        self.loss_weights = {m: settings[m].loss_weight if m in settings else 1.0 for m in used}

    # ------------------------------------------------------------------ specs

    def _layout_sources(self, lc: LayoutConfig) -> tuple[str, ...]:
        """The sources a layout mixes: those it names, or all, that yield every key it reads."""
        keys = [k for t in lc.segments for k in sources_lib.MODALITY_KEYS[parse_segment(t)[0]]]
        names = tuple(n for n in (lc.sources or self.sources) if all(k in self.sources[n].schema for k in keys))
        if not names:
            listed = ", ".join(f"{n} ({self.source_configs[n].kind}: {', '.join(sorted(s.schema))})"
                               for n, s in self.sources.items() if not lc.sources or n in lc.sources)
            raise ConfigError(f"layouts[{lc.name!r}]: no data source yields all of {keys} "
                              f"(sources: {listed})")
        return names

    def _spec(self, modality: str, names: list[str]):
        """The modality's token geometry, from the shapes its sources yield (which must agree:
        one spec per modality serves every layout of the run)."""
        d, names = self.cfg.data, list(dict.fromkeys(names))
        for key in sources_lib.MODALITY_KEYS[modality]:
            for n in names[1:]:
                first, other = self.sources[names[0]].schema[key].shape, self.sources[n].schema[key].shape
                if first != other:
                    raise ConfigError(f"sources {names[0]!r} and {n!r} yield {key!r} of shapes {first} and "
                                      f"{other}; every source of a modality must agree (data.image_size, "
                                      "clip_seconds, fps and n_mels set the sizes)")
        schema = self.sources[names[0]].schema
        if modality == "image":
            h, w, c = schema["image"].shape
            patch = d.video_patch if self.cfg.layouts else self.cfg.model.resolved("patch_size")
            return ImageSpec(h, w, c, patch)
        if modality == "video":
            t, h, w, c = schema["video"].shape
            return VideoSpec(t, h, w, c, d.video_patch, d.video_tubelet, d.fps)
        if modality == "audio":
            spec = sources_lib.audio_spec(d)
            if schema["audio"].shape != (spec.frames, spec.n_mels):
                spec = dataclasses.replace(spec, frames=schema["audio"].shape[0], n_mels=schema["audio"].shape[1])
            return spec
        (steps, a_dim), p_dim = schema["actions"].shape, schema["proprio"].shape[1]
        samples = [self._action_sample(n) for n in names]
        return ActionSpec(steps=steps, action_dim=a_dim, proprio_dim=p_dim, hz=d.fps).with_stats(
            np.concatenate([a for a, _ in samples]), np.concatenate([p for _, p in samples]))

    def _action_sample(self, name: str):
        source = self.sources[name].select(("actions", "proprio"))
        clips = [source[i] for i in range(min(STATS_CLIPS, len(source)))]
        return np.stack([c["actions"] for c in clips]), np.stack([c["proprio"] for c in clips])

    # ------------------------------------------------------------------ layouts

    def _layout_task(self, lc: LayoutConfig, names: tuple[str, ...]) -> LayoutTask:
        segments, positions, keys = [], [], []
        for text in lc.segments:
            name, role = parse_segment(text)
            spec = self.specs[name]
            segments.append(Segment(name, spec.num_tokens, role))
            positions.append(modalities.get(name).positions(spec))
            keys += sources_lib.MODALITY_KEYS[name]
        return LayoutTask(Layout(lc.name, tuple(segments)), lc.batch_size, lc.weight,
                          np.concatenate(positions).astype(np.float32), names, tuple(keys))

    @property
    def weights(self) -> list[float]:
        return [lt.weight for lt in self.layouts]

    # ------------------------------------------------------------------ data

    def _heldout_source(self, name: str):
        """Examples never trained on: generated sources with another seed, Fashion-MNIST's test
        split; for file folders (no held-out split) the training files themselves."""
        sc = self.source_configs[name]
        if sc.kind in ("shapes", "world"):
            return sources_lib.build(sc, self.cfg.data, self.cfg.seed + HELDOUT_SEED_OFFSET)
        if sc.kind == "fashion_mnist":
            return sources_lib.build(dataclasses.replace(sc, split="test"), self.cfg.data, self.cfg.seed)
        return self.sources[name]

    def dataset(self, index: int, heldout: bool = False, shard: tuple[int, int] | None = None
                ) -> grain.MapDataset:
        """Infinite MapDataset whose element k is this host's k-th batch of layout ``index``:
        the layout's sources mixed by weight, each shuffled with its own seed.

        ``heldout=True`` draws from examples never trained on (see :meth:`_heldout_source`),
        tokenised with the same specs (e.g. the training action statistics).
        """
        lt = self.layouts[index]
        count = (shard or loader.host_shard())[1]
        if lt.batch_size % count:
            raise ConfigError(f"layouts[{lt.layout.name!r}]: batch size {lt.batch_size} is not divisible "
                              f"by the {count} data-loading hosts")
        streams = []
        for name in lt.sources:
            source = (self._heldout_source(name) if heldout else self.sources[name]).select(lt.keys)
            seed = self.cfg.seed if len(self.layouts) == len(lt.sources) == 1 else zlib.crc32(
                f"{self.cfg.seed}/{lt.layout.name}/{name}".encode()) & 0x7FFFFFFF
            streams.append(loader.example_stream(source, seed, on_bad_sample=self.cfg.data.on_bad_sample,
                                                 name=name, shard=shard))
        weights = [self.source_configs[n].weight for n in lt.sources]
        return loader.mixed_batches(streams, weights, lt.batch_size // count)

    # ------------------------------------------------------------------ inside jit

    def segment_batch(self, index: int, raw: dict) -> SegmentBatch:
        lt = self.layouts[index]
        tokens = []
        for seg in lt.layout.segments:
            spec = self.specs[seg.modality]
            if seg.modality == "action":
                tokens.append(action_mod.tokenize(raw["actions"], spec, raw["proprio"]))
            else:
                tokens.append(modalities.get(seg.modality).tokenize(raw[seg.modality], spec))
        return SegmentBatch(tuple(tokens), raw["label"], lt.positions)
