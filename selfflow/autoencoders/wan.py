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

:data:`WAN_PRESETS` (``"wan2.1"``, ``"wan2.2"``: the released shapes and latent statistics) are what
``selfflow prepare --encode`` names; :meth:`WanConfig.latent_convention` is what a latent manifest
records (:mod:`.latents`); :func:`checkpoint_tensors` is the inverse of :func:`load_wan`.

Weight files (:func:`load_wan`, ``.safetensors`` only): diffusers' ``AutoencoderKLWan`` keys, or the
original WAN layout (``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth`` converted to safetensors; the modules
of Wan-Video/Wan2.1 ``wan/modules/vae.py`` and Wan2.2 ``wan/modules/vae2_2.py``), renamed by
:func:`original_key`: ``conv1``/``conv2`` = ``quant_conv``/``post_quant_conv``; ``encoder.conv1`` =
``conv_in``; ``middle.0|1|2`` = mid resnet 0, attention, resnet 1; ``head.0|2`` = ``norm_out`` /
``conv_out``; a residual block's ``residual.0|2|3|6`` = ``norm1|conv1|norm2|conv2`` and
``shortcut`` = ``conv_shortcut``. WAN 2.1's ``encoder.downsamples.<k>`` is diffusers' flat
``down_blocks.<k>``; its ``decoder.upsamples.<k>`` is level ``k // (n + 2)``, resnet ``k % (n + 2)``
or, at ``n + 1``, ``upsamplers.0`` (``n = num_res_blocks``). WAN 2.2 nests them:
``downsamples.<i>.downsamples.<j>`` = ``down_blocks.<i>.resnets.<j>`` (``j = n``:
``downsampler``), ``upsamples.<i>.upsamples.<j>`` = ``up_blocks.<i>.resnets.<j>`` (``j = n + 1``:
``upsampler``). The layout is detected from the keys; a file mixing both is refused.
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfflow.autoencoders.wan_blocks import CausalConv, Decoder, Encoder
from selfflow.errors import ParamsError
from selfflow.params import shape_problems, tensor_name

__all__ = ["WAN_PRESETS", "WanAutoencoder", "WanConfig", "checkpoint_tensors", "load_wan", "original_key"]


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

    @property
    def pixels_per_latent(self) -> int:
        """Pixels per latent along each side (WAN 2.1: 8; WAN 2.2: 16, its 2x2 patches included)."""
        return 2 ** (len(self.dim_mult) - 1) * self.patch_size

    @property
    def frames_per_latent(self) -> int:
        """Video frames per latent frame after the first (4 in the released configs)."""
        return 2 ** sum(self.temporal_downsample)

    @property
    def model_channels(self) -> int:
        """Channels of :meth:`WanAutoencoder.encode`'s latents (``z_dim``)."""
        return self.z_dim

    def latent_convention(self) -> dict:
        """What a latent manifest records to tie its latents to this autoencoder (the image
        autoencoders' record, with ``family`` ``"wan"``, the frame factor and the normalisation
        ``(z - latents_mean) / latents_std`` that :meth:`WanAutoencoder.encode` applies)."""
        return {
            "name": self.name,
            "family": "wan",
            "latent_channels": self.z_dim,
            "model_channels": self.z_dim,
            "pixels_per_latent": self.pixels_per_latent,
            "frames_per_latent": self.frames_per_latent,
            "latents_mean": [float(v) for v in self.latents_mean],
            "latents_std": [float(v) for v in self.latents_std],
            "patch_size": self.patch_size,
        }

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
        f = c.pixels_per_latent if what == "videos" else 1
        ft = c.frames_per_latent if what == "videos" else 1
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


def checkpoint_tensors(model: WanAutoencoder) -> dict[str, np.ndarray]:
    """``model``'s weights under diffusers' keys and torch layouts (what :func:`load_wan` reads back)."""
    pure = nnx.to_pure_dict(nnx.state(model))
    return {
        _file_key(tensor_name(p)): np.ascontiguousarray(
            _torch_layout(tensor_name(p), np.asarray(x, np.float32))
        )
        for p, x in jax.tree_util.tree_flatten_with_path(pure)[0]
    }


def _abstract(config: WanConfig) -> WanAutoencoder:
    return nnx.eval_shape(lambda: WanAutoencoder(config, rngs=nnx.Rngs(0)))


def expected_file_shapes(config: WanConfig) -> dict[str, tuple[int, ...]]:
    pure = nnx.to_pure_dict(nnx.state(_abstract(config)))
    return {
        _file_key(tensor_name(p)): _torch_layout(tensor_name(p), np.empty(x.shape, np.bool_)).shape
        for p, x in jax.tree_util.tree_flatten_with_path(pure)[0]
    }


_RESNET_LEAVES = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3",
                  "conv2": "residual.6", "conv_shortcut": "shortcut"}  # fmt: skip
_ORIGINAL = re.compile(r"^((encoder|decoder)\.(downsamples|upsamples|middle|head|conv1)|conv1|conv2)\.")
_DIFFUSERS = re.compile(
    r"^((encoder|decoder)\.(down_blocks|up_blocks|mid_block|conv_in|conv_out|norm_out)|quant_conv|post_quant_conv)\."
)


def _resnet(tail: str) -> str:
    """``conv1.weight`` -> ``residual.2.weight`` (a residual block's ``nn.Sequential``)."""
    name, _, leaf = tail.partition(".")
    return f"{_RESNET_LEAVES[name]}.{leaf}" if name in _RESNET_LEAVES else tail


def original_key(key: str, config: WanConfig) -> str:
    """A diffusers ``AutoencoderKLWan`` key of ``config`` -> the key WAN's own module gives that
    tensor (``Wan2.1_VAE.pth``, ``Wan2.2_VAE.pth`` with ``config.is_residual``); module docstring."""
    n = config.num_res_blocks
    for ours, theirs in (("quant_conv.", "conv1."), ("post_quant_conv.", "conv2.")):
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    side, _, rest = key.partition(".")
    rules = [
        (r"conv_in\.(.+)", lambda m: f"conv1.{m[1]}"),
        (r"norm_out\.(.+)", lambda m: f"head.0.{m[1]}"),
        (r"conv_out\.(.+)", lambda m: f"head.2.{m[1]}"),
        (r"mid_block\.resnets\.(\d+)\.(.+)", lambda m: f"middle.{2 * int(m[1])}.{_resnet(m[2])}"),
        (r"mid_block\.attentions\.0\.(.+)", lambda m: f"middle.1.{m[1]}"),
    ]
    if config.is_residual:  # WAN 2.2: Down_ResidualBlock / Up_ResidualBlock hold their own Sequential
        rules += [
            (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda m: f"downsamples.{m[1]}.downsamples.{m[2]}.{_resnet(m[3])}"),
            (r"down_blocks\.(\d+)\.downsampler\.(.+)", lambda m: f"downsamples.{m[1]}.downsamples.{n}.{m[2]}"),
            (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda m: f"upsamples.{m[1]}.upsamples.{m[2]}.{_resnet(m[3])}"),
            (r"up_blocks\.(\d+)\.upsampler\.(.+)", lambda m: f"upsamples.{m[1]}.upsamples.{n + 1}.{m[2]}"),
        ]  # fmt: skip
    else:  # WAN 2.1: one flat Sequential per stack; a decoder level is n + 1 resnets and a resample
        rules += [
            (r"down_blocks\.(\d+)\.(.+)", lambda m: f"downsamples.{m[1]}.{_resnet(m[2])}"),
            (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda m: f"upsamples.{int(m[1]) * (n + 2) + int(m[2])}.{_resnet(m[3])}"),
            (r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", lambda m: f"upsamples.{int(m[1]) * (n + 2) + n + 1}.{m[2]}"),
        ]  # fmt: skip
    for pattern, rename in rules:
        m = re.fullmatch(pattern, rest)
        if side in ("encoder", "decoder") and m:
            return f"{side}.{rename(m)}"
    raise ValueError(f"no original WAN name for {key!r}")


def _layout(shapes: dict[str, tuple], path) -> str:
    original = next((k for k in sorted(shapes) if _ORIGINAL.match(k)), None)
    hub = next((k for k in sorted(shapes) if _DIFFUSERS.match(k)), None)
    if original and hub:
        raise ParamsError(
            f"{path} mixes key layouts: {hub} (diffusers) and {original} (original WAN); nothing was loaded"
        )
    return "original WAN" if original else "diffusers"


def load_wan(path: str | os.PathLike, config: WanConfig | None = None) -> WanAutoencoder:
    """A :class:`WanAutoencoder` from a safetensors file: diffusers ``AutoencoderKLWan`` keys (or its
    ``vae/`` directory; ``config=None`` reads the ``config.json`` beside it) or WAN's original
    layout (``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth`` converted: pass ``WAN_PRESETS["wan2.1"]`` /
    ``["wan2.2"]``). Every key and shape is checked first; problems are one :class:`ParamsError`
    naming the file and the keys as the file spells them; nothing loads partially."""
    import json

    from safetensors import safe_open

    from selfflow.autoencoders.weights import _listed, _one_line, _refuse_pickle, _resolve_path

    path = _resolve_path(path)
    _refuse_pickle(path)
    try:
        with safe_open(path, framework="numpy") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds for a bad file
        raise ParamsError(f"{path} is not a readable safetensors file ({_one_line(e)})") from None
    layout = _layout(shapes, path)
    if config is None:
        try:
            config = WanConfig.from_diffusers(json.loads((path.parent / "config.json").read_text()))
        except (OSError, ValueError) as e:
            raise ParamsError(
                f"{path}: no usable WAN config.json beside it ({_one_line(e)}); pass config="
                f'WAN_PRESETS["wan2.1"] or WAN_PRESETS["wan2.2"]'
            ) from None
    expected = expected_file_shapes(config)
    names = {k: original_key(k, config) if layout == "original WAN" else k for k in expected}
    problems = shape_problems({names[k]: s for k, s in expected.items()}, shapes)
    if problems:
        raise ParamsError(
            f"{path} does not match WAN autoencoder {config.name!r} ({layout} layout; nothing was "
            f"loaded): {_listed(problems)}"
        )
    try:
        with safe_open(path, framework="numpy") as f:
            arrays = {k: np.asarray(f.get_tensor(names[k]), np.float32) for k in expected}
    except Exception as e:  # noqa: BLE001
        raise ParamsError(f"{path}: corrupt tensor data ({_one_line(e)}); nothing was loaded") from None
    bad = [f"{names[k]} has non-finite values" for k, a in arrays.items() if not np.isfinite(a).all()]
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


# --------------------------------------------------------------------------- released configurations

# The per-channel latent statistics of the released checkpoints (diffusers' ``AutoencoderKLWan``
# defaults for WAN 2.1; the ``vae/config.json`` of Wan-AI/Wan2.2-TI2V-5B-Diffusers for WAN 2.2).
_WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)  # fmt: skip
_WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)  # fmt: skip
_WAN22_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
               -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
               -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
               -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
               -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
               0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)  # fmt: skip
_WAN22_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
              0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
              0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
              0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
              0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
              0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)  # fmt: skip

#: ``selfflow prepare --encode wan2.1|wan2.2``: WAN 2.1 (Wan-AI/Wan2.1-*-Diffusers ``vae/``: base
#: 96, 16 channels, 8x spatial) and WAN 2.2 (Wan2.2-TI2V-5B-Diffusers ``vae/``: base 160/256, 48
#: channels, 2x2 patches, 16x spatial); both 4x temporal, latents normalised with their statistics.
WAN_PRESETS: dict[str, WanConfig] = {
    "wan2.1": WanConfig("wan2.1", latents_mean=_WAN21_MEAN, latents_std=_WAN21_STD),
    "wan2.2": WanConfig(
        "wan2.2",
        base_dim=160,
        decoder_base_dim=256,
        z_dim=48,
        is_residual=True,
        patch_size=2,
        latents_mean=_WAN22_MEAN,
        latents_std=_WAN22_STD,
    ),
}
