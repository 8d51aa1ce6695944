"""``concepts.explain``: relevance of a prediction conditioned on units of a layer (CRP).

Concept Relevance Propagation (Achtibat et al., *Nature Machine Intelligence* 5, 2023) asks
how much of the relevance of a prediction passes through a set of units θ of a layer, and
where it comes from in the input:

    R(x | θ)_i = Σ_j c_ij · [j ∈ θ] · R_j,

where ``R_j`` is the relevance of unit-position ``j`` of the layer (LRP from the output) and
``c_ij`` the LRP redistribution from the layer down to input ``i``. With relprop's engine the
relevance at a layer is ``a · G``; conditioning multiplies ``G`` by the units' mask and runs the
backward pass again *from the layer's graph edge*, so relevance that goes around the layer (a
residual shortcut, a parallel branch) never reaches the input — the leak of zennit-crp's
issue #16 cannot occur.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._engine import check_relevance_changes
from ..composites import Composite
from ..targets import Target
from ._backward import Batching, from_output, grad, input_relevance
from ._errors import LayerNotOnPathError
from ._forward import Forward, Layer, shared_forward
from ._units import Units, concepts, count, masks, per_unit, unit_axis

__all__ = ["ConceptExplanation", "explain"]


@dataclass
class ConceptExplanation:
    """Conditional heatmaps of K concepts of one layer, for a batch of B samples.

    ``relevance[b, k]`` has the input's shape (one value per token for token ids) and sums to
    ``concept_relevance[b, k]`` with a conservative composite; over all units of a layer every
    path to the output passes through, the maps sum to ``heatmap``.
    """

    #: ``(B, K, *x.shape[1:])``: input relevance conditioned on each concept
    relevance: Tensor
    layer: str
    #: the K concepts, each a tuple of unit indices
    units: list[tuple[int, ...]]
    #: ``(B, K)``: relevance of each concept at the layer
    concept_relevance: Tensor
    #: ``(B, n_units)``: relevance of every unit of the layer (summed over positions)
    unit_relevance: Tensor
    #: ``(B, *x.shape[1:])``: the unconditioned heatmap of the same prediction
    heatmap: Tensor
    output: Tensor
    explained: Tensor
    target: Target
    method: str
    #: the layer output's axis that holds the units, and the head count if units are heads
    unit_dim: int = 1
    heads: int | None = None

    def relevance_sum(self) -> Tensor:
        """``(B, K)``: each conditional map summed over the input."""
        return self.relevance.reshape(*self.relevance.shape[:2], -1).sum(-1)


@dataclass
class LayerRelevance:
    """A layer's place in the graph and its relevance from the full backward pass."""

    layer: Layer
    signal: Tensor
    relevance: Tensor
    axis: int
    units: int


def layer_relevance(forward: Forward, name: str, unit_dim: int | None, heads: int | None,
                    heatmap: bool = True) -> tuple[LayerRelevance, Tensor | None]:
    """The full backward pass from the output to the layer ``name`` (and, with ``heatmap``,
    on to the input): the layer's signal and relevance, and the unconditioned heatmap."""
    layer = forward.layer(name)
    if heatmap:
        full, (signal,) = from_output(forward, [layer.edge])
        total = full.reshape(full.shape[0], -1).sum(1)
        check_relevance_changes(forward.session.calls, total, forward.explained)
    else:
        full = None
        (signal,) = grad([forward.output], [layer.edge], [forward.seed])
    if signal is None:
        raise LayerNotOnPathError(f"no relevance from the explained output reaches {name!r}")
    shape = tuple(signal.shape)
    axis = unit_axis(shape, forward.x.dim(), forward.tokens, unit_dim)
    info = LayerRelevance(layer, signal, layer.activations * signal, axis,
                          count(shape, axis, heads))
    return info, full


def conditional_maps(forward: Forward, info: LayerRelevance, groups: list[tuple[int, ...]],
                     heads: int | None, batching: Batching) -> Tensor:
    """``(K, *x.shape)``: the input relevance that flows through each concept's units."""
    signal = info.signal
    mask = masks(groups, signal.shape, info.axis, heads, signal.dtype, signal.device)
    return input_relevance(forward, info.layer.edge, signal.unsqueeze(0) * mask, batching)


def explain(model: nn.Module, x: Tensor, target: Any = None, *, layer: str, units: Units,
            composite: Composite | None = None, unit_dim: int | None = None,
            heads: int | None = None, strict: bool = True,
            forward_kwargs: dict[str, Any] | None = None,
            batch_units: int | None = 32) -> ConceptExplanation:
    """Conditional heatmaps R(x | layer, units) for the concepts ``units`` of ``layer``.

    Args:
        model, x, target, composite, strict, forward_kwargs: as in :func:`relprop.explain`.
        layer: a module output as :func:`relprop.explain` records it (``"layer3"``,
            ``"layer3.1.relu#1"``, ``"encoder.layer.0.output[0]"``), or a module's input as
            ``"<path>:input"`` (a functional residual sum read by a norm or activation module,
            the heads entering an attention's output projection).
        units: one unit index, or a sequence of concepts, each a unit index or a set of them
            (``[12, 40, (3, 7)]``: three concepts, the last one two units together).
        unit_dim: the axis of the layer output that holds the units; default channels (axis
            1) for feature maps of the input's rank, the last axis otherwise.
        heads: split the unit axis into this many equal groups (attention heads); ``units``
            then index the groups.
        batch_units: how many conditioned backward passes run at once (vmapped); ``None``
            for all of them.

    One forward pass and one full backward pass are shared; each concept costs one backward
    pass from the layer down to the input (batched where the rules allow).
    """
    with shared_forward(model, x, target, composite, [layer], strict=strict,
                        forward_kwargs=forward_kwargs) as forward:
        shape = tuple(forward.layer(layer).activations.shape)  # units checked before passes
        axis = unit_axis(shape, forward.x.dim(), forward.tokens, unit_dim)
        groups = concepts(units, count(shape, axis, heads), layer)
        info, full = layer_relevance(forward, layer, unit_dim, heads)
        assert full is not None
        maps = conditional_maps(forward, info, groups, heads, Batching(chunk=batch_units))
        unit_relevance = per_unit(info.relevance.detach(), info.axis, heads)
        by_concept = torch.stack([unit_relevance[:, list(g)].sum(1) for g in groups], 1)
        return ConceptExplanation(
            relevance=maps.detach().movedim(0, 1), layer=layer, units=groups,
            concept_relevance=by_concept, unit_relevance=unit_relevance, heatmap=full.detach(),
            output=forward.output.detach(), explained=forward.explained, target=forward.target,
            method=f"crp:{forward.composite.name}", unit_dim=info.axis, heads=heads)
