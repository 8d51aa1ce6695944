"""The audit report's HTML (relprop.audit.report), without a browser: complete and offline."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import torch

from relprop.audit import TensorSamples, spray, write_report
from relprop.audit.svg import eigengap_svg, scatter_svg
from tests.test_report_browser import two_strategies


class Tags(HTMLParser):
    """Every start tag with its attributes, and whether open/close tags balance."""

    VOID = {"meta", "img", "br", "input", "link", "rect", "circle", "line", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def parse(path: Path) -> Tags:
    tags = Tags()
    tags.feed(path.read_text(encoding="utf-8"))
    assert tags.stack == []
    return tags


def test_report_is_complete_and_offline(tmp_path: Path) -> None:
    maps, labels, images = two_strategies()
    result = spray(maps, labels, embedding="spectral")
    names = [f"img/{i}<b>&.png" for i in range(len(maps))]  # names are escaped
    index = write_report(tmp_path, result, TensorSamples(maps, images, names),
                         class_names={0: "zero", 1: "one"}, per_class=6)
    tags = parse(index)
    sources = [a["src"] for t, a in tags.tags if t == "img"]
    assert sources and all(s is not None and (tmp_path / s).is_file() for s in sources)
    html = index.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing fetched
    assert "<b>&" not in html and "&lt;b&gt;&amp;" in html
    assert [a.get("id") for t, a in tags.tags if t == "section"] == ["class-0", "class-1"]
    zero = result.classes[0]
    assert zero.n_clusters == 2 and result.classes[1].n_clusters == 1
    # per cluster a prototype, per class one eigengap plot and one scatter
    assert sum("prototype" in (a.get("alt") or "") for t, a in tags.tags if t == "img") == 3
    assert html.count("<svg") == 4
    # every input/heatmap/overlay triple carries its cluster (the gallery filter uses it)
    triples = [a for t, a in tags.tags if t == "div" and a.get("class") == "triple"]
    assert all(a.get("data-cluster") is not None for a in triples)


def test_report_without_pictures_shows_heatmaps_only(tmp_path: Path) -> None:
    maps, labels, _ = two_strategies()
    result = spray(maps, labels, embedding="spectral")
    index = write_report(tmp_path, result, TensorSamples(maps), per_class=4)
    alts = [a.get("alt") for t, a in parse(index).tags if t == "img"]
    assert "heatmap" in alts and "input" not in alts and "overlay" not in alts


def test_svg_charts() -> None:
    values = np.array([0.0, 0.01, 0.4, 0.5])
    svg = eigengap_svg(values, 2)
    assert svg.startswith("<svg") and svg.count("<circle") == 4 and "#e15759" in svg
    points = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]])
    svg = scatter_svg(points, np.array([0, 1, 1]), ["a", "b", "<c>"])
    assert svg.count("<circle") == 3 and "&lt;c&gt;" in svg
    coords = [tuple(map(float, m)) for m in re.findall(r'cx="([\d.]+)" cy="([\d.]+)"', svg)]
    assert all(0 <= x <= 320 and 0 <= y <= 320 for x, y in coords)
    assert scatter_svg(np.zeros((0, 2)), np.zeros(0), []).startswith("<svg")


def test_tensor_samples_accepts_channel_maps() -> None:
    maps = torch.randn(3, 2, 5, 5)
    samples = TensorSamples(maps, torch.rand(3, 1, 5, 5))
    assert torch.allclose(samples.heatmap(1), maps[1].sum(0))
    image = samples.image(0)
    assert image is not None and image.shape == (5, 5, 3) and image.dtype == torch.uint8
    assert samples.name(2) == "#2"
