"""Measuring explanation quality: localisation, perturbation and randomisation metrics.

Every function takes batches and returns a small result object that carries its
``protocol`` (pooling, region size, steps, noise, seed, score space, …) so that a number
never travels without the recipe that produced it. Per-sample scores are float64 and
``NaN`` exactly where a score is undefined (see each function); bad input raises
:class:`relprop.InvalidInputError`.

- channel pooling: :func:`pool_channels`; regions: :func:`region_masks`
- localisation: :func:`attribution_localisation` (μ, μ_w), :func:`localisation_summary`,
  :func:`pointing_game`, :func:`relevance_mass_accuracy`, :func:`relevance_rank_accuracy`
- perturbation: :func:`region_perturbation` (AOPC), :func:`pixel_flipping`, :func:`abpc`
- randomisation: :func:`model_parameter_randomisation`, :func:`spearman`
- class sensitivity: :func:`target_correlation`, :func:`map_correlation`, :func:`runner_up`
"""

from .localisation import (
    LocalisationResult,
    Scores,
    attribution_localisation,
    localisation_summary,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from .maps import POOLS, Pool, pool_channels, region_masks
from .perturbation import ABPCResult, PerturbationResult, abpc, pixel_flipping, region_perturbation
from .randomisation import RandomisationResult, model_parameter_randomisation, spearman
from .sensitivity import Correlation, map_correlation, runner_up, target_correlation

__all__ = [
    "POOLS", "Pool", "pool_channels", "region_masks",
    "LocalisationResult", "Scores", "attribution_localisation", "localisation_summary",
    "pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy",
    "ABPCResult", "PerturbationResult", "abpc", "pixel_flipping", "region_perturbation",
    "RandomisationResult", "model_parameter_randomisation", "spearman",
    "Correlation", "map_correlation", "runner_up", "target_correlation",
]
