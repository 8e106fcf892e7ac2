"""The original (non-diffusers) weight layouts: BFL's FLUX.2 ``ae.safetensors`` for
:func:`load_autoencoder` and WAN's own ``Wan2.1_VAE`` / ``Wan2.2_VAE`` keys for :func:`load_wan`.

Each tiny random model is written under the original names (our diffusers-layout
``checkpoint_tensors`` renamed by the inverse of the loader's mapping) and must load into exactly
the model the diffusers-layout file gives (same encode and decode, bit for bit). The original names
themselves are pinned by a few keys read from the upstream modules (file and commit in comments),
so the inverse cannot drift together with the mapping. Layout errors are one-line ParamsErrors
naming the key.
"""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from test_autoencoders import diffusers_to_ldm, quick_autoencoder, smooth_images
from test_wan_latents import TINY_WAN, random_wan

from selfflow.autoencoders import AutoencoderConfig, checkpoint_tensors, load_autoencoder, wan
from selfflow.autoencoders.wan import WanConfig, load_wan, original_key
from selfflow.autoencoders.weights import ldm_to_diffusers
from selfflow.errors import ParamsError

TINY_FLUX2 = AutoencoderConfig(
    "tiny-flux2", block_out_channels=(32, 64), layers_per_block=1, norm_groups=8, latent_channels=8,
    patch_size=2,
)  # fmt: skip
TINY_WAN22 = WanConfig(
    "wan2.2", base_dim=8, decoder_base_dim=12, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
    is_residual=True, patch_size=2,
)  # fmt: skip

# black-forest-labs/flux2 src/flux2/autoencoder.py (commit ab7cca68018ad3ceadcace9d6ecb1bc1f6f46b4e):
# AutoEncoder(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8).state_dict() keys -> ours.
BFL_FLUX2_KEYS = {
    "encoder.quant_conv.weight": "quant_conv.weight",
    "decoder.post_quant_conv.bias": "post_quant_conv.bias",
    "bn.running_mean": "bn.running_mean",
    "bn.running_var": "bn.running_var",
    "encoder.down.0.downsample.conv.weight": "encoder.down_blocks.0.downsamplers.0.conv.weight",
    "encoder.down.1.block.0.nin_shortcut.weight": "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
    "encoder.mid.attn_1.q.weight": "encoder.mid_block.attentions.0.to_q.weight",
    "decoder.mid.attn_1.proj_out.weight": "decoder.mid_block.attentions.0.to_out.0.weight",
    "encoder.norm_out.weight": "encoder.conv_norm_out.weight",
    "decoder.up.0.block.0.nin_shortcut.weight": "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
    "decoder.up.0.block.1.norm2.bias": "decoder.up_blocks.1.resnets.1.norm2.bias",
    "decoder.up.1.upsample.conv.bias": "decoder.up_blocks.0.upsamplers.0.conv.bias",
}

# Wan-Video/Wan2.1 wan/modules/vae.py (commit 9737cba9c1c3c4d04b33fcad41c111989865d315):
# WanVAE_(dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True,
# True]).state_dict() keys (TINY_WAN's shape) -> ours.
WAN21_KEYS = {
    "conv1.weight": "quant_conv.weight",
    "conv2.bias": "post_quant_conv.bias",
    "encoder.conv1.weight": "encoder.conv_in.weight",
    "encoder.downsamples.0.residual.0.gamma": "encoder.down_blocks.0.norm1.gamma",
    "encoder.downsamples.1.resample.1.weight": "encoder.down_blocks.1.resample.1.weight",
    "encoder.downsamples.2.shortcut.weight": "encoder.down_blocks.2.conv_shortcut.weight",
    "encoder.downsamples.3.time_conv.weight": "encoder.down_blocks.3.time_conv.weight",
    "encoder.downsamples.6.residual.6.weight": "encoder.down_blocks.6.conv2.weight",
    "encoder.middle.1.to_qkv.weight": "encoder.mid_block.attentions.0.to_qkv.weight",
    "encoder.middle.2.residual.3.gamma": "encoder.mid_block.resnets.1.norm2.gamma",
    "encoder.head.0.gamma": "encoder.norm_out.gamma",
    "decoder.middle.1.proj.bias": "decoder.mid_block.attentions.0.proj.bias",
    "decoder.upsamples.1.residual.2.weight": "decoder.up_blocks.0.resnets.1.conv1.weight",
    "decoder.upsamples.2.time_conv.weight": "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
    "decoder.upsamples.3.shortcut.weight": "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
    "decoder.upsamples.8.resample.1.weight": "decoder.up_blocks.2.upsamplers.0.resample.1.weight",
    "decoder.upsamples.10.residual.0.gamma": "decoder.up_blocks.3.resnets.1.norm1.gamma",
    "decoder.head.2.bias": "decoder.conv_out.bias",
}

# Wan-Video/Wan2.2 wan/modules/vae2_2.py (commit 42bf4cfaa384bc21833865abc2f9e6c0e67233dc):
# WanVAE_(dim=8, dec_dim=12, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
# temperal_downsample=[False, True, True]).state_dict() keys (TINY_WAN22's shape) -> ours.
WAN22_KEYS = {
    "conv1.bias": "quant_conv.bias",
    "conv2.weight": "post_quant_conv.weight",
    "encoder.downsamples.0.downsamples.0.residual.3.gamma": "encoder.down_blocks.0.resnets.0.norm2.gamma",
    "encoder.downsamples.0.downsamples.1.resample.1.weight": "encoder.down_blocks.0.downsampler.resample.1.weight",
    "encoder.downsamples.1.downsamples.0.shortcut.weight": "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
    "encoder.downsamples.2.downsamples.1.time_conv.weight": "encoder.down_blocks.2.downsampler.time_conv.weight",
    "encoder.middle.1.norm.gamma": "encoder.mid_block.attentions.0.norm.gamma",
    "decoder.middle.0.residual.3.gamma": "decoder.mid_block.resnets.0.norm2.gamma",
    "decoder.upsamples.0.upsamples.1.residual.3.gamma": "decoder.up_blocks.0.resnets.1.norm2.gamma",
    "decoder.upsamples.0.upsamples.2.time_conv.weight": "decoder.up_blocks.0.upsampler.time_conv.weight",
    "decoder.upsamples.2.upsamples.2.resample.1.weight": "decoder.up_blocks.2.upsampler.resample.1.weight",
    "decoder.upsamples.3.upsamples.0.shortcut.weight": "decoder.up_blocks.3.resnets.0.conv_shortcut.weight",
    "decoder.head.0.gamma": "decoder.norm_out.gamma",
}  # fmt: skip


def one_line_error(call, *parts):
    with pytest.raises(ParamsError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg
    return msg


# --------------------------------------------------------------------------- BFL FLUX.2


def to_bfl(key: str, levels: int) -> str:
    """Diffusers key -> BFL FLUX.2 key: the LDM names, with the quant convs inside the encoder and
    decoder."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return ("encoder." if key.startswith("quant") else "decoder.") + key
    return diffusers_to_ldm(key, levels)


def bfl_tensors(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BFL's ``AutoEncoder.state_dict()`` layout: 1x1-conv attention projections, nested quant
    convs, the batch norm's ``num_batches_tracked``."""
    levels = len(TINY_FLUX2.block_out_channels)
    out = {}
    for key, arr in tensors.items():
        if ".attentions.0.to_" in key and key.endswith(".weight"):
            arr = arr[:, :, None, None]
        out[to_bfl(key, levels)] = arr
    out["bn.num_batches_tracked"] = np.array(7, np.int64)
    return out


@pytest.fixture(scope="module")
def flux2_files(tmp_path_factory):
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("flux2")
    tensors = checkpoint_tensors(quick_autoencoder(TINY_FLUX2, 5))
    save_file(tensors, str(root / "diffusers.safetensors"))
    save_file(bfl_tensors(tensors), str(root / "ae.safetensors"))
    return root, tensors


def test_bfl_flux2_names_are_those_of_bfls_module(flux2_files):
    _, tensors = flux2_files
    bfl = bfl_tensors(tensors)
    levels = len(TINY_FLUX2.block_out_channels)
    for theirs, ours in BFL_FLUX2_KEYS.items():
        assert ldm_to_diffusers(theirs, levels) == ours and ours in tensors and theirs in bfl, theirs
    assert all(ldm_to_diffusers(to_bfl(k, levels), levels) == k for k in tensors)
    assert len(bfl) == len(tensors) + 1  # + bn.num_batches_tracked (ignored)


def test_bfl_flux2_file_loads_the_same_model(flux2_files):
    root, tensors = flux2_files
    ref = load_autoencoder(root / "diffusers.safetensors", TINY_FLUX2)
    ae = load_autoencoder(root / "ae.safetensors", TINY_FLUX2)
    for key, arr in checkpoint_tensors(ae).items():
        np.testing.assert_array_equal(arr, tensors[key], err_msg=key)
    images = smooth_images(2, 16)
    encode = nnx.jit(lambda m, x: m.encode(x))
    decode = nnx.jit(lambda m, z: m.decode(z))
    latents = np.asarray(encode(ae, images))
    assert latents.shape == (2, 4, 4, 32)
    np.testing.assert_array_equal(latents, np.asarray(encode(ref, images)))
    np.testing.assert_array_equal(np.asarray(decode(ae, latents)), np.asarray(decode(ref, latents)))


def test_bfl_flux2_layout_errors(flux2_files, tmp_path):
    from safetensors.numpy import save_file

    root, tensors = flux2_files
    path = tmp_path / "bad.safetensors"

    def load_with(change):
        bfl = bfl_tensors(tensors)
        change(bfl)
        save_file(bfl, str(path))
        return lambda: load_autoencoder(path, TINY_FLUX2)

    hub = "encoder.down_blocks.0.resnets.0.conv1.weight"
    mixed = load_with(lambda t: t.update({hub: tensors[hub]}))
    one_line_error(
        mixed, str(path), "mixes key layouts", hub + " (diffusers)", "(LDM/BFL)", "nothing was loaded"
    )
    twice = load_with(lambda t: t.update({"quant_conv.weight": tensors["quant_conv.weight"]}))
    one_line_error(twice, "encoder.quant_conv.weight and quant_conv.weight are both quant_conv.weight")
    missing = load_with(lambda t: t.pop("bn.running_var"))
    one_line_error(missing, "missing bn.running_var (32,)", "nothing was loaded")
    wrong = load_with(lambda t: t.update({"encoder.quant_conv.weight": np.zeros((16, 16, 3, 3), np.float32)}))
    one_line_error(
        wrong,
        "encoder.quant_conv.weight (our quant_conv.weight): shape (16, 16, 3, 3), expected (16, 16, 1, 1)",
    )
    # FLUX.1's BFL file has neither quant convs nor statistics: a FLUX.2 config names what lacks.
    flux1 = load_with(lambda t: [t.pop(k) for k in list(t) if "quant_conv" in k or k.startswith("bn.")])
    one_line_error(flux1, "missing bn.running_mean (32,)", "missing quant_conv.weight (16, 16, 1, 1)")


def test_pickles_are_refused_with_the_conversion(tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    path.write_bytes(b"\x80\x02not read")
    for call in (lambda: load_wan(path, TINY_WAN), lambda: load_autoencoder(path, TINY_FLUX2)):
        one_line_error(
            call, str(path), "only .safetensors", "import torch; from safetensors.torch import save_file",
            "save_file({k: v.contiguous() for k, v in torch.load('Wan2.1_VAE.pth', map_location='cpu')"
            ".items()}, 'Wan2.1_VAE.safetensors')",
        )  # fmt: skip


# --------------------------------------------------------------------------- WAN originals


def original_tensors(tensors: dict[str, np.ndarray], config: WanConfig) -> dict[str, np.ndarray]:
    return {original_key(k, config): v for k, v in tensors.items()}


@pytest.mark.parametrize(
    "config, pinned", [(TINY_WAN, WAN21_KEYS), (TINY_WAN22, WAN22_KEYS)], ids=["2.1", "2.2"]
)
def test_wan_original_names_are_those_of_wans_modules(config, pinned):
    shapes = wan.expected_file_shapes(config)
    names = {original_key(k, config) for k in shapes}
    assert len(names) == len(shapes)  # one original key per tensor
    for theirs, ours in pinned.items():
        assert ours in shapes and original_key(ours, config) == theirs, (theirs, ours)


@pytest.mark.parametrize("config, size", [(TINY_WAN, 16), (TINY_WAN22, 32)], ids=["2.1", "2.2"])
def test_wan_original_file_loads_the_same_model(tmp_path, config, size):
    from safetensors.numpy import save_file

    tensors = wan.checkpoint_tensors(random_wan(config, 4))
    save_file(tensors, str(tmp_path / "diffusers.safetensors"))
    save_file(original_tensors(tensors, config), str(tmp_path / "Wan_VAE.safetensors"))
    ref = load_wan(tmp_path / "diffusers.safetensors", config)
    ae = load_wan(tmp_path / "Wan_VAE.safetensors", config)
    for key, arr in wan.checkpoint_tensors(ae).items():
        np.testing.assert_array_equal(arr, tensors[key], err_msg=key)
    waves = smooth_images(1, size)[0]
    video = np.stack([waves * np.float32(np.cos(0.3 * t)) for t in range(5)])[None]  # (1, 5, S, S, 3)
    encode = nnx.jit(lambda m, x: m.encode_raw(x))
    decode = nnx.jit(lambda m, z: m.decode_raw(z))
    latents = np.asarray(encode(ae, video))
    assert latents.shape == (1, 2, 2, 2, 4)
    np.testing.assert_array_equal(latents, np.asarray(encode(ref, video)))
    np.testing.assert_array_equal(np.asarray(decode(ae, latents)), np.asarray(decode(ref, latents)))


def test_wan21_names_agree_with_diffusers_single_file_conversion():
    """diffusers' own ``convert_wan_vae_to_diffusers`` (written for the released WAN 2.1 shape:
    4 levels, 2 residual blocks, one decoder shortcut) renames our original keys back to ours."""
    pytest.importorskip("torch")
    single_file = pytest.importorskip("diffusers.loaders.single_file_utils")
    convert = getattr(single_file, "convert_wan_vae_to_diffusers", None)
    if convert is None:
        pytest.skip("this diffusers has no convert_wan_vae_to_diffusers")
    config = WanConfig("wan2.1", base_dim=4, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2)
    shapes = wan.expected_file_shapes(config)
    back = convert({original_key(k, config): k for k in shapes})
    assert back == {k: k for k in shapes}


def test_wan_layout_errors(tmp_path):
    from safetensors.numpy import save_file

    tensors = wan.checkpoint_tensors(random_wan(TINY_WAN, 1))
    path = tmp_path / "Wan2.1_VAE.safetensors"

    def load_with(change, config=TINY_WAN):
        original = original_tensors(tensors, TINY_WAN)
        change(original)
        save_file(original, str(path))
        return lambda: load_wan(path, config)

    mixed = load_with(lambda t: t.update({"encoder.conv_in.weight": tensors["encoder.conv_in.weight"]}))
    one_line_error(
        mixed, str(path), "mixes key layouts", "encoder.conv_in.weight (diffusers)", "(original WAN)"
    )
    missing = load_with(lambda t: t.pop("decoder.head.2.bias"))
    one_line_error(missing, "(original WAN layout; nothing was loaded)", "missing decoder.head.2.bias (3,)")
    wrong = load_with(lambda t: t.update({"conv1.weight": np.zeros((8, 8, 3, 3, 3), np.float32)}))
    one_line_error(wrong, "conv1.weight: shape (8, 8, 3, 3, 3), expected (8, 8, 1, 1, 1)")
    as22 = load_with(lambda t: None, TINY_WAN22)  # a WAN 2.1 file read as WAN 2.2: its names
    one_line_error(
        as22,
        "does not match WAN autoencoder 'wan2.2'",
        "missing decoder.upsamples.0.upsamples.0.residual.2.bias",
    )
    no_config = load_with(lambda t: None, None)
    one_line_error(no_config, "no usable WAN config.json", 'WAN_PRESETS["wan2.1"]')
