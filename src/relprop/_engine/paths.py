"""Where a tensor stands on the relevance path: shared by the interceptor and the handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from .graph import INDEX_ONLY

if TYPE_CHECKING:
    from .session import Session


def on_path(value: Any) -> bool:
    """Whether ``value`` is a tensor that depends on the explained input."""
    return isinstance(value, Tensor) and value.requires_grad


def reads_input(session: Session, a: Tensor) -> bool:
    """Whether ``a`` is the explained input, or made from it by ops that only move values
    (views, permutes, slices, padding, concatenation): rules that do not factor through
    ``a`` then hand their relevance straight back to the input pixels."""
    x = session.x
    if session.is_model_input(a):
        return True
    stack, seen = [a.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kind = type(node).__name__
        if kind == "AccumulateGrad":
            if getattr(node, "variable", None) is not x:
                return False
            continue
        if kind not in INDEX_ONLY and "Pad" not in kind:  # CircularPad*, future pads
            return False
        stack.extend(parent for parent, _ in node.next_functions)
    return bool(seen)


