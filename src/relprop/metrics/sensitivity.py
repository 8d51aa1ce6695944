"""Is the map about the class? Correlation of the maps of two different targets.

A map that looks the same whichever class it is asked to explain tells where the network
looks, not why it decides for that class. Deep chains of positive-part rules (LRP-α1β0 /
z⁺, Guided Backprop) tend to such maps: the product of many non-negative matrices is close to
rank one, so the map hardly depends on the layers above (Sixt, Granz & Landgraf 2020, "When
explanations lie: why many modified BP attributions fail", ICML). Localisation scores (μ,
pointing game) cannot see this, since a class-blind map of the salient object scores as well
as a class-specific one; this metric can.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from ..explain import Explanation, explain
from ..targets import Target, class_indices
from .localisation import Scores
from .maps import Pool, check_pool, pool_channels
from .randomisation import check_map_pair, flat_finite, spearman

Correlation = Literal["pearson", "spearman"]
Attribute = Callable[[nn.Module, Tensor, Any], Explanation]

__all__ = ["Correlation", "map_correlation", "runner_up", "target_correlation"]


def map_correlation(a: Tensor, b: Tensor, pool: Pool | None = "sum",
                    correlation: Correlation = "pearson") -> Tensor:
    """Per-sample correlation of two batches of maps of the same shape, float64 ``(N,)``.

    Image maps ``(N, C, H, W)`` / ``(N, H, W)`` are channel-pooled with ``pool`` first
    (:func:`~relprop.metrics.pool_channels`); ``pool=None`` correlates all elements of maps
    of any shape ``(N, ...)`` (token maps, for instance).
    ``"pearson"``: ``ρ = Σ (a − ā)(b − b̄) / (‖a − ā‖ ‖b − b̄‖)`` over the elements of a
    sample; ``"spearman"``: the same over average ranks (:func:`~relprop.metrics.spearman`).
    ``NaN`` where either map is constant (``0 / 0``).
    """
    if correlation not in ("pearson", "spearman"):
        raise InvalidInputError(f"correlation must be 'pearson' or 'spearman', got {correlation!r}")
    check_map_pair(a, b)
    if pool is not None:
        check_pool(pool)
        if a.dim() not in (3, 4):
            raise InvalidInputError(
                f"pool={pool!r} needs image maps (N, C, H, W) or (N, H, W), got shape "
                f"{tuple(a.shape)}; pass pool=None to correlate all elements")
        a, b = pool_channels(a, pool), pool_channels(b, pool)
    if correlation == "spearman":
        return spearman(a, b)
    x, y = (flat_finite(v, n) for v, n in ((a, "a"), (b, "b")))
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    spread = x.norm(dim=1) * y.norm(dim=1)
    defined = spread > 0
    rho = (x * y).sum(dim=1) / torch.where(defined, spread, torch.ones_like(spread))
    return torch.where(defined, rho.clamp(-1.0, 1.0), torch.full_like(rho, float("nan")))


def runner_up(output: Tensor, target: Tensor) -> Tensor:
    """Per sample, the class with the highest output other than ``target``: ``(N,)`` long."""
    if output.dim() != 2 or output.shape[1] < 2:
        raise InvalidInputError(
            f"a contrasting class needs class scores (N, C) with C ≥ 2, got output shape "
            f"{tuple(output.shape)}")
    if target.shape != (output.shape[0],):
        raise InvalidInputError(f"target must be one class per sample ({output.shape[0]},), "
                                f"got shape {tuple(target.shape)}")
    others = output.detach().scatter(1, target[:, None].to(output.device), float("-inf"))
    return others.argmax(dim=1)


def _classes(target: object, output: Tensor, what: str) -> Tensor:
    if target is None:
        return output.detach().argmax(dim=1)
    if (isinstance(target, bool | float | str | Target)
            or not isinstance(target, int | Tensor | list | tuple)
            and not hasattr(target, "__array__")):
        raise InvalidInputError(
            f"{what} must be a class index, one index per sample (tensor, numpy array or "
            f"list of ints) or None, got {type(target).__name__}; target objects "
            "(LogOdds, …) have no contrasting class")
    # numpy integers and arrays, lists of ints: read by torch.as_tensor
    return class_indices(cast(Tensor, target), output, what)


def target_correlation(
        model: nn.Module, x: Tensor, target: int | Tensor | None = None,
        attribute: Attribute = explain, *, contrast: int | Tensor | None = None,
        pool: Pool | None = "sum", correlation: Correlation = "pearson") -> Scores:
    """Correlation between the map of ``target`` and the map of a contrasting class.

    ``ρ_n = corr(R(x_n; target_n), R(x_n; contrast_n))`` per sample (:func:`map_correlation`).
    Near 1: the map is (nearly) the same whichever class is explained, so it cannot be what
    distinguishes the decision for ``target`` (Sixt et al. 2020; cf. the class-discriminative
    requirement of Gu, Yang & Tresp 2018, "Understanding individual decisions of CNNs via
    contrastive backpropagation"). Lower is more class-specific; 0 is unrelated maps.

    Args:
        model: the classifier, ``model(x)`` of shape ``(N, C)``; it is not modified.
        x: the input batch.
        target: the explained class: an index, one per sample, or ``None`` (the top class).
        attribute: ``attribute(model, x, target) -> Explanation``, e.g. ``relprop.explain``
            (default) or a :mod:`relprop.methods` method; wrap it to fix other arguments.
        contrast: the other class, same forms; ``None``: the highest-scoring class other
            than ``target`` (:func:`runner_up`). It must differ from ``target`` everywhere.
        pool: channel pooling of image maps; ``None`` correlates all elements.
        correlation: ``"pearson"`` (default) or ``"spearman"``.

    Returns:
        :class:`Scores` with ``ρ`` per sample (``NaN`` where a map is constant) and the
        protocol, including both classes per sample.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(attribute):
        raise InvalidInputError("attribute must be callable as attribute(model, x, target), "
                                f"got {type(attribute).__name__}")
    if pool is not None:
        check_pool(pool)
    with torch.no_grad():
        output = model(x)
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise InvalidInputError(f"target_correlation needs class scores (N, C) from the model, "
                                f"got {shape}")
    explained = _classes(target, output, "target")
    other = runner_up(output, explained) if contrast is None else _classes(contrast, output,
                                                                           "contrast")
    same = other == explained
    if bool(same.any()):
        raise InvalidInputError(f"contrast equals target in sample(s) "
                                f"{same.nonzero()[:, 0].tolist()[:10]}: the maps would be "
                                "identical by construction")
    first = attribute(model, x, explained).relevance
    second = attribute(model, x, other).relevance
    rho = map_correlation(first, second, pool, correlation)
    protocol: dict[str, object] = {
        "metric": "target_correlation", "correlation": correlation, "pool": pool,
        "target": explained.tolist(), "contrast": other.tolist(),
        "contrast_rule": "runner-up (highest other output)" if contrast is None else "given",
        "undefined": "NaN: a map is constant",
    }
    return Scores(per_sample=rho, protocol=protocol)
