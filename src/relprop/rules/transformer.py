"""LRP rules for the ops of transformers: softmax, LayerNorm/RMSNorm and fused attention.

AttnLRP (Achtibat et al. 2024, "AttnLRP: attention-aware layer-wise relevance propagation
for transformers") gives softmax a deep-Taylor rule, splits products of activations uniformly
(:class:`~relprop.rules.Product`) and passes relevance through the normalisation of LayerNorm
and RMSNorm unchanged (the identity rule), with ε-LRP on the linear maps around it.
CP-LRP (Ali et al. 2022, "XAI for transformers: better explanations through conservative
propagation") holds the attention weights constant: no relevance flows through the
query-key product, all of it through the values.

The engine carries ``G = R / a`` (see :mod:`relprop.rules.layers`); each rule here maps the
signal ``grad`` at the op's output to the signal at its input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Rule, epsilon_ratio, scaled_signal
from .elementwise import Pass
from .ops import NormOp, ShareOp, SoftmaxOp

__all__ = ["SoftmaxTaylor", "Constant", "NormIdentity", "Attention", "layer_norm_signal",
           "group_norm_signal", "scaled_signal_of"]


class SoftmaxTaylor(Rule):
    """Softmax ``s = softmax(x)`` by its deep-Taylor decomposition (AttnLRP, Prop. 3.1):

    ``R_i^in = x_i (R_i − s_i Σ_j R_j)``

    — a Taylor expansion of each ``s_i`` at ``x`` whose bias term absorbs the rest (softmax
    is not positively homogeneous, so this rule does not conserve). Because the engine
    carries ``G = R / s``, this is exactly the softmax's own vector-Jacobian product:
    ``c_i = s_i (G_i − Σ_j s_j G_j)`` with ``R_i^in = x_i c_i``.
    """

    kinds = frozenset({"softmax"})

    def propagate(self, op: SoftmaxOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        return op.gradient(a, z, grad)


class Constant(Rule):
    """The op's output is held constant (CP-LRP for attention weights, Ali et al. 2022).

    No relevance flows back through the op: ``R^in = 0``; a product that uses its output
    treats it as a weight, so the other factors take all of the product's relevance
    (``R_v = R_out`` for ``out = A v``). Conservative through the attention block.
    """

    kinds = frozenset({"softmax"})
    constant_output = True

    def propagate(self, op: object, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        return torch.zeros_like(a)


class NormIdentity(Rule):
    """LayerNorm / RMSNorm with the identity rule on the normalisation (AttnLRP, §3.3.2).

    ``y = w ⊙ (x − μ(x)) / σ(x) + b``: the division by ``σ`` passes relevance unchanged, the
    centring and the affine map take ε-LRP. With ``σ`` held at its value the layer is an
    affine map ``y = J x + b`` and the rule is ``R_x = x ⊙ Jᵀ (R_y / (y + ε·sign(y)))``; it
    conserves up to the bias ``b``'s share and ε. RMSNorm ``y = w ⊙ x / rms(x)`` has no
    centring and no bias: it takes the identity rule ``R_x = R_y`` exactly (ε plays no role).

    The same rule covers the other normalisations (:class:`~relprop.rules.NormOp`'s
    ``norm``), each read as the affine map it is once its statistic is held constant:

    * GroupNorm ``y_c = w_c (x_c − μ_g) / σ_g + b_c`` (channel ``c`` in group ``g``, ``μ_g``,
      ``σ_g`` over the group's channels and positions): LayerNorm's rule with the centring
      and ``σ`` per group, ``c_x = P_g (w ⊙ s_g ⊙ G_ε)`` with ``P_g`` subtracting each group's
      mean and ``G_ε = R_y / (y + ε·sign(y))``; ``Σ R_x = Σ R_y − Σ b ⊙ G_ε``;
    * a normalisation written by hand (DeBERTa's, I-BERT's, Cohere's LayerNorm), recognised by
      the engine by comparing the module's output with ``F.layer_norm``/RMSNorm of its input:
      LayerNorm's or RMSNorm's rule above;
    * a multiplier ``m(x)`` held constant, ``y = m ⊙ x + b`` (ConvNeXt V2's global response
      normalisation ``x + γ (x ⊙ N(x)) + β = (1 + γ N(x)) ⊙ x + β``, ``N`` the ratio of each
      channel's spatial L2 norm to the channels' mean): one input per output, ε-LRP,
      ``R_x = x m / (y + ε·sign(y)) · R_y`` — the identity ``R_x = R_y`` without ``β``;
    * an RMSNorm-like module (``z = m(a) ⊙ a``), and Mamba2's gated RMSNorm
      ``y = w ⊙ h / rms(h)``, ``h = x ⊙ silu(gate)``: ``R_x = R_y`` — the gate is a gate
      (signal-take-all: the product ``x ⊙ silu(gate)`` with the gate held constant is linear in
      ``x``, which takes all of its relevance), the gate's branch takes none.
    """

    kinds = frozenset({"layer_norm"})

    def __init__(self, epsilon: float = 1e-6) -> None:
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
        self.epsilon = float(epsilon)

    def propagate(self, op: NormOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        if op.norm == "module":  # an RMSNorm-like module as one op: R_a = R_z
            return Pass().propagate(op, a, z, grad)
        if op.norm == "group":
            return group_norm_signal(a, z, grad, op.weight, op.groups, op.eps, self.epsilon,
                                     op.scale)
        if op.norm == "scaled":
            assert op.multiplier is not None
            return scaled_signal_of(z, grad, op.multiplier, self.epsilon if op.bias else 0.0)
        return layer_norm_signal(a, z, grad, op.weight, op.dims, op.eps, op.norm == "layer",
                                 self.epsilon, op.scale)


class Attention(Rule):
    """Fused attention ``O = softmax(q kᵀ · scale + mask) v`` as one op.

    With ``through_scores=True`` (AttnLRP) it is the composition of the uniform product rule
    on ``A v``, :class:`SoftmaxTaylor` on ``A`` and the uniform product rule on ``q kᵀ``.
    Carrying ``G = R / O``, that composition is the attention's own vector-Jacobian product
    scaled per input: ``c_v = ½ ∂O/∂v ᵀ G``, ``c_q = ¼ ∂O/∂q ᵀ G``, ``c_k = ¼ ∂O/∂k ᵀ G`` —
    so PyTorch's fused backward computes it without building the attention matrix.
    With ``through_scores=False`` (CP-LRP) the attention weights are constant:
    ``c_v = ∂O/∂v ᵀ G`` and queries and keys take nothing.

    A float mask ``m`` computed from the input (``softmax(q kᵀ · scale + m) v``) is a third
    term of the scores: LRP-0 on the sum ``s = q kᵀ · scale + m`` gives it ``m ⊙ ∂R/∂s``,
    i.e. ``c_m = ½ ∂O/∂m ᵀ G`` (the scores' share before the product rule halves it between
    ``q`` and ``k``), and nothing under CP-LRP.
    """

    kinds = frozenset({"attention"})

    def __init__(self, through_scores: bool = True) -> None:
        self.through_scores = bool(through_scores)

    def shares(self) -> tuple[float, float, float]:
        """Scale of the query, key and value vector-Jacobian products."""
        return (0.25, 0.25, 0.5) if self.through_scores else (0.0, 0.0, 1.0)

    def propagate(self, op: ShareOp, a: Tensor, z: Tensor, grad: Tensor) -> Tensor | None:
        """The signal of input ``op.position`` (query, key, value, or a float mask computed
        from the input: the scores' share, ``½`` with ``through_scores``, else 0)."""
        if op.position == 3:
            return scaled_signal(grad, 0.5 if self.through_scores else 0.0)
        return scaled_signal(grad, self.shares()[op.position])


def layer_norm_signal(a: Tensor, z: Tensor, grad: Tensor, weight: Tensor | None,
                      dims: int, eps: float, centred: bool, epsilon: float,
                      scale: Tensor | None = None) -> Tensor:
    """:class:`NormIdentity` for one LayerNorm (``centred``) or RMSNorm call.

    ``a`` input, ``z`` output, ``grad = R / z``; normalised over the last ``dims`` dims;
    ``scale``: ``1/σ`` per normalised group when the forward pass kept it.
    Returns ``c`` with ``R_a = a ⊙ c``.
    """
    reduce = tuple(range(a.dim() - dims, a.dim()))
    if scale is None:
        stat = a.double() if a.dtype in (torch.float16, torch.bfloat16) else a
        second = stat.var(dim=reduce, unbiased=False, keepdim=True) if centred \
            else stat.pow(2).mean(dim=reduce, keepdim=True)
        scale = torch.rsqrt(second + eps)
    signal = grad
    if epsilon and centred:  # R / (z + ε sign z) = grad · (1 − ε / (|z| + ε))
        signal = grad * epsilon_ratio(z, epsilon)
    signal = signal * scale.to(a.dtype)
    if weight is not None:
        signal = signal * weight
    if centred:
        signal = signal - signal.mean(dim=reduce, keepdim=True)
    return signal


def group_norm_signal(a: Tensor, z: Tensor, grad: Tensor, weight: Tensor | None, groups: int,
                      eps: float, epsilon: float, scale: Tensor | None = None) -> Tensor:
    """:class:`NormIdentity` for one GroupNorm call ``F.group_norm(a, groups, weight, ...)``.

    ``a`` of shape ``(N, C, *)``, ``groups`` groups of ``C / groups`` channels, ``μ`` and
    ``σ`` over each group's channels and positions; ``scale``: ``1/σ`` of shape
    ``(N, groups)`` when the forward pass kept it. ``c = P_g (w ⊙ s_g ⊙ G_ε)`` with ``P_g``
    the centring within each group; returns ``c`` with ``R_a = a ⊙ c``.
    """
    batch = a.shape[0]
    flat = a.reshape(batch, groups, -1)
    if scale is None:
        stat = flat.double() if a.dtype in (torch.float16, torch.bfloat16) else flat
        scale = torch.rsqrt(stat.var(dim=-1, unbiased=False, keepdim=True) + eps)
    signal = grad * epsilon_ratio(z, epsilon) if epsilon else grad
    if weight is not None:
        signal = signal * weight.reshape(1, -1, *([1] * (a.dim() - 2)))
    grouped = signal.reshape(batch, groups, -1) * scale.reshape(batch, groups, 1).to(a.dtype)
    return (grouped - grouped.mean(dim=-1, keepdim=True)).reshape(a.shape)


def scaled_signal_of(z: Tensor, grad: Tensor, multiplier: Tensor, epsilon: float) -> Tensor:
    """:class:`NormIdentity` for ``z = m ⊙ a + b`` with ``m`` held constant (ε-LRP, one input
    per output): ``R_a = a m R_z / (z + ε·sign(z))``, i.e. ``c = m ⊙ grad · z / (z + ε·sign(z))``;
    ``epsilon = 0`` where the op adds no bias (then ``R_a = R_z`` exactly)."""
    signal = grad * epsilon_ratio(z, epsilon) if epsilon else grad
    return signal * multiplier.to(signal.dtype)
