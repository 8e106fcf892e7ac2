"""Encode and decode throughput of an autoencoder (``selfflow bench --autoencoder NAME``).

Why: preparing ImageNet latents and decoding 50k FID samples cost real hours; the images/s beside
the train step says whether the autoencoder or the generator is the bottleneck. Timing is
independent of the weights' values, so without a weights file the released architecture runs with
constant weights (no slow random initialisation).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from selfflow.autoencoders.config import AutoencoderConfig, preset
from selfflow.autoencoders.model import Autoencoder

__all__ = ["autoencoder_throughput", "format_throughput", "placeholder_autoencoder"]


def placeholder_autoencoder(config: str | AutoencoderConfig) -> Autoencoder:
    """The architecture with every weight 0.01 and unit batch-norm variance: for timing only."""
    config = preset(config) if isinstance(config, str) else config
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Autoencoder(config, rngs=nnx.Rngs(0))))
    state = jax.tree.map(lambda x: jnp.full(x.shape, 0.01, x.dtype), state)
    model = nnx.merge(graphdef, state)
    if model.bn is not None:
        model.bn.running_var[...] = jnp.ones_like(model.bn.running_var[...])
    return model


def _time(call, rounds: int) -> float:
    jax.block_until_ready(call())  # compile
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def autoencoder_throughput(ae: Autoencoder, *, batch: int = 8, size: int = 256, rounds: int = 3) -> dict:
    """``{"name", "batch", "size", "encode_images_per_s", "decode_images_per_s"}``: the median over
    ``rounds`` of one jitted call on ``batch`` images of ``size`` x ``size`` (decode: their latents)."""
    c = ae.config
    if size % c.pixels_per_latent:
        raise ValueError(f"size {size} must be a multiple of {c.pixels_per_latent} for {c.name!r}")
    images = jnp.zeros((batch, size, size, c.in_channels), jnp.float32)
    latents = jnp.zeros((batch, size // c.pixels_per_latent, size // c.pixels_per_latent, c.model_channels))
    encode = nnx.jit(lambda m, x: m.encode(x))
    decode = nnx.jit(lambda m, z: m.decode(z))
    enc = _time(lambda: encode(ae, images), rounds)
    dec = _time(lambda: decode(ae, latents), rounds)
    return {
        "name": c.name,
        "batch": batch,
        "size": size,
        "encode_images_per_s": batch / enc,
        "decode_images_per_s": batch / dec,
    }


def format_throughput(r: dict) -> str:
    return (
        f"autoencoder {r['name']} ({r['batch']} x {r['size']}px): encode {r['encode_images_per_s']:.1f} "
        f"images/s, decode {r['decode_images_per_s']:.1f} images/s"
    )
