"""Small inline SVG charts for the audit report: the eigengap plot and the embedding scatter.

Plain SVG text, no plotting library and nothing fetched: the report stays one offline folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

__all__ = ["PALETTE", "cluster_colour", "eigengap_svg", "scatter_svg"]

#: cluster colours (Tableau 10), cluster k gets ``PALETTE[k % 10]``
PALETTE: tuple[str, ...] = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                            "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


def cluster_colour(cluster: int) -> str:
    """The colour of ``cluster`` in every chart and badge of the report."""
    return PALETTE[cluster % len(PALETTE)]


def _frame(width: int, height: int, label: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
            f'<rect width="{width}" height="{height}" fill="#fff"/>' + "".join(body) + "</svg>")


def eigengap_svg(eigenvalues: np.ndarray, chosen: int, *, width: int = 320,
                 height: int = 200) -> str:
    """The smallest eigenvalues ``λ_1 … λ_m`` of the graph Laplacian as dots, the chosen gap
    (between ``λ_chosen`` and ``λ_chosen+1``) marked: the number of clusters SpRAy chose."""
    values = np.asarray(eigenvalues, dtype=float)
    left, right, top, bottom = 40, 12, 14, 34
    top_value = max(float(values.max()) if values.size else 1.0, 1e-6) * 1.1
    step = (width - left - right) / max(len(values), 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + step * (i + 0.5)
        return x, top + (height - top - bottom) * (1.0 - v / top_value)

    body = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" '
            f'y2="{height - bottom}" stroke="#444"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>',
            f'<text x="4" y="{top + 4}" font-size="10">{top_value:.2f}</text>',
            f'<text x="4" y="{height - bottom}" font-size="10">0</text>',
            f'<text x="{left}" y="{height - 8}" font-size="11">eigenvalue index k '
            f'(first large gap after k = {chosen})</text>']
    if 1 <= chosen < len(values):
        (x0, y0), (x1, y1) = xy(chosen - 1, values[chosen - 1]), xy(chosen, values[chosen])
        body.append(f'<line x1="{(x0 + x1) / 2:.1f}" y1="{y0:.1f}" x2="{(x0 + x1) / 2:.1f}" '
                    f'y2="{y1:.1f}" stroke="#e15759" stroke-width="3"/>')
    for i, v in enumerate(values):
        x, y = xy(i, float(v))
        fill = "#e15759" if i < chosen else "#4e79a7"
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}">'
                    f"<title>λ{i + 1} = {v:.4f}</title></circle>")
        body.append(f'<text x="{x - 3:.1f}" y="{height - bottom + 13}" font-size="10">'
                    f"{i + 1}</text>")
    return _frame(width, height, "eigenvalues of the graph Laplacian", body)


def scatter_svg(points: np.ndarray, clusters: np.ndarray, names: Sequence[str], *,
                width: int = 320, height: int = 320) -> str:
    """A 2-D embedding, one dot per sample coloured by cluster; hovering names the sample."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pad = 12
    lo, hi = (pts.min(axis=0), pts.max(axis=0)) if len(pts) else (np.zeros(2), np.ones(2))
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    body = []
    for (px, py), cluster, name in zip(pts, clusters, names):
        x = pad + (width - 2 * pad) * (px - lo[0]) / span[0]
        y = pad + (height - 2 * pad) * (1.0 - (py - lo[1]) / span[1])
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill-opacity="0.8" '
                    f'fill="{cluster_colour(int(cluster))}" data-cluster="{int(cluster)}">'
                    f"<title>{escape(name)} (cluster {int(cluster)})</title></circle>")
    return _frame(width, height, "2-D embedding of the heatmaps, coloured by cluster", body)
