"""Per-sample metric columns a run can add to its index (``--metrics``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..metrics import region_perturbation

__all__ = ["METRICS"]

Metric = Callable[[nn.Module, Tensor, Tensor, Tensor, Tensor], Tensor]


def _flat(relevance: Tensor) -> Tensor:
    return relevance.detach().float().reshape(relevance.shape[0], -1)


def positive_share(model: nn.Module, x: Tensor, relevance: Tensor, target: Tensor,
                   explained: Tensor) -> Tensor:
    """``Σ max(R, 0) / Σ |R|`` per sample: 1 when all evidence is for the class."""
    flat = _flat(relevance)
    return flat.clamp(min=0).sum(1) / flat.abs().sum(1).clamp(min=1e-30)


def conservation_error(model: nn.Module, x: Tensor, relevance: Tensor, target: Tensor,
                       explained: Tensor) -> Tensor:
    """``|Σ R − f_c(x)| / |f_c(x)|`` per sample (0 for a conservative explanation)."""
    total = _flat(relevance).sum(1)
    reference = explained.detach().float().reshape(-1)
    return (total - reference).abs() / reference.abs().clamp(min=1e-30)


def aopc(model: nn.Module, x: Tensor, relevance: Tensor, target: Tensor,
         explained: Tensor) -> Tensor:
    """Region-perturbation MoRF AOPC (Samek et al. 2017) per sample: regions of side
    ``max(2, min(H, W) // 8)``, 16 steps, seed 0; images only (NaN otherwise)."""
    if x.dim() != 4 or min(x.shape[-2:]) < 4:
        return torch.full((x.shape[0],), float("nan"))
    size = max(2, min(x.shape[-2:]) // 8)
    regions = -(-x.shape[-2] // size) * -(-x.shape[-1] // size)
    result = region_perturbation(model, x, relevance, target, order="morf", region_size=size,
                                 steps=min(16, regions), seed=0)
    return result.aopc_per_sample.float()


#: metric columns by name: ``f(model, x, relevance, target, explained) -> (N,)``
METRICS: dict[str, Metric] = {
    "positive_share": positive_share,
    "conservation_error": conservation_error,
    "aopc": aopc,
}
