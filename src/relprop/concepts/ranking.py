"""Which units of a layer carry a prediction (``top_units``), and which lower units feed an
upper unit's relevance (``composition``: CRP's attribution graph over two or more layers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..composites import Composite
from ..errors import InvalidInputError
from ._backward import Batching, signals
from ._errors import LayerNotOnPathError
from ._forward import shared_forward
from ._units import concepts, count, masks, per_unit, unit_axis
from .explain import layer_relevance

__all__ = ["UnitRanking", "ConceptGraph", "GraphEdge", "top_units", "composition"]


@dataclass
class UnitRanking:
    """The ``k`` units of a layer with the most relevance, per sample (descending)."""

    layer: str
    #: ``(B, k)`` unit indices, and their relevance at the layer
    units: Tensor
    relevance: Tensor
    #: ``(B,)``: the layer's total relevance (the shares are ``relevance / total``)
    total: Tensor


def top_units(model: nn.Module, x: Tensor, target: Any = None, layer: str = "", k: int = 10,
              composite: Composite | None = None, *, by: str = "relevance",
              unit_dim: int | None = None, heads: int | None = None, strict: bool = True,
              forward_kwargs: dict[str, Any] | None = None) -> UnitRanking:
    """Rank the units of ``layer`` by their relevance for the prediction: one forward pass and
    one backward pass from the output down to the layer.

    ``by="relevance"`` ranks by signed relevance (most positive first); ``"abs"`` by its
    magnitude (units that speak against the prediction count too).
    """
    if by not in ("relevance", "abs"):
        raise InvalidInputError(f"by must be 'relevance' or 'abs', got {by!r}")
    with shared_forward(model, x, target, composite, [layer], strict=strict,
                        forward_kwargs=forward_kwargs) as forward:
        info, _ = layer_relevance(forward, layer, unit_dim, heads, heatmap=False)
        scores = per_unit(info.relevance.detach(), info.axis, heads)
    k = _check_k(k, scores.shape[1], layer)
    order = (scores.abs() if by == "abs" else scores).topk(k, dim=1).indices
    return UnitRanking(layer, order, scores.gather(1, order), scores.sum(1))


def _check_k(k: int, n: int, layer: str) -> int:
    if not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    return min(k, n)


@dataclass(frozen=True)
class GraphEdge:
    """Relevance that the lower unit passes on to the upper one, for one sample, conditioned
    on the whole path of units above it (``path``: (layer, unit) from the top, upper last)."""

    sample: int
    path: tuple[tuple[str, int], ...]
    lower: tuple[str, int]
    relevance: float

    @property
    def upper(self) -> tuple[str, int]:
        return self.path[-1]


@dataclass
class ConceptGraph:
    """CRP's attribution graph: the top unit, and under it the ``k`` units of each lower layer
    that carry most of its relevance (per sample; deeper layers conditioned on the path)."""

    root: tuple[str, int]
    #: ``(B,)``: relevance of the root unit at its layer
    root_relevance: Tensor
    layers: list[str]
    edges: list[GraphEdge] = field(default_factory=list)

    def children(self, sample: int, path: Sequence[tuple[str, int]] | None = None
                 ) -> list[GraphEdge]:
        """The edges below ``path`` (default: the root) for one sample, most relevant first."""
        wanted = tuple(path) if path is not None else (self.root,)
        found = [e for e in self.edges if e.sample == sample and e.path == wanted]
        return sorted(found, key=lambda e: -e.relevance)


def composition(model: nn.Module, x: Tensor, target: Any = None, *,
                upper: tuple[str, int], lower: str | Sequence[str], k: int = 5,
                composite: Composite | None = None, unit_dim: int | None = None,
                strict: bool = True, forward_kwargs: dict[str, Any] | None = None,
                batch_units: int | None = 32) -> ConceptGraph:
    """The lower units that feed the relevance of the upper unit ``upper = (layer, unit)``.

    ``lower`` is one layer or a list of layers, top to bottom: at each, the ``k`` units with
    the most relevance conditioned on the path above are kept and expanded further (``k**d``
    paths at depth ``d``). Each level costs one batched backward pass between two layers.
    """
    layers = [lower] if isinstance(lower, str) else list(lower)
    if not layers:
        raise InvalidInputError("lower must name at least one layer")
    top, unit = upper
    with shared_forward(model, x, target, composite, [top, *layers], strict=strict,
                        forward_kwargs=forward_kwargs) as forward:
        info, _ = layer_relevance(forward, top, unit_dim, None, heatmap=False)
        (unit,) = concepts([unit], info.units, top)[0]
        root_relevance = per_unit(info.relevance.detach(), info.axis, None)[:, unit]
        graph = ConceptGraph((top, unit), root_relevance, [top, *layers])
        mask = masks([(unit,)], info.signal.shape, info.axis, None, info.signal.dtype,
                     info.signal.device)
        seeds = info.signal.unsqueeze(0) * mask  # (F, B, *shape): F paths, one per sample
        paths: list[list[tuple[tuple[str, int], ...]]] = [[((top, unit),)] * x.shape[0]]
        edge, batching = info.layer.edge, Batching(chunk=batch_units)
        for name in layers:
            below = forward.layer(name)
            (signal,) = signals(forward, edge, seeds, [below.edge], batching)
            if signal is None:
                raise LayerNotOnPathError(
                    f"layer {name!r} is not below {graph.layers[graph.layers.index(name) - 1]!r}"
                    ": no relevance passes from the upper layer to it")
            axis = unit_axis(signal.shape[1:], forward.x.dim(), forward.tokens, unit_dim)
            relevance = per_unit((below.activations * signal).detach().flatten(0, 1), axis,
                                 None).view(*signal.shape[:2], -1)  # (F, B, n)
            n = count(signal.shape[1:], axis, None)
            chosen = relevance.topk(_check_k(k, n, name), dim=2)
            _add_edges(graph, paths, name, chosen.indices, chosen.values)
            seeds = _select(signal, chosen.indices, axis)
            paths = [[(*paths[f][b], (name, int(chosen.indices[f, b, j])))
                      for b in range(signal.shape[1])]
                     for f in range(signal.shape[0]) for j in range(chosen.indices.shape[2])]
            edge = below.edge
    return graph


def _add_edges(graph: ConceptGraph, paths: list[list[tuple[tuple[str, int], ...]]], name: str,
               units: Tensor, values: Tensor) -> None:
    for f, per_sample in enumerate(paths):
        for b, path in enumerate(per_sample):
            for j in range(units.shape[2]):
                graph.edges.append(GraphEdge(b, path, (name, int(units[f, b, j])),
                                             float(values[f, b, j])))


def _select(signal: Tensor, units: Tensor, axis: int) -> Tensor:
    """``(F·k, B, *shape)``: each path's signal masked to each of its ``k`` chosen units."""
    paths, batch, k = units.shape
    size = signal.shape[2 + axis - 1]
    onehot = torch.nn.functional.one_hot(units, size).to(signal.dtype)  # (F, B, k, size)
    onehot = onehot.permute(0, 2, 1, 3)  # (F, k, B, size)
    view = [paths, k, batch] + [1] * (signal.dim() - 2)
    view[3 + axis - 1] = size
    return (signal.unsqueeze(1) * onehot.reshape(view)).flatten(0, 1)
