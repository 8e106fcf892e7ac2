"""InceptionV3 for FID in Flax NNX: the pytorch-fid network, fed its released weights.

Why this network: FID, IS and improved precision/recall are only comparable between papers when
they are computed with the same Inception graph, the 2015-12-05 TensorFlow release that TTUR's
``fid.py`` and the ADM evaluator (openai/guided-diffusion) load. pytorch-fid (mseitzer/pytorch-fid)
ported that graph's weights to a PyTorch state dict. This module re-implements that PyTorch
network in NNX (NHWC layout) so the same weights run under JAX, and reproduces pytorch-fid's
outputs (not TF's bit for bit: the ADM evaluator feeds images of any size to the TF graph, which
resizes them to 299x299 with its own bilinear op, so for other sizes its numbers can differ
slightly from pytorch-fid's and ours).

Architecture (facts from pytorch-fid ``src/pytorch_fid/inception.py`` and torchvision
``models/inception.py``, which pytorch-fid patches):

* torchvision's ``Inception3`` with ``num_classes=1008`` and no auxiliary classifier; every conv is
  a ``BasicConv2d``: convolution without bias, ``BatchNorm2d(eps=0.001)``, ReLU. Batch norm runs in
  inference mode (running statistics) only.
* pytorch-fid's FID blocks replace Mixed_5b/5c/5d (``FIDInceptionA``), Mixed_6b..6e
  (``FIDInceptionC``) and Mixed_7b (``FIDInceptionE_1``): their pooling branch averages a 3x3
  window with padding 1 *without counting the padded zeros* (``count_include_pad=False``, as TF's
  average pool). Mixed_7c (``FIDInceptionE_2``) uses a 3x3 *max* pool (stride 1, padding 1) in
  that branch - a quirk of the TF graph that pytorch-fid reproduces. Mixed_6a/7a (InceptionB/D)
  are unchanged: 3x3 stride-2 max pools without padding.
* pool3 = global average of Mixed_7c's ``(8, 8, 2048)`` output -> ``(N, 2048)`` (the FID
  features); logits = ``fc(pool3)``, ``fc`` a 2048 -> 1008 linear layer: the TF graph's
  classifier has 1008 outputs, not 1000, and the Inception Score uses all 1008 of them (see
  :func:`selfflow.eval.frechet.inception_score`).

Input (:func:`preprocess`), matching pytorch-fid's defaults ``resize_input=True,
normalize_input=True`` and its image loading (PIL -> ``ToTensor`` -> values in [0, 1]):
uint8 ``(N, H, W, 3)`` images are divided by 255, resized to 299x299 with bilinear interpolation
exactly as ``F.interpolate(mode="bilinear", align_corners=False)`` (no antialiasing, even when
downsampling), and mapped to [-1, 1] by ``2x - 1``, in pytorch-fid's order. With
``resize_input=False`` the image is used at its own size (the network is convolutional up to the
global pool; at least 75x75).

Weights: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a plain state dict). It cannot
be downloaded from here: fetch it yourself from :data:`FID_WEIGHTS_URL` (pytorch-fid's
``FID_WEIGHTS_URL``) and pass its path to :func:`load_pytorch_fid_weights`. Reading it needs
PyTorch (``pip install torch``; the CPU wheel is enough).

Use::

    model = load_pytorch_fid_weights("pt_inception-2015-12-05-6726825d.pth")
    pool3, logits = extract(model, images_uint8_nhwc, batch_size=50)
    fid = frechet_from_features(pool3_real, pool3)        # selfflow.eval.frechet
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "InceptionV3",
    "expected_state_dict_shapes",
    "extract",
    "load_pytorch_fid_weights",
    "preprocess",
    "resize_bilinear",
]

#: Where pytorch-fid downloads the weights from (its ``FID_WEIGHTS_URL``); fetch it by hand.
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
#: torch.hub convention: the hex after the last '-' of the file name starts its SHA-256.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"

INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL3_DIM = 2048
BN_EPS = 1e-3

_HIGHEST = jax.lax.Precision.HIGHEST


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nnx.Module):
    """torchvision's ``BasicConv2d``: conv (no bias) -> batch norm (eps 1e-3, running stats) -> ReLU.

    ``kernel``/``padding`` are ints or ``(h, w)`` pairs in torch's order; NHWC in and out.
    """

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0, *, rngs: nnx.Rngs):
        ph, pw = _pair(padding)
        self.conv = nnx.Conv(
            cin,
            cout,
            _pair(kernel),
            strides=stride,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=_HIGHEST,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(cout, epsilon=BN_EPS, use_running_average=True, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


def _max_pool(x, size: int = 3, stride: int = 2, pad: int = 0):
    """Max over ``size x size`` windows of NHWC ``x``; padded cells are -inf (as torch's)."""
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1, size, size, 1),
        (1, stride, stride, 1),
        ((0, 0), (pad, pad), (pad, pad), (0, 0)),
    )


def _avg_pool_3x3_same(x):
    """3x3 stride-1 average with padding 1 that ignores the padding (``count_include_pad=False``).

    Each output is the sum over the in-image part of its window divided by that part's size
    (9 inside, 6 on edges, 4 in corners): TF's average pool, which pytorch-fid's FID blocks patch
    in. torchvision's own blocks would divide by 9 everywhere.
    """
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
    ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
    counts = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
    return sums / counts


class InceptionA(nnx.Module):
    """Mixed_5b/5c/5d (pytorch-fid ``FIDInceptionA``): 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1.

    Output channels ``64 + 64 + 96 + pool_features``; spatial size kept (35x35).
    """

    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv(cin, pool_features, 1, rngs=rngs)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a (torchvision ``InceptionB``): 3x3/2 | 1x1->3x3->3x3/2 | maxpool 3x3/2. 35 -> 17.

    Output channels ``384 + 96 + cin``.
    """

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b..6e (pytorch-fid ``FIDInceptionC``): factorised 7x7 branches (1x7 and 7x1 convs).

    1x1 | 1x1->1x7->7x1 | 1x1->7x1->1x7->7x1->1x7 | avgpool->1x1, each 192 channels (768 total).
    """

    def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv(cin, 192, 1, rngs=rngs)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a (torchvision ``InceptionD``): 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool 3x3/2.

    17 -> 8; output channels ``320 + 192 + cin``.
    """

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b / Mixed_7c (pytorch-fid ``FIDInceptionE_1`` / ``FIDInceptionE_2``).

    1x1 (320) | 1x1->{1x3, 3x1} (2x384) | 1x1->3x3->{1x3, 3x1} (2x384) | pool->1x1 (192): 2048
    channels. ``pool="avg"`` (Mixed_7b): 3x3 average without the padding; ``pool="max"``
    (Mixed_7c): 3x3 stride-1 max pool with padding 1, as the TF graph has it.
    """

    def __init__(self, cin: int, pool: str, *, rngs: nnx.Rngs):
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv(cin, 192, 1, rngs=rngs)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        pooled = _avg_pool_3x3_same(x) if self.pool == "avg" else _max_pool(x, 3, 1, 1)
        bp = self.branch_pool(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nnx.Module):
    """pytorch-fid's FID InceptionV3 (see the module docstring), NHWC.

    Attribute names equal the torch module names, so a parameter's path is its state-dict key
    (``Mixed_7c.branch_pool.conv`` <-> ``Mixed_7c.branch_pool.conv.weight``).

    ``model(x)`` takes preprocessed float input ``(N, H, W, 3)`` in [-1, 1] (299x299 for the
    standard numbers, :func:`preprocess`) and returns ``(pool3, logits)``: ``(N, 2048)`` and
    ``(N, 1008)``; ``logits_bias=False`` leaves out ``fc``'s bias (the Inception Score convention).
    """

    def __init__(self, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
        self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)
        self.fc = nnx.Linear(POOL3_DIM, NUM_CLASSES, precision=_HIGHEST, rngs=rngs)

    def pool3(self, x):
        """``(N, H, W, 3)`` in [-1, 1] -> pool3 features ``(N, 2048)``."""
        x = self.Conv2d_1a_3x3(x)  # 299 -> 149, 32 channels
        x = self.Conv2d_2a_3x3(x)  # 147, 32
        x = self.Conv2d_2b_3x3(x)  # 147, 64
        x = _max_pool(x)  # 73
        x = self.Conv2d_3b_1x1(x)  # 73, 80
        x = self.Conv2d_4a_3x3(x)  # 71, 192
        x = _max_pool(x)  # 35
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,  # 35: 256, 288, 288
            self.Mixed_6a,  # 17: 768
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,  # 8: 1280
            self.Mixed_7b,
            self.Mixed_7c,
        ):  # 8: 2048
            x = block(x)
        return jnp.mean(x, axis=(1, 2))

    def logits(self, pool3, bias: bool = True):
        """``(N, 2048)`` pool3 -> ``(N, 1008)`` classifier outputs (with or without fc's bias)."""
        if bias:
            return self.fc(pool3)
        return jnp.dot(pool3, self.fc.kernel[...], precision=_HIGHEST)

    def __call__(self, x, *, logits_bias: bool = True):
        feats = self.pool3(x)
        return feats, self.logits(feats, bias=logits_bias)


# --------------------------------------------------------------------------- preprocessing


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of torch's 1-D linear interpolation with ``align_corners=False``.

    Output ``i`` samples the input at ``(i + 0.5) * n_in / n_out - 0.5`` (half-pixel centres),
    clamped below at 0; it mixes the two neighbouring inputs with weights ``1 - f, f`` and the
    upper neighbour is clamped to the last pixel. No antialiasing (torch's default
    ``antialias=False``), so a downsample reads only two inputs per output.
    """
    # Torch (CPU, float input) computes the float32 scale n_in / n_out, then the source position
    # as one fused multiply-add rounded to float32; doing the same here reproduces its weights
    # bit for bit (checked against F.interpolate on one-hot images).
    f32 = np.float32
    scale = np.float64(f32(n_in) / f32(n_out))
    src = (scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5).astype(f32)
    src = np.maximum(src, f32(0.0))
    lo = np.minimum(src.astype(np.int64), n_in - 1)  # truncation = floor for src >= 0
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo.astype(f32)).astype(np.float64)
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m.astype(np.float32)


def resize_bilinear(x, size: tuple[int, int]):
    """Resize NHWC ``x`` to ``size = (H, W)`` like ``F.interpolate(mode="bilinear",
    align_corners=False)`` (separable: rows, then columns). Identity when the size is unchanged."""
    h, w = x.shape[1], x.shape[2]
    if (h, w) == tuple(size):
        return x
    mh = jnp.asarray(_bilinear_matrix(h, size[0]))
    mw = jnp.asarray(_bilinear_matrix(w, size[1]))
    x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=_HIGHEST)
    return jnp.einsum("pw,nowc->nopc", mw, x, precision=_HIGHEST)


def preprocess(images, resize_input: bool = True):
    """uint8 ``(N, H, W, 3)`` images -> float32 network input in [-1, 1].

    pytorch-fid's pipeline: ``/255`` (``ToTensor``), bilinear resize to 299x299 when
    ``resize_input`` (its default), ``2x - 1`` (``normalize_input``, its default). Grayscale
    ``(N, H, W, 1)`` is repeated to 3 channels, as pytorch-fid's ``Image.convert("RGB")`` does.
    """
    x = jnp.asarray(images)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = x.astype(jnp.float32) / 255.0
    if resize_input:
        x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
    return 2.0 * x - 1.0


# --------------------------------------------------------------------------- extraction


@functools.partial(jax.jit, static_argnames=("graphdef", "resize_input", "logits_bias"))
def _forward(graphdef, state, images, resize_input: bool, logits_bias: bool):
    model = nnx.merge(graphdef, state)
    return model(preprocess(images, resize_input), logits_bias=logits_bias)


def extract(
    model: InceptionV3, images, batch_size: int = 50, *, resize_input: bool = True, logits_bias: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """pool3 features and logits of uint8 images, in jitted batches.

    Args:
      model: an :class:`InceptionV3` (normally from :func:`load_pytorch_fid_weights`).
      images: uint8 ``(N, H, W, 3)`` (or ``(N, H, W, 1)``, repeated to RGB), values 0..255, any
        size (resized to 299x299 unless ``resize_input=False``).
      batch_size: images per forward pass. The last batch is padded to this size (and the padding
        dropped), so one compilation serves every batch.
      logits_bias: include ``fc``'s bias in the logits. Default ``False``: the Inception Score
        convention (improved-gan's IS code and the ADM evaluator use ``pool3 @ W`` over all 1008
        outputs, torch-fidelity calls it "logits_unbiased"); ``True`` gives the torch model's
        ``fc`` output.

    Returns:
      ``(pool3, logits)`` as float32 numpy arrays ``(N, 2048)`` and ``(N, 1008)``.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(
            f"extract expects uint8 images (0..255, as pytorch-fid reads image files), "
            f"got dtype {images.dtype}; convert e.g. with "
            f"np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8) for [-1, 1]"
        )
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"extract expects NHWC images with 1 or 3 channels, got shape {images.shape}")
    if not resize_input and min(images.shape[1:3]) < 75:
        raise ValueError(
            f"images of size {images.shape[1:3]} are too small for InceptionV3 "
            f"without resizing (at least 75x75); use resize_input=True"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = images.shape[0]
    graphdef, state = nnx.split(model)
    pool3 = np.empty((n, POOL3_DIM), np.float32)
    logits = np.empty((n, NUM_CLASSES), np.float32)
    bs = min(batch_size, n) if n else 1
    for start in range(0, n, bs):
        batch = images[start : start + bs]
        m = len(batch)
        if m < bs:
            batch = np.concatenate([batch, np.zeros((bs - m,) + batch.shape[1:], batch.dtype)])
        f, lg = _forward(graphdef, state, batch, resize_input, logits_bias)
        pool3[start : start + m] = np.asarray(f)[:m]
        logits[start : start + m] = np.asarray(lg)[:m]
    return pool3, logits


# --------------------------------------------------------------------------- torch weights

# NNX leaf name -> torch state-dict suffix, per layer kind.
_TORCH_NAMES = {
    "kernel": "weight",
    "bias": "bias",
    "scale": "weight",
    "mean": "running_mean",
    "var": "running_var",
}


def _torch_key(path) -> str:
    """NNX state path (tuple of keys) -> torch state-dict key."""
    parts = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
    return ".".join(parts[:-1] + [_TORCH_NAMES[parts[-1]]])


def _to_torch_shape(name: str, shape: tuple) -> tuple:
    """Shape of a leaf in torch layout: conv HWIO -> OIHW, linear (in, out) -> (out, in)."""
    if name == "kernel" and len(shape) == 4:
        h, w, i, o = shape
        return (o, i, h, w)
    if name == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _to_nnx_array(name: str, arr: np.ndarray) -> np.ndarray:
    """Torch-layout array -> NNX layout (inverse of :func:`_to_torch_shape`)."""
    if name == "kernel" and arr.ndim == 4:
        return np.transpose(arr, (2, 3, 1, 0))  # OIHW -> HWIO
    if name == "kernel" and arr.ndim == 2:
        return arr.T
    return arr


def _abstract_model() -> InceptionV3:
    return nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0)))


def _leaves(model: InceptionV3):
    """``[(torch_key, nnx_leaf_name, path, value)]`` for every parameter and batch statistic."""
    _, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    out = []
    for path, value in jax.tree_util.tree_flatten_with_path(pure)[0]:
        name = str(getattr(path[-1], "key", path[-1]))
        out.append((_torch_key(path), name, path, value))
    return out


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> tuple:
    return tuple(
        (key, _to_torch_shape(name, tuple(v.shape))) for key, name, _, v in _leaves(_abstract_model())
    )


def expected_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """The torch state-dict key -> shape table that pytorch-fid's weight file must match.

    Derived from :class:`InceptionV3` itself (an abstract ``nnx.eval_shape`` build, no
    computation): every conv weight (OIHW), batch-norm ``weight``/``bias``/``running_mean``/
    ``running_var``, and ``fc.weight`` ``(1008, 2048)`` / ``fc.bias`` ``(1008,)``. Batch norm's
    ``num_batches_tracked`` counters are not listed: they play no part in inference and
    :func:`load_pytorch_fid_weights` accepts the file with or without them.
    """
    return dict(_expected_shapes())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_pytorch_fid_weights(path: str | os.PathLike, *, check_hash: bool = False) -> InceptionV3:
    """An :class:`InceptionV3` holding pytorch-fid's weights from ``path``.

    ``path`` is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a plain state dict), which
    you download yourself from :data:`FID_WEIGHTS_URL` (this code never downloads). It is read
    with ``torch.load(weights_only=True)`` (no arbitrary pickles), so PyTorch must be installed.

    Every key and shape is checked against :func:`expected_state_dict_shapes` before anything is
    assigned: missing, unexpected and mis-shaped tensors (and non-finite values) are listed
    together in one ``ValueError``; there are no partial loads. ``*.num_batches_tracked`` entries
    are accepted and ignored. Conv weights go OIHW -> HWIO and ``fc.weight`` is transposed; all
    values become float32.

    Args:
      path: the ``.pth`` file.
      check_hash: also require the file's SHA-256 to start with ``6726825d`` (the prefix in its
        name, torch.hub's convention); off by default because hashing 100 MB takes a moment.

    Raises:
      FileNotFoundError: no file at ``path`` (the message gives the download URL).
      ImportError: PyTorch is not installed.
      ValueError: the file is not a state dict, or does not match the model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no Inception weight file at {path}: download pytorch-fid's "
            f"{FID_WEIGHTS_FILENAME} from {FID_WEIGHTS_URL} and pass its path"
        )
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading the PyTorch weight file {path} needs PyTorch: "
            f"pip install torch (the CPU wheel is enough)"
        ) from e
    if check_hash:
        digest = _sha256(path)
        if not digest.startswith(FID_WEIGHTS_SHA256_PREFIX):
            raise ValueError(
                f"{path}: SHA-256 {digest} does not start with "
                f"{FID_WEIGHTS_SHA256_PREFIX}; not pytorch-fid's {FID_WEIGHTS_FILENAME}"
            )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise ValueError(
            f"could not read {path} as a PyTorch state dict (torch.load weights_only=True): {e}"
        ) from e
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"{path} holds a {type(state_dict).__name__}, not a state dict "
            f"(a mapping from parameter names to tensors)"
        )

    expected = expected_state_dict_shapes()
    arrays: dict[str, np.ndarray] = {}
    missing = [f"{k} {s}" for k, s in expected.items() if k not in state_dict]
    unexpected, misshaped, bad = [], [], []
    for key, value in state_dict.items():
        shape = tuple(value.shape) if hasattr(value, "shape") else None
        if key not in expected:
            if str(key).endswith(".num_batches_tracked") and shape == ():
                continue  # BatchNorm's step counter: unused in inference
            unexpected.append(f"{key} {shape}")
            continue
        if not isinstance(value, torch.Tensor):
            bad.append(f"{key} is a {type(value).__name__}, not a tensor")
            continue
        if shape != expected[key]:
            misshaped.append(f"{key} has shape {shape}, expected {expected[key]}")
            continue
        arr = value.detach().to("cpu", torch.float32).numpy()
        if not np.isfinite(arr).all():
            bad.append(f"{key} has {int((~np.isfinite(arr)).sum())} non-finite values")
            continue
        arrays[key] = arr
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: " + ", ".join(unexpected))
    if misshaped:
        problems.append(f"mis-shaped {len(misshaped)}: " + "; ".join(misshaped))
    if bad:
        problems.append("invalid: " + "; ".join(bad))
    if problems:
        raise ValueError(
            f"{path} does not match pytorch-fid's InceptionV3 (nothing was loaded): " + " | ".join(problems)
        )

    abstract = _abstract_model()
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)

    def fill(p, leaf):
        name = str(getattr(p[-1], "key", p[-1]))
        return jnp.asarray(_to_nnx_array(name, arrays[_torch_key(p)]), dtype=leaf.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(fill, pure))
    return nnx.merge(graphdef, state)
