"""From a config to what the trainer needs for each layout of a run.

A :class:`Task` knows the modality specs (token geometry), the :class:`~selfflow.layout.Layout`
of every named layout with its batch size and sampling weight, each layout's token positions
(segments placed on the shared (t, h, w) axes) and its Grain pipeline, and turns a raw batch
into a :class:`~selfflow.objective.SegmentBatch` inside the jitted step.

Every run has layouts (:func:`selfflow.config.resolve` turns a config without them into the one
layout ``image``), and every modality is a plug-in of :mod:`modalities`: the task loops over the
registry, never over modality names.

Data: the named sources of ``data.sources`` (or the one ``data.source`` names), built by
:mod:`data_pipelines.sources`, yield the keys each modality declares (``KEYS``). A modality's spec
comes from the shapes its sources yield (``spec_for``). A layout mixes every source that yields
all of its modalities (or the sources it names), in proportion to the sources' weights.
Sources are built only when needed: a task made with the ``specs`` a run stored (see
:func:`selfflow.run.load_run`) samples, exports and evaluates without the training data on disk.
Building them checks their class counts against ``data.num_classes`` (:func:`check_class_counts`),
so a mismatch stops before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import zlib

import grain
import numpy as np

import modalities
from data_pipelines import loader
from data_pipelines import sources as sources_lib
from data_pipelines.guard import KnownBad
from selfflow.config import Config, ConfigError, LayoutConfig, layout_modalities, parse_segment, resolve
from selfflow.encoders.precomputed import FEATURES_KEY, PRECOMPUTED, check_feature_sources, is_precomputed
from selfflow.layout import GENERATE, Layout, Segment
from selfflow.objective import SegmentBatch

HELDOUT_SEED_OFFSET = 1_000_003  # held-out examples: the data seed shifted by this
CLASS_FOLDER_KINDS = ("image_folder", "video_files", "audio_files")  # class = sub-folder

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LayoutTask:
    layout: Layout
    batch_size: int
    weight: float
    positions: np.ndarray  # (N, 3) float32
    keys: tuple[str, ...] = ()  # the example keys it reads


def _layout_keys(lc: LayoutConfig) -> tuple[str, ...]:
    """The example keys a layout reads: its modalities' ``KEYS``, each once."""
    return tuple(dict.fromkeys(k for m in lc.modalities for k in modalities.keys_of(m)))


class Task:
    def __init__(self, cfg: Config, specs: dict | None = None):
        """``specs`` ({modality: Spec}, e.g. stored with a run) skips building them from the data."""
        self.cfg = cfg = resolve(cfg)
        used = sorted(layout_modalities(cfg.layouts))
        if specs is None:
            specs = {m: self._spec_from_sources(m) for m in used}
        missing = [m for m in used if m not in specs]
        if missing:
            raise ConfigError(f"no stored spec for modalities {missing} (the run has {sorted(specs)})")
        self.specs = {m: specs[m] for m in used}
        self.layouts = [self._layout_task(lc) for lc in cfg.layouts]
        self.names = [lt.layout.name for lt in self.layouts]
        self.token_dims = {m: self.specs[m].token_dim for m in used}
        settings = {m.name: m for m in cfg.modalities}  # resolved: one entry per used modality
        self.mask_ratios = {m: settings[m].mask_ratio for m in used}
        self.loss_weights = {m: settings[m].loss_weight for m in used}

    # ------------------------------------------------------------------ sources (lazy)

    @functools.cached_property
    def source_configs(self) -> dict:
        return {sc.name: sc for sc in sources_lib.default_sources(self.cfg.data)}

    @functools.cached_property
    def sources(self) -> dict:
        built = {
            name: sources_lib.build(sc, self.cfg.data, self.cfg.seed)
            for name, sc in self.source_configs.items()
        }
        check_class_counts(self.cfg.data, self.source_configs, built)
        return built

    @functools.cached_property
    def _known_bad(self) -> dict:
        """{source name: KnownBad} shared by every stream of that training source."""
        return {name: KnownBad() for name in self.source_configs}

    def layout_sources(self, index: int) -> tuple[str, ...]:
        """The sources layout ``index`` mixes: those it names, or all, that yield every key it reads."""
        return self._sources_by_layout[index]

    @functools.cached_property
    def _sources_by_layout(self) -> list[tuple[str, ...]]:
        return [self._find_layout_sources(lc) for lc in self.cfg.layouts]

    def _find_layout_sources(self, lc: LayoutConfig) -> tuple[str, ...]:
        keys = _layout_keys(lc)
        names = tuple(
            n for n in (lc.sources or self.sources) if all(k in self.sources[n].schema for k in keys)
        )
        if not names:
            listed = ", ".join(
                f"{n} ({self.source_configs[n].kind}: {', '.join(sorted(s.schema))})"
                for n, s in self.sources.items()
                if not lc.sources or n in lc.sources
            )
            raise ConfigError(
                f"layouts[{lc.name!r}]: no data source yields all of {list(keys)} (sources: {listed})"
            )
        return names

    # ------------------------------------------------------------------ specs

    def _spec_from_sources(self, modality: str):
        """The modality's spec, from the shapes its sources yield (which must agree: one spec per
        modality serves every layout of the run)."""
        module, keys = modalities.get(modality), modalities.keys_of(modality)
        names = list(
            dict.fromkeys(
                n
                for i, lc in enumerate(self.cfg.layouts)
                if modality in lc.modalities
                for n in self.layout_sources(i)
            )
        )
        for key in keys:
            for n in names[1:]:
                first, other = self.sources[names[0]].schema[key].shape, self.sources[n].schema[key].shape
                if first != other:
                    raise ConfigError(
                        f"sources {names[0]!r} and {n!r} yield {key!r} of shapes {first} and "
                        f"{other}; every source of a modality must agree (data.image_size, "
                        "clip_seconds, fps and n_mels set the sizes)"
                    )
        shapes = {k: tuple(self.sources[names[0]].schema[k].shape) for k in keys}

        def examples(count: int) -> dict:
            """The first ``count`` examples of each source of the modality, stacked per key."""
            rows = []
            for n in names:
                source = self.sources[n].select(keys)
                rows += [source[i] for i in range(min(count, len(source)))]
            return {k: np.stack([r[k] for r in rows]) for k in keys}

        return module.spec_for(shapes, self.cfg, examples)

    # ------------------------------------------------------------------ layouts

    def _layout_task(self, lc: LayoutConfig) -> LayoutTask:
        segments, positions = [], []
        for text in lc.segments:
            name, role = parse_segment(text)
            spec = self.specs[name]
            segments.append(Segment(name, spec.num_tokens, role))
            positions.append(modalities.get(name).positions(spec))
        layout, keys = Layout(lc.name, tuple(segments)), _layout_keys(lc)
        if self.feature_grid(layout) is not None:
            keys += (FEATURES_KEY,)
        return LayoutTask(
            layout, lc.batch_size, lc.weight, np.concatenate(positions).astype(np.float32), keys
        )

    @property
    def reads_features(self) -> bool:
        """Whether batches carry REPA's precomputed encoder features (:mod:`selfflow.encoders.precomputed`)."""
        o = self.cfg.objective
        return o.kind == "repa" and is_precomputed(o.encoder)

    def feature_grid(self, layout: Layout) -> tuple[int, int] | None:
        """The (gh, gw) token grid of ``layout``'s generated image segment when the run reads
        precomputed features (one such segment per layout), else None."""
        images = [s for s in layout.segments if s.modality == "image" and s.role == GENERATE]
        if not self.reads_features or not images:
            return None
        if len(images) > 1:
            raise ConfigError(
                f"layouts[{layout.name!r}]: objective.encoder={PRECOMPUTED!r} stores one feature map per "
                f"example, but the layout generates {len(images)} image segments"
            )
        return self.specs["image"].grid

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

    def dataset(
        self, index: int, heldout: bool = False, shard: tuple[int, int] | None = None
    ) -> grain.MapDataset:
        """Infinite MapDataset whose element k is this host's k-th batch of layout ``index``:
        the layout's sources mixed by weight, each shuffled with its own seed.

        ``heldout=True`` draws from examples never trained on (see :meth:`_heldout_source`),
        tokenised with the same specs (e.g. the training action statistics).
        """
        lt, names = self.layouts[index], self.layout_sources(index)
        count = (shard or loader.host_shard())[1]
        if lt.batch_size % count:
            raise ConfigError(
                f"layouts[{lt.layout.name!r}]: batch size {lt.batch_size} is not divisible "
                f"by the {count} data-loading hosts"
            )
        grid = self.feature_grid(lt.layout)
        if grid is not None:
            dim = self.cfg.objective.encoder_dim
            check_feature_sources({n: self.sources[n].schema for n in names}, grid, dim)
        streams = []
        for name in names:
            base = self._heldout_source(name) if heldout else self.sources[name]
            # one memory of bad files per training source: a file is logged once per process,
            # whichever layout or validation meets it first
            known_bad = self._known_bad[name] if base is self.sources[name] else None
            source = base.select(lt.keys)
            seed = (
                self.cfg.seed
                if len(self.layouts) == len(names) == 1
                else zlib.crc32(f"{self.cfg.seed}/{lt.layout.name}/{name}".encode()) & 0x7FFFFFFF
            )
            streams.append(
                loader.example_stream(
                    source,
                    seed,
                    on_bad_sample=self.cfg.data.on_bad_sample,
                    name=name,
                    shard=shard,
                    known_bad=known_bad,
                )
            )
        weights = [self.source_configs[n].weight for n in names]
        return loader.mixed_batches(streams, weights, lt.batch_size // count)

    # ------------------------------------------------------------------ inside jit

    def segment_batch(self, index: int, raw: dict) -> SegmentBatch:
        lt = self.layouts[index]
        tokens = tuple(
            modalities.get(seg.modality).tokenize_batch(raw, self.specs[seg.modality])
            for seg in lt.layout.segments
        )
        return SegmentBatch(tokens, raw["label"], lt.positions, raw.get(FEATURES_KEY))

    # ------------------------------------------------------------------ stored specs

    def specs_dict(self) -> dict:
        """{modality: spec fields} as JSON-able values (what a checkpoint stores)."""
        return {m: dataclasses.asdict(spec) for m, spec in self.specs.items()}


def check_class_counts(data_cfg, configs: dict, built: dict) -> None:
    """Labels must be < ``data.num_classes``: the id ``num_classes`` is the null class of guidance
    (silently unconditional) and a larger one indexes past the label table (NaN loss at step 1).
    A source with more classes is a ConfigError naming it; when every source's count is known and
    the largest is below ``num_classes``, the unused ids (never trained, yet drawn by the sample
    grids and FID) are a warning. ``configs``/``built``: {name: SourceConfig / source}, in
    ``data.sources`` order; a source's ``classes`` is None where the count is not known."""
    given, found = data_cfg.num_classes, []  # found: (count, "where: count class folders")
    for i, (name, sc) in enumerate(configs.items()):
        classes = getattr(built[name], "classes", None)
        if classes is None:
            continue
        path = f" {sc.path}" if sc.path else ""
        where = f"data.sources[{i}] ({name!r}, {sc.kind}{path})" if data_cfg.sources else "data.source"
        noun = "class folders" if sc.kind in CLASS_FOLDER_KINDS else "classes"
        found.append((len(classes), f"{where}: {len(classes)} {noun}"))
        if len(classes) > given:
            raise ConfigError(
                f"{found[-1][1]} but data.num_classes={given}; set data.num_classes={len(classes)} (or more)"
            )
    most = max((n for n, _ in found), default=0)
    if found and len(found) == len(configs) and most < given:
        log.warning(
            "data.num_classes=%d but the sources have at most %d classes (%s): class ids %d..%d "
            "have no examples and are never trained; set data.num_classes=%d unless that is meant",
            given,
            most,
            "; ".join(text for _, text in found),
            most,
            given - 1,
            most,
        )


def specs_from_dict(data: dict) -> dict:
    """Inverse of :meth:`Task.specs_dict` (lists back to tuples, each through its modality's Spec)."""
    return {
        m: modalities.get(m).Spec(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        for m, fields in data.items()
    }
