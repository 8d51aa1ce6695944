"""Views of one op call, as a rule sees them: what the op computes and its own gradient.

A :class:`LinearOp` is ``z = W a + b`` for one call of a linear, convolution, transposed
convolution or elementwise-affine (stand-alone BatchNorm) op. Rules evaluate the op with
modified weights ``rho(W)`` (``forward``) and pull a signal back through it (``input_vjp``)
without ever touching the model's parameters.

The other kinds: :class:`ElementwiseOp` (activations, ``z = f(a)``), :class:`PoolOp` (max
pooling), :class:`SoftmaxOp`, :class:`NormOp` (LayerNorm, RMSNorm) and :class:`ShareOp` (one
factor of a product, one input of a fused attention). Every view has ``gradient(a, z, grad)``,
the op's own vector-Jacobian product, which is what :class:`~relprop.rules.Gradient` uses.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cache

__all__ = ["LinearOp", "ElementwiseOp", "PoolOp", "SoftmaxOp", "NormOp", "ShareOp",
           "LAYER_KINDS"]

#: op kinds that are linear layers with weights (rules with rho(W) apply to them)
LAYER_KINDS = frozenset({"linear", "conv", "conv_transpose", "norm"})


class _Seeded(torch.autograd.Function):
    """A scalar made from ``output`` whose backward hands ``seed`` itself to ``output``: the
    gradient of ``⟨seed, output⟩``, without a copy of the seed (``seed · 1`` would be one:
    a language model's output at 1,024 tokens and 32,000 tokens of vocabulary is 125 MiB, and
    the copy lived until the head's backward step). The scalar's value is 0: only its
    gradient is used."""

    @staticmethod
    def forward(ctx: Any, output: Tensor, seed: Tensor) -> Tensor:
        ctx.seed = seed
        return output.new_zeros(())

    @staticmethod
    def backward(ctx: Any, _: Tensor) -> tuple[Tensor, None]:
        seed, ctx.seed = ctx.seed, None  # the node does not keep it past its step
        return seed, None


def seeded_grad(output: Tensor, inputs: Sequence[Tensor], seed: Tensor | list[Tensor],
                **options: Any) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(output, inputs, seed, **options)``, taken as the gradient of a
    scalar whose backward hands ``seed`` to ``output`` (:class:`_Seeded`): the same numbers,
    without the module import (sympy, about 0.6 s) that ``torch.autograd.grad`` makes the
    first time a process passes it a tensor seed. No op writes into the gradient it is
    handed, so ``seed`` is left as it was. ``seed`` in a one-element list is taken out of it:
    then nothing keeps it once the output's node has used it, as a plain backward pass lets
    its output's gradient go."""
    if isinstance(seed, list):
        seed = seed.pop()
    if seed.shape != output.shape:
        raise ValueError(f"seed of shape {tuple(seed.shape)} for an output of shape "
                         f"{tuple(output.shape)}")
    with torch.enable_grad():  # also inside a backward pass, where grad mode is off
        score = _Seeded.apply(output, seed.to(output.dtype))
    del seed
    return torch.autograd.grad(score, inputs, **options)


def _own_vjp(fn: Callable[[Tensor], Tensor], a: Tensor, grad: Tensor) -> Tensor:
    with torch.enable_grad():
        a_ = a.detach().requires_grad_(True)
        (g,) = seeded_grad(fn(a_), [a_], grad)
    assert g is not None
    return g


@dataclass
class ElementwiseOp:
    """``z = fn(a)`` elementwise (an activation, or an op a rule named in ``elementwise_ops``)."""

    kind: str
    fn: Callable[[Tensor], Tensor]

    def gradient(self, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        """``f'(a) · grad``."""
        return _own_vjp(self.fn, a, grad)


@dataclass
class PoolOp:
    """Max pooling over the last ``nd`` dims with ``options`` (kernel_size, stride, ...);
    ``indices`` are the arg-max positions within each plane (set by the forward pass)."""

    options: dict[str, Any]
    nd: int
    indices: Tensor | None = None
    kind: str = "max_pool"

    def gradient(self, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        """All of each output's signal to its arg-max (the gradient of max pooling): torch's
        own backward kernel for 2-D and 3-D pooling (one pass, no temporary), a scatter of
        the signal onto the arg-max positions for 1-D."""
        assert self.indices is not None
        backward = _MAX_POOL_BACKWARD.get(self.nd)
        if backward is not None and a.dim() in (self.nd + 1, self.nd + 2):
            o, nd = self.options, self.nd
            kernel = _tuple(o["kernel_size"], nd)
            stride = o.get("stride")
            result: Tensor = backward(
                grad, a, kernel, _tuple(stride, nd) if stride else kernel,
                _tuple(o.get("padding", 0), nd),
                _tuple(o.get("dilation", 1), nd), bool(o.get("ceil_mode", False)),
                self.indices)
            return result
        spatial = a.dim() - self.nd  # indices count within each (batch, channel) plane
        g = torch.zeros_like(a).flatten(spatial)  # out of place: the signal may be vmapped
        g = g.scatter_add(-1, self.indices.flatten(spatial), grad.flatten(spatial))
        return g.view_as(a)

    def average_vjp(self, a: Tensor, grad: Tensor) -> Tensor:
        """The vjp of average pooling over the same windows (``sum_k 1/n_k grad_k``)."""
        if self.options.get("dilation", 1) not in (1, (1,), (1, 1), (1, 1, 1)):
            raise ValueError("a dilated max pooling cannot be read as sum pooling")
        avg = getattr(F, f"avg_pool{self.nd}d")
        kwargs = {k: self.options[k] for k in ("kernel_size", "stride", "padding", "ceil_mode")}
        return _own_vjp(lambda t: avg(t, **kwargs), a, grad)

    def average(self, a: Tensor) -> Tensor:
        """Average pooling of ``a`` over the same windows."""
        avg = getattr(F, f"avg_pool{self.nd}d")
        return avg(a, **{k: self.options[k] for k in ("kernel_size", "stride", "padding",
                                                        "ceil_mode")})


@dataclass
class SoftmaxOp:
    """``z = softmax(a)`` along ``dim``."""

    dim: int
    kind: str = "softmax"

    def gradient(self, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        """``c_i = s_i (G_i − Σ_j s_j G_j)``, in the output's precision: PyTorch's fused
        softmax backward where input and output share a dtype, else spelled out. A row whose
        inputs are all ``-inf`` has no weights (NaN; LED pads its window with such rows and
        overwrites them after the softmax): it passes no signal."""
        if not bool(torch.isfinite(z).all()):
            z = torch.nan_to_num(z, nan=0.0)
        if a.dtype == z.dtype:
            return torch.ops.aten._softmax_backward_data.default(  # the overload: no lookup
                grad.to(z.dtype), z, self.dim, a.dtype)
        weighted = z * grad.to(z.dtype)
        return (weighted - z * weighted.sum(dim=self.dim, keepdim=True)).to(a.dtype)


@dataclass
class NormOp:
    """A normalisation, as one op of kind ``layer_norm``; ``norm`` says which:

    * ``"layer"`` (LayerNorm) or ``"rms"`` (RMSNorm) over the last ``dims`` dims, with
      ``weight`` and ``eps``;
    * ``"group"``: GroupNorm, ``groups`` groups of the channels (dim 1), ``weight`` per
      channel;
    * ``"scaled"``: ``z = multiplier ⊙ a + bias`` with the multiplier computed from ``a`` and
      held constant (ConvNeXt V2's global response normalisation); ``bias``: whether the op
      adds one;
    * ``"module"``: a whole RMSNorm-like module (or ``F.normalize``), ``z = m(a) ⊙ a``.

    ``scale`` is ``1/σ`` per normalised group when the forward pass kept it; ``fn``
    recomputes ``z``."""

    norm: str
    fn: Callable[[Tensor], Tensor]
    weight: Tensor | None = None
    dims: int = 1
    eps: float = 0.0
    scale: Tensor | None = field(default=None, repr=False)
    kind: str = "layer_norm"
    groups: int = 0
    multiplier: Tensor | None = field(default=None, repr=False)
    bias: bool = False

    def gradient(self, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        """The plain gradient through the normalisation."""
        return _own_vjp(self.fn, a, grad)


@dataclass
class ShareOp:
    """One input (``position``) of a product of activations or of a fused attention; the
    op's output passes back to it scaled by the rule's share. ``gates`` marks sigmoid
    outputs, ``constant`` factors whose own rule holds them constant (CP-LRP weights)."""

    kind: str
    position: int
    gates: list[bool] = field(default_factory=list)
    constant: list[bool] | None = None

    def gradient(self, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        """The factor's own gradient is the product's, which autograd applies next."""
        return grad


def _tuple(value: Any, n: int) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    values = [int(v) for v in value]
    return values * n if len(values) == 1 else values


#: torch's backward kernels of max pooling with indices, by number of pooled dims
_MAX_POOL_BACKWARD: dict[int, Callable[..., Tensor]] = {
    2: torch.ops.aten.max_pool2d_with_indices_backward.default,
    3: torch.ops.aten.max_pool3d_with_indices_backward.default,
}


_T = TypeVar("_T")


class _once(Generic[_T]):  # noqa: N801 - used as a decorator, like cached_property
    """``functools.cached_property`` without the lock that Python 3.11's takes at each first
    access (an op belongs to the one thread that explains; a net has hundreds of ops): the
    value is computed at the first access and kept in the instance's ``__dict__``, where
    :meth:`LinearOp.release` drops it."""

    def __init__(self, compute: Callable[[Any], _T]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> _T:
        if instance is None:
            return self  # type: ignore[return-value]
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


class Affine(Protocol):
    """``y = scale · z + shift`` per output channel, merged into a layer (a BatchNorm)."""

    @property
    def scale(self) -> Tensor: ...

    @property
    def shift(self) -> Tensor: ...


@dataclass(frozen=True)
class FixedAffine:
    """An :class:`Affine` whose scale and shift are given."""

    scale: Tensor
    shift: Tensor


class LinearOp:
    """One call of a linear op, with detached weights; ``kind`` selects the maths.

    What a layer rule needs: ``weight``, ``bias`` (BatchNorm merged in), their parts
    ``positive_weight``/``negative_weight``/``positive_bias``/``negative_bias``,
    :meth:`forward` with any weights, :meth:`input_vjp` with any weights, :meth:`add_bias`.

    Weights merged with a following BatchNorm, and their positive and negative parts, are
    computed on first use (in the backward pass) and kept for the rest of it.
    """

    def __init__(self, kind: str, weight: Tensor, bias: Tensor | None,
                 options: dict[str, Any],
                 affine: tuple[LinearOp, Affine] | None = None,
                 sources: tuple[Tensor | float | None, ...] | None = None) -> None:
        self.kind = kind  # "linear" | "conv" | "conv_transpose" | "norm"
        self.options = options
        #: what a rule reported about this call (e.g. ``"relevance_change"`` per sample)
        self.reports: dict[str, Tensor] = {}
        self._weight = weight
        self._bias = bias
        self._affine = affine
        #: what a merged affine's ``scale`` and ``shift`` are made from (a BatchNorm's
        #: statistics, parameters and eps), so that merged weights can be kept across calls
        self._sources = sources
        #: True while another backward pass over the same call follows (several targets)
        self.again = False
        #: True where the ``z`` a rule gets is ``max(0, z)``: a ReLU merged into this op
        self.clipped = False
        #: True where the forward pass knew every input value to be ``>= 0`` (the output of
        #: a ReLU, pooled or reshaped; set by the layer's node): a rule need not look
        #: (:func:`relprop.rules.base.is_nonnegative` is a pass over the input and, on a
        #: GPU, a wait for the device)
        self.nonnegative_input = False
        self._kept: dict[object, Any] = {}

    def _weight_sources(self) -> tuple[Tensor | float | None, ...] | None:
        """What this op's weights are made from, or ``None`` if they cannot be kept across
        calls (a weight computed in the forward pass, an affine of unknown origin)."""
        if self._affine is None:
            return (self._weight, self._bias) if cache.cacheable(self._weight) else None
        base = self._affine[0]._weight_sources()
        return None if base is None or self._sources is None else base + self._sources

    def rho(self, name: Hashable, make: Callable[[], Tensor]) -> Tensor:
        """A modified weight ``rho(W)`` (or bias) named ``name`` (with the rule's parameters
        that shape it): kept across explanations while the parameters it is made from are
        unchanged (:mod:`relprop.rules.cache`), else once per backward step."""
        if _KEPT not in self._kept:  # the sources are checked once per backward step
            sources = self._weight_sources()
            self._kept[_KEPT] = None if sources is None else \
                cache.kept_for(sources, self._affine_values())
        kept: cache.Kept | None = self._kept[_KEPT]
        if kept is None:
            value: Tensor = self.once(("rho", name), make)[0]
            return value
        return kept.get((self.kind, self.options.get("groups", 1), name), make)

    def _affine_values(self) -> tuple[Tensor, ...]:
        if self._affine is None:
            return ()
        base, affine = self._affine
        return (*base._affine_values(), affine.scale, affine.shift)

    @_once
    def weight(self) -> Tensor:
        if self._affine is None:
            return self._weight
        base, affine = self._affine
        return self.rho("weight", lambda: base._scaled_weight(affine.scale))

    @_once
    def bias(self) -> Tensor | None:
        if self._affine is None:
            return self._bias
        base, affine = self._affine
        base_bias = base.bias
        if base_bias is None:
            return affine.shift
        return self.rho("bias", lambda: base_bias * affine.scale + affine.shift)

    @_once
    def positive_weight(self) -> Tensor:
        return self.rho("w+", lambda: self._clamped_weight(min=0))

    @_once
    def negative_weight(self) -> Tensor:
        return self.rho("w-", lambda: self._clamped_weight(max=0))

    def _clamped_weight(self, **bound: float) -> Tensor:
        weight, temporary = self.weight_for_transform()
        return weight.clamp_(**bound) if temporary else weight.clamp(**bound)

    def weight_for_transform(self) -> tuple[Tensor, bool]:
        """``(W, temporary)``: the weight to build a kept transform from (``W⁺``,
        ``W + γW⁺``). Where this op merges a BatchNorm and has not made its merged weight,
        one is made for the transform alone (``temporary``: the caller may write into it),
        so that a rule that needs only transforms keeps one copy of the weights, not two."""
        if self._affine is None or "weight" in self.__dict__:
            return self.weight, False
        base, affine = self._affine
        return base._scaled_weight(affine.scale), True

    @_once
    def positive_bias(self) -> Tensor | None:
        bias = self.bias
        return None if bias is None else self.rho("b+", lambda: bias.clamp(min=0))

    @_once
    def negative_bias(self) -> Tensor | None:
        bias = self.bias
        return None if bias is None else self.rho("b-", lambda: bias.clamp(max=0))

    # -- forward -------------------------------------------------------------------------
    def forward(self, a: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The op evaluated on ``a`` with the given (possibly modified) weight and bias."""
        if self.kind == "linear":
            return F.linear(a, weight, bias)
        if self.kind == "norm":
            out = a * self._channel_view(weight, a)
            return out if bias is None else out + self._channel_view(bias, a)
        fn = self.options["fn"]
        if self.kind == "conv":
            o = self.options
            return fn(a, weight, bias, o["stride"], o["padding"], o["dilation"], o["groups"])
        o = self.options
        return fn(
            a, weight, bias, o["stride"], o["padding"], o["output_padding"], o["groups"],
            o["dilation"],
        )

    def add_bias(self, z: Tensor, bias: Tensor | None) -> Tensor:
        """``z + bias`` broadcast along the op's output-channel dimension."""
        if bias is None:
            return z
        if self.kind == "linear":
            return z + bias
        return z + self._channel_view(bias, z)

    def broadcast(self, values: Tensor, like: Tensor) -> Tensor:
        """Per-output-channel ``values`` viewed to broadcast against the output ``like``."""
        return values if self.kind == "linear" else self._channel_view(values, like)

    def stackable(self, a: Tensor, z: Tensor) -> bool:
        """Whether two vjps of this op can run as one, with the two weights stacked along
        the output channels and the two signals side by side: a dense (``groups = 1``),
        batched convolution with numeric padding, its output in the default layout. One
        larger convolution is cheaper than two and their sum (and, for a depthwise one,
        much dearer: grouped convolutions are left out)."""
        o = self.options
        return (self.kind == "conv" and o.get("groups", 1) == 1
                and not isinstance(o.get("padding"), str)
                and a.dim() == z.dim() == self._weight.dim() and z.is_contiguous())

    def add_bias_(self, z: Tensor, bias: Tensor | None) -> Tensor:
        """In-place ``add_bias`` for a temporary ``z`` of the caller."""
        if bias is None:
            return z
        return z.add_(bias if self.kind == "linear" else self._channel_view(bias, z))

    @staticmethod
    def _channel_view(values: Tensor, like: Tensor) -> Tensor:
        shape = [1] * like.dim()
        shape[1 if like.dim() > 1 else 0] = -1
        return values.reshape(shape)

    # -- backward ------------------------------------------------------------------------
    def vjp(self, a: Tensor, grad: Tensor, owned: bool = False) -> Tensor:
        """The input-vjp with the op's own weights; a merged BatchNorm scales ``grad`` instead
        of the weights, so LRP-0 and ε never build merged weights. ``owned``: ``grad`` is a
        temporary of the caller and may be scaled in place."""
        if self._affine is None:
            return self.input_vjp(a, self.weight, grad)
        base, affine = self._affine
        view = self._channel_view(affine.scale, grad)
        return base.vjp(a, grad.mul_(view) if owned else grad * view, owned=True)

    def gradient(self, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
        """The op's own vjp (LRP-0)."""
        return self.vjp(a, grad)

    def report(self, name: str, value: Tensor) -> None:
        """Let a rule report something about this call (``"relevance_change"``: per sample,
        the relevance the rule itself created or destroyed, as a fraction of what arrived;
        the engine warns by layer where it exceeds ``Rule.relevance_tolerance``)."""
        self.reports[name] = value.detach()

    def once(self, key: object, make: Callable[[], Any]) -> tuple[Any, bool]:
        """A term of the rule that does not depend on the signal (a modified forward, a
        denominator): ``(value, owned)``. While further backward passes over this call
        follow (several targets), the value is computed once, kept until :meth:`release`
        and not ``owned`` (the rule must not write into it); otherwise it is made afresh and
        ``owned``: the rule may use it as a temporary."""
        if not self.again and key not in self._kept:
            return make(), True
        if key not in self._kept:
            self._kept[key] = make()
        return self._kept[key], False

    def release(self) -> None:
        """Drop the weights computed for this op's backward step (they can be large)."""
        self._kept.clear()
        for name in ("weight", "bias", "positive_weight", "negative_weight", "positive_bias",
                     "negative_bias"):
            self.__dict__.pop(name, None)
        if self._affine is not None:
            self._affine[0].release()

    def input_vjp(self, a: Tensor, weight: Tensor, grad: Tensor) -> Tensor:
        """``sum_k w_jk grad_k``: the vector-Jacobian product of the op w.r.t. its input."""
        if self.kind == "linear":
            return grad @ weight
        if self.kind == "norm":
            return grad * self._channel_view(weight, a)
        o = self.options
        if isinstance(o["padding"], str):  # 'same' / 'valid': let autograd find the padding
            with torch.enable_grad():
                a_ = a.detach().requires_grad_(True)
                (g,) = seeded_grad(self.forward(a_, weight), [a_], grad)
            assert g is not None
            return g
        nd = a.dim() - 2
        transposed = self.kind == "conv_transpose"
        return torch.ops.aten.convolution_backward.default(
            grad, a, weight, None,
            _tuple(o["stride"], nd), _tuple(o["padding"], nd), _tuple(o["dilation"], nd),
            transposed, _tuple(o.get("output_padding", 0), nd), o["groups"],
            [True, False, False],
        )[0]

    # -- structure -----------------------------------------------------------------------
    def fuse_affine(self, scale: Tensor, shift: Tensor,
                    sources: tuple[Tensor | float | None, ...] | None = None) -> LinearOp:
        """The op followed by ``y = scale * z + shift`` per output channel, as one op;
        ``sources``: what ``scale`` and ``shift`` are computed from (see :meth:`rho`)."""
        dtype = self._weight.dtype
        if scale.dtype != dtype or shift.dtype != dtype:
            scale, shift = scale.to(dtype), shift.to(dtype)
        return self.fuse_deferred(FixedAffine(scale, shift), sources)

    def fuse_deferred(self, affine: Affine,
                      sources: tuple[Tensor | float | None, ...] | None = None) -> LinearOp:
        """:meth:`fuse_affine` with ``scale`` and ``shift`` read from ``affine`` when a rule
        first needs them (already in this op's dtype)."""
        return LinearOp(self.kind, self._weight, None, self.options, (self, affine), sources)

    def _scaled_weight(self, scale: Tensor) -> Tensor:
        w = self.weight
        if self.kind in ("linear", "conv", "norm"):
            return w * scale.reshape([-1] + [1] * (w.dim() - 1))
        groups = self.options["groups"]  # conv_transpose weight: (C_in, C_out / groups, *k)
        grouped = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
        s = scale.reshape(groups, 1, w.shape[1], *([1] * (w.dim() - 2)))
        return (grouped * s).reshape(w.shape)

    def can_fuse_affine_on(self, output: Tensor, channels: int) -> bool:
        """Whether a per-channel affine over dim 1 of ``output`` acts on this op's channels."""
        if self.kind == "linear":
            return output.dim() == 2 and output.shape[1] == channels
        return output.dim() >= 2 and output.shape[1] == channels


#: the key under which an op keeps, for its backward step, its sources' entry in the cache
_KEPT = object()

_CONV_FNS: dict[str, tuple[str, Callable[..., Tensor]]] = {
    "conv1d": ("conv", F.conv1d),
    "conv2d": ("conv", F.conv2d),
    "conv3d": ("conv", F.conv3d),
    "conv_transpose1d": ("conv_transpose", F.conv_transpose1d),
    "conv_transpose2d": ("conv_transpose", F.conv_transpose2d),
    "conv_transpose3d": ("conv_transpose", F.conv_transpose3d),
}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONVT_ARGS = (
    "input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation",
)
_DEFAULTS: dict[str, Any] = {
    "bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0,
}


def _bind(names: Sequence[str], args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = dict(_DEFAULTS)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def linear_op_from_call(short_name: str, args: Sequence[Any], kwargs: dict[str, Any]
                        ) -> tuple[Tensor, LinearOp | None]:
    """Parse a call of ``F.linear``, ``torch.addmm`` or a ``F.conv*`` into (input, LinearOp).

    ``addmm(b, a, W)`` is a linear layer with weight ``Wᵀ`` (GPT-2's ``Conv1D``) when it adds
    a bias vector unscaled; otherwise the op is ``None`` (an ordinary linear op).
    """
    if short_name == "addmm":
        bound = _bind(("input", "mat1", "mat2"), args, kwargs)
        bias, a, weight = bound["input"], bound["mat1"], bound["mat2"]
        plain = (bound.get("beta", 1) != 1 or bound.get("alpha", 1) != 1
                 or not isinstance(bias, Tensor) or bias.dim() != 1)
        return a, None if plain else LinearOp("linear", weight.t(), bias, {})
    if short_name == "linear":
        bound = _bind(("input", "weight", "bias"), args, kwargs)
        op = LinearOp("linear", bound["weight"], bound["bias"], {})
        return bound["input"], op
    kind, fn = _CONV_FNS[short_name]
    bound = _bind(_CONV_ARGS if kind == "conv" else _CONVT_ARGS, args, kwargs)
    options = {k: bound[k] for k in ("stride", "padding", "dilation", "groups")}
    options["fn"] = fn
    if kind == "conv_transpose":
        options["output_padding"] = bound["output_padding"]
    return bound["input"], LinearOp(kind, bound["weight"], bound["bias"], options)
