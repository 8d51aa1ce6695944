"""LRP rules: how one op call redistributes the relevance of its output onto its input.

:mod:`relprop.rules.layers` has the rules of linear layers, activations, pooling and
products; :mod:`relprop.rules.transformer` those of softmax, LayerNorm and attention.
"""

from .layers import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    LayerRule,
    Pass,
    Product,
    Rule,
    SumPooling,
    WinnerTakeAll,
    WSquare,
    ZBox,
    Zero,
    ZPlus,
    stabilize,
)
from .transformer import Attention, Constant, NormIdentity, SoftmaxTaylor

__all__ = [
    "Rule", "LayerRule", "Zero", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "Flat", "WSquare",
    "ZBox", "Pass", "Gradient", "WinnerTakeAll", "SumPooling", "Product", "SoftmaxTaylor",
    "Constant", "NormIdentity", "Attention", "stabilize",
]
