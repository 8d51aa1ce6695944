"""What every rule is, and the public pieces rules are made of.

Notation (Montavon et al. 2019, "Layer-wise relevance propagation: an overview", §10.2):
``a_j`` are an op's inputs, ``w_jk`` its weights, ``z_k = sum_j a_j w_jk + b_k`` its outputs
and ``R_k`` the relevance of output ``k``. The engine carries the signal ``G = R / a``
backwards, so a rule maps the signal ``grad = R_k / z_k`` at its op's output to ``c_j`` with
``R_j = a_j c_j`` (the four-step recipe of §10.2.2: forward with ``rho(W)``, divide, vjp,
multiply). Rules that do not factor through ``a`` (flat, w², z^B) return ``R_j`` itself and
say so with ``factorizes = False``.

A rule is a value: its declared parameters make its repr, equality and hash. It owns its
maths in :meth:`Rule.propagate`, which receives a view of the op call (:mod:`relprop.rules.ops`:
a :class:`~relprop.rules.ops.LinearOp` for layers, an ``ElementwiseOp``, ``PoolOp``,
``SoftmaxOp``, ``NormOp`` or ``ShareOp`` for the other kinds). The engine dispatches by op
kind and never looks at a rule's class.

A new layer rule needs only the public pieces below and a :class:`LayerRule` subclass; a
rule for an elementwise op the engine does not know names it in ``elementwise_ops``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .ops import LAYER_KINDS, LinearOp

__all__ = [
    "Rule", "LayerRule", "stabilize", "stabilize_nonnegative_", "is_nonnegative",
    "positive_contributions", "signed_vjp", "scaled_signal",
]


def stabilize(denominator: Tensor, epsilon: float | Tensor) -> Tensor:
    """``z + ε·sign(z)`` with ``sign(0) = +1``: moves the denominator away from 0, keeping its
    sign (``torch.sign(0) = 0`` would leave 0/0 = NaN). A denominator that stays exactly 0
    (ε = 0) becomes ``inf``: every contribution to it is 0, so the share is 0, not NaN."""
    # ±ε = 2ε ([z ≥ 0] − 1/2) from a 0/1 mask in z's own dtype: exactly ε rounded to that
    # dtype (bfloat16/float16 stay theirs), then one addition; a boolean mask and ``where``
    # cost several arithmetic passes on the CPU
    sign = torch.ge(denominator, 0, out=torch.empty_like(denominator))
    out = sign.sub_(0.5).mul_(2 * epsilon).add_(denominator)
    if isinstance(epsilon, Tensor) or epsilon == 0:
        return out.masked_fill_(out == 0, float("inf"))
    return out


def stabilize_nonnegative_(denominator: Tensor, epsilon: float) -> Tensor:
    """``stabilize`` in place, for a temporary of the caller known to be ``>= 0``."""
    if epsilon == 0:
        return denominator.masked_fill_(denominator == 0, float("inf"))
    return denominator.add_(epsilon)


def scaled_signal(grad: Tensor, share: float) -> Tensor | None:
    """``grad · share`` for a share of a product's relevance; ``None`` (no signal) for 0."""
    return None if share == 0 else grad if share == 1 else grad * share


def is_nonnegative(t: Tensor) -> bool:
    """Whether every value of ``t`` is ``>= 0`` (one reduction; rules pick cheaper maths then)."""
    return bool(t.min() >= 0) if t.numel() else True


def epsilon_ratio(z: Tensor, epsilon: float | Tensor) -> Tensor:
    """``z / (z + ε·sign(z)) = |z| / (|z| + ε)`` (``sign(0) = +1``), in ``[0, 1]``: no
    intermediate leaves that range (``1 / (|z| + ε)`` would overflow float16 at ``z = 0``)."""
    size = z.abs()
    return size.div_(size + epsilon)


def positive_contributions(op: LinearOp, a: Tensor, nonneg: bool,
                           bias: Tensor | None = None) -> Tensor:
    """``P_k = sum_j (a_j w_jk)^+``, plus ``bias_k`` where one is given (added by the op's
    own forward, e.g. inside the convolution: no pass of its own)."""
    return _contributions(op, a, nonneg, op.positive_weight, op.negative_weight, bias)


def negative_contributions(op: LinearOp, a: Tensor, nonneg: bool,
                           bias: Tensor | None = None) -> Tensor:
    """``N_k = sum_j (a_j w_jk)^-``, plus ``bias_k`` where one is given."""
    return _contributions(op, a, nonneg, op.negative_weight, op.positive_weight, bias)


def _contributions(op: LinearOp, a: Tensor, nonneg: bool, same: Tensor, other: Tensor,
                   bias: Tensor | None) -> Tensor:
    """Contributions of one sign: ``a⁺`` through the weights of that sign (``same``), and
    on inputs of both signs ``a⁻`` through the other's."""
    if nonneg:
        return op.forward(a, same, bias)
    return op.forward(a.clamp(min=0), same, bias).add_(op.forward(a.clamp(max=0), other))


def signed_vjp(op: LinearOp, a: Tensor, nonneg: bool,
                s_pos: Tensor | None, s_neg: Tensor | None,
                whole: Tensor | None = None) -> Tensor:
    """``c_j`` with ``a_j c_j = sum_k (a_j w_jk)^+ s_pos_k + (a_j w_jk)^- s_neg_k``.

    For ``a_j > 0`` the positive contributions are ``a_j w^+``, for ``a_j < 0`` they are
    ``a_j w^-``: this is what makes γ, αβ and z⁺ correct on inputs of both signs.

    The branch for ``a_j < 0``, ``W⁻ s_pos + W⁺ s_neg``, is ``W (s_pos + s_neg)`` minus the
    branch for ``a_j > 0`` (``W = W⁺ + W⁻``, and a vjp is linear in the weight). A caller
    that has ``whole = W (s_pos + s_neg)`` anyway (``op.input_vjp(a, op.weight, ...)``) may
    pass it to save the branch's vjps, but only where the signals are bounded by the
    carried signal (γ: ``|s| ≤ |R / z|``): where ``s`` can be huge (αβ's ``R / z⁻`` on an
    output with no negative contributions, ``z⁻`` at the stabiliser), the difference would
    cancel to noise, while the direct branch multiplies those ``s`` by exact zeros.
    """
    def pull(weight_for_pos: Tensor, weight_for_neg: Tensor) -> Tensor:
        terms = [op.input_vjp(a, w, s) for w, s in ((weight_for_pos, s_pos),
                                                    (weight_for_neg, s_neg)) if s is not None]
        return terms[0] if len(terms) == 1 else terms[0].add_(terms[1])

    w_pos, w_neg = op.positive_weight, op.negative_weight
    positive = pull(w_pos, w_neg)
    if nonneg:
        return positive
    negative = pull(w_neg, w_pos) if whole is None else whole - positive
    # where a_j = 0 the relevance a_j c_j is 0 whichever branch c_j comes from
    return torch.where(a > 0, positive, negative)


def _short_repr(value: Any) -> str:
    """A parameter's repr, short whatever its size: a tensor of more than a few values shows
    as ``tensor(shape=(3, 224, 224))``, a long sequence as ``list(len=50)``."""
    if isinstance(value, Tensor):
        if value.numel() <= 4:
            return f"tensor({[round(v, 6) for v in value.detach().reshape(-1).tolist()]})"
        return f"tensor(shape={tuple(value.shape)})"
    if isinstance(value, list | tuple) and len(value) > 4:
        return f"{type(value).__name__}(len={len(value)})"
    return repr(value)


def _same(a: Any, b: Any) -> bool:
    """Parameter equality; tensors by shape and value (whatever their device and dtype)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape:
            return False
        return torch.equal(a.detach().cpu().double(), b.detach().cpu().double())
    return bool(a == b)


def _hashable(value: Any) -> Any:
    if isinstance(value, Tensor):  # equal tensors have one shape; values are left to __eq__
        return ("tensor", tuple(value.shape))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


class Rule:
    """A propagation rule; ``kinds`` names the op kinds it can be given to.

    A rule is pure configuration: its declared parameters (the instance attributes) make its
    repr (short: a tensor parameter shows its shape), equality and hash; tensor parameters
    compare by value.

    The contract: :meth:`propagate` maps the signal ``grad = R_out / z`` at one op call's
    output to the signal ``c`` at its input (``R_in = a · c``), or to ``R_in`` itself when
    ``factorizes`` is False, or to ``None`` when no relevance reaches the input.
    """

    #: the op kinds this rule can be given to ("linear", "conv", "activation", "max_pool", ...)
    kinds: ClassVar[frozenset[str]] = frozenset()
    #: torch functions (short names, e.g. ``"exp"``) the engine has no handler for and should
    #: intercept, as elementwise ops of the kind of that name, when a composite holds this
    #: rule: how a rule for a new elementwise op kind plugs in without an engine change
    elementwise_ops: ClassVar[frozenset[str]] = frozenset()
    #: True: :meth:`propagate` returns ``c`` with ``R_in = a * c``; False: it returns ``R_in``
    factorizes: ClassVar[bool] = True
    #: False when :meth:`propagate` reads ``grad`` only through ``R = z * grad`` (so relevance
    #: is 0 wherever ``z`` is); a ReLU merged into a layer then needs no mask
    reads_grad: ClassVar[bool] = True
    #: False when :meth:`propagate` reads its input ``a`` for its shape, dtype and device only,
    #: never its values (ε and LRP-0: ``c = Wᵀ(grad · z / (z + ε))`` needs ``W`` and ``z``).
    #: A dense layer whose candidate rules in the composite all say so keeps no copy of its
    #: input for the backward pass (see :class:`relprop._engine.apply.InputStandIn`)
    reads_input: ClassVar[bool] = True
    #: True when the rule holds its op's output constant: no relevance flows through it, and
    #: a product that uses the output treats it as a weight (CP-LRP's attention weights)
    constant_output: ClassVar[bool] = False
    #: when set, the engine checks that each sample's relevance leaving the op is within this
    #: fraction of what arrived, and warns by layer if not (a failed assumption of the rule)
    relevance_tolerance: float | None = None

    def propagate(self, op: Any, a: Tensor, z: Tensor, grad: Tensor) -> Tensor | None:
        """The signal at the input of one op call ``z = op(a)`` from ``grad`` at its output.

        ``op`` is the call's view from :mod:`relprop.rules.ops` (its kind's class)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement propagate")

    def share(self, op: Any) -> float | None:
        """For one factor of a product (``op``: a :class:`~relprop.rules.ops.ShareOp`): the
        constant that :meth:`propagate` multiplies the product's gradient by, if it is one
        (``None``: call :meth:`propagate`). A factor with share 0 gets no signal, and the
        engine does not compute the product's gradient with respect to it."""
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_short_repr(v)}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return False
        mine, theirs = vars(self), vars(other)
        return mine.keys() == theirs.keys() and all(_same(v, theirs[k]) for k, v in mine.items())

    def __hash__(self) -> int:
        return hash((type(self).__name__,
                     tuple((k, _hashable(v)) for k, v in sorted(vars(self).items()))))


class LayerRule(Rule):
    """A rule for linear layers ``z = W a + b`` (linear, conv, transposed conv, BatchNorm)."""

    kinds = LAYER_KINDS

    def __init__(self, stabilizer: float = 1e-6) -> None:
        if stabilizer < 0:
            raise ValueError(f"stabilizer must be >= 0, got {stabilizer!r}")
        self.stabilizer = float(stabilizer)

    def propagate(self, op: LinearOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        """Map the signal ``grad = R_out / z`` at the output to ``c`` (or ``R_in``)."""
        raise NotImplementedError


