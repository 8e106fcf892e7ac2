"""WAN video latents through ``selfflow prepare --encode wan2.1``, training and ``selfflow sample``.

A tiny random-weight autoencoder of the released WAN 2.1 shape (base 8 instead of 96, 4 latent
channels instead of 16, one residual block per level; still 4x temporal and 8x spatial) replaces the
``wan2.1`` preset, written to safetensors with :func:`selfflow.autoencoders.wan.checkpoint_tensors`.
The source is the procedural world at 5 fps for 1.8 s: clips of 9 = 1 + 4·2 frames of 16 px, so
latents are (3, 2, 2, 4). Parity of the autoencoder itself with diffusers: test_autoencoders.py.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from flax import nnx

from selfflow.autoencoders import wan
from selfflow.autoencoders.wan import WanAutoencoder, WanConfig

from helpers_weights import random_weights

TINY_WAN = WanConfig(
    "wan2.1",
    base_dim=8,
    z_dim=4,
    dim_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    latents_mean=(0.1, 0.2, -0.1, 0.0),
    latents_std=(1.5, 2.0, 0.5, 1.0),
)
WORLD = [
    "data.image_size=16",
    "data.fps=5",
    "data.clip_seconds=1.8",
    "data.num_examples=8",
    "data.num_classes=3",
    "data.source=world",
]
COUNT = 4  # clips prepared


def random_wan(config: WanConfig, seed: int = 0) -> WanAutoencoder:
    """Random weights (:func:`helpers_weights.random_weights`): kernels ~ N(0, 1/fan_in), biases
    ~ N(0, 0.1), RMS-norm gains ~ 1 + N(0, 0.1)."""
    return random_weights(lambda: WanAutoencoder(config, rngs=nnx.Rngs(0)), seed, gain="gamma")


def save_wan(path, config: WanConfig = TINY_WAN, seed: int = 0):
    from safetensors.numpy import save_file

    save_file(wan.checkpoint_tensors(random_wan(config, seed)), str(path))
    return path


def world_videos(count: int = COUNT) -> np.ndarray:
    """The first ``count`` clips of the world source prepare reads, (count, 9, 16, 16, 3)."""
    from data_pipelines import sources
    from selfflow.config import Config, SourceConfig, apply_overrides, validate

    cfg = validate(apply_overrides(Config(), WORLD))
    source = sources.build(SourceConfig(name="world", kind="world"), cfg.data, cfg.seed).select(("video",))
    return np.stack([source[i]["video"] for i in range(count)])


def errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("selfflow: error")]


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(wan.WAN_PRESETS, "wan2.1", TINY_WAN)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(latent directory, weights file): ``selfflow prepare world --encode wan2.1`` of 4 clips, 2 per
    shard and per autoencoder call."""
    from selfflow import cli

    tmp = tmp_path_factory.mktemp("wan")
    weights = save_wan(tmp / "wan.safetensors")
    out = tmp / "lat"
    argv = [
        "prepare",
        "world",
        "--out",
        str(out),
        "--limit",
        str(COUNT),
        "--shard-size",
        "2",
        "--set",
        *WORLD,
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(wan.WAN_PRESETS, "wan2.1", TINY_WAN)
        assert cli.main([*argv, "--encode", "wan2.1", "--weights", str(weights), "--encode-batch", "2"]) == 0
    return out, weights


def test_presets_are_the_released_configs():
    """wan2.1 = diffusers' AutoencoderKLWan defaults; wan2.2 = the TI2V-5B config; one mean and std
    per latent channel."""
    import inspect

    diffusers = pytest.importorskip("diffusers")
    defaults = {
        k: p.default for k, p in inspect.signature(diffusers.AutoencoderKLWan.__init__).parameters.items()
    }
    assert WanConfig.from_diffusers(defaults, name="wan2.1") == wan.WAN_PRESETS["wan2.1"]
    ti2v = dict(defaults, base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2)
    ti2v.update(in_channels=12, out_channels=12)
    ti2v.update(
        latents_mean=wan.WAN_PRESETS["wan2.2"].latents_mean, latents_std=wan.WAN_PRESETS["wan2.2"].latents_std
    )
    assert WanConfig.from_diffusers(ti2v, name="wan2.2") == wan.WAN_PRESETS["wan2.2"]
    for config in wan.WAN_PRESETS.values():
        assert len(config.latents_mean) == len(config.latents_std) == config.z_dim
    assert [(c.pixels_per_latent, c.frames_per_latent) for c in wan.WAN_PRESETS.values()] == [(8, 4), (16, 4)]


def test_prepare_encode_wan_stores_the_normalised_latents_of_each_clip(prepared):
    from data_pipelines.latents import LatentSource

    out, weights = prepared
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema"]["video"] == {"shape": [3, 2, 2, 4], "dtype": "float32"}
    assert manifest["schema"]["image"]["shape"] == [16, 16, 3]  # the world's first frame stays pixels
    assert "video" in manifest["modality"].split("+") and manifest["count"] == COUNT
    record = manifest["autoencoder"]
    assert (record["name"], record["family"], record["weights"]) == ("wan2.1", "wan", str(weights))
    assert (record["frames_per_latent"], record["pixels_per_latent"], record["model_channels"]) == (4, 8, 4)
    assert record["latents_mean"] == [0.1, 0.2, -0.1, 0.0] and record["latents_std"] == [1.5, 2.0, 0.5, 1.0]
    assert [s["count"] for s in manifest["shards"]] == [2, 2]

    source = LatentSource(out)
    stored = np.stack([source[i]["video"] for i in range(COUNT)])
    ae = wan.load_wan(weights, TINY_WAN)
    videos = world_videos()
    want = np.asarray(nnx.jit(lambda m, x: m.encode(x))(ae, videos))
    np.testing.assert_allclose(stored, want, rtol=1e-5, atol=1e-5)
    # the manifest's statistics undo the normalisation: stored * std + mean = the raw posterior mean
    raw = np.asarray(nnx.jit(lambda m, x: m.encode_raw(x))(ae, videos))
    undone = stored * np.float32(record["latents_std"]) + np.float32(record["latents_mean"])
    np.testing.assert_allclose(undone, raw, rtol=1e-5, atol=1e-5)
    assert np.abs(stored - raw).max() > 0.1  # normalised, not the raw latents


class _Clips:
    """Clips as a plain source; index ``fail_at`` raises (an interruption, not a bad sample)."""

    def __init__(self, videos, fail_at=None):
        from data_pipelines.base import Field

        self.videos, self.fail_at, self.reads = videos, fail_at, []
        self.schema = {"video": Field(videos.shape[1:], "float32"), "label": Field((), "int32")}

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, i):
        self.reads.append(i)
        if i == self.fail_at:
            raise RuntimeError("interrupted")
        return {"video": self.videos[i], "label": np.int32(i)}

    def __repr__(self):
        return "Clips()"


def test_interrupted_prepare_resumes_after_its_last_complete_shard(prepared, tmp_path):
    from data_pipelines import latents
    from selfflow.autoencoders.latents import EncodedSource, manifest_entry

    _, weights = prepared
    ae, videos = wan.load_wan(weights, TINY_WAN), world_videos()

    def run(source):
        return latents.prepare(EncodedSource(source, ae, batch_size=2), tmp_path / "lat", name="c",
                               modality="video", shard_size=2, autoencoder=manifest_entry(ae, weights),
                               resume=True)  # fmt: skip

    with pytest.raises(RuntimeError, match="interrupted"):
        run(_Clips(videos, fail_at=3))
    assert (tmp_path / "lat" / ".c.progress.json").is_file()
    again = _Clips(videos)
    manifest = run(again)
    assert min(again.reads) == 2 and manifest["count"] == COUNT  # shard 0 (clips 0, 1) was kept
    stored = np.stack([latents.LatentSource(tmp_path / "lat")[i]["video"] for i in range(COUNT)])
    want = np.asarray(nnx.jit(lambda m, x: m.encode(x))(ae, videos))
    np.testing.assert_allclose(stored, want, rtol=1e-5, atol=1e-5)


def test_decode_round_trip_shape_and_refusals(prepared, tiny_preset):
    from data_pipelines.latents import LatentSource
    from selfflow.autoencoders.latents import (
        autoencoder_for_manifest,
        image_decoder,
        latent_decoder,
        run_autoencoder,
    )
    from selfflow.errors import ConfigError

    out, weights = prepared
    ae = run_autoencoder([out])  # the recorded weights file
    assert isinstance(ae, WanAutoencoder) and ae.config == TINY_WAN
    decode = latent_decoder(ae)
    latents = np.stack([LatentSource(out)[i]["video"] for i in range(COUNT)])  # 2 calls of 2 clips
    pixels = decode(latents)
    assert decode.modality == "video" and pixels.shape == (COUNT, 9, 16, 16, 3) and pixels.dtype == np.float32
    np.testing.assert_allclose(decode(latents[::-1])[::-1], pixels, rtol=1e-5, atol=1e-5)  # clip order kept
    assert np.abs(pixels).max() <= 1.0 and np.abs(pixels[0] - pixels[1]).max() > 1e-3

    for other, why in (("wan2.2", "latent_channels 4 vs 48"), ("sd-vae", "frames_per_latent 4 vs None")):
        with pytest.raises(
            ConfigError, match=f"written by autoencoder 'wan2.1', refusing .* '{other}'"
        ) as err:
            run_autoencoder([out], name=other)
        assert why in str(err.value) and "\n" not in str(err.value)
    # the same name but other latent statistics (a hand-edited manifest) is refused too
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["autoencoder"]["latents_std"] = [1.0] * 4
    with pytest.raises(ConfigError, match=r"latents_std \[1.0, 1.0, 1.0, 1.0\] vs \[1.5, 2.0, 0.5, 1.0\]"):
        autoencoder_for_manifest(manifest)
    with pytest.raises(ConfigError, match="'wan2.1' decodes video latents; fid-samples scores images"):
        image_decoder(ae, lambda t: t, latent_shape=(2, 2, 4))


def test_bad_clips_are_one_line_errors_naming_the_source(tmp_path, tiny_preset, capsys):
    from selfflow import cli

    weights = save_wan(tmp_path / "wan.safetensors")
    argv = [
        "prepare",
        "world",
        "--out",
        str(tmp_path / "lat"),
        "--encode",
        "wan2.1",
        "--weights",
        str(weights),
    ]
    assert cli.main([*argv, "--set", *WORLD, "data.clip_seconds=1.6"]) == 2  # 8 frames
    assert cli.main([*argv, "--set", *WORLD, "data.image_size=12"]) == 2
    frames, size = errors(capsys)
    assert re.search(
        r"WorldExamples\(.*\): videos \(8, 16, 16, 3\) cannot be encoded by 'wan2.1': .*T = 1 \+ 4k", frames
    )
    assert "(5, 9, 13, ...;" in frames and "H, W multiples of 8" in frames
    assert "videos (9, 12, 12, 3)" in size and "H, W multiples of 8" in size
    assert not (tmp_path / "lat" / "manifest.json").exists()


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # eval's Fréchet distances of 2 clips
def test_training_reads_the_latents_and_sample_decodes_them(prepared, tiny_preset, tmp_path, capsys):
    """2 training steps on the prepared directory (video spec: 4 channels, 3 latent frames 4 video
    frames apart; its end-of-run samples are latents in .npy); ``selfflow sample`` writes 9-frame
    16 px MP4s decoded by the manifest's autoencoder; weights of another WAN architecture are a
    one-line error."""
    import av

    from selfflow import cli
    from selfflow.config import LayoutConfig, SourceConfig
    from selfflow.tasks import Task

    from helpers_config import tiny_world_config
    from helpers_train import run

    out, _ = prepared
    cfg = tiny_world_config(
        (LayoutConfig("video", ("video",), 1.0, 2),),
        data=dict(
            sources=(SourceConfig("lat", "latents", path=str(out)),),
            image_size=16,
            fps=5,
            clip_seconds=1.8,
            video_patch=1,
            video_tubelet=1,
        ),
        train=dict(steps=2, checkpoint_every=2, log_every=1),
        sample=dict(per_class=1),
    )
    task = Task(cfg)
    spec = task.specs["video"]
    assert (spec.frames, spec.height, spec.channels, spec.frame_stride, spec.fps) == (3, 2, 4, 4, 5)
    times = np.unique(task.layouts[0].positions[:, 0])
    np.testing.assert_allclose(times, [0, 80, 160])  # video frames 0, 4, 8 at 20 ticks per frame
    result = run(cfg, tmp_path / "run", write_samples=True)
    assert result.final_step == 2
    # training's own samples are not decoded (no weights asked for): the latents, as .npy
    assert np.load(tmp_path / "run" / "samples" / "video" / "0_video.npy").shape == (3, 3, 2, 2, 4)
    assert cli.main(["sample", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "s")]) == 0
    mp4 = tmp_path / "s" / "video" / "0_video.mp4"
    with av.open(str(mp4)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape[0] == 16 * 4  # decoded pixels (scale 4), not latents

    # selfflow eval measures the video on decoded pixels, real and generated alike
    from selfflow.autoencoders.latents import autoencoder_for_manifest, latent_decoder
    from selfflow.eval import media
    from selfflow.eval.evaluate import EvalSettings, evaluate_run, heldout_examples

    results, _, _ = evaluate_run(tmp_path / "run", EvalSettings(num=2, probe=False))
    decode = latent_decoder(autoencoder_for_manifest(out))
    real, other_real = (heldout_examples(task, 0, 2, skip=k)["video"] for k in (0, 2))
    assert decode(real).shape == (2, 9, 16, 16, 3)
    want = media.video_frame_fd(decode(real), decode(other_real))
    assert results["video/video_frame_fd_real"] == pytest.approx(want, rel=1e-6)

    other = save_wan(
        tmp_path / "other.safetensors",
        WanConfig("other", base_dim=8, z_dim=8, dim_mult=(1, 2, 2, 2), num_res_blocks=1),
    )
    argv = ["sample", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "t")]
    capsys.readouterr()
    assert cli.main([*argv, "--autoencoder-weights", str(other)]) == 1
    (line,) = errors(capsys)
    assert "other.safetensors does not match WAN autoencoder 'wan2.1'" in line, line


def test_latents_written_in_parts_keep_their_frame_stride(tmp_path, tiny_preset):
    """A WAN directory prepared as 2 parts (no top-level manifest) still places latent frame i at
    video frame 4 i: the stride comes from a part's manifest."""
    from modalities.video import latent_frame_stride
    from selfflow import cli
    from selfflow.config import DataConfig, SourceConfig

    weights = save_wan(tmp_path / "wan.safetensors")
    out = tmp_path / "parts"
    argv = ["prepare", "world", "--out", str(out), "--limit", "2", "--set", *WORLD]
    argv += ["--encode", "wan2.1", "--weights", str(weights), "--encode-batch", "2"]
    for index in ("0", "1"):
        assert cli.main([*argv, "--process-index", index, "--process-count", "2"]) == 0
    assert not (out / "manifest.json").exists() and len(list(out.glob("part-*/manifest.json"))) == 2
    data = DataConfig(sources=(SourceConfig("lat", "latents", path=str(out)),))
    assert latent_frame_stride(data) == 4
