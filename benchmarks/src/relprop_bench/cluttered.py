"""Cluttered digits: a localisation data set with known object boxes, generated from 8x8 digits.

Each image is a ``canvas x canvas`` RGB picture on a dim, random-coloured, noisy background
holding one *target* digit drawn in red and several *distractor* digits drawn in other colours
(green, blue, cyan, white, and the red-containing yellow and magenta, so that "has red ink" is
not enough: the model must tell red from yellow and magenta). The label is the class of the
red digit; the box is the tight bounding box of its ink. Target size (1x to 2.5x the 8x8
original by default) and position vary; everything is deterministic given ``seed``.

The 1797 digits of scikit-learn's ``load_digits`` ship with the package (``data/digits8x8.pt``,
made by ``scripts/make_digits_data.py``); ``split`` keeps the source digits of training and
test images apart, so test accuracy measures generalisation to unseen handwriting.

>>> images, labels, boxes = make_cluttered_digits(4, seed=0)       # doctest: +SKIP
>>> images.shape, boxes[0]                                         # doctest: +SKIP
(torch.Size([4, 3, 32, 32]), tensor([x0, y0, x1, y1]))
"""

from __future__ import annotations

from importlib import resources

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TARGET_COLOR", "DISTRACTOR_COLORS", "load_digits8x8", "make_cluttered_digits"]

#: RGB of the target's ink (jittered per image by up to ``color_jitter``).
TARGET_COLOR = (0.95, 0.12, 0.08)
#: RGB of the distractors' inks: green, blue, cyan, white, yellow, magenta.
DISTRACTOR_COLORS = (
    (0.1, 0.85, 0.15),
    (0.2, 0.35, 1.0),
    (0.1, 0.85, 0.9),
    (0.9, 0.9, 0.9),
    (0.95, 0.85, 0.1),
    (0.9, 0.15, 0.9),
)
#: ink above this (0..1, after resizing) counts for the target's bounding box
BOX_INK = 0.25


def load_digits8x8(split: str = "all") -> tuple[Tensor, Tensor]:
    """The shipped 8x8 digits as ``(images (N, 8, 8) float in [0, 1], labels (N,) int64)``.

    ``split``: ``"all"`` (1797), ``"train"`` (indices ``i % 4 != 3``, 1348) or ``"test"``
    (``i % 4 == 3``, 449).
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    with (resources.files("relprop_bench") / "data" / "digits8x8.pt").open("rb") as f:
        blob = torch.load(f, weights_only=True)
    images = blob["images"].to(torch.float32) / 16.0
    labels = blob["labels"].to(torch.int64)
    if split != "all":
        keep = (torch.arange(len(labels)) % 4 == 3) == (split == "test")
        images, labels = images[keep], labels[keep]
    return images, labels


def _uniform(gen: torch.Generator, low: float, high: float, size: int = 1) -> Tensor:
    """``size`` draws from ``U(low, high)``."""
    return low + (high - low) * torch.rand(size, generator=gen)


def _randint(gen: torch.Generator, high: int) -> int:
    """An integer in ``[0, high]``."""
    return int(torch.randint(0, high + 1, (1,), generator=gen))


class _Resized:
    """All source digits resized to a given side, computed once per side."""

    def __init__(self, digits: Tensor) -> None:
        self.digits = digits.unsqueeze(1)
        self.cache: dict[int, Tensor] = {}

    def __call__(self, index: int, side: int) -> Tensor:
        if side not in self.cache:
            if side == 8:
                self.cache[side] = self.digits[:, 0]
            else:
                up = F.interpolate(
                    self.digits,
                    size=(side, side),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
                self.cache[side] = up[:, 0].clamp(0.0, 1.0)
        return self.cache[side][index]


def _paint(image: Tensor, ink: Tensor, color: Tensor, top: int, left: int) -> None:
    """Alpha-blend ``color`` with opacity ``ink`` onto ``image`` (in place) at (top, left)."""
    h, w = ink.shape
    patch = image[:, top : top + h, left : left + w]
    patch.mul_(1.0 - ink).add_(color[:, None, None] * ink)


def _ink_box(ink: Tensor, top: int, left: int) -> list[int]:
    rows = (ink > BOX_INK).any(dim=1).nonzero().flatten()
    cols = (ink > BOX_INK).any(dim=0).nonzero().flatten()
    if len(rows) == 0:  # a blank digit does not occur in load_digits; be safe anyway
        return [left, top, left + ink.shape[1], top + ink.shape[0]]
    return [
        left + int(cols[0]),
        top + int(rows[0]),
        left + int(cols[-1]) + 1,
        top + int(rows[-1]) + 1,
    ]


def _overlaps(box: list[int], top: int, left: int, side: int) -> bool:
    x0, y0, x1, y1 = box
    return left < x1 and left + side > x0 and top < y1 and top + side > y0


def make_cluttered_digits(
    n: int,
    seed: int,
    *,
    canvas: int = 32,
    distractors: int = 3,
    scale: tuple[float, float] = (1.0, 2.5),
    distractor_scale: tuple[float, float] = (1.0, 1.75),
    noise: float = 0.05,
    background: tuple[float, float] = (0.05, 0.3),
    color_jitter: float = 0.08,
    split: str = "train",
) -> tuple[Tensor, Tensor, Tensor]:
    """Generate ``n`` cluttered-digit images; deterministic given ``seed``.

    Args:
        n: number of images.
        seed: seed of the private random generator (the global RNG is not touched).
        canvas: side of the square RGB canvas in pixels.
        distractors: number of distractor digits per image (placed off the target's box when
            possible; they may overlap each other).
        scale: range of the target's upscaling factor over the 8x8 original.
        distractor_scale: the same for the distractors.
        noise: standard deviation of the Gaussian pixel noise.
        background: range of each channel of the per-image background colour.
        color_jitter: each ink colour channel moves by up to this much per digit.
        split: which source digits to draw from: ``"train"``, ``"test"`` or ``"all"``.

    Returns:
        ``images`` ``(n, 3, canvas, canvas)`` float32 in ``[0, 1]``, ``labels`` ``(n,)`` int64
        (the red digit's class), ``boxes`` ``(n, 4)`` int64 ``(x0, y0, x1, y1)``: the target's
        ink, in pixels, end-exclusive (``image[:, y0:y1, x0:x1]``).
    """
    _check(n, canvas, distractors, scale, distractor_scale, noise, background)
    digits, classes = load_digits8x8(split)
    resized = _Resized(digits)
    gen = torch.Generator().manual_seed(int(seed))
    target_color = torch.tensor(TARGET_COLOR)
    palette = torch.tensor(DISTRACTOR_COLORS)
    images = torch.empty(n, 3, canvas, canvas)
    labels = torch.empty(n, dtype=torch.int64)
    boxes = torch.empty(n, 4, dtype=torch.int64)
    for i in range(n):
        image = images[i]
        image.copy_(_uniform(gen, *background, size=3)[:, None, None].expand_as(image))
        index = _randint(gen, len(classes) - 1)
        side = round(8 * float(_uniform(gen, *scale)))
        top, left = _randint(gen, canvas - side), _randint(gen, canvas - side)
        ink = resized(index, side)
        box = _ink_box(ink, top, left)
        for _ in range(distractors):
            d_index = _randint(gen, len(classes) - 1)
            d_side = round(8 * float(_uniform(gen, *distractor_scale)))
            for _attempt in range(30):
                d_top, d_left = _randint(gen, canvas - d_side), _randint(gen, canvas - d_side)
                if not _overlaps(box, d_top, d_left, d_side):
                    break
            color = palette[_randint(gen, len(palette) - 1)]
            color = (color + _uniform(gen, -color_jitter, color_jitter, 3)).clamp(0.0, 1.0)
            _paint(image, resized(d_index, d_side), color, d_top, d_left)
        color = (target_color + _uniform(gen, -color_jitter, color_jitter, 3)).clamp(0.0, 1.0)
        _paint(image, ink, color, top, left)
        if noise > 0:  # drawn per image, so that the first k images do not depend on n
            image.add_(torch.randn(image.shape, generator=gen), alpha=noise)
        labels[i] = classes[index]
        boxes[i] = torch.tensor(box)
    return images.clamp_(0.0, 1.0), labels, boxes


def _check(
    n: int,
    canvas: int,
    distractors: int,
    scale: tuple[float, float],
    distractor_scale: tuple[float, float],
    noise: float,
    background: tuple[float, float],
) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if distractors < 0:
        raise ValueError(f"distractors must be >= 0, got {distractors}")
    for label, (low, high) in (("scale", scale), ("distractor_scale", distractor_scale)):
        if not 0 < low <= high:
            raise ValueError(f"{label} must be (low, high) with 0 < low <= high, got {(low, high)}")
        if round(8 * high) > canvas:
            raise ValueError(
                f"{label} up to {high} makes digits of {round(8 * high)} px, larger "
                f"than the canvas ({canvas} px); lower it or enlarge the canvas"
            )
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if not 0.0 <= background[0] <= background[1] <= 1.0:
        raise ValueError(f"background must be (low, high) within [0, 1], got {background}")
