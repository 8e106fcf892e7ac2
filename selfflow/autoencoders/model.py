"""One KL autoencoder (SD-VAE, FLUX.1, FLUX.2) in Flax NNX: pixels <-> the latents a model trains on.

Shapes (NHWC throughout, ``f = config.downsample``, 8 for the released models):

* images: float32 ``(B, H, W, 3)`` in [-1, 1], H and W multiples of ``f`` for the raw latents and
  of ``config.pixels_per_latent`` for model latents (8; 16 for FLUX.2, whose 2x2 patching needs
  even raw latents).
* raw latents (diffusers' ``latent_dist.mean`` / ``decode`` input): ``(B, H/f, W/f, latent_channels)``.
* model latents (:meth:`Autoencoder.encode` / :meth:`Autoencoder.decode`): the raw ones scaled and
  shifted, or for FLUX.2 patched to ``(B, H/16, W/16, 128)`` and batch-normalised (see
  :class:`~selfflow.autoencoders.config.AutoencoderConfig`).

Only the posterior mean is used to encode (deterministic latents, as REPA/SiT preprocessing and
FLUX pipelines' ``argmax`` mode); :meth:`Autoencoder.moments` also gives the log variance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from selfflow.autoencoders.blocks import Decoder, Encoder, conv
from selfflow.autoencoders.config import AutoencoderConfig

__all__ = ["Autoencoder", "RunningStat", "patchify", "unpatchify"]


class RunningStat(nnx.Variable):
    """A frozen statistic read from the checkpoint (FLUX.2's batch-norm running mean/variance): state,
    not a trainable parameter."""


class LatentNorm(nnx.Module):
    """FLUX.2's ``bn``: running mean and variance over the ``4 * latent_channels`` patched channels."""

    def __init__(self, channels: int):
        self.running_mean = RunningStat(jnp.zeros((channels,), jnp.float32))
        self.running_var = RunningStat(jnp.ones((channels,), jnp.float32))


def patchify(z: jax.Array, p: int) -> jax.Array:
    """``(B, h, w, C) -> (B, h/p, w/p, C*p*p)``, channel order ``(c, dy, dx)`` (diffusers' FLUX.2)."""
    b, h, w, c = z.shape
    z = z.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
    return z.reshape(b, h // p, w // p, c * p * p)


def unpatchify(z: jax.Array, p: int) -> jax.Array:
    """Inverse of :func:`patchify`: ``(B, h, w, C*p*p) -> (B, h*p, w*p, C)``."""
    b, h, w, cpp = z.shape
    z = z.reshape(b, h, w, cpp // (p * p), p, p).transpose(0, 1, 4, 2, 5, 3)
    return z.reshape(b, h * p, w * p, cpp // (p * p))


class Autoencoder(nnx.Module):
    """The autoencoder of ``config``; parameter paths mirror diffusers' keys (module docstring of
    :mod:`selfflow.autoencoders.blocks`). Build it with weights via
    :func:`selfflow.autoencoders.load_autoencoder`; ``Autoencoder(config)`` alone has random weights."""

    def __init__(self, config: AutoencoderConfig, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        c = config
        self.config = c
        self.encoder = Encoder(
            c.block_out_channels, c.layers_per_block, c.norm_groups, c.in_channels, c.latent_channels,
            c.mid_attention, rngs,
        )  # fmt: skip
        self.decoder = Decoder(
            c.decoder_widths, c.layers_per_block, c.norm_groups, c.latent_channels, c.out_channels,
            c.mid_attention, rngs,
        )  # fmt: skip
        lat = c.latent_channels
        self.quant_conv = conv(2 * lat, 2 * lat, 1, rngs) if c.use_quant_conv else None
        self.post_quant_conv = conv(lat, lat, 1, rngs) if c.use_post_quant_conv else None
        self.bn = LatentNorm(c.model_channels) if c.patch_size > 1 else None

    # ------------------------------------------------------------------ checks

    def _check(self, x, channels: int, multiple: int, what: str, hint: str) -> jax.Array:
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[-1] != channels:
            nchw = (
                " (channels-first? this autoencoder is NHWC)"
                if len(shape) == 4 and shape[1] == channels
                else ""
            )
            raise ValueError(
                f"autoencoder {self.config.name!r}: {what} must be (B, H, W, {channels}){hint}, "
                f"got shape {shape}{nchw}"
            )
        if shape[1] % multiple or shape[2] % multiple or min(shape[1:3]) < 1:
            raise ValueError(
                f"autoencoder {self.config.name!r}: {what} of shape {shape}: H and W must be positive "
                f"multiples of {multiple}"
            )
        return jnp.asarray(x, jnp.float32)

    # ------------------------------------------------------------------ raw (diffusers) interface

    def moments(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Posterior ``(mean, logvar)``, each ``(B, H/f, W/f, latent_channels)``; logvar clipped to
        [-30, 20] as diffusers' ``DiagonalGaussianDistribution``."""
        c = self.config
        x = self._check(images, c.in_channels, c.downsample, "images", " in [-1, 1]")
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def encode_raw(self, images: jax.Array) -> jax.Array:
        """``(B, H, W, 3)`` in [-1, 1] -> the posterior mean ``(B, H/f, W/f, latent_channels)``."""
        return self.moments(images)[0]

    def decode_raw(self, z: jax.Array) -> jax.Array:
        """Raw latents ``(B, h, w, latent_channels)`` -> images ``(B, h*f, w*f, 3)`` (about [-1, 1],
        not clipped)."""
        c = self.config
        z = self._check(z, c.latent_channels, 1, "raw latents", "")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    # ------------------------------------------------------------------ model latents

    def normalize(self, z: jax.Array) -> jax.Array:
        """Raw latents -> model latents (``config``'s latent convention)."""
        c = self.config
        if c.patch_size == 1:
            return (z - c.shift_factor) * c.scaling_factor
        z = patchify(z, c.patch_size)
        std = jnp.sqrt(self.bn.running_var[...] + c.batch_norm_eps)
        return (z - self.bn.running_mean[...]) / std

    def denormalize(self, latents: jax.Array) -> jax.Array:
        """Model latents -> raw latents (inverse of :meth:`normalize`)."""
        c = self.config
        if c.patch_size == 1:
            return latents / c.scaling_factor + c.shift_factor
        std = jnp.sqrt(self.bn.running_var[...] + c.batch_norm_eps)
        return unpatchify(latents * std + self.bn.running_mean[...], c.patch_size)

    def encode(self, images: jax.Array) -> jax.Array:
        """``(B, H, W, 3)`` in [-1, 1] -> model latents ``(B, H/p, W/p, model_channels)``,
        ``p = config.pixels_per_latent``."""
        c = self.config
        images = self._check(images, c.in_channels, c.pixels_per_latent, "images", " in [-1, 1]")
        return self.normalize(self.encode_raw(images))

    def decode(self, latents: jax.Array) -> jax.Array:
        """Model latents ``(B, h, w, model_channels)`` -> images ``(B, h*p, w*p, 3)``, about [-1, 1]."""
        c = self.config
        latents = self._check(latents, c.model_channels, 1, "latents", f" ({c.name} model latents)")
        return self.decode_raw(self.denormalize(latents))
