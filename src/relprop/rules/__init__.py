"""LRP rules: how one op call redistributes the relevance of its output onto its input.

One module per op family: :mod:`~relprop.rules.layers` (linear layers; αβ and z⁺ in
:mod:`~relprop.rules.alphabeta`), :mod:`~relprop.rules.elementwise` (activations),
:mod:`~relprop.rules.pooling`, :mod:`~relprop.rules.products`,
:mod:`~relprop.rules.transformer` (softmax, LayerNorm, attention). :mod:`~relprop.rules.base`
holds the contract and the pieces rules are made of; :mod:`~relprop.rules.ops` the views of
an op call that a rule receives.
"""

from .alphabeta import AlphaBeta, ZPlus
from .base import (
    LayerRule,
    Rule,
    is_nonnegative,
    positive_contributions,
    signed_vjp,
    stabilize,
    stabilize_nonnegative_,
)
from .elementwise import Gradient, Pass
from .layers import Epsilon, Flat, Gamma, WSquare, ZBox, Zero
from .ops import ElementwiseOp, LinearOp, NormOp, PoolOp, ShareOp, SoftmaxOp
from .pooling import SumPooling, WinnerTakeAll
from .products import Product
from .transformer import Attention, Constant, NormIdentity, SoftmaxTaylor

__all__ = [
    "Rule", "LayerRule", "Zero", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "Flat", "WSquare",
    "ZBox", "Pass", "Gradient", "WinnerTakeAll", "SumPooling", "Product", "SoftmaxTaylor",
    "Constant", "NormIdentity", "Attention",
    # the pieces a rule is made of
    "stabilize", "stabilize_nonnegative_", "is_nonnegative", "positive_contributions",
    "signed_vjp", "LinearOp", "ElementwiseOp", "PoolOp", "SoftmaxOp", "NormOp", "ShareOp",
]
