"""Tests of relprop.plot: heatmap grids with a colour bar and perturbation curves with CI bands.

Figures are written and decoded again with Pillow; pixel positions come from the figure's own
transforms, so the tests check where a map's pixels land, not only that a file exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import pytest
import torch
from torch import nn

import relprop
from relprop import viz
from relprop.metrics.perturbation import abpc, pixel_flipping, region_perturbation
from tests.test_viz import read_png

np = pytest.importorskip("numpy")
pytest.importorskip("matplotlib")
plot = pytest.importorskip("relprop.plot")

DPI = 100


def _png(fig: object, path: Path) -> torch.Tensor:
    """Save at ``DPI`` (the figure's own dpi, so display pixels are PNG pixels) and decode."""
    fig.set_dpi(DPI)  # type: ignore[attr-defined]
    plot.save(fig, path, dpi=DPI)
    return read_png(path)[..., :3].to(torch.int32)


def _pixel(fig: object, ax: object, col: float, row: float) -> tuple[int, int]:
    """PNG (row, column) of data point (x=col, y=row) of an imshow in ``ax``."""
    fig.canvas.draw()  # type: ignore[attr-defined]
    x, y = ax.transData.transform((col, row))  # type: ignore[attr-defined]
    height = fig.get_size_inches()[1] * DPI  # type: ignore[attr-defined]
    return int(round(height - y)), int(round(x))


def _is_red(p: torch.Tensor) -> bool:
    return bool(p[0] > 200 and p[1] < 60 and p[2] < 60)


def _is_blue(p: torch.Tensor) -> bool:
    return bool(p[2] > 200 and p[0] < 60 and p[1] < 60)


def _synthetic() -> torch.Tensor:
    r = torch.zeros(2, 1, 6, 6)
    r[:, 0, 1, 4] = 3.0  # known positive pixel: row 1, column 4
    r[:, 0, 4, 0] = -3.0  # known negative pixel: row 4, column 0
    return r


# ---------------------------------------------------------------- heatmaps


def test_heatmaps_pixels_size_and_colourbar(tmp_path: Path) -> None:
    r = _synthetic()
    fig = plot.heatmaps({"LRP-ε": r, "flipped": -r}, images=torch.rand(2, 1, 6, 6))
    image = _png(fig, tmp_path / "maps.png")
    width, height = fig.get_size_inches() * DPI
    assert image.shape == (round(height), round(width), 3)
    # 2 rows x 3 columns (input, two methods), then the colour bar
    assert len(fig.axes) == 7
    for ax in fig.axes[1:3] + fig.axes[4:6]:
        flipped = ax in (fig.axes[2], fig.axes[5])
        pos, neg = image[_pixel(fig, ax, 4, 1)], image[_pixel(fig, ax, 0, 4)]
        assert (_is_blue(pos) and _is_red(neg)) if flipped else (_is_red(pos) and _is_blue(neg))
        assert image[_pixel(fig, ax, 2, 2)].tolist() == [255, 255, 255]  # zero: white
    # the colour bar runs blue -> white -> red, left to right, through its middle row
    bar = fig.axes[-1]
    (x0, y0), (x1, y1) = bar.get_window_extent().get_points()
    row = int(round(height - (y0 + y1) / 2))
    line = image[row, int(x0) + 3:int(x1) - 3]
    assert _is_blue(line[0]) and _is_red(line[-1])
    assert (line[len(line) // 2] > 245).all()  # white in the middle
    redness = line[:, 0] - line[:, 2]
    assert (redness.diff() >= -2).all() and redness[0] < -250 and redness[-1] > 250
    assert [t.get_text() for t in bar.get_xticklabels()] == ["−max|R|", "0", "+max|R|"]
    assert "max|R|" in bar.get_xlabel()


def test_heatmaps_titles_rows_and_annotations() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 36, 4)).eval()
    x = torch.rand(3, 1, 6, 6)
    e0 = relprop.explain(model, x, target=torch.tensor([2, 0, 3]))
    e1 = relprop.explain(model, x, target=torch.tensor([2, 0, 3]),
                         composite=relprop.composites.uniform(relprop.rules.Zero()))
    fig = plot.heatmaps([e0, e1], images=x, annotate=True, suptitle="three digits")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["input", e0.method, e1.method]
    assert all(ax.get_title() == "" for ax in fig.axes[3:9])  # titles on the first row only
    assert [fig.axes[3 * i].get_ylabel() for i in range(3)] == ["class 2", "class 0", "class 3"]
    r = e0.relevance[1].sum()
    assert fig.axes[4].get_xlabel().startswith(f"ΣR {float(r):.3g}")
    assert fig.get_suptitle() == "three digits"
    fig = plot.heatmaps({"a": e0.relevance}, titles=["mine"], row_titles=["x", "y", "z"])
    assert fig.axes[0].get_title() == "mine" and fig.axes[2].get_ylabel() == "z"
    contrast = relprop.explain(model, x, target=relprop.targets.Contrast(1, against=2))
    fig = plot.heatmaps(contrast, colorbar=False)
    assert fig.axes[0].get_ylabel() == "class 1 vs 2" and len(fig.axes) == 3


def test_heatmaps_shared_scale_uses_one_divisor(tmp_path: Path) -> None:
    r = _synthetic()
    r[1] *= 0.5  # the second row is half as strong: lighter under a shared scale
    fig = plot.heatmaps(r, shared_scale=True)
    image = _png(fig, tmp_path / "shared.png")
    strong, weak = image[_pixel(fig, fig.axes[0], 4, 1)], image[_pixel(fig, fig.axes[1], 4, 1)]
    assert _is_red(strong) and not _is_red(weak) and weak[0] > 240 and 100 < weak[1] < 160
    labels = [t.get_text() for t in fig.axes[-1].get_xticklabels()]
    assert labels == ["-3", "0", "3"]


def test_heatmaps_rejects_mismatches() -> None:
    r = _synthetic()
    with pytest.raises(ValueError, match="same number"):
        plot.heatmaps([r, r[:1]])
    with pytest.raises(ValueError, match="images"):
        plot.heatmaps(r, images=torch.rand(3, 1, 6, 6))
    with pytest.raises(ValueError, match="titles"):
        plot.heatmaps([r, r], titles=["one"])
    with pytest.raises(TypeError):
        plot.heatmaps(42)


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"),
                                          (".svg", b"<?xml")])
def test_save_formats(tmp_path: Path, suffix: str, magic: bytes) -> None:
    path = tmp_path / f"maps{suffix}"
    plot.heatmaps(_synthetic(), path=path)
    assert path.read_bytes().startswith(magic)
    if suffix == ".svg":
        assert b"<svg" in path.read_bytes()[:2000]


def test_save_refuses_other_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.png"):
        plot.save(plot.heatmaps(_synthetic()), tmp_path / "maps.jpg")


def test_colormap_matches_viz() -> None:
    cm = plot.colormap("bwr")
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert cm(v)[:3] == pytest.approx(viz.bwr(torch.tensor(v)).tolist(), abs=1 / 255)


# ---------------------------------------------------------------- curves


def _results() -> tuple[object, object, object]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 64, 3)).eval()
    x = torch.rand(12, 1, 8, 8)
    rel = relprop.explain(model, x).relevance
    kw = {"region_size": 2, "steps": 6}
    return (region_perturbation(model, x, rel, order="morf", **kw),
            region_perturbation(model, x, rel, order="lerf", **kw),
            region_perturbation(model, x, None, order="random", **kw))


def test_normal_band_matches_numpy() -> None:
    c = np.random.default_rng(3).normal(size=(25, 7)).cumsum(axis=1)
    mean, low, high = plot.mean_band(torch.from_numpy(c))
    z = NormalDist().inv_cdf(0.975)
    half = z * c.std(axis=0, ddof=1) / np.sqrt(c.shape[0])
    np.testing.assert_allclose(mean, c.mean(axis=0))
    np.testing.assert_allclose(low, c.mean(axis=0) - half)
    np.testing.assert_allclose(high, c.mean(axis=0) + half)
    assert z == pytest.approx(1.959964, abs=1e-6)


def test_bootstrap_band_matches_numpy_and_the_normal_one() -> None:
    c = np.random.default_rng(4).normal(size=(200, 5))
    mean, low, high = plot.mean_band(c, "bootstrap", n_boot=500, seed=7)
    rng = np.random.default_rng(7)  # the documented resampling, done by hand
    counts = rng.multinomial(200, np.full(200, 1 / 200), size=500)
    means = np.stack([np.repeat(c, k, axis=0).mean(axis=0) for k in counts])
    np.testing.assert_allclose(low, np.quantile(means, 0.025, axis=0))
    np.testing.assert_allclose(high, np.quantile(means, 0.975, axis=0))
    assert ((low < mean) & (mean < high)).all()
    _, nlow, nhigh = plot.mean_band(c)  # 200 samples: close to the normal interval
    np.testing.assert_allclose(high - low, nhigh - nlow, rtol=0.2)


def test_band_edge_cases() -> None:
    mean, low, high = plot.mean_band(torch.ones(1, 4))
    assert (mean == 1).all() and np.isnan(low).all() and np.isnan(high).all()
    with pytest.raises(ValueError):
        plot.mean_band(torch.ones(3, 4), "jackknife")
    with pytest.raises(ValueError):
        plot.mean_band(torch.ones(3, 4), level=1.5)


@pytest.mark.parametrize("ci", ["normal", "bootstrap"])
def test_curves_band_contains_the_mean_and_is_what_is_drawn(ci: str) -> None:
    morf, lerf, rand = _results()
    fig = plot.curves({"LRP": (morf, lerf), "random": rand}, ci=ci, n_boot=300)
    ax = fig.axes[0]
    lines = [ln for ln in ax.lines if len(ln.get_xdata())]
    assert len(lines) == 3 and len(ax.collections) == 3
    for result, line, band in zip((morf, lerf, rand), lines, ax.collections):
        mean, low, high = plot.mean_band(result.curves, ci, n_boot=300)
        np.testing.assert_allclose(line.get_ydata(), result.curves.mean(0).numpy())
        np.testing.assert_allclose(line.get_ydata(), mean)
        assert ((low <= mean + 1e-12) & (mean <= high + 1e-12)).all()
        assert (high - low > 0).any()
        verts = band.get_paths()[0].vertices
        drawn = np.concatenate([low, high])
        assert np.isclose(verts[:, 1][:, None], drawn[None]).any(axis=0).all()
        # x: share of the regions replaced, 0 to 6/16
        np.testing.assert_allclose(line.get_xdata(), np.arange(7) / 16)
    assert ax.get_xlabel() == "share of the regions replaced"
    assert ax.get_ylabel() == "logit of the explained class"
    assert "95% CI" in ax.get_title() and "region perturbation" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith(f"LRP MoRF (AOPC {float(morf.aopc):.3g}")
    assert legend[1].startswith("LRP LeRF") and legend[3].startswith("random (AOPC")
    assert legend[2].startswith(f"LRP ABPC {float(abpc(morf, lerf).abpc):.3g}")


def test_curves_of_tensors_pixel_flipping_and_errors(tmp_path: Path) -> None:
    c = torch.linspace(1, 0, 5).repeat(4, 1) + 0.1 * torch.randn(4, 5)
    fig = plot.curves(c, labels=["deletion"], x="step", path=tmp_path / "c.svg")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "perturbation step" and ax.get_ylabel() == "score"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["deletion"]
    assert (tmp_path / "c.svg").is_file()
    morf, lerf, _ = _results()
    with pytest.raises(TypeError, match="pair"):
        plot.curves(abpc(morf, lerf))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x = torch.rand(5, 1, 4, 4)
    flips = pixel_flipping(model, x, torch.randn(5, 1, 4, 4), pixels_per_step=4)
    ax = plot.curves(flips).axes[0]
    assert ax.get_xlabel() == "share of the pixels replaced"
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0, 0.25, 0.5, 0.75, 1.0])


# ---------------------------------------------------------------- optional dependency


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(viz.MissingExtraError, match=r"pip install 'relprop\[plot\]'") as err:
        plot.heatmaps(_synthetic())
    assert "matplotlib" in str(err.value) and isinstance(err.value, ImportError)
    with pytest.raises(ImportError, match=r"relprop\[plot\]"):
        plot.curves(torch.ones(2, 3))


def test_matplotlib_is_imported_lazily_and_pyplot_never() -> None:
    code = ("import sys, torch, relprop, relprop.plot, relprop.viz\n"
            "assert 'matplotlib' not in sys.modules\n"
            "from relprop import plot\n"
            "plot.curves(torch.rand(3, 4)); plot.heatmaps(torch.randn(2, 1, 4, 4))\n"
            "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
