"""50k-sample ``.npz`` files for the ADM (guided-diffusion) FID evaluator, made resumably.

:func:`generate_npz` samples class-conditional images with :func:`selfflow.sample.sde_sample`
batch by batch (labels uniform over the classes, the noise and SDE noise of batch b a pure
function of (seed, b)), saves each finished batch under ``<out>.parts/`` and finally streams the
parts into ``out`` with :class:`NpzWriter`, so neither a 10 GB array in memory nor a lost run
after a crash: a killed run loses at most the batch in flight.

``out`` holds ``arr_0`` uint8 (num, H, W, 3) — the only member ``evaluator.py`` reads for a
sample batch (``open_npz_array(path, "arr_0")``; its statistics check looks for a ``mu`` key) —
and ``arr_1`` int32 (num,), the class label of each image, for per-class checks.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from numpy.lib import format as npy_format

from selfflow.sample import _check_sde_args, sde_sample, to_uint8

# Fixed member timestamp: np.savez stamps the current time, which would make two runs that
# produced the same samples differ byte for byte.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class NpzWriter:
    """Writes an ``.npz`` (uncompressed zip64, as ``np.savez``) member by member.

    ``member(name, shape, dtype)`` streams one array row block by row block, so a (50000, 256,
    256, 3) uint8 array never has to be in memory; ``add(name, array)`` stores a small one.
    The file appears at ``path`` only on a clean close (written to ``path.tmp`` first).
    Each member holds the same bytes as ``np.savez`` would write (``.npy`` format 1.0 header).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._open = None

    def member(self, name: str, shape: tuple[int, ...], dtype) -> _MemberWriter:
        if self._open is not None:
            raise RuntimeError(f"close member {self._open.name!r} before opening {name!r}")
        self._open = _MemberWriter(self, name, tuple(int(d) for d in shape), np.dtype(dtype))
        return self._open

    def add(self, name: str, array) -> None:
        array = np.ascontiguousarray(array)
        with self.member(name, array.shape, array.dtype) as m:
            m.write(array)

    def close(self) -> None:
        if self._open is not None:
            raise RuntimeError(f"member {self._open.name!r} is still open")
        self._zip.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._zip.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _MemberWriter:
    """One ``<name>.npy`` member: header at open, then C-order rows until ``shape`` is full."""

    def __init__(self, parent: NpzWriter, name: str, shape: tuple[int, ...], dtype: np.dtype):
        if dtype.hasobject:
            raise ValueError(f"member {name!r}: object arrays cannot be streamed")
        self.parent, self.name, self.shape, self.dtype = parent, name, shape, dtype
        info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o600 << 16
        self._file = parent._zip.open(info, "w", force_zip64=True)  # zip64 as np.savez always does
        header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        npy_format.write_array_header_1_0(self._file, header)
        self._row = int(np.prod(shape[1:], dtype=np.int64))
        self.rows = 0

    def write(self, block) -> None:
        """Appends ``block`` (k, *shape[1:]) of this member's dtype (a 0-d member: the value)."""
        block = np.asarray(block)
        if block.dtype != self.dtype:
            raise ValueError(f"member {self.name!r}: block dtype {block.dtype} != {self.dtype}")
        if self.shape == ():
            if block.shape != () or self.rows:
                raise ValueError(f"member {self.name!r} is a scalar: write it once, shape ()")
            k = 1
        else:
            if block.shape[1:] != self.shape[1:]:
                raise ValueError(
                    f"member {self.name!r}: block shape {block.shape} does not "
                    f"continue (*, {', '.join(map(str, self.shape[1:]))})"
                )
            k = block.shape[0]
            if self.rows + k > self.shape[0]:
                raise ValueError(
                    f"member {self.name!r}: {self.rows + k} rows exceed the declared {self.shape[0]}"
                )
        self._file.write(np.ascontiguousarray(block).tobytes())
        self.rows += k

    def close(self) -> None:
        expected = 1 if self.shape == () else self.shape[0]
        self._file.close()
        self.parent._open = None
        if self.rows != expected:
            raise ValueError(f"member {self.name!r}: {self.rows} rows written, {expected} declared")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:  # leave the zip to the NpzWriter's abort
            self._file.close()
            self.parent._open = None


Decode = Callable[[object], np.ndarray]


def batch_inputs(
    seed: int, index: int, batch_size: int, token_shape: tuple[int, int], num_classes: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(labels (B,) int32, noise (B, N, C) f32, SDE key) of batch ``index``: a function of
    (seed, index) only, so any batch can be regenerated alone."""
    k_labels, k_noise, k_sde = jax.random.split(jax.random.fold_in(jax.random.key(seed), index), 3)
    labels = jax.random.randint(k_labels, (batch_size,), 0, num_classes, jnp.int32)
    noise = jax.random.normal(k_noise, (batch_size, *token_shape), jnp.float32)
    return labels, noise, k_sde


def generate_npz(
    velocity,
    *,
    out: str | Path,
    num: int,
    batch_size: int,
    token_shape: tuple[int, int],
    num_classes: int,
    null_class: int,
    decode: Decode,
    seed: int = 0,
    steps: int = 250,
    last_step_size: float = 0.04,
    cfg_scale: float = 1.0,
    guidance_low: float = 0.0,
    guidance_high: float = 0.7,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Samples ``num`` images into ``out`` (``arr_0`` uint8 (num, H, W, 3), ``arr_1`` int32 labels).

    ``velocity(x, tau, labels)`` as for :func:`sde_sample` — a plain function (jitted with
    ``jax.jit``) or an ``nnx.Module`` such as :class:`selfflow.sample.ModelVelocity` (jitted with
    ``nnx.jit`` so its weights are arguments). ``decode(tokens (B, N, C) f32) -> uint8 (B, H, W,
    3)``. Every batch has ``batch_size`` rows (one compiled program); the last keeps the first
    ``num − b·batch_size``. Batch b is saved as ``<out>.parts/<b:06d>.npz`` (images, labels); a
    rerun with the same arguments skips the saved batches, a rerun with different ones is refused
    (the parts record them; the model itself is not recorded: resume with the same weights).
    ``progress(done, num)`` is called after each batch. The parts are removed once ``out`` is
    complete (an existing ``out`` is replaced then, so a rerun after completion samples anew).
    Returns ``out``.
    """
    settings = dict(
        num=num,
        batch_size=batch_size,
        token_shape=list(token_shape),
        num_classes=num_classes,
        null_class=null_class,
        seed=seed,
        steps=steps,
        last_step_size=last_step_size,
        cfg_scale=cfg_scale,
        guidance_low=guidance_low,
        guidance_high=guidance_high,
    )
    _check_generate_args(settings)
    _check_sde_args(steps, last_step_size, guidance_low, guidance_high)
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    _check_settings(parts / "settings.json", settings)

    sample = partial(
        sde_sample,
        steps=steps,
        last_step_size=last_step_size,
        cfg_scale=cfg_scale,
        guidance_low=guidance_low,
        guidance_high=guidance_high,
        null_class=null_class,
    )
    if isinstance(velocity, nnx.Module):
        jitted = nnx.jit(lambda model, x, y, k: sample(model, x, y, k))
        run = lambda x, y, k: jitted(velocity, x, y, k)
    else:
        run = jax.jit(lambda x, y, k: sample(velocity, x, y, k))

    num_batches = -(-num // batch_size)
    done = 0
    for b in range(num_batches):
        rows = min(batch_size, num - b * batch_size)
        part = parts / f"{b:06d}.npz"
        if not part.exists():
            labels, noise, key = batch_inputs(seed, b, batch_size, token_shape, num_classes)
            images = _checked_images(decode(run(noise, labels, key)), batch_size)
            tmp = parts / f"{b:06d}.tmp.npz"  # atomic: a kill mid-write leaves no half part
            np.savez(tmp, images=images[:rows], labels=np.asarray(labels[:rows], np.int32))
            os.replace(tmp, part)
        done += rows
        if progress is not None:
            progress(done, num)

    _assemble(out, [parts / f"{b:06d}.npz" for b in range(num_batches)], num)
    for path in parts.iterdir():  # only our files live here
        path.unlink()
    parts.rmdir()
    return out


def _check_generate_args(s: dict) -> None:
    for name in ("num", "batch_size", "num_classes"):
        if not isinstance(s[name], (int, np.integer)) or s[name] < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {s[name]!r}")
    if len(s["token_shape"]) != 2 or min(s["token_shape"]) < 1:
        raise ValueError(
            f"token_shape must be (num_tokens, token_dim), both >= 1; got {tuple(s['token_shape'])!r}"
        )
    if not isinstance(s["null_class"], (int, np.integer)) or s["null_class"] < 0:
        raise ValueError(f"null_class must be a class id >= 0; got {s['null_class']!r}")


def _check_settings(path: Path, settings: dict) -> None:
    """Records the generation settings beside the parts; refuses to resume under other ones."""
    settings = json.loads(json.dumps(settings))  # normalise (tuples, numpy ints)
    if path.exists():
        saved = json.loads(path.read_text())
        diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if diff:
            raise ValueError(
                f"{path.parent} holds parts made with other settings "
                f"(saved, now): {diff}; delete that directory to start over"
            )
    else:
        path.write_text(json.dumps(settings, indent=1))


def _checked_images(images, batch_size: int) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != batch_size or images.shape[-1] != 3:
        raise ValueError(
            f"decode must return uint8 ({batch_size}, H, W, 3); got {images.dtype} {images.shape}"
        )
    return images


def _assemble(out: Path, parts: list[Path], num: int) -> None:
    """Streams the parts into ``out`` (arr_0 images, arr_1 labels), one part in memory at a time."""
    with np.load(parts[0]) as first:
        image_shape = first["images"].shape[1:]
    labels = []
    with NpzWriter(out) as npz:
        with npz.member("arr_0", (num, *image_shape), np.uint8) as images:
            for part in parts:
                with np.load(part) as data:
                    images.write(data["images"])
                    labels.append(data["labels"])
        npz.add("arr_1", np.concatenate(labels).astype(np.int32))


def pixel_decoder(detokenize_fn: Callable) -> Decode:
    """decode for pixel-space models: ``detokenize_fn(tokens) -> (B, H, W, C)`` in [-1, 1],
    C = 1 (repeated to RGB) or 3, rounded to uint8 as :func:`selfflow.sample.save_grid` does."""

    def decode(tokens):
        images = np.asarray(detokenize_fn(tokens), np.float32)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"detokenize_fn must return (B, H, W, 1 or 3); got {images.shape}")
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        return to_uint8(images)

    return decode


def sd_vae_decoder(
    vae_dir: str | Path,
    detokenize_fn: Callable,
    *,
    latent_shape: tuple[int, int, int],
    scale: float = 0.18215,
    batch: int = 32,
    device: str | None = None,
) -> Decode:
    """decode for SD-VAE latent models, as the official sampler: images = VAE.decode(z / scale),
    then clamp((x + 1) / 2, 0, 1)·255 cast to uint8 (truncating, like torch's ``.to(uint8)``).

    ``detokenize_fn(tokens) -> (B, h, w, C)`` latents (NHWC, e.g. modalities.image.detokenize),
    checked against ``latent_shape`` (h, w, C) and handed to the VAE as NCHW float32, ``batch``
    latents per decode call. ``vae_dir``: a diffusers AutoencoderKL directory or hub id
    ("stabilityai/sd-vae-ft-ema"). Loads the VAE now (so a bad path fails before sampling);
    ``device`` defaults to CUDA when available.
    """
    try:
        import torch
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise ImportError(
            f"sd_vae_decoder needs diffusers and torch ({err}): pip install diffusers torch"
        ) from err
    if not 0.0 < scale:
        raise ValueError(f"scale must be > 0 (the VAE latent scale, 0.18215 for SD-VAE); got {scale!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1 latents per VAE call; got {batch!r}")
    latent_shape = tuple(latent_shape)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vae = AutoencoderKL.from_pretrained(str(vae_dir)).to(device).eval()

    def decode(tokens):
        latents = np.asarray(detokenize_fn(tokens), np.float32)
        if latents.shape[1:] != latent_shape:
            raise ValueError(f"latents {latents.shape[1:]} != latent_shape {latent_shape} (h, w, C)")
        chunks = []
        with torch.no_grad():
            for i in range(0, latents.shape[0], batch):
                z = torch.from_numpy(latents[i : i + batch].transpose(0, 3, 1, 2).copy()).to(device)
                x = vae.decode(z / scale).sample
                x = (torch.clamp((x + 1) / 2, 0, 1) * 255).to(torch.uint8)
                chunks.append(x.permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(chunks)

    return decode
