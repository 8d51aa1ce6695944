"""Autograd functions that compute the model's own forward and apply a rule on the way back.

Each returns exactly what the model computed, so the explained output is the model's output
to the bit; the backward reads the rule the composite assigned to the call after the
forward pass (rules by position, such as "the first layer", need the whole pass first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._calls import OpCall
from ._ops import LinearOp
from .rules import (
    Attention,
    Constant,
    Gradient,
    LayerRule,
    NormIdentity,
    Pass,
    Product,
    SoftmaxTaylor,
    SumPooling,
    WinnerTakeAll,
    stabilize,
)
from .rules.transformer import layer_norm_signal

if TYPE_CHECKING:
    from ._session import Session


class LayerFunction(torch.autograd.Function):
    """A linear layer call (possibly with a BatchNorm merged in) under a :class:`LayerRule`.

    With ``relu=True`` the ReLU that follows is part of the node: its output ``max(0, z)``
    stands in for ``z`` in the rule, which is exact because relevance is 0 wherever the
    ReLU is closed, and it saves keeping ``z`` as well as the ReLU's output.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, op: LinearOp, call: OpCall, session: Session,
                compute: Callable[[], Tensor] | None, relu: bool = False,
                dirty: Tensor | None = None) -> Tensor:
        if dirty is None:
            assert compute is not None
            z = compute()
        else:  # the model's in-place ReLU on this layer's output: overwrite it, as asked
            session.saved.protect(dirty, overwritten_by=call)
            z = dirty.relu_()
            ctx.mark_dirty(dirty)
        # kept by the session, not save_for_backward: an in-place write by the model later
        # gets the rule a copy of what it needs (see relprop._saved)
        ctx.a = session.saved.hold(a, detach=False)
        ctx.z = session.saved.hold(z, owner=call)
        ctx.op, ctx.call, ctx.session, ctx.relu = op, call, session, relu
        ctx.set_materialize_grads(False)
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Tensor | None, ...]:
        nothing = (None,) * 7
        if grad is None:  # only the model's overwrite of this output reaches here
            return nothing
        a, z = ctx.a.take(), ctx.z.take()
        if ctx.z.stale:  # overwritten in place, yet read before: compute z again
            z = ctx.op.forward(a, ctx.op.weight, ctx.op.bias)
            z = z.relu() if ctx.relu else z
        call: OpCall = ctx.call
        rule = call.rule
        assert isinstance(rule, LayerRule)
        if ctx.relu and rule.reads_grad:
            grad = grad * (z > 0)
        out = rule.propagate(ctx.op, a, z, grad)
        ctx.op.release()
        if rule.factorizes:
            if ctx.session.record:
                ctx.session.log(call, z * grad, a * out)
            return (out, *nothing[1:])
        return (ctx.session.relevance_to_grad(call, out, a, z * grad), *nothing[1:])


class InPlaceWrite(torch.autograd.Function):
    """``target.copy_(result)`` as the last step of an in-place op the model wrote
    (``h.mul_(g)``, ``h[:, :4].tanh_()``): ``result`` was computed out of place, with its rule;
    the overwritten values of ``target`` get no signal (a view's other elements keep theirs)."""

    @staticmethod
    def forward(ctx: Any, target: Tensor, result: Tensor) -> Tensor:
        ctx.view, ctx.dtype = target._base is not None, result.dtype
        target.copy_(result)
        ctx.mark_dirty(target)
        return target

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        # a view needs an explicit zero: CopySlices puts it in place of the overwritten slice
        return torch.zeros_like(grad) if ctx.view else None, grad.to(ctx.dtype)


class ElementwiseFunction(torch.autograd.Function):
    """An elementwise activation ``z = f(a)``: identity rule or its own gradient.

    ``value``, when given, is ``f(a)`` as the model already computed it (a whole activation
    module treated as one op); ``fn`` then only serves the gradient rule.
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, fn: Callable[[Tensor], Tensor], call: OpCall,
                session: Session, value: Tensor | None = None) -> Tensor:
        return _save_unary(ctx, a, fn(a) if value is None else value, fn, call, session)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        def identity(a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
            assert isinstance(ctx.call.rule, Pass)
            return ctx.call.rule.propagate(None, a, z, grad)
        return _unary_backward(ctx, grad, identity), None, None, None, None


def _save_unary(ctx: Any, a: Tensor, z: Tensor, fn: Callable[[Tensor], Tensor], call: OpCall,
                session: Session) -> Tensor:
    """Keep what the backward step of a one-input op ``z = fn(a)`` needs."""
    ctx.save_for_backward(a, z)
    ctx.fn, ctx.call, ctx.session = fn, call, session
    return z


def _unary_backward(ctx: Any, grad: Tensor,
                    signal: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Tensor:
    """The signal at the input of a one-input op: its own vjp under :class:`Gradient`, else
    ``signal(a, z, grad)`` (the assigned rule); logged for the ledger."""
    a, z = ctx.saved_tensors
    if isinstance(ctx.call.rule, Gradient):
        g = _own_vjp(ctx.fn, a, grad)
    else:
        g = signal(a, z, grad)
    if ctx.session.record:
        ctx.session.log(ctx.call, z * grad, a * g)
    return g


def _own_vjp(fn: Callable[[Tensor], Tensor], a: Tensor, grad: Tensor) -> Tensor:
    with torch.enable_grad():
        a_ = a.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(a_), a_, grad)
    return g


class SoftmaxFunction(torch.autograd.Function):
    """``z = softmax(a)`` along ``dim``: :class:`SoftmaxTaylor`, :class:`Constant` or gradient."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, fn: Callable[[Tensor], Tensor], dim: int, call: OpCall,
                session: Session) -> Tensor:
        z = fn(a)
        ctx.save_for_backward(a, z)
        ctx.dim, ctx.call, ctx.session = dim, call, session
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, z = ctx.saved_tensors
        rule = ctx.call.rule
        if isinstance(rule, Constant):
            g = torch.zeros_like(a)
        else:
            assert isinstance(rule, SoftmaxTaylor | Gradient)
            g = _softmax_vjp(a, z, grad, ctx.dim)
        if ctx.session.record:
            ctx.session.log(ctx.call, z * grad, a * g)
        return g, None, None, None, None


def _softmax_vjp(a: Tensor, z: Tensor, grad: Tensor, dim: int) -> Tensor:
    """``c_i = s_i (G_i - sum_j s_j G_j)``, in the output's precision: PyTorch's fused softmax
    backward where input and output share a dtype, else spelled out."""
    if a.dtype == z.dtype:
        return torch.ops.aten._softmax_backward_data(grad.to(z.dtype), z, dim, a.dtype)
    weighted = z * grad.to(z.dtype)
    return (weighted - z * weighted.sum(dim=dim, keepdim=True)).to(a.dtype)


class NormFunction(torch.autograd.Function):
    """LayerNorm or RMSNorm over the last ``dims`` dims (``norm`` = "layer", "rms", or
    "module": a whole RMSNorm-like module whose output ``value`` is given)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, fn: Callable[[Tensor], Tensor], call: OpCall,
                session: Session, norm: str, weight: Tensor | None, dims: int, eps: float,
                value: Tensor | None = None) -> Tensor:
        z = fn(a) if value is None else value
        ctx.scale = None
        if isinstance(z, tuple):  # (output, 1/σ) from the LayerNorm kernel
            z, ctx.scale = z
        ctx.norm, ctx.weight, ctx.dims, ctx.eps = norm, weight, dims, eps
        return _save_unary(ctx, a, z, fn, call, session)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        def identity(a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
            rule = ctx.call.rule
            assert isinstance(rule, NormIdentity)
            if ctx.norm == "module":  # identity rule on an RMSNorm-like module: R_a = R_z
                return Pass().propagate(None, a, z, grad)
            return layer_norm_signal(a, z, grad, ctx.weight, ctx.dims, ctx.eps,
                                     ctx.norm == "layer", rule.epsilon, ctx.scale)
        return _unary_backward(ctx, grad, identity), None, None, None, None, None, None, None, None


class MaxPoolFunction(torch.autograd.Function):
    """Max pooling: winner-take-all, or redistribution as if it were sum pooling."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, options: dict[str, Any], call: OpCall,
                session: Session, nd: int) -> tuple[Tensor, Tensor]:
        # ``nd`` from the op the model called: max_pool2d also takes an unbatched (C, H, W)
        pool = getattr(F, f"max_pool{nd}d")
        z, indices = pool(a, return_indices=True, **options)
        ctx.save_for_backward(a, z, indices)
        ctx.options, ctx.call, ctx.session, ctx.nd = options, call, session, nd
        ctx.mark_non_differentiable(indices)
        return z, indices

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
        a, z, indices = ctx.saved_tensors
        rule = ctx.call.rule
        if isinstance(rule, SumPooling):
            g = _sum_pool_grad(a, z * grad, ctx.options, rule.stabilizer, ctx.nd)
        else:
            assert isinstance(rule, WinnerTakeAll)
            spatial = a.dim() - ctx.nd  # indices count within each (batch, channel) plane
            g = torch.zeros_like(a).flatten(spatial)
            g.scatter_add_(-1, indices.flatten(spatial), grad.flatten(spatial))
            g = g.view_as(a)
        if ctx.session.record:
            ctx.session.log(ctx.call, z * grad, a * g)
        return g, None, None, None, None


def _sum_pool_grad(a: Tensor, relevance: Tensor, options: dict[str, Any],
                   stabilizer: float, nd: int) -> Tensor:
    if options.get("dilation", 1) not in (1, (1,), (1, 1), (1, 1, 1)):
        raise ValueError("SumPooling cannot treat a dilated max pooling as sum pooling")
    avg = getattr(F, f"avg_pool{nd}d")
    kwargs = {k: options[k] for k in ("kernel_size", "stride", "padding", "ceil_mode")}
    with torch.enable_grad():
        a_ = a.detach().requires_grad_(True)
        mean = avg(a_, **kwargs)
        (g,) = torch.autograd.grad(mean, a_, relevance / stabilize(mean, stabilizer))
    return g


class ShareFunction(torch.autograd.Function):
    """Identity on one factor of a product (or one input of a fused attention); scales its
    gradient by the factor's share of the relevance."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, call: OpCall, position: int, session: Session) -> Tensor:
        ctx.call, ctx.position, ctx.session = call, position, session
        if session.record:
            ctx.save_for_backward(t)
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        call: OpCall = ctx.call
        rule = call.rule
        if isinstance(rule, Attention):
            share = rule.shares()[ctx.position]
        else:
            assert isinstance(rule, Product)
            constant = [source is not None and isinstance(source.rule, Constant)
                        for source in call.sources]
            share = rule.shares(call.gates, constant if call.sources else None)[ctx.position]
        out = None if share == 0 else grad if share == 1 else grad * share
        if ctx.session.record:
            ctx.session.log_share(call, ctx.saved_tensors[0], out)
        return out, None, None, None
