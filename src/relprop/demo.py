"""A self-contained demo: a small CNN trained on 8x8 digits, explained with LRP.

The weights and a few test digits ship with the package (``relprop/data``; made by
``scripts/train_digits.py``), so the demo runs offline::

    from relprop.demo import run_demo
    png = run_demo(Path("demo-out"))      # or, from a shell: relprop demo --out demo-out

The PNG explains itself: one row per digit with its true, predicted and explained class and
the explained logit; the main column is what ``relprop.explain(model, x)`` gives by default
(:func:`relprop.composites.default`), and, for comparison, the columns of Fig. 10.4 of
Montavon et al. (2019), "Layer-wise relevance propagation: an overview": LRP-0, LRP-ε, LRP-γ
and their composite ``montavon2019``. Under every map: the sum of its relevance and the
largest ``|R|``, which sets its colour scale; a colour bar says what the colours mean, and a
footer why the sums are not the logits (what biases, the ε stabiliser and αβ absorbed).

The figure is drawn with matplotlib (:func:`plot_figure`) when it is installed
(``pip install 'relprop[plot]'``; ``make demo`` installs it); without it, with torch alone
(:func:`render_figure`, a 5x7 pixel font) and written with Pillow.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from . import composites, viz

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT",
    "DigitsCNN",
    "METHODS",
    "absorbed_shares",
    "explain_digits",
    "format_conservation",
    "load_digit_samples",
    "load_digits_cnn",
    "plot_figure",
    "render_figure",
    "run_demo",
]


class DigitsCNN(nn.Module):
    """Conv(1→16)-ReLU-Conv(16→32)-ReLU-MaxPool-Conv(32→32)-ReLU-Linear(512→64)-ReLU-Linear(64→10).

    Input: ``(N, 1, 8, 8)`` grey digits in ``[0, 1]`` (ink is 1). Output: 10 logits.
    """

    meta: dict[str, Any]  #: training metadata (test accuracy, ...) of the loaded weights

    def __init__(self) -> None:
        super().__init__()
        self.meta = {}
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _load_data(name: str) -> Any:
    with (resources.files("relprop") / "data" / name).open("rb") as f:
        return torch.load(f, weights_only=True)


def load_digits_cnn() -> DigitsCNN:
    """The shipped, trained :class:`DigitsCNN`, in eval mode (test accuracy in ``.meta``)."""
    blob = _load_data("digits_cnn.pt")
    model = DigitsCNN()
    model.load_state_dict(blob["state_dict"] if "state_dict" in blob else blob)
    model.meta = dict(blob.get("meta", {}))
    return model.eval()


def load_digit_samples() -> tuple[Tensor, Tensor]:
    """Shipped test digits (never trained on): images ``(N, 1, 8, 8)`` in [0, 1], labels ``(N,)``.

    The first ten are the digits 0..9 in order.
    """
    blob = _load_data("digits_samples.pt")
    return blob["images"], blob["labels"]


#: The name of the composite :func:`relprop.explain` uses by default: the demo's main column.
DEFAULT: str = composites.default().name


def _methods() -> list[tuple[str, Callable[[], Any]]]:
    from . import rules

    return [
        (DEFAULT, lambda: None),  # None: exactly what relprop.explain(model, x) does
        ("LRP-0", lambda: composites.uniform(rules.Zero())),
        ("LRP-ε", lambda: composites.uniform(rules.Epsilon(0.25, relative_to_std=True))),
        ("LRP-γ", lambda: composites.uniform(rules.Gamma(0.25))),
        ("montavon2019", lambda: composites.montavon2019(low=0.0, high=1.0)),
    ]


#: The column titles of the demo figure, in order: the default composite, then the comparisons.
METHODS: tuple[str, ...] = (DEFAULT, "LRP-0", "LRP-ε", "LRP-γ", "montavon2019")


def explain_digits(n: int = 6, target: str = "predicted") -> dict[str, Any]:
    """Explain the first ``n`` shipped digits with every method in :data:`METHODS`.

    Args:
        n: how many digits (1 to the number shipped).
        target: ``"predicted"`` (the model's class) or ``"true"`` (the label).

    Returns:
        A dict with ``images``, ``labels``, ``predictions``, ``targets`` (the explained
        classes), ``logits`` (N, 10), ``explained`` (N,: the explained logit), ``methods``,
        ``default`` (the name of the default composite, ``methods[0]``), ``relevance``
        (method name -> ``(N, 1, 8, 8)`` tensor) and ``absorbed`` (method name -> ``(N,)``:
        explained logit minus the sum of the input relevance, what the layers absorbed).
    """
    import relprop

    if target not in ("predicted", "true"):
        raise ValueError(f"target must be 'predicted' or 'true', not {target!r}")
    images, labels = load_digit_samples()
    if not 1 <= n <= len(labels):
        raise ValueError(f"n must lie in [1, {len(labels)}], got {n}")
    images, labels = images[:n], labels[:n]
    model = load_digits_cnn()
    with torch.no_grad():
        logits = model(images)
    predictions = logits.argmax(dim=1)
    targets = predictions if target == "predicted" else labels
    explained = logits.gather(1, targets[:, None])[:, 0]
    relevance: dict[str, Tensor] = {}
    absorbed: dict[str, Tensor] = {}
    for name, make in _methods():
        expl = relprop.explain(model, images, target=targets, composite=make())
        relevance[name] = expl.relevance.detach()
        absorbed[name] = explained - expl.relevance_sum().detach()
    return {
        "images": images,
        "labels": labels,
        "predictions": predictions,
        "targets": targets,
        "logits": logits,
        "explained": explained,
        "methods": list(relevance),
        "default": DEFAULT,
        "relevance": relevance,
        "absorbed": absorbed,
    }


def absorbed_shares(result: dict[str, Any]) -> dict[str, float]:
    """Per method, the mean over digits of ``(logit − Σ R) / logit``: the share of the
    explained logit that did not reach the pixels (negative: relevance was added)."""
    logit = result["logits"].gather(1, result["targets"][:, None])[:, 0]
    return {m: float(((logit - result["relevance"][m].sum(dim=(1, 2, 3))) / logit).mean())
            for m in result["methods"]}


def _why_not_conserved(result: dict[str, Any]) -> list[str]:
    shares = absorbed_shares(result)
    return [
        "why sum R differs from the logit: biases and the ε stabiliser absorb relevance on",
        "the way down, and alpha-beta rules (in the default) add some where a neuron has no",
        "negative input (the -beta share has nowhere to go). Absorbed share of the logit,",
        "mean over digits (negative = added): "
        + ", ".join(f"{m} {100 * v:.0f}%" for m, v in shares.items()),
    ]


def format_conservation(result: dict[str, Any]) -> str:
    """A table of ``sum_i R_i`` per digit and method next to the explained logit ``f_c(x)``,
    and why they differ.

    LRP conserves relevance up to what biases and the ε stabiliser absorb (and what αβ rules
    add where a neuron has no negative input), so the sums are close to the logits but not
    equal; the lines under the table give that share per method. ``*`` marks the default
    composite of :func:`relprop.explain`.
    """
    logit = result["logits"].gather(1, result["targets"][:, None])[:, 0]
    methods = result["methods"]
    default = result.get("default")
    names = [f"{m}*" if m == default else m for m in methods]
    widths = [max(9, len(m)) for m in names]
    lines = ["digit  class   logit  " + "  ".join(f"{m:>{w}}" for m, w in zip(names, widths))]
    for i in range(len(logit)):
        sums = "  ".join(f"{result['relevance'][m][i].sum().item():{w}.2f}"
                         for m, w in zip(methods, widths))
        label, target = int(result["labels"][i]), int(result["targets"][i])
        lines.append(f"{label:>5}  {target:>5}  {logit[i].item():6.2f}  {sums}")
    if default in methods:
        lines.append("* the default composite of relprop.explain")
    return "\n".join(lines + _why_not_conserved(result))


# -- the figure, with torch alone ----------------------------------------------------------

_WHITE: viz.RGB8 = (255, 255, 255)
_INK: viz.RGB8 = (0, 0, 0)
_GREY: viz.RGB8 = (110, 110, 110)


def _blank(height: int, width: int) -> Tensor:
    return torch.full((height, width, 3), 255, dtype=torch.uint8)


def _text(line: str, scale: int, color: viz.RGB8 = _INK) -> Tensor:
    return viz.text_image(line, scale, color, _WHITE)


def _stack(blocks: list[Tensor], gap: int, *, across: bool = False,
           align: str = "center") -> Tensor:
    """Blocks top to bottom (or left to right with ``across``), aligned ``"center"`` or
    ``"start"``, ``gap`` white pixels apart."""
    blocks = [b for b in blocks if b.numel()]
    if not blocks:
        return _blank(0, 0)
    axis = 1 if across else 0
    side = max(b.shape[1 - axis] for b in blocks)
    length = sum(b.shape[axis] for b in blocks) + gap * (len(blocks) - 1)
    out = _blank(side, length) if across else _blank(length, side)
    at = 0
    for b in blocks:
        off = (side - b.shape[1 - axis]) // 2 if align == "center" else 0
        if across:
            out[off:off + b.shape[0], at:at + b.shape[1]] = b
        else:
            out[at:at + b.shape[0], off:off + b.shape[1]] = b
        at += b.shape[axis] + gap
    return out


def _pad(block: Tensor, height: int, width: int, align: str = "center") -> Tensor:
    out = _blank(height, width)
    top = (height - block.shape[0]) // 2
    left = (width - block.shape[1]) // 2 if align == "center" else 0
    out[top:top + block.shape[0], left:left + block.shape[1]] = block
    return out


def _wrap(text: str, width: int, scale: int) -> list[str]:
    """Words into lines of at most ``width`` pixels of the 5x7 font at ``scale``."""
    chars = max(8, (width + scale) // (6 * scale))
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= chars:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _colour_bar(width: int, height: int, scale: int) -> Tensor:
    """The bwr scale from ``-max`` (blue, against) through 0 (white) to ``+max`` (red, for)."""
    ramp = viz.bwr(torch.linspace(0.0, 1.0, width))
    bar = (ramp * 255).round().to(torch.uint8)[None].expand(height, -1, -1).clone()
    bar[[0, -1]] = 0
    bar[:, [0, -1]] = 0
    bar[:, width // 2] = 0  # a tick at zero
    ticks = _blank(7 * scale, width)
    for label, where in (("-max", 0.0), ("0", 0.5), ("+max", 1.0)):
        t = _text(label, scale)
        left = min(max(0, round(where * width - t.shape[1] / 2)), width - t.shape[1])
        ticks[:, left:left + t.shape[1]] = t
    words = _blank(7 * scale, width)
    against = _text("against the class", scale, (0, 0, 200))
    evidence = _text("for the class", scale, (200, 0, 0))
    words[:, :against.shape[1]] = against[:, :width]
    if evidence.shape[1] <= width:
        words[:, width - evidence.shape[1]:] = evidence
    return _stack([words, bar, ticks], scale * 2)


def _frame(block: Tensor, color: viz.RGB8, thickness: int, margin: int) -> Tensor:
    out = _pad(block, block.shape[0] + 2 * (thickness + margin),
               block.shape[1] + 2 * (thickness + margin))
    c = torch.tensor(color, dtype=torch.uint8)
    out[:thickness], out[-thickness:] = c, c
    out[:, :thickness], out[:, -thickness:] = c, c
    return out


def render_figure(result: dict[str, Any], scale: int = 12) -> Tensor:
    """The demo figure of :func:`explain_digits`'s ``result`` as ``(H, W, 3)`` uint8, drawn
    with torch alone (5x7 pixel font); :func:`plot_figure` draws it with matplotlib."""
    ts = 2 if scale >= 10 else 1  # text scale
    pad = max(2, scale // 2)
    gap = 2 * ts
    methods, default = result["methods"], result.get("default")
    n = len(result["labels"])
    cell = 8 * scale

    def column_head(name: str) -> Tensor:
        if name == default:  # "epsilon_alpha2_beta1" on two lines, split after an underscore
            cut = name.find("_") + 1 if len(name) > 12 and "_" in name else len(name)
            return _stack([_text("default", ts), _text(name[:cut], ts), _text(name[cut:], ts)],
                          gap)
        return _text(name, ts)

    def map_cell(m: str, i: int) -> Tensor:
        r = result["relevance"][m][i]
        heat = viz.upscale(viz.heatmap(r, "bwr"), scale)
        return _stack([heat, _text(f"sum {r.sum().item():.2f}", ts),
                       _text(f"max {r.abs().max().item():.2f}", ts, _GREY)], gap)

    def row_label(i: int) -> Tensor:
        true, pred = int(result["labels"][i]), int(result["predictions"][i])
        target = int(result["targets"][i])
        logit = float(result["logits"][i, target])
        lines = [_text(f"true {true}", ts),
                 _text(f"pred {pred}" + (" wrong" if pred != true else ""), ts,
                       (200, 0, 0) if pred != true else _INK),
                 _text(f"explains {target}", ts),
                 _text(f"logit {logit:.2f}", ts)]
        return _stack(lines, gap, align="start")

    ink = [viz.upscale(viz.to_rgb(1.0 - result["images"][i]), scale) for i in range(n)]
    columns = [[_text("input", ts), *ink]]
    columns += [[column_head(m), *(map_cell(m, i) for i in range(n))] for m in methods]
    labels = [_blank(1, 1), *(row_label(i) for i in range(n))]
    heights = [max(c[k].shape[0] for c in [*columns, labels]) for k in range(n + 1)]

    def column(blocks: list[Tensor], align: str = "center") -> Tensor:
        width = max(b.shape[1] for b in blocks)
        return _stack([_pad(b, h, width, align) for b, h in zip(blocks, heights)], pad)

    thick = max(1, ts)

    def framed(blocks: list[Tensor], color: viz.RGB8 = _WHITE, align: str = "center"
               ) -> Tensor:  # every column framed alike, so that the rows line up
        return _frame(column(blocks, align), color, thick, pad)

    main = methods.index(default) if default in methods else None
    left = [framed(labels, align="start"), framed(columns[0])]
    if main is not None:
        left.append(framed(columns[1 + main], _INK))
    others = [framed(c) for j, c in enumerate(columns[1:]) if j != main]
    left_block = _stack(left, pad, across=True, align="start")
    if others:
        right = _stack(others, pad, across=True, align="start")
        rule = _blank(thick, right.shape[1])
        rule[:] = torch.tensor(_GREY, dtype=torch.uint8)
        note = _stack([_text("other rules, for comparison", ts, _GREY), rule], gap)
        right = _stack([note, right], gap)
        left_block = _stack([_blank(note.shape[0] + gap, 1), left_block], 0, align="start")
        table = _stack([left_block, right], 2 * pad, across=True, align="start")
    else:
        table = left_block
    width = table.shape[1]
    title = _text("LRP: which pixels of each digit speak for the explained class", ts)
    legend = _stack([
        _colour_bar(min(width, max(cell * 3, 40 * 6 * ts)), max(scale, 8), ts),
        _blank(gap, 1),
        *[_text(line, ts) for line in _wrap(
            "colours: each map is scaled to its own max = largest |R| (printed under it), "
            "white = no relevance. sum = total relevance over the pixels, to compare with the "
            "logit (left). framed: the default composite, what relprop.explain(model, x) "
            "uses.", width, ts)],
    ], gap, align="start")
    footer = [_text(line, ts) for line in _wrap(" ".join(_why_not_conserved(result)), width,
                                                ts)]
    figure = _stack([title, table, legend, _stack(footer, gap, align="start")], 3 * pad,
                    align="start")
    return _pad(figure, figure.shape[0] + 2 * pad, figure.shape[1] + 2 * pad)


# -- the figure, with matplotlib --------------------------------------------------------------

_TITLE = "LRP: which pixels of each digit speak for the explained class"
_COLOURS_NOTE = ("colours: each map is scaled to its own max = largest |R| (printed under it), "
                 "white = no relevance. sum R = total relevance over the pixels, to compare with "
                 "the logit (left). framed: the default composite, what relprop.explain(model, x) "
                 "uses.")
_RED, _BLUE, _GREY_MPL = "#c80000", "#0000c8", "#6e6e6e"


def plot_figure(result: dict[str, Any], *, cell: float = 1.25) -> Figure:
    """The demo figure of :func:`explain_digits`'s ``result`` as a matplotlib figure.

    The same content as :func:`render_figure`: a row per digit (true, predicted, explained
    class and logit), the input, the default composite framed as the main column, the
    comparison rules, ``sum R`` and ``max |R|`` under each map, a colour bar, and the share of
    the logit each method absorbed. ``cell`` is the side of a map in inches. Needs matplotlib
    (``pip install 'relprop[plot]'``).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    from . import plot

    methods, default = list(result["methods"]), result.get("default")
    n = len(result["labels"])
    main = default if default in methods else None
    others = [m for m in methods if m != main]
    # the layout, in inches from the top left
    margin, label_w, gap, group_gap = 0.3, 1.35, 0.22, 0.55
    title_h, head_h, under_h = 0.45, 0.62, 0.46
    row_h = cell + under_h
    columns: list[tuple[str, float]] = []  # (method or "" for the input, left edge)
    x = margin + label_w
    for name in ["", *([main] if main else [])]:
        columns.append((name, x))
        x += cell + gap
    x += group_gap - gap if others else 0.0
    for name in others:
        columns.append((name, x))
        x += cell + gap
    width = x - gap + margin
    wrap = max(40, int((width - 2 * margin) / 0.072))  # characters per line at 9 pt
    footer = textwrap.wrap(" ".join(_why_not_conserved(result)), wrap)
    note = textwrap.wrap(_COLOURS_NOTE, max(30, int((width - 2 * margin - 3.9) / 0.072)))
    top = margin + title_h + head_h
    legend_top = top + n * row_h + 0.25
    legend_h = max(0.95, 0.19 * len(note) + 0.1)
    height = legend_top + legend_h + 0.2 + 0.19 * len(footer) + margin
    fig = plot.figure(width, height, constrained=False)

    def rect(left: float, upper: float, w: float, h: float
             ) -> tuple[float, float, float, float]:
        return (left / width, 1 - (upper + h) / height, w / width, h / height)

    def text(left: float, upper: float, line: str, **kw: Any) -> None:
        fig.text(left / width, 1 - upper / height, line, va="top", **kw)

    text(margin, margin, _TITLE, fontsize=13, weight="bold")
    cmap = plot.colormap("bwr")
    for k in range(n):
        upper = top + k * row_h
        true, pred = int(result["labels"][k]), int(result["predictions"][k])
        target = int(result["targets"][k])
        lines = [(f"true {true}", "black"),
                 (f"pred {pred}" + (" wrong" if pred != true else ""),
                  _RED if pred != true else "black"),
                 (f"explains {target}", "black"),
                 (f"logit {float(result['logits'][k, target]):.2f}", "black")]
        for j, (line, colour) in enumerate(lines):
            text(margin, upper + cell / 2 - 0.4 + 0.2 * j, line, fontsize=10, color=colour)
        for name, left in columns:
            ax = fig.add_axes(rect(left, upper, cell, cell))
            ax.set_xticks([])
            ax.set_yticks([])
            if not name:
                ax.imshow(1.0 - result["images"][k, 0].numpy(), cmap="gray", vmin=0.0,
                          vmax=1.0, interpolation="nearest")
                if k == 0:
                    ax.set_title("input", fontsize=10)
                continue
            r = viz.channel_sum(result["relevance"][name][k])
            shown = viz.normalize_symmetric(r) * 2.0 - 1.0
            ax.imshow(shown.numpy(), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
            ax.text(0.5, -0.04, f"sum R {float(r.sum()):.2f}", transform=ax.transAxes,
                    ha="center", va="top", fontsize=9)
            ax.text(0.5, -0.04 - 0.17 / cell, f"max |R| {float(r.abs().max()):.2f}",
                    transform=ax.transAxes, ha="center", va="top", fontsize=9,
                    color=_GREY_MPL)
            if k == 0:
                head = name
                if name == main:  # "epsilon_alpha2_beta1" on two lines, after an underscore
                    cut = name.find("_") + 1 if len(name) > 14 and "_" in name else len(name)
                    head = "\n".join(["default", name[:cut], name[cut:]]).strip()
                ax.set_title(head, fontsize=10, weight="bold" if name == main else "normal")
    if main:  # frame the main column, titles to sums
        left = dict(columns)[main]
        fig.add_artist(Rectangle(
            ((left - 0.1) / width, 1 - (top + n * row_h - 0.02) / height),
            (cell + 0.2) / width, (n * row_h + head_h - 0.02) / height,
            transform=fig.transFigure, fill=False, linewidth=2, edgecolor="black"))
    if others:
        first = dict(columns)[others[0]]
        span = columns[-1][1] + cell - first
        upper = top - head_h + 0.02
        text(first, upper, "other rules, for comparison", fontsize=10, color=_GREY_MPL)
        fig.add_artist(Rectangle((first / width, 1 - (upper + 0.24) / height), span / width,
                                 0.012 / height, transform=fig.transFigure,
                                 color=_GREY_MPL, linewidth=0))
    # the colour bar with what its ends mean, and what the colours and sums mean
    bar_left, bar_w = margin + 0.3, 3.0  # room for the "−max |R|" under the bar's left end
    cax = fig.add_axes(rect(bar_left, legend_top + 0.25, bar_w, 0.2))
    bar = fig.colorbar(ScalarMappable(Normalize(-1.0, 1.0), cmap), cax=cax,
                       orientation="horizontal")
    bar.set_ticks([-1.0, 0.0, 1.0], labels=["−max |R|", "0", "+max |R|"])
    bar.ax.tick_params(labelsize=9)
    text(bar_left, legend_top, "against the class", fontsize=9, color=_BLUE)
    text(bar_left + bar_w, legend_top, "for the class", fontsize=9, color=_RED, ha="right")
    for j, line in enumerate(note):
        text(bar_left + bar_w + 0.6, legend_top + 0.19 * j, line, fontsize=9)
    for j, line in enumerate(footer):
        text(margin, legend_top + legend_h + 0.2 + 0.19 * j, line, fontsize=9)
    return fig


Backend = Literal["auto", "matplotlib", "torch"]


def _backend(backend: str) -> str:
    """``"matplotlib"`` or ``"torch"`` (with Pillow), or an error that says what to install."""
    if backend not in ("auto", "matplotlib", "torch"):
        raise ValueError(f"backend must be 'auto', 'matplotlib' or 'torch', not {backend!r}")
    if backend == "torch":
        viz._require("PIL.Image", "writing the demo picture")
        return "torch"
    if find_spec("matplotlib") is not None and find_spec("PIL") is not None:
        return "matplotlib"
    if backend == "matplotlib":
        viz._require("matplotlib", "the demo figure with matplotlib")
    viz._require("PIL.Image", "writing the demo picture (with matplotlib, or else with Pillow)")
    return "torch"


def run_demo(out_dir: Path, n: int = 6, *, target: str = "predicted", scale: int = 12,
             backend: Backend = "auto") -> Path:
    """Explain ``n`` test digits and write the figure; returns the PNG's path.

    Writes to ``out_dir`` (created if needed): ``lrp_digits.png`` (rows = digits with their
    true, predicted and explained class; main column = the default composite of
    :func:`relprop.explain`; comparison columns LRP-0, LRP-ε, LRP-γ, montavon2019; a colour
    bar, blue-white-red, red = evidence for the class; a footer on conservation),
    ``explanations.pt`` (the tensors of :func:`explain_digits`) and ``README.txt``.

    ``backend="auto"`` draws with matplotlib (:func:`plot_figure`, at ``12.5 * scale`` dpi)
    when it is installed, else with torch alone (:func:`render_figure`, maps ``scale``
    pixels a cell); either way the PNG is written with Pillow. Without Pillow a
    :class:`relprop.viz.MissingExtraError` says ``pip install 'relprop[plot]'``.
    """
    how = _backend(backend)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = explain_digits(n, target)
    if how == "matplotlib":
        from . import plot

        png = plot.save(plot_figure(result), out / "lrp_digits.png", dpi=max(60, 12.5 * scale))
    else:
        png = viz.save_png(out / "lrp_digits.png", render_figure(result, scale))
    torch.save(result, out / "explanations.pt")
    (out / "README.txt").write_text(
        "lrp_digits.png: LRP heatmaps of a small CNN on 8x8 test digits\n"
        "(cf. Montavon et al. 2019, 'Layer-wise relevance propagation: an overview', Fig. 10.4).\n"
        f"rows: {n} test digits with the true class, the predicted class and the explained\n"
        f"class (the {target} one), and its logit.\n"
        f"main column: {DEFAULT}, the default composite of relprop.explain(model, x).\n"
        "comparison columns: LRP-0 | LRP-eps (eps = 0.25 std) | LRP-gamma (gamma = 0.25) |\n"
        "  montavon2019 (LRP-0 on top layers, eps in the middle, gamma in the lower layers,\n"
        "  z^B on the pixels).\n"
        "colours: each heatmap divided by its max |R| (printed under it); red = evidence for\n"
        "  the class, blue = against, white = none.\n"
        "explanations.pt: torch.load(..., weights_only=True) -> dict of the tensors above.\n\n"
        "conservation (sum of input relevance vs explained logit):\n"
        + format_conservation(result)
        + "\n",
        encoding="utf-8",
    )
    return png
