"""Figures with matplotlib: heatmap grids with a colour bar, and metric curves with CI bands.

Needs the optional extra ``pip install 'relprop[plot]'`` (Pillow and matplotlib); matplotlib
is imported when a function here is called, not when :mod:`relprop` is. Figures are made on
the Agg canvas, without :mod:`matplotlib.pyplot`: nothing opens a window or changes the
backend of the caller's pyplot, and every function returns the
:class:`matplotlib.figure.Figure` (save it with :func:`save` or ``fig.savefig``)::

    from relprop import plot
    fig = plot.heatmaps({"LRP-ε": expl_eps, "LRP-γ": expl_gamma}, images=x)
    plot.save(fig, "maps.pdf")                                   # .png, .pdf or .svg
    fig = plot.curves({"LRP": (morf, lerf), "random": rand})     # PerturbationResults
    plot.save(fig, "aopc.png")

Heatmaps use the colour maps of :mod:`relprop.viz` (blue = against the explained class,
white = none, red = for it) with the same symmetric scaling, so a map looks as it does in
:func:`relprop.viz.heatmap`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from . import viz

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = ["FORMATS", "colormap", "curves", "figure", "heatmaps", "mean_band", "save"]

#: The file types :func:`save` writes, by suffix.
FORMATS = (".png", ".pdf", ".svg")

CI = Literal["normal", "bootstrap"]


def _matplotlib(purpose: str = "relprop.plot") -> Any:
    """Import matplotlib (or raise :class:`relprop.viz.MissingExtraError` naming the extra)."""
    viz._require("PIL.Image", purpose)  # matplotlib needs it too; name the extra either way
    return viz._require("matplotlib", purpose)


def figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    """A new matplotlib :class:`~matplotlib.figure.Figure` of ``width`` × ``height`` inches on
    the Agg canvas (no pyplot, no window); ``constrained`` layout by default."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path, *, dpi: float = 150) -> Path:
    """Write ``fig`` to ``path`` as PNG, PDF or SVG (chosen by the suffix); returns the path."""
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise ValueError(f"save figures as {', '.join(FORMATS)}; got {p.name!r}")
    fig.savefig(p, dpi=dpi, format=p.suffix.lower()[1:], facecolor="white")
    return p


def colormap(cmap: str | viz.ColorMap = "bwr") -> Colormap:
    """A :mod:`relprop.viz` colour map (name or :class:`~relprop.viz.ColorMap`) as a matplotlib
    colour map with the same nodes."""
    _matplotlib()
    from matplotlib.colors import LinearSegmentedColormap

    c = viz.get_cmap(cmap)
    nodes = [(float(p), tuple(float(v) for v in rgb))
             for p, rgb in zip(c.positions.tolist(), c.colors.tolist())]
    # 257 entries: one lies exactly on 0.5, so zero relevance is the map's own centre (white)
    return LinearSegmentedColormap.from_list(c.name, nodes, N=257)


# -- heatmap grids ---------------------------------------------------------------------------


def _is_explanation(x: object) -> bool:
    return hasattr(x, "relevance") and hasattr(x, "method")


def _as_batch(maps: Any) -> Tensor:
    """Relevance of an Explanation or a tensor as ``(N, H, W)`` (channels summed)."""
    r = maps.relevance if _is_explanation(maps) else maps
    if not isinstance(r, Tensor):
        raise TypeError(f"expected an Explanation or a relevance tensor, got {type(r).__name__}")
    r = r.detach().to("cpu", torch.float32)
    if r.dim() == 2:  # (H, W): one map
        return r[None]
    if r.dim() == 3:  # (C, H, W): one sample, as in viz.heatmap
        return viz.channel_sum(r)[None]
    if r.dim() == 4:  # (N, C, H, W)
        return viz.channel_sum(r)
    raise ValueError(f"expected relevance (H, W), (C, H, W) or (N, C, H, W), got "
                     f"{tuple(r.shape)}; token relevance (N, T) has no picture here")


def _columns(maps: Any, titles: Sequence[str] | None) -> tuple[list[str], list[Any]]:
    if isinstance(maps, Mapping):
        names, items = [str(k) for k in maps], list(maps.values())
    elif isinstance(maps, Tensor) or _is_explanation(maps):
        names, items = [""], [maps]
    elif isinstance(maps, Sequence) and not isinstance(maps, str):
        names, items = ["" for _ in maps], list(maps)
    else:
        raise TypeError("heatmaps takes an Explanation, a relevance tensor, or a list or dict of "
                        f"them (one column each), not {type(maps).__name__}")
    if not items:
        raise ValueError("heatmaps needs at least one map")
    names = [n or (str(it.method) if _is_explanation(it) else
                   "relevance" if len(items) == 1 else f"map {j + 1}")
             for j, (n, it) in enumerate(zip(names, items))]
    if titles is not None:
        if len(titles) != len(items):
            raise ValueError(f"{len(titles)} titles for {len(items)} columns")
        names = [str(t) for t in titles]
    return names, items


def _explained_classes(items: Sequence[Any], n: int) -> list[str] | None:
    """"class c" (or "c vs c'") per row, from the first Explanation with a class target."""
    for it in items:
        target = getattr(it, "target", None)
        classes = getattr(target, "classes", None)
        if classes is None:
            continue
        c = torch.as_tensor(classes).reshape(-1).tolist()
        against = getattr(target, "against", None)
        a = torch.as_tensor(against).reshape(-1).tolist() if against is not None else None
        c = c * n if len(c) == 1 else c
        if a is not None:
            a = a * n if len(a) == 1 else a
            return [f"class {ci} vs {ai}" for ci, ai in zip(c, a)]
        return [f"class {ci}" for ci in c]
    return None


def _image_rgb(images: Any, i: int, low: float, high: float) -> Tensor:
    im = images[i]
    return viz.to_rgb(im, low=low, high=high)


def heatmaps(
    maps: Any,
    images: Tensor | Sequence[Tensor] | None = None,
    titles: Sequence[str] | None = None,
    *,
    row_titles: Sequence[str] | None = None,
    cmap: str | viz.ColorMap = "bwr",
    percentile: float | None = None,
    shared_scale: bool = False,
    colorbar: bool = True,
    annotate: bool = False,
    image_title: str = "input",
    image_range: tuple[float, float] = (0.0, 1.0),
    cell: float = 1.6,
    suptitle: str | None = None,
    path: str | Path | None = None,
    dpi: float = 150,
) -> Figure:
    """A grid of heatmaps: one row per sample, one column per method, with a colour bar.

    Args:
        maps: an :class:`~relprop.Explanation` or a relevance tensor (one column), or a list
            or dict (``{"LRP-ε": expl, ...}``: the keys title the columns) of them. A tensor
            is ``(N, C, H, W)`` (channels are summed), ``(C, H, W)`` or ``(H, W)`` (one row).
            Every column has the same number of samples.
        images: the inputs, ``(N, C, H, W)`` / ``(N, H, W)`` or one image per row, shown as the
            first column (``image_title``); floats are mapped from ``image_range`` to 0..255.
        titles: column titles; default the dict keys, else ``Explanation.method``.
        row_titles: one per row; default the explained class (``"class 3"``, or
            ``"class 3 vs 5"`` for a :class:`~relprop.targets.Contrast`) when a column is an
            Explanation with a class target.
        cmap: a :mod:`relprop.viz` colour map (name or object).
        percentile: scale each map by this percentile of ``|R|`` instead of its maximum.
        shared_scale: one scale for every map (the colour bar then shows relevance values);
            default each map is scaled to its own largest ``|R|`` (as :func:`viz.heatmap`), the
            colour bar runs from ``-max|R|`` to ``+max|R|``.
        colorbar: draw the colour bar.
        annotate: write ``ΣR`` and ``max|R|`` under each map.
        cell: side of one map in inches.
        suptitle: a title over the grid.
        path: also save the figure there (:func:`save`: ``.png``, ``.pdf``, ``.svg``).

    Returns:
        The figure; ``fig.axes`` holds the cells row by row (the input column first), then the
        colour bar.
    """
    names, items = _columns(maps, titles)
    batches = [_as_batch(it) for it in items]
    n = batches[0].shape[0]
    if any(b.shape[0] != n for b in batches):
        raise ValueError(f"every column needs the same number of maps, got "
                         f"{[b.shape[0] for b in batches]}")
    if images is not None and len(images) != n:
        raise ValueError(f"{len(images)} images for {n} rows of maps")
    if row_titles is None:
        row_titles = _explained_classes(items, n)
    elif len(row_titles) != n:
        raise ValueError(f"{len(row_titles)} row titles for {n} rows")
    scale = 1.0
    if shared_scale:  # one divisor for all maps: max |R| (or its percentile) over all of them
        everything = torch.cat([b.reshape(-1) for b in batches]).abs().nan_to_num(0.0, 0.0, 0.0)
        k = everything.numel() if percentile is None else max(
            1, math.ceil(percentile / 100.0 * everything.numel()))
        scale = float(everything.kthvalue(k).values) or 1.0
    ncol = len(batches) + (images is not None)
    fig = figure(max(cell * ncol + (0.5 if row_titles else 0.2), 4.0 if colorbar else 0.0),
                 (0.92 * cell + (0.22 if annotate else 0.0)) * n + 0.35
                 + (0.75 if colorbar else 0.0) + (0.35 if suptitle else 0.0))
    grid = fig.add_gridspec(n, ncol)
    cm = colormap(cmap)
    for i in range(n):
        for j in range(ncol):
            ax: Axes = fig.add_subplot(grid[i, j])
            ax.set_xticks([])
            ax.set_yticks([])
            m = j - (images is not None)
            if m < 0:
                assert images is not None
                ax.imshow(_image_rgb(images, i, *image_range).numpy(), interpolation="nearest")
                title = image_title
            else:
                r = batches[m][i]
                if shared_scale:
                    shown = (r / scale).clamp(-1.0, 1.0)
                else:
                    shown = viz.normalize_symmetric(r, percentile=percentile) * 2.0 - 1.0
                ax.imshow(shown.numpy(), cmap=cm, vmin=-1.0, vmax=1.0, interpolation="nearest")
                title = names[m]
                if annotate:
                    ax.set_xlabel(f"ΣR {float(r.sum()):.3g}   max|R| {float(r.abs().max()):.3g}",
                                  fontsize="small")
            if i == 0:
                ax.set_title(title)
            if j == 0 and row_titles:
                ax.set_ylabel(row_titles[i])
    if colorbar:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(Normalize(-1.0, 1.0), cm)
        bar = fig.colorbar(mappable, ax=fig.axes, orientation="horizontal", shrink=0.9,
                           aspect=35, fraction=0.25 / max(n, 1))
        if shared_scale:
            bar.set_ticks([-1.0, 0.0, 1.0], labels=[f"{-scale:.3g}", "0", f"{scale:.3g}"])
            bar.set_label("relevance: blue against the class, red for it", fontsize="small")
        else:
            bar.set_ticks([-1.0, 0.0, 1.0], labels=["−max|R|", "0", "+max|R|"])
            bar.set_label("relevance / the map's max|R|: blue against, red for the class",
                          fontsize="small")
    if suptitle:
        fig.suptitle(suptitle)
    if path is not None:
        save(fig, path, dpi=dpi)
    return fig


# -- metric curves ---------------------------------------------------------------------------


def mean_band(
    curves: Tensor | Any,
    ci: CI = "normal",
    level: float = 0.95,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean curve over samples and a ``level`` confidence band for it, pointwise.

    Args:
        curves: ``(N, L+1)``, one row per sample (a tensor or anything numpy takes).
        ci: ``"normal"``: ``mean ± z · s / √N`` with ``s`` the sample standard deviation
            (``ddof=1``) and ``z`` the normal quantile (1.96 for 95%), as in the ``repr`` of
            the metric results; ``"bootstrap"``: the percentile bootstrap of the mean,
            ``n_boot`` resamples of the N rows with replacement, drawn as multinomial counts
            ``numpy.random.default_rng(seed).multinomial(N, [1/N] * N, size=n_boot)``.
        level: the coverage, in (0, 1).

    Returns:
        ``(mean, low, high)``, each ``(L+1,)`` float64; the band is ``NaN`` for ``N < 2``.
    """
    import numpy as np

    c = curves.detach().cpu().to(torch.float64).numpy() if isinstance(curves, Tensor) \
        else np.asarray(curves, dtype=np.float64)
    if c.ndim == 1:
        c = c[None]
    if c.ndim != 2 or c.shape[0] < 1:
        raise ValueError(f"curves must be (samples, steps), got shape {c.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    n = c.shape[0]
    mean = c.mean(axis=0)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan.copy()
    if ci == "normal":
        half = NormalDist().inv_cdf(0.5 + level / 2) * c.std(axis=0, ddof=1) / math.sqrt(n)
        return mean, mean - half, mean + half
    if ci == "bootstrap":
        if n_boot < 2:
            raise ValueError(f"n_boot must be at least 2, got {n_boot}")
        counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)
        means = counts @ c / n  # (n_boot, L+1)
        low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return mean, low, high
    raise ValueError(f"ci must be 'normal' or 'bootstrap', not {ci!r}")


_ORDER_NAMES = {"morf": "MoRF", "lerf": "LeRF", "random": "random"}
_ORDER_STYLE = {"morf": "-", "lerf": "--", "random": ":"}
_SCORES = {"logit": "logit of the explained class",
           "probability": "probability of the explained class",
           "output": "model output"}


def _items(results: Any, labels: Sequence[str] | None) -> list[tuple[str, list[Any]]]:
    """``[(name, [PerturbationResult or tensor, ...]), ...]``: one colour each."""
    from .metrics.perturbation import ABPCResult

    def group(x: Any) -> list[Any]:
        if isinstance(x, ABPCResult):
            raise TypeError("an ABPCResult holds one number per sample, no curve: pass its two "
                            "PerturbationResults as a pair, (morf, lerf), which plots both "
                            "curves and their ABPC")
        if isinstance(x, tuple | list):
            return [y for y in x for y in group(y)]
        if not (isinstance(x, Tensor) or hasattr(x, "curves")):
            raise TypeError(f"expected a PerturbationResult or an (N, L+1) tensor of curves, "
                            f"got {type(x).__name__}")
        return [x]

    if isinstance(results, Mapping):
        out = [(str(k), group(v)) for k, v in results.items()]
    elif isinstance(results, tuple | list):
        out = [("", group(v)) for v in results]
    else:
        out = [("", group(results))]
    if labels is not None:
        if len(labels) != len(out):
            raise ValueError(f"{len(labels)} labels for {len(out)} results")
        out = [(str(lab), g) for lab, (_, g) in zip(labels, out)]
    return out


def _x_axis(res: Any, steps: int, x: str) -> tuple[np.ndarray, str]:
    import numpy as np

    proto: dict[str, Any] = dict(getattr(res, "protocol", {}) or {})
    if x == "fraction" and "regions" in proto:
        per_step = int(proto.get("pixels_per_step", 1))
        regions = int(proto["regions"])
        xs = np.minimum(np.arange(steps) * per_step, regions) / regions
        what = "pixels" if proto.get("metric") == "pixel_flipping" else "regions"
        return xs, f"share of the {what} replaced"
    return np.arange(steps, dtype=np.float64), ("regions replaced" if "regions" in proto
                                                 else "perturbation step")


def curves(
    results: Any,
    *,
    labels: Sequence[str] | None = None,
    ci: CI = "normal",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    x: Literal["fraction", "step"] = "fraction",
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    ax: Axes | None = None,
    size: tuple[float, float] = (6.4, 4.2),
    path: str | Path | None = None,
    dpi: float = 150,
) -> Figure:
    """Perturbation curves (AOPC, pixel flipping, region perturbation, deletion): the mean
    over samples and a confidence band per method, with labelled axes and a legend.

    Args:
        results: a :class:`~relprop.metrics.PerturbationResult` or a tensor ``(N, L+1)`` of
            curves (one row per sample), a dict ``{method: result}`` (the keys label the
            legend) or a list of them. A pair ``(morf, lerf)`` under one name is drawn in one
            colour, MoRF solid, LeRF dashed (random dotted), and its ABPC goes in the legend.
        labels: legend names for a list (default the metric and order).
        ci: ``"normal"`` (default, the interval of the results' ``repr``) or ``"bootstrap"``;
            see :func:`mean_band`.
        level: the band's coverage (0.95).
        x: ``"fraction"``: the share of the image replaced (for PerturbationResults);
            ``"step"``: the step index.
        ax: draw into these axes (and return their figure) instead of a new figure.
        path: also save the figure there (:func:`save`).

    The legend gives each curve's AOPC (``mean of f(x⁰) − f(x^k)``) with the same kind of
    interval; the band of each curve is the shaded area around it.
    """
    groups = _items(results, labels)
    if ax is None:
        fig = figure(*size)
        ax = fig.add_subplot()
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    colours = [f"C{k}" for k in range(10)]
    xlab = xlabel
    ylab = ylabel
    metric = None
    for k, (name, group) in enumerate(groups):
        colour = colours[k % len(colours)]
        for res in group:
            c = res if isinstance(res, Tensor) else res.curves
            order = None if isinstance(res, Tensor) else str(res.order)
            mean, low, high = mean_band(c, ci, level, n_boot=n_boot, seed=seed)
            xs, auto_x = _x_axis(res, mean.shape[0], x)
            label = name or (_ORDER_NAMES.get(order or "", "") if order else f"curves {k + 1}")
            if order and name and order not in name.lower():
                label = f"{name} {_ORDER_NAMES.get(order, order)}"
            if not isinstance(res, Tensor):
                a, lo, hi = mean_band(res.aopc_per_sample[:, None], ci, level,
                                      n_boot=n_boot, seed=seed)
                band = "" if math.isnan(lo[0]) else f" [{lo[0]:.3g}, {hi[0]:.3g}]"
                label += f" (AOPC {a[0]:.3g}{band})"
                metric = metric or res.protocol.get("metric")
                ylab = ylab or _SCORES.get(str(res.protocol.get("score")), "score")
            ax.plot(xs, mean, _ORDER_STYLE.get(order or "", "-"), color=colour, label=label)
            ax.fill_between(xs, low, high, color=colour, alpha=0.2, linewidth=0)
            xlab = xlab or auto_x
        morf = [r for r in group if getattr(r, "order", None) == "morf"]
        lerf = [r for r in group if getattr(r, "order", None) == "lerf"]
        if len(morf) == 1 and len(lerf) == 1:
            from .metrics.perturbation import abpc

            per = abpc(morf[0], lerf[0]).per_sample
            a, lo, hi = mean_band(per[:, None], ci, level, n_boot=n_boot, seed=seed)
            band = "" if math.isnan(lo[0]) else f" [{lo[0]:.3g}, {hi[0]:.3g}]"
            ax.plot([], [], " ", label=f"{name} ABPC {a[0]:.3g}{band}".strip())
    ax.set_xlabel(xlab or "perturbation step")
    ax.set_ylabel(ylab or "score")
    pct = f"{100 * level:g}%"
    kind = "normal approximation" if ci == "normal" else f"bootstrap, {n_boot} resamples"
    ax.set_title(title if title is not None else
                 f"{(metric or 'perturbation').replace('_', ' ')}: mean and {pct} CI ({kind})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    if path is not None:
        save(fig, path, dpi=dpi)
    return fig
