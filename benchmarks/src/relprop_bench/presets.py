"""The rows of the localisation benchmark: every LRP preset and attribution method, as
functions ``(model, x, target) -> relevance`` with their names for tables and plots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from relprop import composites, rules
from relprop.composites import CONVS, Composite, grouped_convs, kind
from relprop.methods import METHODS

__all__ = [
    "Explainer",
    "MethodSpec",
    "lrp_presets",
    "other_methods",
    "controls",
    "default_methods",
    "grouped_conv_presets",
    "grouped_methods",
    "METHOD_SETS",
    "shuffled",
    "LOW",
    "HIGH",
]

#: the input range of the cluttered digits (z^B bounds of montavon2019, epsilon_gamma_box)
LOW, HIGH = 0.0, 1.0

Explainer = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """One row of the benchmark: how to get a relevance map for ``(model, x, target)``.

    ``label`` is the markdown name (μ, α, ♭ allowed), ``short`` the ASCII name for the plot,
    ``family`` one of ``"lrp"``, ``"other"``, ``"control"``.
    """

    name: str
    label: str
    short: str
    family: str
    explain: Explainer


def _lrp(make: Callable[[], Composite]) -> Explainer:
    def explain(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        return METHODS["lrp"](model, x, target=target, composite=make()).relevance

    return explain


def _registry(name: str, **options: Any) -> Explainer:
    def explain(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        return METHODS[name](model, x, target=target, **options).relevance

    return explain


def lrp_presets() -> list[MethodSpec]:
    """The LRP configurations of the benchmark (Kohlbrenner et al. 2020, Table I, and more)."""
    uniform = composites.uniform
    table: list[tuple[str, str, str, Callable[[], Composite]]] = [
        ("lrp_0", "LRP-0 (uniform)", "LRP-0", lambda: uniform(rules.Zero())),
        (
            "lrp_epsilon",
            "LRP-ε (uniform, ε = 0.25 std)",
            "LRP-EPS",
            lambda: uniform(rules.Epsilon(0.25, relative_to_std=True)),
        ),
        ("lrp_alpha1", "LRP-α1β0 (uniform)", "LRP-A1B0", lambda: uniform(rules.ZPlus())),
        (
            "lrp_alpha2",
            "LRP-α2β1 (uniform)",
            "LRP-A2B1",
            lambda: uniform(rules.AlphaBeta(2.0, 1.0)),
        ),
        ("cmp_alpha1", "LRP_CMP:α1", "CMP A1", lambda: composites.lrp_cmp(1.0)),
        (
            "cmp_alpha1_flat",
            "LRP_CMP:α1+♭",
            "CMP A1+FLAT",
            lambda: composites.lrp_cmp(1.0, flat_layers=1),
        ),
        ("cmp_alpha2", "LRP_CMP:α2", "CMP A2", lambda: composites.lrp_cmp(2.0)),
        (
            "cmp_alpha2_flat",
            "LRP_CMP:α2+♭",
            "CMP A2+FLAT",
            lambda: composites.lrp_cmp(2.0, flat_layers=1),
        ),
        (
            "montavon2019",
            "montavon2019 (z^B [0, 1])",
            "MONTAVON2019",
            lambda: composites.montavon2019(low=LOW, high=HIGH),
        ),
        (
            "epsilon_gamma_box",
            "epsilon_gamma_box (z^B [0, 1])",
            "EPS-GAMMA-BOX",
            lambda: composites.epsilon_gamma_box(low=LOW, high=HIGH),
        ),
        ("epsilon_plus_flat", "epsilon_plus_flat", "EPS-PLUS-FLAT", composites.epsilon_plus_flat),
    ]
    return [MethodSpec(n, lab, s, "lrp", _lrp(make)) for n, lab, s, make in table]


def other_methods(fast: bool = False) -> list[MethodSpec]:
    """Every method of :data:`relprop.methods.METHODS` but ``lrp``, with the options used.

    ``fast`` lowers the sample and step counts (smoke runs): SmoothGrad 4 samples, integrated
    gradients 8 steps, occlusion with non-overlapping 8 px windows.
    """
    options: dict[str, dict[str, Any]] = {
        "smoothgrad": {"samples": 4 if fast else 16},
        "integrated_gradients": {"steps": 8 if fast else 32},
        "occlusion": {"window": 8, "stride": 8 if fast else 4},
    }
    labels = {
        "gradient": ("Gradient", "GRADIENT"),
        "gradient_x_input": ("Gradient × Input", "GRADIENT X INPUT"),
        "smoothgrad": ("SmoothGrad", "SMOOTHGRAD"),
        "integrated_gradients": ("Integrated Gradients", "INTEGRATED GRADIENTS"),
        "guided_backprop": ("Guided Backprop", "GUIDED BACKPROP"),
        "deconvnet": ("DeconvNet", "DECONVNET"),
        "occlusion": ("Occlusion", "OCCLUSION"),
        "random_baseline": ("random map", "RANDOM MAP"),
    }
    specs = []
    for name in METHODS:
        if name == "lrp":
            continue
        label, short = labels.get(name, (name, name.upper()))
        family = "control" if name == "random_baseline" else "other"
        specs.append(
            MethodSpec(name, label, short, family, _registry(name, **options.get(name, {})))
        )
        if name == "gradient":
            specs.append(
                MethodSpec(
                    "gradient_abs",
                    "Saliency (absolute gradient)",
                    "ABS GRADIENT",
                    "other",
                    _registry("gradient", mode="abs"),
                )
            )
    return specs


def _uniform_map(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    return torch.ones_like(x)


def shuffled(base: Explainer, seed: int = 0) -> Explainer:
    """``base``'s map with its pixels permuted at random (same permutation for all channels)."""

    def explain(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        relevance = base(model, x, target)
        n, c, h, w = relevance.shape
        gen = torch.Generator().manual_seed(seed)
        order = torch.rand(n, h * w, generator=gen).argsort(dim=1)
        flat = relevance.reshape(n, c, h * w)
        return flat.gather(2, order[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)

    return explain


def controls() -> list[MethodSpec]:
    """Sanity rows: the uniform map (μ_w = 1 by construction) and a pixel-shuffled LRP map
    (its AOPC must fall to the random order's)."""
    base = next(s for s in lrp_presets() if s.name == "epsilon_plus_flat")
    return [
        MethodSpec("uniform_map", "uniform map (baseline)", "UNIFORM MAP", "control", _uniform_map),
        MethodSpec(
            "shuffled_epsilon_plus_flat",
            "epsilon_plus_flat, pixels shuffled",
            "SHUFFLED EPS-PLUS-FLAT",
            "control",
            shuffled(base.explain),
        ),
    ]


def default_methods(fast: bool = False) -> list[MethodSpec]:
    """LRP presets, the other registry methods and the controls, in table order."""
    return lrp_presets() + other_methods(fast) + controls()


def _dense_convs_and(grouped: rules.Rule, convs: rules.Rule | None = None) -> Composite:
    """ε (1e-6) on linear layers, ``grouped`` on grouped/depthwise convolutions, ``convs``
    (default α2β1) on the other convolutions: the library default with one rule swapped."""
    conv = rules.AlphaBeta(2.0, 1.0) if convs is None else convs
    return Composite(
        [
            (kind("linear"), rules.Epsilon(1e-6)),
            (grouped_convs(), grouped),
            (kind(*CONVS), conv),
        ],
        f"eps + {grouped!r} on grouped convs + {conv!r} on convs",
    )


def grouped_conv_presets() -> list[MethodSpec]:
    """The rule on grouped/depthwise convolutions, everything else as in the default.

    ``default`` is :func:`relprop.composites.epsilon_alpha2_beta1` itself: γ = 0.25 on every
    convolution of a net with grouped convolutions (α2β1 on nets without). The others are
    written out here, not in the library: ``old_default`` (α2β1 on every convolution, the
    default before session 5), ``dw_gamma`` (γ = 0.25 on the grouped convolutions only, α2β1
    on the others: the default from session 5 until this comparison) and further rules on the
    grouped ones.
    """
    table: list[tuple[str, str, str, Callable[[], Composite]]] = [
        (
            "default",
            "default: γ0.25 on every conv (depthwise net)",
            "DEFAULT GAMMA ALL CONVS",
            composites.epsilon_alpha2_beta1,
        ),
        (
            "old_default",
            "old default: α2β1 on every conv",
            "OLD DEFAULT A2B1",
            lambda: _dense_convs_and(rules.AlphaBeta(2.0, 1.0)),
        ),
        (
            "dw_gamma",
            "γ0.25 on depthwise, α2β1 on other convs",
            "DW-GAMMA",
            lambda: _dense_convs_and(rules.Gamma(0.25)),
        ),
        (
            "dw_zero",
            "LRP-0 on depthwise, α2β1 on other convs",
            "DW-LRP0",
            lambda: _dense_convs_and(rules.Epsilon(1e-6)),
        ),
        (
            "dw_epsilon",
            "ε (0.25 std) on depthwise, α2β1 on other convs",
            "DW-EPS",
            lambda: _dense_convs_and(rules.Epsilon(0.25, relative_to_std=True)),
        ),
        (
            "dw_zplus",
            "z⁺ (α1β0) on depthwise, α2β1 on other convs",
            "DW-ZPLUS",
            lambda: _dense_convs_and(rules.ZPlus()),
        ),
        (
            "dw_gamma1",
            "γ1 on depthwise, α2β1 on other convs",
            "DW-GAMMA1",
            lambda: _dense_convs_and(rules.Gamma(1.0)),
        ),
    ]
    return [MethodSpec(n, lab, s, "lrp", _lrp(make)) for n, lab, s, make in table]


def grouped_methods(fast: bool = False) -> list[MethodSpec]:
    """The rows of the grouped-convolution comparison (``--methods grouped``): the presets
    of :func:`grouped_conv_presets`, montavon2019, uniform LRP-0, Gradient, Gradient × Input,
    the random map and the uniform map."""
    keep_lrp = ("montavon2019", "lrp_0")
    keep_other = ("gradient", "gradient_x_input", "random_baseline")
    return (
        grouped_conv_presets()
        + [s for s in lrp_presets() if s.name in keep_lrp]
        + [s for s in other_methods(fast) if s.name in keep_other]
        + [s for s in controls() if s.name == "uniform_map"]
    )


#: the row sets of ``relprop-bench localisation --methods``
METHOD_SETS: dict[str, Callable[[bool], list[MethodSpec]]] = {
    "all": default_methods,
    "grouped": grouped_methods,
}
