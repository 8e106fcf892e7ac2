"""The WAN 2.1 and 2.2 video autoencoders (diffusers ``AutoencoderKLWan``) in Flax NNX.

Shapes (NDHWC, the released configurations: two temporal halvings): videos ``(B, T, H, W, 3)`` in
[-1, 1], ``T = 1 + 4k`` -> latents ``(B, 1 + k, H / s, W / s, z_dim)`` -> videos ``(B, 1 + 4k, H, W, 3)``;
WAN 2.1: ``s = 8``, 16 channels; WAN 2.2 (TI2V-5B): 2x2 pixel patches first, ``s = 16``, 48 channels.

Why no feature cache: diffusers encodes the first frame and then 4-frame chunks (and decodes one
latent frame at a time), carrying the last two input frames of every causal convolution between
calls. For offline encoding the same values come from one pass over the whole clip:

* a causal ``3 x 3 x 3`` convolution = two zero frames in front, then a valid convolution (the
  cache holds exactly the two frames a chunk's first output needs);
* ``downsample3d``: spatial stride-2 conv on every frame, then the first frame as is followed by a
  valid stride-2 ``time_conv`` over all frames (windows ``[f0 f1 f2], [f2 f3 f4], ...`` are the
  same in one pass as across chunks);
* ``upsample3d``: the first frame skips ``time_conv`` (diffusers' ``"Rep"``); the other frames go
  through a causal ``time_conv`` of their own (zero padding, not the first frame), whose ``2C``
  outputs become two frames each; then nearest 2x and a conv to ``C / 2`` (WAN 2.2: ``C``) on
  every frame;
* WAN 2.2's shortcuts: ``AvgDown3D`` pads each chunk in front to an even frame count, which pads
  only the 1-frame first chunk, i.e. one zero frame in front of the clip; ``DupUp3D`` drops its
  first frame only on the first decoded chunk, i.e. the clip's first frame.

Other pieces: RMS norm over channels (``x / max(|x|, 1e-12) * sqrt(C) * gamma``), residual blocks
``shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))``, per-frame single-head attention in the
mid blocks, decode output clipped to [-1, 1]. Attention at other scales (``attn_scales``) is not
implemented (no released config uses it). Parity: ``tests/test_autoencoders.py``.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfflow.autoencoders.wan_blocks import CausalConv, Decoder, Encoder
from selfflow.errors import ParamsError
from selfflow.params import shape_problems, tensor_name

__all__ = ["WanAutoencoder", "WanConfig", "load_wan"]


@dataclasses.dataclass(frozen=True)
class WanConfig:
    """``AutoencoderKLWan``'s shape (defaults: WAN 2.1, base 96, 16 latent channels).
    ``latents_mean`` / ``latents_std``: per-channel normalisation of the model latents (the WAN
    pipelines' ``(z - mean) / std``); empty = none."""

    name: str = "wan"
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()
    is_residual: bool = False  # WAN 2.2: residual down/up blocks with pooled/duplicated shortcuts
    patch_size: int = 1  # WAN 2.2: 2x2 pixel patches folded into channels before the encoder
    decoder_base_dim: int | None = None

    @property
    def decoder_dim(self) -> int:
        return self.decoder_base_dim or self.base_dim

    @classmethod
    def from_diffusers(cls, config, name: str = "wan") -> WanConfig:
        """From ``AutoencoderKLWan.config``; ValueError naming what this port does not implement."""
        get = config.get
        patch = int(get("patch_size", None) or 1)
        problems = [
            f"{key}={get(key)!r}"
            for key, ok in (
                ("attn_scales", not get("attn_scales", [])),
                ("patch_size", patch in (1, 2)),
                ("in_channels", get("in_channels", 3) == 3 * patch * patch),
                ("out_channels", get("out_channels", 3) == 3 * patch * patch),
            )
            if not ok
        ]
        if problems:
            raise ValueError(
                "unsupported AutoencoderKLWan config (RGB, 1x1 or 2x2 patches): " + "; ".join(problems)
            )
        return cls(
            name=name,
            base_dim=int(get("base_dim", 96)),
            z_dim=int(get("z_dim", 16)),
            dim_mult=tuple(get("dim_mult", (1, 2, 4, 4))),
            num_res_blocks=int(get("num_res_blocks", 2)),
            temporal_downsample=tuple(bool(t) for t in get("temperal_downsample", (False, True, True))),
            latents_mean=tuple(get("latents_mean", None) or ()),
            latents_std=tuple(get("latents_std", None) or ()),
            is_residual=bool(get("is_residual", False)),
            patch_size=patch,
            decoder_base_dim=get("decoder_base_dim", None),
        )


class WanAutoencoder(nnx.Module):
    """``encode_raw`` (posterior mean), ``decode_raw`` and, with ``latents_mean``/``latents_std``
    in the config, ``encode``/``decode`` of normalised latents; NDHWC (module docstring)."""

    def __init__(self, config: WanConfig, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.encoder = Encoder(config, rngs)
        self.quant_conv = CausalConv(2 * config.z_dim, 2 * config.z_dim, (1, 1, 1), rngs)
        self.post_quant_conv = CausalConv(config.z_dim, config.z_dim, (1, 1, 1), rngs)
        self.decoder = Decoder(config, rngs)

    def _check(self, x, channels: int, what: str):
        shape, c = tuple(x.shape), self.config
        f = 2 ** (len(c.dim_mult) - 1) * c.patch_size if what == "videos" else 1
        ft = 2 ** sum(c.temporal_downsample) if what == "videos" else 1
        if len(shape) != 5 or shape[-1] != channels or shape[2] % f or shape[3] % f or (shape[1] - 1) % ft:
            raise ValueError(
                f"WAN autoencoder {c.name!r}: {what} must be (B, T, H, W, {channels}) with T = 1 + {ft}k and H, "
                f"W multiples of {f}, got shape {shape}"
            )
        return jnp.asarray(x, jnp.float32)

    def encode_raw(self, videos):
        """``(B, T, H, W, 3)`` in [-1, 1] -> posterior mean ``(B, 1 + (T-1)/4, H/8, W/8, z_dim)``."""
        x = self._check(videos, 3, "videos")
        p = self.config.patch_size
        if p > 1:  # channel order (c, dx, dy), as diffusers' wan patchify
            b, t, h, w, c = x.shape
            x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
            x = x.reshape(b, t, h // p, w // p, c * p * p)
        h = self.quant_conv(self.encoder(x))
        return h[..., : self.config.z_dim]

    def decode_raw(self, z):
        """Raw latents ``(B, t, h, w, z_dim)`` -> videos ``(B, 1 + 4(t-1), 8h, 8w, 3)`` in [-1, 1]."""
        z = self.post_quant_conv(self._check(z, self.config.z_dim, "latents"))
        x, p = self.decoder(z), self.config.patch_size
        if p > 1:
            b, t, h, w, cpp = x.shape
            x = x.reshape(b, t, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
            x = x.reshape(b, t, h * p, w * p, cpp // (p * p))
        return jnp.clip(x, -1.0, 1.0)

    def _stats(self):
        c = self.config
        if not c.latents_mean:
            return 0.0, 1.0
        return jnp.asarray(c.latents_mean, jnp.float32), jnp.asarray(c.latents_std, jnp.float32)

    def encode(self, videos):
        mean, std = self._stats()
        return (self.encode_raw(videos) - mean) / std

    def decode(self, latents):
        mean, std = self._stats()
        return self.decode_raw(jnp.asarray(latents, jnp.float32) * std + mean)


# --------------------------------------------------------------------------- weights


def _file_key(name: str) -> str:
    """NNX path -> diffusers key: ``CausalConv``'s inner ``conv`` is the file's conv itself."""
    head, _, leaf = name.rpartition(".")
    head = head[: -len(".conv")] if head.endswith(".conv") and leaf in ("kernel", "bias") else head
    return f"{head}.{'weight' if leaf == 'kernel' else leaf}"


def _torch_layout(name: str, x):
    if name.endswith(".kernel"):
        return np.transpose(x, (x.ndim - 1, x.ndim - 2, *range(x.ndim - 2)))
    return x


def _nnx_layout(name: str, x):
    if name.endswith(".kernel"):
        return np.transpose(x, (*range(2, x.ndim), 1, 0))
    return x


def _abstract(config: WanConfig) -> WanAutoencoder:
    return nnx.eval_shape(lambda: WanAutoencoder(config, rngs=nnx.Rngs(0)))


def expected_file_shapes(config: WanConfig) -> dict[str, tuple[int, ...]]:
    pure = nnx.to_pure_dict(nnx.state(_abstract(config)))
    return {
        _file_key(tensor_name(p)): _torch_layout(tensor_name(p), np.empty(x.shape, np.bool_)).shape
        for p, x in jax.tree_util.tree_flatten_with_path(pure)[0]
    }


def load_wan(path: str | os.PathLike, config: WanConfig | None = None) -> WanAutoencoder:
    """A :class:`WanAutoencoder` from a diffusers ``AutoencoderKLWan`` safetensors file (or its
    ``vae/`` directory; ``config=None`` reads the ``config.json`` beside it). Every key and shape is
    checked first; problems are one :class:`ParamsError` naming the file; nothing loads partially."""
    import json

    from safetensors import safe_open

    from selfflow.autoencoders.weights import _listed, _one_line, _resolve_path

    path = _resolve_path(path)
    try:
        with safe_open(path, framework="numpy") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds for a bad file
        raise ParamsError(f"{path} is not a readable safetensors file ({_one_line(e)})") from None
    if config is None:
        try:
            config = WanConfig.from_diffusers(json.loads((path.parent / "config.json").read_text()))
        except (OSError, ValueError) as e:
            raise ParamsError(f"{path}: no usable WAN config.json beside it ({_one_line(e)})") from None
    expected = expected_file_shapes(config)
    problems = shape_problems(expected, shapes)
    if problems:
        raise ParamsError(
            f"{path} does not match WAN autoencoder {config.name!r} (nothing was loaded): {_listed(problems)}"
        )
    try:
        with safe_open(path, framework="numpy") as f:
            arrays = {k: np.asarray(f.get_tensor(k), np.float32) for k in expected}
    except Exception as e:  # noqa: BLE001
        raise ParamsError(f"{path}: corrupt tensor data ({_one_line(e)}); nothing was loaded") from None
    bad = [f"{k} has non-finite values" for k, a in arrays.items() if not np.isfinite(a).all()]
    if bad:
        raise ParamsError(f"{path} (nothing was loaded): {_listed(bad)}")
    graphdef, state = nnx.split(_abstract(config))
    pure = nnx.to_pure_dict(state)
    filled = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.asarray(_nnx_layout(tensor_name(p), arrays[_file_key(tensor_name(p))]), x.dtype),
        pure,
    )
    nnx.replace_by_pure_dict(state, filled)
    return nnx.merge(graphdef, state)
