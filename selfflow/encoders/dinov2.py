"""DINOv2 (Oquab et al. 2023) in Flax NNX, fed the Hugging Face checkpoint files.

Why: REPA-style baselines align the generator's tokens with a frozen DINOv2's patch tokens, and the
text-to-image numbers of the paper use FD-DINOv2 (:mod:`selfflow.eval.dinov2_fd`). This module
re-implements transformers' ``Dinov2Model`` so the released weights run under JAX and give its
outputs (parity tests: ``tests/test_dinov2.py``, relative error ~1e-6 in float32).

Architecture (facts from transformers ``models/dinov2/modeling_dinov2.py`` and the released
``config.json`` files):

* Patch embedding: a ``patch x patch`` convolution with stride ``patch`` (14) -> ``(h, w, D)``
  tokens, flattened row-major; a learned CLS token in front; learned position embeddings for a
  ``pos_grid x pos_grid`` grid (37 x 37 = 518 px in every released checkpoint), bicubically
  interpolated to other grids exactly as transformers' ``interpolate_pos_encoding``
  (``F.interpolate(mode="bicubic", align_corners=False)`` to the target size, cubic coefficient
  -0.75, clamped borders, no antialiasing), the CLS position unchanged. transformers always
  interpolates unless the grid equals the checkpoint's, so at 224 px (16 x 16) it always does.
  (The original facebookresearch code interpolates by a scale factor with a +0.1 offset instead:
  its features at 224 px differ slightly from transformers' and ours.)
* ``depth`` pre-norm blocks: ``x + ls1 * attn(norm1(x))``, then ``x + ls2 * mlp(norm2(x))``, with
  LayerNorm eps 1e-6 (two-pass variance, as torch), separate query/key/value projections with
  bias, softmax scaled by ``head_dim ** -0.5`` (head_dim 64 in all released sizes), per-channel
  layer scales ``lambda1``, and an MLP ``fc1 -> GELU (exact erf form, config hidden_act "gelu") ->
  fc2`` of width ``4 D``; ViT-g/14 instead has a SwiGLU MLP (``weights_in`` giving gate and up
  halves, ``silu(gate) * up``, ``weights_out``).
* The final ``layernorm`` is applied to every output token: ``cls`` is transformers'
  ``pooler_output`` (= the normalised CLS token ``x_norm_clstoken`` of the original code) and
  ``patch_tokens`` its ``last_hidden_state[:, 1:]`` (``x_norm_patchtokens``, REPA's target).
* ``mask_token`` (``(1, D)``) is in the checkpoint for masked-image pretraining. It is loaded and
  shape-checked, and used only when ``__call__`` gets a ``mask``.

Input convention: :class:`Dinov2` takes what transformers calls ``pixel_values``, in NHWC:
float32 ``(B, H, W, 3)`` already normalised with the ImageNet mean and std, H and W multiples of
14. :func:`preprocess` makes it from images in [0, 1] (float) or uint8: resize to ``size`` (224
by default, the resolution FD-DINOv2 and REPA use) with antialiased bicubic interpolation (as PIL's
bicubic resize that torchvision and dgm-eval use; the whole image, no crop), then ``(x - mean) /
std``. The Hugging Face image processor instead resizes the short side to 256 and centre-crops
224: pass your own pixels to the model if you need that.

Weights: the ``model.safetensors`` of ``facebook/dinov2-{small,base,large,giant}`` (transformers'
``Dinov2Model`` layout as stored on the Hub: ``encoder.layer.<i>.attention.attention.query.weight``
...). Files written from a transformers >= 5 in-memory ``state_dict()`` (``attention.q_proj``,
``mlp.gate_proj`` ...) are accepted too. Nothing is downloaded here.

Use::

    model = load_dinov2("dinov2-base/model.safetensors")  # size inferred from the shapes
    out = model(preprocess(images_uint8))                   # {"cls": (B, 768), "patch_tokens": (B, 256, 768)}
    target = model.features_on_grid(images_uint8, (32, 32))   # (B, 1024, 768) for a 32x32 token grid
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfflow.errors import ParamsError
from selfflow.params import assign_params, nnx_to_torch, shape_problems, tensor_name, torch_to_nnx

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SIZES",
    "Dinov2",
    "Dinov2Arch",
    "bicubic_resize_matrix",
    "checkpoint_tensors",
    "expected_file_shapes",
    "interpolate_pos_embed",
    "load_dinov2",
    "preprocess",
    "resize_tokens",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYER_NORM_EPS = 1e-6
DEFAULT_SIZE = 224
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Dinov2Arch:
    """The shape of a DINOv2 network.

    ``mlp_hidden`` is ``fc1``'s width (``4 * hidden``), or for ``swiglu`` the width of each of the
    gate/up halves (transformers: ``ceil8(int(4 * hidden * 2 / 3))``). ``pos_grid`` is the side of
    the checkpoint's position-embedding grid (``image_size // patch_size`` of its config).
    """

    hidden: int
    depth: int
    heads: int
    mlp_hidden: int
    swiglu: bool = False
    patch: int = 14
    pos_grid: int = 37
    name: str = "custom"

    def __post_init__(self):
        if min(self.hidden, self.depth, self.heads, self.mlp_hidden, self.patch, self.pos_grid) < 1:
            raise ValueError(f"{self}: every size must be >= 1")
        if self.hidden % self.heads:
            raise ValueError(f"{self}: hidden {self.hidden} is not divisible by heads {self.heads}")

    @classmethod
    def from_hf_config(cls, config: Mapping) -> Dinov2Arch:
        """From a transformers ``Dinov2Config`` (``config.to_dict()`` or a ``config.json``).

        Raises ``ValueError`` naming the setting for what this port does not implement (another
        activation or LayerNorm eps, no qkv bias, no mask token, a non-square position grid)."""
        get = lambda k, d=None: config.get(k, d)
        problems = []
        swiglu = bool(get("use_swiglu_ffn", False))
        if not swiglu and get("hidden_act", "gelu") != "gelu":
            problems.append(f"hidden_act={get('hidden_act')!r} (only 'gelu', exact)")
        if get("layer_norm_eps", LAYER_NORM_EPS) != LAYER_NORM_EPS:
            problems.append(f"layer_norm_eps={get('layer_norm_eps')} (only {LAYER_NORM_EPS})")
        for key, want in (("qkv_bias", True), ("use_mask_token", True), ("num_channels", 3)):
            if get(key, want) != want:
                problems.append(f"{key}={get(key)!r} (only {want!r})")
        sizes = {}
        for key in ("image_size", "patch_size"):
            v = get(key, 518 if key == "image_size" else 14)
            v = tuple(v) if isinstance(v, (list, tuple)) else (v, v)
            if v[0] != v[1]:
                problems.append(f"{key}={list(v)} (only square)")
            sizes[key] = int(v[0])
        if problems:
            raise ValueError("unsupported DINOv2 config: " + "; ".join(problems))
        hidden = int(get("hidden_size", 768))
        mlp = int(hidden * get("mlp_ratio", 4))
        if swiglu:
            mlp = (int(mlp * 2 / 3) + 7) // 8 * 8
        return cls(
            hidden=hidden,
            depth=int(get("num_hidden_layers", 12)),
            heads=int(get("num_attention_heads", 12)),
            mlp_hidden=mlp,
            swiglu=swiglu,
            patch=sizes["patch_size"],
            pos_grid=sizes["image_size"] // sizes["patch_size"],
        )


#: The released checkpoints (facebook/dinov2-*): ViT-S/14, B/14, L/14, g/14, all 518 px (37 x 37).
SIZES = {
    "small": Dinov2Arch(384, 12, 6, 1536, name="small"),
    "base": Dinov2Arch(768, 12, 12, 3072, name="base"),
    "large": Dinov2Arch(1024, 24, 16, 4096, name="large"),
    "giant": Dinov2Arch(1536, 40, 24, 4096, swiglu=True, name="giant"),
}


# --------------------------------------------------------------------------- resampling


@functools.lru_cache(maxsize=64)
def bicubic_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float32 matrix of torch's 1-D bicubic resize (``align_corners=False``).

    As ``F.interpolate(mode="bicubic")`` without antialiasing: source coordinate
    ``(o + 0.5) * n_in / n_out - 0.5``, Keys cubic with ``A = -0.75`` on its 4 neighbours, indices
    clamped to the border. Bicubic 2-D resizing is this matrix applied along each axis.
    """
    a = -0.75
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    t = src - base
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    m = np.zeros((n_out, n_in), np.float64)
    for k in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + k, 0, n_in - 1)
        np.add.at(m, (np.arange(n_out), idx), weights[:, k])
    return m.astype(np.float32)


def interpolate_pos_embed(pos: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    """``(1, 1 + g*g, D)`` checkpoint position embeddings -> ``(1, 1 + h*w, D)`` for an ``(h, w)``
    token grid: the patch part bicubically resized (transformers' ``interpolate_pos_encoding``),
    the CLS position kept. Unchanged when ``(h, w) == (g, g)``."""
    g = int(round((pos.shape[1] - 1) ** 0.5))
    h, w = grid_hw
    if (h, w) == (g, g):
        return pos
    grid = pos[0, 1:].reshape(g, g, pos.shape[-1])
    grid = jnp.einsum("hg,gkd->hkd", jnp.asarray(bicubic_resize_matrix(g, h)), grid, precision=_HIGHEST)
    grid = jnp.einsum("wk,hkd->hwd", jnp.asarray(bicubic_resize_matrix(g, w)), grid, precision=_HIGHEST)
    return jnp.concatenate([pos[:, :1], grid.reshape(1, h * w, -1)], axis=1)


def resize_tokens(tokens: jax.Array, src_hw: tuple[int, int], grid_hw: tuple[int, int]) -> jax.Array:
    """``(B, h*w, D)`` row-major token map -> ``(B, gh*gw, D)`` on another grid.

    ``jax.image.resize(method="linear", antialias=True)`` on the ``(h, w, D)`` map: plain bilinear
    interpolation with half-pixel centres when enlarging (``F.interpolate(mode="bilinear",
    align_corners=False)``), a triangle filter as wide as the scale when shrinking, so every token
    contributes (an area-like average, no aliasing). Identity when the grids are equal.
    """
    (h, w), (gh, gw) = src_hw, grid_hw
    if (h, w) == (gh, gw):
        return tokens
    b, _, d = tokens.shape
    grid = jax.image.resize(tokens.reshape(b, h, w, d), (b, gh, gw, d), "linear", antialias=True)
    return grid.reshape(b, gh * gw, d)


def _size_pair(size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(h), int(w)


def preprocess(images, size: int | tuple[int, int] = DEFAULT_SIZE, patch: int = 14) -> jax.Array:
    """Images -> DINOv2 input: float32 ``(B, size_h, size_w, 3)``, ImageNet-normalised.

    Args:
      images: ``(B, H, W, 3)`` or grayscale ``(B, H, W, 1)`` (repeated to RGB); uint8 0..255 or
        float in [0, 1] (map [-1, 1] images with ``(x + 1) / 2``).
      size: output side (or ``(h, w)``), multiples of ``patch``; 224 gives a 16 x 16 token grid.
        Resized with antialiased bicubic interpolation (Keys, -0.5: PIL's bicubic) unless the
        size is already right.
    """
    x = jnp.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"DINOv2 preprocess expects NHWC images (B, H, W, 3) or (B, H, W, 1), got shape {tuple(x.shape)}"
        )
    h, w = _size_pair(size)
    if h % patch or w % patch or min(h, w) < patch:
        raise ValueError(f"size {(h, w)} must be positive multiples of the patch size {patch}")
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    if x.shape[1:3] != (h, w):
        x = jax.image.resize(x, (x.shape[0], h, w, 3), "cubic", antialias=True)
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


# --------------------------------------------------------------------------- network

_trunc02 = nnx.initializers.truncated_normal(0.02)


def _linear(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, kernel_init=_trunc02, rngs=rngs)


def _norm(d: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(d, epsilon=LAYER_NORM_EPS, use_fast_variance=False, rngs=rngs)


class PatchEmbeddings(nnx.Module):
    """``projection``: the ``patch x patch`` stride-``patch`` convolution, 3 -> D channels."""

    def __init__(self, arch: Dinov2Arch, rngs: nnx.Rngs):
        p = arch.patch
        self.projection = nnx.Conv(
            3, arch.hidden, (p, p), strides=p, padding="VALID", kernel_init=_trunc02, rngs=rngs
        )


class Embeddings(nnx.Module):
    """CLS token ``(1, 1, D)``, mask token ``(1, D)``, position embeddings ``(1, 1 + g*g, D)``."""

    def __init__(self, arch: Dinov2Arch, rngs: nnx.Rngs):
        d = arch.hidden
        self.cls_token = nnx.Param(_trunc02(rngs.params(), (1, 1, d)))
        self.mask_token = nnx.Param(jnp.zeros((1, d)))
        self.position_embeddings = nnx.Param(_trunc02(rngs.params(), (1, 1 + arch.pos_grid**2, d)))
        self.patch_embeddings = PatchEmbeddings(arch, rngs)

    def __call__(self, pixels: jax.Array, mask: jax.Array | None) -> jax.Array:
        x = self.patch_embeddings.projection(pixels)  # (B, h, w, D)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        if mask is not None:
            x = jnp.where(mask[..., None], self.mask_token[...].astype(x.dtype), x)
        cls = jnp.broadcast_to(self.cls_token[...], (b, 1, d))
        x = jnp.concatenate([cls, x], axis=1)
        return x + interpolate_pos_embed(self.position_embeddings[...], (h, w))


class SelfAttention(nnx.Module):
    """``query``, ``key``, ``value``: D -> D projections (transformers' ``attention.attention``)."""

    def __init__(self, arch: Dinov2Arch, rngs: nnx.Rngs):
        self.query = _linear(arch.hidden, arch.hidden, rngs)
        self.key = _linear(arch.hidden, arch.hidden, rngs)
        self.value = _linear(arch.hidden, arch.hidden, rngs)


class AttentionOutput(nnx.Module):
    def __init__(self, arch: Dinov2Arch, rngs: nnx.Rngs):
        self.dense = _linear(arch.hidden, arch.hidden, rngs)


class Attention(nnx.Module):
    """Multi-head self-attention; the nesting mirrors the checkpoint's parameter names."""

    def __init__(self, arch: Dinov2Arch, rngs: nnx.Rngs):
        self.heads = arch.heads
        self.attention = SelfAttention(arch, rngs)
        self.output = AttentionOutput(arch, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        split = lambda t: t.reshape(b, n, self.heads, d // self.heads)
        q = split(self.attention.query(x))
        k = split(self.attention.key(x))
        v = split(self.attention.value(x))
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k) * (d // self.heads) ** -0.5
        out = jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(logits, axis=-1), v)
        return self.output.dense(out.reshape(b, n, d))


class LayerScale(nnx.Module):
    def __init__(self, d: int):
        self.lambda1 = nnx.Param(jnp.ones((d,)))

    def __call__(self, x):
        return x * self.lambda1[...]


class Mlp(nnx.Module):
    """``fc2(gelu(fc1(x)))``, exact (erf) GELU."""

    def __init__(self, arch: Dinov2Arch, rngs: nnx.Rngs):
        self.fc1 = _linear(arch.hidden, arch.mlp_hidden, rngs)
        self.fc2 = _linear(arch.mlp_hidden, arch.hidden, rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class SwiGLU(nnx.Module):
    """ViT-g's MLP: ``weights_in`` gives ``[gate | up]`` (2 * mlp_hidden), ``silu(gate) * up``."""

    def __init__(self, arch: Dinov2Arch, rngs: nnx.Rngs):
        self.weights_in = _linear(arch.hidden, 2 * arch.mlp_hidden, rngs)
        self.weights_out = _linear(arch.mlp_hidden, arch.hidden, rngs)

    def __call__(self, x):
        gate, up = jnp.split(self.weights_in(x), 2, axis=-1)
        return self.weights_out(jax.nn.silu(gate) * up)


class Layer(nnx.Module):
    """One pre-norm block with layer scales (transformers' ``Dinov2Layer``)."""

    def __init__(self, arch: Dinov2Arch, rngs: nnx.Rngs):
        self.norm1 = _norm(arch.hidden, rngs)
        self.attention = Attention(arch, rngs)
        self.layer_scale1 = LayerScale(arch.hidden)
        self.norm2 = _norm(arch.hidden, rngs)
        self.mlp = SwiGLU(arch, rngs) if arch.swiglu else Mlp(arch, rngs)
        self.layer_scale2 = LayerScale(arch.hidden)

    def __call__(self, x):
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Encoder(nnx.Module):
    def __init__(self, arch: Dinov2Arch, rngs: nnx.Rngs):
        self.layer = nnx.List([Layer(arch, rngs) for _ in range(arch.depth)])


class Dinov2(nnx.Module):
    """transformers' ``Dinov2Model`` in NNX, NHWC (see the module docstring).

    Parameter paths equal the checkpoint's keys up to the leaf name (``kernel``/``scale`` for
    ``weight``): ``encoder.layer.3.attention.attention.query.kernel`` <->
    ``encoder.layer.3.attention.attention.query.weight`` (transposed).
    """

    def __init__(self, arch: Dinov2Arch, *, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.arch = arch
        self.embeddings = Embeddings(arch, rngs)
        self.encoder = Encoder(arch, rngs)
        self.layernorm = _norm(arch.hidden, rngs)

    def _check_pixels(self, pixels) -> tuple[int, int]:
        shape, p = tuple(pixels.shape), self.arch.patch
        if len(shape) != 4 or shape[-1] != 3:
            hint = " (channels-first? DINOv2 here is NHWC)" if len(shape) == 4 and shape[1] == 3 else ""
            raise ValueError(
                f"DINOv2 expects normalised NHWC pixels (B, H, W, 3), got shape {shape}{hint}; "
                f"make them with selfflow.encoders.dinov2.preprocess"
            )
        if shape[1] % p or shape[2] % p or min(shape[1:3]) < p:
            raise ValueError(
                f"DINOv2 input of shape {shape}: H and W must be positive multiples of the patch size "
                f"{p} (preprocess(images, size=...) resizes)"
            )
        return shape[1] // p, shape[2] // p

    def __call__(
        self,
        pixels: jax.Array,
        *,
        layers: Sequence[int] = (),
        norm_layers: bool = False,
        mask: jax.Array | None = None,
    ) -> dict:
        """Features of ``pixels``.

        Args:
          pixels: float32 ``(B, H, W, 3)``, ImageNet-normalised (:func:`preprocess`), H and W
            multiples of 14; other sizes than the checkpoint's 518 interpolate the position
            embeddings (bicubic).
          layers: 1-based block indices whose outputs to return as well.
          norm_layers: apply the final LayerNorm to those too (the original code's
            ``get_intermediate_layers(norm=True)``); by default they are raw, as transformers'
            ``hidden_states[l]``.
          mask: optional bool ``(B, h*w)``: patches replaced by the mask token (pretraining).

        Returns:
          ``{"cls": (B, D), "patch_tokens": (B, h*w, D), "last_hidden_state": (B, 1 + h*w, D)}``
          (all after the final LayerNorm; patch tokens row-major over the ``(H/14, W/14)`` grid),
          plus ``"layers": {l: (B, 1 + h*w, D)}`` when ``layers`` is given.
        """
        self._check_pixels(pixels)
        bad = [l for l in layers if not 1 <= l <= self.arch.depth]
        if bad:
            raise ValueError(f"layers {bad} out of range: blocks are 1..{self.arch.depth}")
        x = self.embeddings(jnp.asarray(pixels, jnp.float32), mask)
        kept = {}
        for i, layer in enumerate(self.encoder.layer, start=1):
            x = layer(x)
            if i in layers:
                kept[i] = self.layernorm(x) if norm_layers else x
        x = self.layernorm(x)
        out = {"cls": x[:, 0], "patch_tokens": x[:, 1:], "last_hidden_state": x}
        if layers:
            out["layers"] = kept
        return out

    def features_on_grid(
        self,
        images,
        grid_hw: tuple[int, int],
        *,
        size: int | tuple[int, int] = DEFAULT_SIZE,
        layer: int | None = None,
    ) -> jax.Array:
        """Patch tokens of raw ``images`` on a ``grid_hw = (gh, gw)`` token grid: ``(B, gh*gw, D)``.

        REPA's target: ``images`` (uint8 or float in [0, 1], :func:`preprocess`) are resized to
        ``size`` (224: a 16 x 16 grid), encoded, and the ``(H/14, W/14, D)`` patch-token map is
        resized to the generator's grid with :func:`resize_tokens` (bilinear when enlarging,
        antialiased when shrinking; identity when it already matches, e.g. 16 x 16 at 224 px).
        ``layer``: the raw output of that block instead of the final normalised tokens. Eager;
        jit it for training, e.g. ``nnx.jit(lambda m, x: m.features_on_grid(x, (16, 16)))``.
        """
        x = preprocess(images, size, self.arch.patch)
        src = self._check_pixels(x)
        out = self(x, layers=() if layer is None else (layer,))
        tokens = out["patch_tokens"] if layer is None else out["layers"][layer][:, 1:]
        return resize_tokens(tokens, src, tuple(grid_hw))


# --------------------------------------------------------------------------- checkpoint files

# NNX leaf name -> checkpoint leaf name.
_LEAF = {"kernel": "weight", "scale": "weight"}

# transformers >= 5 in-memory names -> the Hub file's names (its save_pretrained writes the latter).
_RENAMES = (
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".mlp.down_proj.", ".mlp.weights_out."),
)


def _file_key(nnx_name: str) -> str:
    head, _, leaf = nnx_name.rpartition(".")
    return f"{head}.{_LEAF.get(leaf, leaf)}"


def _abstract(arch: Dinov2Arch) -> Dinov2:
    return nnx.eval_shape(lambda: Dinov2(arch, rngs=nnx.Rngs(0)))


def _nnx_shapes(model: Dinov2) -> dict[str, tuple]:
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {tensor_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(pure)[0]}


def expected_file_shapes(arch: Dinov2Arch) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape (torch layout) that a file for ``arch`` must hold, derived from
    :class:`Dinov2` itself (an abstract build)."""
    return {
        _file_key(k): nnx_to_torch(k, np.empty(s, np.bool_)).shape
        for k, s in _nnx_shapes(_abstract(arch)).items()
    }


def checkpoint_tensors(model: Dinov2) -> dict[str, np.ndarray]:
    """``model``'s parameters under the checkpoint's keys and torch layouts: what
    :func:`load_dinov2` reads (``safetensors.numpy.save_file(checkpoint_tensors(m), path)``)."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out = {}
    for p, x in jax.tree_util.tree_flatten_with_path(pure)[0]:
        name, arr = tensor_name(p), np.array(x, np.float32)  # a writable copy
        if name.endswith(".kernel"):
            arr = np.transpose(arr, (3, 2, 0, 1)) if arr.ndim == 4 else arr.T
        out[_file_key(name)] = np.ascontiguousarray(arr)
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _normalise_names(shapes: dict[str, tuple]) -> tuple[dict[str, tuple], dict[str, list[str]]]:
    """File keys -> Hub-layout keys: ``{key: shape}`` and ``{key: [source keys]}`` (two for a
    SwiGLU ``weights_in`` split into ``gate_proj`` / ``up_proj``, concatenated in that order)."""
    out, sources = {}, {}
    for key, shape in shapes.items():
        new = key
        for old, hub in _RENAMES:
            new = new.replace(old, hub)
        if ".mlp.gate_proj." in key:
            up = key.replace(".mlp.gate_proj.", ".mlp.up_proj.")
            if up in shapes and shapes[up] == shape:
                new = key.replace(".mlp.gate_proj.", ".mlp.weights_in.")
                out[new], sources[new] = (2 * shape[0],) + tuple(shape[1:]), [key, up]
                continue
        if ".mlp.up_proj." in key and key.replace(".mlp.up_proj.", ".mlp.gate_proj.") in shapes:
            gate = key.replace(".mlp.up_proj.", ".mlp.gate_proj.")
            if shapes[gate] == shape:
                continue  # consumed with its gate half
        out[new], sources[new] = tuple(shape), [key]
    return out, sources


def _named(arch: Dinov2Arch) -> Dinov2Arch:
    for name, known in SIZES.items():
        if dataclasses.replace(arch, name=name) == known:
            return known
    return arch


def _config_beside(path: Path) -> Dinov2Arch | None:
    """The architecture in a transformers ``config.json`` next to ``path`` (a Hub snapshot), if
    there is one for DINOv2."""
    import json

    config = path.parent / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise ParamsError(f"{config} (beside {path.name}) is not readable JSON: {_one_line(e)}") from None
    if not isinstance(data, dict) or data.get("model_type") != "dinov2":
        return None
    try:
        return _named(Dinov2Arch.from_hf_config(data))
    except ValueError as e:
        raise ParamsError(f"{config}: {e}") from None


def _resolve_arch(path: Path, size, shapes: dict[str, tuple]) -> Dinov2Arch:
    if isinstance(size, Dinov2Arch):
        return size
    if size is not None:
        if size not in SIZES:
            raise ValueError(f"size={size!r}: expected one of {sorted(SIZES)}, a Dinov2Arch, or None")
        return SIZES[size]
    beside = _config_beside(path)
    if beside is not None:
        return beside
    cls = shapes.get("embeddings.cls_token")
    if cls is None:
        sample = ", ".join(sorted(shapes)[:3]) or "nothing"
        raise ParamsError(
            f"{path} is not a DINOv2 checkpoint (no embeddings.cls_token; it holds {len(shapes)} "
            f"tensors: {sample}...); pass the model.safetensors of facebook/dinov2-<size>"
        )
    by_width = {a.hidden: a for a in SIZES.values()}
    if cls[-1] not in by_width:
        widths = ", ".join(f"{k} {a.hidden}" for k, a in SIZES.items())
        raise ParamsError(
            f"{path}: DINOv2 width {cls[-1]} (embeddings.cls_token {cls}) is none of the released "
            f"sizes ({widths}) and no DINOv2 config.json is beside it; pass size=Dinov2Arch(...)"
        )
    return by_width[cls[-1]]


def load_dinov2(path: str | os.PathLike, size: str | Dinov2Arch | None = None) -> Dinov2:
    """A :class:`Dinov2` holding the weights of the safetensors file ``path``.

    ``path`` is the Hugging Face ``model.safetensors`` of ``facebook/dinov2-<size>`` (you download
    it; see the module docstring for the key layouts accepted). Every key and shape is checked
    against the architecture before any value is read: missing, unexpected and mis-shaped tensors
    (and non-finite values) are listed together in one :class:`~selfflow.errors.ParamsError`
    naming the file; nothing is loaded partially. Values become float32.

    Args:
      path: the ``.safetensors`` file, or a directory holding ``model.safetensors`` (a Hub
        snapshot).
      size: ``"small"``, ``"base"``, ``"large"``, ``"giant"`` (:data:`SIZES`), a
        :class:`Dinov2Arch`, or ``None``: the ``config.json`` beside the file if it is a DINOv2
        one (as in a Hub snapshot), else the released size whose width matches
        ``embeddings.cls_token``.

    Raises:
      FileNotFoundError: no file at ``path``.
      ParamsError: not a readable safetensors file, not DINOv2, or not matching ``size``.
    """
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"no DINOv2 weight file at {path}: download model.safetensors of facebook/dinov2-<size> "
            f"from the Hugging Face Hub and pass its path"
        )
    try:
        with safe_open(path, framework="numpy") as f:
            raw_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds for a bad file
        raise ParamsError(
            f"{path} is not a readable safetensors file ({_one_line(e)}); DINOv2 weights are the "
            f"model.safetensors of facebook/dinov2-<size>"
        ) from None
    shapes, sources = _normalise_names(raw_shapes)
    arch = _resolve_arch(path, size, shapes)
    expected = expected_file_shapes(arch)
    if not set(expected) & set(shapes):
        raise ParamsError(
            f"{path} is not a DINOv2 checkpoint: none of its {len(shapes)} tensors has a DINOv2 name "
            f"(e.g. {', '.join(sorted(shapes)[:3]) or 'nothing'}...)"
        )
    what = f"{path} does not match DINOv2-{arch.name} {dataclasses.astuple(arch)[:4]}"
    problems = shape_problems(expected, shapes)
    if problems:
        raise ParamsError(f"{what} (nothing was loaded): " + "; ".join(problems))

    arrays, bad = {}, []
    with safe_open(path, framework="numpy") as f:
        for key, srcs in sources.items():
            arr = np.concatenate([f.get_tensor(s) for s in srcs]).astype(np.float32)
            if not np.isfinite(arr).all():
                bad.append(f"{key} has {int((~np.isfinite(arr)).sum())} non-finite values")
            arrays[key] = arr
    if bad:
        raise ParamsError(f"{what} (nothing was loaded): " + "; ".join(bad))
    model = _abstract(arch)
    tensors = {k: torch_to_nnx(k, arrays[_file_key(k)]) for k in _nnx_shapes(model)}
    return assign_params(model, tensors, str(path))
