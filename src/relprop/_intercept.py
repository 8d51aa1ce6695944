"""The torch-function mode that routes rule-bearing op calls through relprop's functions.

Layers (linear, conv, transposed conv), BatchNorm, activations other than ReLU, max pooling
and products of two activations are replaced by autograd functions that compute the same
output and apply a rule on the way back. Every other op runs unchanged: if it is linear its
gradient already is LRP-0, and :mod:`relprop._graph` checks the rest after the forward pass.
Parameters are detached at the call, so the graph holds only what depends on the input.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, resolve_name

from ._attention import ADDITIVE, joined_source, parameter_source, remember_expanded
from ._attention import HANDLERS as TRANSFORMER_HANDLERS
from ._functions import ElementwiseFunction, LayerFunction, MaxPoolFunction, ShareFunction
from ._graph import INDEX_ONLY
from ._inplace import asks_in_place, raise_leaf_write, run_in_place
from ._ops import LinearOp, linear_op_from_call
from ._recurrent import replay
from ._session import Session
from .errors import InvalidInputError, UnsupportedOperationError

Handler = Callable[[Session, Callable[..., Any], str, tuple[Any, ...], dict[str, Any]], Any]

_PREFIXES = ("torch.nn.functional.", "torch.Tensor.", "torch.functional.", "torch.")

ACTIVATIONS = frozenset({
    "silu", "gelu", "elu", "selu", "celu", "softplus", "mish", "hardswish", "hardsigmoid",
    "sigmoid", "tanh", "relu6", "hardtanh", "logsigmoid", "softsign", "tanhshrink",
})
GATES = frozenset({"sigmoid", "hardsigmoid"})
PRODUCTS = frozenset({"mul", "__mul__", "__rmul__", "matmul", "__matmul__", "__rmatmul__",
                      "bmm", "einsum"})
SHAPE_OPS = frozenset({
    "view", "reshape", "expand", "expand_as", "view_as", "unsqueeze", "squeeze", "flatten",
    "permute", "transpose", "contiguous", "__getitem__", "repeat", "clone",
})
#: ops that join a list of tensors (a class token concatenated to the patches)
_JOINS = frozenset({"cat", "concat", "concatenate"})
#: ops after which attention weights are still the same weights (casts, eval-mode dropout)
_KEEPS_WEIGHTS = SHAPE_OPS | {"to", "type", "float", "half", "bfloat16", "double", "dropout"}
#: shape ops that keep a parameter a parameter (``W.t()`` in ``x @ W.t() + b``)
_KEEPS_CONSTANT = SHAPE_OPS | {"t", "T.__get__", "mT.__get__", "to", "type", "float", "double",
                               "half", "bfloat16", "detach"}
#: ``a @ W`` spellings whose right operand may be a layer's weight
_RIGHT_MATMULS = frozenset({"matmul", "__matmul__", "mm"})
#: ops that are a ReLU when their lower bound is 0 and they have no upper bound
_CLAMPS = frozenset({"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"})


def short_name(func: Callable[..., Any]) -> str:
    name = resolve_name(func) or getattr(func, "__name__", repr(func))
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _on_path(value: Any) -> bool:
    return isinstance(value, Tensor) and value.requires_grad


def _detach_leaves(value: Any, session: Session) -> Any:
    """Parameters (and other leaves that are not the input) become constants."""
    if isinstance(value, Tensor):
        if value.requires_grad and value.grad_fn is None and not session.is_leaf_input(value):
            detached = value.detach()
            session.mark_constant(detached)
            return detached
        if isinstance(value, nn.Parameter) or session.is_buffer(value):
            session.mark_constant(value)
        return value
    if isinstance(value, list | tuple) and any(isinstance(v, Tensor) for v in value):
        return type(value)(_detach_leaves(v, session) for v in value)
    return value


def _reads_input(session: Session, a: Tensor) -> bool:
    """Whether ``a`` is the explained input, or made from it by ops that only move values
    (views, permutes, slices, padding, concatenation): rules that do not factor through
    ``a`` then hand their relevance straight back to the input pixels."""
    x = session.x
    if session.is_model_input(a):
        return True
    stack, seen = [a.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kind = type(node).__name__
        if kind == "AccumulateGrad":
            if getattr(node, "variable", None) is not x:
                return False
            continue
        if kind not in INDEX_ONLY and "Pad" not in kind:  # CircularPad*, future pads
            return False
        stack.extend(parent for parent, _ in node.next_functions)
    return bool(seen)


def _layer(session: Session, func: Callable[..., Any], name: str,
           args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    a, op = linear_op_from_call(name, args, kwargs)
    if op is None or not _on_path(a) or _on_path(op.weight) or _on_path(op.bias):
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
    out = LayerFunction.apply(a, op, call, session, lambda: func(*args, **kwargs))
    session.producers[id(out)] = (weakref.ref(out), call, op, a)
    return out


def _batch_norm(session: Session, func: Callable[..., Any], name: str,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
             "eps")
    bound: dict[str, Any] = {"weight": None, "bias": None, "training": False, "eps": 1e-5}
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
    var, mean = bound["running_var"], bound["running_mean"]
    scale = torch.rsqrt(var + bound["eps"])
    if bound["weight"] is not None:
        scale = scale * bound["weight"]
    shift = -mean * scale
    if bound["bias"] is not None:
        shift = shift + bound["bias"]
    channels = scale.numel()
    producer = session.producers.pop(id(x), None)
    if producer is not None and producer[0]() is x and producer[2].can_fuse_affine_on(x, channels):
        _, call, op, a = producer
        call.fused = path
        fused = op.fuse_affine(scale, shift)
        value = bound["input"].detach()
        out = LayerFunction.apply(a, fused, call, session,
                                  lambda: func(value, *args[1:], **kwargs))
        session.producers[id(out)] = (weakref.ref(out), call, fused, a)
        return out
    op = LinearOp("norm", scale, shift, {})
    call = session.new_call("norm", name, reads_input=_reads_input(session, x))
    out = LayerFunction.apply(x, op, call, session, lambda: func(*args, **kwargs))
    session.producers[id(out)] = (weakref.ref(out), call, op, x)
    return out


def _relu(session: Session, func: Callable[..., Any], args: tuple[Any, ...],
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
    _, call, op, a = producer
    if inplace:  # ``x`` becomes the merged node's output, for every later reader of it
        return LayerFunction.apply(a, op, call, session, None, True, x)
    value = x.detach()
    return LayerFunction.apply(a, op, call, session, lambda: torch.relu(value), True)


def _relu_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool | None:
    """For a ReLU (also ``clamp(min=0)``): whether it is in place; ``None`` for other ops."""
    if name in ("relu", "relu_"):
        return name == "relu_" or kwargs.get("inplace") is True or (
            len(args) > 1 and args[1] is True)
    if name in _CLAMPS and args and not kwargs.keys() - {"min", "max"}:
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
    if any(_on_path(b) for b in bounds):
        return func(*args, **kwargs)
    return _activation(session, lambda t, **_: func(t, *args[1:], **kwargs), name,
                       args[:1], {})


def _activation(session: Session, func: Callable[..., Any], name: str,
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    a = args[0]
    if not _on_path(a):
        return func(*args, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    rest = args[1:]
    call = session.new_call("activation", name)
    out = ElementwiseFunction.apply(a, lambda t: func(t, *rest, **kwargs), call, session)
    if name in GATES:
        session.mark_gate(out)
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
    out, indices = MaxPoolFunction.apply(a, options, call, session, int(name[-2]))
    return (out, indices) if return_indices else out


def _matmul_layer(session: Session, func: Callable[..., Any], name: str,
                  args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``a @ W`` with ``W`` a 2-D parameter (or a view of one, ``W.t()``): a dense layer with
    weight ``Wᵀ``, which takes its rule like ``nn.Linear``; anything else is a product."""
    if len(args) == 2 and not kwargs and name in _RIGHT_MATMULS:
        a, w = args
        if (_on_path(a) and isinstance(w, Tensor) and not _on_path(w) and w.dim() == 2
                and a.dim() >= 1 and session.is_constant(w)):
            op = LinearOp("linear", w.t(), None, {})
            call = session.new_call("linear", name, reads_input=_reads_input(session, a))
            out = LayerFunction.apply(a, op, call, session, lambda: func(*args))
            session.producers[id(out)] = (weakref.ref(out), call, op, a)
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
        _, call, op, a = producer
        if (op.kind == "linear" and op.bias is None and op._affine is None and b.dim() == 1
                and not _on_path(b) and session.is_constant(b) and z.shape[-1:] == b.shape):
            session.producers.pop(id(z))
            fused = LinearOp("linear", op.weight, b, {})
            out = LayerFunction.apply(a, fused, call, session, partial(torch.add, z.detach(), b))
            session.producers[id(out)] = (weakref.ref(out), call, fused, a)
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
    for position, i in enumerate(factors):
        if i in on_path:
            operands[i] = ShareFunction.apply(operands[i], call, position, session)
    out = func(args[0], *operands, **kwargs) if name == "einsum" else func(*operands, **kwargs)
    _approve_down_to_shares(session, out.grad_fn)
    session.log_output(call, out)
    return out


def _approve_down_to_shares(session: Session, node: Any) -> None:
    """Matmul and einsum are built from reshapes around a bmm: approve all of it."""
    stack = [node]
    while stack:
        node = stack.pop()
        if node is None or node in session.approved:
            continue
        session.approved.add(node)
        if type(node).__name__ != "ShareFunctionBackward":
            stack.extend(parent for parent, _ in node.next_functions)


def _recurrent(session: Session, func: Callable[..., Any], name: str,
               args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``torch.lstm``/``torch.gru``: replayed step by step under this mode (``_recurrent``)."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    tensors += [t for a in args if isinstance(a, list | tuple) for t in a if isinstance(t, Tensor)]
    if kwargs or not any(_on_path(t) for t in tensors):
        return func(*args, **kwargs)
    with session.interceptor:
        return replay(name, args, session.mark_gate)


_HANDLERS: dict[str, Handler] = {
    **{n: _layer for n in ("linear", "addmm", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                           "conv_transpose2d", "conv_transpose3d")},
    "batch_norm": _batch_norm,
    **{n: _clamp for n in ("clamp", "clip", "clamp_min", "clamp_max")},
    **{n: _activation for n in ACTIVATIONS},
    **{n: _max_pool for n in ("max_pool1d", "max_pool2d", "max_pool3d")},
    **{n: _product for n in PRODUCTS},
    **{n: _matmul_layer for n in _RIGHT_MATMULS},
    "lstm": _recurrent,
    "gru": _recurrent,
    **TRANSFORMER_HANDLERS,
}


class Interceptor(TorchFunctionMode):
    """Routes each op call of the forward pass to its handler (see module docstring)."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        session.interceptor = self
        self._names: dict[Any, str] = {}

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        session = self.session
        if session.opaque:  # inside a module relprop treats as one op
            return func(*args, **(kwargs or {}))
        name = self._names.get(func)
        if name is None:
            name = self._names[func] = short_name(func)
        kwargs = kwargs or {}
        if name in ADDITIVE and any(_on_path(v) for v in args):
            args = tuple(parameter_source(session, v, args) for v in args)
        elif name in _JOINS and args and isinstance(args[0], list | tuple) \
                and any(_on_path(v) for v in args[0]):
            args = (type(args[0])(joined_source(session, v) for v in args[0]), *args[1:])
        parameter = args[0] if name == "expand" and args else None
        in_place = asks_in_place(name, args, kwargs)
        if in_place and args and isinstance(args[0], Tensor) and args[0].requires_grad \
                and args[0].grad_fn is None and not session.is_leaf_input(args[0]):
            raise_leaf_write(session, name, args[0])
        args = tuple(_detach_leaves(v, session) for v in args)
        kwargs = {k: _detach_leaves(v, session) for k, v in kwargs.items()}
        relu = _relu_call(name, args, kwargs)
        if relu is not None:  # the model's own in-place promise lets us reuse memory
            out = _relu(session, func, args[:1], {}, relu)
            self._stamp(out, "relu", True, args)
            return out
        if in_place:
            out = run_in_place(session, func, name, args, kwargs, self._dispatch)
            self._stamp(out, name, False, args)
            return out
        out = self._dispatch(func, name, args, kwargs)
        if parameter is not None:
            remember_expanded(session, parameter, out)
        return out

    def _dispatch(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        """Run one out-of-place op call: through its handler if it has one."""
        session = self.session
        out = None
        if name in ("add", "__add__", "__radd__"):
            out = fuse_bias(session, func, args, kwargs)
        handled = out is not None or name in _HANDLERS
        if out is None:
            handler = _HANDLERS.get(name)
            out = func(*args, **kwargs) if handler is None else handler(
                session, func, name, args, kwargs)
        if name in _KEEPS_CONSTANT and args and session.is_constant(args[0]) \
                and isinstance(out, Tensor):
            session.mark_constant(out)
        self._stamp(out, name, handled, args)
        return out

    def _stamp(self, out: Any, name: str, handled: bool, args: tuple[Any, ...]) -> None:
        session = self.session
        outs = out if isinstance(out, tuple | list) else (out,)
        path = session.where()[0] or "<model>"
        for t in outs:
            if not isinstance(t, Tensor) or t.grad_fn is None:
                continue
            node = t.grad_fn
            if node not in session.node_info:
                session.node_info[node] = (path, name)
            if handled:
                session.approved.add(node)
            elif name in SHAPE_OPS and args and session.is_gate(args[0]):
                session.mark_gate(t)
            if name in _KEEPS_WEIGHTS and args:
                source = session.weights_call(args[0])
                if source is not None:
                    session.mark_weights(t, source)
