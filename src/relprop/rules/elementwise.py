"""Rules for elementwise ops ``z = f(a)``: activations other than ReLU (whose gradient already
is the rule), and BatchNorm taken as an elementwise affine layer."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import LayerRule, Rule

__all__ = ["Pass", "Gradient"]


class Pass(LayerRule):
    """Identity rule: ``R_in = R_out`` elementwise (activations, normalisation).

    For an elementwise op ``z = f(a)`` this is ``c = grad · z / a``; for ReLU it equals the
    gradient. The default for SiLU, GELU, tanh, sigmoid and other activations. An input of
    exactly 0 takes no relevance (it cannot carry the signal ``R / a``).
    """

    reads_grad = False

    kinds = frozenset({"activation", "norm"})

    def __init__(self) -> None:
        super().__init__(0.0)

    def propagate(self, op: object, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        if a.shape != z.shape:
            raise ValueError(
                f"Pass needs input and output of one shape, got {a.shape} -> {z.shape}"
            )
        # an input of exactly 0 takes no relevance: there z / a is 0/0 = NaN (f(0) = 0) or
        # ±inf (sigmoid, softplus), set to 0 by one pass after the product (as is an overflow
        # of z / a for a tiny a, which could not carry the signal either)
        return torch.div(z, a).mul_(grad).nan_to_num_(0.0, 0.0, 0.0)


class Gradient(Rule):
    """The op's own derivative: ``c = f'(a) · grad`` (e.g. to reproduce Gradient × Input).

    On softmax this is also AttnLRP's rule (see :class:`~relprop.rules.SoftmaxTaylor`); on
    LayerNorm it is the plain gradient through the normalisation, which is what gradient-based
    LRP implementations without a LayerNorm rule compute.
    """

    kinds = frozenset({"activation", "softmax", "layer_norm"})

    def propagate(self, op: object, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        gradient = getattr(op, "gradient", None)
        if gradient is None:
            raise TypeError(f"Gradient needs an op view with gradient(), got {op!r}")
        result: Tensor = gradient(a, z, grad)
        return result
