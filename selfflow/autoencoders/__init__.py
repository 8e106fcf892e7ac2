"""Latent autoencoders in Flax NNX: encode data once, decode samples, no PyTorch in the loop.

Why: every paper experiment trains on latents, and diffusers has removed its Flax autoencoders.
These modules re-implement diffusers' ``AutoencoderKL`` (SD-VAE: stabilityai/sd-vae-ft-ema and
-mse; FLUX.1's 16-channel AE) and ``AutoencoderKLFlux2`` (32 channels, 2x2 latent patching and
batch-norm statistics) and load the user's ``.safetensors`` (diffusers or LDM/BFL layout), every key
and shape checked. Parity with diffusers' PyTorch modules: ``tests/test_autoencoders.py``.

Modules: :mod:`.config` (architecture + latent convention, :data:`PRESETS`), :mod:`.blocks` (the
shared GroupNorm / ResNet / attention / sampler blocks, encoder and decoder stacks), :mod:`.model`
(:class:`Autoencoder`: ``encode``/``decode`` between [-1, 1] NHWC images and model latents),
:mod:`.weights` (:func:`load_autoencoder`), :mod:`.latents` (``selfflow prepare --encode``: the
encoded source, the manifest's ``"autoencoder"`` record, decoding only with that autoencoder in
``sample`` and ``fid-samples``), :mod:`.bench` (encode/decode images/s for ``selfflow bench``).

Use::

    ae = load_autoencoder("sd-vae-ft-ema/diffusion_pytorch_model.safetensors", "sd-vae")
    latents = nnx.jit(lambda m, x: m.encode(x))(ae, images)      # (B, 32, 32, 4) for 256 px
    images = nnx.jit(lambda m, z: m.decode(z))(ae, latents)      # (B, 256, 256, 3) in about [-1, 1]

Precision: float32 throughout; parity is measured on CPU. On GPUs whose float32 convolutions
default to TF32, wrap calls in ``jax.default_matmul_precision("highest")`` for the same numbers.

Video: :mod:`.wan` is the WAN 2.1 and 2.2 autoencoder (diffusers ``AutoencoderKLWan``, causal 3-D
convolutions; :func:`~selfflow.autoencoders.wan.load_wan`), in one pass over the clip instead of
diffusers' chunked feature cache (same values; its module docstring says why). ``selfflow prepare
SOURCE --encode wan2.1|wan2.2 --weights FILE`` (:data:`~selfflow.autoencoders.wan.WAN_PRESETS`)
stores a source's ``video`` clips ``(T, H, W, 3)``, ``T = 1 + 4k``, as latents ``(1 + k, H / 8,
W / 8, 16)`` (WAN 2.2: ``H / 16``, 48 channels) normalised with the checkpoint's
``latents_mean``/``latents_std``, which the manifest records (:mod:`.latents`); the ``video``
modality reads them with ``channels = z_dim`` and 4 video frames per latent frame
(``VideoSpec.frame_stride``, ``modalities/video.py``) and ``selfflow sample`` decodes them with the
WAN autoencoder the manifest names (tests: ``tests/test_wan_latents.py``). Not wired: ``fid-samples``
and ``eval`` of video latents. Original key layouts are mapped too: BFL's FLUX.2 ``ae.safetensors``
(:mod:`.weights`) and WAN's ``Wan2.1_VAE`` / ``Wan2.2_VAE`` converted to safetensors
(:func:`~selfflow.autoencoders.wan.original_key`); tests: ``tests/test_autoencoder_layouts.py``.
"""

from __future__ import annotations

from selfflow.autoencoders.config import PRESETS, AutoencoderConfig, preset
from selfflow.autoencoders.model import Autoencoder, patchify, unpatchify
from selfflow.autoencoders.wan import WAN_PRESETS, WanAutoencoder, WanConfig, load_wan
from selfflow.autoencoders.weights import checkpoint_tensors, expected_file_shapes, load_autoencoder

__all__ = [
    "PRESETS",
    "WAN_PRESETS",
    "Autoencoder",
    "AutoencoderConfig",
    "WanAutoencoder",
    "WanConfig",
    "checkpoint_tensors",
    "expected_file_shapes",
    "load_autoencoder",
    "load_wan",
    "patchify",
    "preset",
    "unpatchify",
]
