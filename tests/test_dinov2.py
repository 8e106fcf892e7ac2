"""DINOv2 in NNX against transformers' Dinov2Model (random weights, saved as the Hub file layout),
its loader's checks, preprocessing, token grids, and FD-DINOv2 (a tiny random network, no
download)."""

import dataclasses
import json
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from selfflow import cli
from selfflow.encoders.dinov2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIZES,
    Dinov2,
    Dinov2Arch,
    bicubic_resize_matrix,
    checkpoint_tensors,
    expected_file_shapes,
    load_dinov2,
    preprocess,
    resize_tokens,
)
from selfflow.errors import ParamsError
from selfflow.eval import dinov2_fd
from selfflow.eval.frechet import frechet_from_features

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=14, image_size=56)
TINY_ARCH = Dinov2Arch(hidden=64, depth=2, heads=4, mlp_hidden=256, pos_grid=4)


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def hf_model(directory, **config):
    """A transformers Dinov2Model with every parameter random (layer scales and norm weights near 1),
    written with save_pretrained (the Hub layout and config.json) into ``directory``."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(**config, attn_implementation="eager")
    model = transformers.Dinov2Model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            near_one = name.endswith("lambda1") or ("norm" in name and name.endswith("weight"))
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if near_one else 0.0))
    model.save_pretrained(directory)
    return model, cfg


def hf_outputs(model, pixels_nhwc: np.ndarray, mask=None) -> dict:
    import torch

    with torch.no_grad():
        out = model(
            torch.from_numpy(pixels_nhwc).permute(0, 3, 1, 2),
            bool_masked_pos=None if mask is None else torch.from_numpy(mask),
            output_hidden_states=True,
        )
    return {
        "last_hidden_state": out.last_hidden_state.numpy(),
        "cls": out.pooler_output.numpy(),
        "layer_1": out.hidden_states[1].numpy(),
    }


def ours(model: Dinov2, pixels: np.ndarray, mask=None) -> dict:
    with jax.default_matmul_precision("highest"):
        out = model(jnp.asarray(pixels), layers=(1,), mask=None if mask is None else jnp.asarray(mask))
    return {
        "last_hidden_state": np.asarray(out["last_hidden_state"]),
        "cls": np.asarray(out["cls"]),
        "layer_1": np.asarray(out["layers"][1]),
        "patch_tokens": np.asarray(out["patch_tokens"]),
    }


def assert_parity(got: dict, ref: dict, what: str, tol: float = 1e-5) -> dict:
    errors = {k: rel_err(got[k], ref[k]) for k in ref}
    print(f"{what}: max relative error " + ", ".join(f"{k} {e:.2e}" for k, e in errors.items()))
    assert all(e <= tol for e in errors.values()), (what, errors)
    np.testing.assert_array_equal(got["patch_tokens"], got["last_hidden_state"][:, 1:])
    return errors


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dinov2_tiny")
    model, cfg = hf_model(directory, **TINY)
    return model, directory


# ----------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "hw",
    [(56, 56), (42, 70), (28, 28), (84, 98)],
    ids=["checkpoint grid", "non-square 3x5", "smaller 2x2", "larger 6x7"],
)
def test_matches_transformers(tiny_hf, hw):
    """Same last_hidden_state, CLS (pooler) and block-1 output as transformers, at the checkpoint's
    4x4 grid and at grids that interpolate the position embeddings (bicubic, both directions)."""
    torch_model, directory = tiny_hf
    model = load_dinov2(directory)  # config.json beside model.safetensors gives the architecture
    assert model.arch == TINY_ARCH
    pixels = np.random.default_rng(1).normal(size=(2, *hw, 3)).astype(np.float32)
    assert_parity(ours(model, pixels), hf_outputs(torch_model, pixels), f"tiny at {hw}")


def test_mask_token_matches_transformers(tiny_hf):
    torch_model, directory = tiny_hf
    model = load_dinov2(directory / "model.safetensors")
    pixels = np.random.default_rng(2).normal(size=(2, 56, 56, 3)).astype(np.float32)
    mask = np.random.default_rng(3).random((2, 16)) < 0.5
    assert_parity(ours(model, pixels, mask), hf_outputs(torch_model, pixels, mask), "tiny masked")


def test_swiglu_and_transformers5_names_match(tmp_path):
    """ViT-g's SwiGLU MLP, loaded from the Hub layout (weights_in) and from a transformers >= 5
    in-memory state_dict (q_proj ..., gate_proj/up_proj), both equal to transformers."""
    pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    torch_model, cfg = hf_model(tmp_path / "hub", **TINY, use_swiglu_ffn=True)
    arch = Dinov2Arch.from_hf_config(cfg.to_dict())
    assert arch.swiglu and arch.mlp_hidden == 176  # ceil8(int(256 * 2 / 3))
    state = {k: v.contiguous() for k, v in torch_model.state_dict().items()}
    assert any(".mlp.gate_proj." in k for k in state) and any(".attention.q_proj." in k for k in state)
    save_torch(state, str(tmp_path / "memory.safetensors"))
    pixels = np.random.default_rng(4).normal(size=(2, 42, 56, 3)).astype(np.float32)
    ref = hf_outputs(torch_model, pixels)
    for path in (tmp_path / "hub" / "model.safetensors", tmp_path / "memory.safetensors"):
        assert_parity(ours(load_dinov2(path, arch), pixels), ref, f"swiglu from {path.name}")


def test_vit_s14_at_224_matches_transformers(tmp_path):
    """The ViT-S/14 checkpoint shape (518 px, 37x37 positions) at 224 px (16x16: interpolated);
    the size is inferred from the weights' width when no config.json is beside the file."""
    torch_model, _ = hf_model(
        tmp_path / "hub", hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518
    )
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "weights.safetensors").symlink_to(tmp_path / "hub" / "model.safetensors")
    model = load_dinov2(tmp_path / "bare" / "weights.safetensors")
    assert model.arch == SIZES["small"]
    pixels = np.array(preprocess(np.random.default_rng(5).random((1, 240, 200, 3)).astype(np.float32)))
    assert pixels.shape == (1, 224, 224, 3)
    assert_parity(ours(model, pixels), hf_outputs(torch_model, pixels), "ViT-S/14 at 224")


def test_bicubic_matrix_is_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).normal(size=(1, 3, 37, 5)).astype(np.float32)
    for out_hw in ((16, 9), (40, 2), (37, 5)):
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(x), size=out_hw, mode="bicubic", align_corners=False
        ).numpy()
        mh, mw = bicubic_resize_matrix(37, out_hw[0]), bicubic_resize_matrix(5, out_hw[1])
        got = np.einsum("oh,nchw,pw->ncop", mh, x, mw)
        assert rel_err(got, ref) < 1e-5, out_hw  # float32 weights: torch computes them in float


def test_enlarged_tokens_are_torch_bilinear():
    torch = pytest.importorskip("torch")
    tokens = np.random.default_rng(7).normal(size=(2, 3 * 4, 8)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(resize_tokens(jnp.asarray(tokens), (3, 4), (6, 7)))
    grid = torch.from_numpy(tokens.reshape(2, 3, 4, 8)).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(6, 7), mode="bilinear", align_corners=False)
    assert rel_err(got, ref.permute(0, 2, 3, 1).reshape(2, 42, 8).numpy()) < 1e-5


# ------------------------------------------------------------------------- files and their errors


def tiny_file(tmp_path, arch=TINY_ARCH, seed=0, name="model.safetensors"):
    """Our own random tiny network written in the checkpoint layout, with its config.json."""
    model = Dinov2(arch, rngs=nnx.Rngs(seed))
    path = tmp_path / name
    save_file(checkpoint_tensors(model), str(path))
    config = dict(model_type="dinov2", hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    (tmp_path / "config.json").write_text(json.dumps({**config, "image_size": 56, "patch_size": 14}))
    return model, path


def test_round_trip_and_expected_keys(tmp_path):
    model, path = tiny_file(tmp_path)
    tensors = checkpoint_tensors(model)
    assert {k: v.shape for k, v in tensors.items()} == expected_file_shapes(TINY_ARCH)
    assert tensors["embeddings.mask_token"].shape == (1, 64)
    assert tensors["encoder.layer.1.attention.attention.query.weight"].shape == (64, 64)
    assert tensors["embeddings.patch_embeddings.projection.weight"].shape == (64, 3, 14, 14)
    loaded = load_dinov2(path)
    for k, v in checkpoint_tensors(loaded).items():
        np.testing.assert_array_equal(v, tensors[k])
    base = expected_file_shapes(SIZES["base"])  # 37x37 positions (518 px)
    assert base["embeddings.position_embeddings"] == (1, 1370, 768) and len(base) == 5 + 18 * 12 + 2


def test_released_sizes_are_their_configs():
    """SIZES against the released config.json values (facebook/dinov2-*), ViT-g with SwiGLU."""
    for name, (hidden, layers, heads) in dict(
        small=(384, 12, 6), base=(768, 12, 12), large=(1024, 24, 16), giant=(1536, 40, 24)
    ).items():
        config = dict(
            model_type="dinov2",
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            mlp_ratio=4,
            image_size=518,
            patch_size=14,
            hidden_act="gelu",
            layer_norm_eps=1e-6,
            use_swiglu_ffn=name == "giant",
        )
        arch = Dinov2Arch.from_hf_config(config)
        assert dataclasses.replace(arch, name=name) == SIZES[name]
    assert SIZES["giant"].mlp_hidden == 4096  # weights_in (8192, 1536), weights_out (1536, 4096)
    with pytest.raises(ValueError, match="hidden_act='gelu_new'.*qkv_bias=False"):
        Dinov2Arch.from_hf_config(dict(hidden_act="gelu_new", qkv_bias=False))


def test_every_problem_of_a_file_in_one_error(tmp_path):
    model, _ = tiny_file(tmp_path)
    tensors = checkpoint_tensors(model)
    del tensors["encoder.layer.1.norm2.bias"]
    tensors["embeddings.mask_token"] = np.zeros((2, 64), np.float32)
    tensors["classifier.weight"] = np.zeros((10, 128), np.float32)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad))
    with pytest.raises(ParamsError) as e:
        load_dinov2(bad, TINY_ARCH)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "nothing was loaded" in msg
    assert "missing encoder.layer.1.norm2.bias (64,)" in msg
    assert "unexpected classifier.weight (10, 128)" in msg
    assert "embeddings.mask_token: shape (2, 64), expected (1, 64)" in msg

    tensors = checkpoint_tensors(model)
    tensors["layernorm.weight"][3] = np.nan
    save_file(tensors, str(bad))
    with pytest.raises(ParamsError, match="layernorm.weight has 1 non-finite"):
        load_dinov2(bad, TINY_ARCH)

    with pytest.raises(ParamsError, match=r"does not match DINOv2-base .*missing encoder\.layer\.11"):
        load_dinov2(tmp_path / "model.safetensors", "base")
    with pytest.raises(ValueError, match="expected one of"):
        load_dinov2(tmp_path / "model.safetensors", "huge")


def test_files_that_are_not_dinov2_are_named_in_one_line(tmp_path):
    inception = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    inception.write_bytes(b"PK\x03\x04 a torch zip pickle, not safetensors" * 10)
    random_st = tmp_path / "random.safetensors"
    save_file({"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32)}, str(random_st))
    for path, why in ((inception, "not a readable safetensors file"), (random_st, "not a DINOv2 checkpoint")):
        with pytest.raises(ParamsError) as e:
            load_dinov2(path)
        assert why in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ParamsError, match="not a DINOv2 checkpoint: none of its"):
        load_dinov2(random_st, "small")
    wide = tmp_path / "wide.safetensors"
    save_file({"embeddings.cls_token": np.zeros((1, 1, 100), np.float32)}, str(wide))
    with pytest.raises(ParamsError, match="width 100 .* pass size=Dinov2Arch"):
        load_dinov2(wide)
    with pytest.raises(FileNotFoundError, match="facebook/dinov2"):
        load_dinov2(tmp_path / "nowhere")


def test_wrong_channels_and_sizes_are_value_errors():
    model = Dinov2(TINY_ARCH, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\), got shape \(1, 28, 28, 4\)"):
        model(jnp.zeros((1, 28, 28, 4)))
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 28, 28\) \(channels-first"):
        model(jnp.zeros((1, 3, 28, 28)))
    with pytest.raises(ValueError, match="multiples of the patch size 14"):
        model(jnp.zeros((1, 30, 28, 3)))
    with pytest.raises(ValueError, match=r"got shape \(2, 8, 8, 2\)"):
        preprocess(np.zeros((2, 8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        preprocess(np.zeros((2, 8, 8, 3), np.uint8), size=100)
    with pytest.raises(ValueError, match=r"got shape \(4, 8, 8, 4\)"):
        dinov2_fd.extract_cls(model, np.zeros((4, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        dinov2_fd.extract_cls(model, -np.ones((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="blocks are 1..2"):
        model(jnp.zeros((1, 28, 28, 3)), layers=(3,))


# -------------------------------------------------------------------- preprocessing, token grids


def test_preprocess_normalises_and_resizes():
    gray = np.full((2, 100, 60, 3), 0.5, np.float32)
    x = np.asarray(preprocess(gray))
    assert x.shape == (2, 224, 224, 3)
    want = (0.5 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(x, np.broadcast_to(want, x.shape), atol=1e-5)
    u8 = np.random.default_rng(8).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(
        preprocess(u8, 28), preprocess(np.repeat(u8, 3, -1).astype(np.float32) / 255, 28), atol=1e-6
    )
    assert preprocess(u8, (28, 42)).shape == (2, 28, 42, 3)


def test_features_on_grid():
    model = Dinov2(TINY_ARCH, rngs=nnx.Rngs(0))
    images = np.random.default_rng(9).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    native = model(preprocess(images, 56))["patch_tokens"]
    np.testing.assert_array_equal(model.features_on_grid(images, (4, 4), size=56), native)
    assert model.features_on_grid(images, (2, 3), size=56).shape == (2, 6, 64)
    assert model.features_on_grid(images, (8, 8), size=56).shape == (2, 64, 64)
    block1 = model.features_on_grid(images, (4, 4), size=56, layer=1)
    np.testing.assert_array_equal(block1, model(preprocess(images, 56), layers=(1,))["layers"][1][:, 1:])
    constant = jnp.ones((1, 16, 5))
    for grid in ((2, 2), (8, 3)):
        np.testing.assert_allclose(resize_tokens(constant, (4, 4), grid), 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------------- FD-DINOv2


def test_fd_dinov2_is_zero_for_a_set_and_itself_and_grows_with_a_shift():
    model = Dinov2(TINY_ARCH, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(10)
    a = rng.integers(0, 200, (96, 16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 200, (96, 16, 16, 3), dtype=np.uint8)
    shifted = a + np.uint8(55)  # brighter, same structure
    fa = dinov2_fd.extract_cls(model, a, batch_size=40)  # 40, 40, 16 (padded): one compilation
    assert fa.shape == (96, 64) and fa.dtype == np.float32
    np.testing.assert_allclose(fa[:40], dinov2_fd.extract_cls(model, a[:40], batch_size=40), rtol=1e-6)
    fb, fs = (dinov2_fd.extract_cls(model, x, batch_size=40) for x in (b, shifted))
    same = frechet_from_features(fa, fa)
    other, shift = frechet_from_features(fa, fb), frechet_from_features(fa, fs)
    print(f"FD-DINOv2 (tiny random): self {same:.2e}, second sample {other:.4g}, shifted {shift:.4g}")
    assert abs(same) < 1e-6 * shift
    assert shift > 2 * other > 0
    assert dinov2_fd.fd_dinov2(model, a[:40], shifted[:40], batch_size=40) > 0
    extractor = dinov2_fd.feature_extractor(model, batch_size=40)
    np.testing.assert_allclose(extractor(a[:8]), fa[:8], rtol=1e-5, atol=1e-6)


def test_fd_from_npz_files(tmp_path, capsys):
    tiny_file(tmp_path)
    images = np.random.default_rng(11).integers(0, 256, (70, 14, 14, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=images, arr_1=np.arange(70))
    np.savez_compressed(tmp_path / "b.npz", arr_0=images)
    for name in ("a.npz", "b.npz"):
        batches = list(dinov2_fd.npz_batches(tmp_path / name, batch_size=32))
        assert [len(b) for b in batches] == [32, 32, 6]
        np.testing.assert_array_equal(np.concatenate(batches), images)
    assert [len(b) for b in dinov2_fd.npz_batches(tmp_path / "a.npz", batch_size=32, num=40)] == [32, 8]
    weights = str(tmp_path / "model.safetensors")
    assert dinov2_fd.main(["--dinov2", weights, str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]) == 0
    fd = float(capsys.readouterr().out.split(":")[-1])
    assert abs(fd) < 1e-3
    assert dinov2_fd.main(["--dinov2", str(tmp_path / "a.npz"), weights, weights]) == 1
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_layout_metrics_add_fd_dinov2(monkeypatch):
    """The hook in evaluate.layout_metrics: generated images (in [-1, 1]) against the real ones
    and the real-vs-real floor, without a run (held-out and generated arrays stubbed)."""
    from selfflow.eval import evaluate

    rng = np.random.default_rng(12)
    sets = [rng.uniform(-1, 1, (24, 16, 16, 1)).astype(np.float32) for _ in range(2)]
    monkeypatch.setattr(evaluate, "heldout_examples", lambda task, i, num, skip=0: {"image": sets[skip > 0]})
    fake = np.clip(sets[0] + 0.6, -1, 1)
    monkeypatch.setattr(evaluate, "generated_for", lambda *a, **k: {"image": fake})
    task = SimpleNamespace(layouts=[SimpleNamespace(layout=SimpleNamespace(modalities=("image",)))])
    settings = evaluate.EvalSettings(num=24, dinov2="unused here")
    model = Dinov2(TINY_ARCH, rngs=nnx.Rngs(0))
    out = evaluate.layout_metrics(None, task, None, 0, settings, None, dinov2=model)
    assert set(out) == {"image_fd_dinov2", "image_fd_dinov2_real"}
    assert out["image_fd_dinov2"] > out["image_fd_dinov2_real"] > 0


def test_eval_cli_passes_dinov2_to_the_settings(monkeypatch, tmp_path):
    from selfflow.eval import evaluate

    seen = {}

    def fake_run(run_dir, settings, **_):
        seen["settings"] = settings
        (tmp_path / "s.md").write_text("table\n")
        return {}, tmp_path / "s.json", tmp_path / "s.md"

    monkeypatch.setattr(evaluate, "evaluate_run", fake_run)
    assert cli.main(["eval", "--run-dir", "r", "--dinov2", "w.safetensors"]) == 0
    assert seen["settings"].dinov2 == "w.safetensors"
    assert cli._parser().parse_args(["eval", "--run-dir", "r"]).dinov2 is None


@pytest.mark.slow
def test_eval_reports_fd_dinov2(tmp_path):
    """selfflow eval --dinov2 adds image_fd_dinov2 and its real-vs-real floor to an image run
    (end to end: trains a tiny run; about 45 s)."""
    from selfflow.train import train

    from helpers_config import tiny_image_config

    run = tmp_path / "run"
    cfg = tiny_image_config(data=dict(num_examples=64), train=dict(steps=1, checkpoint_every=1))
    train(cfg, run, progress=False, write_samples=False)
    tiny_file(tmp_path)
    started = time.perf_counter()
    argv = ["eval", "--run-dir", str(run), "--num", "16", "--no-probe", "--classifier-steps", "2"]
    assert cli.main(argv + ["--dinov2", str(tmp_path / "model.safetensors"), "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "step_1.json").read_text())["metrics"]
    print(f"eval with --dinov2: {time.perf_counter() - started:.1f} s")
    assert metrics["image/image_fd_dinov2"] > metrics["image/image_fd_dinov2_real"] > 0
