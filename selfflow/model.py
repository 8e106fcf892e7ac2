"""The Self-Flow transformer: a SiT/DiT trunk in which every token carries its own timestep.

One call form: ``model(segments, timesteps, labels, positions, modalities=names)``.
``segments`` is a tuple of per-segment token arrays (B, n_i, d_i) in sequence order and
``modalities`` their modality names (a one-array input is a one-segment tuple); ``timesteps``
is (B,) or (B, N) with τ = 1 meaning noise (or :class:`FactoredTimesteps`, the fast form of the
same thing), N = Σ n_i; ``labels`` (B,) int class ids (``num_classes`` is the null class used for
classifier-free guidance); ``positions`` (N, 3) (t, h, w) token coordinates. The output is always
a :class:`ModelOutput`: the per-segment velocities ε − x0 and, with ``hidden_layer=l``, the
hidden state after block l (the student's features, from the same forward pass). The timestep
MLP embeds s = 1 − τ by default, as the official model does (``model.time_embedding``), so
official weights load unchanged.

Per-modality input projections and final layers surround one shared trunk, so adding a
modality adds a projection pair, not a model. Text segments (:mod:`modalities.text`, always
condition segments) join the sequence like any other (joint attention, FLUX-style) with two
differences: their last channel is a padding mask (padding never attends nor is attended, and
enters the model as a constant), and with ``text_pooled`` the masked mean of their features, through
an MLP, is added to every token's timestep conditioning. The teacher calls
:meth:`SelfFlowTransformer.forward_until`, which never runs the blocks after ``layer``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from modalities.text import NAME as TEXT
from modalities.text import split as split_text
from selfflow import layers
from selfflow.double_stream import DoubleStreamBlock
from selfflow.layout import FactoredTimesteps

# What a padded text token enters the trunk as, whatever its features: a constant, not zeros (an
# exactly-zero token stays zero through the zero-initialised blocks, and the per-token cosine of
# the representation loss then has a NaN gradient even where its weight is 0).
PADDING_INPUT = 1.0


class ModelOutput(NamedTuple):
    """velocity: per segment (B, n_i, d_i), in the input's segment order; hidden: (B, N, D) after
    block ``hidden_layer`` when it was asked for, else None."""

    velocity: tuple
    hidden: jax.Array | None = None


class SelfFlowTransformer(nnx.Module):
    def __init__(
        self,
        *,
        depth: int,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        num_classes: int,
        token_dims: dict[str, int],
        positions: str = "sincos",
        rope_theta: float = 10_000.0,
        time_embedding: str = "sit",
        dtype=jnp.float32,
        conditioning: str = "factored",
        remat: bool = False,
        repa_projector: tuple[int, int] | None = None,
        text_pooled: bool = False,
        double_stream_blocks: int = 0,
        rngs: nnx.Rngs,
    ):
        """``repa_projector``: (projector width P, encoder feature width Z) adds REPA's
        :class:`~selfflow.layers.RepaProjector` as ``self.repa_projector`` (built last, so every
        other parameter initialises as without it); None (every objective but REPA) leaves it out.
        ``token_dims[TEXT]`` counts the mask channel (the projection takes one feature less);
        ``text_pooled`` adds ``self.text_pooler`` (F -> D -> D, built after everything else) when
        the model has a text projection. ``double_stream_blocks`` = n: the first n blocks are
        :class:`~selfflow.double_stream.DoubleStreamBlock` (separate text and data weights)."""
        if positions not in ("sincos", "rope"):
            raise ValueError(f"positions={positions!r}: expected 'sincos' or 'rope'")
        if time_embedding not in ("sit", "tau"):
            raise ValueError(f"time_embedding={time_embedding!r}: expected 'sit' or 'tau'")
        if conditioning not in ("factored", "per_token"):
            raise ValueError(f"conditioning={conditioning!r}: expected 'factored' or 'per_token'")
        self.time_embedding, self.conditioning, self.remat = time_embedding, conditioning, remat
        self.depth, self.hidden_size, self.num_heads = depth, hidden_size, num_heads
        self.num_classes, self.positions, self.rope_theta = num_classes, positions, rope_theta
        self.t_embedder = layers.TimestepEmbedder(hidden_size, rngs)
        self.y_embedder = nnx.Embed(
            num_classes + 1,
            hidden_size,
            rngs=rngs,
            embedding_init=layers.named(layers.normal02, ("vocab", "embed")),
        )
        self.x_embedders = nnx.Dict(
            {
                m: layers.dense(d - (m == TEXT), hidden_size, rngs, ("token", "embed"))
                for m, d in token_dims.items()
            }
        )
        self.final_layers = nnx.Dict(
            {m: layers.FinalLayer(hidden_size, d, rngs) for m, d in token_dims.items()}
        )
        if not 0 <= double_stream_blocks <= depth:
            raise ValueError(f"double_stream_blocks={double_stream_blocks}: expected 0..depth={depth}")
        self.blocks = nnx.List(
            [
                (DoubleStreamBlock if i < double_stream_blocks else layers.Block)(
                    hidden_size, num_heads, mlp_ratio, rngs, dtype
                )
                for i in range(depth)
            ]
        )
        self.projector = layers.Projector(hidden_size, rngs)
        if repa_projector is not None:
            self.repa_projector = layers.RepaProjector(hidden_size, *repa_projector, rngs)
        self.text_pooled = text_pooled and TEXT in token_dims
        if self.text_pooled:
            self.text_pooler = layers.PooledTextEmbedder(token_dims[TEXT] - 1, hidden_size, rngs)

    # ------------------------------------------------------------------ pieces

    def _embed(self, segments, timesteps, labels, positions, modalities):
        """Returns trunk input x (B, N, D), conditioning c (B, K, D), its token index, rope angles
        and the (B, N) bool of real tokens (None without text segments: every token is real).

        Segments (B, n_i, d_i) are embedded by their own modality's projection and concatenated
        along the token axis (N = Σ n_i). ``timesteps``: (B,) or (B, N) (then K = N and index is
        None: one row per token), or :class:`FactoredTimesteps` (K values per sample, gathered
        per token by ``index``).
        """
        segments, names = _check_segments(segments, modalities)
        for name in names:
            if name not in self.x_embedders:
                raise ValueError(
                    f"modality {name!r} has no projection; the model has {sorted(self.x_embedders)}"
                )
        parts, real, texts = [], [], []
        for tokens, name in zip(segments, names):
            if name == TEXT:
                features, valid = split_text(tokens.astype(jnp.float32))
                texts.append((features, valid))
                embedded = self.x_embedders[name](features).astype(jnp.float32)
                embedded = jnp.where(valid[..., None], embedded, PADDING_INPUT)
            else:
                embedded, valid = self.x_embedders[name](tokens).astype(jnp.float32), None
            parts.append(embedded)
            real.append(jnp.ones(tokens.shape[:2], bool) if valid is None else valid)
        x = jnp.concatenate(parts, axis=1)
        real = jnp.concatenate(real, axis=1) if texts else None
        b, n, _ = x.shape
        index = None
        if isinstance(timesteps, FactoredTimesteps):
            timesteps, index = (
                (timesteps.values, timesteps.index)
                if self.conditioning == "factored"
                else (timesteps.dense(), None)
            )
        timesteps = jnp.asarray(timesteps, jnp.float32)
        if timesteps.ndim == 1:  # one τ per sample: broadcast *before* embedding (exactly equal)
            timesteps = jnp.broadcast_to(timesteps[:, None], (b, n))
        embedded = 1.0 - timesteps if self.time_embedding == "sit" else timesteps  # see ModelConfig
        c = self.t_embedder(embedded) + self.y_embedder(labels)[:, None, :]
        if self.text_pooled and texts:
            c = c + self.text_pooler(texts)[:, None, :]
        rope = None
        if self.positions == "sincos":
            x = x + layers.sincos_2d(positions, self.hidden_size)[None]
        else:
            rope = layers.rope_angles(positions, self.hidden_size // self.num_heads, self.rope_theta)
        return x, c, index, rope, real

    def _run_block(self, block, x, c, rope, index, mask, text):
        """One block; ``text`` (N,) bool numpy (static): the text tokens, for double-stream blocks."""
        extra = {"text": text} if isinstance(block, DoubleStreamBlock) else {}
        if not self.remat:
            return block(x, c, rope, index, mask, **extra)
        # Keep only the block's inputs; recompute its activations in the backward pass. A pure
        # function of the block's state, so it also works for a teacher merged outside the grad.
        graphdef, state = nnx.split(block)
        return jax.checkpoint(lambda s, *a: nnx.merge(graphdef, s)(*a, **extra))(
            state, x, c, rope, index, mask
        )

    def _check_layer(self, layer: int, name: str) -> None:
        if not 1 <= layer <= self.depth:
            raise ValueError(f"{name}={layer}: expected a block index in [1, {self.depth}]")

    # ------------------------------------------------------------------ public

    def __call__(
        self,
        segments: tuple,
        timesteps,
        labels,
        positions,
        *,
        modalities: tuple[str, ...],
        hidden_layer: int | None = None,
        attention_mask: jax.Array | None = None,
    ) -> ModelOutput:
        """Velocity of every segment; with ``hidden_layer=l`` also the hidden state after block l.
        ``attention_mask``: None or (B, 1, N, N) bool, True where token i may attend to token j."""
        if hidden_layer is not None:
            self._check_layer(hidden_layer, "hidden_layer")
        x, c, index, rope, real = self._embed(segments, timesteps, labels, positions, modalities)
        attention_mask = layers.padding_attention(real, attention_mask)
        text = _text_tokens(segments, modalities)
        hidden = None
        for i, block in enumerate(self.blocks):
            x = self._run_block(block, x, c, rope, index, attention_mask, text)
            if i + 1 == hidden_layer:
                hidden = x
        outs, start = [], 0
        for seg, name in zip(segments, modalities):
            stop = start + seg.shape[1]
            seg_index = None if index is None else index[:, start:stop]
            seg_c = c[:, start:stop] if index is None else c
            outs.append(self.final_layers[name](x[:, start:stop], seg_c, seg_index))
            start = stop
        return ModelOutput(tuple(outs), hidden)

    def forward_until(
        self, segments: tuple, timesteps, labels, positions, *, layer: int, modalities: tuple[str, ...]
    ) -> jax.Array:
        """Hidden state (B, N, D) after block ``layer``; blocks after it are never computed."""
        self._check_layer(layer, "layer")
        x, c, index, rope, real = self._embed(segments, timesteps, labels, positions, modalities)
        mask, text = layers.padding_attention(real, None), _text_tokens(segments, modalities)
        for block in self.blocks[:layer]:
            x = self._run_block(block, x, c, rope, index, mask, text)
        return x

    def project(self, hidden: jax.Array) -> jax.Array:
        return self.projector(hidden)

    def project_to_encoder(self, hidden: jax.Array) -> jax.Array:
        """REPA's h_φ: hidden (B, N, D) -> (B, N, Z) in the frozen encoder's feature space."""
        if not hasattr(self, "repa_projector"):
            raise ValueError("this model has no REPA projector: build it with objective.kind='repa'")
        return self.repa_projector(hidden)


def _text_tokens(segments, modalities) -> np.ndarray:
    """(N,) bool numpy: the tokens of text segments (static: from the shapes and names)."""
    return np.concatenate([np.full(seg.shape[1], name == TEXT) for seg, name in zip(segments, modalities)])


def _check_segments(segments, modalities) -> tuple[tuple, tuple[str, ...]]:
    if not isinstance(segments, (tuple, list)) or isinstance(modalities, str):
        raise TypeError(
            "the model takes a tuple of segment arrays and a tuple of modality names, "
            f"got {type(segments).__name__} and {modalities!r}; wrap one array as (x,), ('image',)"
        )
    if len(segments) != len(modalities):
        raise ValueError(f"{len(segments)} token segments but {len(modalities)} modality names")
    return tuple(segments), tuple(modalities)


def build_model(cfg, token_dims: dict[str, int], seed: int | None = None) -> SelfFlowTransformer:
    """The model a :class:`~selfflow.config.Config` describes, with one projection pair per
    modality of ``token_dims`` ({modality: features per token}). An objective that aligns with a
    frozen encoder (REPA: ``uses_encoder``) adds the projector ``objective.projector_dim`` ->
    ``objective.encoder_dim``; its size comes from the config, so a run rebuilds (loads, samples,
    exports) without the encoder's file."""
    from selfflow.objectives import uses_encoder

    m, o = cfg.model, cfg.objective
    return SelfFlowTransformer(
        depth=cfg.depth,
        hidden_size=m.resolved("hidden_size"),
        num_heads=m.resolved("num_heads"),
        mlp_ratio=m.mlp_ratio,
        num_classes=cfg.data.num_classes,
        token_dims=token_dims,
        positions=m.positions,
        rope_theta=m.rope_theta,
        time_embedding=m.time_embedding,
        dtype=jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32,
        conditioning=m.conditioning,
        remat=m.remat,
        repa_projector=(o.projector_dim, o.encoder_dim) if uses_encoder(o.kind) else None,
        text_pooled=m.text_pooled,
        double_stream_blocks=m.double_stream_blocks,
        rngs=nnx.Rngs(cfg.seed if seed is None else seed),
    )


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
