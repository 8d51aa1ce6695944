"""K conditioned backward passes from one forward pass: batched with ``torch.func.vmap`` where
the rules allow it, one after the other otherwise (same numbers either way; tested).

Every LRP rule is linear in the relevance it receives, so the backward pass from a layer with
the signal ``G · mask_k`` gives exactly the relevance that flows through the units of
``mask_k``; starting at the layer's graph edge (not at the output) keeps out everything that
bypasses the layer (shortcuts, parallel branches).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

from ._forward import Forward, to_inputs

Edge = GradientEdge | Tensor


@dataclass
class Batching:
    """How the K passes run: ``chunk`` passes at once under vmap (``None``: all at once), or a
    loop. ``vmap`` turns ``False`` for good once a rule's backward cannot be vmapped (in-place
    arithmetic, data-dependent branches), so a dataset run tries only once."""

    vmap: bool = True
    chunk: int | None = 32

    def __post_init__(self) -> None:
        if self.chunk is not None and self.chunk < 2:  # one at a time: the loop
            self.vmap = False


def grad(start: Sequence[Edge], to: Sequence[Edge], seeds: Sequence[Tensor]
         ) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad`` between graph edges or tensors, keeping the graph (``None``
    where nothing reaches an edge of ``to``)."""
    call: Any = torch.autograd.grad
    return tuple(call(list(start), list(to), list(seeds), retain_graph=True,
                      allow_unused=True))


def _loop(start: Edge, seeds: Tensor, to: Sequence[Edge]) -> list[Tensor | None]:
    per_pass = [grad([start], to, [seed]) for seed in seeds]
    result: list[Tensor | None] = []
    for i in range(len(to)):
        found = [g for p in per_pass if (g := p[i]) is not None]
        if not found:
            result.append(None)
            continue
        zero = torch.zeros_like(found[0])
        result.append(torch.stack([zero if (g := p[i]) is None else g for p in per_pass]))
    return result


def _vmapped(start: Edge, seeds: Tensor, to: Sequence[Edge], chunk: int | None
             ) -> list[Tensor | None]:
    def one(seed: Tensor) -> tuple[Tensor, ...]:  # vmap returns tensors only: None -> 0-d
        return tuple(seed.new_zeros(()) if g is None else g for g in grad([start], to, [seed]))

    with warnings.catch_warnings():  # ops vmap runs one by one still give the right numbers
        warnings.filterwarnings("ignore", message="There is a performance drop")
        parts: list[Any] = [torch.func.vmap(one)(piece) for piece in (
            seeds.split(chunk) if chunk else (seeds,))]
    return [None if parts[0][i].dim() == 1 else torch.cat([p[i] for p in parts])
            for i in range(len(to))]


def signals(forward: Forward, start: Edge, seeds: Tensor, to: Sequence[Edge],
            batching: Batching) -> list[Tensor | None]:
    """The signals ``G`` at ``to`` of the K backward passes that start at ``start`` with
    ``seeds[k]``: one tensor ``(K, *shape)`` per edge of ``to`` (``None`` if none reaches it)."""
    if not len(seeds):
        return [None for _ in to]
    if batching.vmap and not _deposits(forward, to):
        try:
            return list(_vmapped(start, seeds, to, batching.chunk))
        except RuntimeError:  # a rule whose backward cannot be vmapped (in-place arithmetic,
            batching.vmap = False  # data-dependent branches): the loop, which raises any
            # error that is not vmap's
    return _loop(start, seeds, to)


def _deposits(forward: Forward, to: Sequence[Edge]) -> bool:
    """Whether passes to ``to`` run an input-layer rule that hands relevance straight to the
    input (flat, w², z^B: ``Session.deposit``), which a vmapped pass cannot carry out."""
    if not any(isinstance(t, Tensor) and t is forward.x for t in to):
        return False
    return any(c.reads_input and c.rule is not None and not c.rule.factorizes
               for c in forward.session.calls)


def input_relevance(forward: Forward, start: Edge, seeds: Tensor, batching: Batching
                    ) -> Tensor:
    """Relevance at the explained input of the K passes: ``(K, *x.shape)`` (token ids: per
    token)."""
    inputs = forward.inputs
    if not _deposits(forward, inputs):
        return to_inputs(forward, tuple(signals(forward, start, seeds, inputs, batching)),
                         (len(seeds),))
    maps = []
    for seed in seeds:  # the deposit of each pass must be read before the next one
        forward.session.deposit = None
        relevance = to_inputs(forward, grad([start], inputs, [seed]), ())
        if forward.session.deposit is not None:
            relevance = relevance + forward.session.deposit
        maps.append(relevance)
    forward.session.deposit = None
    return torch.stack(maps)


def from_output(forward: Forward, to: Sequence[Edge]) -> tuple[Tensor, list[Tensor | None]]:
    """One full backward pass from the explained output: the heatmap, and the signals at
    ``to`` (the layers whose relevance is wanted) on the way."""
    inputs = forward.inputs
    forward.session.deposit = None
    grads = grad([forward.output], [*inputs, *to], [forward.seed])
    heatmap = to_inputs(forward, tuple(grads[:len(inputs)]), ())
    if forward.session.deposit is not None:
        heatmap = heatmap + forward.session.deposit
        forward.session.deposit = None
    return heatmap, list(grads[len(inputs):])
