"""The NNX port of pytorch-fid's InceptionV3: structure, weight loading, and parity with torch.

The real weight file cannot be downloaded here, so the loading and forward tests use a file of
random tensors with exactly the expected keys and shapes, written with torch.save. Parity is
checked against a functional PyTorch forward written in this file from pytorch-fid's
description (F.conv2d / F.batch_norm / F.avg_pool2d(count_include_pad=False) / F.max_pool2d /
F.interpolate on the same state dict), and, where torchvision imports, against torchvision's own
Inception blocks with pytorch-fid's patches.
"""

import math
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from selfflow.eval import inception as inc
from selfflow.eval.inception import (
    InceptionV3,
    expected_state_dict_shapes,
    extract,
    load_pytorch_fid_weights,
    preprocess,
    resize_bilinear,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional


# ------------------------------------------------------------------------------- structure


@pytest.fixture(scope="module")
def abstract_model():
    return nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))  # shapes only, no compute


def test_model_builds_with_expected_shapes(abstract_model):
    model = abstract_model
    # NNX kernels are HWIO; the torch (O, I, H, W) equivalents in the comments.
    assert model.Conv2d_1a_3x3.conv.kernel.shape == (3, 3, 3, 32)  # (32, 3, 3, 3)
    assert model.Conv2d_1a_3x3.conv.bias is None  # conv without bias
    assert model.Conv2d_1a_3x3.bn.epsilon == 1e-3
    assert model.Conv2d_4a_3x3.conv.kernel.shape == (3, 3, 80, 192)
    assert model.Mixed_6b.branch7x7_2.conv.kernel.shape == (1, 7, 128, 128)  # (128, 128, 1, 7)
    c = model.Mixed_7c
    assert c.branch1x1.conv.kernel.shape == (1, 1, 2048, 320)
    assert c.branch3x3_1.conv.kernel.shape == (1, 1, 2048, 384)
    assert c.branch3x3_2a.conv.kernel.shape == (1, 3, 384, 384)
    assert c.branch3x3_2b.conv.kernel.shape == (3, 1, 384, 384)
    assert c.branch3x3dbl_1.conv.kernel.shape == (1, 1, 2048, 448)
    assert c.branch3x3dbl_2.conv.kernel.shape == (3, 3, 448, 384)
    assert c.branch_pool.conv.kernel.shape == (1, 1, 2048, 192)
    assert c.branch_pool.bn.mean.shape == (192,)
    assert c.pool == "max" and model.Mixed_7b.pool == "avg"
    assert model.fc.kernel.shape == (2048, 1008) and model.fc.bias.shape == (1008,)

    table = expected_state_dict_shapes()
    assert table["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert table["Mixed_7c.branch3x3_2a.conv.weight"] == (384, 384, 1, 3)
    assert table["Mixed_7c.branch_pool.bn.running_var"] == (192,)
    assert table["fc.weight"] == (1008, 2048) and table["fc.bias"] == (1008,)
    assert not any("AuxLogits" in k or "num_batches_tracked" in k for k in table)


def _aux_logits_params(num_classes=1000):
    """torchvision InceptionAux: conv0 1x1 768->128, conv1 5x5 128->768 (each + BN), fc 768->C."""
    conv0 = 128 * 768 + 2 * 128
    conv1 = 768 * 128 * 5 * 5 + 2 * 768
    return conv0 + conv1 + 768 * num_classes + num_classes


def test_parameter_count_matches_pytorch_fid_inception(abstract_model):
    table = expected_state_dict_shapes()
    params = sum(math.prod(s) for k, s in table.items() if not k.endswith(("running_mean", "running_var")))
    # torchvision documents num_params = 27,161,264 for inception_v3 (IMAGENET1K_V1: 1000
    # classes, with the AuxLogits head). pytorch-fid's model has no AuxLogits and a 1008-way fc:
    torchvision_count = 27_161_264
    expected = torchvision_count - _aux_logits_params(1000) + (1008 - 1000) * (2048 + 1)
    assert expected == 23_850_960  # also what torchvision 0.28's Inception3(1008, aux=False) counts
    assert params == expected
    # 94 conv+BN layers (5 stem, 3x7 A, 4 B, 4x10 C, 6 D, 2x9 E), 5 tensors each, plus fc.
    assert len(table) == 94 * 5 + 2
    # And the live model agrees with the table.
    n_param = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nnx.state(abstract_model, nnx.Param)))
    assert n_param == expected


# ------------------------------------------------------------------------------- fake weights


def _random_state_dict(seed=0):
    """Random tensors with the expected keys/shapes, scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in expected_state_dict_shapes().items():
        if key.endswith("running_var"):
            a = rng.uniform(0.5, 1.5, shape)
        elif key.endswith(("running_mean", ".bias")):
            a = rng.normal(0, 0.1, shape)
        elif key.endswith("bn.weight"):
            a = rng.uniform(0.8, 1.2, shape)
        else:  # conv / fc weights, He-like scale
            a = rng.normal(0, 1 / math.sqrt(math.prod(shape[1:])), shape)
        sd[key] = torch.from_numpy(a.astype(np.float32))
    return sd


@pytest.fixture(scope="module")
def fake_weights(tmp_path_factory):
    sd = _random_state_dict()
    # Some torch versions save BatchNorm's step counter; the loader accepts and ignores it.
    sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    path = tmp_path_factory.mktemp("inception") / "fake_pt_inception.pth"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def forward(fake_weights):
    """One full forward (2 images of 37x53, resized to 299x299) shared by the tests below."""
    path, sd = fake_weights
    model = load_pytorch_fid_weights(path)
    images = np.random.default_rng(1).integers(0, 256, size=(2, 37, 53, 3), dtype=np.uint8)
    pool3, logits = extract(model, images, batch_size=2)
    return model, sd, images, pool3, logits


def test_load_and_forward_shapes(forward):
    model, sd, _, pool3, logits = forward
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
    assert pool3.dtype == np.float32 and logits.dtype == np.float32
    assert np.isfinite(pool3).all() and np.isfinite(logits).all()
    assert pool3.std() > 1e-3  # not a degenerate constant
    # The loaded values are the file's, converted OIHW -> HWIO and (out, in) -> (in, out).
    np.testing.assert_array_equal(
        np.asarray(model.Conv2d_1a_3x3.conv.kernel[...]),
        sd["Conv2d_1a_3x3.conv.weight"].numpy().transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        np.asarray(model.Mixed_7c.branch_pool.bn.var[...]), sd["Mixed_7c.branch_pool.bn.running_var"].numpy()
    )
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), sd["fc.weight"].numpy().T)


def _torch_reference(sd, images_uint8):
    """pytorch-fid's FID InceptionV3 forward, functionally, on a state dict: (pool3, logits)."""
    t = sd

    def conv(name, x, stride=1, padding=0):
        x = F.conv2d(x, t[f"{name}.conv.weight"], stride=stride, padding=padding)
        x = F.batch_norm(
            x,
            t[f"{name}.bn.running_mean"],
            t[f"{name}.bn.running_var"],
            t[f"{name}.bn.weight"],
            t[f"{name}.bn.bias"],
            training=False,
            eps=1e-3,
        )
        return F.relu(x)

    def avg(x):  # TF-style: padded zeros not counted
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    def block_a(p, x):
        return torch.cat(
            [
                conv(f"{p}.branch1x1", x),
                conv(f"{p}.branch5x5_2", conv(f"{p}.branch5x5_1", x), padding=2),
                conv(
                    f"{p}.branch3x3dbl_3",
                    conv(f"{p}.branch3x3dbl_2", conv(f"{p}.branch3x3dbl_1", x), padding=1),
                    padding=1,
                ),
                conv(f"{p}.branch_pool", avg(x)),
            ],
            1,
        )

    def block_b(p, x):
        d = conv(f"{p}.branch3x3dbl_2", conv(f"{p}.branch3x3dbl_1", x), padding=1)
        return torch.cat(
            [
                conv(f"{p}.branch3x3", x, stride=2),
                conv(f"{p}.branch3x3dbl_3", d, stride=2),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )

    def block_c(p, x):
        b7 = conv(f"{p}.branch7x7_1", x)
        b7 = conv(f"{p}.branch7x7_2", b7, padding=(0, 3))
        b7 = conv(f"{p}.branch7x7_3", b7, padding=(3, 0))
        d = conv(f"{p}.branch7x7dbl_1", x)
        for i, pad in ((2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))):
            d = conv(f"{p}.branch7x7dbl_{i}", d, padding=pad)
        return torch.cat([conv(f"{p}.branch1x1", x), b7, d, conv(f"{p}.branch_pool", avg(x))], 1)

    def block_d(p, x):
        b3 = conv(f"{p}.branch3x3_2", conv(f"{p}.branch3x3_1", x), stride=2)
        b7 = conv(f"{p}.branch7x7x3_1", x)
        b7 = conv(f"{p}.branch7x7x3_2", b7, padding=(0, 3))
        b7 = conv(f"{p}.branch7x7x3_3", b7, padding=(3, 0))
        b7 = conv(f"{p}.branch7x7x3_4", b7, stride=2)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)

    def block_e(p, x, pool):
        b3 = conv(f"{p}.branch3x3_1", x)
        b3 = torch.cat(
            [conv(f"{p}.branch3x3_2a", b3, padding=(0, 1)), conv(f"{p}.branch3x3_2b", b3, padding=(1, 0))], 1
        )
        d = conv(f"{p}.branch3x3dbl_2", conv(f"{p}.branch3x3dbl_1", x), padding=1)
        d = torch.cat(
            [
                conv(f"{p}.branch3x3dbl_3a", d, padding=(0, 1)),
                conv(f"{p}.branch3x3dbl_3b", d, padding=(1, 0)),
            ],
            1,
        )
        pooled = avg(x) if pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([conv(f"{p}.branch1x1", x), b3, d, conv(f"{p}.branch_pool", pooled)], 1)

    with torch.no_grad():
        x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255  # ToTensor
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = conv("Conv2d_1a_3x3", x, stride=2)
        x = conv("Conv2d_2a_3x3", x)
        x = conv("Conv2d_2b_3x3", x, padding=1)
        x = F.max_pool2d(x, 3, stride=2)
        x = conv("Conv2d_3b_1x1", x)
        x = conv("Conv2d_4a_3x3", x)
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            x = block_a(name, x)
        x = block_b("Mixed_6a", x)
        for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = block_c(name, x)
        x = block_d("Mixed_7a", x)
        x = block_e("Mixed_7b", x, "avg")
        x = block_e("Mixed_7c", x, "max")
        assert x.shape[1:] == (2048, 8, 8)
        pool3 = x.mean((2, 3))
        return (
            pool3.numpy(),
            (pool3 @ t["fc.weight"].T).numpy(),
            F.linear(pool3, t["fc.weight"], t["fc.bias"]).numpy(),
        )


def test_matches_functional_torch_forward(forward):
    model, sd, images, pool3, logits = forward
    ref_pool3, ref_logits, ref_logits_bias = _torch_reference(sd, images)
    np.testing.assert_allclose(pool3, ref_pool3, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)  # default: no fc bias
    # With the bias: the torch fc output. Only the head runs here (pool3 is the one above).
    with_bias = np.asarray(model.logits(pool3, bias=True))
    np.testing.assert_allclose(with_bias, ref_logits_bias, rtol=1e-4, atol=1e-5)


def _torchvision_fid_inception():
    """torchvision's Inception3 with pytorch-fid's block patches, or None if it cannot import."""
    try:
        from torchvision.models import inception as tvi
    except Exception:  # noqa: BLE001 - a CUDA torchvision on a CPU torch raises RuntimeError
        return None

    def avg(x):
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    class A(tvi.InceptionA):
        def _forward(self, x):
            d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)), d, self.branch_pool(avg(x))]

    class C(tvi.InceptionC):
        def _forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                d = layer(d)
            return [self.branch1x1(x), b7, d, self.branch_pool(avg(x))]

    class E(tvi.InceptionE):
        use_max = False

        def _forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.use_max else avg(x)
            return [self.branch1x1(x), b3, d, self.branch_pool(pooled)]

    class E2(E):
        use_max = True

    net = tvi.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
    net.Mixed_6b, net.Mixed_6c = C(768, 128), C(768, 160)
    net.Mixed_6d, net.Mixed_6e = C(768, 160), C(768, 192)
    net.Mixed_7b, net.Mixed_7c = E(1280), E2(2048)
    return net.eval()


def test_matches_torchvision_blocks(forward):
    """Parity with torchvision's own Inception modules (pytorch-fid builds on them).

    Skipped when torchvision does not import: it is not a project dependency, and the only
    torchvision wheels for torch 2.13 are CUDA builds that fail to import on the CPU torch.
    """
    net = _torchvision_fid_inception()
    if net is None:
        pytest.skip("torchvision is not importable here")
    _, sd, images, pool3, logits = forward
    net.load_state_dict(sd, strict=True)  # same keys as pytorch-fid's strict load
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
        feats = x
        for name in (
            "Conv2d_1a_3x3",
            "Conv2d_2a_3x3",
            "Conv2d_2b_3x3",
            "maxpool1",
            "Conv2d_3b_1x1",
            "Conv2d_4a_3x3",
            "maxpool2",
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
            "Mixed_6d",
            "Mixed_6e",
            "Mixed_7a",
            "Mixed_7b",
            "Mixed_7c",
            "avgpool",
        ):
            feats = getattr(net, name)(feats)
        feats = feats.flatten(1)
        unbiased = feats @ net.fc.weight.T
        full, head = net(x), net.fc(feats)  # torchvision's forward: fc with bias
    np.testing.assert_allclose(pool3, feats.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, unbiased.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(full.numpy(), head.numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- bad files


def test_rejects_missing_extra_and_misshaped_together(fake_weights, tmp_path):
    _, sd = fake_weights
    bad = dict(sd)
    del bad["Mixed_6c.branch7x7dbl_3.conv.weight"]
    bad["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    bad["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError) as err:
        load_pytorch_fid_weights(path)
    msg = str(err.value)
    assert str(path) in msg and "nothing was loaded" in msg
    assert "missing 1: Mixed_6c.branch7x7dbl_3.conv.weight (160, 160, 1, 7)" in msg
    assert "unexpected 1: AuxLogits.fc.weight (1008, 768)" in msg
    assert "fc.bias has shape (1000,), expected (1008,)" in msg


def test_rejects_non_state_dict_and_missing_file(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_pytorch_fid_weights(path)
    with pytest.raises(FileNotFoundError, match="pytorch-fid/releases/download/fid_weights"):
        load_pytorch_fid_weights(tmp_path / "absent.pth")


def test_missing_torch_names_pip_install(fake_weights, monkeypatch):
    path, _ = fake_weights
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match="pip install torch"):
        load_pytorch_fid_weights(path)


# ------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("src,dst", [((37, 53), (299, 299)), ((512, 400), (299, 299)), ((8, 8), (3, 5))])
def test_resize_matches_torch_interpolate(src, dst):
    x = np.random.default_rng(0).uniform(size=(2,) + src + (3,)).astype(np.float32)
    ours = np.asarray(resize_bilinear(x, dst))
    ref = (
        F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=dst, mode="bilinear", align_corners=False)
        .permute(0, 2, 3, 1)
        .numpy()
    )
    np.testing.assert_allclose(ours, ref, atol=2e-6)


def test_preprocess_range_and_grayscale():
    img = np.array([0, 255], np.uint8).reshape(1, 1, 2, 1).repeat(2, axis=1)  # (1, 2, 2, 1)
    x = np.asarray(preprocess(img, resize_input=False))
    assert x.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(x[0, :, 0], -1.0)
    np.testing.assert_allclose(x[0, :, 1], 1.0)
    assert np.asarray(preprocess(img)).shape == (1, 299, 299, 3)


def test_pools_match_torch():
    x = np.random.default_rng(2).normal(size=(1, 6, 7, 4)).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)

    def back(t):
        return t.permute(0, 2, 3, 1).numpy()

    np.testing.assert_allclose(
        np.asarray(inc._avg_pool_3x3_same(x)),
        back(F.avg_pool2d(xt, 3, 1, 1, count_include_pad=False)),
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_allclose(np.asarray(inc._max_pool(x, 3, 1, 1)), back(F.max_pool2d(xt, 3, 1, 1)))
    np.testing.assert_allclose(np.asarray(inc._max_pool(x)), back(F.max_pool2d(xt, 3, 2)))


def test_extract_rejects_float_images(abstract_model):
    model = abstract_model
    with pytest.raises(ValueError, match="uint8"):
        extract(model, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(1, 32, 32, 4\)"):
        extract(model, np.zeros((1, 32, 32, 4), np.uint8))
