"""The layers of the WAN video autoencoders (NDHWC): causal 3-D convolution, RMS norm, residual
block, per-frame attention, the temporal/spatial resamplers, WAN 2.2's pooled/duplicated shortcuts,
and the encoder and decoder stacks. How each maps onto diffusers' chunked computation:
:mod:`selfflow.autoencoders.wan`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

if TYPE_CHECKING:
    from selfflow.autoencoders.wan import WanConfig


class CausalConv(nnx.Module):
    """A 3-D convolution ``(B, T, H, W, din) -> (B, T', H', W', dout)``, causal in time: ``kt - 1``
    zero frames in front (or none: ``causal=False`` for the stride-2 time_conv), spatial padding
    ``k // 2``; ``weight`` is the file's ``(dout, din, kt, kh, kw)`` -> NNX ``kernel``."""

    def __init__(self, din, dout, kernel, rngs, *, stride_t: int = 1, causal: bool = True):
        kt, kh, kw = kernel
        self.pad = ((0, 0), ((kt - 1) if causal else 0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))
        self.conv = nnx.Conv(din, dout, kernel, strides=(stride_t, 1, 1), padding="VALID", rngs=rngs)

    def __call__(self, x):
        return self.conv(jnp.pad(x, self.pad))


class RMSNorm(nnx.Module):
    """Over channels; ``gamma`` keeps the file's shape ``(C, 1, 1, 1)`` / ``(C, 1, 1)``."""

    def __init__(self, dim: int, video: bool = True):
        self.gamma = nnx.Param(jnp.ones((dim, 1, 1, 1) if video else (dim, 1, 1), jnp.float32))

    def __call__(self, x):
        norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
        return x / jnp.maximum(norm, 1e-12) * (x.shape[-1] ** 0.5) * self.gamma[...].reshape(-1)


class ResBlock(nnx.Module):
    def __init__(self, din: int, dout: int, rngs):
        self.norm1 = RMSNorm(din)
        self.conv1 = CausalConv(din, dout, (3, 3, 3), rngs)
        self.norm2 = RMSNorm(dout)
        self.conv2 = CausalConv(dout, dout, (3, 3, 3), rngs)
        self.conv_shortcut = CausalConv(din, dout, (1, 1, 1), rngs) if din != dout else None

    def __call__(self, x):
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = self.conv1(jax.nn.silu(self.norm1(x)))
        return h + self.conv2(jax.nn.silu(self.norm2(x)))


class FrameAttention(nnx.Module):
    """Single-head attention within each frame; ``to_qkv`` and ``proj`` are 1x1 convolutions."""

    def __init__(self, dim: int, rngs):
        self.norm = RMSNorm(dim, video=False)
        self.to_qkv = nnx.Conv(dim, 3 * dim, (1, 1), rngs=rngs)
        self.proj = nnx.Conv(dim, dim, (1, 1), rngs=rngs)

    def __call__(self, x):
        b, t, h, w, c = x.shape
        y = self.to_qkv(self.norm(x.reshape(b * t, h, w, c))).reshape(b * t, h * w, 3 * c)
        q, k, v = jnp.split(y, 3, axis=-1)
        att = jax.nn.softmax(jnp.einsum("nqc,nkc->nqk", q, k) * c**-0.5, axis=-1)
        out = jnp.einsum("nqk,nkc->nqc", att, v).reshape(b * t, h, w, c)
        return x + self.proj(out).reshape(b, t, h, w, c)


class MidBlock(nnx.Module):
    def __init__(self, dim: int, rngs):
        self.resnets = nnx.List([ResBlock(dim, dim, rngs), ResBlock(dim, dim, rngs)])
        self.attentions = nnx.List([FrameAttention(dim, rngs)])

    def __call__(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class _NoParams(nnx.Module):
    """Placeholder for a parameter-free layer of a torch ``Sequential`` (keeps the indices)."""


class Resample(nnx.Module):
    """``downsample2d/3d`` (``(B, T, H, W, C) -> (B, T', H/2, W/2, C)``) or ``upsample2d/3d``
    (``-> (B, T', 2H, 2W, C/2)``); see the module docstring for the time axis."""

    def __init__(self, dim: int, mode: str, rngs, out_dim: int | None = None):
        self.mode = mode
        if mode.startswith("up"):
            conv = nnx.Conv(dim, out_dim or dim // 2, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        else:
            conv = nnx.Conv(dim, dim, (3, 3), strides=2, padding="VALID", rngs=rngs)
        self.resample = nnx.List([_NoParams(), conv])
        time_conv = None
        if mode == "upsample3d":
            time_conv = CausalConv(dim, 2 * dim, (3, 1, 1), rngs)
        elif mode == "downsample3d":
            time_conv = CausalConv(dim, dim, (3, 1, 1), rngs, stride_t=2, causal=False)
        self.time_conv = time_conv

    def _frames(self, x):
        b, t, h, w, c = x.shape
        x = x.reshape(b * t, h, w, c)
        if self.mode.startswith("up"):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        else:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        x = self.resample[1](x)
        return x.reshape(b, t, *x.shape[1:])

    def __call__(self, x):
        if self.mode == "upsample3d" and x.shape[1] > 1:
            b, t, h, w, c = x.shape
            rest = self.time_conv(x[:, 1:]).reshape(b, t - 1, h, w, 2, c)
            rest = rest.transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * (t - 1), h, w, c)
            x = jnp.concatenate([x[:, :1], rest], axis=1)
        x = self._frames(x)
        if self.mode == "downsample3d" and x.shape[1] > 1:
            x = jnp.concatenate([x[:, :1], self.time_conv(x)], axis=1)
        return x


def avg_down(x, out: int, ft: int, fs: int):
    """WAN 2.2's ``AvgDown3D`` over the whole clip: ``(B, T, H, W, C) -> (B, ceil(T/ft), H/fs, W/fs, out)``:
    zero frames in front up to a multiple of ``ft`` (diffusers pads per chunk, which pads only the
    1-frame first chunk: the same), each ``ft x fs x fs`` block folded into channels (order
    ``(c, t, y, x)``) and averaged over consecutive groups of ``C * ft * fs * fs / out``."""
    b, t, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (-t % ft, 0), (0, 0), (0, 0), (0, 0)))
    t = x.shape[1] // ft
    x = x.reshape(b, t, ft, h // fs, fs, w // fs, fs, c).transpose(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, t, h // fs, w // fs, out, -1).mean(axis=-1)


def dup_up(x, out: int, ft: int, fs: int):
    """WAN 2.2's ``DupUp3D`` over the whole clip: ``(B, T, H, W, C) -> (B, T*ft - (ft-1), H*fs, W*fs, out)``:
    channels repeated then unfolded (order ``(c, t, y, x)``), the first ``ft - 1`` frames dropped
    (diffusers' ``first_chunk``)."""
    b, t, h, w, c = x.shape
    x = jnp.repeat(x, out * ft * fs * fs // c, axis=-1).reshape(b, t, h, w, out, ft, fs, fs)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, t * ft, h * fs, w * fs, out)
    return x[:, ft - 1 :]


class ResidualDownBlock(nnx.Module):
    """WAN 2.2 encoder level: ``resnets``, optional ``downsampler``, plus the pooled input."""

    def __init__(self, din: int, dout: int, layers: int, temporal: bool, down: bool, rngs):
        self.shortcut = (dout, 2 if temporal else 1, 2 if down else 1)
        self.resnets = nnx.List([ResBlock(din if i == 0 else dout, dout, rngs) for i in range(layers)])
        mode = "downsample3d" if temporal else "downsample2d"
        self.downsampler = Resample(dout, mode, rngs) if down else None

    def __call__(self, x):
        skip = avg_down(x, *self.shortcut)
        for block in self.resnets:
            x = block(x)
        if self.downsampler is not None:
            x = self.downsampler(x)
        return x + skip


class ResidualUpBlock(nnx.Module):
    """WAN 2.2 decoder level: ``resnets``, optional ``upsampler`` (keeping the width), plus the
    duplicated input."""

    def __init__(self, din: int, dout: int, layers: int, temporal: bool, up: bool, rngs):
        self.shortcut = (dout, 2 if temporal else 1, 2) if up else None
        self.resnets = nnx.List([ResBlock(din if i == 0 else dout, dout, rngs) for i in range(layers)])
        mode = "upsample3d" if temporal else "upsample2d"
        self.upsampler = Resample(dout, mode, rngs, out_dim=dout) if up else None

    def __call__(self, x):
        skip = x
        for block in self.resnets:
            x = block(x)
        if self.upsampler is not None:
            x = self.upsampler(x)
        return x if self.shortcut is None else x + dup_up(skip, *self.shortcut)


class UpBlock(nnx.Module):
    def __init__(self, din: int, dout: int, layers: int, mode: str | None, rngs):
        self.resnets = nnx.List([ResBlock(din if i == 0 else dout, dout, rngs) for i in range(layers)])
        self.upsamplers = nnx.List([Resample(dout, mode, rngs)]) if mode else None

    def __call__(self, x):
        for block in self.resnets:
            x = block(x)
        for up in self.upsamplers or ():
            x = up(x)
        return x


class Encoder(nnx.Module):
    def __init__(self, c: WanConfig, rngs):
        dims = [c.base_dim * m for m in (1, *c.dim_mult)]
        self.conv_in = CausalConv(3 * c.patch_size**2, dims[0], (3, 3, 3), rngs)
        blocks = []
        for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(c.dim_mult) - 1
            if c.is_residual:
                temporal = c.temporal_downsample[i] if not last else False
                blocks.append(ResidualDownBlock(din, dout, c.num_res_blocks, temporal, not last, rngs))
                continue
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(din, dout, rngs))
                din = dout
            if i != len(c.dim_mult) - 1:
                mode = "downsample3d" if c.temporal_downsample[i] else "downsample2d"
                blocks.append(Resample(dout, mode, rngs))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], rngs)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv(dims[-1], 2 * c.z_dim, (3, 3, 3), rngs)

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.norm_out(self.mid_block(x))))


class Decoder(nnx.Module):
    def __init__(self, c: WanConfig, rngs):
        dims = [c.decoder_dim * m for m in (c.dim_mult[-1], *reversed(c.dim_mult))]
        up_t = tuple(reversed(c.temporal_downsample))
        self.conv_in = CausalConv(c.z_dim, dims[0], (3, 3, 3), rngs)
        self.mid_block = MidBlock(dims[0], rngs)
        blocks = []
        for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
            if c.is_residual:
                up = i != len(c.dim_mult) - 1
                temporal = up_t[i] if up else False
                blocks.append(ResidualUpBlock(din, dout, c.num_res_blocks + 1, temporal, up, rngs))
                continue
            din = din // 2 if i > 0 else din  # the previous upsampler's conv halves the width
            mode = None
            if i != len(c.dim_mult) - 1:
                mode = "upsample3d" if up_t[i] else "upsample2d"
            blocks.append(UpBlock(din, dout, c.num_res_blocks + 1, mode, rngs))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv(dims[-1], 3 * c.patch_size**2, (3, 3, 3), rngs)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.norm_out(x)))
