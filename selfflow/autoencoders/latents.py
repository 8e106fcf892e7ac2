"""Autoencoders in the latent data pipeline: encode a source once, record which autoencoder did it,
and decode only with that one.

* :class:`EncodedSource` wraps a source so ``image`` becomes model latents ``(h, w, C)`` (what
  ``selfflow prepare SOURCE --encode NAME --weights FILE`` writes), encoding ``batch_size``
  examples per call of one jitted function (``data_pipelines.latents.prepare`` reads in index
  order, so each batch is encoded once). With a WAN autoencoder (``--encode wan2.1|wan2.2``) it
  is ``video`` ``(T, H, W, 3)`` that becomes ``(1 + (T - 1) / 4, H / s, W / s, z_dim)``
  normalised latents (``s`` = 8, WAN 2.2: 16). ``flip_copy=True`` (``--flip-copy``) also stores
  ``image_flipped``, the latents of the horizontally flipped image (and the flipped image's
  features under ``encoder_features_flipped`` when ``pre`` adds them): REPA's flip augmentation
  for data that exists only as latents. Image autoencoders only (see :class:`EncodedSource`).
* :func:`manifest_entry` is the manifest's ``"autoencoder"`` record: the name, the latent
  convention (scaling/shift factors, patching, channels; WAN: ``family`` ``"wan"``,
  ``frames_per_latent`` and the ``latents_mean``/``latents_std`` its latents were normalised
  with), the architecture and the weights file.
* :func:`autoencoder_for_manifest` loads the autoencoder a manifest names and refuses another
  (a one-line :class:`~selfflow.errors.ConfigError`); :func:`latent_decoder` turns it into the
  ``decode(latents) -> pixels`` of ``selfflow sample`` (``decode.modality`` says which segments it
  decodes: ``"image"``, or ``"video"`` for WAN) and :func:`image_decoder` into the
  ``decode(tokens) -> uint8 images`` that ``fid-samples`` takes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from selfflow.autoencoders.config import PRESETS, AutoencoderConfig
from selfflow.autoencoders.model import Autoencoder
from selfflow.autoencoders.wan import WAN_PRESETS, WanAutoencoder, WanConfig
from selfflow.errors import ConfigError

__all__ = [
    "MANIFEST_KEY",
    "EncodedSource",
    "autoencoder_for_manifest",
    "check_same_autoencoder",
    "image_decoder",
    "latent_decoder",
    "load_named",
    "manifest_entry",
    "run_autoencoder",
]

MANIFEST_KEY = "autoencoder"
#: The entries that must agree for latents to decode correctly (the weights file may differ:
#: sd-vae-ft-ema and -mse share the encoder and the latent space).
_CONVENTION = (
    "name",
    "latent_channels",
    "model_channels",
    "pixels_per_latent",
    "scaling_factor",
    "shift_factor",
    "frames_per_latent",  # the WAN entries (absent, i.e. None, for the image autoencoders)
    "latents_mean",
    "latents_std",
)
_WAN_TUPLES = ("dim_mult", "temporal_downsample", "latents_mean", "latents_std")


def _preset(name: str) -> AutoencoderConfig | WanConfig | None:
    """The image or WAN preset ``name`` (looked up at call time: tests replace presets)."""
    return PRESETS.get(name) or WAN_PRESETS.get(name)


def _unknown(name) -> ConfigError:
    names = sorted({*PRESETS, *WAN_PRESETS})
    return ConfigError(f"unknown autoencoder {name!r}: expected one of {', '.join(names)}")


def load_named(weights: str | Path, config: str | AutoencoderConfig | WanConfig):
    """The autoencoder ``config`` (a preset name of either family, or a config) with the weights of
    ``weights``: an :class:`Autoencoder`, or a :class:`WanAutoencoder` for a WAN config."""
    from selfflow.autoencoders.wan import load_wan
    from selfflow.autoencoders.weights import load_autoencoder

    if isinstance(config, str):
        name, config = config, _preset(config)
        if config is None:
            raise _unknown(name)
    return load_wan(weights, config) if isinstance(config, WanConfig) else load_autoencoder(weights, config)


def manifest_entry(ae: Autoencoder, weights: str | Path) -> dict:
    """The manifest's ``"autoencoder"`` record for latents made by ``ae`` from ``weights``."""
    path = Path(weights).absolute()
    return {
        **ae.config.latent_convention(),
        "config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(ae.config).items()
        },
        "weights": str(path),
        "weights_bytes": path.stat().st_size if path.is_file() else None,
    }


def _config_of(entry: dict, where: str) -> AutoencoderConfig | WanConfig:
    name = entry.get("name")
    if _preset(name) is not None:
        return _preset(name)
    wan = entry.get("family") == "wan"
    try:
        fields = dict(entry["config"])
        tuples = _WAN_TUPLES if wan else ("block_out_channels", "decoder_block_out_channels")
        for key in tuples:
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        return WanConfig(**fields) if wan else AutoencoderConfig(**fields)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: unusable autoencoder record ({' '.join(str(e).split())})") from None


def _short(value) -> str:
    return f"[{len(value)} values]" if isinstance(value, list) and len(value) > 4 else repr(value)


def check_same_autoencoder(entry: dict, config: AutoencoderConfig | WanConfig, where: str) -> None:
    """ConfigError (one line, naming ``where``) unless ``config`` is the autoencoder of ``entry``."""
    ours = config.latent_convention()
    diff = [
        f"{k} {_short(entry.get(k))} vs {_short(ours.get(k))}"
        for k in _CONVENTION
        if entry.get(k) != ours.get(k)
    ]
    if diff:
        raise ConfigError(
            f"{where}: its latents were written by autoencoder {entry.get('name')!r}, refusing to decode "
            f"them with {config.name!r} ({'; '.join(diff)})"
        )


def _read_manifest(path: str | Path) -> tuple[dict, str]:
    path = Path(path)
    if path.is_dir() and not (path / "manifest.json").is_file():  # prepared in parts?
        from data_pipelines.base import SourceError
        from data_pipelines.latents import read_manifest

        try:
            return read_manifest(path), str(path)
        except SourceError as e:
            raise ConfigError(str(e)) from None
    if path.is_dir():
        path = path / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable latent manifest ({' '.join(str(e).split())})") from None
    if not isinstance(manifest, dict):
        raise ConfigError(f"{path}: not a latent manifest (a {type(manifest).__name__})")
    return manifest, str(path)


def autoencoder_for_manifest(
    manifest: str | Path | dict,
    *,
    weights: str | Path | None = None,
    expect: str | AutoencoderConfig | WanConfig | None = None,
) -> Autoencoder | WanAutoencoder:
    """The autoencoder that wrote a latent manifest (a ``manifest.json``, its directory, or the
    parsed dict), loaded from ``weights`` or else the file the manifest records.

    ``expect`` (a preset name or config, e.g. what the user asked to decode with) must be that
    autoencoder; a mismatch, a manifest without an ``"autoencoder"`` record, or weights of another
    architecture are one-line errors (:class:`ConfigError` / :class:`ParamsError`)."""
    manifest, where = (
        (manifest, "latent manifest") if isinstance(manifest, dict) else _read_manifest(manifest)
    )
    entry = manifest.get(MANIFEST_KEY)
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where}: written without an autoencoder (no {MANIFEST_KEY!r} record); its examples are not "
            f"latents to decode (re-run selfflow prepare with --encode NAME --weights FILE)"
        )
    config = _config_of(entry, where)
    if expect is not None:
        wanted = _preset(expect) if isinstance(expect, str) else expect
        if wanted is None:
            raise _unknown(expect)
        check_same_autoencoder(entry, wanted, where)
    check_same_autoencoder(entry, config, where)
    file = weights if weights is not None else entry.get("weights")
    if not file:
        raise ConfigError(
            f"{where}: no weights file recorded for autoencoder {entry.get('name')!r}; pass one"
        )
    if weights is None and not Path(file).exists():
        raise ConfigError(
            f"{where}: autoencoder weights {file} (recorded when the latents were written) are gone; "
            f"pass the {entry.get('name')} .safetensors explicitly"
        )
    return load_named(file, config)


def _latent_shape(where: str, config: AutoencoderConfig | WanConfig, shape: tuple) -> tuple:
    """The latent shape of one ``(H, W, C)`` image (WAN: ``(T, H, W, C)`` clip) of ``shape``, or a
    one-line ConfigError naming ``where``, the shape and what ``config`` needs."""
    p, rgb = config.pixels_per_latent, getattr(config, "in_channels", 3)
    if isinstance(config, WanConfig):
        f = config.frames_per_latent
        if (
            len(shape) != 4
            or shape[0] < 1
            or (shape[0] - 1) % f
            or shape[1] % p
            or shape[2] % p
            or shape[3] not in (1, 3)
        ):
            raise ConfigError(
                f"{where}: videos {tuple(shape)} cannot be encoded by {config.name!r}: need (T, H, W, 3 or 1) with "
                f"T = 1 + {f}k frames ({', '.join(str(1 + f * k) for k in range(1, 4))}, ...; data.clip_seconds x "
                f"data.fps sets T) and H, W multiples of {p}"
            )
        return (1 + (shape[0] - 1) // f, shape[1] // p, shape[2] // p, config.model_channels)
    if len(shape) != 3 or shape[0] % p or shape[1] % p or shape[2] not in (1, rgb):
        raise ConfigError(
            f"{where}: images {tuple(shape)} cannot be encoded by {config.name!r}: need H and W multiples "
            f"of {p} and {rgb} (or 1) channels"
        )
    return (shape[0] // p, shape[1] // p, config.model_channels)


class EncodedSource:
    """``source`` with its ``key`` images ``(H, W, C)`` in [-1, 1] replaced by the latents of ``ae``
    ``(H/p, W/p, model_channels)`` float32 (``p = ae.config.pixels_per_latent``); other keys pass
    through. Grayscale images (C = 1) are repeated to RGB. With a :class:`WanAutoencoder` the key
    is ``video`` by default: clips ``(T, H, W, C)``, ``T = 1 + 4k``, become normalised latents
    ``(1 + k, H/p, W/p, z_dim)`` (the source's ``image``, e.g. the world's first frame, stays
    pixels). Examples are encoded ``batch_size`` at a time (the batch containing the requested
    index); a bad example of the source raises its error for its own index only.
    ``pre(example) -> example``, if set, runs on each example while its image is still pixels
    (e.g. prepare's ``--features`` writer).

    ``flip_copy=True``: each example also gets ``key + "_flipped"``, the latents of the image
    mirrored left-right (``image[:, ::-1]``, encoded in batches like the originals, so the same
    shape and dtype), and for each key that ``pre`` adds, ``that key + "_flipped"`` computed by
    ``pre`` from the mirrored image (REPA features then describe the image they go with). A WAN
    autoencoder with ``flip_copy`` is a ConfigError: a mirrored clip would no longer agree with
    what else the example holds about it (actions, the pixel first frame ``image``), and WAN video
    runs have no flip augmentation to reproduce."""

    def __init__(
        self,
        source,
        ae: Autoencoder | WanAutoencoder,
        *,
        batch_size: int = 32,
        key: str | None = None,
        pre=None,
        flip_copy: bool = False,
    ):
        from flax import nnx

        from data_pipelines.latents import FLIPPED_SUFFIX

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if flip_copy and isinstance(ae.config, WanConfig):
            raise ConfigError(
                f"--flip-copy stores flipped copies of images; {ae.config.name!r} encodes videos, whose "
                "mirror would disagree with their actions and first frame (leave --flip-copy out)"
            )
        key = key or ("video" if isinstance(ae.config, WanConfig) else "image")
        field = source.schema.get(key)
        if field is None:
            raise ConfigError(f"{source!r} yields no {key!r} to encode (it has {sorted(source.schema)})")
        shape = _latent_shape(repr(source), ae.config, tuple(field.shape))
        self.source, self.ae, self.key, self.batch_size = source, ae, key, int(batch_size)
        self.pre, self.flip_copy, self._suffix = pre, bool(flip_copy), FLIPPED_SUFFIX
        self.schema = {**source.schema}
        self.schema[key] = dataclasses.replace(field, shape=shape, dtype="float32")
        if self.flip_copy:
            self.schema[key + FLIPPED_SUFFIX] = self.schema[key]
        self.classes = getattr(source, "classes", None)
        self._encode = nnx.jit(lambda m, x: m.encode(x))
        self._block, self._cache = None, {}

    def __len__(self) -> int:
        return len(self.source)

    def where(self, index: int) -> str:
        where = getattr(self.source, "where", None)
        return str(where(index)) if where else f"{self.source!r}[{index}]"

    def _fill(self, block: int) -> None:
        start = block * self.batch_size
        stop = min(start + self.batch_size, len(self.source))
        examples, mirrored, good = {}, {}, []
        for i in range(start, stop):
            try:
                example = dict(self.source[i])
                out = dict(self.pre(example)) if self.pre is not None else example
                if self.flip_copy:  # (H, W, C): W is axis 1
                    mirror = {**example, self.key: np.asarray(example[self.key])[:, ::-1]}
                    mirrored[i] = mirror[self.key]
                    if self.pre is not None:
                        added = dict(self.pre(mirror))
                        out.update({k + self._suffix: v for k, v in added.items() if k not in example})
                examples[i] = out
                good.append(i)
            except Exception as e:  # noqa: BLE001 - re-raised for its own index in __getitem__
                examples[i] = e
        if good:
            latents = self._latents([examples[i][self.key] for i in good])
            flipped = self._latents([mirrored[i] for i in good]) if self.flip_copy else None
            for j, i in enumerate(good):
                examples[i][self.key] = latents[j]
                if flipped is not None:
                    examples[i][self.key + self._suffix] = flipped[j]
        self._block, self._cache = block, examples

    def _latents(self, pixels: list) -> np.ndarray:
        """Latents of ``pixels`` (a list of images or clips) in one call on a batch padded to
        ``batch_size`` (one compiled shape for every batch)."""
        images = np.stack([np.asarray(x, np.float32) for x in pixels])
        if images.shape[-1] == 1:
            images = np.repeat(images, getattr(self.ae.config, "in_channels", 3), axis=-1)
        pad = self.batch_size - len(pixels)
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        return np.asarray(self._encode(self.ae, images))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        block = index // self.batch_size
        if block != self._block:
            self._fill(block)
        out = self._cache[index]
        if isinstance(out, Exception):
            raise out
        return out

    def __repr__(self) -> str:
        pre = "" if self.pre is None else f", pre={self.pre!r}"
        flip = ", flip_copy" if self.flip_copy else ""
        return f"EncodedSource({self.source!r}, {self.ae.config.name}{pre}{flip})"


def latent_decoder(ae: Autoencoder | WanAutoencoder, batch: int | None = None) -> Callable:
    """``decode(latents (B, h, w, C)) -> float32 pixels (B, H, W, 3)`` clipped to [-1, 1]: the
    autoencoder, jitted, ``batch`` latents per call (default 32; ``selfflow sample`` of a latent
    run). A WAN autoencoder decodes video latents ``(B, t, h, w, C)`` to ``(B, 1 + 4(t - 1), H, W,
    3)``, 2 clips per call by default. ``decode.modality`` (``"image"`` / ``"video"``) names the
    segments it decodes."""
    from flax import nnx

    video = isinstance(ae, WanAutoencoder)
    batch = batch or (2 if video else 32)
    run = nnx.jit(lambda m, z: m.decode(z))

    def decode(latents):
        latents = np.asarray(latents, np.float32)
        out = [np.asarray(run(ae, latents[i : i + batch])) for i in range(0, latents.shape[0], batch)]
        return np.clip(np.concatenate(out), -1.0, 1.0)

    decode.modality = "video" if video else "image"
    return decode


def image_decoder(ae: Autoencoder, detokenize_fn: Callable, *, latent_shape, batch: int = 32) -> Callable:
    """``decode(tokens) -> uint8 (B, H, W, 3)`` for ``fid_samples.generate_npz``, as its
    ``sd_vae_decoder`` but in JAX: latents ``detokenize_fn(tokens)`` (checked against
    ``latent_shape`` (h, w, C)), ``ae.decode`` ``batch`` at a time, then
    ``clip((x + 1) / 2, 0, 1) * 255`` truncated to uint8."""
    latent_shape = tuple(latent_shape)
    if isinstance(ae, WanAutoencoder):
        raise ConfigError(
            f"autoencoder {ae.config.name!r} decodes video latents; fid-samples scores images (of an "
            "image autoencoder's latents)"
        )
    if latent_shape[-1] != ae.config.model_channels:
        raise ConfigError(
            f"the model makes {latent_shape[-1]}-channel latents; autoencoder {ae.config.name!r} decodes "
            f"{ae.config.model_channels}-channel ones"
        )
    pixels = latent_decoder(ae, batch)

    def decode(tokens):
        latents = np.asarray(detokenize_fn(tokens), np.float32)
        if latents.shape[1:] != latent_shape:
            raise ValueError(f"latents {latents.shape[1:]} != latent_shape {latent_shape} (h, w, C)")
        return ((pixels(latents) + 1) / 2 * 255).astype(np.uint8)

    return decode


def run_autoencoder(
    latent_dirs, *, name: str | None = None, weights: str | Path | None = None
) -> Autoencoder | WanAutoencoder | None:
    """The autoencoder of a run's latent data: ``latent_dirs`` are its ``kind="latents"`` source
    directories. ``None`` when none of them was written by an autoencoder and ``name`` is not given
    (pixel data); an error when they name different autoencoders, when ``name`` differs from theirs
    (a manifest refuses another autoencoder), or when ``name`` is given without ``weights`` and no
    manifest records one."""
    found = {}
    for directory in latent_dirs:
        manifest, where = _read_manifest(directory)
        if isinstance(manifest.get(MANIFEST_KEY), dict):
            found[where] = manifest
    names = {m[MANIFEST_KEY].get("name") for m in found.values()}
    if len(names) > 1:
        raise ConfigError(
            f"the run's latents come from different autoencoders ({', '.join(sorted(map(str, names)))}): "
            f"{', '.join(found)}"
        )
    if found:
        where, manifest = next(iter(found.items()))
        return autoencoder_for_manifest(Path(where), weights=weights, expect=name)
    if name is None:
        return None
    if weights is None:
        raise ConfigError(
            f"--autoencoder {name} needs --autoencoder-weights FILE (no latent manifest records one)"
        )
    return load_named(weights, name)
