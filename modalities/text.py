"""Text modality: a caption or a text encoder's outputs, always a *condition* segment.

Two kinds of data, told apart by the shape of the ``text`` key a source yields:

``caption``   ``text`` uint8 (L,) UTF-8 bytes of a caption, zero-padded (:func:`encode_caption`);
              a byte vocabulary (the byte values seen in the first captions) is fitted by
              :func:`spec_for` and stored in the spec, so a run samples without its data. Each
              token covers ``bytes_per_token`` bytes as concatenated one-hot vectors over the
              vocabulary (id 0 = a byte outside it): the model's input projection of these
              one-hots *is* a learned embedding table, trained jointly with the model.
``features``  ``text`` float32 (L, D): a text encoder's outputs (T5, CLIP, ... written by the
              user), zero-padded rows; one token per row.

Both yield ``text_mask`` (L,) uint8, 1 on real bytes / rows and 0 on padding, so variable
lengths pad to one fixed length (``data.text_tokens`` tokens).

Tokens ``(B, N, F + 1)``: the F features of each token, then a last channel 1.0 on real tokens
and 0.0 on padding. The mask travels inside the tokens so every code path that carries
condition segments (training, teacher, validation, samplers) carries it unchanged; the model
splits it off (:func:`split`), keeps padding out of attention both ways and out of the pooled
text vector. A *null caption* (classifier-free guidance) is all zeros: no real token.

Positions: t = −N … −1 ticks (before the clip, one tick apart, so RoPE's time axis orders the
tokens), h = w = 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modalities.base import ModalitySpec, check_divisible, check_shape, grid_positions, xp

NAME = "text"
DEFAULT_MASK_RATIO = 0.0  # a condition segment: never masked
DEFAULT_TIME_SHIFT = 1.0
KEYS = ("text", "text_mask")  # (B, L) uint8 bytes or (B, L, D) float features; (B, L) uint8
CAPTION, FEATURES = "caption", "features"
VOCAB_EXAMPLES = 1024  # captions the byte vocabulary is fitted on


@dataclasses.dataclass(frozen=True)
class TextSpec(ModalitySpec):
    """``length`` positions (bytes of a caption or rows of encoder features) of one example.

    ``kind`` "caption": ``bytes_per_token`` bytes per token, ``vocab`` the byte values with their
    own id (1 + index; 0 = any other byte). ``kind`` "features": ``feature_dim`` D per row.
    """

    name = NAME
    kind: str
    length: int
    feature_dim: int = 0
    bytes_per_token: int = 1
    vocab: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in (CAPTION, FEATURES):
            raise ValueError(f"text kind={self.kind!r}: expected {CAPTION!r} or {FEATURES!r}")
        object.__setattr__(self, "vocab", tuple(int(v) for v in self.vocab))  # hashable, from JSON lists
        if self.kind == CAPTION:
            check_divisible("caption bytes", self.length, "bytes_per_token", self.bytes_per_token)
            if any(not 0 < v < 256 for v in self.vocab) or len(set(self.vocab)) != len(self.vocab):
                raise ValueError(f"text vocab {self.vocab}: expected distinct byte values in 1..255")
        elif self.feature_dim < 1:
            raise ValueError(f"text feature_dim={self.feature_dim}: expected >= 1 for kind 'features'")

    @property
    def vocab_size(self) -> int:
        """Ids of one byte: the vocabulary plus id 0 for any other byte."""
        return len(self.vocab) + 1

    @property
    def features(self) -> int:
        """F: features of one token before the mask channel."""
        return self.bytes_per_token * self.vocab_size if self.kind == CAPTION else self.feature_dim

    @property
    def token_dim(self) -> int:
        return self.features + 1

    @property
    def num_tokens(self) -> int:
        return self.length // self.bytes_per_token if self.kind == CAPTION else self.length


Spec = TextSpec


# ---------------------------------------------------------------------------- captions as bytes


def encode_caption(caption: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """A caption -> (uint8 (length,) UTF-8 bytes zero-padded, uint8 (length,) mask).

    A caption longer than ``length`` bytes, or holding a NUL byte (the padding), is a ValueError
    saying so (callers name the file)."""
    if not isinstance(caption, str):
        raise ValueError(f"a caption must be a string, got {type(caption).__name__}")
    data = caption.encode("utf-8")
    if len(data) > length:
        raise ValueError(
            f"caption of {len(data)} bytes is longer than the {length} the run pads to "
            "(data.text_tokens x data.caption_bytes_per_token)"
        )
    if b"\0" in data:
        raise ValueError("caption holds a NUL byte (the padding value)")
    out = np.zeros(length, np.uint8)
    out[: len(data)] = np.frombuffer(data, np.uint8)
    return out, (out != 0).astype(np.uint8)


def decode_caption(data) -> str:
    """uint8 (L,) bytes (zero-padded) -> the caption (invalid UTF-8 replaced)."""
    data = np.asarray(data, np.uint8)
    return data[data != 0].tobytes().decode("utf-8", errors="replace")


def encode_captions(captions, spec: TextSpec) -> dict[str, np.ndarray]:
    """Captions (a list of B strings) -> the batch dict ``{"text": (B, L), "text_mask": (B, L)}``
    a caption source yields: how a loaded run is prompted without its data."""
    if spec.kind != CAPTION:
        raise ValueError("this run's text is encoder features: give them as arrays, not captions")
    pairs = [encode_caption(c, spec.length) for c in captions]
    return {"text": np.stack([p[0] for p in pairs]), "text_mask": np.stack([p[1] for p in pairs])}


def fit_vocab(captions: np.ndarray) -> tuple[int, ...]:
    """The byte values (1..255) present in (..., L) uint8 captions, sorted."""
    values = np.unique(np.asarray(captions, np.uint8))
    return tuple(int(v) for v in values if v != 0)


def _id_table(spec: TextSpec) -> np.ndarray:
    """(256,) int32: byte value -> id (1 + vocabulary index; 0 outside it)."""
    table = np.zeros(256, np.int32)
    table[list(spec.vocab)] = np.arange(1, len(spec.vocab) + 1, dtype=np.int32)
    return table


# ---------------------------------------------------------------------------- tokens


def tokenize(text, spec: TextSpec, mask=None):
    """Bytes (B, L) uint8 or features (B, L, D), mask (B, L) -> tokens (B, N, F + 1) float32.

    A caption token is real if any of its bytes is; padded tokens are all zeros (features and
    mask channel), so padding carries no information whatever the input held there."""
    b = text.shape[0]
    m = xp(text) if mask is None else xp(text, mask)
    if mask is None:
        mask = text != 0 if spec.kind == CAPTION else m.ones(text.shape[:2], bool)
    check_shape("text_mask", mask.shape, (b, spec.length), "(batch, caption bytes or feature rows)")
    if spec.kind == CAPTION:
        check_shape("text", text.shape, (None, spec.length), "(batch, caption bytes)")
        ids = m.asarray(_id_table(spec))[text.astype(m.int32)]  # (B, L)
        onehot = (ids[..., None] == m.arange(spec.vocab_size)).astype(m.float32)
        features = onehot.reshape(b, spec.num_tokens, spec.features)
        valid = mask.reshape(b, spec.num_tokens, spec.bytes_per_token).astype(bool).any(-1)
    else:
        check_shape("text", text.shape, (None, spec.length, spec.feature_dim), "(batch, rows, feature_dim)")
        features, valid = text.astype(m.float32), mask.astype(bool)
    valid = valid.astype(m.float32)[..., None]
    return m.concatenate([features * valid, valid], axis=-1)


def split(tokens):
    """Tokens (B, N, F + 1) -> (features (B, N, F), valid (B, N) bool)."""
    return tokens[..., :-1], tokens[..., -1] > 0.5


def null_tokens(tokens):
    """The null caption of classifier-free guidance: no real token (all zeros), same shape."""
    return xp(tokens).zeros_like(tokens)


def detokenize(tokens, spec: TextSpec):
    """Tokens (B, N, F + 1) -> (text, mask (B, L) uint8): caption bytes (B, L) uint8 (the most
    likely id of each byte; id 0 and padding decode to byte 0) or features (B, L, D)."""
    check_shape("tokens", tokens.shape, (None, spec.num_tokens, spec.token_dim), "(batch, N, token_dim)")
    tokens = np.asarray(tokens, np.float32)
    features, valid = split(tokens)
    b = tokens.shape[0]
    if spec.kind == FEATURES:
        return features * valid[..., None], valid.astype(np.uint8)
    ids = features.reshape(b, spec.length, spec.vocab_size).argmax(-1)
    values = np.asarray((0, *spec.vocab), np.uint8)[ids]
    values = values * np.repeat(valid, spec.bytes_per_token, axis=1)
    return values.astype(np.uint8), (values != 0).astype(np.uint8)


def positions(spec: TextSpec, time_offset: float = 0.0) -> np.ndarray:
    """(N, 3) float32 (t, 0, 0), t = time_offset − N … time_offset − 1."""
    return grid_positions(time_offset + np.arange(-spec.num_tokens, 0), 1, 1)


def spec_for(shapes: dict[str, tuple], cfg, examples) -> TextSpec:
    """The run's spec: captions (``text`` (L,)) get a byte vocabulary fitted on the first
    ``VOCAB_EXAMPLES`` examples (stored with the run); features (``text`` (L, D)) one token per row."""
    shape = tuple(shapes["text"])
    if len(shape) == 2:
        return TextSpec(FEATURES, shape[0], feature_dim=shape[1])
    vocab = fit_vocab(examples(VOCAB_EXAMPLES)["text"])
    return TextSpec(CAPTION, shape[0], bytes_per_token=cfg.data.caption_bytes_per_token, vocab=vocab)


def tokenize_batch(raw: dict, spec: TextSpec):
    """A batch dict with ``KEYS`` -> (B, N, F + 1) (jit-able: the vocabulary is a lookup table)."""
    return tokenize(raw["text"], spec, raw["text_mask"])
