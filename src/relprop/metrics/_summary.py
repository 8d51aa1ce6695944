"""Short text summaries of per-sample scores for the ``repr`` of the metrics' result objects.

A result holds one score per sample (often 100 or more); printing the tensor buries the
number that matters. The summary is the mean over the samples that have a score, its 95%
confidence interval from the normal approximation (``mean ± 1.96 · s / √n``, ``s`` the sample
standard deviation), and the number of samples, e.g. ``mean 0.734, 95% CI [0.682, 0.786],
n=100``; samples whose score is ``NaN`` (undefined) are left out and counted.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054


def mean_ci(values: Tensor) -> tuple[float, float, float, int, int]:
    """``(mean, low, high, n_defined, n_total)`` of the finite-or-inf, non-NaN ``values``.

    The interval is the normal approximation ``mean ± 1.96 · s / √n``; ``NaN`` bounds for
    fewer than two defined samples, a ``NaN`` mean for none.
    """
    flat = values.detach().reshape(-1).to(torch.float64).cpu()
    defined = flat[~torch.isnan(flat)]
    n = int(defined.numel())
    if n == 0:
        return math.nan, math.nan, math.nan, 0, int(flat.numel())
    mean = float(defined.mean())
    if n < 2:
        return mean, math.nan, math.nan, n, int(flat.numel())
    half = Z95 * float(defined.std()) / math.sqrt(n)
    return mean, mean - half, mean + half, n, int(flat.numel())


def describe(values: Tensor, name: str = "mean") -> str:
    """``"mean 0.734, 95% CI [0.682, 0.786], n=100"``; ``"n=97 (+3 NaN)"`` with undefined
    samples, ``"n=1, no CI"`` for a single one, ``"no defined sample of 5"`` for none."""
    mean, low, high, n, total = mean_ci(values)
    if n == 0:
        return f"{name} NaN, no defined sample of {total}"
    count = f"n={n}" + (f" (+{total - n} NaN)" if total > n else "")
    if n < 2:
        return f"{name} {mean:.3g}, {count}, no CI"
    return f"{name} {mean:.3g}, 95% CI [{low:.3g}, {high:.3g}], {count}"
