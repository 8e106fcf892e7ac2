"""From a config to what the trainer needs for each layout of a run.

A :class:`Task` knows the modality specs (token geometry), the :class:`~selfflow.layout.Layout`
of every named layout with its batch size and sampling weight, each layout's token positions
(segments placed on the shared (t, h, w) axes) and its Grain pipeline, and turns a raw batch
into a :class:`~selfflow.objective.SegmentBatch` inside the jitted step.

Data sources and the raw keys they yield (one dict per example):
- ``shapes``: ``image`` (H, W, 3), ``label``;
- ``world``: ``video`` (T, H, W, 3), ``first_frame`` (H, W, 3), ``audio`` log-mel
  (frames, n_mels), ``actions`` (T, 2), ``proprio`` (T, 4), ``label`` = number of balls − 1.
A config without ``layouts`` trains the single layout ``[image]`` on ``train.batch_size``.
"""

from __future__ import annotations

import dataclasses
import zlib

import grain
import numpy as np

import modalities
from data_pipelines import loader
from modalities import action as action_mod
from modalities import audio as audio_mod
from modalities.action import ActionSpec
from modalities.audio import AudioSpec
from modalities.image import ImageSpec
from modalities.video import VideoSpec
from selfflow.config import Config, ConfigError, LayoutConfig
from selfflow.layout import CONDITION, GENERATE, Layout, Segment
from selfflow.objective import SegmentBatch

STATS_CLIPS = 256  # world clips used to fit the action normalisation
HELDOUT_SEED_OFFSET = 1_000_003  # held-out examples: the data seed shifted by this


@dataclasses.dataclass(frozen=True)
class LayoutTask:
    layout: Layout
    batch_size: int
    weight: float
    positions: np.ndarray  # (N, 3) float32


def parse_segment(text: str) -> tuple[str, str]:
    """``"video"`` -> ("video", "generate"); ``"image:condition"`` -> ("image", "condition")."""
    name, _, role = text.partition(":")
    return name, role or GENERATE


class Task:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        d = cfg.data
        if d.source == "shapes":
            self.specs = {"image": ImageSpec(d.image_size, d.image_size, 3, cfg.model.resolved("patch_size"))}
        else:
            from data_pipelines.world import WorldConfig, WorldSource
            self.world = WorldConfig(image_size=d.image_size, duration=d.clip_seconds, fps=int(d.fps))
            self.source = WorldSource(d.num_examples, self.world, seed=cfg.seed)
            frames = self.world.num_frames
            audio = AudioSpec(frames=int(round(d.clip_seconds * 100)), n_mels=d.n_mels,
                              patch_frames=d.audio_patch_frames, sample_rate=self.world.sample_rate,
                              hop_length=self.world.sample_rate // 100, n_fft=4 * (self.world.sample_rate // 100),
                              fmax=self.world.sample_rate / 2)
            actions = ActionSpec(steps=self.world.num_actions, action_dim=2, proprio_dim=4, hz=d.fps)
            self.specs = {
                "image": ImageSpec(d.image_size, d.image_size, 3, d.video_patch),
                "video": VideoSpec(frames, d.image_size, d.image_size, 3, d.video_patch,
                                   d.video_tubelet, d.fps),
                "audio": audio,
                "action": actions.with_stats(*self._action_sample()),
            }
        layouts = cfg.layouts or (LayoutConfig("image", ("image",), 1.0, cfg.train.batch_size),)
        self.layouts = [self._layout_task(lc) for lc in layouts]
        self.names = [lt.layout.name for lt in self.layouts]
        used = {s.modality for lt in self.layouts for s in lt.layout.segments}
        settings = {m.name: m for m in cfg.modalities}
        self.token_dims = {m: self.specs[m].token_dim for m in sorted(used)}
        self.mask_ratios = {m: (settings[m].mask_ratio if m in settings and settings[m].mask_ratio is not None
                                else (cfg.objective.mask_ratio if not cfg.layouts
                                      else modalities.get(m).DEFAULT_MASK_RATIO)) for m in used}
        self.loss_weights = {m: settings[m].loss_weight if m in settings else 1.0 for m in used}

    # ------------------------------------------------------------------ layouts

    def _layout_task(self, lc: LayoutConfig) -> LayoutTask:
        segments, positions = [], []
        for text in lc.segments:
            name, role = parse_segment(text)
            if name not in self.specs:
                raise ConfigError(f"layouts[{lc.name!r}]: segment {text!r} needs modality {name!r}, "
                                  f"which data.source={self.cfg.data.source!r} does not provide "
                                  f"(it has {', '.join(self.specs)})")
            spec = self.specs[name]
            segments.append(Segment(name, spec.num_tokens, role))
            positions.append(modalities.get(name).positions(spec))
        return LayoutTask(Layout(lc.name, tuple(segments)), lc.batch_size, lc.weight,
                          np.concatenate(positions).astype(np.float32))

    @property
    def weights(self) -> list[float]:
        return [lt.weight for lt in self.layouts]

    # ------------------------------------------------------------------ data

    def _action_sample(self):
        clips = [self.source[i] for i in range(min(STATS_CLIPS, len(self.source)))]
        return np.stack([c["actions"] for c in clips]), np.stack([c["proprio"] for c in clips])

    def _world_features(self, clip: dict, used: frozenset) -> dict:
        """The raw keys a layout reads (the log-mel only where audio is used: it is the slow part)."""
        out = {"label": np.int32(clip["num_balls"] - 1)}
        if "video" in used:
            out["video"] = clip["video"]
        if "image" in used:
            out["first_frame"] = clip["video"][0]
        if "audio" in used:
            out["audio"] = audio_mod.waveform_to_logmel(clip["audio"], self.specs["audio"])[0]
        if "action" in used:
            out["actions"], out["proprio"] = clip["actions"], clip["proprio"]
        return out

    def dataset(self, index: int, heldout: bool = False) -> grain.MapDataset:
        """Infinite MapDataset whose element k is the k-th batch of layout ``index``.

        ``heldout=True`` draws from examples generated with another seed (never trained on),
        tokenised with the same specs (e.g. the training action statistics).
        """
        lt = self.layouts[index]
        seed = self.cfg.seed if len(self.layouts) == 1 else zlib.crc32(
            f"{self.cfg.seed}/{lt.layout.name}".encode()) & 0x7FFFFFFF
        data_seed = self.cfg.seed + (HELDOUT_SEED_OFFSET if heldout else 0)
        if self.cfg.data.source == "shapes":
            source, transform = loader.build_source(self.cfg.data, data_seed), None
        else:
            from data_pipelines.world import WorldSource
            source = WorldSource(len(self.source), self.world, seed=data_seed) if heldout else self.source
            used = frozenset(lt.layout.modalities)
            transform = lambda clip: self._world_features(clip, used)  # noqa: E731
        return loader.batched_dataset(source, lt.batch_size, seed, transform)

    # ------------------------------------------------------------------ inside jit

    def segment_batch(self, index: int, raw: dict) -> SegmentBatch:
        lt = self.layouts[index]
        tokens = []
        for seg in lt.layout.segments:
            spec = self.specs[seg.modality]
            if seg.modality == "image":
                x = raw["image"] if self.cfg.data.source == "shapes" else raw["first_frame"]
                tokens.append(modalities.get("image").tokenize(x, spec))
            elif seg.modality == "action":
                tokens.append(action_mod.tokenize(raw["actions"], spec, raw["proprio"]))
            else:
                tokens.append(modalities.get(seg.modality).tokenize(raw[seg.modality], spec))
        return SegmentBatch(tuple(tokens), raw["label"], lt.positions)
