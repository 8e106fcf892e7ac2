"""Autoencoders in the latent data pipeline: encode a source once, record which autoencoder did it,
and decode only with that one.

* :class:`EncodedSource` wraps a source so ``image`` becomes model latents ``(h, w, C)`` (what
  ``selfflow prepare SOURCE --encode NAME --weights FILE`` writes), encoding ``batch_size``
  examples per call of one jitted function (``data_pipelines.latents.prepare`` reads in index
  order, so each batch is encoded once).
* :func:`manifest_entry` is the manifest's ``"autoencoder"`` record: the name, the latent
  convention (scaling/shift factors, patching, channels), the architecture and the weights file.
* :func:`autoencoder_for_manifest` loads the autoencoder a manifest names and refuses another
  (a one-line :class:`~selfflow.errors.ConfigError`); :func:`image_decoder` turns it into the
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
from selfflow.errors import ConfigError

__all__ = [
    "MANIFEST_KEY",
    "EncodedSource",
    "autoencoder_for_manifest",
    "check_same_autoencoder",
    "image_decoder",
    "latent_decoder",
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
)


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


def _config_of(entry: dict, where: str) -> AutoencoderConfig:
    name = entry.get("name")
    if name in PRESETS:
        return PRESETS[name]
    try:
        fields = dict(entry["config"])
        for key in ("block_out_channels", "decoder_block_out_channels"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        return AutoencoderConfig(**fields)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: unusable autoencoder record ({' '.join(str(e).split())})") from None


def check_same_autoencoder(entry: dict, config: AutoencoderConfig, where: str) -> None:
    """ConfigError (one line, naming ``where``) unless ``config`` is the autoencoder of ``entry``."""
    ours = config.latent_convention()
    diff = [f"{k} {entry.get(k)!r} vs {ours[k]!r}" for k in _CONVENTION if entry.get(k) != ours[k]]
    if diff:
        raise ConfigError(
            f"{where}: its latents were written by autoencoder {entry.get('name')!r}, refusing to decode "
            f"them with {config.name!r} ({'; '.join(diff)})"
        )


def _read_manifest(path: str | Path) -> tuple[dict, str]:
    path = Path(path)
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
    expect: str | AutoencoderConfig | None = None,
) -> Autoencoder:
    """The autoencoder that wrote a latent manifest (a ``manifest.json``, its directory, or the
    parsed dict), loaded from ``weights`` or else the file the manifest records.

    ``expect`` (a preset name or config, e.g. what the user asked to decode with) must be that
    autoencoder; a mismatch, a manifest without an ``"autoencoder"`` record, or weights of another
    architecture are one-line errors (:class:`ConfigError` / :class:`ParamsError`)."""
    from selfflow.autoencoders.weights import load_autoencoder

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
        wanted = PRESETS.get(expect, None) if isinstance(expect, str) else expect
        if wanted is None:
            raise ConfigError(f"unknown autoencoder {expect!r}: expected one of {', '.join(sorted(PRESETS))}")
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
    return load_autoencoder(file, config)


class EncodedSource:
    """``source`` with its ``key`` images ``(H, W, C)`` in [-1, 1] replaced by the latents of ``ae``
    ``(H/p, W/p, model_channels)`` float32 (``p = ae.config.pixels_per_latent``); other keys pass
    through. Grayscale images (C = 1) are repeated to RGB. Examples are encoded ``batch_size`` at
    a time (the batch containing the requested index); a bad example of the source raises its
    error for its own index only. ``pre(example) -> example``, if set, runs on each example while
    its image is still pixels (e.g. prepare's ``--features`` writer)."""

    def __init__(self, source, ae: Autoencoder, *, batch_size: int = 32, key: str = "image", pre=None):
        from flax import nnx

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        field = source.schema.get(key)
        if field is None:
            raise ConfigError(f"{source!r} yields no {key!r} to encode (it has {sorted(source.schema)})")
        h, w, c = field.shape
        p, cfg = ae.config.pixels_per_latent, ae.config
        if h % p or w % p or c not in (1, cfg.in_channels):
            raise ConfigError(
                f"{source!r}: images {field.shape} cannot be encoded by {cfg.name!r}: need H and W multiples "
                f"of {p} and {cfg.in_channels} (or 1) channels"
            )
        self.source, self.ae, self.key, self.batch_size = source, ae, key, int(batch_size)
        self.pre = pre
        self.schema = {**source.schema}
        self.schema[key] = dataclasses.replace(
            field, shape=(h // p, w // p, cfg.model_channels), dtype="float32"
        )
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
        examples, good = {}, []
        for i in range(start, stop):
            try:
                example = dict(self.source[i])
                examples[i] = dict(self.pre(example)) if self.pre is not None else example
                good.append(i)
            except Exception as e:  # noqa: BLE001 - re-raised for its own index in __getitem__
                examples[i] = e
        if good:
            images = np.stack([np.asarray(examples[i][self.key], np.float32) for i in good])
            if images.shape[-1] == 1:
                images = np.repeat(images, self.ae.config.in_channels, axis=-1)
            pad = self.batch_size - len(good)  # one compiled shape for every batch
            if pad:
                images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            latents = np.asarray(self._encode(self.ae, images))
            for j, i in enumerate(good):
                examples[i][self.key] = latents[j]
        self._block, self._cache = block, examples

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
        return f"EncodedSource({self.source!r}, {self.ae.config.name}{pre})"


def latent_decoder(ae: Autoencoder, batch: int = 32) -> Callable:
    """``decode(latents (B, h, w, C)) -> float32 pixels (B, H, W, 3)`` clipped to [-1, 1]: the
    autoencoder, jitted, ``batch`` latents per call (``selfflow sample`` of a latent run)."""
    from flax import nnx

    run = nnx.jit(lambda m, z: m.decode(z))

    def decode(latents):
        latents = np.asarray(latents, np.float32)
        out = [np.asarray(run(ae, latents[i : i + batch])) for i in range(0, latents.shape[0], batch)]
        return np.clip(np.concatenate(out), -1.0, 1.0)

    return decode


def image_decoder(ae: Autoencoder, detokenize_fn: Callable, *, latent_shape, batch: int = 32) -> Callable:
    """``decode(tokens) -> uint8 (B, H, W, 3)`` for ``fid_samples.generate_npz``, as its
    ``sd_vae_decoder`` but in JAX: latents ``detokenize_fn(tokens)`` (checked against
    ``latent_shape`` (h, w, C)), ``ae.decode`` ``batch`` at a time, then
    ``clip((x + 1) / 2, 0, 1) * 255`` truncated to uint8."""
    latent_shape = tuple(latent_shape)
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
) -> Autoencoder | None:
    """The autoencoder of a run's latent data: ``latent_dirs`` are its ``kind="latents"`` source
    directories. ``None`` when none of them was written by an autoencoder and ``name`` is not given
    (pixel data); an error when they name different autoencoders, when ``name`` differs from theirs
    (a manifest refuses another autoencoder), or when ``name`` is given without ``weights`` and no
    manifest records one."""
    from selfflow.autoencoders.weights import load_autoencoder

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
    return load_autoencoder(weights, name)
