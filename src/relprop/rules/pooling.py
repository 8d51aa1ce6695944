"""Rules for max pooling (Montavon et al. 2019, §10.3.2)."""

from __future__ import annotations

from torch import Tensor

from .base import Rule, stabilize
from .ops import PoolOp

__all__ = ["WinnerTakeAll", "SumPooling"]


class WinnerTakeAll(Rule):
    """Max pooling, winner-take-all (Bach et al. 2015): all of ``R_k`` goes to the arg-max.

    This is max pooling's own gradient: ``c_j = grad_k`` for the arg-max ``j`` of window ``k``.
    """

    kinds = frozenset({"max_pool"})

    def propagate(self, op: PoolOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        return op.gradient(a, z, grad)


class SumPooling(Rule):
    """Max pooling treated as sum pooling (Montavon et al. 2019, §10.3.2).

    ``R_j = sum_k a_j / (sum_{j in window k} a_j) R_k``.
    """

    kinds = frozenset({"max_pool"})

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def propagate(self, op: PoolOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        # averages stand in for sums: the window size cancels between numerator and vjp
        mean = op.average(a)
        return op.average_vjp(a, z * grad / stabilize(mean, self.stabilizer))
