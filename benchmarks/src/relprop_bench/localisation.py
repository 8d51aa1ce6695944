"""The localisation benchmark: do explanations fall on the object the model classifies?

For each depth variant (:data:`relprop_bench.models.VARIANTS`) and training seed, a VGG-style
net is trained on cluttered digits (:mod:`relprop_bench.cluttered`; cached after the first
run) and a fixed set of test images is explained for the true class by every LRP preset and
every other method of :data:`relprop.methods.METHODS`. Each map is scored per image with

* μ and μ_w (Kohlbrenner et al. 2020, Eq. 5): the share of the positive relevance inside
  the target's box, and that share divided by the box's share of the image (a uniform map
  scores μ_w = 1); μ<0.25: μ over the images whose box covers less than a quarter;
* AOPC of region perturbation, most relevant first (Samek et al. 2017), next to the AOPC of
  a random order;
* ρ(class): the Pearson correlation of the map with the map of the runner-up class (the
  highest-scoring other class; :func:`relprop.metrics.target_correlation`). Near 1 means the
  map looks the same whatever class is explained (Sixt et al. 2020): a class-blind map of
  the red digit localises perfectly, so μ alone cannot tell them apart. |ρ|(class), its
  absolute value per image, also counts a sign-flipped copy of the pattern as the same;
* conservation: ``Σ R / f(x)``, the map's total over the explained logit (1 for a
  conservative rule on a bias-free net; each bias and ε absorbs a share), and
  ``|Σ R / f(x) − 1|`` per image, its spread.

:func:`run_benchmark` aggregates over seeds with hierarchical bootstrap confidence intervals
(:mod:`relprop_bench.stats`) and :mod:`relprop_bench.report` writes the markdown table and the
PNG of the perturbation curves. Command line: ``relprop-bench localisation``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from relprop.metrics import (
    attribution_localisation,
    map_correlation,
    region_perturbation,
    runner_up,
)

from .models import VARIANTS, TrainConfig, accuracy, benchmark_images, trained_net
from .presets import (
    METHOD_SETS,
    MethodSpec,
    controls,
    default_methods,
    lrp_presets,
    other_methods,
    shuffled,
)

__all__ = [
    "MethodSpec",
    "BenchConfig",
    "ModelResult",
    "BenchResult",
    "lrp_presets",
    "other_methods",
    "controls",
    "default_methods",
    "evaluate_model",
    "run_benchmark",
    "smoke_config",
    "SMALL_BOX",
    "RANDOM_ORDER",
    "shuffled",
]

#: μ<SMALL_BOX averages μ over the images whose box covers less than this share of the image
SMALL_BOX = 0.25
#: the name of the random-order AOPC row
RANDOM_ORDER = "random order"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What :func:`run_benchmark` runs."""

    variants: tuple[str, ...] = ("vgg4", "vgg8", "vgg8-bn", "vgg13")
    seeds: tuple[int, ...] = (0, 1, 2)
    n: int = 256
    region_size: int = 4
    steps: int = 16
    batch_size: int = 64
    resamples: int = 2000
    train: TrainConfig = field(default_factory=TrainConfig)
    cache: Path | None = None
    retrain: bool = False
    fast_methods: bool = False
    #: the rows (:data:`relprop_bench.presets.METHOD_SETS`): ``"all"`` or ``"grouped"``
    method_set: str = "all"

    def __post_init__(self) -> None:
        if self.method_set not in METHOD_SETS:
            raise ValueError(
                f"unknown method set {self.method_set!r}; choose from {sorted(METHOD_SETS)}"
            )
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
        if not self.variants or not self.seeds:
            raise ValueError("give at least one variant and one seed")
        if self.n < 1 or self.steps < 1 or self.region_size < 1:
            raise ValueError(
                f"n, steps and region_size must be >= 1, got n={self.n}, "
                f"steps={self.steps}, region_size={self.region_size}"
            )


def smoke_config(**changes: Any) -> BenchConfig:
    """A run of seconds: one 4-conv model trained briefly (4000 images, 5 epochs: ~10 s on
    one core, ~25 % accuracy, enough for the maps to beat a random order), 16 test images."""
    base = BenchConfig(
        variants=("vgg4",),
        seeds=(0,),
        n=16,
        steps=8,
        resamples=200,
        train=TrainConfig(n_train=4000, epochs=5),
        fast_methods=True,
    )
    return replace(base, **changes)


@dataclass
class ModelResult:
    """Per-image scores of every method on one trained model."""

    variant: str
    seed: int
    meta: dict[str, Any]
    accuracy: float
    scores: dict[str, dict[str, Tensor]]  # method -> metric -> (n,) float64
    curves: dict[str, Tensor]  # method -> (n, steps + 1) score drop f(x0) - f(xk)
    seconds: dict[str, float]  # method -> seconds to explain the n images


@dataclass
class BenchResult:
    """Everything a report needs."""

    config: BenchConfig
    methods: list[MethodSpec]
    models: list[ModelResult]
    seconds: float = 0.0

    def per_seed(self, variant: str, method: str, metric: str) -> list[Tensor]:
        """The per-image values of ``metric`` for ``method``, one tensor per seed.

        ``class_corr_abs`` is derived here, ``|class_corr|`` image by image, not stored, and
        so is ``conservation_err``, ``|conservation − 1|``.
        """
        if metric == "class_corr_abs":
            return [v.abs() for v in self.per_seed(variant, method, "class_corr")]
        if metric == "conservation_err":
            return [(v - 1).abs() for v in self.per_seed(variant, method, "conservation")]
        return [
            m.scores[method][metric]
            for m in self.models
            if m.variant == variant and metric in m.scores.get(method, {})
        ]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def evaluate_model(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    boxes: Tensor,
    methods: Sequence[MethodSpec],
    *,
    region_size: int = 4,
    steps: int = 16,
    batch_size: int = 64,
    progress: Progress | None = None,
    prefix: str = "",
) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor], dict[str, float]]:
    """Score every method on ``model``; returns ``(scores, curves, seconds)``.

    ``scores[method]`` holds per-image ``mu``, ``mu_w``, ``mu_small`` (μ, NaN where the box
    covers ≥ :data:`SMALL_BOX`), ``area``, ``aopc`` and ``class_corr`` (the correlation with
    the map of each image's runner-up class, computed untimed; its absolute value is
    derived by :meth:`BenchResult.per_seed`) and ``conservation`` (``Σ R / f(x)``, the
    map's sum over the explained logit); ``scores[RANDOM_ORDER]`` only
    ``aopc``. ``curves[method]`` is the per-image score drop ``f(x⁰) − f(xᵏ)``,
    ``(n, steps + 1)``. All perturbations share one noise draw (the metric's seed 0), so
    MoRF of every method and the random order replace each pixel with the same value.
    """
    scores: dict[str, dict[str, Tensor]] = {}
    curves: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    with torch.no_grad():
        outputs = torch.cat([model(x) for x in images.split(batch_size)])
    contrast = runner_up(outputs, labels)
    logits = outputs.gather(1, labels[:, None])[:, 0].to(torch.float64)
    for k, spec in enumerate(methods):
        spec.explain(model, images[:2], labels[:2])  # warm-up: first-call costs are not timed
        start = time.perf_counter()
        relevance = torch.cat(
            [
                spec.explain(model, x, y)
                for x, y in zip(images.split(batch_size), labels.split(batch_size))
            ]
        )
        seconds[spec.name] = time.perf_counter() - start
        other = torch.cat(
            [
                spec.explain(model, x, c)
                for x, c in zip(images.split(batch_size), contrast.split(batch_size))
            ]
        )
        local = attribution_localisation(relevance, boxes)
        small = torch.where(
            local.area_fraction < SMALL_BOX, local.mu, torch.full_like(local.mu, float("nan"))
        )
        morf = region_perturbation(
            model,
            images,
            relevance,
            labels,
            order="morf",
            region_size=region_size,
            steps=steps,
            batch_size=batch_size,
        )
        scores[spec.name] = {
            "mu": local.mu,
            "mu_w": local.mu_w,
            "mu_small": small,
            "area": local.area_fraction,
            "aopc": morf.aopc_per_sample,
            "class_corr": map_correlation(relevance, other, "sum"),
            "conservation": (
                relevance.to(torch.float64).flatten(1).sum(1) / logits
                if spec.family != "control"  # a random or uniform map's sum means nothing
                else torch.full_like(logits, float("nan"))
            ),
        }
        curves[spec.name] = morf.curves[:, :1] - morf.curves
        if progress is not None:
            progress(
                f"{prefix}{k + 1:2d}/{len(methods)} {spec.name:<28s} "
                f"mu_w {float(local.mu_w.nanmean()):6.3f}  "
                f"aopc {float(morf.aopc):7.3f}  ({seconds[spec.name]:.1f}s)"
            )
    rand = region_perturbation(
        model,
        images,
        None,
        labels,
        order="random",
        region_size=region_size,
        steps=steps,
        batch_size=batch_size,
    )
    scores[RANDOM_ORDER] = {"aopc": rand.aopc_per_sample}
    curves[RANDOM_ORDER] = rand.curves[:, :1] - rand.curves
    return scores, curves, seconds


def run_benchmark(
    config: BenchConfig,
    methods: Sequence[MethodSpec] | None = None,
    *,
    progress: Progress | None = _stderr,
) -> BenchResult:
    """Train (or load) every ``(variant, seed)`` model and score every method on it."""
    start = time.perf_counter()
    if methods is None:
        methods = METHOD_SETS[config.method_set](config.fast_methods)
    methods = list(methods)
    result = BenchResult(config=config, methods=methods, models=[])
    for variant in config.variants:
        net = VARIANTS[variant]
        images, labels, boxes = benchmark_images(config.n, net.canvas)
        for seed in config.seeds:
            tag = f"[{variant} seed {seed}] "
            if progress is not None:
                progress(f"{tag}model ({time.perf_counter() - start:.0f}s elapsed)")
            model, meta = trained_net(
                net,
                seed,
                config.train,
                cache=config.cache,
                retrain=config.retrain,
                progress=progress,
            )
            for p in model.parameters():
                p.requires_grad_(False)
            acc = accuracy(model, images, labels)
            if progress is not None:
                progress(
                    f"{tag}test accuracy {meta['test_accuracy']:.3f} (benchmark images "
                    f"{acc:.3f}); explaining {config.n} images with {len(methods)} methods"
                )
            scores, curves, seconds = evaluate_model(
                model,
                images,
                labels,
                boxes,
                methods,
                region_size=config.region_size,
                steps=config.steps,
                batch_size=config.batch_size,
                progress=progress,
                prefix=tag,
            )
            result.models.append(ModelResult(variant, seed, meta, acc, scores, curves, seconds))
    result.seconds = time.perf_counter() - start
    return result
