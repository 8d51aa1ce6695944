"""The rule for products of activations (gated units, attention's ``A v`` and ``q kᵀ``)."""

from __future__ import annotations

from torch import Tensor

from .base import Rule, scaled_signal
from .ops import ShareOp

__all__ = ["Product"]


class Product(Rule):
    """Product of two or more activations ``z = a · b`` (elementwise or matmul).

    Uniform split (Achtibat et al. 2024): each of the n factors receives ``R / n``; this is
    exact because a product is homogeneous of degree n in its factors. When exactly one
    factor is a gate (the output of a sigmoid, as in squeeze-and-excitation or LSTM), the
    signal takes all (Arras et al. 2017): the gate receives no relevance. Set
    ``gates_take_none=False`` to split uniformly always.
    """

    kinds = frozenset({"product"})

    def __init__(self, gates_take_none: bool = True) -> None:
        self.gates_take_none = bool(gates_take_none)

    def shares(self, is_gate: list[bool], constant: list[bool] | None = None) -> list[float]:
        """The fraction of the product's relevance that goes to each factor.

        ``constant`` marks factors whose own rule makes them constants (attention weights
        under CP-LRP, :class:`~relprop.rules.Constant`): they take nothing, like weights.
        """
        if constant is not None and any(constant):
            rest = [i for i, c in enumerate(constant) if not c]
            inner = self.shares([is_gate[i] for i in rest]) if rest else []
            out = [0.0] * len(is_gate)
            for i, share in zip(rest, inner):
                out[i] = share
            return out
        if self.gates_take_none and 0 < sum(is_gate) < len(is_gate):
            signals = len(is_gate) - sum(is_gate)
            return [0.0 if g else 1.0 / signals for g in is_gate]
        return [1.0 / len(is_gate)] * len(is_gate)

    def propagate(self, op: ShareOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor | None:
        """The signal of factor ``op.position``: the product's, scaled by its share."""
        return scaled_signal(grad, self.share(op))

    def share(self, op: ShareOp) -> float:
        """Factor ``op.position``'s fraction of the product's relevance (:meth:`shares`)."""
        return self.shares(op.gates, op.constant)[op.position]
