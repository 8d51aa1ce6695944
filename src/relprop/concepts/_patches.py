"""Reference patches: the part of a sample where a unit's conditional relevance lies."""

from __future__ import annotations

import torch
from torch import Tensor


def positions_map(relevance: Tensor, tokens: bool) -> Tensor:
    """A conditional map reduced to positions: channels summed for images ``(C, *spatial)``;
    token and feature maps as they are."""
    if tokens or relevance.dim() < 2:
        return relevance
    return relevance.sum(0)


def box(positions: Tensor, fraction: float = 0.25, padding: int = 1, min_size: int = 4
        ) -> list[int]:
    """``[start_0, stop_0, start_1, stop_1, ...]``: the smallest box holding every position
    whose relevance is at least ``fraction`` of the largest, padded and at least ``min_size``
    wide (the whole sample where no relevance is positive)."""
    bounds: list[int] = []
    peak = positions.max()
    if not bool(peak > 0):
        for size in positions.shape:
            bounds += [0, size]
        return bounds
    hot = positions >= fraction * peak
    for dim, size in enumerate(positions.shape):
        other = [d for d in range(positions.dim()) if d != dim]
        along = hot.any(dim=other) if other else hot
        where = along.nonzero().flatten()
        start, stop = int(where.min()) - padding, int(where.max()) + 1 + padding
        width = max(stop - start, min(min_size, size))
        centre = (start + stop) // 2
        start = max(0, min(centre - width // 2, size - width))
        bounds += [start, min(size, start + width)]
    return bounds


def crop(sample: Tensor, bounds: list[int], tokens: bool) -> Tensor:
    """``sample`` cut to ``bounds`` along its position axes (all but the channel axis of an
    image; every axis of token ids)."""
    lead = 0 if tokens or sample.dim() < 2 else 1
    index: list[slice] = [slice(None)] * lead
    for i in range(0, len(bounds), 2):
        index.append(slice(bounds[i], bounds[i + 1]))
    return sample[tuple(index)]


def empty_boxes(units: int, k: int, dims: int) -> Tensor:
    return torch.full((units, k, 2 * dims), -1, dtype=torch.long)
