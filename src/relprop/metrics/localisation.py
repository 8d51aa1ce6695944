"""Does the relevance fall on the object? Scores against a ground-truth box or mask.

Every score is per sample, in float64, on the maps' device. A score that is undefined for a
map is ``NaN`` and never a number made up from a division by zero: μ and the relevance mass
accuracy when the (pooled) map has no positive relevance (``0 / 0``), the pointing game and
the rank accuracy when the pooled map is constant (all zero included: no pixel is singled
out). Averages propagate NaN unless undefined samples are dropped explicitly
(``skip_undefined=True`` or ``scores.per_sample[scores.defined]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InvalidInputError
from ._summary import describe, mean_ci
from .maps import Pool, pooled_with_masks

_BOX_RULE = "boxes (x0, y0, x1, y1) cover the pixels whose centres lie in [x0, x1) x [y0, y1)"


@dataclass(frozen=True)
class Scores:
    """One score per sample (``NaN`` where undefined) and the protocol that produced it."""

    per_sample: Tensor
    protocol: dict[str, object]

    @property
    def defined(self) -> Tensor:
        """Which samples have a score."""
        return ~torch.isnan(self.per_sample)

    @property
    def mean(self) -> Tensor:
        """The mean over samples; ``NaN`` if any sample is undefined."""
        return self.per_sample.mean()

    def __repr__(self) -> str:
        """``Scores(pointing_game: mean 0.734, 95% CI [0.682, 0.786], n=100)``: the mean over
        the defined samples and its 95% CI by the normal approximation (``mean ± 1.96 s/√n``),
        not the per-sample tensor (see ``per_sample``)."""
        return f"Scores({self.protocol.get('metric', '?')}: {describe(self.per_sample)})"


@dataclass(frozen=True)
class LocalisationResult:
    """Per-sample μ, μ_w and the area fraction ``S_in / S_tot`` of each sample's region."""

    mu: Tensor
    mu_w: Tensor
    area_fraction: Tensor
    protocol: dict[str, object]

    @property
    def defined(self) -> Tensor:
        """Which samples have positive relevance, hence a μ."""
        return ~torch.isnan(self.mu)

    def __repr__(self) -> str:
        """Mean μ and μ_w over the defined samples with their 95% CIs (normal approximation,
        ``mean ± 1.96 s/√n``) and the sample count, not the per-sample tensors."""
        mu, low, high, n, total = mean_ci(self.mu)
        mu_w, low_w, high_w, _, _ = mean_ci(self.mu_w)
        count = f"n={n}" + (f" (+{total - n} NaN)" if total > n else "")
        return (f"LocalisationResult(mu {mu:.3g} [{low:.3g}, {high:.3g}], mu_w {mu_w:.3g} "
                f"[{low_w:.3g}, {high_w:.3g}] (95% CIs), {count})")


def _protocol(metric: str, region: Tensor, pool: Pool, undefined: str) -> dict[str, object]:
    kind = "masks" if region.dtype == torch.bool else "boxes"
    protocol: dict[str, object] = {"metric": metric, "pool": pool, "region": kind}
    if kind == "boxes":
        protocol["box_rule"] = _BOX_RULE
    protocol["undefined"] = undefined
    return protocol


def attribution_localisation(relevance: Tensor, region: Tensor, *,
                             pool: Pool = "sum") -> LocalisationResult:
    """Inside-total relevance ratio μ and its size-weighted μ_w (Kohlbrenner et al. 2020).

    ``μ = R⁺_in / R⁺_tot`` and ``μ_w = μ · S_tot / S_in``, where ``R⁺_in`` is the positive
    relevance inside the region, ``R⁺_tot`` the positive relevance of the whole map (after
    channel pooling with ``pool``), and ``S_in``, ``S_tot`` the areas of region and image in
    pixels (Kohlbrenner et al., "Towards best practice in explaining neural network
    decisions with LRP", IJCNN 2020, Eq. 5). μ_w is computed as the ratio of the mean
    positive relevance inside to that of the image, so a uniform map scores exactly 1.
    A map with no positive relevance gets ``NaN`` for both (``0 / 0``).

    Args:
        relevance: maps ``(N, C, H, W)`` or ``(N, H, W)``.
        region: boxes ``(N, 4)`` as ``(x0, y0, x1, y1)`` or boolean masks ``(N, H, W)``
            (see :func:`relprop.metrics.region_masks`).
        pool: channel pooling (:func:`relprop.metrics.pool_channels`).
    """
    pooled, masks = pooled_with_masks(relevance, region, pool)
    positive = pooled.clamp(min=0)
    r_in = (positive * masks).sum(dim=(1, 2))
    r_tot = positive.sum(dim=(1, 2))
    s_in = masks.sum(dim=(1, 2)).to(torch.float64)
    s_tot = float(masks.shape[1] * masks.shape[2])
    nan = torch.full_like(r_tot, float("nan"))
    some = r_tot > 0
    safe_tot = torch.where(some, r_tot, torch.ones_like(r_tot))
    mu = torch.where(some, r_in / safe_tot, nan)
    mu_w = torch.where(some, (r_in / s_in) / (safe_tot / s_tot), nan)
    protocol = _protocol("attribution_localisation", region, pool,
                         "NaN: the pooled map has no positive relevance (R+_tot = 0)")
    return LocalisationResult(mu=mu, mu_w=mu_w, area_fraction=s_in / s_tot, protocol=protocol)


def localisation_summary(result: LocalisationResult, thresholds: Sequence[float] = (0.25, 0.5),
                         *, skip_undefined: bool = False) -> dict[str, float]:
    """Table I of Kohlbrenner et al. 2020: mean μ_w, μ, and μ over small objects.

    ``"mu<t"`` is the mean μ over the samples whose region covers less than ``t`` of the
    image (``S_in / S_tot < t``); ``"n<t"`` counts them (``NaN`` mean for none). ``"n"`` is
    the number of samples averaged and ``"undefined"`` the number of samples without μ.
    With ``skip_undefined=False`` (default) any undefined sample makes the means ``NaN``;
    with ``True`` they are averaged over the defined samples only.
    """
    if not isinstance(result, LocalisationResult):
        raise InvalidInputError(
            f"result must be a LocalisationResult, got {type(result).__name__}"
        )
    for t in thresholds:
        if not 0 < t <= 1:
            raise InvalidInputError(f"thresholds must lie in (0, 1], got {t!r}")
    keep = result.defined if skip_undefined else torch.ones_like(result.defined)

    def mean(values: Tensor, select: Tensor) -> float:
        return float(values[select].mean()) if bool(select.any()) else float("nan")

    summary: dict[str, float] = {"mu_w": mean(result.mu_w, keep)}
    for t in thresholds:
        summary[f"mu<{t:g}"] = mean(result.mu, keep & (result.area_fraction < t))
    summary["mu"] = mean(result.mu, keep)
    summary["n"] = int(keep.sum())
    for t in thresholds:
        summary[f"n<{t:g}"] = int((keep & (result.area_fraction < t)).sum())
    summary["undefined"] = int((~result.defined).sum())
    return summary


def relevance_mass_accuracy(relevance: Tensor, region: Tensor, *, pool: Pool = "sum") -> Scores:
    """Relevance mass accuracy ``R⁺_within / R⁺_total`` (Arras et al. 2022).

    The fraction of the positive (pooled) relevance that lies inside the ground-truth mask
    (Arras, Osman, Samek, "CLEVR-XAI: a benchmark dataset for the ground truth evaluation of
    neural network explanations", Information Fusion 81, 2022). It is μ of
    :func:`attribution_localisation` for a mask; ``NaN`` without positive relevance.
    """
    result = attribution_localisation(relevance, region, pool=pool)
    return Scores(per_sample=result.mu, protocol=_protocol(
        "relevance_mass_accuracy", region, pool,
        "NaN: the pooled map has no positive relevance (R+_total = 0)"))


def relevance_rank_accuracy(relevance: Tensor, region: Tensor, *, pool: Pool = "sum") -> Scores:
    """Relevance rank accuracy ``|top_K(R) ∩ GT| / K`` with ``K = |GT|`` (Arras et al. 2022).

    The fraction of the ``K`` most relevant pixels (pooled map, ``K`` = mask size) that lie
    in the mask. Pixels tied with the ``K``-th value share the remaining places: the score is
    its expectation over random tie-breaking, so it does not depend on pixel order. A
    constant pooled map (all zero included) ranks nothing: ``NaN``.
    """
    pooled, masks = pooled_with_masks(relevance, region, pool)
    flat, inside = pooled.reshape(pooled.shape[0], -1), masks.reshape(masks.shape[0], -1)
    k = inside.sum(dim=1)
    kth = flat.sort(dim=1, descending=True).values.gather(1, (k - 1)[:, None])
    above, tied = flat > kth, flat == kth

    def count(selected: Tensor) -> Tensor:
        return selected.sum(dim=1).to(torch.float64)

    hits = count(above & inside) + (k - above.sum(dim=1)) * (count(tied & inside) / count(tied))
    score = hits / k
    constant = flat.amax(dim=1) == flat.amin(dim=1)
    score = torch.where(constant, torch.full_like(score, float("nan")), score)
    return Scores(per_sample=score, protocol=_protocol(
        "relevance_rank_accuracy", region, pool,
        "NaN: the pooled map is constant, so it ranks no pixel above another") | {
        "ties": "expectation over random tie-breaking at the K-th value"})


def pointing_game(relevance: Tensor, region: Tensor, *, tolerance: float = 0.0,
                  pool: Pool = "sum") -> Scores:
    """Pointing game: is the maximum of the map on the object? (Zhang et al. 2018).

    A hit (1) when the pixel of maximal pooled relevance lies in the region or within
    ``tolerance`` pixels of it (Euclidean distance between pixel centres; Zhang et al. use
    15 px at 224 px), else a miss (0) ("Top-down neural attention by excitation backprop",
    IJCV 126, 2018). When several pixels share the maximum the score is the fraction of them
    that hit (the expected hit of a random pick); a constant pooled map has no maximum:
    ``NaN``.
    """
    if (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
            or not 0 <= tolerance < float("inf")):
        raise InvalidInputError(f"tolerance must be a finite number of pixels ≥ 0, "
                                f"got {tolerance!r}")
    pooled, masks = pooled_with_masks(relevance, region, pool)
    target = masks if tolerance < 1 else _dilate(masks, tolerance)
    top = pooled == pooled.amax(dim=(1, 2), keepdim=True)
    score = ((top & target).sum(dim=(1, 2)).to(torch.float64)
             / top.sum(dim=(1, 2)).to(torch.float64))
    constant = top.reshape(top.shape[0], -1).all(dim=1)
    score = torch.where(constant, torch.full_like(score, float("nan")), score)
    return Scores(per_sample=score, protocol=_protocol(
        "pointing_game", region, pool,
        "NaN: the pooled map is constant, so it has no maximum") | {
        "tolerance": float(tolerance),
        "ties": "fraction of the maximal pixels that hit (expected hit of a random pick)"})


def _dilate(masks: Tensor, radius: float) -> Tensor:
    """Every pixel whose centre lies within ``radius`` of a mask pixel's centre."""
    r = int(radius)
    offsets = torch.arange(-r, r + 1, dtype=torch.float64, device=masks.device)
    disk = (offsets[:, None].square() + offsets[None, :].square() <= radius * radius)
    reach = F.conv2d(masks[:, None].to(torch.float32), disk[None, None].to(torch.float32),
                     padding=r)
    return reach[:, 0] > 0.5
