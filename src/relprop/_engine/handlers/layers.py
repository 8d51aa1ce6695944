"""Handlers of the layer family: linear and convolution layers (also ``x @ W.t() + b``),
BatchNorm (merged into the layer that feeds it), ReLU (merged into the layer before it),
other activations, max pooling and products of activations.

A handler gets ``(session, func, name, args, kwargs)`` for one op call of the forward pass and
returns what the model's call returns; where the op takes a rule it runs through one of the
autograd functions of :mod:`relprop._engine.apply`, with its op view from
:mod:`relprop.rules.ops`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InvalidInputError, UnsupportedOperationError
from ...rules.ops import ElementwiseOp, LinearOp, PoolOp, linear_op_from_call
from ..affine import affine_of
from ..apply import (
    LayerFunction,
    MaxPoolFunction,
    ProductFunction,
    ShareFunction,
    UnaryFunction,
    layer_node,
    stand_in,
    taken_over,
)
from ..paths import on_path as _on_path
from ..paths import reads_input as _reads_input

if TYPE_CHECKING:
    from ..session import Session

Handler = Callable[..., Any]

#: activations other than ReLU: an elementwise op each, under the activation rule
ACTIVATIONS = frozenset({
    "silu", "gelu", "elu", "selu", "celu", "softplus", "mish", "hardswish", "hardsigmoid",
    "sigmoid", "tanh", "relu6", "hardtanh", "logsigmoid", "softsign", "tanhshrink",
})
#: activations whose outputs are gates (signal-take-all in products)
GATES = frozenset({"sigmoid", "hardsigmoid"})
PRODUCTS = frozenset({"mul", "__mul__", "__rmul__", "matmul", "__matmul__", "__rmatmul__",
                      "bmm", "einsum"})
#: products of two factors elementwise (shapes broadcast): one node of their own
ELEMENTWISE_PRODUCTS = frozenset({"mul", "__mul__", "__rmul__", "multiply"})
#: ``a @ W`` spellings whose right operand may be a layer's weight
RIGHT_MATMULS = frozenset({"matmul", "__matmul__", "mm"})
#: ops that are a ReLU when their lower bound is 0 and they have no upper bound
CLAMPS = frozenset({"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"})
#: a sum that may add a bias parameter to a bias-free dense layer's output
SUMS = frozenset({"add", "__add__", "__radd__"})


def _layer(session: Session, func: Callable[..., Any], name: str,
           args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    a, op = linear_op_from_call(name, args, kwargs)
    # the op's own weight and bias (``weight`` and ``bias`` are the merged ones, made lazily)
    if op is None or not _on_path(a) or _on_path(op._weight) or _on_path(op._bias):
        return func(*args, **kwargs)  # constant, or a weight computed from the input
    kind = op.kind
    reads_input = _reads_input(session, a)
    if reads_input and kind == "conv" and a.dim() == int(name[-2]) + 1 \
            and a.shape == session.x.shape:
        raise InvalidInputError(
            f"x has shape {tuple(a.shape)}, which {name} at '{session.where()[0] or '<model>'}' "
            "takes as ONE unbatched sample; relprop explains batches (first dimension = "
            "samples): add the batch dimension, x.unsqueeze(0)")
    call = session.new_call(kind, name, reads_input=reads_input)
    call.groups = int(op.options.get("groups", 1))
    if kind == "linear":
        a = stand_in(session, a)
    out = LayerFunction.apply(a, op, call, session, lambda: func(*args, **kwargs))
    produced(session, out, call, op, a)
    return out


def produced(session: Session, out: Tensor, call: Any, op: LinearOp, a: Tensor) -> None:
    """Remember ``out`` as the output of the layer ``call`` (``op`` on ``a``), which a
    BatchNorm, ReLU or bias reading it next joins (:func:`_batch_norm`, :func:`_relu`,
    :func:`fuse_bias`)."""
    session.producers[id(out)] = (weakref.ref(out), call, op, a, layer_node(out))


def _batch_norm(session: Session, func: Callable[..., Any], name: str,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
             "eps")
    bound: dict[str, Any] = {"weight": None, "bias": None, "training": False, "momentum": 0.1,
                             "eps": 1e-5}
    bound.update(zip(names, args))
    bound.update(kwargs)
    x = bound["input"]
    if not _on_path(x):
        return func(*args, **kwargs)
    path, _, _ = session.where()
    if bound["training"] or bound["running_mean"] is None:
        raise UnsupportedOperationError(
            f"batch_norm at '{path or '<model>'}' normalises with batch statistics (module in "
            "training mode or track_running_stats=False), so each sample's output depends on "
            "the others. Call model.eval() and use running statistics."
        )
    var, mean, weight, bias = (bound["running_var"], bound["running_mean"], bound["weight"],
                               bound["bias"])
    eps = float(bound["eps"])
    producer = session.producers.pop(id(x), None)
    if producer is not None and producer[0]() is x \
            and producer[2].can_fuse_affine_on(x, var.numel()):
        _, call, op, a, node = producer
        call.fused = path
        # scale and shift are made on the way back, with every other BatchNorm's
        affine = session.affines.defer(var, mean, weight, bias, eps, op._weight.dtype, path)
        fused = op.fuse_deferred(affine, (var, mean, weight, bias, eps))
        value = bound["input"].detach()
        out = LayerFunction.apply(a, fused, call, session,
                                  _normalise(func, value, bound, args, kwargs))
        taken_over(node)
        produced(session, out, call, fused, a)
        return out
    scale, shift = affine_of(var, mean, weight, bias, eps)
    op = LinearOp("norm", scale, shift, {})
    call = session.new_call("norm", name, reads_input=_reads_input(session, x))
    out = LayerFunction.apply(x, op, call, session, lambda: func(*args, **kwargs))
    produced(session, out, call, op, x)
    return out


def _normalise(func: Callable[..., Any], value: Tensor, bound: dict[str, Any],
               args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Tensor]:
    """The model's BatchNorm call on ``value``: ``F.batch_norm``'s own kernel call, without
    its Python checks a second time (they passed when the model called it)."""
    if func is F.batch_norm and bound["eps"] >= 0:
        return partial(torch.batch_norm, value, bound["weight"], bound["bias"],
                       bound["running_mean"], bound["running_var"], False, bound["momentum"],
                       bound["eps"], torch.backends.cudnn.enabled)
    return partial(func, value, *args[1:], **kwargs)


def _relu(session: Session, func: Callable[..., Any], args: tuple[Any, ...],
          kwargs: dict[str, Any], inplace: bool) -> Any:
    """A ReLU (see :func:`_relu_op`); its output is marked ``>= 0`` for the layers that read
    it (``LinearOp.nonnegative_input``)."""
    out = _relu_op(session, func, args, kwargs, inplace)
    if isinstance(out, Tensor):
        session.mark_nonnegative(out)
    return out


def _relu_op(session: Session, func: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], inplace: bool) -> Any:
    """A ReLU right after a layer joins that layer's node (see ``LayerFunction``).

    If the model asked for an in-place ReLU, the layer's output is overwritten as the model
    intended (it has no other use), which saves allocating a fresh activation.
    """
    x: Tensor | None = args[0] if args and isinstance(args[0], Tensor) else None
    if x is None and "input" in kwargs:
        x = kwargs.pop("input")
    if x is None or not x.requires_grad:
        if inplace and x is not None:
            session.saved.protect(x)
            return torch.relu_(x)
        return torch.relu(*args, **kwargs)
    producer = session.producers.pop(id(x), None)
    if producer is None or producer[0]() is not x or (inplace and x.grad_fn is None):
        if not inplace:
            return torch.relu(x)
        session.saved.protect(x)  # a ReLU gate is its own rule: run it as written
        session.written(x)
        out = torch.relu_(x)
        for t in (out, out._base):
            if isinstance(t, Tensor) and t.grad_fn is not None:
                session.approved.add(t.grad_fn)
        return out
    _, call, op, a, node = producer
    if inplace:  # ``x`` becomes the merged node's output, for every later reader of it
        out = LayerFunction.apply(a, op, call, session, None, True, x)
    else:
        value = x.detach()
        out = LayerFunction.apply(a, op, call, session, lambda: torch.relu(value), True)
    taken_over(node)
    if session.record:
        session.merged(x, out)
    return out


def _relu_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool | None:
    """For a ReLU (also ``clamp(min=0)``): whether it is in place; ``None`` for other ops."""
    if name in ("relu", "relu_"):
        return name == "relu_" or kwargs.get("inplace") is True or (
            len(args) > 1 and args[1] is True)
    if name in CLAMPS and args and not kwargs.keys() - {"min", "max"}:
        bounds = dict(zip(("min", "max"), args[1:]))
        bounds.update(kwargs)
        low = bounds.get("min")
        if (not isinstance(low, Tensor) and low is not None and low == 0
                and bounds.get("max") is None):
            return name.endswith("_")
    return None


def _clamp(session: Session, func: Callable[..., Any], name: str,
           args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``clamp`` with other bounds (``clamp(-1, 1)`` is hardtanh): an activation."""
    bounds = list(args[1:]) + list(kwargs.values())
    if any(_on_path(b) for b in bounds):  # bounds from the input: no rule, let the check see it
        return session.unvouched(func(*args, **kwargs))
    return _activation(session, lambda t, **_: func(t, *args[1:], **kwargs), name,
                       args[:1], {})


def _activation(session: Session, func: Callable[..., Any], name: str,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    a = args[0]
    if not _on_path(a):
        return func(*args, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    out = elementwise(session, "activation", name, partial(_call_with, func, args[1:], kwargs), a)
    if name in GATES:
        session.mark_gate(out)
    return out


def _call_with(func: Callable[..., Any], rest: tuple[Any, ...], kwargs: dict[str, Any],
               t: Tensor) -> Any:
    return func(t, *rest, **kwargs)


def elementwise(session: Session, kind: str, name: str, fn: Callable[[Tensor], Tensor],
                a: Tensor) -> Tensor:
    """One elementwise op ``z = fn(a)`` of ``kind``, under its rule."""
    call = session.new_call(kind, name)
    out: Tensor = UnaryFunction.apply(a, ElementwiseOp(kind, fn), call, session, fn, fn)
    return out


def _max_pool(session: Session, func: Callable[..., Any], name: str,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
             "return_indices")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    a = bound.pop("input")
    if not _on_path(a):
        return func(*args, **kwargs)
    return_indices = bool(bound.pop("return_indices", False))
    options = {"kernel_size": bound["kernel_size"], "stride": bound.get("stride"),
               "padding": bound.get("padding", 0), "dilation": bound.get("dilation", 1),
               "ceil_mode": bound.get("ceil_mode", False)}
    call = session.new_call("max_pool", name)
    out, indices = MaxPoolFunction.apply(a, PoolOp(options, int(name[-2])), call, session)
    if session.is_nonnegative(a):  # a maximum of values >= 0 (padding is never the maximum)
        session.mark_nonnegative(out)
    return (out, indices) if return_indices else out


def _matmul_layer(session: Session, func: Callable[..., Any], name: str,
                  args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``a @ W`` with ``W`` a 2-D parameter (or a view of one, ``W.t()``): a dense layer with
    weight ``Wᵀ``, which takes its rule like ``nn.Linear``; anything else is a product."""
    if len(args) == 2 and not kwargs and name in RIGHT_MATMULS:
        a, w = args
        if (_on_path(a) and isinstance(w, Tensor) and not _on_path(w) and w.dim() == 2
                and a.dim() >= 1 and session.is_constant(w)):
            op = LinearOp("linear", w.t(), None, {})
            call = session.new_call("linear", name, reads_input=_reads_input(session, a))
            a = stand_in(session, a)
            out = LayerFunction.apply(a, op, call, session, lambda: func(*args))
            produced(session, out, call, op, a)
            return out
    if name in PRODUCTS:
        return _product(session, func, name, args, kwargs)
    return func(*args, **kwargs)


def fuse_bias(session: Session, func: Callable[..., Any], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
    """``z + b`` with ``z`` a bias-free dense layer's output and ``b`` a parameter of its width:
    the bias joins the layer, as in ``nn.Linear`` (``None`` if the call is not that)."""
    if len(args) != 2 or kwargs:
        return None
    for z, b in (args, args[::-1]):
        if not (isinstance(z, Tensor) and isinstance(b, Tensor)):
            continue
        producer = session.producers.get(id(z))
        if producer is None or producer[0]() is not z:
            continue
        _, call, op, a, node = producer
        if (op.kind == "linear" and op.bias is None and op._affine is None and b.dim() == 1
                and not _on_path(b) and session.is_constant(b) and z.shape[-1:] == b.shape):
            session.producers.pop(id(z))
            fused = LinearOp("linear", op.weight, b, {})
            out = LayerFunction.apply(a, fused, call, session, partial(torch.add, z.detach(), b))
            taken_over(node)
            produced(session, out, call, fused, a)
            return out
    return None


def _product(session: Session, func: Callable[..., Any], name: str,
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    operands = list(args[1]) if name == "einsum" and len(args) == 2 and isinstance(
        args[1], list | tuple) else list(args[1:] if name == "einsum" else args)
    factors = [i for i, t in enumerate(operands) if isinstance(t, Tensor)]
    on_path = [i for i in factors if _on_path(operands[i])]
    gated_constant = len(factors) > len(on_path) and any(session.is_gate(operands[i])
                                                         for i in on_path)
    if len(on_path) < 2 and not gated_constant:
        return func(*args, **kwargs)  # an activation times constants: linear
    call = session.new_call("product", name)
    # a gate times a constant signal: the constant takes the gate's share (it is absorbed)
    call.gates = [session.is_gate(operands[i]) for i in factors]
    sources = [session.weights_call(operands[i]) for i in factors]
    if any(source is not None for source in sources):
        call.sources = sources
    if name in ELEMENTWISE_PRODUCTS and len(operands) == 2 and len(on_path) == 2 \
            and not kwargs and session.gates_constant and call.gates.count(True) == 1 \
            and not call.sources:
        # the gate takes no relevance, the signal all of it: the plain product with the gate
        # held constant passes exactly that, and nothing behind the gate stays in the graph
        held = [t.detach() if gate else t for t, gate in zip(operands, call.gates)]
        out = func(*held)
        session.approved.add(out.grad_fn)
        return out
    if name in ELEMENTWISE_PRODUCTS and len(operands) == 2 and len(on_path) == 2 \
            and not kwargs and not any(t.is_complex() for t in operands):
        # one node; no gradient is computed for a factor that gets no signal
        out = ProductFunction.apply(operands[0], operands[1], call, session, _detached(func))
        session.approved.add(out.grad_fn)
        session.log_output(call, out)
        return out
    for position, i in enumerate(factors):
        if i in on_path:
            operands[i] = ShareFunction.apply(operands[i], call, position, session)
    out = func(args[0], *operands, **kwargs) if name == "einsum" else func(*operands, **kwargs)
    _approve_down_to_shares(session, out.grad_fn)
    session.log_output(call, out)
    return out


def _detached(func: Callable[..., Any]) -> Callable[[Tensor, Tensor], Tensor]:
    """``func`` on its two factors' values (the product node's forward)."""
    return lambda a, b: func(a.detach(), b.detach())


def _approve_down_to_shares(session: Session, node: Any, stops: frozenset[int] = frozenset()
                            ) -> None:
    """Approve the nodes one product call made (matmul and einsum are reshapes around a
    bmm): from its output down to the factors' share nodes, not into what made its other
    inputs (``stops``, graph nodes by id)."""
    stack = [node]
    while stack:
        node = stack.pop()
        if node is None or node in session.approved or id(node) in stops:
            continue
        session.approved.add(node)
        if type(node).__name__ != "ShareFunctionBackward":
            stack.extend(parent for parent, _ in node.next_functions)


def add(session: Session, func: Callable[..., Any], name: str,
        args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A sum: a bias joining a bias-free dense layer (``fuse_bias``), else a plain add."""
    fused = fuse_bias(session, func, args, kwargs)
    return func(*args, **kwargs) if fused is None else fused


#: the ops :func:`claim` may take
CLAIM_NAMES = frozenset({"relu", "relu_"}) | CLAMPS


def claim(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Handler | None:
    """The handler for a ReLU (``relu``, ``relu_``, ``F.relu(inplace=True)``, ``clamp(min=0)``),
    in place or not: it is merged into the layer before it, which the in-place machinery of
    the interceptor must leave to it."""
    inplace = _relu_call(name, args, kwargs)
    if inplace is None:
        return None
    return lambda session, func, _name, args, _kwargs: _relu(session, func, args[:1], {},
                                                              inplace)


def copy(session: Session, func: Callable[..., Any], name: str,
         args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``clone``, ``contiguous``, ``to(memory_format=...)``: the same values, so a layer's
    output stays that layer's output (a BatchNorm or ReLU after the copy still merges)."""
    out = func(*args, **kwargs)
    x = args[0] if args else None
    if isinstance(x, Tensor) and isinstance(out, Tensor) and out is not x \
            and out.dtype == x.dtype and out.shape == x.shape and out.device == x.device:
        producer = session.producers.get(id(x))
        if producer is not None and producer[0]() is x:
            session.producers[id(out)] = (weakref.ref(out), *producer[1:])
    return out


HANDLERS: dict[str, Handler] = {
    **{n: copy for n in ("clone", "contiguous", "to")},
    **{n: _layer for n in ("linear", "addmm", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                           "conv_transpose2d", "conv_transpose3d")},
    "batch_norm": _batch_norm,
    **{n: _clamp for n in ("clamp", "clip", "clamp_min", "clamp_max")},
    **{n: _activation for n in ACTIVATIONS},
    **{n: _max_pool for n in ("max_pool1d", "max_pool2d", "max_pool3d")},
    **{n: _product for n in PRODUCTS},
    **{n: _matmul_layer for n in RIGHT_MATMULS},
    **{n: add for n in SUMS},
}
