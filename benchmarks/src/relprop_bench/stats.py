"""Means with hierarchical bootstrap confidence intervals over training seeds and images.

A benchmark number here is a mean over models trained from different seeds of a mean over
test images. Both vary: the confidence interval resamples seeds with replacement and, inside
each drawn seed, its images with replacement (a two-level, "hierarchical" bootstrap), so it
is honest about having only a few seeds. Paired differences (method A − method B on the same
image and model) go through the same bootstrap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Estimate", "bootstrap_mean", "paired_difference"]


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    level: float = 0.95

    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of 0."""
        return self.low > 0 or self.high < 0

    def format(self, digits: int = 3) -> str:
        """``"0.512 [0.498, 0.530]"``."""
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_mean(
    per_seed: Sequence[Tensor], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Estimate:
    """Mean over seeds of the per-seed mean over images, with a hierarchical bootstrap CI.

    Args:
        per_seed: one 1-D tensor of per-image values for each training seed; NaNs (a metric
            undefined for an image) are dropped.
        resamples: bootstrap replicates.
        level: confidence level of the percentile interval.
        seed: seed of the resampling (the global RNG is not touched).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    groups = [v.detach().to(torch.float64).flatten() for v in per_seed]
    groups = [v[~torch.isnan(v)] for v in groups]
    groups = [v for v in groups if v.numel()]
    if not groups:
        nan = float("nan")
        return Estimate(nan, nan, nan, level)
    mean = float(torch.stack([v.mean() for v in groups]).mean())
    gen = torch.Generator().manual_seed(seed)
    # inner level: `resamples` bootstrap means of each seed's images
    inner = torch.stack(
        [
            v[torch.randint(0, v.numel(), (resamples, v.numel()), generator=gen)].mean(dim=1)
            for v in groups
        ]
    )  # (seeds, resamples)
    # outer level: draw seeds with replacement, each with an independent inner replicate
    s = len(groups)
    pick_seed = torch.randint(0, s, (resamples, s), generator=gen)
    pick_rep = torch.randint(0, resamples, (resamples, s), generator=gen)
    replicates = inner[pick_seed, pick_rep].mean(dim=1)
    alpha = (1.0 - level) / 2.0
    low, high = torch.quantile(replicates, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64))
    return Estimate(mean, float(low), float(high), level)


def paired_difference(
    a: Sequence[Tensor],
    b: Sequence[Tensor],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean of ``a − b`` (paired per image and seed) with a hierarchical bootstrap CI."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ValueError("paired values must have the same seeds and images")
    return bootstrap_mean(
        [x - y for x, y in zip(a, b)], resamples=resamples, level=level, seed=seed
    )
