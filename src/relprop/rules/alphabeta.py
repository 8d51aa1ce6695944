"""LRP-αβ and z⁺ (its α = 1, β = 0 case) for linear layers.

``R_j = sum_k (α (a_j w_jk)^+ / z_k^+ − β (a_j w_jk)^- / z_k^-) R_k`` (Bach et al. 2015), in
signal form as the rules of :mod:`relprop.rules.layers`: from ``grad = R / z`` at the output,
the signal ``c`` at the input with ``R_j = a_j c_j``. Most of this module is how to pay for
it: the positive forward and the two vjps as few kernels as the layer allows (a stacked
``[W⁺; W⁻]``, the block ``[[W⁺, W⁻], [W⁻, W⁺]]`` on an image's channels), the signal made in
place, on the CPU in chunks of the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    LayerRule,
    is_nonnegative,
    negative_contributions,
    positive_contributions,
    signed_vjp,
)
from .ops import LinearOp

__all__ = ["AlphaBeta", "ZPlus"]


class AlphaBeta(LayerRule):
    """LRP-αβ (Bach et al. 2015) with ``α − β = 1``, for inputs of either sign.

    ``R_j = sum_k (α (a_j w_jk)^+ / z_k^+ − β (a_j w_jk)^- / z_k^-) R_k`` with
    ``z_k^± = sum_j (a_j w_jk)^± + b_k^±``. Positive contributions are ``a^+ w^+ + a^- w^-``.
    """

    reads_grad = False

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> None:
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha!r}, beta={beta!r}")
        if abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError(
                f"alpha - beta must equal 1 for conservation, got alpha={alpha!r}, beta={beta!r}"
            )
        super().__init__(stabilizer)
        self.alpha = float(alpha)
        self.beta = float(beta)

    @property
    def relevance_tolerance(self) -> float | None:  # type: ignore[override]
        """β > 0: an output whose contributions all have one sign returns α·R (or −β·R)
        instead of R; the engine warns where a layer's relevance changes by more than half."""
        return 0.5 if self.beta > 0 else None

    def propagate(self, op: LinearOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        nonneg, _ = op.once(("nonneg", "a"),
                            lambda: op.nonnegative_input or is_nonnegative(a))
        stacked = self._stacked(op, a, z, nonneg)
        if stacked is not None and not op.again and not _coarse(z):
            return self._propagate_once(op, a, z, grad, stacked)
        (d_pos, d_neg, factor, signs), _ = op.once(
            ("alpha-beta", id(self)), lambda: self._denominators(op, a, z, nonneg, stacked))
        signal = None
        if stacked is not None:  # [s⁺, s⁻] side by side along the channels, for one vjp
            channels = z.shape[1]
            signal = z.new_empty((z.shape[0], 2 * channels, *z.shape[2:]))
            relevance = torch.mul(z, grad, out=signal[:, :channels])
        else:
            relevance = z * grad
        s_neg = None
        if d_neg is not None and factor is not None:
            op.report("relevance_change",
                      self._change(_per_sample_dot(factor, relevance), _per_sample_sum(relevance)))
            s_neg = torch.div(relevance, d_neg,  # −β R / z⁻
                              out=None if signal is None else signal[:, channels:])
        s_pos = relevance.div_(d_pos)  # α R / z⁺
        del d_pos, d_neg, factor  # temporaries go before the vjps (peak memory)
        if _overflows(z):  # a share whose signal left float16's range is absorbed
            for s in (signal,) if signal is not None else (s_pos, s_neg):
                if s is not None:
                    s.nan_to_num_(0.0, 0.0, 0.0)
        if signal is not None and stacked is not None:
            del s_pos, s_neg, relevance
            return _pull_stacked(op, a, signs, stacked, signal)
        return signed_vjp(op, a, nonneg, s_pos, s_neg)

    def _propagate_once(self, op: LinearOp, a: Tensor, z: Tensor, grad: Tensor,
                        stacked: Tensor) -> Tensor:
        """:meth:`propagate` where the terms serve this one signal (no other target follows)
        and the two vjps run as one; on the CPU in chunks of the batch whose signal
        ``[s⁺, s⁻]`` stays within :data:`_CHUNK_BYTES` (see :meth:`_pull_once`)."""
        step = z.shape[0] if z.device.type != "cpu" else max(
            1, _CHUNK_BYTES // max(1, 2 * z[0].numel() * z.element_size()))
        parts = [self._pull_once(op, a[i: i + step], z[i: i + step], grad[i: i + step],
                                 stacked) for i in range(0, z.shape[0], step)]
        c, passed, arrived = (torch.cat(part) if len(parts) > 1 else part[0]
                              for part in zip(*parts))
        op.report("relevance_change", self._change(passed, arrived))
        return c

    def _pull_once(self, op: LinearOp, a: Tensor, z: Tensor, grad: Tensor, stacked: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """``c`` for samples ``a``, with the report's ``Σ factor·R`` and ``Σ R`` per sample.

        ``−z⁻`` is made where ``s⁻`` goes and ``R`` where ``s⁺`` goes, so that the
        temporaries of the output's size are ``z⁺``, the signal and one mask. Passes over
        the output: the subtraction, ``z·grad``, the report's two comparisons, two dots and
        sum (:meth:`_passed`), the clamp and the two divisions, which weigh by α and β as
        they divide (:func:`_weighted_ratio`)."""
        channels = z.shape[1]
        signal = z.new_empty((z.shape[0], 2 * channels, *z.shape[2:]))
        relevance, s_neg = signal[:, :channels], signal[:, channels:]
        shift = self._shift(op)
        signs = None if stacked.shape[1] == a.shape[1] else _signs_side_by_side(a)
        z_pos = self._positive_denominator(op, a, signs is None, stacked, signs, shift)
        torch.sub(z_pos, z, out=s_neg)  # −z⁻ = ε − (N + b⁻), see _denominators
        torch.mul(z, grad, out=relevance)
        passed = self._passed(op, z_pos, s_neg, shift, relevance)
        arrived = _per_sample_sum(relevance)
        self._finish_negative_(s_neg, scale=False)
        self._finish_positive_(z_pos, scale=False)
        _weighted_ratio(relevance, s_neg, self.beta, out=s_neg)  # −β R / z⁻
        _weighted_ratio(relevance, z_pos, self.alpha, out=relevance)  # α R / z⁺
        del z_pos, relevance, s_neg  # temporaries go before the vjp (peak memory)
        return _pull_stacked(op, a, signs, stacked, signal), passed, arrived

    def _shift(self, op: LinearOp) -> Tensor | None:
        """The bias of the positive forward, ``b⁺ + ε`` (``None`` without a bias), made
        afresh: one value per channel costs less than a look-up in the ρ(W) cache."""
        bias = op.bias
        if bias is None:
            return None
        positive = bias.clamp(min=0)
        return positive.add_(self.stabilizer) if self.stabilizer else positive

    def _positive_denominator(self, op: LinearOp, a: Tensor, nonneg: bool,
                              stacked: Tensor | None, signs: Tensor | None,
                              shift: Tensor | None) -> Tensor:
        """``z⁺ = P + b⁺ + ε``: the forward with ``W⁺`` (the first half of ``[W⁺; W⁻]``), or
        on inputs of both signs with ``[W⁺, W⁻]`` on ``[a⁺, a⁻]`` (the first half of the
        block, see :meth:`_block`), or with ``W⁺`` on ``a⁺`` plus ``W⁻`` on ``a⁻``."""
        if stacked is not None:
            z_pos = op.forward(a if signs is None else signs,
                               stacked[: stacked.shape[0] // 2], shift)
        else:
            z_pos = positive_contributions(op, a, nonneg, shift)
        if shift is None and self.stabilizer:
            z_pos.add_(self.stabilizer)
        return z_pos

    def _finish_positive_(self, z_pos: Tensor, scale: bool = True) -> None:
        """``z⁺`` into the denominator of ``s⁺``: ``inf`` where 0 for ε = 0, over α (unless
        ``scale`` is False: the caller weighs the quotient instead)."""
        if self.stabilizer == 0:
            z_pos.masked_fill_(z_pos == 0, float("inf"))
        if scale and self.alpha != 1:
            z_pos.div_(self.alpha)

    def _finish_negative_(self, d_neg: Tensor, scale: bool = True) -> None:
        """``z⁺ − z`` into the denominator of ``s⁻``: clamped at ``ε`` (``z`` and ``z⁺`` round
        differently: no 0, no wrong sign), ``inf`` where 0 for ε = 0 (no negative
        contribution, no negative bias: the share is 0), over β (unless ``scale`` is
        False)."""
        eps = self.stabilizer
        d_neg.clamp_(min=eps)
        if eps == 0:
            d_neg.masked_fill_(d_neg == 0, float("inf"))
        if scale and self.beta != 1:
            d_neg.div_(self.beta)

    def _denominators(self, op: LinearOp, a: Tensor, z: Tensor, nonneg: bool,
                      stacked: Tensor | None
                      ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """What does not depend on the signal: the stabilised denominators with the rule's
        weights folded in, ``z⁺/α`` and ``z⁻/(−β)`` (``None`` for β = 0), so that a signal
        costs one division per branch; each output's relevance factor over α for the report
        (``None`` for β = 0, see :meth:`_factor`); and, where the vjps run as one on inputs
        of both signs, ``[a⁺, a⁻]`` (:meth:`_block`).

        ``z⁺ = P + b⁺ + ε`` is the forward with ``W⁺`` and the bias ``b⁺ + ε`` (the
        convolution adds it: no pass). With ``z = P + N + b``, the stabilised
        ``−z⁻ = −(N + b⁻) + ε = z⁺ − z`` is one subtraction: ``z⁻ ≤ 0``, so its stabiliser
        is ``−ε`` without a sign test; but ``z`` (the model's) and ``z⁺`` are sums in
        different orders, so where ``N + b⁻`` is near 0 their difference is rounding noise
        of the size of ``P`` and is clamped at ``ε`` (no 0, no wrong sign). Passes over the
        output: that subtraction and clamp, the factor's two comparisons and one
        subtraction, and the scalings by ``1/α`` and ``1/β`` (in place, only where they are
        not 1); ``ε = 0`` adds the fills of exactly-0 denominators. (Keeping ``z / z⁺`` for
        z⁺ would save the relevance temporary, but overflows float16 where ``z < 0`` meets
        ``z⁺ = ε``.)"""
        shift = self._shift(op)
        signs = None if nonneg or stacked is None else _signs_side_by_side(a)
        z_pos = self._positive_denominator(op, a, nonneg, stacked, signs, shift)
        d_neg = factor = None
        if self.beta != 0:
            d_neg = (_negative_denominator(op, a, nonneg, self.stabilizer) if _coarse(z)
                     else torch.sub(z_pos, z))  # −z⁻ = ε − (N + b⁻) ≥ ε
            factor = self._factor(op, z_pos, d_neg, shift)
            if _coarse(z):
                if self.beta != 1:
                    d_neg.div_(self.beta)
            else:
                self._finish_negative_(d_neg)
        self._finish_positive_(z_pos)
        return z_pos, d_neg, factor, signs

    def _stacked(self, op: LinearOp, a: Tensor, z: Tensor, nonneg: bool) -> Tensor | None:
        """The weights for one vjp of ``[s⁺, s⁻]`` where the op allows it (see
        :meth:`LinearOp.stackable`): ``[W⁺; W⁻]`` on inputs ``≥ 0``; on inputs of both signs
        with few channels (an image's), the block of :meth:`_block`; else ``None``."""
        if self.beta == 0 or not op.stackable(a, z):
            return None
        if nonneg:
            return self._stacked_weights(op)
        return self._block(op) if a.shape[1] <= _FEW_CHANNELS else None

    @staticmethod
    def _stacked_weights(op: LinearOp) -> Tensor:
        """``[W⁺; W⁻]`` along the output channels, kept like ``W⁺`` (see
        :meth:`LinearOp.stackable`): one vjp of the side-by-side signals ``[s⁺, s⁻]`` is
        ``W⁺ᵀ s⁺ + W⁻ᵀ s⁻``."""
        def make() -> Tensor:
            w, _ = op.weight_for_transform()
            out = w.new_empty((2 * w.shape[0], *w.shape[1:]))
            torch.clamp(w, min=0, out=out[: w.shape[0]])
            torch.clamp(w, max=0, out=out[w.shape[0]:])
            return out

        return op.rho("[w+;w-]", make)

    @staticmethod
    def _block(op: LinearOp) -> Tensor:
        """``[[W⁺, W⁻], [W⁻, W⁺]]`` (output channels × input channels), kept like ``W⁺``,
        for inputs of both signs: its first half on ``[a⁺, a⁻]`` is the positive forward
        ``a⁺W⁺ + a⁻W⁻``, and one vjp of ``[s⁺, s⁻]`` gives both branches of
        :func:`signed_vjp` side by side, ``W⁺ᵀs⁺ + W⁻ᵀs⁻`` (for ``a > 0``) and
        ``W⁻ᵀs⁺ + W⁺ᵀs⁻`` (for ``a < 0``): the FLOPs of the four vjps, but a convolution
        over an image's 3 channels costs about what one over 6 or 16 does."""
        def make() -> Tensor:
            w, _ = op.weight_for_transform()
            positive, negative = w.clamp(min=0), w.clamp(max=0)
            return torch.cat([torch.cat([positive, negative], 1),
                              torch.cat([negative, positive], 1)])

        return op.rho("[w+,w-;w-,w+]", make)

    def _factor(self, op: LinearOp, z_pos: Tensor, d_neg: Tensor, shift: Tensor | None
                ) -> Tensor:
        """``[P_k > 0] − (β/α)[N_k < 0]`` (the relevance factor of output ``k`` over α),
        from ``z⁺ = P + b⁺ + ε`` and ``−z⁻ = ε − N − b⁻`` (``shift = b⁺ + ε``), see
        :meth:`_thresholds`. The comparisons write 0/1 in the output's dtype: boolean masks
        and ``where`` cost several times an arithmetic pass on the CPU."""
        positive, negative = self._thresholds(op, shift, z_pos)
        factor = torch.gt(z_pos, positive, out=torch.empty_like(z_pos))
        mask = torch.gt(d_neg, negative, out=torch.empty_like(d_neg))
        return factor.sub_(mask, alpha=self.beta / self.alpha)

    def _passed(self, op: LinearOp, z_pos: Tensor, d_neg: Tensor, shift: Tensor | None,
                relevance: Tensor) -> Tensor:
        """``Σ factor·R`` per sample (see :meth:`_factor`) without the factor: the two 0/1
        masks in turn in one temporary, each read by a dot with ``R``."""
        positive, negative = self._thresholds(op, shift, z_pos)
        mask = torch.gt(z_pos, positive, out=torch.empty_like(z_pos))
        passed = _per_sample_dot(mask, relevance)
        torch.gt(d_neg, negative, out=mask)
        return passed.sub_(_per_sample_dot(mask, relevance), alpha=self.beta / self.alpha)

    def _thresholds(self, op: LinearOp, shift: Tensor | None, like: Tensor
                    ) -> tuple[float | Tensor, float | Tensor]:
        """What ``z⁺`` exceeds where ``P > 0`` (``shift``, or ε without a bias) and what
        ``−z⁻`` exceeds where ``N < 0`` (``shift − b``). Where ``P`` or ``N`` is exactly 0
        but other terms are not, ``z`` (the model's) and ``z⁺`` (summed in another order)
        round differently, and the test is as noisy as that term is small (as it was from
        ``z − (P + b)``)."""
        eps, bias = self.stabilizer, op.bias
        positive = eps if shift is None else op.broadcast(shift, like)
        # N = 0 leaves −z⁻ = (P + shift) − (P + b): compared with shift − b, rounded the
        # same way, an output over inputs that are all 0 (z = b) is exactly at its threshold
        negative = eps if shift is None or bias is None else op.broadcast(shift - bias, like)
        return positive, negative

    def _change(self, passed: Tensor, arrived: Tensor) -> Tensor:
        """Per sample, the relevance the rule creates or destroys, as a fraction of what
        arrived, biases aside, from ``passed = Σ factor·R`` and ``arrived = Σ R``: output
        ``k`` passes ``α·factor_k·R_k`` with ``factor_k = [P_k > 0] − (β/α)[N_k < 0]``, so
        the change is ``α Σ factor·R / Σ R − 1``."""
        judged = arrived.abs() > 1e-3 * arrived.abs().max()
        change = passed.mul_(self.alpha).div_(torch.where(judged, arrived, 1.0)).sub_(1.0)
        return change.mul_(judged)


#: the most bytes of ``[s⁺, s⁻]`` αβ makes at once on the CPU: the batch runs in chunks
#: below it, so that a chunk's terms stay in the cache between their passes, and below
#: glibc's largest threshold for mapped memory (32 MiB), above which every allocation is
#: fresh memory, paid for page by page at each call (ResNet-50 at batch 8: 8 thousand page
#: faults per explanation instead of 200 thousand). A GPU runs the batch whole
_CHUNK_BYTES = 8 << 20

#: input channels up to which a convolution's inputs of both signs run as one (see
#: ``AlphaBeta._block``): doubling them costs the kernel little there, and more above
_FEW_CHANNELS = 16


def _signs_side_by_side(a: Tensor) -> Tensor:
    """``[a⁺, a⁻]`` along the channels."""
    channels = a.shape[1]
    out = a.new_empty((a.shape[0], 2 * channels, *a.shape[2:]))
    torch.clamp(a, min=0, out=out[:, :channels])
    torch.clamp(a, max=0, out=out[:, channels:])
    return out


def _pull_stacked(op: LinearOp, a: Tensor, signs: Tensor | None, stacked: Tensor,
                  signal: Tensor) -> Tensor:
    """``c`` from one vjp of ``[s⁺, s⁻]`` through ``stacked``: on inputs ``≥ 0`` (``signs``
    is ``None``) that is ``c``; on inputs of both signs (the block) it holds the branch for
    ``a > 0`` and the one for ``a < 0`` side by side (at ``a = 0`` either gives ``R = 0``)."""
    if signs is None:
        return op.input_vjp(a, stacked, signal)
    both = op.input_vjp(signs, stacked, signal)
    channels = a.shape[1]
    return torch.where(a > 0, both[:, :channels], both[:, channels:])


def _weighted_ratio(numerator: Tensor, denominator: Tensor, weight: float, out: Tensor
                    ) -> Tensor:
    """``weight · numerator / denominator`` into ``out`` in one pass: ``addcdiv`` onto a
    zero where ``weight ≠ 1`` (a power of two gives the quotient by ``denominator / weight``
    to the bit), a division where it is 1."""
    if weight == 1:
        return torch.div(numerator, denominator, out=out)
    zero = numerator.new_zeros(())
    return torch.addcdiv(zero, numerator, denominator, value=weight, out=out)


def _per_sample_dot(x: Tensor, y: Tensor) -> Tensor:
    """``Σ x·y`` per sample (dim 0; a tensor without a batch dim is one sample): one BLAS
    dot per sample where the samples are large (no temporary), else a product and a sum."""
    batch = x.shape[0] if x.dim() else 1
    flat_x, flat_y = x.reshape(batch, -1), y.reshape(batch, -1)
    if flat_x.shape[1] >= 4096:
        return torch.stack([torch.dot(u, v) for u, v in zip(flat_x, flat_y)])
    return (flat_x * flat_y).sum(1)


def _per_sample_sum(x: Tensor) -> Tensor:
    """``Σ x`` per sample (dim 0)."""
    return x.reshape(x.shape[0] if x.dim() else 1, -1).sum(1)


def _coarse(t: Tensor) -> bool:
    """Whether ``t``'s dtype keeps too few digits for a denominator made by subtracting two
    sums of the same size (bfloat16: 3 significant digits, float16: 4)."""
    return t.is_floating_point() and torch.finfo(t.dtype).eps > 1e-4


def _overflows(t: Tensor) -> bool:
    """Whether a quotient ``R / ε`` can leave ``t``'s dtype's range (float16: 65504): an
    output whose contributions of one sign are all below about ``|R| / 65504`` then has an
    infinite signal, which meets contributions of 0 in the vjp (inf · 0 = NaN). Such a share
    is absorbed instead, as a stabiliser absorbs a share it dwarfs."""
    return t.is_floating_point() and torch.finfo(t.dtype).max < 1e6


def _negative_denominator(op: LinearOp, a: Tensor, nonneg: bool, eps: float) -> Tensor:
    """``−z⁻ + ε = ε − (N + b⁻)`` from a forward with ``W⁻`` (and ``W⁺`` on ``a⁻``), for
    coarse dtypes: ``z⁺ − z`` would be rounding noise of the size of ``P`` wherever ``N`` is
    small against it, and a quotient by noise blows a share up. Outputs without negative
    contributions and bias (``N + b⁻`` = 0 to the dtype's precision) pass no negative
    relevance (``inf``): ``R / ε`` overflows float16, and their share is 0 anyway."""
    n = negative_contributions(op, a, nonneg, op.negative_bias)
    d_neg = n.neg_().add_(eps)
    return d_neg.masked_fill_(d_neg <= eps, float("inf"))


class ZPlus(AlphaBeta):
    """z⁺ rule (Montavon et al. 2017): ``R_j = sum_k (a_j w_jk)^+ / sum_{0,j} (a_j w_jk)^+ R_k``.

    Identical to ``AlphaBeta(1, 0)`` and the limit γ → ∞ of :class:`Gamma` on positive outputs.
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(1.0, 0.0, stabilizer)

    def __repr__(self) -> str:
        return f"ZPlus(stabilizer={self.stabilizer!r})"
