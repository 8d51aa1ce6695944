"""Relevance maps and ground-truth regions as the metrics read them.

A map is ``(N, C, H, W)`` (channels are pooled with :func:`pool_channels`) or ``(N, H, W)``
(a one-channel map: the pools then act on that single channel, e.g. ``"pos_sum"`` keeps its
positive part). A region is either boxes ``(N, 4)`` as ``(x0, y0, x1, y1)`` pixel
coordinates or a boolean mask ``(N, H, W)``; :func:`region_masks` turns both into masks.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from ..errors import InvalidInputError

Pool = Literal["sum", "pos_sum", "abs_sum", "l2", "max_abs"]
POOLS: tuple[str, ...] = get_args(Pool)


def check_pool(pool: object) -> Pool:
    """Return ``pool`` if it names a channel pooling, else raise naming the choices."""
    if pool not in POOLS:
        raise InvalidInputError(f"pool must be one of {POOLS}, got {pool!r}")
    return pool  # type: ignore[return-value]


def check_map(relevance: object, name: str = "relevance") -> Tensor:
    """Check a batch of maps ``(N, C, H, W)`` or ``(N, H, W)``: floating point and finite."""
    if not isinstance(relevance, Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(relevance).__name__}")
    if relevance.dim() not in (3, 4) or relevance.shape[0] == 0:
        raise InvalidInputError(
            f"{name} must be a non-empty batch of maps (N, C, H, W) or (N, H, W), got shape "
            f"{tuple(relevance.shape)}; add the batch dimension for a single map (r[None])"
        )
    if not relevance.is_floating_point():
        raise InvalidInputError(f"{name} must be floating point, got dtype {relevance.dtype}")
    finite = torch.isfinite(relevance.reshape(relevance.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        samples = (~finite).nonzero()[:, 0].tolist()
        raise InvalidInputError(
            f"{name} contains NaN or inf in sample(s) {samples[:10]}"
            + (f" and {len(samples) - 10} more" if len(samples) > 10 else "")
            + "; a metric of a broken map would be meaningless: fix or drop those samples"
        )
    return relevance


def pool_channels(relevance: Tensor, pool: Pool = "sum") -> Tensor:
    """Reduce a map over channels: ``(N, C, H, W)`` or ``(N, H, W)`` to ``(N, H, W)``.

    With ``R_c`` the relevance of channel ``c`` at a pixel:
    ``"sum"``: ``Σ_c R_c`` (keeps signs: evidence for and against cancels);
    ``"pos_sum"``: ``Σ_c max(R_c, 0)``; ``"abs_sum"``: ``Σ_c |R_c|`` (L1);
    ``"l2"``: ``(Σ_c R_c²)^½``; ``"max_abs"``: ``max_c |R_c|``.
    A 3-D map is one channel per pixel, so ``"sum"`` returns it unchanged and the other
    pools return its positive part or its absolute value.
    """
    check_map(relevance)
    pool = check_pool(pool)
    r = relevance if relevance.dim() == 4 else relevance[:, None]
    if pool == "sum":
        return r.sum(dim=1)
    if pool == "pos_sum":
        return r.clamp(min=0).sum(dim=1)
    if pool == "abs_sum":
        return r.abs().sum(dim=1)
    if pool == "l2":
        return r.square().sum(dim=1).sqrt()
    return r.abs().amax(dim=1)


def region_masks(region: Tensor, batch: int, height: int, width: int) -> Tensor:
    """Boolean masks ``(N, H, W)`` of a region given as boxes ``(N, 4)`` or masks ``(N, H, W)``.

    A box ``(x0, y0, x1, y1)`` covers the pixels whose *centres* lie inside it:
    column ``j`` iff ``x0 ≤ j + ½ < x1``, row ``i`` iff ``y0 ≤ i + ½ < y1``. For integer
    coordinates this is the slice ``[y0:y1, x0:x1]`` (half-open, like Python), so the area is
    ``(x1 − x0)(y1 − y0)``; fractional boxes (after rescaling) need no rounding. A box must
    lie inside the image (``0 ≤ x0``, ``x1 ≤ W``, same for y) and cover at least one pixel
    centre; a mask must have at least one ``True`` pixel. Both rules raise
    :class:`~relprop.InvalidInputError` naming the samples, since a score over an empty
    region would be a division by zero.
    """
    if not isinstance(region, Tensor):
        raise InvalidInputError(
            f"region must be a tensor of boxes (N, 4) or boolean masks (N, H, W), got "
            f"{type(region).__name__}"
        )
    if region.dtype == torch.bool:
        masks = region
        if masks.shape != (batch, height, width):
            raise InvalidInputError(
                f"masks must have shape (N, H, W) = {(batch, height, width)} to match the "
                f"maps, got {tuple(masks.shape)} (one mask per sample: expand a shared mask "
                "with mask.expand(N, H, W); squeeze a channel dimension)"
            )
    else:
        masks = _box_masks(region, batch, height, width)
    empty = ~masks.reshape(batch, -1).any(dim=1)
    if bool(empty.any()):
        raise InvalidInputError(
            f"the region of sample(s) {empty.nonzero()[:, 0].tolist()[:10]} is empty (zero "
            "area): localisation is undefined there; drop those samples"
        )
    return masks


def _box_masks(boxes: Tensor, batch: int, height: int, width: int) -> Tensor:
    if boxes.shape != (batch, 4):
        raise InvalidInputError(
            f"boxes must have shape (N, 4) = ({batch}, 4) as (x0, y0, x1, y1), got "
            f"{tuple(boxes.shape)}; masks must be boolean (N, H, W)"
        )
    if boxes.is_complex():
        raise InvalidInputError(f"boxes must be real pixel coordinates, got dtype {boxes.dtype}")
    b = boxes.to(torch.float64)
    if not bool(torch.isfinite(b).all()):
        raise InvalidInputError("boxes contain NaN or inf")
    x0, y0, x1, y1 = b.unbind(dim=1)
    outside = (x0 < 0) | (y0 < 0) | (x1 > width) | (y1 > height)
    if bool(outside.any()):
        bad = outside.nonzero()[:, 0].tolist()
        raise InvalidInputError(
            f"box(es) of sample(s) {bad[:10]} lie outside the {height}x{width} image, e.g. "
            f"{boxes[bad[0]].tolist()}; boxes are (x0, y0, x1, y1) with 0 ≤ x0 < x1 ≤ W = "
            f"{width} and 0 ≤ y0 < y1 ≤ H = {height}: clip them to the image"
        )
    cols = torch.arange(width, dtype=torch.float64, device=boxes.device) + 0.5
    rows = torch.arange(height, dtype=torch.float64, device=boxes.device) + 0.5
    in_x = (cols >= x0[:, None]) & (cols < x1[:, None])
    in_y = (rows >= y0[:, None]) & (rows < y1[:, None])
    return in_y[:, :, None] & in_x[:, None, :]


def pooled_with_masks(relevance: Tensor, region: Tensor, pool: Pool) -> tuple[Tensor, Tensor]:
    """Pool a batch of maps to ``(N, H, W)`` in float64 and the region's masks on its device."""
    pooled = pool_channels(check_map(relevance).to(torch.float64), pool)
    n, h, w = pooled.shape
    masks = region_masks(region.to(pooled.device), n, h, w)
    return pooled, masks
