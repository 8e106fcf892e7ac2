"""Parity with the official Self-Flow PyTorch architecture, and the official .pt export/import.

The reference (tests/official_reference.py) follows the official model; every tensor, the
zero-initialised adaLN and final layers included, gets random non-zero values.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from selfflow import official  # noqa: E402
from selfflow.export import load_official  # noqa: E402
from selfflow.official import OfficialFormatError  # noqa: E402

from official_reference import OfficialSelfFlow  # noqa: E402

ARCH = dict(
    input_size=8,
    patch_size=2,
    in_channels=4,
    hidden_size=48,
    depth=4,
    num_heads=4,
    mlp_ratio=4.0,
    num_classes=11,
    learn_sigma=True,
)
B, N, C = 3, 16, 16


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.manual_seed(0)
    module = OfficialSelfFlow(**ARCH).randomize(seed=1).eval()
    path = tmp_path_factory.mktemp("official") / "model.pt"
    torch.save(module.state_dict(), path)
    return module, path


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, N, C)).astype(np.float32)
    t_scalar = np.array([0.05, 0.5, 0.97], np.float32)
    t_token = rng.uniform(size=(B, N)).astype(np.float32)
    y = np.array([0, 7, ARCH["num_classes"] - 1])  # the last one is the null class
    return x, t_scalar, t_token, y


def torch_run(module, x, t, y, **kw):
    with torch.no_grad():
        out = module(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y), **kw)
    return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()


@pytest.mark.parametrize("per_token", [False, True])
def test_velocity_matches_the_official_architecture(reference, inputs, per_token):
    module, path = reference
    x, t_scalar, t_token, y = inputs
    t = t_token if per_token else t_scalar
    ours = load_official(path, **ARCH)
    expected = torch_run(module, x, t, y)
    got = np.asarray(ours.velocity(x, t, y))
    assert got.shape == expected.shape == (B, N, C)
    assert np.abs(expected).mean() > 0.1  # a non-trivial output
    error = relative(got, expected)
    print(f"velocity relative error, t {t.shape}: {error:.2e}")
    assert error < 1e-5


@pytest.mark.parametrize("layer", [1, 2, 4])
def test_projected_and_raw_features_match(reference, inputs, layer):
    module, path = reference
    x, _, t_token, y = inputs
    ours = load_official(path, **ARCH)
    for projected in (True, False):
        key = "return_features" if projected else "return_raw_features"
        _, expected = torch_run(module, x, t_token, y, **{key: layer})
        got = np.asarray(ours.features(x, t_token, y, layer=layer, projected=projected))
        error = relative(got, expected)
        print(
            f"{'projected' if projected else 'raw'} features after block {layer}: relative error {error:.2e}"
        )
        assert error < 1e-5, (layer, projected)


def test_back_to_official_keeps_every_tensor(reference, inputs, tmp_path):
    module, path = reference
    ours = load_official(path, **ARCH)
    original = {k: v.numpy() for k, v in module.state_dict().items()}
    back = ours.state_dict()
    assert back.keys() == original.keys()
    p, c = ARCH["patch_size"], ARCH["in_channels"]
    velocity_rows = (np.arange(p * p * 2 * c) % (2 * c)) < c  # (p q c'): the first C of c' are the velocity
    for k, v in original.items():
        if k == "final_layer.linear.weight" or k == "final_layer.linear.bias":
            np.testing.assert_array_equal(back[k][velocity_rows], v[velocity_rows], err_msg=k)
            assert not back[k][~velocity_rows].any()  # the unused variance channels are written as zeros
        else:
            np.testing.assert_array_equal(back[k], v, err_msg=k)
    reloaded = OfficialSelfFlow(**ARCH).eval()
    reloaded.load_state_dict({k: torch.tensor(v) for k, v in back.items()}, strict=True)
    x, t_scalar, t_token, y = inputs
    for t in (t_scalar, t_token):
        assert relative(torch_run(reloaded, x, t, y), torch_run(module, x, t, y)) < 1e-6


def test_wrapped_and_ddp_prefixed_checkpoints_load(reference, inputs, tmp_path):
    module, path = reference
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"ema": {f"module.{k}": v for k, v in module.state_dict().items()}, "step": 7}, wrapped)
    x, t_scalar, _, y = inputs
    plain = np.asarray(load_official(path, **ARCH).velocity(x, t_scalar, y))
    np.testing.assert_array_equal(
        np.asarray(load_official(wrapped, key="ema", **ARCH).velocity(x, t_scalar, y)), plain
    )


def test_malformed_checkpoint_lists_every_problem(reference, tmp_path):
    module, _ = reference
    sd = dict(module.state_dict())
    del sd["blocks.2.mlp.fc1.bias"]
    sd["blocks.9.attn.qkv.weight"] = torch.zeros(3, 3)
    sd["y_embedder.embedding_table.weight"] = torch.zeros(5, 48)
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(OfficialFormatError) as info:
        load_official(bad, **ARCH)
    message = str(info.value)
    assert str(bad) in message and "3 problem(s)" in message
    assert "missing blocks.2.mlp.fc1.bias (192,)" in message
    assert "unexpected blocks.9.attn.qkv.weight (3, 3)" in message
    assert "y_embedder.embedding_table.weight: shape (5, 48), expected (11, 48)" in message


def test_wrong_architecture_and_learned_positions_are_rejected(reference, tmp_path):
    module, path = reference
    with pytest.raises(OfficialFormatError, match="expected some of"):
        load_official(path, hidden=48)
    with pytest.raises(OfficialFormatError, match="final_layer.linear.weight: shape"):
        load_official(path, **{**ARCH, "learn_sigma": False})
    sd = dict(module.state_dict())
    sd["pos_embed"] = sd["pos_embed"] + 0.01
    moved = tmp_path / "moved.pt"
    torch.save(sd, moved)
    with pytest.raises(OfficialFormatError, match="pos_embed differs from the fixed 2-D sin-cos table"):
        load_official(moved, **ARCH)


class NotWeights:
    pass


def test_pickled_objects_are_refused_not_executed(reference, tmp_path):
    module, _ = reference
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": module.state_dict(), "extra": NotWeights()}, unsafe)
    with pytest.raises(OfficialFormatError, match="weights_only=True refused"):
        load_official(unsafe, **ARCH)
    numbers = tmp_path / "numbers.pt"
    torch.save({**module.state_dict(), "epoch": 3}, numbers)
    with pytest.raises(OfficialFormatError, match=r"not tensors: epoch \(int\)"):
        load_official(numbers, **ARCH)


def test_runs_that_embed_tau_export_the_same_velocity(reference, inputs):
    """A legacy ``time_embedding="tau"`` model with the time map folded in gives the official output."""
    import jax.numpy as jnp
    from flax import nnx

    module, path = reference
    ours = load_official(path, **ARCH)
    x, t_scalar, t_token, y = inputs
    params = nnx.state(ours.model, nnx.Param)
    fc1 = params["t_embedder"]["fc1"]["kernel"]
    fc1[...] = jnp.asarray(official.flip_time(np.asarray(fc1[...])))
    ours.model.time_embedding = "tau"
    nnx.update(ours.model, params)
    for t in (t_scalar, t_token):
        assert relative(ours.velocity(x, t, y), torch_run(module, x, t, y)) < 1e-5
    from selfflow.export import flatten

    flat = flatten(nnx.to_pure_dict(nnx.state(ours.model, nnx.Param)))
    back = official.to_official(flat, ARCH, time_embedding="tau")["t_embedder.mlp.0.weight"]
    np.testing.assert_allclose(
        back, module.state_dict()["t_embedder.mlp.0.weight"].numpy(), rtol=0, atol=1e-6
    )


# ---------------------------------------------------------------------------- runs <-> official .pt

RUN_CONFIG = """
import dataclasses
from helpers_config import EXPORT_RUN as CFG
CONFIG = dataclasses.replace(CFG, model=dataclasses.replace(CFG.model{model}))
"""  # the CLI reads experiment files; this one is test_export's tiny run (tests/helpers_config.py)


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    from selfflow import cli
    from selfflow.config import load_config_file
    from selfflow.train import train

    base = tmp_path_factory.mktemp("run")
    (base / "tiny.py").write_text(RUN_CONFIG.format(model=""))
    train(load_config_file(base / "tiny.py"), base / "run", progress=False, write_samples=False)
    assert (
        cli.main(
            [
                "export",
                "--run-dir",
                str(base / "run"),
                "--format",
                "official",
                "--out",
                str(base / "model.pt"),
            ]
        )
        == 0
    )
    return base


def test_exported_run_loads_in_the_official_model_and_matches_ours(exported_run):
    import json

    import jax.numpy as jnp
    from flax import nnx

    from selfflow.run import load_run

    arch = json.loads((exported_run / "model.json").read_text())["architecture"]
    assert arch == dict(
        input_size=16,
        patch_size=4,
        in_channels=3,
        hidden_size=32,
        depth=2,
        num_heads=2,
        mlp_ratio=4.0,
        num_classes=11,
        learn_sigma=True,
    )
    module = OfficialSelfFlow(**arch).eval()
    module.load_state_dict(torch.load(exported_run / "model.pt", weights_only=True), strict=True)
    _, state, graphdef, task, _ = load_run(exported_run / "run")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 16, 48)).astype(np.float32)
    t, y = np.array([0.2, 0.9], np.float32), np.array([3, 10])
    ours = nnx.merge(graphdef, state["ema"])(
        (jnp.asarray(x),),
        jnp.asarray(t),
        jnp.asarray(y),
        jnp.asarray(task.layouts[0].positions),
        modalities=("image",),
    ).velocity[0]
    assert relative(torch_run(module, x, t, y), ours) < 1e-5


def test_export_then_import_is_bit_identical_and_fine_tunes(exported_run):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from selfflow import cli
    from selfflow.export import flatten
    from selfflow.run import load_run

    config, imported = str(exported_run / "tiny.py"), exported_run / "imported"
    assert (
        cli.main(
            [
                "import",
                "--official",
                str(exported_run / "model.pt"),
                "--config",
                config,
                "--out",
                str(imported),
            ]
        )
        == 0
    )
    _, source, graphdef, task, _ = load_run(exported_run / "run")
    _, state, _, _, step = load_run(imported)
    assert step == 0
    ema = flatten(jax.device_get(source["ema"]))
    for weights in ("params", "ema"):
        got = flatten(jax.device_get(state[weights]))
        assert got.keys() == ema.keys()
        for k in ema:
            np.testing.assert_array_equal(got[k], ema[k], err_msg=f"{weights} {k}")
    x, pos = jax.random.normal(jax.random.key(0), (2, 16, 48)), jnp.asarray(task.layouts[0].positions)
    t, y = jnp.array([0.3, 0.6]), jnp.array([1, 2])
    np.testing.assert_array_equal(
        nnx.merge(graphdef, state["ema"])((x,), t, y, pos, modalities=("image",)).velocity,
        nnx.merge(graphdef, source["ema"])((x,), t, y, pos, modalities=("image",)).velocity,
    )
    assert cli.main(["sample", "--run-dir", str(imported), "--out", str(exported_run / "s.png")]) == 0
    assert (
        cli.main(["train", config, "--run-dir", str(imported), "--set", "train.steps=1", "--no-progress"])
        == 0
    )
    _, tuned, _, _, step = load_run(imported)
    assert step == 1 and int(tuned["step"]) == 1  # resumed from the imported step 0, one optimizer step
    moved = flatten(jax.device_get(tuned["params"]))
    assert any(not np.array_equal(moved[k], ema[k]) for k in ema)
    assert (
        cli.main(
            [
                "import",
                "--official",
                str(exported_run / "model.pt"),
                "--config",
                config,
                "--out",
                str(imported),
            ]
        )
        == 1
    )  # never over an existing run


def test_runs_without_an_official_counterpart_are_refused(exported_run, tmp_path, capsys):
    from selfflow import cli

    rope = tmp_path / "rope.py"
    rope.write_text(RUN_CONFIG.format(model=", positions='rope'"))
    code = cli.main(
        [
            "import",
            "--official",
            str(exported_run / "model.pt"),
            "--config",
            str(rope),
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 1 and "model.positions='rope'" in capsys.readouterr().err
    wide = tmp_path / "wide.py"
    wide.write_text(RUN_CONFIG.format(model=", hidden_size=64"))
    code = cli.main(
        [
            "import",
            "--official",
            str(exported_run / "model.pt"),
            "--config",
            str(wide),
            "--out",
            str(tmp_path / "y"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "x_embedder.proj.weight: shape (32, 48), expected (64, 48)" in err


def test_fid_samples_from_a_run_and_from_an_official_checkpoint(exported_run, reference, tmp_path, capsys):
    from selfflow import cli

    out = tmp_path / "run.npz"
    assert (
        cli.main(
            [
                "fid-samples",
                "--run-dir",
                str(exported_run / "run"),
                "--out",
                str(out),
                "--num",
                "5",
                "--batch-size",
                "2",
                "--steps",
                "3",
                "--cfg",
                "2",
                "--seed",
                "4",
            ]
        )
        == 0
    )
    with np.load(out) as npz:
        images, labels = npz["arr_0"], npz["arr_1"]
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8 and images.std() > 0
    assert labels.shape == (5,) and set(labels) <= set(range(10))
    _, path = reference  # 4-channel latents: decoding them needs the SD-VAE
    arch = [f"--arch={k}={v}" for k, v in ARCH.items()]
    code = cli.main(
        ["fid-samples", "--official", str(path), *arch, "--out", str(tmp_path / "o.npz"), "--num", "2"]
    )
    assert (
        code == 2
        and "pass --autoencoder NAME --autoencoder-weights FILE (or --vae DIR" in capsys.readouterr().err
    )
    code = cli.main(
        ["fid-samples", "--official", str(path), "--arch", "depth=four", "--out", str(tmp_path / "o.npz")]
    )
    assert code == 2 and "expected int for depth" in capsys.readouterr().err


def test_imagenet_experiment_describes_the_released_checkpoint():
    from selfflow.config import load_config_file
    from selfflow.official import RELEASED_XL2

    cfg = load_config_file("experiments/imagenet256_xl2.py")
    m = cfg.model
    assert (
        m.resolved("depth"),
        m.resolved("hidden_size"),
        m.resolved("num_heads"),
        m.resolved("patch_size"),
        m.mlp_ratio,
        m.positions,
        m.time_embedding,
    ) == (
        RELEASED_XL2["depth"],
        RELEASED_XL2["hidden_size"],
        RELEASED_XL2["num_heads"],
        RELEASED_XL2["patch_size"],
        RELEASED_XL2["mlp_ratio"],
        "sincos",
        "sit",
    )
    assert cfg.data.num_classes + 1 == RELEASED_XL2["num_classes"]  # + the null class
    assert (cfg.student_layer, cfg.teacher_layer) == (8, 20)  # the official README's blocks


@pytest.mark.slow
def test_parity_at_the_released_size(tmp_path):
    """SiT-XL/2 (675M parameters, 256 tokens), random weights: the same bound as the tiny model."""
    torch.manual_seed(0)
    module = OfficialSelfFlow(**official.RELEASED_XL2).randomize(seed=3, scale=0.02).eval()
    path = tmp_path / "xl.pt"
    torch.save(module.state_dict(), path)
    ours = load_official(path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 256, 16)).astype(np.float32)
    y = np.array([3, 1000])
    for t in (np.array([0.1, 0.8], np.float32), rng.uniform(size=(2, 256)).astype(np.float32)):
        error = relative(ours.velocity(x, t, y), torch_run(module, x, t, y))
        print(f"velocity relative error, t {t.shape}: {error:.2e}")
        assert error < 1e-5
    for layer in (8, 20):
        _, expected = torch_run(module, x, t, y, return_features=layer)
        error = relative(ours.features(x, t, y, layer=layer), expected)
        print(f"projected features after block {layer}: relative error {error:.2e}")
        assert error < 1e-5
