"""The shape and latent convention of one image autoencoder, and the released presets.

Why a dataclass rather than diffusers' ``config.json``: the architecture fixes every weight shape
the loader checks, and the latent convention (scaling, shift, FLUX.2's 2x2 patching and batch-norm
statistics) is what a latent manifest must record so that decoding uses the autoencoder that
encoded. A leaf module: nothing of ours is imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = ["PRESETS", "AutoencoderConfig", "preset"]

_DOWN, _UP = "DownEncoderBlock2D", "UpDecoderBlock2D"


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """An ``AutoencoderKL`` / ``AutoencoderKLFlux2`` of diffusers, as far as its weights and latents go.

    Architecture: ``block_out_channels`` gives the width of each resolution level (the encoder
    halves the resolution after every level but the last, so the raw latents are
    ``H / 2 ** (levels - 1)``); each encoder level has ``layers_per_block`` ResNet blocks, each
    decoder level one more; every GroupNorm has ``norm_groups`` groups (they must divide every width)
    and eps 1e-6. ``decoder_block_out_channels`` (FLUX.2's option) defaults to the encoder's.

    Latent convention (what :meth:`Autoencoder.encode` returns from the raw posterior mean ``z``):

    * ``patch_size == 1``: ``(z - shift_factor) * scaling_factor`` (SD-VAE: shift 0, scale 0.18215;
      FLUX.1: shift 0.1159, scale 0.3611).
    * ``patch_size == 2`` (FLUX.2): ``z`` is folded 2x2 into channels (``4 * latent_channels``,
      channel order ``(c, dy, dx)`` as diffusers' ``Flux2Pipeline._patchify_latents``) and normalised
      with the checkpoint's batch-norm running statistics: ``(z - mean) / sqrt(var + batch_norm_eps)``.
    """

    name: str
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    decoder_block_out_channels: tuple[int, ...] | None = None
    layers_per_block: int = 2
    latent_channels: int = 4
    in_channels: int = 3
    out_channels: int = 3
    norm_groups: int = 32
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_attention: bool = True
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    patch_size: int = 1
    batch_norm_eps: float = 1e-4

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if self.decoder_block_out_channels is not None:
            dec = tuple(int(c) for c in self.decoder_block_out_channels)
            object.__setattr__(self, "decoder_block_out_channels", dec)
        problems = []
        widths = self.block_out_channels + (self.decoder_block_out_channels or ())
        if not self.block_out_channels or min(widths) < 1:
            problems.append(f"block_out_channels {self.block_out_channels} must be positive widths")
        elif any(c % self.norm_groups for c in widths):
            problems.append(f"norm_groups {self.norm_groups} must divide every width {widths}")
        if len(self.decoder_widths) != len(self.block_out_channels):
            problems.append("decoder_block_out_channels must have as many levels as block_out_channels")
        for key in ("layers_per_block", "latent_channels", "in_channels", "out_channels", "norm_groups"):
            if getattr(self, key) < 1:
                problems.append(f"{key}={getattr(self, key)} must be >= 1")
        if self.patch_size not in (1, 2):
            problems.append(f"patch_size={self.patch_size} (only 1, or 2 as FLUX.2)")
        if self.scaling_factor <= 0:
            problems.append(f"scaling_factor={self.scaling_factor} must be > 0")
        if problems:
            raise ValueError(f"autoencoder config {self.name!r}: " + "; ".join(problems))

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        return self.decoder_block_out_channels or self.block_out_channels

    @property
    def downsample(self) -> int:
        """Pixels per raw latent along each side (8 for 4 levels)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def pixels_per_latent(self) -> int:
        """Pixels per model latent along each side (SD-VAE, FLUX.1: 8; FLUX.2: 16)."""
        return self.downsample * self.patch_size

    @property
    def model_channels(self) -> int:
        """Channels of :meth:`Autoencoder.encode`'s latents (SD-VAE 4, FLUX.1 16, FLUX.2 128)."""
        return self.latent_channels * self.patch_size**2

    def latent_convention(self) -> dict:
        """What a latent manifest records to tie its latents to this autoencoder."""
        return {
            "name": self.name,
            "latent_channels": self.latent_channels,
            "model_channels": self.model_channels,
            "pixels_per_latent": self.pixels_per_latent,
            "scaling_factor": float(self.scaling_factor),
            "shift_factor": float(self.shift_factor),
            "patch_size": self.patch_size,
            "batch_norm_eps": float(self.batch_norm_eps) if self.patch_size > 1 else None,
        }

    @classmethod
    def from_diffusers(cls, config: Mapping, name: str = "custom") -> AutoencoderConfig:
        """From a diffusers ``AutoencoderKL`` / ``AutoencoderKLFlux2`` config (``model.config`` or its
        ``config.json``). Raises ``ValueError`` naming each setting this port does not implement."""
        get = config.get
        problems = []
        if get("act_fn", "silu") != "silu":
            problems.append(f"act_fn={get('act_fn')!r} (only 'silu')")
        for key, want in (("down_block_types", _DOWN), ("up_block_types", _UP)):
            if any(t != want for t in get(key, ())):
                problems.append(f"{key}={list(get(key))} (only {want})")
        patch = tuple(get("patch_size", None) or (1, 1))
        if len(set(patch)) != 1:
            problems.append(f"patch_size={list(patch)} (only square)")
        if problems:
            raise ValueError("unsupported autoencoder config: " + "; ".join(problems))
        flux2 = get("_class_name") == "AutoencoderKLFlux2" or "batch_norm_eps" in config
        dec = get("decoder_block_out_channels")
        return cls(
            name=name,
            block_out_channels=tuple(get("block_out_channels", (64,))),
            decoder_block_out_channels=tuple(dec) if dec else None,
            layers_per_block=int(get("layers_per_block", 1)),
            latent_channels=int(get("latent_channels", 4)),
            in_channels=int(get("in_channels", 3)),
            out_channels=int(get("out_channels", 3)),
            norm_groups=int(get("norm_num_groups", 32)),
            use_quant_conv=bool(get("use_quant_conv", True)),
            use_post_quant_conv=bool(get("use_post_quant_conv", True)),
            mid_attention=bool(get("mid_block_add_attention", True)),
            scaling_factor=1.0 if flux2 else float(get("scaling_factor", None) or 1.0),
            shift_factor=0.0 if flux2 else float(get("shift_factor", None) or 0.0),
            patch_size=int(patch[0]) if flux2 else 1,
            batch_norm_eps=float(get("batch_norm_eps", 1e-4)),
        )


#: The released autoencoders: stabilityai/sd-vae-ft-ema and -mse (one architecture, two weight
#: sets), black-forest-labs FLUX.1 (``ae.safetensors`` / ``vae/``) and FLUX.2 (``vae/``).
PRESETS: dict[str, AutoencoderConfig] = {
    "sd-vae": AutoencoderConfig("sd-vae", latent_channels=4, scaling_factor=0.18215),
    "flux1": AutoencoderConfig(
        "flux1",
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ),
    "flux2": AutoencoderConfig("flux2", latent_channels=32, patch_size=2, batch_norm_eps=1e-4),
}


def preset(name: str) -> AutoencoderConfig:
    """:data:`PRESETS` ``[name]``, or ``ValueError`` listing the names."""
    if name not in PRESETS:
        raise ValueError(f"unknown autoencoder {name!r}: expected one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
