"""``selfflow prepare`` in parts (``--process-index I --process-count N``) and with flipped copies
(``--flip-copy``): the parts read back as one source with the records of a one-part prepare, a
part resumes on its own, missing or mismatched parts are one-line errors, flipped latents are the
encoding of the mirrored image, and the reader's seeded choice between the two copies."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from flax import nnx

from data_pipelines import latents
from data_pipelines.base import Field, SourceError
from data_pipelines.latents import LatentSource, prepare, read_manifest
from selfflow.autoencoders import PRESETS, Autoencoder, AutoencoderConfig, checkpoint_tensors

from helpers_cli import run_cli
from helpers_weights import random_weights

TINY = AutoencoderConfig("sd-vae", block_out_channels=(32, 64), layers_per_block=1, norm_groups=8)
SHAPES = ["shapes", "--set", "data.image_size=16"]


class Arrays:
    """``n`` examples: ``image`` (4, 4, 3) float32 filled with ``i``, ``label`` i; optionally
    ``image_flipped`` filled with ``-1 - i`` (a stand-in for flipped latents)."""

    def __init__(self, n: int, flipped: bool = False, shape=(4, 4, 3), fail_at=None):
        self.n, self.flipped, self.shape, self.fail_at, self.reads = n, flipped, shape, fail_at, []
        self.schema = {"image": Field(shape, "float32"), "label": Field((), "int32")}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads.append(i)
        if i == self.fail_at:
            raise RuntimeError("interrupted")
        out = {"image": np.full(self.shape, i, np.float32), "label": np.int32(i)}
        if self.flipped:
            out["image_flipped"] = np.full(self.shape, -1 - i, np.float32)
        return out

    def __repr__(self):
        return f"Arrays({self.n}, shape={self.shape})"


def records(directory) -> list[bytes]:
    """The raw records of a prepared directory, in example order, straight from its shards."""
    import grain

    files = [directory / s["file"] for s in read_manifest(directory)["shards"]]
    data = grain.sources.ArrayRecordDataSource([str(f) for f in files])
    return [data[i] for i in range(len(data))]


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("selfflow: error")]


def tiny_autoencoder(seed: int = 1) -> Autoencoder:
    """TINY with random weights (:func:`helpers_weights.random_weights`)."""
    return random_weights(lambda: Autoencoder(TINY, rngs=nnx.Rngs(0)), seed)


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """A safetensors file of :func:`tiny_autoencoder`, installed as the "sd-vae" preset."""
    from safetensors.numpy import save_file

    monkeypatch.setitem(PRESETS, "sd-vae", TINY)
    path = tmp_path / "ae.safetensors"
    save_file(checkpoint_tensors(tiny_autoencoder()), str(path))
    return path


def shapes_pixels(count: int) -> np.ndarray:
    """The pixels (count, 16, 16, 3) of the ``shapes`` source that the CLI tests prepare."""
    from data_pipelines import sources
    from selfflow.config import Config, SourceConfig, apply_overrides, validate

    cfg = validate(apply_overrides(Config(), ["data.image_size=16"]))
    source = sources.build(SourceConfig(name="shapes", kind="shapes"), cfg.data, cfg.seed)
    return np.stack([source[i]["image"] for i in range(count)])


# ----------------------------------------------------------------------------- parts


def test_one_part_and_three_parts_give_the_same_records_in_order(tmp_path):
    one, three = tmp_path / "one", tmp_path / "three"
    code, _, err = run_cli("prepare", *SHAPES, "--limit", 7, "--shard-size", 2, "--out", one)
    assert code == 0, err
    for i in range(3):
        code, out, err = run_cli(
            "prepare", *SHAPES, "--limit", 7, "--shard-size", 2, "--out", three,
            "--process-index", i, "--process-count", 3,
        )  # fmt: skip
        assert code == 0, err
        assert f"part {i} of 3" in out and f"part-0000{i}-of-00003" in out
    # one part: today's flat layout; three: a directory each, with its own manifest and range
    assert (one / "manifest.json").is_file() and not list(one.glob("part-*"))
    assert not (three / "manifest.json").exists()
    ranges = [
        json.loads((three / latents.part_dir(i, 3) / "manifest.json").read_text())["part"] for i in range(3)
    ]
    assert [(r["start"], r["stop"], r["total"]) for r in ranges] == [(0, 2, 7), (2, 4, 7), (4, 7, 7)]

    assert records(three) == records(one) and len(records(one)) == 7  # the same bytes, in order
    a, b = LatentSource(one), LatentSource(three)
    assert len(b) == 7 and b.schema == a.schema
    assert [int(b[i]["label"]) for i in range(7)] == [int(a[i]["label"]) for i in range(7)]
    combined = read_manifest(three)
    assert combined["count"] == 7 and combined["parts"] == [latents.part_dir(i, 3) for i in range(3)]
    assert "part-00002-of-00003/" in b.where(6)


def test_an_interrupted_part_resumes_alone_and_exactly(tmp_path):
    out, whole = tmp_path / "parts", tmp_path / "whole"
    prepare(Arrays(9), whole, name="a", modality="image", shard_size=2)
    for i in (0, 2):
        prepare(Arrays(9), out, name="a", modality="image", shard_size=2, part=(i, 3), resume=True)
    others = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("part-0000[02]*/*")}

    flaky = Arrays(9, fail_at=5)  # part 1 is examples 3..5: shard [3, 4] completes, then it stops
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare(flaky, out, name="a", modality="image", shard_size=2, part=(1, 3), resume=True)
    assert (out / "part-00001-of-00003" / ".a.progress.json").is_file()
    with pytest.raises(SourceError) as excinfo:
        LatentSource(out)
    message = one_line_error(excinfo)
    assert "part 1 of 3 is incomplete" in message and "--process-index 1 --process-count 3" in message

    again = Arrays(9)
    manifest = prepare(again, out, name="a", modality="image", shard_size=2, part=(1, 3), resume=True)
    assert again.reads == [5]  # only what the complete shard did not hold
    assert [s["count"] for s in manifest["shards"]] == [2, 1] and manifest["count"] == 3
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("part-0000[02]*/*")} == others
    assert records(out) == records(whole)


def test_missing_and_mismatched_parts_are_one_line_errors(tmp_path):
    out = tmp_path / "parts"
    for i in (0, 2):
        prepare(Arrays(9), out, name="a", modality="image", part=(i, 3))
    with pytest.raises(SourceError) as excinfo:
        LatentSource(out)
    message = one_line_error(excinfo)
    assert (
        "part part-00001-of-00003 is missing" in message and "--process-index 1 --process-count 3" in message
    )

    prepare(Arrays(9, shape=(2, 2, 3)), out, name="a", modality="image", part=(1, 3))  # other images
    with pytest.raises(SourceError) as excinfo:
        LatentSource(out)
    message = one_line_error(excinfo)
    assert "part-00001-of-00003 and part-00000-of-00003 were written with different settings" in message
    assert "schema" in message and "Arrays(9, shape=(2, 2, 3))" in message

    prepare(Arrays(10), out, name="a", modality="image", part=(1, 3))  # another example count
    with pytest.raises(SourceError, match=r"part total 10 vs 9") as excinfo:
        LatentSource(out)
    one_line_error(excinfo)

    prepare(Arrays(9), out, name="a", modality="image", part=(1, 4))  # a stale split beside
    with pytest.raises(
        SourceError, match=r"two different splits, part-00000-of-00003 and part-00001-of-00004"
    ):
        LatentSource(out)
    with pytest.raises(ValueError, match="a part would be empty"):
        prepare(Arrays(2), tmp_path / "small", name="a", modality="image", part=(0, 3))


# ----------------------------------------------------------------------------- flipped copies


def test_flipped_latents_are_the_encoding_of_the_mirrored_image(tmp_path, weights):
    from selfflow.autoencoders.latents import EncodedSource, load_named, manifest_entry

    ae = load_named(weights, "sd-vae")
    pixels = np.stack([shapes_pixels(5)[i] * (1 - 0.1 * i) for i in range(5)]).astype(np.float32)

    class Images(Arrays):
        def __getitem__(self, i):
            return {"image": pixels[i], "label": np.int32(i)}

    source = Images(5, shape=(16, 16, 3))
    encoded = EncodedSource(source, ae, batch_size=2, flip_copy=True)
    assert encoded.schema["image_flipped"] == encoded.schema["image"] == Field((8, 8, 4), "float32")
    manifest = prepare(encoded, tmp_path / "lat", name="t", modality="image", shard_size=2,
                       autoencoder=manifest_entry(ae, weights), flipped=True)  # fmt: skip
    assert manifest["flipped"] == {"image": "image_flipped"} and "flip_copy" in manifest["source"]

    plain, mirrored = np.asarray(ae.encode(pixels)), np.asarray(ae.encode(pixels[:, :, ::-1]))
    assert np.abs(plain - mirrored).max() > 1e-2  # the two copies differ
    read = LatentSource(tmp_path / "lat")
    assert len(read) == 10 and "image_flipped" not in read.schema
    for j in range(10):
        example, i = read[j], j % 5
        assert set(example) == {"image", "label"} and int(example["label"]) == i
        want = mirrored[i] if read.flipped_at(j) else plain[i]
        np.testing.assert_allclose(example["image"], want, rtol=1e-5, atol=1e-6)
        assert read.flipped_at(j) != read.flipped_at((j + 5) % 10)  # each copy once per 2 * count
    originals = LatentSource(tmp_path / "lat", flip=False)
    assert len(originals) == 5 and not any(originals.flipped_at(i) for i in range(5))
    np.testing.assert_allclose(
        np.stack([originals[i]["image"] for i in range(5)]), plain, rtol=1e-5, atol=1e-6
    )


def test_the_flip_choice_is_seeded_and_the_model_never_sees_the_copy(tmp_path):
    from data_pipelines import loader, sources
    from selfflow.config import Config, SourceConfig

    n = 400
    prepare(
        Arrays(n, flipped=True), tmp_path / "lat", name="a", modality="image", shard_size=64, flipped=True
    )

    def shown(source) -> list[bool]:  # True where index j yields the flipped copy
        return [bool(source[j]["image"][0, 0, 0] < 0) for j in range(n)]

    a, b, c = (LatentSource(tmp_path / "lat", seed=s) for s in (0, 0, 1))
    assert shown(a) == [a.flipped_at(j) for j in range(n)]  # the copy is what flipped_at says
    assert shown(a) == shown(b) != shown(c)  # same seed, same choice; another seed, another
    assert 0.4 < np.mean(shown(a)) < 0.6 and 0.4 < np.mean(shown(c)) < 0.6  # about half each
    assert [a.flipped_at(j + n) for j in range(n)] == [not f for f in shown(a)]  # the other half

    def stream(seed):  # 2 * n draws of the loader: one epoch of the 2 * n indices
        ds = loader.example_stream(LatentSource(tmp_path / "lat", seed=seed), seed=7, shard=(0, 1))
        return [ds[k] for k in range(2 * n)]

    draws = stream(0)
    assert all(set(d) == {"image", "label", "skipped"} for d in draws)  # never "image_flipped"
    values = sorted(float(d["image"][0, 0, 0]) for d in draws)
    assert values == sorted([*range(n), *(-1 - i for i in range(n))])  # each example once each way
    assert [float(d["image"][0, 0, 0]) for d in stream(0)] == [float(d["image"][0, 0, 0]) for d in draws]

    built = sources.build(
        SourceConfig(name="a", kind="latents", path=str(tmp_path / "lat")), Config().data, 0
    )
    assert "image_flipped" not in built.schema and set(built[3]) == {"image", "label"}


def test_cli_flip_copy_stores_flipped_features_in_parts(tmp_path, weights):
    """--flip-copy with --features over two parts: the flipped copy's REPA features are those of
    the mirrored pixels, its latents the mirrored image's."""
    from selfflow.autoencoders.latents import load_named, run_autoencoder
    from selfflow.encoders import registry

    class PixelMeans(nnx.Module):
        """(B, 16, 16, 3) -> (B, 4, 4, 3): each 4x4 patch's mean colour (not mirror-symmetric)."""

        def __call__(self, x):
            return x.reshape(x.shape[0], 4, 4, 4, 4, 3).mean(axis=(2, 4))

    registry.register_encoder("parts_test_pixel_means", lambda arg: PixelMeans())
    out = tmp_path / "lat"
    for i in range(2):
        code, _, err = run_cli(
            "prepare", *SHAPES, "model.patch_size=2", "--limit", 4, "--out", out, "--encode", "sd-vae",
            "--weights", weights, "--encode-batch", 2, "--features", "parts_test_pixel_means:", "--flip-copy",
            "--process-index", i, "--process-count", 2,
        )  # fmt: skip
        assert code == 0, err
    manifest = read_manifest(out)
    assert run_autoencoder([out]).config == TINY  # sample/train find the parts' autoencoder
    assert manifest["flipped"] == {"image": "image_flipped", "encoder_features": "encoder_features_flipped"}
    pixels, ae = shapes_pixels(4), load_named(weights, "sd-vae")
    read = LatentSource(out)
    assert len(read) == 8 and set(read.schema) == {"image", "label", "encoder_features"}
    for j in range(8):
        image = pixels[j % 4][:, ::-1] if read.flipped_at(j) else pixels[j % 4]
        example = read[j]
        np.testing.assert_allclose(
            example["encoder_features"], PixelMeans()(image[None])[0], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(example["image"], ae.encode(image[None])[0], rtol=1e-5, atol=1e-6)


def test_bad_flag_combinations_exit_2(tmp_path, capsys):
    from selfflow.autoencoders.latents import EncodedSource
    from selfflow.autoencoders.wan import WAN_PRESETS
    from selfflow.errors import ConfigError

    out = tmp_path / "lat"
    cases = [
        (["--flip-copy"], "--flip-copy needs --encode NAME --weights FILE"),
        (["--process-index", 1], "--process-index I and --process-count N go together"),
        (["--process-index", 3, "--process-count", 3], "expected 0 <= I < N"),
        (["--process-index", 0, "--process-count", 0], "expected 0 <= I < N"),
        (["--process-index", 0, "--process-count", 5], "--process-count 5 exceeds the 4 examples"),
        (
            ["--flip-copy", "--encode", "wan2.1", "--weights", tmp_path / "none"],
            "flipped copies are for images",
        ),
    ]
    for flags, message in cases:
        code, _, err = run_cli("prepare", *SHAPES, "--limit", 4, "--out", out, *flags)
        assert code == 2 and len(errors(err)) == 1 and message in err, (flags, err)
    assert not out.exists()  # refused before anything was written

    video_ae = types.SimpleNamespace(config=WAN_PRESETS["wan2.1"])
    with pytest.raises(ConfigError, match="'wan2.1' encodes videos") as excinfo:
        EncodedSource(Arrays(2), video_ae, flip_copy=True)
    one_line_error(excinfo)
