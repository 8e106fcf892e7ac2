"""Text beside the files of a file source (``SourceConfig(text="caption" | "features")``).

For the example read from ``dir/name.ext`` (an image, video or audio file):

``caption``   ``dir/name.txt`` (the caption, surrounding whitespace stripped) or, if absent,
              ``dir/name.json`` holding ``{"caption": "..."}``; yields ``text`` uint8 (L,) bytes
              zero-padded to L = ``data.text_tokens · data.caption_bytes_per_token``.
``features``  ``dir/name.npz`` holding ``embedding`` float (rows, D) - the outputs of the user's
              text encoder - and optionally ``length`` (int: the first rows are real) or
              ``mask`` (rows,) (nonzero = real); without either every row is real. The real rows,
              in order, are padded to ``data.text_tokens`` rows; yields ``text`` float32 (L, D).

Both yield ``text_mask`` uint8 (L,). A missing, unreadable or malformed sidecar, a caption longer
than L bytes or more real rows than L is a :class:`~data_pipelines.base.BadSampleError` naming
the sidecar (one line), handled by ``data.on_bad_sample`` like any bad file. D is read from the
first example's file when the source is built.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from data_pipelines.base import BadSampleError, Field, SourceError
from modalities.text import encode_caption

CAPTION, FEATURES = "caption", "features"


def _sidecar(path: str, suffix: str) -> Path:
    return Path(path).with_suffix(suffix)


def read_caption(path: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The caption of the file at ``path`` as (bytes (length,), mask (length,)) uint8."""
    txt, js = _sidecar(path, ".txt"), _sidecar(path, ".json")
    where = txt if txt.is_file() else js
    try:
        if txt.is_file():
            caption = txt.read_text(encoding="utf-8").strip()
        elif js.is_file():
            data = json.loads(js.read_text(encoding="utf-8"))
            caption = data.get("caption") if isinstance(data, dict) else None
            if not isinstance(caption, str):
                raise ValueError('expected a JSON object with a string "caption"')
        else:
            raise BadSampleError(path, f"no caption: expected {txt.name} or {js.name} beside it")
        return encode_caption(caption, length)
    except BadSampleError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise BadSampleError(str(where), f"bad caption: {str(e).splitlines()[0]}") from None


def read_features(path: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The encoder outputs beside ``path`` as (float32 (rows, D), mask uint8 (rows,))."""
    npz = _sidecar(path, ".npz")
    if not npz.is_file():
        raise BadSampleError(path, f"no text features: expected {npz.name} beside it")
    try:
        with np.load(npz, allow_pickle=False) as data:
            if "embedding" not in data:
                raise ValueError(f"no 'embedding' array (it has {sorted(data.files)})")
            embedding = np.asarray(data["embedding"])
            if embedding.ndim != 2 or not np.issubdtype(embedding.dtype, np.floating):
                raise ValueError(
                    f"'embedding' is {embedding.dtype} {embedding.shape}, expected float (rows, D)"
                )
            real = np.ones(len(embedding), bool)
            if "mask" in data:
                real = np.asarray(data["mask"]).astype(bool)
                if real.shape != (len(embedding),):
                    raise ValueError(f"'mask' has shape {real.shape}, expected ({len(embedding)},)")
            elif "length" in data:
                n = int(np.asarray(data["length"]))
                if not 0 <= n <= len(embedding):
                    raise ValueError(f"'length' = {n}, expected 0..{len(embedding)} (the embedding rows)")
                real = np.arange(len(embedding)) < n
    except (OSError, ValueError, zipfile.BadZipFile, TypeError) as e:
        raise BadSampleError(str(npz), f"bad text features: {str(e).splitlines()[0]}") from None
    kept = embedding[real].astype(np.float32)
    if len(kept) > rows:
        raise BadSampleError(str(npz), f"{len(kept)} real rows, more than data.text_tokens={rows}")
    if not np.isfinite(kept).all():
        raise BadSampleError(str(npz), "non-finite values in 'embedding'")
    out, mask = np.zeros((rows, embedding.shape[1]), np.float32), np.zeros(rows, np.uint8)
    out[: len(kept)], mask[: len(kept)] = kept, 1
    return out, mask


class TextSidecars:
    """``source`` (whose ``where(i)`` is the file of example i) with its text added."""

    def __init__(self, source, kind: str, length: int):
        if kind not in (CAPTION, FEATURES):
            raise SourceError(f"text={kind!r}: expected {CAPTION!r} or {FEATURES!r}")
        if len(source) == 0:
            raise SourceError(f"{source!r} has no examples to read text for")
        self.source, self.kind, self.length = source, kind, length
        self.classes = getattr(source, "classes", None)
        if kind == CAPTION:
            text = Field((length,), "uint8")
        else:
            try:
                dim = read_features(source.where(0), length)[0].shape[1]
            except BadSampleError as e:
                raise SourceError(f"cannot read the first example's text features: {e}") from None
            text = Field((length, dim), "float32")
        self.schema = {**source.schema, "text": text, "text_mask": Field((length,), "uint8")}

    def __len__(self) -> int:
        return len(self.source)

    def where(self, index: int) -> str:
        return self.source.where(index)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = dict(self.source[index])
        path = self.source.where(index)
        read = read_caption if self.kind == CAPTION else read_features
        example["text"], example["text_mask"] = read(path, self.length)
        return example

    def __repr__(self) -> str:
        return f"TextSidecars({self.source!r}, {self.kind!r})"
