"""LRP rules for linear layers: LRP-0, ε, γ, flat, w² and z^B (αβ and z⁺:
:mod:`relprop.rules.alphabeta`, importable from here too).

Each returns, from the signal ``grad = R / z`` at the layer's output, the signal ``c`` at its
input with ``R_j = a_j c_j`` (or ``R_j`` itself where ``factorizes = False``); see
:mod:`relprop.rules.base` for the notation and the pieces they are made of.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor

from .alphabeta import AlphaBeta, ZPlus
from .base import (
    LayerRule,
    Rule,
    epsilon_ratio,
    is_nonnegative,
    signed_vjp,
    stabilize,
)
from .elementwise import Gradient, Pass
from .ops import LinearOp
from .pooling import SumPooling, WinnerTakeAll
from .products import Product

__all__ = [
    "Zero", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "Flat", "WSquare", "ZBox",
    # moved to their own modules; importable from here as before
    "Rule", "LayerRule", "Pass", "Gradient", "WinnerTakeAll", "SumPooling", "Product",
    "stabilize",
]


class Zero(LayerRule):
    """LRP-0 (Bach et al. 2015): ``R_j = sum_k a_j w_jk / (sum_{0,j} a_j w_jk) R_k``.

    Uniform LRP-0 on a ReLU network equals Gradient × Input. The bias (j = 0) absorbs its
    share. This is the plain input-vjp: no extra forward pass.
    """

    reads_input = False

    def __init__(self) -> None:
        super().__init__(0.0)

    def propagate(self, op: LinearOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        return op.vjp(a, grad)


class Epsilon(LayerRule):
    """LRP-ε (Bach et al. 2015), signed: ``R_j = sum_k a_j w_jk / (z_k + ε·sign(z_k)) R_k``.

    ``sign(0) = +1`` (Kohlbrenner et al. 2020, Eq. 2). With ``relative_to_std=True``, ε is
    a multiple of the standard deviation of ``z`` over each sample's outputs at that layer
    ("ε = 0.25 std", Montavon et al. 2019, Fig. 10.4): ``ε' = ε · std(z)``. Where that is 0
    (a sample whose outputs at the layer are all equal, std = 0: all-dead ReLUs, a blank
    image through bias-free convolutions), that sample falls back to the absolute ``ε' = ε``,
    so an output ``z_k = 0`` gets the share 0, not 0/0 = NaN. Costs only an elementwise
    rescale of the plain vjp: ``c = W^T (R / (z + ε' sign z))``.
    """

    reads_grad = False
    reads_input = False

    def __init__(self, epsilon: float = 1e-6, relative_to_std: bool = False) -> None:
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
        super().__init__(0.0)
        self.epsilon = float(epsilon)
        self.relative_to_std = bool(relative_to_std)

    def _epsilon_for(self, z: Tensor) -> float | Tensor:
        if not self.relative_to_std:
            return self.epsilon
        flat = z.reshape(z.shape[0], -1)
        std = flat.std(dim=1, unbiased=False) if flat.shape[1] > 1 else flat.abs()[:, 0]
        scaled = self.epsilon * std
        # std = 0 (or ε·std underflowing to 0): the absolute ε for that sample, not 0/0
        scaled = scaled.masked_fill_(scaled == 0, self.epsilon)
        return scaled.reshape([-1] + [1] * (z.dim() - 1))

    def propagate(self, op: LinearOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        rows = _live_rows(op, grad) if not self.relative_to_std else None
        if rows is not None:  # e.g. a language-model head where one position is explained
            out = a.new_zeros(a.shape)
            live = rows.nonzero().squeeze(1)
            out.view(-1, a.shape[-1]).index_copy_(0, live, self._propagate(
                op, _rows(a, live), _rows(z, live), _rows(grad, live)))
            return out
        return self._propagate(op, a, z, grad)

    def _propagate(self, op: LinearOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        if self.epsilon == 0:  # LRP-0, but only through outputs that carry relevance
            return op.vjp(a, (z != 0).to(grad.dtype).mul_(grad), owned=True)
        # z / (z + ε sign z) = |z| / (|z| + ε): three passes over z (two behind a merged
        # ReLU, where z ≥ 0), 0 at z = 0
        def ratio_of_z() -> Tensor:
            epsilon = self._epsilon_for(z)
            if op.clipped:
                denominator = z + epsilon
                return torch.div(z, denominator, out=denominator)
            return epsilon_ratio(z, epsilon)

        ratio, owned = op.once(("epsilon", id(self)), ratio_of_z)
        return op.vjp(a, ratio.mul_(grad) if owned else ratio * grad, owned=True)


def _live_rows(op: LinearOp, grad: Tensor) -> Tensor | None:
    """For a plain linear op whose signal is zero on most rows (positions), a boolean mask of
    the rows that carry signal; None where skipping would not pay (or not apply).

    Only for outputs at least 8x wider than the input (a vocabulary head), where the ε
    rescale of the output dominates: the check itself is a pass over the signal and, on a
    GPU, a synchronisation."""
    if op.kind != "linear" or op._affine is not None or grad.dim() < 2:
        return None
    if op.weight.shape[0] < 8 * op.weight.shape[1]:
        return None
    live = grad.reshape(-1, grad.shape[-1]).any(dim=1)
    return live if 2 * int(live.sum()) <= live.numel() else None


def _rows(t: Tensor, index: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1]).index_select(0, index)


class Gamma(LayerRule):
    """LRP-γ (Montavon et al. 2019, §10.2.1), for inputs of either sign.

    ``R_j = sum_k (a_j w_jk + γ (a_j w_jk)^σk) / (z_k + γ (sum_j (a_j w_jk)^σk + b_k^σk)) R_k``
    where ``σk`` is the sign of ``z_k``: positive outputs favour positive contributions
    ``(·)^+`` and negative outputs favour negative ones ``(·)^-``, so the denominator keeps the
    sign of ``z_k`` and grows in size. For ``a ≥ 0`` and ``z > 0`` this is the paper's
    ``rho(w) = w + γ w^+``; γ → ∞ gives z⁺ (= α1β0) on positive outputs.
    """

    reads_grad = False

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6) -> None:
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        super().__init__(stabilizer)
        self.gamma = float(gamma)

    def _rho(self, op: LinearOp, sign: str) -> Tensor:
        """``W + γW⁺`` (``sign = "+"``) or ``W + γW⁻``, kept across calls (from a temporary
        ``W⁺``: the cache keeps one copy per transform the rule reads)."""
        def make() -> Tensor:
            w, _ = op.weight_for_transform()
            part = w.clamp(min=0) if sign == "+" else w.clamp(max=0)
            return torch.add(w, part, alpha=self.gamma, out=part)

        return op.rho((f"w+γw{sign}", self.gamma), make)

    def propagate(self, op: LinearOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        nonneg, _ = op.once(("nonneg", "a"),
                            lambda: op.nonnegative_input or is_nonnegative(a))
        # behind a merged ReLU z ≥ 0 is known: no pass over it
        positive_only, _ = op.once(("nonneg", "z"), lambda: op.clipped or is_nonnegative(z))
        if positive_only:  # one vjp with rho(W) = W + γW⁺ on inputs ≥ 0
            ratio, owned = op.once(("gamma+", id(self)),
                                   partial(self._positive_ratio, op, a, z, nonneg))
            s_pos = ratio.mul_(grad) if owned else ratio * grad  # R / denominator
            del ratio  # temporaries go before the vjps (peak memory)
            return self._pull(op, a, nonneg, s_pos, None)
        (positive_out, ratio), owned = op.once(("gamma±", id(self)),
                                               partial(self._ratio, op, a, z, nonneg))
        s = ratio.mul_(grad) if owned else ratio * grad
        del ratio
        whole = None if nonneg else op.input_vjp(a, op.weight, s)  # W (s_pos + s_neg)
        # exact: s · 1 = s, s · 0 = 0; into the 0/1 mask where it is a temporary
        s_pos = positive_out.mul_(s) if owned else positive_out * s
        s_neg = s.sub_(s_pos)  # exact: s − s = 0, s − 0 = s
        del positive_out
        low, high = torch.aminmax(s_neg)
        if not (bool(low) or bool(high)):  # no signal on negative outputs (a ReLU follows)
            return self._pull(op, a, nonneg, s_pos, None, whole)
        return self._pull(op, a, nonneg, s_pos, s_neg, whole)

    def _pull(self, op: LinearOp, a: Tensor, nonneg: bool, s_pos: Tensor,
              s_neg: Tensor | None, whole: Tensor | None = None) -> Tensor:
        """``c`` from the signals on positive outputs ``s_pos`` and negative ones ``s_neg``.

        On inputs ``≥ 0``: ``rho(W) = W + γW⁺`` for ``s_pos``, ``W + γW⁻`` for ``s_neg``. On
        inputs of both signs: ``c = W s + γ (W⁺ s_pos + W⁻ s_neg)`` where ``a > 0`` and
        ``W s + γ (W⁻ s_pos + W⁺ s_neg)`` elsewhere, the latter being ``W s`` minus the
        former (``whole = W s``, see :func:`signed_vjp`). The branch is picked by a 0/1 mask
        in the input's dtype (``lerp`` with weight 0 or 1 is exact): a boolean ``where``
        costs several arithmetic passes on the CPU."""
        if nonneg:
            c = op.input_vjp(a, self._rho(op, "+"), s_pos)
            return c if s_neg is None else c.add_(op.input_vjp(a, self._rho(op, "-"), s_neg))
        if whole is None:
            whole = op.input_vjp(a, op.weight, s_pos)
        favoured = signed_vjp(op, a, True, s_pos, s_neg)  # the branch for a > 0
        other = torch.sub(whole, favoured)
        del s_pos, s_neg
        mask, _ = op.once(("positive", "a"),
                          lambda: torch.gt(a, 0, out=torch.empty_like(other)))
        torch.lerp(other, favoured, mask, out=other)
        del favoured, mask
        return whole.add_(other, alpha=self.gamma)

    def _positive_ratio(self, op: LinearOp, a: Tensor, z: Tensor, nonneg: bool) -> Tensor:
        """``z_k / (z_k + γ (P_k + b_k⁺) + ε)`` for outputs ``z ≥ 0`` (the signal is this
        times ``R_k / z_k``).

        On inputs ``≥ 0`` the denominator is the forward with ``rho(W) = W + γW⁺`` and the
        bias ``b + γb⁺ + ε`` (added by the convolution): no pass over ``z``. Behind a merged
        ReLU an output the ReLU closed has ``z = 0`` and relevance 0; its denominator (of
        the unclipped output, maybe ``≤ 0``) only has to be non-zero: clamped to ``≥ ε``, a
        bound every open output meets. On inputs of both signs it is :meth:`_half_magnitude`
        plus ``(1 + γ/2) z``. Passes: the clamp (or that addition) and the division."""
        gamma, eps = self.gamma, self.stabilizer
        if nonneg:
            bias, b_pos = op.bias, op.positive_bias
            shift = None if bias is None or b_pos is None else (
                torch.add(bias, b_pos, alpha=gamma).add_(eps))
            den = op.forward(a, self._rho(op, "+"), shift)
            if shift is None and eps:
                den.add_(eps)
            den.clamp_(min=eps)
        else:
            den = self._half_magnitude(op, a, False).add_(z, alpha=1 + gamma / 2)
        if eps == 0:  # every contribution is 0: the share is 0, not 0/0
            den.masked_fill_(den == 0, float("inf"))
        return torch.div(z, den, out=den)

    def _ratio(self, op: LinearOp, a: Tensor, z: Tensor, nonneg: bool) -> tuple[Tensor, Tensor]:
        """``(z >= 0, z_k / D_k)`` as 0/1 and ratio, for outputs of both signs (unclipped),
        with the stabilised ``D_k = z_k + γ (sum_j (a_j w_jk)^σk + b_k^σk) ± ε``.

        With ``M_k = sum_j |a_j w_jk|`` the favoured parts are ``P + b⁺ = (M + |b| + z)/2``
        and ``N + b⁻ = z − (P + b⁺)``, so ``D = (1 + γ/2) z ± T`` with
        ``T = (γ/2)(M + |b|) + ε > 0`` and the sign of ``z``: one forward with ``(γ/2)|W|``
        and bias ``(γ/2)|b| + ε``, then ``copysign`` and one addition (both terms of one sign:
        no cancellation), the 0/1 comparison and the division."""
        den = self._half_magnitude(op, a, nonneg).copysign_(z).add_(z, alpha=1 + self.gamma / 2)
        if self.stabilizer == 0:
            den.masked_fill_(den == 0, float("inf"))
        positive_out = torch.ge(z, 0, out=torch.empty_like(z))
        return positive_out, torch.div(z, den, out=den)

    def _half_magnitude(self, op: LinearOp, a: Tensor, nonneg: bool) -> Tensor:
        """``T_k = (γ/2) (sum_j |a_j| |w_jk| + |b_k|) + ε``: one forward with ``(γ/2)|W|``."""
        half, eps = self.gamma / 2, self.stabilizer

        def make() -> Tensor:
            w, temporary = op.weight_for_transform()
            return (w.abs_() if temporary else w.abs()).mul_(half)

        weight = op.rho(("γ/2·|w|", self.gamma), make)
        bias = op.bias
        shift = None if bias is None else bias.abs().mul_(half).add_(eps)
        magnitude = op.forward(a if nonneg else a.abs(), weight, shift)
        return magnitude.add_(eps) if shift is None and eps else magnitude


class Flat(LayerRule):
    """Flat rule (Lapuschkin et al. 2019): ``R_j = sum_k 1 / (sum_j 1) R_k``.

    Spreads each output's relevance uniformly over its receptive field, whatever the input.
    Bias ignored. Returns relevance (it does not factor through ``a``).
    """

    reads_grad = False

    factorizes = False

    def propagate(self, op: LinearOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        def ones_and_count() -> tuple[Tensor, Tensor]:
            ones_w = torch.ones_like(op.weight)
            count = op.forward(torch.ones_like(a), ones_w)
            return ones_w, stabilize(count, self.stabilizer)

        (ones_w, count), _ = op.once(("flat", id(self)), ones_and_count)
        return op.input_vjp(a, ones_w, z * grad / count)


class WSquare(LayerRule):
    """w² rule (Montavon et al. 2017): ``R_i = sum_j w_ij² / (sum_i w_ij²) R_j``.

    For a first layer on unbounded real inputs. Bias ignored (the paper's formula has none).
    Returns relevance.
    """

    reads_grad = False

    factorizes = False

    def propagate(self, op: LinearOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        def squares_and_total() -> tuple[Tensor, Tensor]:
            w2 = op.rho("w2", lambda: op.weight * op.weight)
            return w2, stabilize(op.forward(torch.ones_like(a), w2), self.stabilizer)

        (w2, total), _ = op.once(("w2", id(self)), squares_and_total)
        return op.input_vjp(a, w2, z * grad / total)


Bound = float | Sequence[float] | Tensor


class ZBox(LayerRule):
    """z^B rule (Montavon et al. 2017) for inputs bounded by ``low ≤ x ≤ high``.

    ``R_i = sum_j (x_i w_ij − l_i w_ij^+ − h_i w_ij^-) / z^B_j · R_j`` with the denominator
    ``z^B_j = sum_i (x_i w_ij − l_i w_ij^+ − h_i w_ij^-)``. Returns relevance.

    ``low`` and ``high`` are, each, a scalar; one value per channel (a sequence or a tensor of
    shape ``(C,)``, channel = dim 1 of the layer input); or per input element, a tensor of the
    input's shape without the batch dimension ``(C, H, W)``, with a batch dimension of 1
    ``(1, C, H, W)``, or the input's full shape ``(B, C, H, W)`` (one bound per sample). They
    are stored as given (a sequence becomes a float64 tensor), moved to the input's device and
    dtype and checked against its shape when the rule runs.
    """

    reads_grad = False

    factorizes = False

    def __init__(self, low: Bound, high: Bound, stabilizer: float = 1e-6) -> None:
        super().__init__(stabilizer)
        self.low = _as_bound(low, "low")
        self.high = _as_bound(high, "high")

    def _bound(self, value: float | Tensor, a: Tensor, which: str) -> Tensor:
        t = torch.as_tensor(value).to(device=a.device, dtype=a.dtype)
        if t.dim() == 0:
            return t.expand_as(a)
        if t.dim() == 1 and a.dim() > 1 and t.numel() == a.shape[1]:  # per channel
            return t.reshape([1, -1] + [1] * (a.dim() - 2)).expand_as(a)
        if t.shape == a.shape[1:]:  # per element, shared by the batch
            return t.unsqueeze(0).expand_as(a)
        if t.shape == a.shape or (t.dim() == a.dim() and t.shape[0] == 1
                                  and t.shape[1:] == a.shape[1:]):
            return t.expand_as(a)
        raise ValueError(
            f"ZBox bound {which!r} has shape {tuple(t.shape)}, which does not fit the layer "
            f"input of shape {tuple(a.shape)}: give a scalar, one value per channel "
            f"({a.shape[1] if a.dim() > 1 else a.shape[0]},), the input's shape without the "
            f"batch {tuple(a.shape[1:])}, with a batch of 1, or the full {tuple(a.shape)}"
        )

    def propagate(self, op: LinearOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        w, w_pos, w_neg = op.weight, op.positive_weight, op.negative_weight
        low, high = self._bound(self.low, a, "low"), self._bound(self.high, a, "high")
        denom, _ = op.once(("zbox", id(self)), lambda: stabilize(
            op.forward(a, w) - op.forward(low, w_pos) - op.forward(high, w_neg),
            self.stabilizer))
        s = z * grad / denom
        return (a * op.input_vjp(a, w, s) - low * op.input_vjp(a, w_pos, s)
                - high * op.input_vjp(a, w_neg, s))


def _as_bound(value: Bound, which: str) -> float | Tensor:
    """A z^B bound as stored: a float, or a tensor (detached; a sequence becomes float64)."""
    if isinstance(value, Tensor):
        bound = value.detach()
    elif isinstance(value, float | int):
        if not math.isfinite(value):
            raise ValueError(f"ZBox bound {which!r} must be finite, got {value!r}")
        return float(value)
    else:
        bound = torch.as_tensor(value, dtype=torch.float64)
    if not bound.is_floating_point():
        bound = bound.double()
    if not bool(torch.isfinite(bound).all()):
        raise ValueError(f"ZBox bound {which!r} must be finite")
    return bound
