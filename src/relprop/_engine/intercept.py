"""Step 2 of the pipeline: catch the op calls of the forward pass.

A ``TorchFunctionMode`` installed for one call of :func:`relprop.explain` sees every torch
function and tensor method the model calls. Each call goes, by op name, to the handler of
an op family (:mod:`relprop._engine.handlers`: layers, transformer ops, recurrent ops), which
runs ops that take a rule through the autograd functions of :mod:`relprop._engine.apply`;
in-place calls go through :mod:`relprop._engine.inplace`; every other op runs unchanged —
if it is linear its gradient already is LRP-0, and :mod:`relprop._engine.graph` checks the
rest after the forward pass. Parameters are detached at the call, so the graph holds only
what depends on the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from torch import Tensor, nn
from torch._ops import OpOverload
from torch.overrides import TorchFunctionMode, resolve_name

from ..rules import cache as weight_cache
from . import aten, handlers
from .inplace import asks_in_place, raise_leaf_write, run_in_place, writes_by_name
from .session import Session

Handler = Callable[..., Any]

_PREFIXES = ("torch.nn.functional.", "torch.Tensor.", "torch.functional.", "torch.")
SHAPE_OPS = frozenset({
    "view", "reshape", "expand", "expand_as", "view_as", "unsqueeze", "squeeze", "flatten",
    "permute", "transpose", "contiguous", "__getitem__", "repeat", "clone",
})
#: ops after which attention weights are still the same weights (casts, eval-mode dropout,
#: masked positions set to 0 after the softmax: CPM-Ant; padded with constants and re-viewed
#: into diagonal bands: Longformer's and LED's sliding-window ``_pad_and_diagonalize``)
_KEEPS_WEIGHTS = SHAPE_OPS | {"to", "type", "type_as", "float", "half", "bfloat16", "double",
                              "dropout", "masked_fill", "narrow", "select", "split", "chunk",
                              "unbind", "pad"}
#: shape ops that keep a parameter a parameter (``W.t()`` in ``x @ W.t() + b``)
_KEEPS_CONSTANT = SHAPE_OPS | {"t", "T.__get__", "mT.__get__", "to", "type", "float", "double",
                               "half", "bfloat16", "detach"}
#: ops whose output is >= 0 wherever their input is: moves, averages, dropout (not
#: ``avg_pool2d``/``avg_pool3d``: their ``divisor_override`` may be negative)
_KEEPS_NONNEGATIVE = SHAPE_OPS | {
    "avg_pool1d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "dropout", "narrow",
    "select"}
#: reads of a tensor's metadata: they make no tensor and no graph node, so they skip the
#: handlers (a module hook reading ``output.grad_fn`` under the mode is one such call per module)
METADATA = frozenset({
    "grad_fn.__get__", "requires_grad.__get__", "is_leaf.__get__", "shape.__get__",
    "dtype.__get__", "device.__get__", "ndim.__get__", "layout.__get__", "is_cuda.__get__",
    "is_sparse.__get__", "is_quantized.__get__", "is_meta.__get__", "_base.__get__",
    "_version.__get__", "names.__get__", "dim", "ndimension", "size", "numel", "nelement",
    "stride", "storage_offset", "is_contiguous", "is_floating_point", "is_complex",
    "is_signed", "element_size", "data_ptr", "get_device", "__len__",
})


#: per torch function seen so far (the set is finite; resolving a name takes ~10 us, an
#: explanation meets tens of them): what the interceptor needs before the call, see
#: :func:`_route`
_ROUTES: dict[Any, tuple[str, bool, tuple[Any, ...], tuple[Any, ...], tuple[Any, ...], bool]] = {}


def _route(func: Callable[..., Any]
           ) -> tuple[str, bool, tuple[Any, ...], tuple[Any, ...], tuple[Any, ...], bool]:
    """``(name, metadata read, argument hooks, claims, observers, writes by name)``."""
    name = short_name(func)
    prepares, claims, observers = handlers.route(name)
    return name, name in METADATA, prepares, claims, observers, writes_by_name(name)


def short_name(func: Callable[..., Any]) -> str:
    """``F.conv2d`` -> ``"conv2d"``, ``Tensor.add_`` -> ``"add_"``: the name handlers use.

    Aten overloads (exported programs) by :func:`relprop._engine.aten.op_name`:
    ``aten.conv2d.default`` -> ``"conv2d"``, ``aten.batch_norm.default`` ->
    ``"aten::batch_norm"`` (an adapter to the handler of ``F.batch_norm``)."""
    if isinstance(func, OpOverload):
        return aten.op_name(func)
    name = resolve_name(func) or getattr(func, "__name__", repr(func))
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _detach_leaves(value: Any, session: Session) -> Any:
    """Leaves that require grad and are not the input (parameters) become constants: a
    detached copy, remembered as one. (A parameter or buffer that does not require grad is
    a constant as it is: :meth:`Session.is_constant` knows it by identity.)"""
    if isinstance(value, Tensor):
        if value.grad_fn is None and value.requires_grad and not session.is_leaf_input(value):
            detached = value.detach()
            session.mark_constant(detached)
            if isinstance(value, nn.Parameter):  # its rho(W) is kept under the parameter
                weight_cache.detached_from(detached, value)
            return detached
        return value
    if isinstance(value, list | tuple):
        for v in value:
            if isinstance(v, Tensor):
                return type(value)(_detach_leaves(v, session) for v in value)
    return value


def _is_parameter_leaf(t: Any) -> bool:
    """A leaf that requires grad (a parameter, or the input: :func:`_detach_leaves` decides).
    ``is_leaf`` and not ``grad_fn is None``: reading ``grad_fn`` makes a Python object of it."""
    return isinstance(t, Tensor) and t.requires_grad and t.is_leaf


def _has_parameter_leaf(values: Iterable[Any]) -> bool:
    """Whether :func:`_detach_leaves` may have to detach one of ``values`` (arguments, or
    keyword values): most calls of a frozen model have none, and need no new tuple. (Inlined
    :func:`_is_parameter_leaf`: this runs at every op call.)"""
    for value in values:
        if isinstance(value, Tensor):
            if value.requires_grad and value.is_leaf:
                return True
        elif isinstance(value, list | tuple):
            for v in value:
                if isinstance(v, Tensor) and v.requires_grad and v.is_leaf:
                    return True
    return False


def _nodes(args: tuple[Any, ...]) -> set[int]:
    """The graph nodes of a call's tensor arguments (ids)."""
    found = set()
    for a in args:
        if isinstance(a, Tensor):
            node = a.grad_fn
            if node is not None:
                found.add(id(node))
    return found


def _declared_elementwise(session: Session, func: Callable[..., Any], name: str,
                          args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """An op a rule of the composite named in ``elementwise_ops``: elementwise, of kind
    ``name``."""
    a = args[0] if args else None
    if not (isinstance(a, Tensor) and a.requires_grad):
        return func(*args, **kwargs)
    return handlers.elementwise(session, name, name,
                                partial(handlers.call_with, func, args[1:], kwargs), a)


class Interceptor(TorchFunctionMode):
    """Routes each op call of the forward pass to its handler (see module docstring).

    ``elementwise_ops`` are op names the composite's rules declared (``Rule.elementwise_ops``)
    that no family handles: they become elementwise ops of their own kind for this call."""

    def __init__(self, session: Session, elementwise_ops: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.session = session
        session.interceptor = self
        extra = {n: _declared_elementwise for n in elementwise_ops if n not in handlers.HANDLERS}
        self._handlers: Mapping[str, Handler] = {**handlers.HANDLERS, **extra,
                                                 **aten.ADAPTERS}

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        session = self.session
        route = _ROUTES.get(func)
        if route is None:
            route = _ROUTES[func] = _route(func)
        name, metadata, prepares, claims, observers, writes = route
        if session.opaque or metadata:  # inside a module taken as one op; a metadata read
            return func(*args, **(kwargs or {}))
        kwargs = kwargs or {}
        afters = []
        for prepare in prepares:
            args, after = prepare(session, name, args)
            if after is not None:
                afters.append(after)
        in_place = asks_in_place(name, args, kwargs, writes)
        if in_place and args and _is_parameter_leaf(args[0]) \
                and not session.is_leaf_input(args[0]):
            raise_leaf_write(session, name, args[0])
        if _has_parameter_leaf(args):
            args = tuple([_detach_leaves(v, session) if isinstance(v, Tensor | list | tuple)
                          else v for v in args])
        if kwargs and _has_parameter_leaf(kwargs.values()):
            kwargs = {k: _detach_leaves(v, session) for k, v in kwargs.items()}
        for claim in claims:
            handler = claim(name, args, kwargs)
            if handler is not None:
                before = _nodes(args)
                out = handler(session, func, name, args, kwargs)
                self._stamp(out, name, True, args, before)
                return out
        if in_place:
            before = _nodes(args)
            out = run_in_place(session, func, name, args, kwargs, self._dispatch)
            self._stamp(out, name, False, args, before)
            return out
        out = self._dispatch(func, name, args, kwargs)
        for after in afters:
            after(out)
        for observe in observers:
            observe(session, func, name, args, kwargs, out)
        return out

    def _dispatch(self, func: Callable[..., Any], name: str, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        """Run one out-of-place op call: through its handler if it has one."""
        session = self.session
        handler = self._handlers.get(name)
        before = _nodes(args)
        out = func(*args, **kwargs) if handler is None else handler(session, func, name, args,
                                                                    kwargs)
        if name in _KEEPS_CONSTANT and args and session.is_constant(args[0]) \
                and isinstance(out, Tensor):
            session.mark_constant(out)
        self._stamp(out, name, handler is not None, args, before)
        return out

    def _stamp(self, out: Any, name: str, handled: bool, args: tuple[Any, ...],
               before: set[int]) -> None:
        """Name the graph nodes the call made; approve them if a handler made them.
        ``before``: the nodes of the arguments before the call, which other ops made."""
        session = self.session
        outs = (out,) if isinstance(out, Tensor) else out if isinstance(out, tuple | list) \
            else ()
        for t in outs:
            if not isinstance(t, Tensor):
                continue
            node = t.grad_fn
            if node is None or id(node) in before:  # the call returned its input unchanged
                continue  # (``contiguous`` of a contiguous tensor): that node is its producer's
            if node not in session.node_info:
                session.node_info[node] = (session.where()[0] or "<model>", name)
            if handled and not session.is_unvouched(node):
                session.approved.add(node)
            elif name in SHAPE_OPS and args and session.is_gate(args[0]):
                session.mark_gate(t)
            if name in _KEEPS_NONNEGATIVE and args and session.is_nonnegative(args[0]):
                session.mark_nonnegative(t)
            if name in _KEEPS_WEIGHTS and args:
                source = session.weights_call(args[0])
                if source is not None:
                    session.mark_weights(t, source)
