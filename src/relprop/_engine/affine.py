"""BatchNorm scales and shifts, made for all the BatchNorms of a forward pass at once.

A BatchNorm merged into the layer before it is ``y = scale · z + shift`` per channel, with
``scale = weight / sqrt(running_var + eps)`` and ``shift = bias − running_mean · scale``. The
forward pass does not need them (the model's own BatchNorm computes ``y``), only the rules on
the way back do. Made one BatchNorm at a time right after its convolution, they were four
small ops each, and a small op costs its fixed ≈ 5-10 µs however few values it has
(ResNet-50's 53 BatchNorms: 1.1-2.5 ms of the forward pass at any image size). Here the
forward pass notes what each is made from (:meth:`AffineBatch.defer`) and the first rule that
reads one makes them all at once, over their statistics concatenated: the same arithmetic per
value, to the bit, in about 0.5 ms.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from ..errors import RelpropError


class DeferredAffine:
    """The ``scale`` and ``shift`` of one BatchNorm call, made on first read (with the others
    of its :class:`AffineBatch`), in ``dtype`` (the merged layer's)."""

    __slots__ = ("_batch", "sources", "_versions", "dtype", "path", "_values")

    def __init__(self, batch: AffineBatch, var: Tensor, mean: Tensor, weight: Tensor | None,
                 bias: Tensor | None, eps: float, dtype: torch.dtype, path: str) -> None:
        self._batch = batch
        self.sources = (var, mean, weight, bias, eps)
        self._versions = _versions(var, mean, weight, bias)
        self.dtype, self.path = dtype, path
        self._values: tuple[Tensor, Tensor] | None = None

    @property
    def scale(self) -> Tensor:
        return self._made()[0]

    @property
    def shift(self) -> Tensor:
        return self._made()[1]

    def _made(self) -> tuple[Tensor, Tensor]:
        if self._values is None:
            self._batch.make()
        assert self._values is not None
        return self._values

    def _set(self, scale: Tensor, shift: Tensor) -> None:
        if scale.dtype != self.dtype or shift.dtype != self.dtype:
            scale, shift = scale.to(self.dtype), shift.to(self.dtype)
        self._values = (scale, shift)

    def _check_unchanged(self) -> None:
        var, mean, weight, bias, _ = self.sources
        if _versions(var, mean, weight, bias) != self._versions:
            raise RelpropError(
                f"the BatchNorm at '{self.path or '<model>'}' had its running statistics or "
                "parameters written in place, past relprop's interception, after the model "
                "used them: relprop no longer has the values it normalised with. Write them "
                "outside the forward pass.")


def _versions(*tensors: Tensor | None) -> tuple[int, ...]:
    return tuple(-1 if t is None else t._version for t in tensors)


class AffineBatch:
    """The BatchNorms of one forward pass whose scale and shift are still to be made."""

    def __init__(self) -> None:
        self._pending: list[DeferredAffine] = []

    @property
    def pending(self) -> bool:
        """Whether some scale and shift are still to be made."""
        return bool(self._pending)

    def defer(self, var: Tensor, mean: Tensor, weight: Tensor | None, bias: Tensor | None,
              eps: float, dtype: torch.dtype, path: str) -> DeferredAffine:
        """Note a BatchNorm call; its scale and shift are made when one is first read."""
        affine = DeferredAffine(self, var, mean, weight, bias, eps, dtype, path)
        self._pending.append(affine)
        return affine

    def make(self) -> None:
        """Make the scale and shift of every pending BatchNorm: the statistics of all that
        share a dtype, device and eps concatenated, the formula once over them, and each
        BatchNorm's part a view (the same arithmetic per value as one by one, so the same
        bits). A group whose tensors torch would promote to a wider dtype than the running
        variance's (or that do not concatenate) is made op by op, as before."""
        for affine in self._pending:  # before any is made: an error leaves them pending
            affine._check_unchanged()
        pending, self._pending = self._pending, []
        groups: dict[tuple[Any, ...], list[DeferredAffine]] = {}
        for affine in pending:
            var, _, weight, bias, eps = affine.sources
            key = (var.dtype, var.device, weight is None, bias is None, eps)
            groups.setdefault(key, []).append(affine)
        with torch.no_grad():
            for (dtype, _, no_weight, no_bias, eps), group in groups.items():
                made = _joined(group, dtype, no_weight, no_bias, eps)
                if made is None:
                    for affine in group:
                        affine._set(*affine_of(*affine.sources))
                    continue
                scales, shifts = made
                sizes = [a.sources[0].numel() for a in group]
                for affine, scale, shift in zip(group, scales.split(sizes),
                                                shifts.split(sizes), strict=True):
                    affine._set(scale, shift)


def _joined(group: list[DeferredAffine], dtype: torch.dtype, no_weight: bool, no_bias: bool,
            eps: float) -> tuple[Tensor, Tensor] | None:
    """The scales and shifts of ``group`` over its tensors concatenated, or ``None`` where
    that would not be the op-by-op arithmetic (a tensor of a wider dtype, other devices,
    statistics that are not one value per channel)."""
    def joined(i: int) -> Tensor:
        return torch.cat([cast(Tensor, a.sources[i]) for a in group])

    try:
        var, mean = joined(0), joined(1)
        weight = None if no_weight else joined(2)
        bias = None if no_bias else joined(3)
    except RuntimeError:
        return None
    if any(t is not None and (t.dtype != dtype or t.dim() != 1)
           for t in (var, mean, weight, bias)):
        return None
    return affine_of(var, mean, weight, bias, eps)


def affine_of(var: Tensor, mean: Tensor, weight: Tensor | None, bias: Tensor | None,
              eps: float) -> tuple[Tensor, Tensor]:
    """A BatchNorm's ``(scale, shift)`` now, op by op (one that no layer absorbs, or one that
    cannot be made with others)."""
    with torch.no_grad():
        scale = (var + eps).rsqrt_()
        if weight is not None:
            scale = scale.mul_(weight) if weight.dtype == scale.dtype else scale * weight
        shift = (mean * scale).neg_() if bias is None \
            else torch.addcmul(bias, mean, scale, value=-1)
    return scale, shift
