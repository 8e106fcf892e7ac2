"""Image sources read from files: a class-per-folder tree of PNG/JPEG files, and Fashion-MNIST.

Both follow the source contract of :mod:`data_pipelines.base`: ``len(source)``,
``source[i]`` -> ``{"image": float32 (S, S, C) in [-1, 1], "label": np.int32}``,
``source.schema``, ``source.where(i)`` and ``source.classes`` (class names, index = label).
Pixels map linearly from uint8 [0, 255] to [-1, 1] (``base.to_unit_range``).

:class:`ImageFolderSource` -- ``root/<class_name>/**/*.{png,jpg,jpeg}``. A file that cannot give
a valid example raises :class:`~data_pipelines.base.BadSampleError` (file path + reason) when it
is read; a tree that cannot be a source at all raises :class:`~data_pipelines.base.SourceError`
when the source is built.

:class:`FashionMnistSource` -- the idx files of Fashion-MNIST (``{train,t10k}-images-idx3-ubyte``
and ``-labels-idx1-ubyte``, gzipped or plain). Headers are checked when the source is built, the
data when it is first read; anything wrong with the files is a ``SourceError`` (the whole source is
unusable, not one example).
"""

from __future__ import annotations

import gzip
import os
import struct
import threading

import numpy as np
from PIL import Image

from data_pipelines.base import BadSampleError, Field, SourceError, check_index, to_unit_range
from data_pipelines.folders import scan_class_folders

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
_MODES = {1: "L", 3: "RGB"}  # the Pillow mode of each channel count
RESIZE_MODES: tuple[str, ...] = ("error", "resize", "adm")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SourceError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _is_wide(mode: str) -> bool:
    """16/32-bit integer or float modes ("I;16", "I", "F"): converting them to 8 bits clips."""
    return mode in ("I", "F") or mode.startswith("I;")


def _convert(img: Image.Image, mode: str) -> Image.Image:
    """``img.convert(mode)``; a palette with transparency goes through "RGBA" (the same pixels)
    to avoid Pillow's warning that such images should be converted to RGBA."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert(mode)


def center_crop_bicubic(img: Image.Image, size: int) -> Image.Image:
    """``resize="resize"``: the centred square of side min(w, h), BICUBIC to ``size`` x ``size``."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    # crop() then resize(): resize(box=...) would also sample pixels outside the box near its edges.
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def center_crop_adm(img: Image.Image, size: int) -> Image.Image:
    """``resize="adm"``: ADM's ``center_crop_arr`` (guided-diffusion), the ImageNet preprocessing
    of ADM, SiT, REPA and Self-Flow, so FID and checkpoints compare with theirs. While the short
    side is >= 2 * size, halve both sides (floor) with BOX (cheap anti-aliasing); then BICUBIC so
    the short side is ``size`` (the long side ``round(long * size / short)``); then the centred
    ``size`` x ``size`` crop (offsets floor((side - size) / 2)). Returns a ``size`` x ``size`` image.
    """
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.Resampling.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


_RESIZERS = {"resize": center_crop_bicubic, "adm": center_crop_adm}


class ImageFolderSource:
    """Labelled images from ``root/<class_name>/...`` (Grain random-access source).

    Layout. Every non-hidden sub-folder of ``root`` is a class; its id is the index of its name in
    sorted (Python string) order, ``self.classes`` lists the names. All files ending in ``.png``,
    ``.jpg`` or ``.jpeg`` (any case) anywhere inside a class folder belong to it; other files, and
    names starting with "." (e.g. macOS ``._x.png`` resource forks), are ignored. Order: class by
    class in id order, inside a class by relative path (sorted path components) -- deterministic,
    independent of the file system. ``self.files`` / ``self.labels`` hold paths and ids.

    Files directly under ``root``: if ``root`` has **no** sub-folders at all, they form a single
    class 0 named after ``root`` (an unlabelled folder). If it has sub-folders, image files
    directly under ``root`` are a ``SourceError`` naming them (they have no class). A class folder
    with no image files is also a ``SourceError`` (it would be a class with no examples), and so is
    a missing root or one with no image files.

    Decoding (Pillow, restricted to the PNG and JPEG decoders; the whole file is decoded with
    ``img.load()`` so a truncated file fails here, unless the caller has set
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``). Mode: with ``convert=True`` (default) any 8-bit mode
    (grayscale "L", "1", "LA", palette "P", "RGBA", "CMYK", ...) becomes "RGB" (``channels=3``) or
    "L" (``channels=1``) exactly as Pillow's ``img.convert(mode)`` does (what torchvision's
    ImageFolder does; ImageNet has grayscale and CMYK JPEGs): alpha is dropped, CMYK is converted
    naively, RGB -> L is ITU-R 601-2 luma. ``source[i]`` raises ``BadSampleError(path, reason)`` for:
      * a file Pillow cannot open or fully decode (not PNG/JPEG, corrupt, truncated);
      * a wrong mode that is not converted: any other mode with ``convert=False`` (the strict
        check), and 16/32-bit modes ("I;16", "I", "F") always, since 8 bits would clip them;
        the reason names the mode found and the mode expected;
      * with ``resize="error"``, a size other than ``image_size`` x ``image_size`` (the reason
        names both, as width x height).
    ``resize="resize"``: an image that is not square is first center-cropped to a square of side
    min(width, height) (offset floor((longer - shorter) / 2)), then resized with Pillow BICUBIC to
    ``image_size`` x ``image_size`` (an image already that size is left untouched).
    ``resize="adm"``: :func:`center_crop_adm`, the ImageNet preprocessing of ADM, SiT, REPA and
    Self-Flow. EXIF orientation is not applied: pixels are used as stored.

    ``seed`` is accepted so every source has the same constructor arguments; this source has no
    randomness and ``seed`` changes nothing.

    Schema: ``image`` float32 (image_size, image_size, channels) in [-1, 1], ``label`` int32.
    """

    def __init__(
        self,
        root,
        image_size: int,
        channels: int = 3,
        resize: str = "error",
        seed: int = 0,
        convert: bool = True,
    ):
        self.image_size = _check_int("image_size", image_size, 1)
        if isinstance(channels, bool) or channels not in _MODES:
            raise SourceError(f"channels must be 1 or 3, got {channels!r}")
        if resize not in RESIZE_MODES:
            raise SourceError(f"resize must be one of {', '.join(map(repr, RESIZE_MODES))}, got {resize!r}")
        if not isinstance(convert, bool):
            raise SourceError(f"convert must be True or False, got {convert!r}")
        self.channels, self.resize, self.seed = int(channels), resize, _check_int("seed", seed, 0)
        self.convert = convert
        found = scan_class_folders(root, IMAGE_EXTENSIONS, "image")
        self.root, self.files, self.labels, self.classes = (
            found.root,
            found.files,
            found.labels,
            found.classes,
        )
        self.schema = {
            "image": Field((self.image_size, self.image_size, self.channels), "float32"),
            "label": Field((), "int32"),
        }

    def __len__(self) -> int:
        return len(self.files)

    def where(self, index: int) -> str:
        return self.files[check_index(index, len(self.files), "ImageFolderSource")]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = check_index(index, len(self.files), "ImageFolderSource")
        return {"image": self.read_image(self.files[index]), "label": self.labels[index]}

    def read_image(self, path: str) -> np.ndarray:
        """Decodes and checks one file (see the class docstring): float32 (S, S, C) in [-1, 1]."""
        expected, size = _MODES[self.channels], self.image_size
        try:
            with Image.open(path, formats=("PNG", "JPEG")) as img:
                img.load()
                mode, (w, h) = img.mode, img.size
                if self.convert and mode != expected and not _is_wide(mode):
                    img = _convert(img, expected)
                final_mode = img.mode
                if final_mode == expected and self.resize != "error":
                    img = _RESIZERS[self.resize](img, size)
                pixels = np.asarray(img)
        except Exception as e:  # anything Pillow raises while opening or decoding this file
            raise BadSampleError(path, f"cannot decode as PNG/JPEG ({type(e).__name__}: {e})") from e
        if final_mode != expected:
            why = (
                "more than 8 bits per channel: not converted, 8 bits would clip the values"
                if _is_wide(mode)
                else "convert=False: modes are not converted"
            )
            raise BadSampleError(
                path, f"image mode {mode!r}, expected {expected!r} ({self.channels} channel(s); {why})"
            )
        if pixels.shape[:2] != (size, size):
            raise BadSampleError(
                path,
                f"image size {w}x{h} (width x height), expected "
                f"{size}x{size} (use resize='resize' or 'adm' to resize)",
            )
        return to_unit_range(pixels.reshape(size, size, self.channels))

    def __repr__(self) -> str:
        return (
            f"ImageFolderSource(root={self.root!r}, image_size={self.image_size}, "
            f"channels={self.channels}, resize={self.resize!r}, convert={self.convert}, seed={self.seed}; "
            f"{len(self)} files, {len(self.classes)} classes)"
        )


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IDX_IMAGES_MAGIC = 0x00000803  # 2051: unsigned byte, 3 dims (count, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # 2049: unsigned byte, 1 dim (count)
_SPLITS = {"train": "train", "test": "t10k"}
_SIDE = 28


def _idx_path(directory: str, stem: str) -> str:
    """``stem`` (plain) if it exists, else ``stem.gz``; SourceError naming both if neither."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise SourceError(
        f"missing Fashion-MNIST file: neither {os.path.join(directory, stem)} "
        f"nor {os.path.join(directory, stem)}.gz exists"
    )


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_idx_header(path: str, magic: int, ndim: int) -> tuple[int, ...]:
    """The dims of an unsigned-byte idx file after checking its magic number."""
    header_len = 4 + 4 * ndim
    try:
        with _open(path) as f:
            header = f.read(header_len)
    except (OSError, EOFError) as e:
        raise SourceError(f"{path}: cannot read idx header ({type(e).__name__}: {e})") from e
    if len(header) < header_len:
        raise SourceError(f"{path}: truncated idx header: {len(header)} bytes, expected {header_len}")
    found = struct.unpack(">I", header[:4])[0]
    if found != magic:
        raise SourceError(
            f"{path}: idx magic number {found}, expected {magic} "
            f"(unsigned-byte data with {ndim} dimension(s))"
        )
    return struct.unpack(f">{ndim}I", header[4:])


def _read_idx_data(path: str, header_len: int, shape: tuple[int, ...]) -> np.ndarray:
    expected = int(np.prod(shape))
    try:
        with _open(path) as f:
            f.seek(header_len)
            data = f.read()
    except (OSError, EOFError) as e:  # e.g. a gzip stream cut short
        raise SourceError(
            f"{path}: cannot read idx data, expected {expected} bytes after the "
            f"header ({type(e).__name__}: {e})"
        ) from e
    if len(data) != expected:
        raise SourceError(
            f"{path}: {len(data)} data bytes after the header, expected {expected} "
            f"(shape {shape}){' (truncated)' if len(data) < expected else ''}"
        )
    return np.frombuffer(data, np.uint8).reshape(shape)


class FashionMnistSource:
    """Fashion-MNIST from its idx files (Grain random-access source).

    Files: ``{directory}/{prefix}-images-idx3-ubyte`` and ``{prefix}-labels-idx1-ubyte``, with
    prefix ``train`` (60000 examples) or ``t10k`` (``split="test"``, 10000); each is read plain if
    that file exists, else gzipped (``.gz``). Building the source reads only the headers and checks
    the magic numbers (2051 images, 2049 labels), the image dims (28 x 28), that the image and
    label counts agree, and (plain files) the file sizes. The arrays are loaded on first access
    (``source[i]`` or :meth:`arrays`) and cached in this process; the exact data length and that
    every label is in 0..9 are checked then. Every problem is a ``SourceError`` naming the file and
    what was expected. Pickling drops the cache (each worker loads its own copy, ~47 MB for train).

    Output size. ``image_size`` = 28: as stored. 32: the 28 x 28 image padded with 2 pixels of
    background (-1, i.e. black) on every side (no interpolation). Any other size: resized with
    Pillow BILINEAR (uint8, rounded). ``pad_to`` (optional, >= image_size): then pad that image
    with background, centred (an odd difference puts the extra pixel at the bottom/right), to
    ``pad_to`` x ``pad_to``; the output side S is ``pad_to`` if given, else ``image_size``.

    Schema: ``image`` float32 (S, S, 1) in [-1, 1] (background -1), ``label`` int32 in 0..9
    (names in ``classes``). ``where(i)`` = ``"<images file>[i]"``.
    """

    def __init__(
        self,
        directory: str = FASHION_MNIST_DIR,
        split: str = "train",
        image_size: int = 28,
        pad_to: int | None = None,
    ):
        if split not in _SPLITS:
            raise SourceError(f"split must be 'train' or 'test', got {split!r}")
        self.image_size = _check_int("image_size", image_size, 1)
        if pad_to is not None:
            pad_to = _check_int("pad_to", pad_to, self.image_size)
        self.pad_to, self.split = pad_to, split
        self.directory = os.path.abspath(os.fspath(directory))
        if not os.path.isdir(self.directory):
            raise SourceError(f"Fashion-MNIST directory {self.directory} does not exist")
        prefix = _SPLITS[split]
        self.images_path = _idx_path(self.directory, f"{prefix}-images-idx3-ubyte")
        self.labels_path = _idx_path(self.directory, f"{prefix}-labels-idx1-ubyte")
        n, rows, cols = _read_idx_header(self.images_path, IDX_IMAGES_MAGIC, 3)
        (n_labels,) = _read_idx_header(self.labels_path, IDX_LABELS_MAGIC, 1)
        if (rows, cols) != (_SIDE, _SIDE):
            raise SourceError(f"{self.images_path}: images are {rows}x{cols}, expected {_SIDE}x{_SIDE}")
        if n != n_labels:
            raise SourceError(
                f"{self.images_path} has {n} images but {self.labels_path} has "
                f"{n_labels} labels; expected equal counts"
            )
        if n == 0:
            raise SourceError(f"{self.images_path} has no images")
        for path, expected in ((self.images_path, 16 + n * _SIDE * _SIDE), (self.labels_path, 8 + n)):
            if not path.endswith(".gz") and os.path.getsize(path) != expected:
                raise SourceError(
                    f"{path}: {os.path.getsize(path)} bytes, expected {expected} (header + {n} examples)"
                )
        self.num_examples = int(n)
        self.classes = FASHION_MNIST_CLASSES
        side = self.pad_to or self.image_size
        self.schema = {"image": Field((side, side, 1), "float32"), "label": Field((), "int32")}
        self._lock = threading.Lock()
        self._images = self._labels = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"] = state["_labels"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 (N, 28, 28), labels uint8 (N,)) as stored; loads and checks on first call."""
        if self._images is None:
            with self._lock:
                if self._images is None:
                    n = self.num_examples
                    images = _read_idx_data(self.images_path, 16, (n, _SIDE, _SIDE))
                    labels = _read_idx_data(self.labels_path, 8, (n,))
                    if labels.max() >= len(FASHION_MNIST_CLASSES):
                        bad = int(np.argmax(labels >= len(FASHION_MNIST_CLASSES)))
                        raise SourceError(
                            f"{self.labels_path}: label {int(labels[bad])} at index "
                            f"{bad}, expected 0..{len(FASHION_MNIST_CLASSES) - 1}"
                        )
                    self._labels, self._images = labels, images
        return self._images, self._labels

    def __len__(self) -> int:
        return self.num_examples

    def where(self, index: int) -> str:
        return f"{self.images_path}[{check_index(index, self.num_examples, 'FashionMnistSource')}]"

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = check_index(index, self.num_examples, "FashionMnistSource")
        images, labels = self.arrays()
        pixels, size = images[index], self.image_size
        if size == _SIDE + 4:
            pixels = np.pad(pixels, 2)
        elif size != _SIDE:
            pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
        if self.pad_to is not None and self.pad_to > size:
            lo = (self.pad_to - size) // 2
            pixels = np.pad(pixels, ((lo, self.pad_to - size - lo),) * 2)
        return {"image": to_unit_range(pixels)[..., None], "label": np.int32(labels[index])}

    def __repr__(self) -> str:
        return (
            f"FashionMnistSource(directory={self.directory!r}, split={self.split!r}, "
            f"image_size={self.image_size}, pad_to={self.pad_to}; {self.num_examples} examples)"
        )
