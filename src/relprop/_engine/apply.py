"""Rule application: autograd functions that compute the model's own forward and, on the way
back, ask the rule the composite assigned to the call.

Each returns exactly what the model computed, so the explained output is the model's output
to the bit; the backward reads the rule after the forward pass (rules by position, such as
"the first layer", need the whole pass first) and calls ``rule.propagate(op, a, z, grad)``
with the call's op view (:mod:`relprop.rules.ops`). Nothing here knows a rule's class.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..rules.ops import LinearOp, PoolOp, ShareOp
from .records import OpCall
from .saved import storage_key
from .session import carried

if TYPE_CHECKING:
    from .session import Session


def _run_rule(call: OpCall, session: Session, op: Any, a: Tensor, z: Tensor,
              grad: Tensor) -> Tensor | None:
    """The signal at the input: the rule's answer, turned into ``R / a`` where the rule gave
    relevance (``factorizes = False``); logged for the ledger."""
    rule = call.rule
    assert rule is not None, f"no rule was assigned to {call.name}"
    out = rule.propagate(op, a, z, grad)
    if out is None:
        if session.record:
            session.log(call, carried(z, grad), torch.zeros_like(a))
        return None
    if not rule.factorizes:
        return session.relevance_to_grad(call, out, a, carried(z, grad))
    if session.record:
        session.log(call, carried(z, grad), carried(a, out))
    change = getattr(op, "reports", {}).get("relevance_change")
    if change is not None:  # judged after the backward pass, all layers at once
        call.relevance_change = change
    return out


class LayerFunction(torch.autograd.Function):
    """A linear layer call (possibly with a BatchNorm merged in) under a layer rule.

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
            z = _own(compute(), a)
        else:  # the model's in-place ReLU on this layer's output: overwrite it, as asked
            producer = layer_node(dirty)
            if producer is None or hold_input(producer):
                session.saved.protect(dirty, overwritten_by=call)
            else:  # the producer cannot compute its z again: it keeps a copy
                session.saved.protect(dirty)
            z = dirty.relu_()
            ctx.mark_dirty(dirty)
        # kept by the session, not save_for_backward: an in-place write by the model later
        # gets the rule a copy of what it needs (see relprop._saved)
        ctx.a = session.saved.hold(a, detach=False)
        ctx.z = session.saved.hold(z, owner=call)
        ctx.op, ctx.call, ctx.session, ctx.relu = op, call, session, relu
        op.nonnegative_input = session.is_nonnegative(a)  # known here: no rule need look
        ctx.set_materialize_grads(False)
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Tensor | None, ...]:
        nothing = (None,) * 7
        if grad is None:  # no signal: the model overwrote this output, or the layer is on a
            return nothing  # branch behind a gate that takes no relevance
        again = ctx.session.again  # another target's pass follows: keep what it reads
        a = ctx.a.take(again)
        ctx.op.again, ctx.op.clipped = again, ctx.relu
        if ctx.z.stale:  # overwritten in place or let go (see ``taken_over``): compute z again
            assert type(a.grad_fn) is not _STAND_IN_NODE, \
                f"{ctx.call.name}: z is gone and its input was not kept"
            ctx.z.tensor = None
            z = ctx.op.forward(a, ctx.op.weight, ctx.op.bias)
            z = z.relu() if ctx.relu else z
        else:
            z = ctx.z.take(again)
        if ctx.relu and ctx.call.rule.reads_grad:
            grad = grad * (z > 0)
        out = _run_rule(ctx.call, ctx.session, ctx.op, a, z, grad)
        if not again:
            ctx.op.release()
        return (out, *nothing[1:])


class InputStandIn(torch.autograd.Function):
    """A stand-in for a layer's input ``a`` that holds none of its memory: ``a``'s shape,
    dtype and device over a single element (expanded), through which the gradient reaches
    ``a`` unchanged.

    A dense layer whose candidate rules never read their input's values (ε, LRP-0:
    ``Rule.reads_input``) takes it in place of ``a``, and so do the BatchNorm, ReLU or bias
    merged into it, so that the backward pass does not keep ``a`` alive. A transformer's
    dense layers read a norm's or the attention's output, which a plain gradient with frozen
    weights does not keep (a Llama-style decoder at 1,024 tokens: 118 MiB). Its node keeps a
    weak reference to ``a`` and ``a``'s version, for :func:`hold_input`."""

    @staticmethod
    def forward(ctx: Any, a: Tensor) -> Tensor:
        ctx.source, ctx.version = weakref.ref(a), a._version
        ctx.set_materialize_grads(False)
        return a.new_empty(()).expand(a.shape)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> Tensor | None:
        return grad


#: the classes of the graph nodes of LayerFunction and InputStandIn (a node is the ``ctx``
#: of its forward)
_LAYER_NODE: Any = LayerFunction._backward_cls
_STAND_IN_NODE: Any = InputStandIn._backward_cls


def stand_in(session: Session, a: Tensor) -> Tensor:
    """What a dense layer takes as its input: ``a`` itself, or where no rule the composite may
    give the layer reads input values, a stand-in (:class:`InputStandIn`); then an elementwise
    op or normalisation that made ``a`` and can compute it again lets its own copy go too
    (:func:`let_output_go`: a transformer's LayerNorm, RMSNorm and GELU outputs, which only
    dense layers read)."""
    if session.keeps_dense_inputs:
        return a
    let_output_go(a.grad_fn)
    out: Tensor = InputStandIn.apply(a)
    session.approved.add(out.grad_fn)
    return out


#: graph nodes of views: a dense layer's input made by one of these (GPT-2's ``Conv1D`` reads
#: ``x.view(-1, width)``) is the output of the op below it, reshaped
_VIEWS = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0",
                    "AliasBackward0", "TransposeBackward0", "TBackward0", "PermuteBackward0",
                    "SqueezeBackward0", "SqueezeBackward1", "UnsqueezeBackward0"})


def recomputable_below(node: Any) -> Any:
    """The :class:`UnaryFunction` node that made a tensor whose graph node is ``node`` (or a
    few views of its output), if it can compute its output again; ``None`` otherwise."""
    for _ in range(4):
        if node is None or type(node).__name__ not in _VIEWS:
            break
        node = node.next_functions[0][0]
    return node if type(node) is _UNARY_NODE and node.compute is not None else None


def let_output_go(node: Any) -> None:
    """The op below ``node`` (:func:`recomputable_below`) keeps its input alone and computes
    its output again on the way back; nothing where there is none."""
    unary = recomputable_below(node)
    if unary is not None:
        unary.z.drop()


def layer_node(out: Tensor) -> Any:
    """The :class:`LayerFunction` node that made ``out`` (``None`` if another op made it)."""
    node = out.grad_fn
    return node if isinstance(node, _LAYER_NODE) else None


def hold_input(node: Any) -> bool:
    """Whether a layer node holds its real input, which it needs to compute its ``z`` again
    once ``z`` goes (see :func:`taken_over`). A node that took a stand-in holds the real
    input from now on if it can: not if that input is gone, or was written in place since
    the layer read it; the node must then keep ``z``."""
    held = node.a.tensor
    source: Any = None if held is None else held.grad_fn
    if type(source) is not _STAND_IN_NODE:
        return True
    a = source.source()
    if a is None or a._version != source.version:
        return False
    node.a = node.session.saved.hold(a, detach=False)
    return True


def taken_over(node: Any) -> None:
    """A BatchNorm, ReLU or bias merged into a layer has taken over the layer's output: the
    node that made it runs backward only if another op reads that output as well. It lets
    ``z`` go now, not at the end of the forward pass (the session's records keep the node
    until then), and computes it again in that rare case. Holding it cost one activation per
    merge, and freeing them all at once after the forward pass gave that memory back to the
    OS, so the backward pass took fresh pages for its temporaries (EfficientNet-B0 at 224²,
    batch 1: 5-9 thousand page faults and 8-24 ms of system time per call). A node that took
    a stand-in for its input keeps ``z`` where the input is gone (:func:`hold_input`)."""
    if node is not None and hold_input(node):
        node.z.drop()


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


def _own(z: Tensor, a: Tensor) -> Tensor:
    """``z`` as a tensor of its own: a custom function's output that is a view (max_pool1d's
    squeezed result, a 3-D ``F.linear``'s) or its input cannot be written in place by the
    model afterwards. A view of a temporary the op made is detached (the same memory, no
    longer a view: no copy); a view of the input's memory is copied."""
    if z is a:
        return z.clone()
    if z._base is None:
        return z
    if storage_key(z) in (0, storage_key(a)):  # the input's memory, or no plain storage
        return z.clone()
    return z.detach()


class UnaryFunction(torch.autograd.Function):
    """A one-input op ``z = op(a)`` (activation, softmax, LayerNorm, an elementwise op a rule
    declared) under its rule. ``compute(a)`` gives ``z`` (for a module taken as one op, the
    output the model already computed)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, op: Any, call: OpCall, session: Session,
                compute: Callable[[Tensor], Tensor],
                again: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        z = _own(compute(a), a)
        ctx.save_for_backward(a)
        # ``z`` in a slot of its own: a dense layer that keeps no input lets it go
        # (:func:`let_output_go`) where ``again(a)`` computes it again, to the bit
        ctx.z = session.saved.hold(z)
        ctx.compute = again
        ctx.op, ctx.call, ctx.session = op, call, session
        # no signal arrives where a rule gave none (a gate of a product): pass none on, so
        # the branch behind it is not run on zeros (squeeze-and-excitation); a recorded
        # explanation still logs its ops, with zeros
        ctx.set_materialize_grads(session.record)
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Tensor | None, ...]:
        if grad is None:
            return None, None, None, None, None, None
        (a,) = ctx.saved_tensors
        z = ctx.z.tensor
        if z is None:  # let go: computed again from the kept input
            with torch.no_grad():
                z = ctx.compute(a)
        return _run_rule(ctx.call, ctx.session, ctx.op, a, z, grad), None, None, None, None, None


_UNARY_NODE: Any = UnaryFunction._backward_cls


def again_by_call(module: torch.nn.Module, args: Any) -> Callable[[Tensor], Tensor] | None:
    """How a module taken whole as one elementwise op (Hugging Face's ``GELUActivation``,
    ``LlamaRMSNorm``) computes its output again from its input: its own ``forward``, where it
    was called on that input alone (a call with keyword arguments is never taken whole) and
    nothing of the user's acts on the call (no forward hooks of the module's own, which may
    change its output); ``None`` otherwise, and the op keeps its output."""
    if not (isinstance(args, tuple) and len(args) == 1) or module._forward_hooks \
            or module._forward_pre_hooks:
        return None
    forward = module.forward

    def again(a: Tensor) -> Tensor:
        out = forward(a)
        assert isinstance(out, Tensor), f"{type(module).__name__} returned {type(out)}"
        return out
    return again


class MaxPoolFunction(torch.autograd.Function):
    """Max pooling under its rule (winner-take-all, or as if it were sum pooling)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, op: PoolOp, call: OpCall,
                session: Session) -> tuple[Tensor, Tensor]:
        # ``op.nd`` from the op the model called: max_pool2d also takes an unbatched (C, H, W)
        pool = getattr(torch.nn.functional, f"max_pool{op.nd}d")
        z, indices = pool(a, return_indices=True, **op.options)
        z = _own(z, a)
        ctx.save_for_backward(a, z, indices)
        ctx.op, ctx.call, ctx.session = op, call, session
        ctx.mark_non_differentiable(indices)
        return z, indices

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
        a, z, indices = ctx.saved_tensors
        ctx.op.indices = indices
        out = _run_rule(ctx.call, ctx.session, ctx.op, a, z, grad)
        ctx.op.indices = None
        return out, None, None, None


class ShareFunction(torch.autograd.Function):
    """Identity on one factor of a product (or one input of a fused attention); its rule
    scales the product's gradient by the factor's share of the relevance."""

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
        assert rule is not None
        out = rule.propagate(_share_op(call, ctx.position), grad, grad, grad)
        if ctx.session.record:
            ctx.session.log_share(call, ctx.saved_tensors[0], out)
        return out, None, None, None


def _share_op(call: OpCall, position: int) -> ShareOp:
    """The view of factor ``position`` of a product call: which factors are gates, and which
    the rule of the op that made them holds constant (attention weights under CP-LRP)."""
    constant = [source is not None and source.rule is not None
                and source.rule.constant_output for source in call.sources]
    return ShareOp(call.kind, position, call.gates, constant if call.sources else None)


class ProductFunction(torch.autograd.Function):
    """An elementwise product ``z = a · b`` of two activations (shapes broadcast) under its
    rule, as one node: each factor's signal is the product's gradient with respect to it,
    ``grad · other`` summed to the factor's shape, passed through the rule. A factor the
    rule gives share 0 (a gate) costs nothing: that gradient is not computed."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, call: OpCall, session: Session,
                compute: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.call, ctx.session = call, session
        return compute(a, b)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        call: OpCall = ctx.call
        rule = call.rule
        assert rule is not None
        factors = ctx.saved_tensors
        out: list[Tensor | None] = []
        for position, (factor, other) in enumerate(zip(factors, factors[::-1])):
            op = _share_op(call, position)
            share = rule.share(op)
            signal = None
            if share != 0:
                signal = (grad * other).sum_to_size(factor.shape)
                if share is None:
                    signal = rule.propagate(op, signal, signal, signal)
                elif share != 1:
                    signal.mul_(share)
            if ctx.session.record:
                ctx.session.log_share(call, factor, signal)
            out.append(signal)
        return out[0], out[1], None, None, None
