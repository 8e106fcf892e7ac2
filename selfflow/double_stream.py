"""Double-stream blocks (MM-DiT / FLUX): text tokens and data tokens with separate weights,
one joint attention (``model.double_stream_blocks`` = N: the first N blocks of the trunk).

Each stream is a full DiT block's weights (:class:`~selfflow.layers.Block`: adaLN-Zero
modulation, qkv, output projection, MLP). Every token is normalised, modulated and projected to
q, k, v by its own stream's weights; all tokens then attend to each other in one attention
(with the same RoPE angles and mask as a single-stream block), and each token's attention output
and MLP go back through its own stream. With no text token the block is its data stream alone,
so a layout without text computes exactly a :class:`~selfflow.layers.Block` with those weights.

The text tokens of a layout are static (``text`` (N,) bool numpy, from the segments' modality
names), so the split and merge are fixed gathers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfflow.layers import Block, apply_rope, constrain_batch, layer_norm, modulate, per_token


class DoubleStreamBlock(nnx.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float, rngs: nnx.Rngs, dtype=jnp.float32):
        self.data = Block(hidden, heads, mlp_ratio, rngs, dtype)
        self.text = Block(hidden, heads, mlp_ratio, rngs, dtype)

    def __call__(self, x, c, rope, index=None, mask=None, *, text: np.ndarray) -> jax.Array:
        """x (B, N, D), c (B, K, D) with ``index`` (B, N) (or K = N, index None), rope (N, K/2) or
        None, mask None or (B, 1, N, N) bool; ``text`` (N,) bool: which tokens are text."""
        text = np.asarray(text, bool)
        if not text.any():
            return self.data(x, c, rope, index, mask)
        order = np.concatenate([np.flatnonzero(text), np.flatnonzero(~text)])  # text first
        back, n_text = np.argsort(order), int(text.sum())
        b, n, d = x.shape
        heads = self.data.attn.heads
        streams, qkv = [], []
        for block, part in ((self.text, order[:n_text]), (self.data, order[n_text:])):
            mod = per_token(block.adaLN_modulation(nnx.silu(c)), index)[:, part]  # (B, n_part, 6D)
            chunks = jnp.split(mod, 6, axis=-1)
            h = modulate(layer_norm(x[:, part]), chunks[0], chunks[1])
            qkv.append(block.attn.qkv(h).reshape(b, len(part), 3 * heads, d // heads))
            streams.append((block, part, chunks))
        q, k, v = jnp.split(jnp.concatenate(qkv, axis=1), 3, axis=2)
        if rope is not None:
            q, k = apply_rope(q, rope[order]), apply_rope(k, rope[order])
        dtype = self.data.attn.dtype
        q, k, v = (a.astype(dtype) for a in (q, k, v))
        if mask is not None:
            mask = mask[:, :, order][:, :, :, order]
        attended = jax.nn.dot_product_attention(q, k, v, mask=mask).astype(jnp.float32).reshape(b, n, d)
        outs, start = [], 0
        for block, part, (_, _, gate_msa, shift_mlp, scale_mlp, gate_mlp) in streams:
            y = x[:, part] + gate_msa * block.attn.proj(attended[:, start : start + len(part)])
            h = modulate(layer_norm(y), shift_mlp, scale_mlp)
            outs.append(y + gate_mlp * block.mlp(h))
            start += len(part)
        return constrain_batch(jnp.concatenate(outs, axis=1)[:, back])
