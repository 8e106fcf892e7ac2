"""safetensors export of a run: reloads into the same model with identical outputs; a file that
does not match the model is rejected with every problem listed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from selfflow import cli
from selfflow.config import resolve
from selfflow.export import ExportError, flatten, load_safetensors
from selfflow.run import load_run
from selfflow.train import train

from helpers_config import EXPORT_RUN as CFG


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    train(CFG, base / "run", progress=False, write_samples=False)
    code = cli.main(["export", "--run-dir", str(base / "run"), "--out", str(base / "model.safetensors")])
    assert code == 0
    return base


def test_export_reloads_bit_identical_weights_and_outputs(exported):
    from flax import nnx

    _, state, graphdef, task, _ = load_run(exported / "run")
    model, cfg = load_safetensors(exported / "model.safetensors")
    assert cfg == resolve(CFG)  # the (resolved) config comes back from the JSON
    ema = flatten(jax.device_get(state["ema"]))
    reloaded = flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert ema.keys() == reloaded.keys()
    for k in ema:
        np.testing.assert_array_equal(ema[k], reloaded[k], err_msg=k)
    online = flatten(jax.device_get(state["params"]))
    assert any(not np.array_equal(online[k], ema[k]) for k in ema)  # EMA weights, not the online ones
    x = jax.random.normal(jax.random.key(0), (2, 16, 48))
    pos = jnp.asarray(task.layouts[0].positions)
    args = ((x,), jnp.array([0.3, 0.7]), jnp.array([1, 2]), pos)
    ours = nnx.merge(graphdef, state["ema"])(*args, modalities=("image",)).velocity[0]
    np.testing.assert_array_equal(model(*args, modalities=("image",)).velocity[0], ours)


def test_file_that_does_not_match_the_model_lists_every_problem(exported, tmp_path):
    tensors = load_file(str(exported / "model.safetensors"))
    del tensors["projector.fc1.kernel"]
    tensors["extra.weight"] = np.zeros(3, np.float32)
    tensors["y_embedder.embedding"] = np.zeros((5, 32), np.float32)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad))
    (tmp_path / "bad.json").write_text((exported / "model.json").read_text())
    with pytest.raises(ExportError) as info:
        load_safetensors(bad)
    message = str(info.value)
    assert "missing projector.fc1.kernel (32, 64)" in message
    assert "unexpected extra.weight (3,)" in message
    assert "y_embedder.embedding: shape (5, 32), expected (11, 32)" in message


def test_export_of_a_directory_without_checkpoints_is_an_error(tmp_path):
    code = cli.main(["export", "--run-dir", str(tmp_path), "--out", str(tmp_path / "m.safetensors")])
    assert code == 1
