"""Write the localisation benchmark's results: a markdown table, a PNG of curves, raw tensors."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from relprop import viz

from .localisation import (
    RANDOM_ORDER,
    SMALL_BOX,
    BenchConfig,
    BenchResult,
    MethodSpec,
    ModelResult,
)
from .models import VARIANTS, TrainConfig
from .plot import Line, line_plot
from .stats import Estimate, bootstrap_mean, paired_difference

__all__ = [
    "METRICS",
    "REFERENCES",
    "PAIRED",
    "ACROSS_DEPTH",
    "summarise",
    "across_depth",
    "means_across_depth",
    "markdown",
    "plot_curves",
    "write_report",
    "load_result",
]

#: (metric key, column title); the table is sorted by the first
METRICS: tuple[tuple[str, str], ...] = (
    ("mu_w", "μ_w"),
    ("mu", "μ"),
    ("mu_small", f"μ<{SMALL_BOX:g}"),
    ("aopc", "AOPC MoRF"),
    ("class_corr", "ρ(class) ↓"),
    ("class_corr_abs", "\\|ρ\\|(class) ↓"),  # escaped: a bare | would split the table cell
    ("conservation", "ΣR/f"),
    ("conservation_err", "\\|ΣR/f − 1\\| ↓"),
)
#: the rows paired differences are taken against: (method name, column label)
REFERENCES: tuple[tuple[str, str], ...] = (
    ("lrp_0", "LRP-0 (uniform)"),
    ("guided_backprop", "Guided Backprop"),
    ("gradient", "Gradient"),
    ("old_default", "old default (α2β1 on every conv)"),
    ("dw_gamma", "γ0.25 on depthwise only (previous default)"),
)
#: the composites whose paired differences are tabulated (``epsilon_plus_flat`` is left out:
#: it is ``lrp_cmp(1, flat_layers=1)`` rule for rule, so its rows would repeat LRP_CMP:α1+♭)
PAIRED: tuple[str, ...] = (
    "cmp_alpha1",
    "cmp_alpha1_flat",
    "cmp_alpha2",
    "cmp_alpha2_flat",
    "montavon2019",
    "epsilon_gamma_box",
    # the grouped-convolution comparison (--methods grouped)
    "default",
    "dw_gamma",
    "dw_zero",
    "dw_epsilon",
    "dw_zplus",
    "dw_gamma1",
)
#: the headline paired differences compared across depth variants (and across results files):
#: (composite, reference) — does the composites' lead over uniform rules grow with depth?
ACROSS_DEPTH: tuple[tuple[str, str], ...] = tuple(
    (composite, reference)
    for composite in ("cmp_alpha2", "cmp_alpha1", "epsilon_gamma_box")
    for reference in ("lrp_0", "lrp_epsilon", "lrp_alpha2", "guided_backprop")
)
Summary = dict[str, dict[str, dict[str, Estimate]]]  # variant -> method -> metric -> estimate


def summarise(result: BenchResult) -> Summary:
    """Bootstrap mean and CI of every metric, per variant and method."""
    out: Summary = {}
    names = [m.name for m in result.methods] + [RANDOM_ORDER]
    for variant in result.config.variants:
        out[variant] = {}
        for name in names:
            out[variant][name] = {}
            for metric, _ in METRICS:
                values = result.per_seed(variant, name, metric)
                if values:
                    out[variant][name][metric] = bootstrap_mean(
                        values, resamples=result.config.resamples
                    )
    return out


def _cell(estimate: Estimate | None, digits: int = 3, signed: bool = False) -> str:
    if estimate is None or math.isnan(estimate.mean):
        return "–"
    sign = "+" if signed else ""
    star = " ✱" if signed and estimate.excludes_zero() else ""
    return (
        f"{estimate.mean:{sign}.{digits}f} [{estimate.low:{sign}.{digits}f}, "
        f"{estimate.high:{sign}.{digits}f}]{star}"
    )


def _variant_title(result: BenchResult, variant: str) -> str:
    net = VARIANTS[variant]
    accs = [m.meta["test_accuracy"] for m in result.models if m.variant == variant]
    mean = sum(accs) / len(accs)
    per_seed = ", ".join(f"{a:.1%}" for a in accs)
    if net.arch == "mobilenet":
        return (
            f"### {variant}: MobileNetV2-style, {net.depth} inverted residual blocks "
            f"(depthwise 3x3 convs), BatchNorm, ReLU6, test accuracy {mean:.1%} "
            f"(per seed: {per_seed})"
        )
    stages = "" if net.stages is None else f" in stages of {', '.join(map(str, net.stages))}"
    channels = f", {net.width}/{2 * net.width} channels" if net.width != 16 else ""
    return (
        f"### {variant}: {net.depth} conv layers{stages}{channels}"
        f"{' + BatchNorm' if net.batchnorm else ''}, "
        f"test accuracy {mean:.1%} (per seed: {per_seed})"
    )


def _undefined(result: BenchResult, variant: str, method: str) -> int:
    return sum(int(torch.isnan(v).sum()) for v in result.per_seed(variant, method, "mu"))


def _ms_per_image(result: BenchResult, variant: str, method: str) -> str:
    runs = [m.seconds[method] for m in result.models if m.variant == variant]
    return f"{1000 * sum(runs) / len(runs) / result.config.n:.1f}" if runs else "–"


def _areas(result: BenchResult) -> torch.Tensor:
    first = result.models[0]
    return first.scores[result.methods[0].name]["area"]


def _small_boxes(result: BenchResult) -> int:
    return int((_areas(result) < SMALL_BOX).sum())


def _area_range(result: BenchResult) -> str:
    area = _areas(result)
    return f"{float(area.min()):.0%} to {float(area.max()):.0%} (mean {float(area.mean()):.0%})"


def _main_table(result: BenchResult, summary: Summary, variant: str) -> list[str]:
    rows = summary[variant]
    specs = sorted(
        result.methods,
        key=lambda s: (
            -rows[s.name]["mu_w"].mean if not math.isnan(rows[s.name]["mu_w"].mean) else math.inf
        ),
    )
    head = "| method | " + " | ".join(t for _, t in METRICS) + " | no R⁺ | ms/img |"
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]
    for spec in specs:
        cells = [_cell(rows[spec.name].get(m)) for m, _ in METRICS]
        lines.append(
            f"| {spec.label} | "
            + " | ".join(cells)
            + f" | {_undefined(result, variant, spec.name)} | "
            + f"{_ms_per_image(result, variant, spec.name)} |"
        )
    aopc = _cell(rows[RANDOM_ORDER].get("aopc"))
    cells = [aopc if m == "aopc" else "–" for m, _ in METRICS]
    lines.append("| *random order (AOPC baseline)* | " + " | ".join(cells) + " | – | – |")
    return lines


def _paired_table(result: BenchResult, variant: str) -> list[str]:
    composites = [s for s in result.methods if s.name in PAIRED]
    names = {s.name for s in result.methods}
    lines = [
        "| composite | minus | " + " | ".join(f"Δ{t}" for _, t in METRICS) + " |",
        "|" + "---|" * (len(METRICS) + 2),
    ]
    for spec in composites:
        for ref, ref_label in REFERENCES:
            if ref not in names or ref == spec.name:
                continue
            cells = []
            for metric, _ in METRICS:
                a = result.per_seed(variant, spec.name, metric)
                b = result.per_seed(variant, ref, metric)
                cells.append(
                    _cell(paired_difference(a, b, resamples=result.config.resamples), signed=True)
                )
            lines.append(f"| {spec.label} | {ref_label} | " + " | ".join(cells) + " |")
    return lines


def _ranking_table(result: BenchResult, summary: Summary) -> list[str]:
    variants = result.config.variants
    cols = [(v, m) for m in ("mu_w", "aopc") for v in variants]
    lines = [
        "| method | " + " | ".join(f"{dict(METRICS)[m]} rank, {v}" for v, m in cols) + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    ranks: dict[tuple[str, str], dict[str, int]] = {}
    for v, m in cols:
        order = sorted(
            (s.name for s in result.methods),
            key=lambda n: (
                -summary[v][n][m].mean if not math.isnan(summary[v][n][m].mean) else math.inf
            ),
        )
        ranks[(v, m)] = {n: i + 1 for i, n in enumerate(order)}
    for spec in result.methods:
        lines.append(
            f"| {spec.label} | " + " | ".join(str(ranks[c][spec.name]) for c in cols) + " |"
        )
    return lines


def across_depth(results: Sequence[BenchResult], metric: str = "mu_w") -> list[str]:
    """Paired differences of :data:`ACROSS_DEPTH` in ``metric``, one column per variant.

    ``results`` may come from several runs (e.g. a later run of a new variant next to the
    first run's, read by :func:`load_result`); a variant in two of them keeps the first.
    """
    columns: dict[str, BenchResult] = {}
    for result in results:
        for variant in result.config.variants:
            columns.setdefault(variant, result)
    labels = {s.name: s.label for r in results for s in r.methods}
    title = dict(METRICS)[metric]
    head = [
        f"{v} ({len({m.seed for m in r.models if m.variant == v})} seeds)"
        for v, r in columns.items()
    ]
    lines = [
        "| composite | minus | " + " | ".join(f"Δ{title}, {h}" for h in head) + " |",
        "|" + "---|" * (len(columns) + 2),
    ]
    for composite, reference in ACROSS_DEPTH:
        if composite not in labels or reference not in labels:
            continue
        cells = []
        for variant, result in columns.items():
            a = result.per_seed(variant, composite, metric)
            b = result.per_seed(variant, reference, metric)
            diff = paired_difference(a, b, resamples=result.config.resamples) if a and b else None
            cells.append(_cell(diff, signed=True))
        lines.append(f"| {labels[composite]} | {labels[reference]} | " + " | ".join(cells) + " |")
    return lines


def means_across_depth(result: BenchResult, summary: Summary,
                       metrics: Sequence[str] = ("mu_w", "class_corr", "class_corr_abs")
                       ) -> list[str]:
    """Mean of each of ``metrics`` per method, one column per (metric, variant)."""
    titles = dict(METRICS)
    cols = [(m, v) for m in metrics for v in result.config.variants]
    lines = [
        "| method | " + " | ".join(f"{titles[m]}, {v}" for m, v in cols) + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for spec in result.methods:
        cells = []
        for m, v in cols:
            estimate = summary[v][spec.name].get(m)
            ok = estimate is not None and not math.isnan(estimate.mean)
            cells.append(f"{estimate.mean:.3f}" if ok and estimate is not None else "–")
        lines.append(f"| {spec.label} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: BenchResult, summary: Summary, command: str = "") -> str:
    """The report: set-up, one table per variant, paired differences, ranks across depth."""
    c = result.config
    side = VARIANTS[c.variants[0]].canvas
    lines = [
        "# Localisation benchmark: cluttered digits",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} on {_machine()} with torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); the run took "
        f"{result.seconds / 60:.1f} min (training included where the cache had no model).",
    ]
    if command:
        lines += ["", "```", command, "```"]
    lines += [
        "",
        f"Set-up: {c.n} test images (32x32 RGB, one red target digit among 3 distractors in "
        "other colours; held-out source digits), explained for the true class; "
        f"{len(c.seeds)} training seed(s) {list(c.seeds)} per variant, each trained on "
        f"{c.train.n_train} images for {c.train.epochs} epochs. μ and μ_w from the positive "
        "part of the channel-summed map (Kohlbrenner et al. 2020, Eq. 5); "
        f"μ<{SMALL_BOX:g} over the images whose box covers less than {SMALL_BOX:.0%} "
        f"({_small_boxes(result)} of the {c.n}; boxes cover {_area_range(result)} of the "
        "image). "
        f"AOPC: region perturbation (Samek et al. 2017), {c.region_size}x{c.region_size} "
        f"regions, {c.steps} steps (replacing {c.steps * c.region_size**2 / side**2:.0%} of "
        "the image) with uniform noise in each image's channel range, logit of the true "
        "class. Cells: mean [95 % CI] of a hierarchical bootstrap over seeds and images "
        f"({c.resamples} resamples). 'no R⁺': maps without positive relevance (no μ; left "
        "out of the μ means). Higher is better in every column but ρ(class) and |ρ|(class): "
        "ρ is the Pearson correlation of the map with the map of the runner-up class (the "
        "highest-scoring other class), |ρ| its absolute value per image. Near 1, the map is "
        "the same whatever class it explains (Sixt et al. 2020); ρ near −1 with |ρ| near 1, "
        "the same pattern with its sign flipped. Lower is more class-specific. ΣR/f: the "
        "map's sum over the explained logit (1: conservative), \\|ΣR/f − 1\\| its "
        "deviation per image.",
    ]
    lines += [
        "",
        "Models (test accuracy on 1000 held-out images; 'bench' on the images above):",
        "",
        *_model_table(result),
    ]
    for variant in c.variants:
        lines += ["", _variant_title(result, variant), "", *_main_table(result, summary, variant)]
        lines += [
            "",
            f"Paired differences on {variant} (composite minus reference, same image "
            "and model; ✱: the 95 % CI excludes 0):",
            "",
            *_paired_table(result, variant),
        ]
    if len(c.variants) > 1:
        lines += ["", "### Ranks across depth (1 = best)", "", *_ranking_table(result, summary)]
        lines += [
            "",
            "### Headline paired differences across depth (✱: the 95 % CI excludes 0)",
            "",
            *across_depth([result], "mu_w"),
            "",
            *across_depth([result], "aopc"),
            "",
            *across_depth([result], "class_corr"),
            "",
            *across_depth([result], "class_corr_abs"),
            "",
            "### Localisation and class sensitivity across depth (means; ρ(class): lower is "
            "more class-specific)",
            "",
            *means_across_depth(result, summary),
        ]
    lines += ["", "Notes:", "", *_notes(result)]
    return "\n".join(lines) + "\n"


#: the options of the rows, as the report states them (see relprop_bench.presets)
OPTIONS = (
    "SmoothGrad 16 samples, noise 0.15 of each image's range; Integrated Gradients 32\n"
    "  steps from a black image (trapezoid rule); Occlusion 8x8 windows, stride 4, fill 0;\n"
    "  Gradient signed, Saliency its absolute value; LRP-ε: ε = 0.25 std of each layer's\n"
    "  outputs; z^B bounds [0, 1], the data range; targets: the true class's logit."
)
OPTIONS_FAST = OPTIONS.replace("16 samples", "4 samples").replace("32\n  steps", "8\n  steps")
OPTIONS_FAST = OPTIONS_FAST.replace("stride 4", "stride 8")


def _notes(result: BenchResult) -> list[str]:
    perfect = float((1.0 / _areas(result)).mean())
    return [
        "- epsilon_plus_flat is LRP_CMP:α1+♭ rule for rule (ε = 1e-6 on the dense layers, z⁺ =",
        "  α1β0 on the convolutions, ♭ on the first layer): their rows agree to the last digit.",
        "- LRP-0 (uniform) equals Gradient × Input on the VGG nets (ReLU; tested to float",
        "  precision), not on the MobileNet, whose ReLU6 saturates (zero gradient above 6).",
        "- The uniform map's AOPC is the random order's by construction: it ranks nothing, and",
        "  ties are broken by the same seeded permutation. A pixel-shuffled map lands near it.",
        "- ρ(class) of the controls: the random map is one draw per image whatever the class",
        "  (ρ = 1), the uniform map is constant (no ρ), and the pixel-shuffled map shuffles",
        "  both classes' maps alike, so it keeps the ρ of the map it shuffles.",
        "- μ_w = μ · S_tot / S_in weights small boxes up: a uniform map scores 1, a map with all",
        f"  its positive relevance inside the box {perfect:.2f} on these images (mean S_tot/S_in).",
        f"- Options: {OPTIONS_FAST if result.config.fast_methods else OPTIONS}",
    ]


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{platform.node() or 'unknown host'} ({model}, {os.cpu_count()} CPUs)"


def _model_table(result: BenchResult) -> list[str]:
    lines = [
        "| variant | seed | test accuracy | bench accuracy | training |",
        "|---|---|---|---|---|",
    ]
    for m in result.models:
        trained = f"{m.meta['train_seconds']:.0f} s" if "train_seconds" in m.meta else "–"
        lines.append(
            f"| {m.variant} | {m.seed} | {m.meta['test_accuracy']:.1%} | "
            f"{m.accuracy:.1%} | {trained} |"
        )
    return lines


def plot_curves(result: BenchResult) -> torch.Tensor:
    """One panel per variant: mean score drop ``f(x⁰) − f(xᵏ)`` per perturbation step."""
    panels = []
    specs: list[MethodSpec | None] = [*result.methods, None]
    for variant in result.config.variants:
        series = []
        for spec in specs:
            name = RANDOM_ORDER if spec is None else spec.name
            curves = [m.curves[name] for m in result.models if m.variant == variant]
            mean = torch.stack([c.mean(dim=0) for c in curves]).mean(dim=0).tolist()
            steps = list(range(len(mean)))
            if spec is None:  # the reference: black and thick
                series.append(Line("RANDOM ORDER", steps, mean, (0, 0, 0), thickness=3))
            else:  # LRP solid, other methods dashed, controls thin
                series.append(
                    Line(
                        spec.short,
                        steps,
                        mean,
                        dashed=spec.family != "lrp",
                        thickness=1 if spec.family == "control" else 2,
                    )
                )
        panels.append(
            line_plot(
                series,
                title=f"{variant.upper()}: MORF CURVES",
                xlabel="REGIONS REPLACED",
                ylabel="LOGIT DROP",
                width=640,
                height=380,
            )
        )
    return viz.grid(panels, nrow=len(panels), padding=4)


def write_report(result: BenchResult, out_dir: Path, command: str = "") -> dict[str, Path]:
    """Write ``localisation.md``, ``aopc_curves.png`` and ``results.pt`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(result)
    paths = {
        "table": out / "localisation.md",
        "plot": out / "aopc_curves.png",
        "raw": out / "results.pt",
    }
    paths["table"].write_text(markdown(result, summary, command), encoding="utf-8")
    viz.save_png(paths["plot"], plot_curves(result))
    torch.save(
        {
            "config": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result.config).items()
            },
            "methods": [(s.name, s.label, s.short, s.family) for s in result.methods],
            "seconds": result.seconds,
            "models": [
                {
                    "variant": m.variant,
                    "seed": m.seed,
                    "meta": m.meta,
                    "accuracy": m.accuracy,
                    "scores": m.scores,
                    "curves": m.curves,
                    "seconds": m.seconds,
                }
                for m in result.models
            ],
        },
        paths["raw"],
    )
    return paths


def load_result(path: Path) -> BenchResult:
    """Read a ``results.pt`` of :func:`write_report` back, to render its report again.

    The rows keep their names and labels; their ``explain`` functions are placeholders.
    """
    raw = torch.load(Path(path), weights_only=False)
    config = dict(raw["config"])
    config["train"] = TrainConfig(**config["train"])
    config["variants"], config["seeds"] = tuple(config["variants"]), tuple(config["seeds"])
    config["cache"] = None if config["cache"] is None else Path(config["cache"])

    def gone(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a method loaded from results.pt cannot explain anew")

    methods = [
        MethodSpec(name, label, short, family, gone)
        for name, label, short, family in raw["methods"]
    ]
    models = [ModelResult(**m) for m in raw["models"]]
    return BenchResult(BenchConfig(**config), methods, models, float(raw.get("seconds", 0.0)))
