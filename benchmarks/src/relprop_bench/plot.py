"""A small line-plot rasteriser on top of :mod:`relprop.viz`: no matplotlib needed.

>>> img = line_plot([Line("MoRF", [0, 1, 2], [1.0, 0.4, 0.1])], title="AOPC")  # doctest: +SKIP
>>> viz.save_png("curves.png", img)                                         # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from relprop import viz

__all__ = ["PALETTE", "Line", "line_plot", "nice_ticks"]

#: 24 distinguishable line colours ("tab20", then four darker ones); black is left for
#: reference lines
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (219, 219, 141),
    (158, 218, 229),
    (0, 0, 128),
    (128, 0, 0),
    (0, 128, 128),
    (128, 128, 0),
    (255, 215, 0),
)


@dataclass(frozen=True)
class Line:
    """One series: its legend name, points, and style (colour ``None``: next in the palette)."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: tuple[int, int, int] | None = None
    dashed: bool = False
    thickness: int = 2


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten apart) in [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 5, 10) if m * power >= raw), default=10 * power)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:.3g}"


def _draw_line(
    canvas: Tensor, xs: Tensor, ys: Tensor, color: Tensor, thickness: int, dashed: bool = False
) -> None:
    """Draw the polyline through pixel coordinates ``(xs, ys)`` (floats) onto ``canvas``."""
    h, w, _ = canvas.shape
    travelled = 0.0
    for k in range(len(xs) - 1):
        x0, y0, x1, y1 = float(xs[k]), float(ys[k]), float(xs[k + 1]), float(ys[k + 1])
        length = math.hypot(x1 - x0, y1 - y0)
        steps = max(2, int(length * 2) + 1)
        t = torch.linspace(0.0, 1.0, steps)
        px = (x0 + (x1 - x0) * t).round().long()
        py = (y0 + (y1 - y0) * t).round().long()
        if dashed:  # 6 px on, 4 px off, continuing across vertices
            on = (travelled + t * length) % 10.0 < 6.0
            px, py = px[on], py[on]
        travelled += length
        for dy in range(-(thickness // 2), thickness - thickness // 2):
            for dx in range(-(thickness // 2), thickness - thickness // 2):
                qx, qy = px + dx, py + dy
                ok = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
                canvas[qy[ok], qx[ok]] = color


def _paste(canvas: Tensor, image: Tensor, top: int, left: int) -> None:
    h = min(image.shape[0], canvas.shape[0] - top)
    w = min(image.shape[1], canvas.shape[1] - left)
    if h > 0 and w > 0 and top >= 0 and left >= 0:
        canvas[top : top + h, left : left + w] = image[:h, :w]


def line_plot(
    series: Sequence[Line],
    *,
    width: int = 560,
    height: int = 360,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    legend: bool = True,
) -> Tensor:
    """Render :class:`Line` series as an RGB ``(H, W, 3)`` uint8 image.

    Axes span the data (y padded by 5 %); ticks are round numbers; the legend, right of the
    plot, lists the series in order, each in its colour (by default the next one of
    :data:`PALETTE`, cycled).
    Text uses the 5x7 font of :func:`relprop.viz.text_image` (upper case, ASCII).
    """
    if not series:
        raise ValueError("line_plot needs at least one series")
    xs_all = torch.cat([torch.as_tensor(list(s.xs), dtype=torch.float64) for s in series])
    ys_all = torch.cat([torch.as_tensor(list(s.ys), dtype=torch.float64) for s in series])
    finite = torch.isfinite(ys_all)
    x_lo, x_hi = float(xs_all.min()), float(xs_all.max())
    y_lo = float(ys_all[finite].min()) if bool(finite.any()) else 0.0
    y_hi = float(ys_all[finite].max()) if bool(finite.any()) else 1.0
    pad = 0.05 * (y_hi - y_lo) if y_hi > y_lo else 0.5
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_hi = x_hi if x_hi > x_lo else x_lo + 1.0

    legend_w = 6 * max(len(s.name) for s in series) + 30 if legend else 0
    left, right, top, bottom = 58, 12 + legend_w, 24 if title else 10, 36
    canvas = torch.full((height, width, 3), 255, dtype=torch.uint8)
    pw, ph = width - left - right, height - top - bottom
    if pw < 20 or ph < 20:
        raise ValueError(f"a {width}x{height} image is too small for this plot and legend")

    def to_px(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return (
            left + (x - x_lo) / (x_hi - x_lo) * (pw - 1),
            top + (1.0 - (y - y_lo) / (y_hi - y_lo)) * (ph - 1),
        )

    grey, black = (
        torch.tensor([225, 225, 225], dtype=torch.uint8),
        torch.zeros(3, dtype=torch.uint8),
    )
    for value in nice_ticks(y_lo, y_hi):
        _, py = to_px(torch.tensor(x_lo), torch.tensor(value))
        row = int(round(float(py)))
        canvas[row, left : left + pw] = grey
        text = viz.text_image(_label(value))
        _paste(canvas, text, row - 3, left - 4 - text.shape[1])
    for value in nice_ticks(x_lo, x_hi, 6):
        px, _ = to_px(torch.tensor(value), torch.tensor(y_lo))
        col = int(round(float(px)))
        canvas[top : top + ph, col] = grey
        text = viz.text_image(_label(value))
        _paste(canvas, text, top + ph + 4, col - text.shape[1] // 2)
    canvas[top : top + ph, left] = black
    canvas[top + ph - 1, left : left + pw] = black
    if title:
        text = viz.text_image(title)
        _paste(canvas, text, 8, left + max(0, (pw - text.shape[1]) // 2))
    if xlabel:
        text = viz.text_image(xlabel)
        _paste(canvas, text, height - 10, left + max(0, (pw - text.shape[1]) // 2))
    if ylabel:
        text = torch.rot90(viz.text_image(ylabel), 1, dims=(0, 1)).contiguous()  # reads upwards
        _paste(canvas, text, top + max(0, (ph - text.shape[0]) // 2), 2)

    auto = 0
    for k, line in enumerate(series):
        rgb = line.color
        if rgb is None:
            rgb, auto = PALETTE[auto % len(PALETTE)], auto + 1
        color = torch.tensor(rgb, dtype=torch.uint8)
        x_t = torch.as_tensor(list(line.xs), dtype=torch.float64)
        y_t = torch.as_tensor(list(line.ys), dtype=torch.float64)
        keep = torch.isfinite(y_t)
        px, py = to_px(x_t[keep], y_t[keep])
        _draw_line(canvas, px, py, color, line.thickness, line.dashed)
        if legend:
            row = top + 4 + 11 * k
            sample = torch.full((3, 16, 3), 255, dtype=torch.uint8)
            _draw_line(
                sample,
                torch.tensor([0.0, 15.0]),
                torch.tensor([1.0, 1.0]),
                color,
                min(line.thickness, 3),
                line.dashed,
            )
            _paste(canvas, sample, row + 2, width - legend_w)
            _paste(canvas, viz.text_image(line.name), row, width - legend_w + 20)
    return canvas
