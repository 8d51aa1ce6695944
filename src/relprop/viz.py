"""Render relevance maps as heatmaps (torch alone) and write them as PNG files (with Pillow).

Typical use::

    from relprop import viz
    rgb = viz.heatmap(expl.relevance[0])           # (C, H, W) relevance -> (H, W, 3) uint8
    viz.save_png("heatmap.png", viz.upscale(rgb, 8))

Everything that works on tensors (colour maps, normalisation, :func:`heatmap`,
:func:`overlay`, :func:`grid`) needs torch alone; writing files (:func:`save_png`,
:func:`to_pil`) needs Pillow, which is imported only then: ``pip install 'relprop[plot]'``.
Figures with colour bars, titles and curves are made with matplotlib by :mod:`relprop.plot`.

Colour maps take values in ``[0, 1]``; :func:`normalize_symmetric` maps relevance there so
that zero relevance lands on the map's centre (white for :data:`bwr`, black for
:data:`coldnhot`), positive evidence above it (red) and negative evidence below it (blue).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CMAPS",
    "INSTALL_PLOT",
    "ColorMap",
    "MissingExtraError",
    "bwr",
    "channel_sum",
    "coldnhot",
    "encode_png",
    "get_cmap",
    "gray",
    "grid",
    "heatmap",
    "hot",
    "normalize_minmax",
    "normalize_symmetric",
    "overlay",
    "save_png",
    "text_image",
    "to_pil",
    "to_rgb",
    "upscale",
]

ColorSpec = str | Sequence[float]
RGB8 = tuple[int, int, int]

#: What to install for the optional picture-writing dependencies (Pillow, matplotlib).
INSTALL_PLOT = "pip install 'relprop[plot]'"


class MissingExtraError(ImportError):
    """An optional dependency of ``relprop[plot]`` (Pillow or matplotlib) is not installed."""


def _require(module: str, purpose: str) -> Any:
    """Import ``module`` (``"PIL.Image"``, ``"matplotlib"``) or raise :class:`MissingExtraError`
    saying what needs it and what to install."""
    try:
        return import_module(module)
    except ImportError as err:
        package = {"PIL": "Pillow"}.get(module.split(".")[0], module.split(".")[0])
        raise MissingExtraError(
            f"{purpose} needs {package}, which is not installed: {INSTALL_PLOT} "
            f"(or pip install {package.lower()})"
        ) from err


def _parse_color(color: ColorSpec) -> tuple[float, float, float]:
    """``"#f00"``, ``"ff0000"`` or a float triple in [0, 1] -> float triple in [0, 1]."""
    if isinstance(color, str):
        h = color.lstrip("#")
        if len(h) == 3:
            h = "".join(c * 2 for c in h)
        if len(h) != 6:
            raise ValueError(f"colour {color!r} is not a 3- or 6-digit hex code")
        return (int(h[0:2], 16) / 255, int(h[2:4], 16) / 255, int(h[4:6], 16) / 255)
    r, g, b = (float(c) for c in color)
    return (r, g, b)


class ColorMap:
    """A piecewise-linear colour map from scalars in ``[0, 1]`` to RGB floats in ``[0, 1]``.

    Args:
        colors: the node colours, as hex strings (``"00f"``, ``"#0000ff"``) or float triples.
        positions: the node positions, ascending from 0 to 1; evenly spaced if omitted.
        name: a name for ``repr`` and :data:`CMAPS`.
    """

    def __init__(
        self,
        colors: Sequence[ColorSpec],
        positions: Sequence[float] | None = None,
        name: str = "custom",
    ) -> None:
        if len(colors) < 2:
            raise ValueError("a ColorMap needs at least two colours")
        if positions is None:
            positions = [i / (len(colors) - 1) for i in range(len(colors))]
        if len(positions) != len(colors):
            raise ValueError("positions and colors must have the same length")
        pos = torch.tensor([float(p) for p in positions], dtype=torch.float64)
        if pos[0] != 0.0 or pos[-1] != 1.0 or bool((pos[1:] <= pos[:-1]).any()):
            raise ValueError("positions must rise strictly from 0 to 1")
        self.name = name
        self.positions = pos
        self.colors = torch.tensor([_parse_color(c) for c in colors], dtype=torch.float64)

    def __call__(self, x: Tensor) -> Tensor:
        """Map ``x`` (any shape, clipped to [0, 1]) to RGB; appends a last axis of size 3."""
        v = x.detach().to(torch.float64).nan_to_num(0.5).clamp(0.0, 1.0)
        pos, col = self.positions.to(v.device), self.colors.to(v.device)
        i = (torch.searchsorted(pos, v.contiguous(), right=True) - 1).clamp(0, len(pos) - 2)
        t = ((v - pos[i]) / (pos[i + 1] - pos[i])).unsqueeze(-1)
        return (col[i] * (1 - t) + col[i + 1] * t).to(torch.float32)

    def __repr__(self) -> str:
        return f"ColorMap(name={self.name!r}, nodes={len(self.positions)})"


#: Blue (negative) - white (zero) - red (positive), symmetric around 0.5.
bwr = ColorMap(["00f", "fff", "f00"], name="bwr")
#: Cold colours for negative, black at zero, hot colours for positive (as in zennit).
coldnhot = ColorMap(
    ["0ff", "00f", "000", "f00", "ff0", "fff"], [0.0, 0.25, 0.5, 2 / 3, 5 / 6, 1.0], "coldnhot"
)
#: Black to white.
gray = ColorMap(["000", "fff"], name="gray")
#: Black - red - yellow - white, for non-negative maps.
hot = ColorMap(["000", "f00", "ff0", "fff"], name="hot")
#: The built-in colour maps by name.
CMAPS: dict[str, ColorMap] = {c.name: c for c in (bwr, coldnhot, gray, hot)}


def get_cmap(cmap: str | ColorMap) -> ColorMap:
    """Look up a built-in colour map by name, or pass a :class:`ColorMap` through."""
    if isinstance(cmap, ColorMap):
        return cmap
    try:
        return CMAPS[cmap]
    except KeyError:
        raise ValueError(f"unknown colour map {cmap!r}; built-in: {sorted(CMAPS)}") from None


def _per_sample(x: Tensor, batched: bool) -> Tensor:
    return x.reshape(x.shape[0], -1) if batched and x.dim() > 0 else x.reshape(1, -1)


def normalize_symmetric(
    relevance: Tensor, *, batched: bool = False, percentile: float | None = None
) -> Tensor:
    """Scale relevance into ``[0, 1]`` with zero at 0.5, keeping the sign (``R > 0`` -> ``> 0.5``).

    Each sample is divided by its largest ``|R|`` (or, with ``percentile``, by that percentile of
    ``|R|``; larger values are clipped), so positive and negative relevance share one scale.
    All-zero maps come out as 0.5 everywhere.

    Args:
        relevance: any shape; one sample unless ``batched``.
        batched: whether dim 0 indexes samples, each normalised on its own.
        percentile: in (0, 100]; e.g. 99.5 keeps a few extreme pixels from washing out the rest.
    """
    r = relevance.detach().to(torch.float32).nan_to_num(0.0, 0.0, 0.0)
    if r.numel() == 0:
        return r
    flat = _per_sample(r, batched).abs()
    if percentile is None:
        scale = flat.amax(dim=1)
    else:
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
        k = max(1, math.ceil(percentile / 100.0 * flat.shape[1]))
        scale = flat.kthvalue(k, dim=1).values
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    shape = (-1,) + (1,) * (r.dim() - 1) if batched else ()
    return (r / scale.reshape(shape) * 0.5 + 0.5).clamp(0.0, 1.0)


def normalize_minmax(relevance: Tensor, *, batched: bool = False) -> Tensor:
    """Scale each sample's minimum to 0 and maximum to 1 (constant maps become 0)."""
    r = relevance.detach().to(torch.float32).nan_to_num(0.0, 0.0, 0.0)
    if r.numel() == 0:
        return r
    flat = _per_sample(r, batched)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    shape = (-1,) + (1,) * (r.dim() - 1) if batched else ()
    return (r - lo.reshape(shape)) / span.reshape(shape)


def channel_sum(relevance: Tensor) -> Tensor:
    """Sum relevance over the channel axis: ``(C, H, W) -> (H, W)``, ``(N, C, H, W) -> (N, H, W)``.

    ``(H, W)`` maps are returned unchanged. Summing (not taking ``|R|``) keeps the sign, so the
    heatmap still separates evidence for and against the class.
    """
    if relevance.dim() == 2:
        return relevance
    if relevance.dim() not in (3, 4):
        raise ValueError(f"expected (H, W), (C, H, W) or (N, C, H, W), got {relevance.shape}")
    return relevance.sum(dim=-3)


def _to_uint8(x: Tensor) -> Tensor:
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def heatmap(
    relevance: Tensor,
    cmap: str | ColorMap = "bwr",
    *,
    percentile: float | None = None,
    symmetric: bool = True,
) -> Tensor:
    """Render relevance as a uint8 RGB heatmap.

    Args:
        relevance: ``(H, W)``, ``(C, H, W)`` (channels are summed), or a batch ``(N, C, H, W)``
            (each sample normalised on its own).
        cmap: a name from :data:`CMAPS` or a :class:`ColorMap`.
        percentile: clip at this percentile of ``|R|`` (see :func:`normalize_symmetric`).
        symmetric: zero at the map's centre (default); ``False`` stretches min..max instead.

    Returns:
        ``(H, W, 3)`` uint8, or ``(N, H, W, 3)`` for a batch.
    """
    r = channel_sum(relevance)
    batched = relevance.dim() == 4
    if symmetric:
        v = normalize_symmetric(r, batched=batched, percentile=percentile)
    else:
        v = normalize_minmax(r, batched=batched)
    return _to_uint8(get_cmap(cmap)(v))


def to_rgb(image: Tensor, *, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Convert an image to ``(H, W, 3)`` uint8.

    Accepts ``(H, W)``, ``(H, W, 1|3|4)`` and channels-first ``(1|3, H, W)``. uint8 input is
    kept as is; floating input is mapped from ``[low, high]`` to 0..255. Alpha is dropped.
    """
    x = image.detach().cpu()
    if x.dim() == 2:
        x = x.unsqueeze(-1)
    if x.dim() != 3:
        raise ValueError(f"expected an image of 2 or 3 dims, got {tuple(x.shape)}")
    if x.shape[-1] not in (1, 3, 4) and x.shape[0] in (1, 3):
        x = x.permute(1, 2, 0)
    if x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"cannot find a colour axis of size 1 or 3 in {tuple(image.shape)}")
    x = x[..., :3].expand(-1, -1, 3) if x.shape[-1] == 1 else x[..., :3]
    if x.dtype != torch.uint8:
        x = _to_uint8((x.to(torch.float32) - low) / (high - low))
    return x.contiguous()


def overlay(image: Tensor, heatmap: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend a heatmap over an image: ``(1 - alpha) * image + alpha * heatmap``, as uint8 RGB.

    Both are converted with :func:`to_rgb` and must have the same height and width.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    a, b = to_rgb(image).to(torch.float32), to_rgb(heatmap).to(torch.float32)
    if a.shape != b.shape:
        raise ValueError(f"image {tuple(a.shape)} and heatmap {tuple(b.shape)} differ in size")
    return ((1.0 - alpha) * a + alpha * b).round().clamp(0, 255).to(torch.uint8)


def upscale(image: Tensor, factor: int) -> Tensor:
    """Enlarge by an integer ``factor`` with nearest-neighbour (blocky, no blur).

    Scales dims 0 and 1 of ``(H, W)`` and ``(H, W, C)``, and dims 1 and 2 of ``(N, H, W, C)``.
    """
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    h = 1 if image.dim() == 4 else 0
    return image.repeat_interleave(factor, dim=h).repeat_interleave(factor, dim=h + 1)


# A 5x7 bitmap font: each glyph is its character and 7 rows, one base-32 digit (5 bits) a row.
_FONT_SRC = (
    "Aehhvhhh Buhhuhhu Cehggghe Duhhhhhu Evgguggv Fvgguggg Gehgnhhf Hhhhvhhh Ie44444e J72222ic "
    "Khikokih Lggggggv Mhrllhhh Nhhpljhh Oehhhhhe Puhhuggg Qehhhlid Ruhhukih Sfgge11u Tv444444 "
    "Uhhhhhhe Vhhhhha4 Whhhllla Xhha4ahh Yhha4444 Zv1248gv 0ehjlphe 14c4444e 2eh1248v 3v2421he "
    "426aiv22 5vgu11he 668guhhe 7v124888 8ehhehhe 9ehhf12c -000v000 +044v440 .00000cc ,0000c48 "
    ":0cc0cc0 =00v0v00 (2488842 )8422248 /01248g0 _000000v ε00egcge γ00ha448 >8421248 <2481842 "
    "%pq248bj |4444444 *04lel40"
)
_FONT: dict[str, list[int]] = {g[0]: [int(c, 32) for c in g[1:]] for g in _FONT_SRC.split(" ")}
_FONT[" "] = [0] * 7
_FONT["?"] = [14, 17, 1, 2, 4, 0, 4]


def text_image(
    text: str,
    scale: int = 1,
    color: RGB8 = (0, 0, 0),
    background: RGB8 = (255, 255, 255),
) -> Tensor:
    """Render one line of text with a built-in 5x7 font as ``(7*scale, 6*len*scale, 3)`` uint8.

    Knows A-Z (lower case is drawn as upper case), 0-9, ``+-.,:=()/_<>%|*``, ``ε`` and ``γ``;
    other characters show as ``?``. It labels :func:`grid` with torch alone; for readable
    titles, colour bars and legends use :mod:`relprop.plot` (matplotlib).
    """
    rows = [_FONT.get(ch, _FONT.get(ch.upper(), _FONT["?"])) for ch in text]
    bits = torch.zeros(7, 6 * max(len(rows), 1), dtype=torch.bool)
    for n, glyph in enumerate(rows):
        for y, row in enumerate(glyph):
            for x in range(5):
                bits[y, 6 * n + x] = bool(row >> (4 - x) & 1)
    if rows:
        bits = bits[:, :-1]  # no spacing column after the last glyph
    fg = torch.tensor(color, dtype=torch.uint8)
    bg = torch.tensor(background, dtype=torch.uint8)
    out = torch.where(bits.unsqueeze(-1), fg, bg)
    return upscale(out, scale) if scale > 1 else out


def _paste(canvas: Tensor, img: Tensor, top: int, left: int, height: int, width: int) -> None:
    """Paste ``img`` centred in the box, cropping it if it is larger."""
    h, w = min(img.shape[0], height), min(img.shape[1], width)
    y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    y, x = top + (height - h) // 2, left + (width - w) // 2
    canvas[y : y + h, x : x + w] = img[y0 : y0 + h, x0 : x0 + w]


def grid(
    images: Sequence[Tensor],
    nrow: int = 8,
    padding: int = 2,
    *,
    pad_value: int = 255,
    labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    label_scale: int = 1,
) -> Tensor:
    """Compose images row by row, ``nrow`` to a row, into one ``(H, W, 3)`` uint8 image.

    Args:
        images: anything :func:`to_rgb` accepts; each is centred in a cell as large as the largest.
        nrow: images per row (the number of columns).
        padding: pixels between and around cells, filled with ``pad_value``.
        labels: column headers, drawn above the columns (columns widen to fit them).
        row_labels: drawn left of each row.
        label_scale: integer scale of the 5x7 label font.
    """
    if not images:
        raise ValueError("grid needs at least one image")
    if nrow < 1 or padding < 0:
        raise ValueError("nrow must be >= 1 and padding >= 0")
    imgs = [to_rgb(im) for im in images]
    ncol = min(nrow, len(imgs))
    nrows = -(-len(imgs) // ncol)
    fg: RGB8 = (0, 0, 0) if pad_value >= 128 else (255, 255, 255)
    bg: RGB8 = (pad_value, pad_value, pad_value)
    heads = [text_image(t, label_scale, fg, bg) for t in labels or []]
    sides = [text_image(t, label_scale, fg, bg) for t in row_labels or []]
    ch = max(im.shape[0] for im in imgs)
    cw = max([im.shape[1] for im in imgs] + [t.shape[1] for t in heads])
    head_h = max([t.shape[0] + padding for t in heads], default=0)
    side_w = max([t.shape[1] + padding for t in sides], default=0)
    height = head_h + nrows * (ch + padding) + padding
    width = side_w + ncol * (cw + padding) + padding
    canvas = torch.full((height, width, 3), pad_value, dtype=torch.uint8)
    for j, t in enumerate(heads[:ncol]):
        _paste(canvas, t, padding, side_w + padding + j * (cw + padding), head_h - padding, cw)
    for i, t in enumerate(sides[:nrows]):
        _paste(canvas, t, head_h + padding + i * (ch + padding), padding, ch, side_w - padding)
    for k, im in enumerate(imgs):
        i, j = divmod(k, ncol)
        top, left = head_h + padding + i * (ch + padding), side_w + padding + j * (cw + padding)
        _paste(canvas, im, top, left, ch, cw)
    return canvas


def _check_uint8_image(image: Tensor) -> Tensor:
    """``image`` as a CPU ``(H, W, 1|3|4)`` uint8 tensor, or a TypeError/ValueError."""
    if not isinstance(image, Tensor):
        raise TypeError(f"expected a uint8 tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise TypeError(f"save PNGs from uint8 tensors (see to_rgb / heatmap), got {image.dtype}")
    x = image.detach().cpu()
    x = x.unsqueeze(-1) if x.dim() == 2 else x
    if x.dim() != 3 or x.shape[-1] not in (1, 3, 4) or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"expected non-empty (H, W), (H, W, 3) or (H, W, 4); got {tuple(x.shape)}")
    return x.contiguous()


def to_pil(image: Tensor) -> Any:
    """A uint8 ``(H, W)`` (grey), ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA) tensor as a
    ``PIL.Image.Image`` (modes ``"L"``, ``"RGB"``, ``"RGBA"``). Needs Pillow."""
    x = _check_uint8_image(image)
    pil_image = _require("PIL.Image", "writing images")
    h, w, c = x.shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    raw = bytearray(x.numel())  # no numpy needed: copy the tensor into a bytes buffer
    if raw:
        torch.frombuffer(raw, dtype=torch.uint8).copy_(x.reshape(-1))
    return pil_image.frombytes(mode, (w, h), bytes(raw))


def save_png(path: str | Path, image: Tensor) -> Path:
    """Write a uint8 image (as :func:`to_pil` takes it) to ``path`` as PNG, with Pillow;
    returns the path.

    Raises :class:`MissingExtraError` (an ``ImportError``) naming ``pip install
    'relprop[plot]'`` when Pillow is not installed.
    """
    p = Path(path)
    to_pil(image).save(p, format="PNG")
    return p


def encode_png(image: Tensor) -> bytes:
    """Deprecated: the PNG bytes of a uint8 image, now written by Pillow.

    Use :func:`save_png` (or :func:`to_pil` and ``Image.save`` to a ``BytesIO``).
    """
    warnings.warn(
        "relprop.viz.encode_png is deprecated: PNG files are written with Pillow now; use "
        "viz.save_png(path, image), or viz.to_pil(image).save(buffer, format='PNG')",
        DeprecationWarning,
        stacklevel=2,
    )
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()
