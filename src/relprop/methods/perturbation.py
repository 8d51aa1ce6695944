"""Attributions that only evaluate the model: occlusion, and a random baseline for metrics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from ..explain import Explanation
from ._bound import bound_method
from ._common import (
    TargetLike,
    check_call,
    check_values,
    clean_pass,
    copies,
    cpu_generator,
    per_sample,
    positive_int,
    sample_tensor,
    score,
)


def _per_dim(value: int | tuple[int, ...], name: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    values = (value,) * len(sizes) if isinstance(value, int) else value
    if not isinstance(values, tuple) or len(values) != len(sizes):
        raise InvalidInputError(f"{name} must be an int or a tuple of {len(sizes)} ints (one per "
                                f"occluded dimension, sizes {sizes}); got {value!r}")
    for v in values:
        positive_int(v, name)
    return values


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window positions along one dimension; the last one is moved in to reach the end."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def _masks(corners: Tensor, window: tuple[int, ...], sizes: tuple[int, ...]) -> Tensor:
    """Boolean masks ``(k, *sizes)`` of the windows whose first corners are ``corners``."""
    mask: Tensor | None = None
    for d, (w, size) in enumerate(zip(window, sizes)):
        position = torch.arange(size, device=corners.device)
        start = corners[:, d:d + 1]
        inside = (position >= start) & (position < start + w)  # (k, size)
        inside = inside.reshape(inside.shape[0], *([1] * d), size)
        mask = inside if mask is None else mask.unsqueeze(-1) & inside
    assert mask is not None
    return mask


def _coverage(grids: list[Tensor], window: tuple[int, ...], sizes: tuple[int, ...]) -> Tensor:
    """How many windows cover each position: the outer product of per-dimension counts."""
    counts: Tensor | None = None
    for d, (starts, w, size) in enumerate(zip(grids, window, sizes)):
        position = torch.arange(size, device=starts.device)
        inside = (position >= starts[:, None]) & (position < starts[:, None] + w)
        count = inside.sum(dim=0).reshape(*([1] * d), size)
        counts = count if counts is None else counts.unsqueeze(-1) * count
    assert counts is not None
    return counts


@bound_method
def occlusion(model: nn.Module, x: Tensor, target: TargetLike = None, *,
              window: int | tuple[int, ...] = 8, stride: int | tuple[int, ...] = 4,
              fill: float | Tensor = 0.0, batch_size: int = 64) -> Explanation:
    """Occlusion: ``R_p = mean over windows W ∋ p of f(x) − f(x with W set to fill)``.

    Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks". A window
    slides over the spatial dimensions of ``(batch, channels, *spatial)`` inputs, covering all
    channels (every channel of a pixel gets the pixel's relevance), or over the features of
    ``(batch, features)`` inputs. Windows that would not reach the end are complemented by one
    flush with it, so every position is covered. The model is only evaluated (no gradient),
    on batches of occluded copies.

    Args:
        window: window size, an int or one int per occluded dimension.
        stride: step between windows, an int or one int per occluded dimension.
        fill: the occluding value: a number, one sample's shape, or ``x``'s shape.
        batch_size: occluded copies per forward pass; lower it if memory runs out.
    """
    check_call(model, x)
    x = x.detach()
    sizes = tuple(x.shape[1:] if x.dim() == 2 else x.shape[2:])
    if not sizes:
        raise InvalidInputError(f"occlusion needs x of shape (batch, features) or (batch, "
                                f"channels, *spatial); got {tuple(x.shape)}")
    window = _per_dim(window, "window", sizes)
    stride = _per_dim(stride, "stride", sizes)
    if any(w > size for w, size in zip(window, sizes)):
        raise InvalidInputError(f"window {window} is larger than the occluded sizes {sizes}; "
                                "pass a smaller window")
    batch_size = positive_int(batch_size, "batch_size")
    fill_value = sample_tensor(fill, "fill", x)
    reference = clean_pass(model, x, target)
    clean_score = score(reference.output, reference.seed)
    grids = [torch.tensor(_starts(n, w, s), device=x.device)
             for n, w, s in zip(sizes, window, stride)]
    corners = torch.cartesian_prod(*grids).reshape(-1, len(sizes))
    drops = torch.zeros((x.shape[0], *sizes), dtype=x.dtype, device=x.device)
    for sample, k in copies(x.shape[0], corners.shape[0], batch_size, x.device):
        masks = _masks(corners[k], window, sizes)
        channels = masks.unsqueeze(1) if x.dim() > 2 else masks
        occluded = torch.where(channels, fill_value[sample], x[sample])
        with torch.no_grad():
            output = model(occluded)
        check_values(output)
        drop = clean_score[sample] - score(output, reference.seed[sample])
        drops.index_add_(0, sample, per_sample(drop, masks.dim()) * masks)
    relevance = drops / _coverage(grids, window, sizes)
    if x.dim() > 2:
        relevance = relevance.unsqueeze(1).expand_as(x).contiguous()
    return reference.explanation(
        relevance, f"occlusion(window={window}, stride={stride}, fill={_name(fill)})")


def _name(value: float | Tensor) -> str:
    return "tensor" if isinstance(value, Tensor) else repr(float(value))


@bound_method
def random_baseline(model: nn.Module, x: Tensor, target: TargetLike = None, *,
                    seed: int = 0) -> Explanation:
    """A random relevance map ``R_i ~ U(0, 1)``, independent of the model: the floor any
    attribution method should beat on a quality metric.

    The draws are made on the CPU from ``seed``, so they are the same on every device. The
    model still runs once, for ``output`` and ``explained``.
    """
    check_call(model, x)
    generator = cpu_generator(seed)
    reference = clean_pass(model, x, target)
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return reference.explanation(noise, f"random_baseline(seed={seed})")
