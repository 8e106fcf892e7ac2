"""The building blocks every image autoencoder here shares, in NHWC: GroupNorm, the ResNet block,
the single-head mid-block attention, the 2x down and up samplers, and the encoder and decoder
stacks made of them.

Why one set: SD-VAE, FLUX.1 and FLUX.2 are the same network (diffusers' ``Encoder`` / ``Decoder``
of ``models/autoencoders/vae.py``) at different widths and latent sizes. Attribute names mirror
diffusers' parameter names (``down_blocks.0.resnets.1.conv2``), so a weight file's key is a
module path with ``kernel``/``scale`` read as ``weight``; see :mod:`selfflow.autoencoders.weights`.

Math (from diffusers' ``ResnetBlock2D``, ``Attention`` with ``_from_deprecated_attn_block``,
``Downsample2D`` and ``Upsample2D`` as the VAE configures them):

* ResNet block: ``x + conv2(silu(norm2(conv1(silu(norm1(x))))))``, the skip through a 1x1
  ``conv_shortcut`` when the width changes; GroupNorm eps 1e-6, 3x3 convolutions padded by 1.
* Mid attention: one head over all ``h * w`` positions, ``softmax(q k^T / sqrt(C)) v`` on the
  group-normalised input, an output projection and the residual.
* Downsampler: zero-pad one row at the bottom and one column at the right, 3x3 conv, stride 2.
* Upsampler: nearest-neighbour 2x, 3x3 conv.

Computation is float32 (GroupNorm statistics two-pass, as torch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

NORM_EPS = 1e-6


def conv(din: int, dout: int, kernel: int, rngs: nnx.Rngs, *, stride: int = 1, pad: int | None = None):
    """A ``kernel x kernel`` convolution, padded ``kernel // 2`` on every side unless ``pad``."""
    p = kernel // 2 if pad is None else pad
    return nnx.Conv(din, dout, (kernel, kernel), strides=stride, padding=((p, p), (p, p)), rngs=rngs)


class GroupNorm(nnx.Module):
    """GroupNorm over the channel axis of ``(..., C)``, per-channel ``scale`` and ``bias`` (torch's
    ``weight``/``bias``); statistics over all positions of each group (two-pass variance)."""

    def __init__(self, channels: int, groups: int, eps: float = NORM_EPS):
        self.groups, self.eps = groups, eps
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        g = x.reshape(shape[0], -1, self.groups, shape[-1] // self.groups)
        mean = g.mean(axis=(1, 3), keepdims=True)
        var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + self.eps)
        return g.reshape(shape) * self.scale[...] + self.bias[...]


class ResnetBlock(nnx.Module):
    """``(B, H, W, din) -> (B, H, W, dout)``: two GroupNorm-SiLU-conv stages plus the skip."""

    def __init__(self, din: int, dout: int, groups: int, rngs: nnx.Rngs):
        self.norm1 = GroupNorm(din, groups)
        self.conv1 = conv(din, dout, 3, rngs)
        self.norm2 = GroupNorm(dout, groups)
        self.conv2 = conv(dout, dout, 3, rngs)
        self.conv_shortcut = conv(din, dout, 1, rngs) if din != dout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Attention(nnx.Module):
    """``(B, H, W, C) -> (B, H, W, C)``: one-head self-attention over the ``H * W`` positions with
    a residual; ``to_out`` is a one-element list so its path is diffusers' ``to_out.0``."""

    def __init__(self, channels: int, groups: int, rngs: nnx.Rngs):
        self.group_norm = GroupNorm(channels, groups)
        self.to_q = nnx.Linear(channels, channels, rngs=rngs)
        self.to_k = nnx.Linear(channels, channels, rngs=rngs)
        self.to_v = nnx.Linear(channels, channels, rngs=rngs)
        self.to_out = nnx.List([nnx.Linear(channels, channels, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        t = self.group_norm(x).reshape(b, h * w, c)
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        logits = jnp.einsum("bqc,bkc->bqk", q, k) * (c**-0.5)
        out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1), v)
        return x + self.to_out[0](out).reshape(b, h, w, c)


class Downsample(nnx.Module):
    """``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C)``: pad bottom/right by one, 3x3 conv stride 2."""

    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, 3, rngs, stride=2, pad=0)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    """``(B, H, W, C) -> (B, 2H, 2W, C)``: nearest-neighbour doubling, then a 3x3 conv."""

    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, 3, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Level(nnx.Module):
    """One resolution level: ``resnets`` then an optional sampler (``downsamplers.0`` in the encoder,
    ``upsamplers.0`` in the decoder, as diffusers' ``DownEncoderBlock2D`` / ``UpDecoderBlock2D``)."""

    def __init__(self, din: int, dout: int, layers: int, groups: int, sampler: str | None, rngs):
        self.resnets = nnx.List(
            [ResnetBlock(din if i == 0 else dout, dout, groups, rngs) for i in range(layers)]
        )
        self.downsamplers = nnx.List([Downsample(dout, rngs)]) if sampler == "down" else None
        self.upsamplers = nnx.List([Upsample(dout, rngs)]) if sampler == "up" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.resnets:
            x = block(x)
        for sampler in self.downsamplers or self.upsamplers or ():
            x = sampler(x)
        return x


class MidBlock(nnx.Module):
    """``resnets.0``, the attention (``attentions.0``, unless disabled), ``resnets.1``; width kept."""

    def __init__(self, channels: int, groups: int, attention: bool, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock(channels, channels, groups, rngs) for _ in range(2)])
        self.attentions = nnx.List([Attention(channels, groups, rngs)]) if attention else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x)
        for attn in self.attentions or ():
            x = attn(x)
        return self.resnets[1](x)


class Encoder(nnx.Module):
    """Images ``(B, H, W, din)`` -> posterior moments ``(B, H/f, W/f, 2 * latent)`` (mean, then log
    variance, before ``quant_conv``), ``f = 2 ** (levels - 1)``."""

    def __init__(self, widths, layers: int, groups: int, din: int, latent: int, attention: bool, rngs):
        self.conv_in = conv(din, widths[0], 3, rngs)
        prev, blocks = widths[0], []
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            blocks.append(Level(prev, width, layers, groups, None if last else "down", rngs))
            prev = width
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(widths[-1], groups, attention, rngs)
        self.conv_norm_out = GroupNorm(widths[-1], groups)
        self.conv_out = conv(widths[-1], 2 * latent, 3, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for level in self.down_blocks:
            x = level(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """Raw latents ``(B, h, w, latent)`` (after ``post_quant_conv``) -> images ``(B, h*f, w*f, dout)``;
    levels run from the widest (``widths[-1]``) to ``widths[0]``, each with ``layers + 1`` blocks."""

    def __init__(self, widths, layers: int, groups: int, latent: int, dout: int, attention: bool, rngs):
        rev = tuple(reversed(widths))
        self.conv_in = conv(latent, rev[0], 3, rngs)
        self.mid_block = MidBlock(rev[0], groups, attention, rngs)
        prev, blocks = rev[0], []
        for i, width in enumerate(rev):
            last = i == len(rev) - 1
            blocks.append(Level(prev, width, layers + 1, groups, None if last else "up", rngs))
            prev = width
        self.up_blocks = nnx.List(blocks)
        self.conv_norm_out = GroupNorm(widths[0], groups)
        self.conv_out = conv(widths[0], dout, 3, rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            x = level(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
