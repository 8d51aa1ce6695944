"""The audit report: one offline HTML folder (``index.html`` and ``img/*.png``).

Per class: the metrics, the eigengap plot and the embedding scatter (inline SVG), the
clusters in ranked order (most unlike the rest of the class first) with their prototype (mean
heatmap) and nearest members, and a gallery of inputs, heatmaps and overlays. Nothing is
fetched: no CDN, no web font, no external script.

The samples come from a :class:`Samples` source: :class:`TensorSamples` for maps in memory,
or :class:`relprop.audit.command.StoreSamples` for a ``relprop explain`` run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import viz
from .spray import ClassSpray, SprayResult
from .svg import cluster_colour, eigengap_svg, scatter_svg

__all__ = ["Samples", "TensorSamples", "write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;margin:6px 0}
.triple{display:inline-block;margin:4px;text-align:center;font-size:11px;vertical-align:top}
.triple img,.proto img{width:72px;height:72px;image-rendering:pixelated;border:1px solid #ccc}
.proto img{width:120px;height:120px}
.badge{display:inline-block;color:#fff;border-radius:3px;padding:0 5px;font-size:11px}
.note{color:#555;font-size:0.9em}button{margin:2px}
"""

# filtering the gallery by cluster: the only script, inline
_SCRIPT = """
document.querySelectorAll('button[data-show]').forEach(function (b) {
  b.addEventListener('click', function () {
    var gallery = document.getElementById(b.dataset.gallery);
    gallery.querySelectorAll('.triple').forEach(function (t) {
      t.style.display = (b.dataset.show === 'all' || t.dataset.cluster === b.dataset.show)
        ? 'inline-block' : 'none';
    });
  });
});
"""


class Samples(Protocol):
    """Where the report finds a sample's name, heatmap and input picture, by input row."""

    def name(self, row: int) -> str:
        """A short name (path or id)."""
        ...

    def heatmap(self, row: int) -> Tensor:
        """The relevance map ``(H, W)``."""
        ...

    def image(self, row: int) -> Tensor | None:
        """The input as uint8 ``(h, w, 3)``, or ``None`` when there is no picture."""
        ...


class TensorSamples:
    """Samples held in memory: maps ``(N, H, W)`` (or ``(N, C, H, W)``), optional images
    ``(N, C, H, W)`` in [0, 1] or uint8 ``(N, h, w, 3)``, and optional names."""

    def __init__(self, heatmaps: Tensor, images: Tensor | None = None,
                 names: Sequence[str] | None = None) -> None:
        self.heatmaps = heatmaps.sum(dim=1) if heatmaps.dim() == 4 else heatmaps
        self.images = images
        self.names = list(names) if names is not None else None

    def name(self, row: int) -> str:
        return self.names[row] if self.names is not None else f"#{row}"

    def heatmap(self, row: int) -> Tensor:
        return self.heatmaps[row]

    def image(self, row: int) -> Tensor | None:
        return None if self.images is None else viz.to_rgb(self.images[row])


class _Writer:
    """Writes the PNGs of one report and remembers their relative paths."""

    def __init__(self, out: Path) -> None:
        self.out = out
        (out / "img").mkdir(parents=True, exist_ok=True)

    def png(self, name: str, image: Tensor) -> str:
        viz.save_png(self.out / "img" / name, image)
        return f"img/{name}"


def _fit(image: Tensor, height: int, width: int) -> Tensor:
    """uint8 ``(h, w, 3)`` resized (nearest) to ``(height, width, 3)``."""
    if image.shape[:2] == (height, width):
        return image
    x = image.permute(2, 0, 1)[None].float()
    return F.interpolate(x, size=(height, width), mode="nearest")[0].permute(1, 2, 0).to(
        torch.uint8)


def _triple(w: _Writer, samples: Samples, row: int, cluster: int, tag: str) -> str:
    """``<div>`` with the input, the heatmap and their overlay of one sample."""
    relevance = samples.heatmap(row).float()
    heat = viz.heatmap(relevance)
    cells = []
    image = samples.image(row)
    if image is not None:
        big = max(image.shape[0], heat.shape[0]), max(image.shape[1], heat.shape[1])
        image, heat = _fit(image, *big), _fit(heat, *big)
        cells.append(f'<img src="{w.png(f"{tag}-input.png", image)}" alt="input">')
    cells.append(f'<img src="{w.png(f"{tag}-heat.png", heat)}" alt="heatmap">')
    if image is not None:
        mixed = viz.overlay(image, heat, alpha=0.6)
        cells.append(f'<img src="{w.png(f"{tag}-overlay.png", mixed)}" alt="overlay">')
    name = escape(samples.name(row))
    badge = (f'<span class="badge" style="background:{cluster_colour(cluster)}">'
             f"c{cluster}</span>")
    return (f'<div class="triple" data-cluster="{cluster}" title="{name}">' + "".join(cells)
            + f"<br>{badge} {name[-28:]}<br>ΣR {float(relevance.sum()):.3g}</div>")


def _cluster_card(w: _Writer, samples: Samples, c: ClassSpray, k: int, rank: int) -> str:
    proto = w.png(f"class{c.label}-cluster{k}-prototype.png", viz.heatmap(
        torch.as_tensor(c.prototypes[k])))
    near = "".join(_triple(w, samples, int(r), k, f"class{c.label}-cluster{k}-near{j}")
                   for j, r in enumerate(c.nearest[k]))
    head = (f'<span class="badge" style="background:{cluster_colour(k)}">cluster {k}</span> '
            f"rank {rank + 1}: {int(c.sizes[k])} samples "
            f"({100 * c.sizes[k] / len(c.indices):.0f}% of the class), distinctness "
            f"{c.distinctness[k]:.2f}, conductance {c.conductance[k]:.2f}")
    return (f'<div class="card"><div>{head}</div><div class="row"><div class="proto">'
            f'<img src="{proto}" alt="prototype of cluster {k}"><br>prototype (mean heatmap)'
            f"</div><div>nearest to the prototype:<br>{near}</div></div></div>")


def _class_section(w: _Writer, samples: Samples, c: ClassSpray, title: str,
                   metrics: Mapping[str, str], per_class: int) -> str:
    names = [samples.name(int(r)) for r in c.indices]
    cards = "".join(_cluster_card(w, samples, c, k, rank) for rank, k in enumerate(c.ranking))
    # the gallery: members spread over the clusters, in input order
    shown = np.sort(np.concatenate([c.members(k)[: max(1, per_class // c.n_clusters)]
                                    for k in range(c.n_clusters)]))[:per_class]
    where = {int(r): int(k) for r, k in zip(c.indices, c.clusters)}
    gallery_id = f"gallery-{c.label}"
    triples = "".join(_triple(w, samples, int(r), where[int(r)], f"class{c.label}-row{int(r)}")
                      for r in shown)
    buttons = "".join(f'<button data-gallery="{gallery_id}" data-show="{s}">{s}</button>'
                      for s in ["all", *map(str, range(c.n_clusters))])
    rows = "".join(f'<tr><td class="l">{escape(k)}</td><td>{escape(v)}</td></tr>'
                   for k, v in metrics.items())
    return (f'<section id="class-{c.label}"><h2>{escape(title)}</h2>'
            f'<table>{rows}</table><div class="row">'
            f"<div>eigengap: {c.n_clusters} cluster(s)<br>"
            f"{eigengap_svg(c.eigenvalues, c.n_clusters)}</div>"
            f"<div>embedding, coloured by cluster<br>"
            f"{scatter_svg(c.embedding, c.clusters, names)}</div></div>"
            f"<h3>Clusters, most unlike the rest of the class first</h3>{cards}"
            f'<h3>Gallery (input, heatmap, overlay)</h3><div>show cluster: {buttons}</div>'
            f'<div id="{gallery_id}">{triples}</div></section>')


def _section_order(item: tuple[int, ClassSpray]) -> tuple[float, int]:
    """Classes that split first (most distinct cluster first), then the rest by label."""
    label, c = item
    return (-float(c.distinctness.max()) if c.n_clusters > 1 else 0.0, label)


def _class_metrics(c: ClassSpray, extra: Mapping[int, Mapping[str, str]]) -> dict[str, str]:
    out = {"samples": str(len(c.indices)), "clusters (eigengap)": str(c.n_clusters),
           "chosen eigengap": f"{c.gap:.3f}",
           "eigenvalues": " ".join(f"{v:.3f}" for v in c.eigenvalues)}
    out.update(extra.get(c.label, {}))
    return out


def _candidates_table(result: SprayResult, class_names: Mapping[int, str], top: int) -> str:
    rows = []
    for label, k, score in result.candidates()[:top]:
        c = result.classes[label]
        rows.append(f'<tr><td class="l"><a href="#class-{label}">'
                    f"{escape(class_names.get(label, str(label)))}</a></td>"
                    f'<td><span class="badge" style="background:{cluster_colour(k)}">{k}'
                    f"</span></td><td>{int(c.sizes[k])} / {len(c.indices)}</td>"
                    f"<td>{score:.2f}</td><td>{c.conductance[k]:.2f}</td>"
                    f"<td>{c.gap:.3f}</td></tr>")
    if not rows:
        return "<p>No class splits into more than one cluster.</p>"
    return ('<table><tr><th class="l">class</th><th>cluster</th><th>size</th>'
            "<th>distinctness</th><th>conductance</th><th>class eigengap</th></tr>"
            + "".join(rows) + "</table>")


def write_report(out: str | Path, result: SprayResult, samples: Samples, *,
                 class_names: Mapping[int, str] | None = None,
                 title: str = "relprop audit: Spectral Relevance Analysis",
                 summary: Mapping[str, Any] | None = None,
                 class_metrics: Mapping[int, Mapping[str, str]] | None = None,
                 per_class: int = 24, top: int = 10) -> Path:
    """Write the report of ``result`` to the folder ``out``; returns ``out/index.html``.

    Args:
        samples: names, heatmaps and input pictures by input row (the rows ``result`` refers
            to).
        class_names: a name per label (default: the label).
        summary: key → value lines at the top (the run's model, data, settings ...).
        class_metrics: per label, extra key → value lines of its table.
        per_class: gallery size per class. top: rows of the candidates table.
    """
    out = Path(out)
    names = dict(class_names or {})
    w = _Writer(out)
    head_rows = "".join(f'<tr><td class="l">{escape(str(k))}</td><td class="l">'
                        f"{escape(str(v))}</td></tr>" for k, v in (summary or {}).items())
    sections = "".join(
        _class_section(w, samples, c, f"class {names.get(label, str(label))} ({label})",
                       _class_metrics(c, class_metrics or {}), per_class)
        for label, c in sorted(result.classes.items(), key=_section_order))
    skipped = "".join(f"<li>class {escape(names.get(k, str(k)))}: {escape(v)}</li>"
                      for k, v in result.skipped.items())
    settings = escape(json.dumps(result.settings, default=str))
    html = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{escape(title)}</title><style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"
            f"<table>{head_rows}</table>"
            f'<p class="note">SpRAy settings: {settings}. Heatmaps: red for the explained class, '
            "blue against it, each scaled to its own largest |R|.</p>"
            "<h2>Candidates for a Clever Hans strategy</h2><p class='note'>Clusters whose "
            "heatmaps are unlike the rest of their class (distinctness: how far the other "
            "members lie from the cluster's mean, relative to its own spread; conductance: "
            "the share of its k-NN graph edges that leave it). Look at their prototypes.</p>"
            f"{_candidates_table(result, names, top)}"
            + (f"<p>Not analysed:</p><ul>{skipped}</ul>" if skipped else "")
            + f"{sections}<script>{_SCRIPT}</script></body></html>")
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
