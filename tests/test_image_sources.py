"""Tests for the file-backed image sources (data_pipelines.image_files): PNG/JPEG class folders
and Fashion-MNIST idx files. Fixtures are written in tmp_path; only the last test reads the real
Fashion-MNIST files, and only if they are installed."""

import gzip
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from data_pipelines import loader
from data_pipelines.base import BadSampleError, SourceError
from data_pipelines.image_files import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FashionMnistSource,
    ImageFolderSource,
)


def _unit(pixels):
    """Expected decoded values: uint8 -> float32 in [-1, 1]."""
    return np.asarray(pixels, np.float32) / np.float32(127.5) - np.float32(1.0)


def _save(path, pixels, **kwargs):
    """Writes a uint8 array (H, W) or (H, W, 3) with Pillow; returns the path as a str."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path, **kwargs)
    return str(path)


def _noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _smooth(size):
    """A smooth RGB gradient (JPEG reproduces it closely)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    return (np.stack([x, y, (x + y) / 2], -1) * 200 + 20).astype(np.uint8)


# ---------------------------------------------------------------------------- ImageFolderSource


def test_png_values_exact(tmp_path):
    rgb, gray = _noise((8, 8, 3), 1), _noise((8, 8), 2)
    _save(tmp_path / "rgb" / "c" / "x.png", rgb)
    _save(tmp_path / "gray" / "c" / "x.png", gray)
    src = ImageFolderSource(tmp_path / "rgb", image_size=8)
    ex = src[0]
    assert set(ex) == {"image", "label"}
    assert ex["image"].dtype == np.float32 and ex["image"].shape == (8, 8, 3)
    np.testing.assert_array_equal(ex["image"], _unit(rgb))
    assert isinstance(ex["label"], np.int32) and ex["label"] == 0
    assert src.schema["image"].shape == (8, 8, 3) and src.schema["image"].dtype == "float32"
    assert src.schema["label"].shape == () and src.schema["label"].dtype == "int32"

    src1 = ImageFolderSource(tmp_path / "gray", image_size=8, channels=1)
    np.testing.assert_array_equal(src1[0]["image"], _unit(gray)[..., None])
    assert src1.schema["image"].shape == (8, 8, 1)
    # Extremes map to exactly -1 and 1.
    _save(tmp_path / "ext" / "c" / "x.png", np.array([[0, 255]] * 2, np.uint8))
    img = ImageFolderSource(tmp_path / "ext", image_size=2, channels=1)[0]["image"]
    assert img.min() == -1.0 and img.max() == 1.0


def test_jpeg_values_within_tolerance(tmp_path):
    rgb = _smooth(32)
    _save(tmp_path / "rgb" / "c" / "x.jpg", rgb, quality=95)
    _save(tmp_path / "gray" / "c" / "x.jpeg", rgb[..., 0], quality=95)
    img = ImageFolderSource(tmp_path / "rgb", image_size=32)[0]["image"]
    assert img.shape == (32, 32, 3) and img.dtype == np.float32
    assert np.abs(img - _unit(rgb)).mean() < 0.05
    img1 = ImageFolderSource(tmp_path / "gray", image_size=32, channels=1)[0]["image"]
    assert img1.shape == (32, 32, 1)
    assert np.abs(img1[..., 0] - _unit(rgb[..., 0])).mean() < 0.05


def test_class_ids_and_deterministic_order(tmp_path):
    # Written in non-sorted order, nested sub-folders, mixed-case extensions, ignored files.
    made = {}
    for k, rel in enumerate(
        [
            "zebra/b.png",
            "ant/z/deep/q.PNG",
            "ant/a.JPG",
            "mole/x.jpeg",
            "zebra/a/c.Jpeg",
            "ant/m.png",
            "mole/w.png",
        ]
    ):
        made[rel] = _save(
            tmp_path / rel,
            np.full((4, 4, 3), k * 30, np.uint8),
            **({"quality": 100} if rel.lower().endswith(("jpg", "jpeg")) else {}),
        )
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "zebra" / "labels.csv").write_text("a,b")
    (tmp_path / "mole" / "._w.png").write_bytes(b"macOS resource fork")
    (tmp_path / "ant" / ".hidden").mkdir()
    _save(tmp_path / "ant" / ".hidden" / "h.png", np.zeros((4, 4, 3)))
    (tmp_path / "README.md").write_text("loose non-image files under root are ignored")

    src = ImageFolderSource(tmp_path, image_size=4)
    assert src.classes == ("ant", "mole", "zebra")
    expected = [
        "ant/a.JPG",
        "ant/m.png",
        "ant/z/deep/q.PNG",
        "mole/w.png",
        "mole/x.jpeg",
        "zebra/a/c.Jpeg",
        "zebra/b.png",
    ]
    assert list(src.files) == [made[r] for r in expected]
    assert len(src) == 7
    assert [int(src[i]["label"]) for i in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(src.labels, [0, 0, 0, 1, 1, 2, 2])
    assert [src.where(i) for i in range(7)] == list(src.files)
    # Each file's own pixels come back (constant images, so JPEG is exact up to +-1 level).
    for i, rel in enumerate(expected):
        k = list(made).index(rel)
        assert np.abs(src[i]["image"] - _unit(k * 30)).max() <= 1.5 / 127.5
    # A second source over the same tree sees the same order; repeated reads are identical.
    again = ImageFolderSource(str(tmp_path), image_size=4)
    assert again.files == src.files and again.classes == src.classes
    np.testing.assert_array_equal(src[5]["image"], again[5]["image"])
    # numpy integer indices work; out of range is an IndexError.
    assert src[np.int64(3)]["label"] == 1
    for bad in (7, -1):
        with pytest.raises(IndexError, match=rf"{bad}.*7"):
            src[bad]


def test_root_without_subfolders_is_one_class(tmp_path):
    root = tmp_path / "flat"
    _save(root / "b.png", np.zeros((4, 4, 3)))
    _save(root / "a.png", np.ones((4, 4, 3)))
    src = ImageFolderSource(root, image_size=4)
    assert src.classes == ("flat",)
    assert [os.path.basename(f) for f in src.files] == ["a.png", "b.png"]
    assert [int(src[i]["label"]) for i in range(2)] == [0, 0]


def test_loose_files_next_to_class_folders(tmp_path):
    _save(tmp_path / "cat" / "a.png", np.zeros((4, 4, 3)))
    loose = _save(tmp_path / "stray.png", np.zeros((4, 4, 3)))
    with pytest.raises(SourceError, match="no class folder") as info:
        ImageFolderSource(tmp_path, image_size=4)
    assert loose in str(info.value)


def test_source_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist") as info:
        ImageFolderSource(tmp_path / "missing", image_size=8)
    assert str(tmp_path / "missing") in str(info.value)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(SourceError, match="not a directory"):
        ImageFolderSource(tmp_path / "file.png", image_size=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=r"no image files \(.png/.jpg/.jpeg, any case\)"):
        ImageFolderSource(empty, image_size=8)
    (empty / "cat").mkdir()
    (empty / "cat" / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match=r"no image files \(.png/.jpg/.jpeg, any case\)") as info:
        ImageFolderSource(empty, image_size=8)
    assert str(empty) in str(info.value)
    # One class folder has images, another has none.
    _save(empty / "dog" / "a.png", np.zeros((8, 8, 3)))
    with pytest.raises(SourceError, match="class folder") as info:
        ImageFolderSource(empty, image_size=8)
    assert str(empty / "cat") in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": 2.5}, "image_size"),
        ({"channels": 4}, "channels"),
        ({"channels": 2}, "channels"),
        ({"resize": "crop"}, "resize"),
        ({"convert": "yes"}, "convert"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_options(tmp_path, kwargs, match):
    _save(tmp_path / "c" / "a.png", np.zeros((8, 8, 3)))
    args = {"image_size": 8, **kwargs}
    with pytest.raises(SourceError, match=match):
        ImageFolderSource(tmp_path, **args)


def _bad_sample(src, index, path, *reason_parts):
    with pytest.raises(BadSampleError) as info:
        src[index]
    err = info.value
    assert err.where == path and path in str(err)
    for part in reason_parts:
        assert part in err.reason and part in str(err), (part, str(err))
    return err


def test_bad_inputs_raise_bad_sample_error(tmp_path):
    root = tmp_path / "data"
    _save(root / "c" / "00_good.png", _noise((16, 16, 3)))
    trunc = _save(root / "c" / "01_truncated.png", _noise((64, 64, 3)))
    data = open(trunc, "rb").read()
    open(trunc, "wb").write(data[: len(data) // 2])
    text = str(root / "c" / "02_text.png")
    open(text, "w").write("this is not an image\n" * 10)
    gray = _save(root / "c" / "03_gray.png", _noise((16, 16)))
    rgba = _save(root / "c" / "04_rgba.png", _noise((16, 16, 4)))
    pal = str(root / "c" / "05_palette.png")
    Image.fromarray(_noise((16, 16, 3))).convert("P").save(pal)
    small = _save(root / "c" / "06_size.png", _noise((12, 10, 3)))  # 10 wide, 12 high
    tjpg = _save(root / "c" / "07_truncated.jpg", _noise((64, 64, 3)), quality=90)
    data = open(tjpg, "rb").read()
    open(tjpg, "wb").write(data[: len(data) // 2])

    src = ImageFolderSource(root, image_size=16, convert=False)  # the strict mode check
    assert len(src) == 8
    assert src[0]["image"].shape == (16, 16, 3)
    _bad_sample(src, 1, trunc, "cannot decode")
    _bad_sample(src, 2, text, "cannot decode")
    _bad_sample(src, 3, gray, "mode 'L'", "expected 'RGB'", "convert=False")
    _bad_sample(src, 4, rgba, "mode 'RGBA'", "expected 'RGB'")
    _bad_sample(src, 5, pal, "mode 'P'", "expected 'RGB'")
    _bad_sample(src, 6, small, "size 10x12", "expected 16x16")
    err = _bad_sample(src, 7, tjpg, "cannot decode")
    # The error survives pickling (it travels back from worker processes).
    again = pickle.loads(pickle.dumps(err))
    assert (again.where, again.reason) == (err.where, err.reason)

    # An RGB image in a strict one-channel source is a wrong mode too.
    src1 = ImageFolderSource(root, image_size=16, channels=1, convert=False)
    _bad_sample(src1, 0, str(root / "c" / "00_good.png"), "mode 'RGB'", "expected 'L'")
    assert src1[3]["image"].shape == (16, 16, 1)


def test_resize_center_crop_bicubic(tmp_path):
    # 24 wide x 16 high: 4 red columns, 16 green, 4 blue. The centre crop is all green.
    img = np.zeros((16, 24, 3), np.uint8)
    img[:, :4] = (255, 0, 0)
    img[:, 4:20] = (0, 200, 0)
    img[:, 20:] = (0, 0, 255)
    _save(tmp_path / "c" / "0_wide.png", img)
    # 16 wide x 20 high random image: compare against an explicit crop then resize.
    tall = _noise((20, 16, 3), 5)
    _save(tmp_path / "c" / "1_tall.png", tall)
    exact = _noise((8, 8, 3), 6)
    _save(tmp_path / "c" / "2_exact.png", exact)

    with pytest.raises(BadSampleError, match="size 24x16"):
        ImageFolderSource(tmp_path, image_size=8)[0]
    src = ImageFolderSource(tmp_path, image_size=8, resize="resize")
    green = src[0]["image"]
    assert green.shape == (8, 8, 3)
    np.testing.assert_array_equal(green, np.broadcast_to(_unit([0, 200, 0]), (8, 8, 3)))
    ref = Image.fromarray(tall).crop((0, 2, 16, 18)).resize((8, 8), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(src[1]["image"], _unit(np.asarray(ref)))
    np.testing.assert_array_equal(src[2]["image"], _unit(exact))  # right size: untouched


def _as_read(path, mode):
    """What Pillow's own ``.convert(mode)`` makes of the file (the reference for convert=True)."""
    with Image.open(path) as img, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a palette with transparency: "should be converted to RGBA"
        return np.asarray(img.convert(mode))


@pytest.mark.filterwarnings("error:Palette images")  # the source converts without Pillow's warning
def test_other_modes_are_converted_like_pil(tmp_path):
    """ImageNet has grayscale and CMYK JPEGs: by default every 8-bit mode is converted exactly as
    ``Image.convert`` does (torchvision's ImageFolder), also before resizing; ``convert=False``
    keeps the strict check, and 16-bit images are never converted (8 bits would clip them)."""
    root = tmp_path / "data" / "c"
    cmyk = str(root / "0_cmyk.jpg")
    root.mkdir(parents=True)
    Image.frombytes("CMYK", (16, 16), _noise((16, 16, 4), 1).tobytes()).save(cmyk, quality=90)
    gray = _save(root / "1_gray.png", _noise((16, 16), 2))
    gray_jpg = _save(root / "2_gray.jpg", _smooth(16)[..., 1], quality=90)
    rgba = _save(root / "3_rgba.png", _noise((16, 16, 4), 3))
    pal = str(root / "4_palette.png")
    Image.fromarray(_noise((16, 16, 3), 4)).convert("P").save(pal, transparency=bytes([0, 128, 255]))
    bilevel = str(root / "5_bilevel.png")
    Image.fromarray(_noise((16, 16), 5) > 127).save(bilevel)
    rgb = _save(root / "6_rgb.png", _noise((16, 16, 3), 6))
    files = [cmyk, gray, gray_jpg, rgba, pal, bilevel, rgb]
    with Image.open(cmyk) as img:
        assert img.mode == "CMYK"  # a real CMYK JPEG, not converted on saving
    with Image.open(pal) as img:
        assert img.mode == "P" and isinstance(img.info["transparency"], bytes)

    src, src1 = ImageFolderSource(root.parent, 16), ImageFolderSource(root.parent, 16, channels=1)
    assert list(src.files) == files
    for i, path in enumerate(files):
        np.testing.assert_array_equal(src[i]["image"], _unit(_as_read(path, "RGB")), err_msg=path)
        np.testing.assert_array_equal(src1[i]["image"], _unit(_as_read(path, "L"))[..., None], err_msg=path)

    strict = ImageFolderSource(root.parent, 16, convert=False)
    _bad_sample(strict, 0, cmyk, "mode 'CMYK'", "expected 'RGB'", "convert=False")
    _bad_sample(strict, 1, gray, "mode 'L'", "expected 'RGB'", "convert=False")
    np.testing.assert_array_equal(strict[6]["image"], src[6]["image"])

    # Conversion comes before resizing: a 40x24 CMYK JPEG through ADM's crop.
    wide = tmp_path / "wide" / "c" / "cmyk.jpg"
    wide.parent.mkdir(parents=True)
    Image.frombytes("CMYK", (40, 24), _noise((24, 40, 4), 7).tobytes()).save(wide, quality=90)
    with Image.open(wide) as img:
        expected = _adm_reference(img.convert("RGB"), 8)
    np.testing.assert_array_equal(
        ImageFolderSource(wide.parents[1], 8, resize="adm")[0]["image"], _unit(expected)
    )

    deep = tmp_path / "deep" / "c" / "16bit.png"
    deep.parent.mkdir(parents=True)
    Image.fromarray(_noise((16, 16), 8).astype(np.uint16) * 257).save(deep)
    with Image.open(deep) as img:
        assert img.mode.startswith("I")
    _bad_sample(ImageFolderSource(deep.parents[1], 16), 0, str(deep), "expected 'RGB'", "clip")


def _adm_reference(img, size):
    """ADM's ``center_crop_arr``, written from its description: halve with BOX while the short side
    is >= 2 * size, BICUBIC so the short side is ``size``, centre crop in NumPy. uint8 (S, S, C)."""
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.array(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


@pytest.mark.parametrize(
    "width, height, size",
    [
        (16, 16, 16),  # already the size: unchanged
        (500, 375, 32),  # ImageNet-like: three halvings, then BICUBIC
        (64, 48, 16),  # one halving
        (33, 65, 16),  # odd sides, portrait: one halving (floor)
        (1000, 40, 16),  # 25:1 landscape: crop keeps the middle
        (17, 300, 8),  # 1:18 portrait, odd width
        (12, 10, 16),  # smaller than the size: upscaled
    ],
)
def test_resize_adm_matches_center_crop_arr(tmp_path, width, height, size):
    path = _save(tmp_path / "c" / "x.png", _noise((height, width, 3), width + height))
    image = ImageFolderSource(tmp_path, image_size=size, resize="adm")[0]["image"]
    with Image.open(path) as img:
        expected = _adm_reference(img, size)
    assert expected.shape == (size, size, 3)
    np.testing.assert_array_equal(image, _unit(expected))


def test_pickle_and_grain_pipeline(tmp_path):
    for k in range(6):
        _save(tmp_path / f"class{k % 2}" / f"{k}.png", np.full((8, 8, 3), 40 * k, np.uint8))
    src = ImageFolderSource(tmp_path, image_size=8)
    copy = pickle.loads(pickle.dumps(src))
    assert copy.files == src.files
    np.testing.assert_array_equal(copy[4]["image"], src[4]["image"])
    batch = loader.batched_dataset(src, batch_size=4, seed=0)[0]
    assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32


# ---------------------------------------------------------------------------- Fashion-MNIST


def write_idx(path, array, magic=None, gz=False):
    """Writes an unsigned-byte idx file: magic 0x0000 08 <ndim>, dims as big-endian uint32,
    then the bytes. ``magic`` overrides the magic number; ``gz`` gzips the whole file."""
    array = np.asarray(array, np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    payload = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()
    path = str(path) + (".gz" if gz else "")
    with gzip.open(path, "wb") if gz else open(path, "wb") as f:
        f.write(payload)
    return path


def _write_split(directory, images, labels, prefix="train", gz=False, **kw):
    os.makedirs(directory, exist_ok=True)
    ip = write_idx(
        os.path.join(directory, f"{prefix}-images-idx3-ubyte"), images, gz=gz, magic=kw.get("images_magic")
    )
    lp = write_idx(
        os.path.join(directory, f"{prefix}-labels-idx1-ubyte"), labels, gz=gz, magic=kw.get("labels_magic")
    )
    return ip, lp


def _fixture(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_write_idx_matches_format(tmp_path):
    path = write_idx(tmp_path / "x", np.arange(6).reshape(1, 2, 3))
    assert open(path, "rb").read() == bytes.fromhex("00000803 00000001 00000002 00000003") + bytes(range(6))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images, labels = _fixture()
    ip, lp = _write_split(tmp_path, images, labels, gz=gz)
    src = FashionMnistSource(tmp_path, split="train")
    assert src._images is None  # nothing loaded until first access
    assert len(src) == 5 and src.classes == FASHION_MNIST_CLASSES and len(src.classes) == 10
    assert src.images_path == ip and src.labels_path == lp
    assert src.schema["image"].shape == (28, 28, 1) and src.schema["label"].dtype == "int32"
    for i in range(5):
        ex = src[i]
        assert ex["image"].dtype == np.float32 and ex["image"].shape == (28, 28, 1)
        np.testing.assert_array_equal(ex["image"][..., 0], _unit(images[i]))
        assert isinstance(ex["label"], np.int32) and ex["label"] == labels[i]
    assert src.where(3) == f"{ip}[3]"
    with pytest.raises(IndexError):
        src[5]
    # Pickling drops the loaded arrays; the copy loads its own and agrees.
    assert src._images is not None
    copy = pickle.loads(pickle.dumps(src))
    assert copy._images is None
    np.testing.assert_array_equal(copy[2]["image"], src[2]["image"])


def test_test_split_and_plain_preferred(tmp_path):
    images, labels = _fixture(3, seed=1)
    _write_split(tmp_path, images, labels, prefix="t10k")
    _write_split(tmp_path, images[::-1], labels[::-1], prefix="t10k", gz=True)
    src = FashionMnistSource(tmp_path, split="test")
    assert not src.images_path.endswith(".gz") and len(src) == 3
    np.testing.assert_array_equal(src[0]["image"][..., 0], _unit(images[0]))
    with pytest.raises(SourceError, match="train-images-idx3-ubyte"):
        FashionMnistSource(tmp_path, split="train")  # only the test split exists
    with pytest.raises(SourceError, match="split"):
        FashionMnistSource(tmp_path, split="val")


def test_pad_and_resize(tmp_path):
    images, labels = _fixture(2)
    images[1] = 255
    _write_split(tmp_path, images, labels)
    src = FashionMnistSource(tmp_path, image_size=32)
    img = src[0]["image"]
    assert img.shape == (32, 32, 1) and src.schema["image"].shape == (32, 32, 1)
    np.testing.assert_array_equal(img[2:30, 2:30, 0], _unit(images[0]))
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (img[border] == -1.0).all()  # 2 pixels of background on each side
    # pad_to does the same from the stored size.
    np.testing.assert_array_equal(FashionMnistSource(tmp_path, pad_to=32)[0]["image"], img)

    small = FashionMnistSource(tmp_path, image_size=14)
    x = small[0]["image"]
    assert x.shape == (14, 14, 1) and -1.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(small[1]["image"], np.ones((14, 14, 1), np.float32))  # constant stays
    ref = np.asarray(Image.fromarray(images[0]).resize((14, 14), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(x[..., 0], _unit(ref))
    padded = FashionMnistSource(tmp_path, image_size=14, pad_to=17)[1]["image"]
    assert padded.shape == (17, 17, 1)
    assert (padded[1:15, 1:15] == 1.0).all() and padded.sum() == 14 * 14 - (17 * 17 - 14 * 14)
    with pytest.raises(SourceError, match="pad_to"):
        FashionMnistSource(tmp_path, image_size=14, pad_to=10)
    with pytest.raises(SourceError, match="image_size"):
        FashionMnistSource(tmp_path, image_size=0)


def test_bad_idx_magic(tmp_path):
    images, labels = _fixture()
    ip, _ = _write_split(tmp_path / "a", images, labels, images_magic=2049)
    with pytest.raises(SourceError, match="magic number 2049, expected 2051") as info:
        FashionMnistSource(tmp_path / "a")
    assert ip in str(info.value)
    _, lp = _write_split(tmp_path / "b", images, labels, gz=True, labels_magic=2051)
    with pytest.raises(SourceError, match="magic number 2051, expected 2049") as info:
        FashionMnistSource(tmp_path / "b")
    assert lp in str(info.value)


def test_bad_idx_contents(tmp_path):
    images, labels = _fixture()
    # Counts disagree: both files are named.
    ip, lp = _write_split(tmp_path / "count", images, labels[:4])
    with pytest.raises(SourceError, match="5 images.*4 labels") as info:
        FashionMnistSource(tmp_path / "count")
    assert ip in str(info.value) and lp in str(info.value)
    # Wrong image dims.
    _write_split(tmp_path / "dims", np.zeros((5, 32, 32)), labels)
    with pytest.raises(SourceError, match="32x32, expected 28x28"):
        FashionMnistSource(tmp_path / "dims")
    # Truncated plain file: caught from its size when the source is built.
    ip, _ = _write_split(tmp_path / "trunc", images, labels)
    data = open(ip, "rb").read()
    open(ip, "wb").write(data[: len(data) // 2])
    with pytest.raises(SourceError, match="expected 3936") as info:
        FashionMnistSource(tmp_path / "trunc")
    assert ip in str(info.value)
    # Truncated gzip stream: the header still reads, the data fails on first access.
    ip, _ = _write_split(tmp_path / "tgz", images, labels, gz=True)
    data = open(ip, "rb").read()
    open(ip, "wb").write(data[: len(data) // 2])
    src = FashionMnistSource(tmp_path / "tgz")
    with pytest.raises(SourceError, match="expected 3920 bytes") as info:
        src[0]
    assert ip in str(info.value)
    # Gzipped file with trailing data, and labels out of range.
    ip, _ = _write_split(tmp_path / "extra", images, labels, gz=True)
    with gzip.open(ip, "ab") as f:
        f.write(b"\x00" * 7)
    with pytest.raises(SourceError, match="3927 data bytes.*expected 3920"):
        FashionMnistSource(tmp_path / "extra")[0]
    _, lp = _write_split(tmp_path / "label", images, [1, 2, 10, 3, 4])
    with pytest.raises(SourceError, match="label 10 at index 2") as info:
        FashionMnistSource(tmp_path / "label")[0]
    assert lp in str(info.value)
    # Missing files / directory.
    with pytest.raises(SourceError, match="does not exist"):
        FashionMnistSource(tmp_path / "nowhere")
    os.remove(lp)
    with pytest.raises(SourceError, match="train-labels-idx1-ubyte"):
        FashionMnistSource(tmp_path / "label")
    # Not gzip at all despite the name.
    bad = tmp_path / "notgz"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte.gz").write_bytes(b"plain bytes, not gzip")
    write_idx(bad / "train-labels-idx1-ubyte", labels)
    with pytest.raises(SourceError, match="train-images-idx3-ubyte.gz"):
        FashionMnistSource(bad)


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR), reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}"
)
def test_real_fashion_mnist():
    train, test = FashionMnistSource(split="train"), FashionMnistSource(split="test")
    assert len(train) == 60_000 and len(test) == 10_000
    for src in (train, test):
        images, labels = src.arrays()
        assert images.shape == (len(src), 28, 28) and labels.min() >= 0 and labels.max() <= 9
    np.testing.assert_array_equal(np.bincount(train.arrays()[1], minlength=10), [6000] * 10)
    ex = train[0]
    assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.float32
    assert ex["image"].min() == -1.0 and ex["image"].max() <= 1.0 and 0 <= ex["label"] <= 9
