"""The NNX autoencoders (SD-VAE, FLUX.1, FLUX.2) against diffusers' PyTorch modules built from tiny
configs with random weights (saved as safetensors, read by our loader), and the loader's and the
model's one-line errors."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from selfflow.autoencoders import (
    PRESETS,
    Autoencoder,
    AutoencoderConfig,
    checkpoint_tensors,
    expected_file_shapes,
    load_autoencoder,
    patchify,
    unpatchify,
)
from selfflow.autoencoders.weights import ldm_to_diffusers
from selfflow.errors import ParamsError

from helpers_weights import random_weights

TOL = 1e-5
TINY = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=8,
    layers_per_block=1,
)
TINY_CONFIG = AutoencoderConfig("tiny", block_out_channels=(32, 64), layers_per_block=1, norm_groups=8)


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def nhwc(t) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def nchw(a):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def torch_vae(cls_name: str, path, **config):
    """A diffusers autoencoder of the tiny config, every parameter perturbed (FLUX.2: random
    batch-norm statistics too), its ``state_dict`` saved to ``path``."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = getattr(diffusers, cls_name)(**TINY, **config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if hasattr(model, "bn"):
            model.bn.running_mean.copy_(torch.randn_like(model.bn.running_mean))
            model.bn.running_var.copy_(torch.rand_like(model.bn.running_var) + 0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def quick_autoencoder(config: AutoencoderConfig, seed: int = 0) -> Autoencoder:
    """Random weights (:func:`helpers_weights.random_weights`): kernels ~ N(0, 1/fan_in), biases and
    norm shifts ~ N(0, 0.1), norm scales ~ 1 + N(0, 0.1), batch-norm variances in [0.5, 1.5]."""
    return random_weights(lambda: Autoencoder(config, rngs=nnx.Rngs(0)), seed)


def diffusers_to_ldm(key: str, levels: int) -> str:
    """A diffusers key -> its LDM name (the inverse of ``ldm_to_diffusers``; decoder levels reversed)."""
    key = key.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", key)
    key = key.replace(".mid_block.attentions.0.", ".mid.attn_1.").replace(".group_norm.", ".norm.")
    key = re.sub(r"\.to_([qkv])\.", r".\1.", key).replace(".to_out.0.", ".proj_out.")
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.", key)
    if m:
        key = f"decoder.up.{levels - 1 - int(m[1])}." + key[m.end() :]
        key = key.replace(".resnets.", ".block.").replace(".upsamplers.0.", ".upsample.")
    return key


def smooth_images(batch: int = 2, size: int = 16) -> np.ndarray:
    """``(batch, size, size, 3)`` float32 in [-1, 1]: low-frequency colour waves."""
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = [
        np.stack(
            [np.sin(2 * np.pi * (x + b / 3 + c / 5)) * np.cos(np.pi * y * (c + 1)) for c in range(3)], -1
        )
        for b in range(batch)
    ]
    return np.stack(out).astype(np.float32) * 0.9


def _parity(torch_model, ae: Autoencoder, images: np.ndarray):
    import torch

    with torch.no_grad():
        mean = torch_model.encode(nchw(images)).latent_dist.mean
        decoded = torch_model.decode(mean).sample
    enc_err = rel_err(ae.encode_raw(images), nhwc(mean))
    dec_err = rel_err(ae.decode_raw(nhwc(mean)), nhwc(decoded))
    return enc_err, dec_err, nhwc(mean)


@pytest.mark.parametrize(
    "name, config",
    [
        ("sd-vae", dict(latent_channels=4, scaling_factor=0.18215)),
        ("flux1", dict(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                       use_post_quant_conv=False)),
    ],
)  # fmt: skip
def test_autoencoder_kl_parity(tmp_path, name, config):
    torch_model = torch_vae("AutoencoderKL", tmp_path / "vae.safetensors", **config)
    cfg = AutoencoderConfig.from_diffusers(dict(torch_model.config), name=name)
    assert (cfg.use_quant_conv, cfg.latent_channels) == (
        config.get("use_quant_conv", True),
        config["latent_channels"],
    )
    ae = load_autoencoder(tmp_path / "vae.safetensors", cfg)
    images = smooth_images()
    enc_err, dec_err, mean = _parity(torch_model, ae, images)
    assert enc_err <= TOL and dec_err <= TOL, (enc_err, dec_err)
    # Model latents follow the diffusers pipelines: (z - shift) * scale, and back.
    shift = config.get("shift_factor", 0.0)
    latents = np.asarray(ae.encode(images))
    assert latents.shape == (2, 8, 8, config["latent_channels"])
    assert rel_err(latents, (mean - shift) * config["scaling_factor"]) <= TOL
    assert rel_err(ae.decode(latents), ae.decode_raw(mean)) <= TOL


def test_flux2_parity_with_patching_and_batch_norm(tmp_path):
    torch = pytest.importorskip("torch")
    pipeline = pytest.importorskip("diffusers.pipelines.flux2.pipeline_flux2")
    torch_model = torch_vae("AutoencoderKLFlux2", tmp_path / "vae.safetensors", latent_channels=8)
    cfg = AutoencoderConfig.from_diffusers(dict(torch_model.config), name="flux2-tiny")
    assert (cfg.patch_size, cfg.model_channels, cfg.pixels_per_latent) == (2, 32, 4)
    ae = load_autoencoder(tmp_path / "vae.safetensors", cfg)
    images = smooth_images()
    enc_err, dec_err, _ = _parity(torch_model, ae, images)
    assert enc_err <= TOL and dec_err <= TOL, (enc_err, dec_err)

    # Flux2Pipeline: patchify the posterior mean, normalise with the batch-norm statistics.
    patch = pipeline.Flux2Pipeline._patchify_latents
    bn_mean = torch_model.bn.running_mean.view(1, -1, 1, 1)
    bn_std = torch.sqrt(torch_model.bn.running_var.view(1, -1, 1, 1) + torch_model.config.batch_norm_eps)
    with torch.no_grad():
        ref = (patch(torch_model.encode(nchw(images)).latent_dist.mean) - bn_mean) / bn_std
        ref_image = torch_model.decode(
            pipeline.Flux2Pipeline._unpatchify_latents(ref * bn_std + bn_mean)
        ).sample
    latents = np.asarray(ae.encode(images))
    assert latents.shape == (2, 4, 4, 32)
    assert rel_err(latents, nhwc(ref)) <= TOL
    assert rel_err(ae.decode(latents), nhwc(ref_image)) <= TOL


def test_patchify_round_trip_and_channel_order():
    z = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    p = patchify(z, 2)
    assert p.shape == (2, 2, 3, 12)
    # channel c * 4 + dy * 2 + dx holds z[y * 2 + dy, x * 2 + dx, c]
    assert float(p[1, 1, 2, 2 * 4 + 1 * 2 + 0]) == float(z[1, 3, 4, 2])
    np.testing.assert_array_equal(unpatchify(p, 2), z)


def test_ldm_layout_loads_the_same_weights(tmp_path):
    """The LDM/BFL key layout (FLUX.1 ae.safetensors, CompVis VAEs) gives the same model."""
    from safetensors.numpy import save_file

    ae = quick_autoencoder(TINY_CONFIG, 3)
    tensors = checkpoint_tensors(ae)
    levels = len(TINY_CONFIG.block_out_channels)

    ldm = {}
    for key, arr in tensors.items():
        if ".attentions.0.to_" in key and key.endswith(".weight"):
            arr = arr[:, :, None, None]  # 1x1 convolutions in the LDM layout
        ldm["first_stage_model." + diffusers_to_ldm(key, levels)] = arr
    assert all(ldm_to_diffusers(diffusers_to_ldm(k, levels), levels) == k for k in tensors)
    assert ldm["first_stage_model.decoder.up.1.block.1.conv1.weight"].shape[0] == 64  # the widest is up.1
    ldm["model.diffusion_model.other.weight"] = np.zeros(3, np.float32)  # the rest of a full checkpoint
    save_file(ldm, str(tmp_path / "ldm.safetensors"))
    loaded = load_autoencoder(tmp_path / "ldm.safetensors", TINY_CONFIG)
    for key, arr in checkpoint_tensors(loaded).items():
        np.testing.assert_array_equal(arr, tensors[key], err_msg=key)


def test_encode_decode_of_a_smooth_image_is_deterministic_and_shape_exact():
    ae = quick_autoencoder(TINY_CONFIG)
    images = smooth_images(3, 24)
    encode = nnx.jit(lambda m, x: m.encode(x))
    decode = nnx.jit(lambda m, z: m.decode(z))
    latents = encode(ae, images)
    assert latents.shape == (3, 12, 12, 4) and latents.dtype == jnp.float32
    out = decode(ae, latents)
    assert out.shape == images.shape and bool(jnp.isfinite(out).all())
    np.testing.assert_array_equal(encode(ae, images), latents)
    np.testing.assert_array_equal(decode(ae, latents), out)
    assert float(jnp.abs(out).max()) > 0.01  # not a constant


def test_presets_shapes():
    sd, f1, f2 = PRESETS["sd-vae"], PRESETS["flux1"], PRESETS["flux2"]
    assert (sd.model_channels, sd.pixels_per_latent, sd.scaling_factor) == (4, 8, 0.18215)
    assert (f1.model_channels, f1.shift_factor, f1.scaling_factor, f1.use_quant_conv) == (
        16,
        0.1159,
        0.3611,
        False,
    )
    assert (f2.latent_channels, f2.model_channels, f2.pixels_per_latent) == (32, 128, 16)
    shapes = expected_file_shapes(sd)
    assert shapes["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert shapes["decoder.up_blocks.0.resnets.2.conv2.weight"] == (512, 512, 3, 3)
    assert shapes["encoder.mid_block.attentions.0.to_q.weight"] == (512, 512)
    assert "bn.running_var" in expected_file_shapes(f2) and "quant_conv.weight" not in expected_file_shapes(
        f1
    )
    with pytest.raises(ValueError, match="norm_groups 8 must divide every width"):
        AutoencoderConfig("bad", block_out_channels=(12, 24), norm_groups=8)


@pytest.mark.parametrize(
    "call, shape, message",
    [
        ("encode", (1, 16, 16, 1), r"images must be \(B, H, W, 3\)"),
        ("encode", (1, 3, 16, 16), r"channels-first"),
        ("encode", (1, 13, 16, 3), r"multiples of 2"),
        ("decode", (1, 8, 8, 3), r"latents must be \(B, H, W, 4\)"),
        ("decode_raw", (1, 8, 8, 16), r"raw latents must be \(B, H, W, 4\)"),
    ],
)
def test_wrong_shapes_are_one_line_errors(call, shape, message):
    ae = quick_autoencoder(dataclasses_replace(TINY_CONFIG, block_out_channels=(8, 16)))
    with pytest.raises(ValueError, match=message) as err:
        getattr(ae, call)(np.zeros(shape, np.float32))
    assert "\n" not in str(err.value) and "'tiny'" in str(err.value)


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def _saved(tmp_path, config=TINY_CONFIG):
    from safetensors.numpy import save_file

    tensors = checkpoint_tensors(quick_autoencoder(config, 1))
    path = tmp_path / "ae.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_round_trip_through_the_file(tmp_path):
    path, tensors = _saved(tmp_path)
    loaded = load_autoencoder(path, TINY_CONFIG)
    for key, arr in checkpoint_tensors(loaded).items():
        np.testing.assert_array_equal(arr, tensors[key], err_msg=key)


def test_corrupt_files_are_one_line_errors(tmp_path):
    path, _ = _saved(tmp_path)
    data = path.read_bytes()
    for name, content in (
        ("garbage", b"not a safetensors file at all"),
        ("truncated", data[: len(data) // 2]),
    ):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(ParamsError) as err:
            load_autoencoder(bad, TINY_CONFIG)
        assert str(bad) in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(FileNotFoundError, match="no autoencoder weight file"):
        load_autoencoder(tmp_path / "absent.safetensors", TINY_CONFIG)


def test_mismatched_file_lists_every_problem_in_one_error(tmp_path):
    from safetensors.numpy import save_file

    _, tensors = _saved(tmp_path)
    del tensors["decoder.conv_out.bias"]
    tensors["encoder.extra.weight"] = np.zeros(2, np.float32)
    tensors["quant_conv.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    path = tmp_path / "mismatched.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ParamsError) as err:
        load_autoencoder(path, TINY_CONFIG)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "nothing was loaded" in msg
    for part in ("missing decoder.conv_out.bias (3,)", "unexpected encoder.extra.weight (2,)",
                 "quant_conv.weight: shape (8, 8, 3, 3), expected (8, 8, 1, 1)"):  # fmt: skip
        assert part in msg, msg


def test_wrong_preset_and_non_finite_values(tmp_path):
    from safetensors.numpy import save_file

    path, tensors = _saved(tmp_path)
    with pytest.raises(
        ParamsError,
        match=r"not match autoencoder 'sd-vae'.*conv_in.weight: shape \(64, 4, 3, 3\), expected \(512, 4, 3, 3\)",
    ):
        load_autoencoder(path, "sd-vae")
    tensors["encoder.conv_in.bias"][0] = np.nan
    save_file(tensors, str(path))
    with pytest.raises(ParamsError, match=r"encoder.conv_in.bias has 1 non-finite values"):
        load_autoencoder(path, TINY_CONFIG)
    save_file({"model.weight": np.zeros(2, np.float32)}, str(path))
    with pytest.raises(ParamsError, match="is not an autoencoder checkpoint"):
        load_autoencoder(path, TINY_CONFIG)


def test_diffusers_directory_with_config_json(tmp_path):
    """A diffusers ``vae/`` folder (save_pretrained) loads with its config.json; the preset name is
    kept when the config is a released one."""
    torch_model = torch_vae("AutoencoderKL", tmp_path / "unused.safetensors", latent_channels=4)
    torch_model.save_pretrained(tmp_path / "vae")
    ae = load_autoencoder(tmp_path / "vae")
    assert ae.config.block_out_channels == (32, 64) and ae.config.scaling_factor == 0.18215
    import json

    (tmp_path / "vae" / "config.json").write_text(
        json.dumps({**dict(torch_model.config), **_sd_vae_diffusers()})
    )
    with pytest.raises(ParamsError, match="does not match autoencoder 'sd-vae'"):
        load_autoencoder(tmp_path / "vae")


def _sd_vae_diffusers() -> dict:
    return {"block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "layers_per_block": 2,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}  # fmt: skip


def test_latents_of_an_example_do_not_depend_on_its_batch():
    """GroupNorm statistics are per example: an image's latents in a batch of 4 equal its own."""
    ae = quick_autoencoder(TINY_CONFIG)
    encode = nnx.jit(lambda m, x: m.encode(x))
    images = smooth_images(4)
    four, alone = encode(ae, images), encode(ae, images[2:3])
    assert four.shape == (4, 8, 8, 4) and float(jnp.abs(four[2] - four[1]).max()) > 1e-3  # different images
    np.testing.assert_allclose(four[2], alone[0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- latent data pipeline


class _Images:
    """A tiny source: ``image`` (16, 16, 3) smooth waves in [-1, 1], ``label``; index 3 is bad."""

    def __init__(self, n: int = 5, bad: int | None = None):
        from data_pipelines.base import Field

        self.n, self.bad, self.images = n, bad, smooth_images(n)
        self.schema = {"image": Field((16, 16, 3), "float32"), "label": Field((), "int32")}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        from data_pipelines.base import BadSampleError

        if i == self.bad:
            raise BadSampleError(f"img{i}", "unreadable")
        return {"image": self.images[i], "label": np.int32(i)}

    def where(self, i):
        return f"img{i}"


def test_prepare_writes_latents_and_the_autoencoder_record(tmp_path):
    from data_pipelines import latents
    from selfflow.autoencoders.latents import EncodedSource, autoencoder_for_manifest, manifest_entry
    from selfflow.errors import ConfigError

    weights, _ = _saved(tmp_path)
    ae = load_autoencoder(weights, TINY_CONFIG)
    source = _Images(5, bad=3)
    encoded = EncodedSource(source, ae, batch_size=2)
    assert encoded.schema["image"].shape == (8, 8, 4)
    manifest = latents.prepare(
        encoded,
        tmp_path / "lat",
        name="tiny",
        modality="image",
        shard_size=2,
        on_bad_sample="skip",
        autoencoder=manifest_entry(ae, weights),
    )
    record = manifest["autoencoder"]
    assert (record["name"], record["scaling_factor"], record["model_channels"]) == ("tiny", 1.0, 4)
    assert record["weights"] == str(weights.absolute()) and manifest["num_skipped"] == 1
    read = latents.LatentSource(tmp_path / "lat")
    want = np.asarray(ae.encode(source.images))
    for j, i in enumerate((0, 1, 2, 4)):
        np.testing.assert_allclose(read[j]["image"], want[i], rtol=1e-5, atol=1e-6)
        assert int(read[j]["label"]) == i

    again = autoencoder_for_manifest(tmp_path / "lat")  # the recorded weights file
    np.testing.assert_array_equal(again.decode(read[0]["image"][None]), ae.decode(read[0]["image"][None]))
    with pytest.raises(
        ConfigError, match=r"written by autoencoder 'tiny', refusing to decode them with 'flux1'"
    ) as err:
        autoencoder_for_manifest(tmp_path / "lat", expect="flux1")
    assert "\n" not in str(err.value)


def test_cli_prepare_encode_then_decode_refuses_another_autoencoder(tmp_path, monkeypatch, capsys):
    import dataclasses
    import json

    from selfflow import cli
    from selfflow.autoencoders.latents import run_autoencoder
    from selfflow.errors import ConfigError

    tiny_sd = dataclasses.replace(TINY_CONFIG, name="sd-vae", scaling_factor=0.18215)
    monkeypatch.setitem(PRESETS, "sd-vae", tiny_sd)
    weights, _ = _saved(tmp_path, tiny_sd)
    out = tmp_path / "lat"
    argv = ["prepare", "shapes", "--out", str(out), "--limit", "3", "--set", "data.image_size=16"]
    rc = cli.main([*argv, "--encode", "sd-vae", "--weights", str(weights), "--encode-batch", "2"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema"]["image"]["shape"] == [8, 8, 4]
    assert (manifest["autoencoder"]["name"], manifest["autoencoder"]["scaling_factor"]) == ("sd-vae", 0.18215)
    assert run_autoencoder([out]).config == tiny_sd
    with pytest.raises(ConfigError, match="written by autoencoder 'sd-vae', refusing .* with 'flux1'"):
        run_autoencoder([out], name="flux1")
    assert run_autoencoder([]) is None
    # weights of another architecture, and --encode without --weights: one-line errors
    assert cli.main([*argv, "--encode", "flux1", "--weights", str(weights)]) == 1
    assert cli.main([*argv, "--encode", "sd-vae"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("selfflow: error")]
    assert len(err) == 2 and "does not match autoencoder 'flux1'" in err[0] and "--weights" in err[1], err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd-vae", "flux1", "flux2"])
def test_published_configs_parity(tmp_path, name):
    """The released architectures (random weights, 32 px) against diffusers: ~1 min each on 2 cores."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    cfg = PRESETS[name]
    torch.manual_seed(0)
    kw = dict(latent_channels=cfg.latent_channels, use_quant_conv=cfg.use_quant_conv, layers_per_block=2)
    kw.update(use_post_quant_conv=cfg.use_post_quant_conv, block_out_channels=cfg.block_out_channels)
    kw.update(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    model = (diffusers.AutoencoderKLFlux2 if name == "flux2" else diffusers.AutoencoderKL)(**kw).eval()
    if name == "flux2":
        with torch.no_grad():
            model.bn.running_mean.normal_()
            model.bn.running_var.uniform_(0.5, 1.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    ae = load_autoencoder(tmp_path / "vae.safetensors", name)
    enc_err, dec_err, _ = _parity(model, ae, smooth_images(1, 32))
    assert enc_err <= TOL and dec_err <= TOL, (enc_err, dec_err)


def test_image_decoder_for_fid_samples_and_latent_decoder():
    from selfflow.autoencoders.latents import image_decoder, latent_decoder
    from selfflow.errors import ConfigError

    ae = quick_autoencoder(TINY_CONFIG)
    latents = np.asarray(ae.encode(smooth_images(3)))
    tokens = latents.reshape(3, 64, 4)
    decode = image_decoder(ae, lambda t: np.asarray(t).reshape(-1, 8, 8, 4), latent_shape=(8, 8, 4), batch=2)
    images = decode(tokens)
    pixels = np.asarray(ae.decode(latents))
    assert images.dtype == np.uint8 and images.shape == (3, 16, 16, 3)
    np.testing.assert_allclose(images, (np.clip((pixels + 1) / 2, 0, 1) * 255).astype(np.uint8), atol=1)
    np.testing.assert_allclose(latent_decoder(ae, batch=2)(latents), np.clip(pixels, -1, 1), atol=1e-5)
    with pytest.raises(ConfigError, match="the model makes 16-channel latents; autoencoder 'tiny' decodes 4"):
        image_decoder(ae, lambda t: t, latent_shape=(8, 8, 16))


def test_throughput_report():
    from selfflow.autoencoders.bench import autoencoder_throughput, format_throughput, placeholder_autoencoder

    ae = placeholder_autoencoder(dataclasses_replace(TINY_CONFIG, patch_size=2))
    assert float(ae.bn.running_var[0]) == 1.0 and float(
        ae.encoder.conv_in.kernel[0, 0, 0, 0]
    ) == pytest.approx(0.01)
    r = autoencoder_throughput(ae, batch=2, size=16, rounds=1)
    assert r["encode_images_per_s"] > 0 and r["decode_images_per_s"] > 0
    assert format_throughput(r).startswith("autoencoder tiny (2 x 16px): encode ")
    with pytest.raises(ValueError, match="multiple of 4"):
        autoencoder_throughput(ae, size=18)


def test_prepare_resumes_after_its_last_complete_shard(tmp_path):
    from data_pipelines import latents
    from selfflow.autoencoders.latents import EncodedSource, manifest_entry

    weights, _ = _saved(tmp_path)
    ae = load_autoencoder(weights, TINY_CONFIG)

    class Flaky(_Images):
        """Fails at index ``fail_at`` (an interruption, not a bad sample); counts reads."""

        fail_at, reads = None, []

        def __getitem__(self, i):
            Flaky.reads.append(i)
            if i == Flaky.fail_at:
                raise RuntimeError("interrupted")
            return super().__getitem__(i)

        def __repr__(self):
            return "Flaky()"

    def run():
        src = EncodedSource(Flaky(7), ae, batch_size=2)
        return latents.prepare(src, tmp_path / "lat", name="t", modality="image", shard_size=3,
                               autoencoder=manifest_entry(ae, weights), resume=True)  # fmt: skip

    Flaky.fail_at = 5
    with pytest.raises(RuntimeError, match="interrupted"):
        run()
    assert (tmp_path / "lat" / ".t.progress.json").is_file() and not (
        tmp_path / "lat" / "manifest.json"
    ).exists()
    Flaky.fail_at, Flaky.reads = None, []
    manifest = run()
    assert min(Flaky.reads) == 2  # the batch of index 3 (the first after the complete shard 0..2)
    assert manifest["count"] == 7 and [s["count"] for s in manifest["shards"]] == [3, 3, 1]
    assert not (tmp_path / "lat" / ".t.progress.json").exists()
    read = latents.LatentSource(tmp_path / "lat")
    want = np.asarray(ae.encode(smooth_images(7)))
    np.testing.assert_allclose(np.stack([read[i]["image"] for i in range(7)]), want, rtol=1e-5, atol=1e-6)


def test_cli_prepare_encode_with_repa_features_from_the_pixels(tmp_path, monkeypatch):
    """--features next to --encode: the features come from the pixels, on the latents' token grid."""
    import dataclasses
    import json

    from data_pipelines import latents
    from selfflow import cli
    from selfflow.encoders import registry

    class PixelMeans(nnx.Module):
        """(B, 16, 16, 3) -> (B, 4, 4, 3): each 4x4 patch's mean colour."""

        def __call__(self, x):
            return x.reshape(x.shape[0], 4, 4, 4, 4, 3).mean(axis=(2, 4))

    registry.register_encoder("ae_test_pixel_means", lambda arg: PixelMeans())
    tiny_sd = dataclasses.replace(TINY_CONFIG, name="sd-vae", scaling_factor=0.18215)
    monkeypatch.setitem(PRESETS, "sd-vae", tiny_sd)
    weights, _ = _saved(tmp_path, tiny_sd)
    out = tmp_path / "lat"
    argv = ["prepare", "shapes", "--out", str(out), "--limit", "2", "--set", "data.image_size=16"]
    argv += ["model.patch_size=2", "--encode", "sd-vae", "--weights", str(weights)]
    assert cli.main([*argv, "--features", "ae_test_pixel_means:"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema"]["image"]["shape"] == [8, 8, 4]  # latents
    assert manifest["schema"]["encoder_features"]["shape"] == [4, 4, 3]  # grid 8 / patch 2
    assert "FeatureWriter" in manifest["source"] and "sd-vae" in manifest["source"]
    from data_pipelines import sources
    from selfflow.config import Config, SourceConfig, apply_overrides, validate

    cfg = validate(apply_overrides(Config(), ["data.image_size=16"]))
    pixels = sources.build(SourceConfig(name="shapes", kind="shapes"), cfg.data, cfg.seed)[1]["image"]
    example = latents.LatentSource(out)[1]
    np.testing.assert_allclose(
        example["encoder_features"], PixelMeans()(pixels[None])[0], rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow
def test_latent_run_samples_and_fid_samples_decode_with_the_manifests_autoencoder(tmp_path, monkeypatch):
    """prepare --encode -> train 2 steps on the latents -> `sample` writes decoded PNGs and
    `fid-samples` uint8 images of the pixel size; another autoencoder is refused (exit 2)."""
    import dataclasses

    from selfflow import cli
    from selfflow.config import SourceConfig

    from helpers_config import tiny_image_config
    from helpers_train import run

    tiny_sd = dataclasses.replace(TINY_CONFIG, name="sd-vae", scaling_factor=0.18215)
    monkeypatch.setitem(PRESETS, "sd-vae", tiny_sd)
    weights, _ = _saved(tmp_path, tiny_sd)
    lat = tmp_path / "lat"
    argv = ["prepare", "shapes", "--out", str(lat), "--limit", "16", "--set", "data.image_size=16"]
    assert cli.main([*argv, "--encode", "sd-vae", "--weights", str(weights)]) == 0
    cfg = tiny_image_config(
        data=dict(image_size=8, sources=(SourceConfig("lat", "latents", path=str(lat)),)),
        train=dict(steps=2, checkpoint_every=2, log_every=1),
    )
    run(cfg, tmp_path / "run")
    assert cli.main(["sample", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "s")]) == 0
    from PIL import Image

    png = next((tmp_path / "s").rglob("*.png"))
    assert Image.open(png).size[0] % 16 == 0  # a grid of 16 px decoded images, not 8 px latents
    fid = [
        "fid-samples",
        "--run-dir",
        str(tmp_path / "run"),
        "--num",
        "2",
        "--batch-size",
        "2",
        "--steps",
        "2",
    ]
    assert cli.main([*fid, "--out", str(tmp_path / "f.npz")]) == 0
    images = np.load(tmp_path / "f.npz")["arr_0"]
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert cli.main([*fid, "--out", str(tmp_path / "g.npz"), "--autoencoder", "flux1"]) == 2


# --------------------------------------------------------------------------- WAN 2.1 video autoencoder


@pytest.mark.parametrize(
    "version, config, size",
    [
        ("2.1", dict(base_dim=8), 16),
        ("2.2", dict(base_dim=8, decoder_base_dim=12, is_residual=True, in_channels=12, out_channels=12,
                     patch_size=2, scale_factor_spatial=16), 32),
    ],
)  # fmt: skip
def test_wan_parity_with_diffusers_chunked_cache(tmp_path, version, config, size):
    """One pass over the clip equals diffusers' chunked encode (1 + 4 + 4 frames) and frame-by-frame
    decode with its feature cache (WAN 2.2: also the pooled/duplicated shortcuts and 2x2 patches);
    normalised latents use the config's latents_mean/std."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    from selfflow.autoencoders.wan import WanConfig, load_wan

    torch.manual_seed(0)
    stats = dict(latents_mean=[0.1, 0.2, -0.1, 0.0], latents_std=[1.5, 2.0, 0.5, 1.0])
    model = diffusers.AutoencoderKLWan(z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, **config, **stats)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_file(
        {k: v.contiguous() for k, v in model.eval().state_dict().items()}, str(tmp_path / "wan.safetensors")
    )
    ae = load_wan(tmp_path / "wan.safetensors", WanConfig.from_diffusers(dict(model.config)))
    assert (ae.config.is_residual, ae.config.patch_size) == ((True, 2) if version == "2.2" else (False, 1))
    waves = smooth_images(1, size)[0]
    frames = np.stack([waves * np.float32(np.cos(0.3 * t)) for t in range(9)])[None]  # (1, 9, S, S, 3)
    video = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 4, 1, 2, 3)))
    with torch.no_grad():
        mean = model.encode(video).latent_dist.mean
        decoded = model.decode(mean).sample
    to_ndhwc = lambda t: t.permute(0, 2, 3, 4, 1).numpy()
    mu, sigma = np.float32(stats["latents_mean"]), np.float32(stats["latents_std"])
    latents = np.asarray(nnx.jit(lambda m, x: m.encode(x))(ae, frames))  # normalised
    assert latents.shape == (1, 3, 2, 2, 4)
    assert rel_err(latents * sigma + mu, to_ndhwc(mean)) <= TOL
    out = np.asarray(nnx.jit(lambda m, z: m.decode(z))(ae, (to_ndhwc(mean) - mu) / sigma))
    assert out.shape == (1, 9, size, size, 3) and rel_err(out, to_ndhwc(decoded)) <= TOL


def test_wan_errors(tmp_path):
    from safetensors.numpy import save_file

    from selfflow.autoencoders.wan import WanAutoencoder, WanConfig, expected_file_shapes, load_wan

    cfg = WanConfig(base_dim=8, z_dim=4, dim_mult=(1, 2), num_res_blocks=1, temporal_downsample=(True,))
    shapes = expected_file_shapes(cfg)
    assert shapes["encoder.conv_in.weight"] == (8, 3, 3, 3, 3)
    assert shapes["encoder.down_blocks.1.time_conv.weight"] == (8, 8, 3, 1, 1)
    assert shapes["decoder.up_blocks.0.upsamplers.0.time_conv.weight"] == (32, 16, 3, 1, 1)
    assert shapes["encoder.mid_block.attentions.0.norm.gamma"] == (16, 1, 1)
    tensors = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    del tensors["decoder.conv_out.bias"]
    save_file(tensors, str(tmp_path / "w.safetensors"))
    with pytest.raises(ParamsError, match=r"missing decoder.conv_out.bias \(3,\)") as err:
        load_wan(tmp_path / "w.safetensors", cfg)
    assert "\n" not in str(err.value) and "w.safetensors" in str(err.value)
    with pytest.raises(
        ValueError, match=r"unsupported AutoencoderKLWan config .*patch_size=4; in_channels=12"
    ):
        WanConfig.from_diffusers({"patch_size": 4, "in_channels": 12})
    ae = nnx.eval_shape(lambda: WanAutoencoder(cfg))
    with pytest.raises(ValueError, match=r"videos must be \(B, T, H, W, 3\) with T = 1 \+ 2k"):
        ae.encode_raw(np.zeros((1, 5, 16, 16, 1), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(1, 4, 16, 16, 3\)"):
        ae.encode_raw(np.zeros((1, 4, 16, 16, 3), np.float32))


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [{}, dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
              patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)],
    ids=["wan2.1", "wan2.2"],
)  # fmt: skip
def test_wan_published_config_parity(tmp_path, config):
    """The released architectures (WAN 2.1: base 96, 16 channels; WAN 2.2 TI2V: base 160/256, 48
    channels, 2x2 patches; random weights) on 5 frames of 32 px."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    from selfflow.autoencoders.wan import load_wan

    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(**config).eval()
    model.save_pretrained(tmp_path / "vae")  # config.json beside the weights
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "vae" / "w.safetensors")
    )
    ae = load_wan(tmp_path / "vae" / "w.safetensors")
    assert ae.config.z_dim == config.get("z_dim", 16) and len(ae.config.latents_mean) == ae.config.z_dim
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        mean = model.encode(video).latent_dist.mean
        decoded = model.decode(mean).sample
    to_ndhwc = lambda t: t.permute(0, 2, 3, 4, 1).numpy()
    assert rel_err(nnx.jit(lambda m, x: m.encode_raw(x))(ae, to_ndhwc(video)), to_ndhwc(mean)) <= TOL
    assert rel_err(nnx.jit(lambda m, z: m.decode_raw(z))(ae, to_ndhwc(mean)), to_ndhwc(decoded)) <= TOL
