"""FID sample files: streaming .npz writer, resumable generation, pixel and SD-VAE decoders."""

import sys
import types
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from modalities.image import detokenize, tokenize
from selfflow.fid_samples import NpzWriter, generate_npz, pixel_decoder, sd_vae_decoder

# 4×4 RGB images as 4 tokens of 2×2 patches; class 0 bright, class 1 dark, null class 2 grey.
TOKENS, DIM, NULL = 4, 12, 2
LEVELS = jnp.array([0.7, -0.7, 0.0])


def velocity(x, tau, labels):
    """Exact velocity for data = one constant image per class: v = (x − x*)/τ."""
    return (x - LEVELS[labels][:, None, None]) / tau[:, None, None]


DECODE = pixel_decoder(lambda t: detokenize(t, 4, 4, 2))


def generate(out, decode=DECODE, **kw):
    args = dict(
        out=out,
        num=7,
        batch_size=3,
        token_shape=(TOKENS, DIM),
        num_classes=2,
        null_class=NULL,
        decode=decode,
        seed=0,
        steps=12,
    )
    return generate_npz(velocity, **{**args, **kw})


def test_streamed_npz_equals_np_savez(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3, 3), dtype=np.uint8)
    labels = np.arange(5, dtype=np.int32)
    with NpzWriter(tmp_path / "s.npz") as npz:
        with npz.member("arr_0", images.shape, np.uint8) as m:
            for i in range(0, 5, 2):  # blocks of 2, 2, 1 rows
                m.write(images[i : i + 2])
        npz.add("arr_1", labels)
    np.savez(tmp_path / "ref.npz", images, labels)
    with np.load(tmp_path / "s.npz") as ours:
        assert ours["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(ours["arr_0"], images)
        np.testing.assert_array_equal(ours["arr_1"], labels)
    with zipfile.ZipFile(tmp_path / "s.npz") as a, zipfile.ZipFile(tmp_path / "ref.npz") as b:
        assert a.namelist() == b.namelist() == ["arr_0.npy", "arr_1.npy"]
        for name in a.namelist():  # same .npy bytes, header included
            assert a.read(name) == b.read(name)


def test_streamed_npz_refuses_a_short_member_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="2 rows written, 3 declared"):
        with NpzWriter(tmp_path / "s.npz") as npz:
            with npz.member("arr_0", (3, 2), np.uint8) as m:
                m.write(np.zeros((2, 2), np.uint8))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="exceed the declared 1"):
        with NpzWriter(tmp_path / "t.npz") as npz:
            with npz.member("arr_0", (1, 2), np.uint8) as m:
                m.write(np.zeros((2, 2), np.uint8))


def test_generate_npz_shapes_labels_and_determinism(tmp_path):
    seen = []
    out = generate(tmp_path / "a.npz", progress=lambda done, num: seen.append((done, num)))
    assert seen == [(3, 7), (6, 7), (7, 7)]
    assert not (tmp_path / "a.npz.parts").exists()
    with np.load(out) as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.shape == (7, 4, 4, 3) and images.dtype == np.uint8
    assert labels.shape == (7,) and labels.dtype == np.int32 and set(labels) == {0, 1}
    # each image is its own label's level (0.7 -> 217, −0.7 -> 38) up to the protocol's
    # residual noise of 0.04·ε (~5 grey levels): arr_1 is aligned with arr_0
    brightness = images.reshape(7, -1).mean(1)
    assert np.all(np.where(labels == 0, brightness > 190, brightness < 65)), (labels, brightness)
    generate(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(generate(tmp_path / "c.npz", seed=1)) as other:
        assert not np.array_equal(other["arr_1"], labels)


def test_interrupted_run_resumes_to_the_same_file(tmp_path):
    generate(tmp_path / "full.npz")
    calls = []

    def failing(tokens):
        calls.append(len(tokens))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return DECODE(tokens)

    with pytest.raises(RuntimeError, match="killed"):
        generate(tmp_path / "run.npz", decode=failing)
    assert sorted(p.name for p in (tmp_path / "run.npz.parts").glob("0*.npz")) == ["000000.npz", "000001.npz"]
    assert not (tmp_path / "run.npz").exists()
    with pytest.raises(ValueError, match="other settings"):  # the parts belong to seed 0
        generate(tmp_path / "run.npz", seed=5)
    calls.clear()
    generate(tmp_path / "run.npz", decode=lambda t: (calls.append(len(t)), DECODE(t))[1])
    assert calls == [3]  # only the missing batch was sampled
    assert (tmp_path / "run.npz").read_bytes() == (tmp_path / "full.npz").read_bytes()


def test_module_velocity_goes_through_nnx_jit(tmp_path):
    from flax import nnx

    class Velocity(nnx.Module):
        def __init__(self):
            self.levels = nnx.Param(LEVELS)

        def __call__(self, x, tau, labels):
            return (x - self.levels[...][labels][:, None, None]) / tau[:, None, None]

    generate(tmp_path / "plain.npz")
    args = dict(
        out=tmp_path / "module.npz",
        num=7,
        batch_size=3,
        token_shape=(TOKENS, DIM),
        num_classes=2,
        null_class=NULL,
        decode=DECODE,
        seed=0,
        steps=12,
    )
    generate_npz(Velocity(), **args)
    with np.load(tmp_path / "plain.npz") as a, np.load(tmp_path / "module.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num=0), "num must be an integer >= 1"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(steps=1), "steps must be an integer >= 2"),
        (dict(decode=lambda t: np.zeros((3, 4, 4, 3), np.float32)), r"decode must return uint8"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        generate(tmp_path / "x.npz", **kw)


def test_pixel_decoder_repeats_grayscale_to_rgb():
    decode = pixel_decoder(lambda t: detokenize(t, 2, 2, 1))
    tokens = jnp.array([[[-1.0], [0.0], [1.0], [2.0]]])  # one 2×2 grey image
    images = decode(tokens)
    assert images.dtype == np.uint8 and images.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(images[0, :, :, 0], [[0, 128], [255, 255]])
    np.testing.assert_array_equal(images[..., 0], images[..., 2])


def test_sd_vae_decoder_names_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match="pip install diffusers"):
        sd_vae_decoder("vae", lambda t: t, latent_shape=(2, 2, 4))


def test_sd_vae_decoder_scales_transposes_and_converts(monkeypatch):
    torch = pytest.importorskip("torch")
    record = {"inputs": [], "outputs": []}

    class FakeVAE(torch.nn.Module):
        def decode(self, z):  # RGB = first three latent channels, upsampled 2×
            record["inputs"].append(z.clone())
            x = (z[:, :3] * 0.18215).repeat_interleave(2, 2).repeat_interleave(2, 3)
            record["outputs"].append(x.clone())
            return types.SimpleNamespace(sample=x)

    class AutoencoderKL:
        @staticmethod
        def from_pretrained(path):
            record["path"] = path
            return FakeVAE()

    fake = types.SimpleNamespace(AutoencoderKL=AutoencoderKL)
    monkeypatch.setitem(sys.modules, "diffusers", fake)
    latents = np.random.default_rng(0).normal(0, 1.5, (5, 4, 6, 4)).astype(np.float32)  # NHWC
    decode = sd_vae_decoder(
        "some/vae", lambda t: detokenize(t, 4, 6, 2), latent_shape=(4, 6, 4), batch=2, device="cpu"
    )
    images = decode(tokenize(latents, 2))
    assert record["path"] == "some/vae"
    assert [tuple(z.shape) for z in record["inputs"]] == [(2, 4, 4, 6), (2, 4, 4, 6), (1, 4, 4, 6)]
    z = torch.cat(record["inputs"]).numpy()
    np.testing.assert_allclose(z, latents.transpose(0, 3, 1, 2) / 0.18215, rtol=1e-6)
    x = torch.cat(record["outputs"]).numpy().transpose(0, 2, 3, 1)
    assert images.dtype == np.uint8 and images.shape == (5, 8, 12, 3)
    expected = (np.clip((x + 1) / 2, 0, 1) * 255).astype(np.uint8)  # truncation, as torch's cast
    np.testing.assert_array_equal(images, expected)
    assert images.min() == 0 and images.max() == 255  # the clamp was exercised
    transposed = sd_vae_decoder(
        "some/vae", lambda t: detokenize(t, 4, 6, 2), latent_shape=(6, 4, 4), device="cpu"
    )
    with pytest.raises(ValueError, match=r"latent_shape \(6, 4, 4\)"):
        transposed(tokenize(latents, 2))
