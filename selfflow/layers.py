"""Building blocks of the Self-Flow transformer (Flax NNX).

Shapes: B batch, N tokens, D width, H heads, K = D / H head dim. Every token carries its own
conditioning vector ``c`` of shape (B, N, D) (timestep embedding + class embedding), so all
adaLN modulations are per token. Timestep embeddings, norms and modulations run in float32;
the matmuls of attention and MLP run in ``dtype`` (float32 or bfloat16) with float32 weights.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfflow.sharding import constrain_batch

xavier = nnx.initializers.xavier_uniform()
normal02 = nnx.initializers.normal(0.02)
zeros = nnx.initializers.zeros_init()


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: jax.Array, w: jax.Array, compute_dtype) -> jax.Array:
    """(..., din) float32 x (din, dout) float32 -> (..., dout) float32, multiplied in
    ``compute_dtype`` (float32 or bfloat16) with float32 accumulation, forward and backward.

    A custom VJP because XLA's own transpose of ``x @ W`` is slow here and wrong for mixed
    precision: on CPU it materialises transposed activation copies for the weight gradient (a
    sixth of the f32 step) and upcasts bf16-output dots to float32 (no bf16 speed-up); on any
    backend it would round the weight gradient to bf16. Here dx and dw come out float32 and
    only the ``compute_dtype`` copies of x and W are kept for the backward pass.
    """
    return _matmul_fwd(x, w, compute_dtype)[0]


def _matmul_fwd(x, w, compute_dtype):
    xc, wc = x.astype(compute_dtype), w.astype(compute_dtype)
    return jnp.dot(xc, wc, preferred_element_type=jnp.float32), (xc, wc)


def _matmul_bwd(compute_dtype, res, g):
    xc, wc = res
    gc = g.astype(compute_dtype)
    dx = jnp.dot(gc, wc.T, preferred_element_type=jnp.float32)
    dw = jnp.dot(
        xc.reshape(-1, xc.shape[-1]).T, gc.reshape(-1, gc.shape[-1]), preferred_element_type=jnp.float32
    )
    return dx, dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _linear_dot_general(
    compute_dtype, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None
):
    """``nnx.Linear``'s contraction routed through :func:`matmul`."""
    del precision, preferred_element_type, out_sharding
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())):
        raise ValueError(f"expected the x @ W contraction of a Linear layer, got {dimension_numbers}")
    return matmul(lhs.astype(jnp.float32), rhs, compute_dtype)


# One function object per dtype, so that equal models have equal (hashable, cacheable) graphdefs.
_DOT_GENERALS = {
    jnp.dtype(d): functools.partial(_linear_dot_general, jnp.dtype(d)) for d in (jnp.float32, jnp.bfloat16)
}


def named(init, axes: tuple[str | None, ...]):
    """``init`` whose parameter carries the logical axis names ``axes`` (one per dimension) as
    its ``out_sharding`` metadata; :func:`selfflow.sharding.param_axes` reads them back and
    ``mesh.rules`` maps them to mesh axes. Never placed at creation (``eager_sharding=False``):
    a model is built the same way with or without a mesh, and placed afterwards."""
    return nnx.with_partitioning(init, tuple(axes), eager_sharding=False)


def dense(
    din: int,
    dout: int,
    rngs: nnx.Rngs,
    axes: tuple[str | None, str | None],
    *,
    init=xavier,
    dtype=jnp.float32,
) -> nnx.Linear:
    """Linear layer with float32 weights, input and output; its matmul runs in ``dtype``.
    ``axes``: logical names of the kernel's (in, out) dimensions; the bias takes the out name."""
    return nnx.Linear(
        din,
        dout,
        kernel_init=named(init, axes),
        bias_init=named(zeros, axes[-1:]),
        dtype=None,
        param_dtype=jnp.float32,
        dot_general=_DOT_GENERALS[jnp.dtype(dtype)],
        rngs=rngs,
    )


def layer_norm(x: jax.Array) -> jax.Array:
    """LayerNorm without affine parameters, eps 1e-6, in float32."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-6)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale) + shift


def timestep_sinusoid(t: jax.Array, dim: int = 256, max_period: float = 10_000.0) -> jax.Array:
    """(...,) float in [0, 1] -> (..., dim) as [cos, sin] (DiT order, t not scaled by 1000)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def sincos_2d(positions: jax.Array, dim: int) -> jax.Array:
    """(N, 3) (t, h, w) positions -> (N, dim) fixed MAE/DiT 2D sin-cos table.

    As in the official layout, the first half encodes the column (w), the second the row (h),
    each as [sin, cos] with frequencies 1 / 10000^(i / (dim/4)).
    """
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (jnp.arange(quarter, dtype=jnp.float32) / quarter)

    def one_axis(pos):
        args = pos[:, None].astype(jnp.float32) * omega
        return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)

    return jnp.concatenate([one_axis(positions[:, 2]), one_axis(positions[:, 1])], axis=-1)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Splits the head dim over the (t, h, w) axes, each even: 72 -> (24, 24, 24)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> jax.Array:
    """(N, 3) positions -> (N, head_dim / 2) rotation angles, one block of frequencies per axis."""
    parts = []
    for axis, d in enumerate(rope_axis_dims(head_dim)):
        if d == 0:
            continue
        freqs = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
        parts.append(positions[:, axis, None].astype(jnp.float32) * freqs)
    return jnp.concatenate(parts, axis=-1)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotates consecutive feature pairs of (B, N, H, K) by (N, K/2) angles."""
    x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    cos, sin = jnp.cos(angles)[None, :, None], jnp.sin(angles)[None, :, None]
    a, b = x32[..., 0], x32[..., 1]
    out = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def per_token(values: jax.Array, index: jax.Array | None) -> jax.Array:
    """Expands per-value rows (B, K, F) to tokens (B, N, F) by ``index`` (B, N); None = identity.

    Under dual-timestep scheduling a sample has only K = 2 distinct timesteps, so conditioning
    and adaLN modulations are computed once per value and gathered, instead of once per token
    (the per-token modulation is 6·D² of a block's 18·D² multiply-adds per token).
    """
    if index is None:
        return values
    return _gather_rows(values, index)


GATHER_GRADIENT = "conditioning_gather_gradient"


@jax.custom_vjp
def _gather_rows(values: jax.Array, index: jax.Array) -> jax.Array:
    """take_along_axis(values, index[..., None], 1) for small K, as K − 1 selects (fused into
    their consumers); its gradient is a one-hot (B, N, K) x (B, N, F) contraction. Both are
    faster here than a gather and its scatter-add transpose (4 % of the S/2 step on CPU)."""
    out = values[:, :1]
    for k in range(1, values.shape[1]):
        out = jnp.where(index[..., None] == k, values[:, k : k + 1], out)
    return out


def _gather_rows_fwd(values, index):
    return _gather_rows(values, index), (index, values.shape[1])


def _gather_rows_bwd(res, g):
    index, k = res
    with jax.named_scope(GATHER_GRADIENT):  # a gather's gradient, not model FLOPs (see flops.py)
        onehot = jax.nn.one_hot(index, k, dtype=g.dtype)
        grad = jnp.einsum("bnk,bnf->bkf", onehot, g)
    return grad, np.zeros(index.shape, jax.dtypes.float0)


_gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


class TimestepEmbedder(nnx.Module):
    """Per-token timestep (B, N) -> (B, N, D): sinusoid 256 -> Linear -> SiLU -> Linear, float32."""

    def __init__(self, hidden: int, rngs: nnx.Rngs, freq_dim: int = 256):
        self.freq_dim = freq_dim
        self.fc1 = dense(freq_dim, hidden, rngs, ("freq", "embed"), init=normal02)
        self.fc2 = dense(hidden, hidden, rngs, ("embed", None), init=normal02)

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.fc2(nnx.silu(self.fc1(timestep_sinusoid(t, self.freq_dim))))


class PooledTextEmbedder(nnx.Module):
    """Text segments [(features (B, n, F), real (B, n) bool)] -> (B, D): the masked mean of the
    real tokens' features (0 for a null caption) -> Linear -> SiLU -> Linear, float32; added to
    the timestep embedding (FLUX's pooled text vector, here from the same tokens)."""

    def __init__(self, features: int, hidden: int, rngs: nnx.Rngs):
        self.fc1 = dense(features, hidden, rngs, ("token", "embed"), init=normal02)
        self.fc2 = dense(hidden, hidden, rngs, ("embed", None), init=normal02)

    def __call__(self, texts) -> jax.Array:
        total = sum(jnp.sum(f * v[..., None], axis=1) for f, v in texts)
        count = sum(jnp.sum(v, axis=1, dtype=jnp.float32) for _, v in texts)
        pooled = total / jnp.maximum(count, 1.0)[:, None]
        return self.fc2(nnx.silu(self.fc1(pooled)))


def padding_attention(real: jax.Array | None, mask: jax.Array | None) -> jax.Array | None:
    """``mask`` (None or (B, 1, N, N) bool) restricted so that padding tokens (``real`` (B, N)
    False) neither attend nor are attended: a padded query sees only itself (no empty softmax
    row), so its output depends on nothing that is padding elsewhere. None ``real``: ``mask``."""
    if real is None:
        return mask
    n = real.shape[1]
    allowed = (real[:, :, None] & real[:, None, :]) | jnp.eye(n, dtype=bool)[None]
    allowed = allowed[:, None]
    return allowed if mask is None else allowed & mask


class Attention(nnx.Module):
    def __init__(self, hidden: int, heads: int, rngs: nnx.Rngs, dtype=jnp.float32):
        self.heads, self.dtype = heads, dtype
        self.qkv = dense(hidden, 3 * hidden, rngs, ("embed", "heads"), dtype=dtype)
        self.proj = dense(hidden, hidden, rngs, ("heads", "embed"), dtype=dtype)

    def __call__(self, x: jax.Array, rope: jax.Array | None, mask: jax.Array | None = None) -> jax.Array:
        """``mask``: None (full attention) or (B, 1, N, N) bool, True where query i may attend to key j."""
        b, n, d = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(b, n, 3 * self.heads, d // self.heads), 3, axis=2)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (a.astype(self.dtype) for a in (q, k, v))  # bf16: fused attention kernels on GPU
        out = jax.nn.dot_product_attention(q, k, v, mask=mask).astype(jnp.float32)
        return self.proj(out.reshape(b, n, d))


class Mlp(nnx.Module):
    def __init__(self, hidden: int, mlp_hidden: int, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc1 = dense(hidden, mlp_hidden, rngs, ("embed", "mlp"), dtype=dtype)
        self.fc2 = dense(mlp_hidden, hidden, rngs, ("mlp", "embed"), dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(nnx.gelu(self.fc1(x), approximate=True))


class Block(nnx.Module):
    """DiT block with per-token adaLN-Zero: modulation (B, N, 6D) from each token's own c."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, rngs: nnx.Rngs, dtype=jnp.float32):
        self.attn = Attention(hidden, heads, rngs, dtype)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), rngs, dtype)
        self.adaLN_modulation = dense(hidden, 6 * hidden, rngs, ("embed", "adaln"), init=zeros)

    def __call__(
        self,
        x: jax.Array,
        c: jax.Array,
        rope: jax.Array | None,
        index: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        mod = per_token(self.adaLN_modulation(nnx.silu(c)), index)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        h = constrain_batch(modulate(layer_norm(x), shift_msa, scale_msa))
        x = constrain_batch(x + gate_msa * self.attn(h, rope, mask))
        h = constrain_batch(modulate(layer_norm(x), shift_mlp, scale_mlp))
        return constrain_batch(x + gate_mlp * self.mlp(h))


class FinalLayer(nnx.Module):
    """Per-token adaLN (shift, scale) then a zero-initialised linear to the token dim."""

    def __init__(self, hidden: int, out_dim: int, rngs: nnx.Rngs):
        self.adaLN_modulation = dense(hidden, 2 * hidden, rngs, ("embed", "adaln"), init=zeros)
        self.linear = dense(hidden, out_dim, rngs, ("embed", "token"), init=zeros)

    def __call__(self, x: jax.Array, c: jax.Array, index: jax.Array | None = None) -> jax.Array:
        shift, scale = jnp.split(per_token(self.adaLN_modulation(nnx.silu(c)), index), 2, axis=-1)
        return self.linear(modulate(layer_norm(x), shift, scale))


class Projector(nnx.Module):
    """Student-feature head: Linear D -> 2D, SiLU, Linear 2D -> D (the official SimpleHead)."""

    def __init__(self, hidden: int, rngs: nnx.Rngs):
        self.fc1 = dense(hidden, 2 * hidden, rngs, ("embed", "mlp"))
        self.fc2 = dense(2 * hidden, hidden, rngs, ("mlp", "embed"))

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.fc2(nnx.silu(self.fc1(h)))


class RepaProjector(nnx.Module):
    """REPA's h_φ (Yu et al. 2024, ``models/sit.py`` ``build_mlp``): Linear D -> P, SiLU, Linear
    P -> P, SiLU, Linear P -> Z, applied per token: (B, N, D) -> (B, N, Z). P = 2048 and Z = the
    encoder's feature width (768 for DINOv2-B) in REPA; xavier weights and zero biases, as REPA's
    ``initialize_weights``. Float32 matmuls (a head on one block's tokens, like :class:`Projector`)."""

    def __init__(self, hidden: int, projector_dim: int, out_dim: int, rngs: nnx.Rngs):
        self.fc1 = dense(hidden, projector_dim, rngs, ("embed", "mlp"))
        self.fc2 = dense(projector_dim, projector_dim, rngs, ("mlp", None))
        self.fc3 = dense(projector_dim, out_dim, rngs, (None, "feature"))  # "feature": replicated by default

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.fc3(nnx.silu(self.fc2(nnx.silu(self.fc1(h)))))
