"""Exported programs (``torch.export``): their aten ops taken by the op families' handlers.

``torch.export.export(model, (x,)).module()`` is a ``GraphModule`` that calls aten operator
overloads (``torch.ops.aten.conv2d.default``, ``aten.batch_norm.default``, ...) instead of
``F.conv2d`` and the module calls. The interception mode sees them like any torch function;
this module gives each its op name (:func:`op_name`) and, where the aten overload's
arguments differ from the torch function a handler was written for (``aten.batch_norm``
puts the weight before the running statistics, ``_native_batch_norm_legit_no_training`` and
``max_pool2d_with_indices`` return tuples, ``aten.convolution`` covers every convolution,
``aten.embedding`` takes the table first), an *adapter* that calls the family's handler in
the torch function's convention. An aten op a handler would read but whose arguments were not
checked here keeps its full name (``aten.group_norm.default``): no handler takes it, and the
graph check names it if it is not linear.

:class:`ExportedModule` runs the program's graph node by node, each op inside the module
path ``torch.export`` recorded for it (``nn_module_stack``), so that rules are assigned and
named as for the eager module (``features.0:conv2d+batch_norm``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch._ops import OpOverload

from ..errors import InvalidInputError
from . import handlers

if TYPE_CHECKING:
    from .session import Session

#: aten ops whose positional arguments match the torch function of the same name for all
#: that relprop's handlers read (checked against the aten schemas)
SAME_AS_TORCH = frozenset({
    "linear", "addmm", "mm", "matmul", "bmm", "mul", "einsum", "add", "sub",
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "relu", "relu_", "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_",
    "clamp_max", "clone", "to", "contiguous", "softmax", "layer_norm", "rms_norm",
    "scaled_dot_product_attention", "lstm", "gru", "cat", "concat", "expand",
    "exp", "erf", "div", "logsumexp",
    *handlers.layers.ACTIVATIONS,
})
#: aten names of ops that torch spells otherwise (``_softmax(self, dim, half_to_float)``
#: takes ``dim`` second like ``F.softmax``)
RENAMED = {"log_sigmoid": "logsigmoid", "_softmax": "softmax"}


def _bind(func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by their names in the aten schema, defaults filled in."""
    schema = func._schema.arguments
    bound = {a.name: a.default_value for a in schema if a.has_default_value()}
    bound.update(zip((a.name for a in schema), args))
    bound.update(kwargs)
    return bound


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


def _handle(session: Session, torch_name: str, fn: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> Any:
    """The family's handler of ``torch_name``, given the call in torch's convention."""
    return handlers.HANDLERS[torch_name](session, fn, torch_name, args, kwargs)


def _batch_norm(session: Session, func: OpOverload, name: str, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
    """``batch_norm(input, weight, bias, mean, var, training, momentum, eps, cudnn)`` and the
    ``native``/``_native_..._legit`` variants, which return ``(out, save_mean, save_invstd,
    ...)``: ``F.batch_norm(input, mean, var, weight, bias, training, momentum, eps)``."""
    b = _bind(func, args, kwargs)
    training = bool(b.get("training", False))
    if func.overloadpacket.__name__ == "_native_batch_norm_legit_functional":
        training = True
    out = _handle(session, "batch_norm", F.batch_norm, (
        b["input"], b.get("running_mean"), b.get("running_var"), b["weight"], b["bias"],
        training, b["momentum"], b["eps"]), {})
    if func.overloadpacket.__name__ == "batch_norm":
        return out
    with torch.no_grad():  # the statistics the variant also returns (empty in eval mode)
        rest = func(*(_detached(a) for a in args), **kwargs)
    return (out, *rest[1:])


def _max_pool(session: Session, func: OpOverload, name: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
    """``max_pool2d(self, kernel_size, stride=[], ...)`` (``[]``: the kernel size) and
    ``max_pool2d_with_indices`` (a tuple): ``F.max_pool2d``."""
    packet = func.overloadpacket.__name__
    torch_name = packet.removesuffix("_with_indices")
    b = _bind(func, args, kwargs)
    stride = _tuple(b["stride"]) or None
    pool = (b["self"], _tuple(b["kernel_size"]), stride, _tuple(b["padding"]),
            _tuple(b["dilation"]), bool(b["ceil_mode"]))
    return _handle(session, torch_name, getattr(F, torch_name), pool,
                   {"return_indices": packet.endswith("_with_indices")})


def _convolution(session: Session, func: OpOverload, name: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
    """``convolution(input, weight, bias, stride, padding, dilation, transposed,
    output_padding, groups)`` (core ATen): ``F.conv{n}d`` or ``F.conv_transpose{n}d``."""
    b = _bind(func, args, kwargs)
    nd = b["weight"].dim() - 2
    conv: tuple[Any, ...]
    if b["transposed"]:
        torch_name = f"conv_transpose{nd}d"
        conv = (b["input"], b["weight"], b["bias"], _tuple(b["stride"]), _tuple(b["padding"]),
                _tuple(b["output_padding"]), b["groups"], _tuple(b["dilation"]))
    else:
        torch_name = f"conv{nd}d"
        conv = (b["input"], b["weight"], b["bias"], _tuple(b["stride"]), _tuple(b["padding"]),
                _tuple(b["dilation"]), b["groups"])
    return _handle(session, torch_name, getattr(F, torch_name), conv, {})


def _embedding(session: Session, func: OpOverload, name: str, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
    """``embedding(weight, indices, padding_idx=-1, ...)``: ``F.embedding(indices, weight)``
    (the padding index only changes the table's gradient, not the lookup)."""
    b = _bind(func, args, kwargs)
    return _handle(session, "embedding", F.embedding, (b["indices"], b["weight"]), {})


def _native_layer_norm(session: Session, func: OpOverload, name: str, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> Any:
    """``native_layer_norm`` returns ``(out, mean, rstd)``: ``F.layer_norm`` and the rest."""
    b = _bind(func, args, kwargs)
    out = _handle(session, "layer_norm", F.layer_norm, (
        b["input"], _tuple(b["normalized_shape"]), b["weight"], b["bias"], b["eps"]), {})
    with torch.no_grad():
        rest = func(*(_detached(a) for a in args), **kwargs)
    return (out, *rest[1:])


_ADAPTED: dict[str, Callable[..., Any]] = {
    **{n: _batch_norm for n in ("batch_norm", "native_batch_norm", "_native_batch_norm_legit",
                                "_native_batch_norm_legit_no_training",
                                "_native_batch_norm_legit_functional")},
    **{f"max_pool{n}d{s}": _max_pool for n in (1, 2, 3) for s in ("", "_with_indices")},
    "convolution": _convolution,
    "embedding": _embedding,
    "native_layer_norm": _native_layer_norm,
}
#: the adapters by the op names :func:`op_name` gives their ops (``aten::batch_norm``)
ADAPTERS: dict[str, Callable[..., Any]] = {f"aten::{n}": h for n, h in _ADAPTED.items()}


def op_name(func: OpOverload) -> str:
    """The op name handlers know an aten overload by: ``aten.conv2d.default`` -> ``"conv2d"``,
    ``aten.batch_norm.default`` -> ``"aten::batch_norm"`` (an adapter), an op a handler
    would misread -> its full name ``"aten.group_norm.default"`` (no handler takes it)."""
    packet = func.overloadpacket.__name__
    if func.namespace != "aten":
        return str(func)
    if packet in _ADAPTED:
        return f"aten::{packet}"
    packet = RENAMED.get(packet, packet)
    if packet in SAME_AS_TORCH or packet not in handlers.HANDLERS:
        return packet
    return str(func)


# -- exported programs ---------------------------------------------------------------------
def is_program(model: Any) -> TypeGuard[torch.export.ExportedProgram]:
    """Whether ``model`` is a ``torch.export.ExportedProgram``."""
    return isinstance(model, torch.export.ExportedProgram)


def is_exported(model: Any) -> bool:
    """Whether ``model`` is a graph of aten ops (``ExportedProgram.module()``), which has no
    train/eval mode of its own: the mode it was exported in is in its ops."""
    if isinstance(model, ExportedModule):
        return True
    if not isinstance(model, fx.GraphModule):
        return False
    return any(n.op == "call_function" and isinstance(n.target, OpOverload)
               for n in model.graph.nodes)


#: ops that, called with these arguments true, compute with batch statistics or randomness
_TRAINING_FLAGS = {
    "batch_norm": "training", "native_batch_norm": "training",
    "_native_batch_norm_legit": "training", "_native_batch_norm_legit_functional": "training",
    "dropout": "train", "native_dropout": "train", "feature_dropout": "train",
    "alpha_dropout": "train", "feature_alpha_dropout": "train",
}


def training_ops(model: nn.Module) -> list[str]:
    """The ops of an exported graph that run in training mode (``batch_norm(training=True)``,
    ``dropout(train=True)``), as ``'module.path: aten op'``."""
    graph_module = model.graph_module if isinstance(model, ExportedModule) else model
    if not isinstance(graph_module, fx.GraphModule):
        return []
    found = []
    for node in graph_module.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, OpOverload):
            continue
        flag = _TRAINING_FLAGS.get(target.overloadpacket.__name__)
        if flag is None:
            continue
        try:
            bound = _bind(target, tuple(node.args), dict(node.kwargs))
        except Exception:  # noqa: BLE001 - an unusual overload: not ours to judge
            continue
        if bound.get(flag) is True:
            found.append(f"{_scope(node)[0] or '<model>'}: {target}")
    return found


def _scope(node: fx.Node) -> tuple[str, int]:
    """The module path ``torch.export`` recorded for a node, and how often that module had
    run before (``'L__self__features_0@1'``: its second call)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return "", 0
    key, (path, _) = list(stack.items())[-1]
    count = key.rpartition("@")[2] if "@" in key else "0"
    return str(path), int(count) if count.isdigit() else 0


def active_session() -> Session | None:
    """The session whose interception mode is active on this thread, if any (the mode
    stack is thread-local; an interceptor is the mode its session names)."""
    for mode in reversed(torch.overrides._get_current_function_mode_stack()):
        session = getattr(mode, "session", None)
        if session is not None and getattr(session, "interceptor", None) is mode:
            return session
    return None


class _ScopedRun(fx.Interpreter):
    """Runs the graph's nodes, each inside its module scope of the running explanation."""

    def __init__(self, graph_module: fx.GraphModule, session: Session | None) -> None:
        super().__init__(graph_module)
        self.session = session

    def run_node(self, n: fx.Node) -> Any:
        if self.session is None or n.op != "call_function":
            return super().run_node(n)
        path, count = _scope(n)
        module = self.module.get_submodule(path) if path and _has(self.module, path) else None
        with _scoped(self.session, path, module, count):
            return super().run_node(n)


def _has(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


@contextmanager
def _scoped(session: Session, path: str, module: nn.Module | None, count: int
            ) -> Iterator[None]:
    """The node's module as the innermost running module of ``session`` (for op names)."""
    if not path:
        yield
        return
    session.stack.append((path, module or session.model, count))
    try:
        yield
    finally:
        session.stack.pop()


class ExportedModule(nn.Module):
    """An exported graph as a module relprop can run: the graph's submodules (and with them
    its parameters and buffers) under their own paths, the graph run node by node in the
    module scopes ``torch.export`` recorded. Its own eval flag only: the graph's mode is in
    its ops (see :func:`training_ops`)."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        super().__init__()
        for name, child in graph_module.named_children():
            self.add_module(name, child)  # the same objects: paths as in the eager module
        #: not a submodule: its children are this module's, under the same paths
        self.graph_module: fx.GraphModule
        object.__setattr__(self, "graph_module", graph_module)
        self.training = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise InvalidInputError(
                f"an exported program takes its inputs positionally, got keywords "
                f"{sorted(kwargs)}")
        return _ScopedRun(self.graph_module, active_session()).run(*args)


def as_module(model: Any) -> nn.Module:
    """``program.module()`` of an ``ExportedProgram``, and an exported graph, as an
    :class:`ExportedModule`; anything else as it is."""
    if is_program(model):
        model = model.module()
    if isinstance(model, fx.GraphModule) and is_exported(model):
        return ExportedModule(model)
    return model
