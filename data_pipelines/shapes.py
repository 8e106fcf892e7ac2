"""Procedural coloured-shapes images: the embedded default image dataset.

Why: training and tests need a labelled image dataset that is always there
(no download, no files, any machine) and is easy enough that a tiny
class-conditional flow-matching transformer trained for a few CPU minutes
makes samples whose class you can tell by eye. Every class is a distinct
shape *and* a distinct base colour, so even blurry samples are recognisable.

Classes (index: shape / colour), see ``CLASS_NAMES`` and ``CLASS_COLORS``:
  0 circle/red, 1 square/orange, 2 triangle/yellow, 3 plus/green,
  4 ring/cyan, 5 diamond/blue, 6 horizontal bars/purple,
  7 vertical bars/magenta, 8 X/white, 9 two dots/pink.

Per-sample variation (moderate, so it stays learnable): position jitter,
size jitter (shapes stay mostly inside the image), small rotation, small
per-channel colour and brightness jitter, a dark background with a small
random tint and a mild linear gradient.

Schema of one example (``ShapesSource[i]``):
  "image": np.ndarray float32, shape (image_size, image_size, 3), HWC, RGB,
           values in [-1, 1] (background near -0.8, shapes near +1).
  "label": np.int32 scalar in [0, 10); label = i % 10 (exactly balanced).
The image is a pure function of (seed, index): bit-identical in any process.
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines.base import Field

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "plus",
    "ring",
    "diamond",
    "horizontal_bars",
    "vertical_bars",
    "x",
    "two_dots",
)
NUM_CLASSES = len(CLASS_NAMES)

# Base RGB colour of each class in [0, 1], shape (NUM_CLASSES, 3).
CLASS_COLORS = np.array(
    [
        [0.95, 0.12, 0.10],  # circle: red
        [1.00, 0.55, 0.05],  # square: orange
        [0.95, 0.92, 0.10],  # triangle: yellow
        [0.10, 0.85, 0.15],  # plus: green
        [0.10, 0.85, 0.95],  # ring: cyan
        [0.15, 0.30, 1.00],  # diamond: blue
        [0.60, 0.20, 0.95],  # horizontal bars: purple
        [0.95, 0.15, 0.80],  # vertical bars: magenta
        [0.95, 0.95, 0.95],  # x: white
        [1.00, 0.62, 0.70],  # two dots: pink
    ],
    dtype=np.float32,
)


def _box(x, y, hx, hy):
    """Signed distance to an axis-aligned box with half-sizes (hx, hy)."""
    dx, dy = np.abs(x) - hx, np.abs(y) - hy
    outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
    return outside + np.minimum(np.maximum(dx, dy), 0.0)


def _triangle(x, y, r):
    """Signed distance to an upward equilateral triangle (side 2r, y points down)."""
    k = math.sqrt(3.0)
    x, y = np.abs(x) - r, -y + r / k
    fold = x + k * y > 0
    x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * r, 0.0)
    return -np.hypot(x, y) * np.sign(y)


def _sdf(cls: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of class ``cls`` in unit shape space (~[-1, 1]^2)."""
    if cls == 0:
        return np.hypot(x, y) - 0.9
    if cls == 1:
        return _box(x, y, 0.78, 0.78)
    if cls == 2:
        return _triangle(x, y - 0.25, 1.05)
    if cls in (3, 8):
        if cls == 8:  # X = plus rotated by 45 degrees
            x, y = (x - y) * math.sqrt(0.5), (x + y) * math.sqrt(0.5)
        return np.minimum(_box(x, y, 0.95, 0.26), _box(x, y, 0.26, 0.95))
    if cls == 4:
        return np.abs(np.hypot(x, y) - 0.72) - 0.24
    if cls == 5:
        return (np.abs(x) + np.abs(y) - 1.05) * math.sqrt(0.5)
    if cls in (6, 7):
        if cls == 7:
            x, y = y, x
        bars = [_box(x, y + off, 0.85, 0.22) for off in (-0.72, 0.0, 0.72)]
        return np.minimum(np.minimum(bars[0], bars[1]), bars[2])
    if cls == 9:
        return np.minimum(np.hypot(x - 0.56, y), np.hypot(x + 0.56, y)) - 0.44
    raise ValueError(f"cls must be in [0, {NUM_CLASSES}), got {cls}")


def render_batch(labels: np.ndarray, rng: np.random.Generator, image_size: int = 32) -> np.ndarray:
    """Draws one image per label, all random parameters taken from ``rng``.

    Args:
      labels: int array, shape (N,), values in [0, NUM_CLASSES).
      rng: numpy Generator; the output is a pure function of its state, labels, image_size.
      image_size: side length H = W in pixels.
    Returns:
      float32 array, shape (N, image_size, image_size, 3), values in [-1, 1].
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be in [0, {NUM_CLASSES}), got range [{labels.min()}, {labels.max()}]")
    n = labels.shape[0]
    # Per-sample parameters, shape (N,) or (N, 3); drawn in a fixed order.
    size = rng.uniform(0.45, 0.62, n)  # half-extent of the shape, image spans [-1, 1]
    center = rng.uniform(-1.0, 1.0, (n, 2)) * (0.9 - size)[:, None]
    angle = rng.uniform(-0.2, 0.2, n)
    color = CLASS_COLORS[labels] + rng.normal(0.0, 0.04, (n, 3))
    color = np.clip(color * rng.uniform(0.8, 1.05, n)[:, None], 0.0, 1.0)
    bg = 0.06 + rng.uniform(0.0, 0.08, (n, 3))
    grad_dir = rng.uniform(0.0, 2 * np.pi, n)
    grad_amp = rng.uniform(0.0, 0.06, n)
    size, center, angle, color, bg, grad_dir, grad_amp = (
        v.astype(np.float32) for v in (size, center, angle, color, bg, grad_dir, grad_amp)
    )

    coords = ((np.arange(image_size) + 0.5) / image_size * 2.0 - 1.0).astype(np.float32)  # pixel centres
    gy, gx = coords[None, :, None], coords[None, None, :]  # (1, H, 1), (1, 1, W)
    alpha = np.empty((n, image_size, image_size), np.float32)
    for cls in np.unique(labels):
        idx = np.nonzero(labels == cls)[0]
        dx, dy = gx - center[idx, 0, None, None], gy - center[idx, 1, None, None]
        c, s = np.cos(angle[idx])[:, None, None], np.sin(angle[idx])[:, None, None]
        sz = size[idx, None, None]
        dist = _sdf(int(cls), (c * dx + s * dy) / sz, (c * dy - s * dx) / sz) * sz
        alpha[idx] = np.clip(0.5 - dist * np.float32(image_size / 2), 0.0, 1.0)  # ~1-pixel anti-aliased edge
    ramp = np.cos(grad_dir)[:, None, None] * gx + np.sin(grad_dir)[:, None, None] * gy
    background = bg[:, None, None, :] + (grad_amp[:, None, None] * ramp)[..., None]
    a = alpha[..., None]
    image = (1.0 - a) * background + a * color[:, None, None, :]
    return (np.clip(image, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


class ShapesSource:
    """Grain random-access source of procedural shape images (see module docstring).

    ``source[i]`` -> {"image": float32 (image_size, image_size, 3) in [-1, 1],
    "label": np.int32 = i % 10}; the image depends only on (seed, i).
    """

    def __init__(self, num_examples: int = 60_000, image_size: int = 32, seed: int = 0):
        if int(num_examples) != num_examples or num_examples < 1:
            raise ValueError(f"num_examples must be an integer >= 1, got {num_examples!r}")
        if int(image_size) != image_size or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.num_examples, self.image_size, self.seed = int(num_examples), int(image_size), int(seed)
        self.classes = CLASS_NAMES
        self.schema = {
            "image": Field((self.image_size, self.image_size, 3), "float32"),
            "label": Field((), "int32"),
        }

    def __len__(self) -> int:
        return self.num_examples

    def where(self, index: int) -> str:
        return f"shapes[seed={self.seed}][{index}]"

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for ShapesSource of length {self.num_examples}")
        label = index % NUM_CLASSES
        rng = np.random.default_rng([self.seed, index])
        image = render_batch(np.array([label]), rng, self.image_size)[0]
        return {"image": image, "label": np.int32(label)}

    def __repr__(self) -> str:
        return (
            f"ShapesSource(num_examples={self.num_examples}, image_size={self.image_size}, seed={self.seed})"
        )
