"""Pictures of concepts: the "glocal" figure of one prediction (matplotlib) and a concept
atlas page (HTML with embedded PNGs, Pillow). Images only (``(C, H, W)`` samples, C = 1 or 3).
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from .. import viz
from ..errors import InvalidInputError
from .explain import ConceptExplanation
from .relmax import References

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["glocal", "atlas"]


def _rgb(sample: Tensor) -> Tensor:
    """An image sample ``(C, H, W)`` stretched to its own min..max, as uint8 RGB."""
    if sample.dim() != 3 or sample.shape[0] not in (1, 3):
        raise InvalidInputError(
            f"concept figures show image samples (C, H, W) with 1 or 3 channels, got "
            f"{tuple(sample.shape)}")
    low, high = float(sample.min()), float(sample.max())
    return viz.to_rgb(sample.float(), low=low, high=high if high > low else low + 1)


def _patch(refs: References, unit: int, j: int) -> Tensor:
    return _rgb(refs.patches(unit)[j])


def glocal(c: ConceptExplanation, x: Tensor, refs: References | None = None, *,
           sample: int = 0, patches: int = 4, percentile: float | None = 99.5) -> Figure:
    """One prediction, local and global: the input, its heatmap, and for each concept of
    ``c`` its conditional heatmap, its share of the layer's relevance and (with ``refs``) the
    patches of its RelMax reference samples."""
    from .. import plot

    rows = len(c.units)
    shown = patches if refs is not None else 0
    fig = plot.figure(2.0 * (2 + shown), 1.9 * (rows + 1))
    grid = fig.add_gridspec(rows + 1, 2 + max(shown, 0))
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(_rgb(x[sample]).numpy())
    ax.set_title("input", fontsize=8)
    ax = fig.add_subplot(grid[0, 1])
    ax.imshow(viz.heatmap(c.heatmap[sample], percentile=percentile).numpy())
    ax.set_title(f"heatmap ({float(c.explained[sample]):.3g})", fontsize=8)
    total = float(c.unit_relevance[sample].sum())
    for k, units in enumerate(c.units):
        share = float(c.concept_relevance[sample, k]) / total if total else float("nan")
        ax = fig.add_subplot(grid[k + 1, 0])
        ax.text(0.5, 0.5, f"{c.layer}\nunit {', '.join(map(str, units))}\n"
                f"{100 * share:.1f}% of the layer", ha="center", va="center", fontsize=8)
        ax = fig.add_subplot(grid[k + 1, 1])
        ax.imshow(viz.heatmap(c.relevance[sample, k], percentile=percentile).numpy())
        ax.set_title("conditional heatmap", fontsize=7)
        if refs is None or len(units) != 1 or units[0] not in refs.units:
            continue
        for j in range(min(shown, len(refs.patches(units[0])))):
            ax = fig.add_subplot(grid[k + 1, 2 + j])
            ax.imshow(_patch(refs, units[0], j).numpy())
            ax.set_title(f"reference {j + 1}", fontsize=7)
    for ax in fig.axes:
        if ax.images:
            ax.set_xticks([])
            ax.set_yticks([])
        else:  # the text cells
            ax.set_axis_off()
    return fig


def _img(image: Tensor, scale: int, title: str) -> str:
    buffer = io.BytesIO()
    viz.to_pil(viz.upscale(image, scale)).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>")


def atlas(refs: References, path: str | os.PathLike[str], *, scale: int = 4,
          title: str | None = None) -> Path:
    """Write a concept atlas: per unit, its reference patches by relevance (with their
    conditional heatmaps) and its top samples by activation, for comparison."""
    if refs.boxes is None or refs.maps is None:
        raise InvalidInputError("the references are not cropped yet: call refs.crop(model)")
    parts = [f"<h1>{html.escape(title or f'Concept atlas of {refs.layer}')}</h1>",
             f"<p>{len(refs.units)} units, {refs.k} references each by relevance (RelMax, "
             f"{refs.reduce} over positions) and by activation, over {refs.seen} samples.</p>"]
    for row, unit in enumerate(refs.units):
        cells = []
        for j, index in enumerate(refs.relevance_indices[row].tolist()):
            if index < 0:
                continue
            value = float(refs.relevance_values[row, j])
            cells.append(_img(_patch(refs, unit, j), scale, f"#{index} R={value:.3g}"))
            cells.append(_img(viz.heatmap(refs.maps[row, j]), scale, "conditional"))
        by_activation = [_img(_rgb(refs.samples[i]), scale, f"#{i}")
                         for i in refs.activation_indices[row].tolist() if i >= 0]
        parts.append(f"<section><h2>unit {unit}</h2><h3>by relevance</h3>"
                     f"<div class='row'>{''.join(cells)}</div><h3>by activation</h3>"
                     f"<div class='row'>{''.join(by_activation)}</div></section>")
    style = ("body{font-family:sans-serif;margin:1em}.row{display:flex;flex-wrap:wrap;gap:4px}"
             "figure{margin:0;text-align:center;font-size:10px}img{image-rendering:pixelated}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>concept atlas</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    target = Path(path)
    target.write_text(page, encoding="utf-8")
    return target
