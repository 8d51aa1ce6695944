"""Where a tensor stands on the relevance path: shared by the interceptor and the handlers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .graph import INDEX_ONLY

if TYPE_CHECKING:
    from .session import Session


def on_path(value: Any) -> bool:
    """Whether ``value`` is a tensor that depends on the explained input."""
    return isinstance(value, Tensor) and value.requires_grad


def graph_nodes(tensor: Tensor) -> Iterator[Any]:
    """The autograd nodes ``tensor`` is computed from, each once, depth first from its own;
    a caller that has its answer stops the walk by leaving the loop."""
    stack, seen = [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(parent for parent, _ in node.next_functions)


def reads_input(session: Session, a: Tensor) -> bool:
    """Whether ``a`` is the explained input, or made from it by ops that only move values
    (views, permutes, slices, padding, concatenation): rules that do not factor through
    ``a`` then hand their relevance straight back to the input pixels."""
    x = session.x
    if session.is_model_input(a):
        return True
    node = a.grad_fn  # most layers read another layer's output: no walk
    if node is not None:
        kind = type(node).__name__
        if kind not in INDEX_ONLY and "Pad" not in kind and kind != "AccumulateGrad":
            return False
    walked = False
    for node in graph_nodes(a):
        walked = True
        kind = type(node).__name__
        if kind == "AccumulateGrad":
            if getattr(node, "variable", None) is not x:
                return False
        elif kind not in INDEX_ONLY and "Pad" not in kind:  # CircularPad*, future pads
            return False
    return walked


