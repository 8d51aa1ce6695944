"""Units of a layer: which axis holds them, which indices a concept takes, masks and sums.

A unit is a channel of a convolutional feature map (axis 1 of ``(B, C, *spatial)``), a
neuron of a dense or transformer layer (the last axis of ``(B, D)`` or ``(B, T, D)``), or,
with ``heads=H``, a group of ``D / H`` consecutive neurons (an attention head's slice of the
input of the output projection). A concept is one unit or a set of units.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral
from typing import Any

import torch
from torch import Tensor

from ._errors import UnitIndexError

Units = int | Iterable[int | Iterable[int]]


def unit_axis(shape: Sequence[int], input_dim: int, tokens: bool, unit_dim: int | None) -> int:
    """The axis of ``shape`` (a layer output with its batch axis) that holds the units.

    Default: channels (axis 1) for feature maps of the input's rank (``(B, C, H, W)`` of an
    image net, ``(B, C, L)`` of a 1-D conv net), the last axis otherwise (dense layers,
    transformer layers, also a ViT's ``(B, T, D)`` on images).
    """
    rank = len(shape)
    if unit_dim is not None:
        if not -rank < unit_dim < rank or unit_dim in (0, -rank):
            raise UnitIndexError(
                f"unit_dim={unit_dim} is not a non-batch axis of the layer output of shape "
                f"{tuple(shape)}")
        return unit_dim % rank
    if rank >= 3 and rank == input_dim and not tokens:
        return 1
    return rank - 1


def count(shape: Sequence[int], axis: int, heads: int | None) -> int:
    """How many units the layer has along ``axis``."""
    size = shape[axis]
    if heads is None:
        return size
    if heads < 1 or size % heads:
        raise UnitIndexError(
            f"heads={heads} does not divide the {size} neurons of axis {axis} of the layer "
            "output into equal groups")
    return heads


def concepts(units: Units, n: int, layer: str) -> list[tuple[int, ...]]:
    """``units`` as a list of concepts, each a tuple of unit indices in ``range(n)``."""
    items: Any = units
    if isinstance(items, Integral) or isinstance(items, Tensor) and items.dim() == 0:
        items = [int(items)]
    if isinstance(items, Tensor):
        items = items.tolist()
    result: list[tuple[int, ...]] = []
    for item in items:
        group = (int(item),) if isinstance(item, Integral | Tensor) else tuple(
            int(i) for i in item)
        if not group:
            raise UnitIndexError(f"an empty set of units was given for layer {layer!r}")
        for i in group:
            if not 0 <= i < n:
                raise UnitIndexError(
                    f"unit {i} is out of range for layer {layer!r}, which has {n} units "
                    f"(0..{n - 1})")
        result.append(group)
    if not result:
        raise UnitIndexError(f"no units were given for layer {layer!r}")
    return result


def masks(groups: Sequence[tuple[int, ...]], shape: Sequence[int], axis: int,
          heads: int | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(K, *shape)`` masks: 1 on the units of concept ``k``, 0 elsewhere."""
    size = shape[axis]
    width = 1 if heads is None else size // heads
    along = torch.zeros(len(groups), size, dtype=dtype, device=device)
    for k, group in enumerate(groups):
        for unit in group:
            along[k, unit * width:(unit + 1) * width] = 1
    view = [len(groups)] + [1] * len(shape)
    view[1 + axis] = size
    return along.view(view).expand(len(groups), *shape)


def per_unit(relevance: Tensor, axis: int, heads: int | None) -> Tensor:
    """``(B, n_units)``: a layer's relevance summed over everything but batch and units."""
    moved = relevance.movedim(axis, -1)
    summed = moved.reshape(moved.shape[0], -1, moved.shape[-1]).sum(1)
    if heads is not None:
        summed = summed.reshape(summed.shape[0], heads, -1).sum(-1)
    return summed


def per_unit_max(relevance: Tensor, axis: int, heads: int | None) -> Tensor:
    """``(B, n_units)``: a layer's values maximised over positions (summed within a head)."""
    moved = relevance.movedim(axis, -1)
    flat = moved.reshape(moved.shape[0], -1, moved.shape[-1])
    if heads is not None:
        flat = flat.reshape(*flat.shape[:2], heads, -1).sum(-1)
    return flat.amax(1)
