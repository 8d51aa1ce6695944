"""In-place ops the model writes: the function explained stays the model's.

``h.add_(x)``, ``h[:, :4].relu_()``, ``F.silu(h, inplace=True)``, ``out += identity`` and
``torch.add(a, b, out=c)`` change a tensor the model may read again, so their effect must
reach the graph. Two ways, chosen per op:

* ops whose gradient is already the right rule (additions, copies, index writes, a ReLU
  gate, a product with a constant) run in place as written; their ``CopySlices`` node (an
  in-place op on a view) is approved because the op inside is known;
* every other op (activations with a rule, products of two activations, an op with no
  rule) is computed out of place through its handler, then written back with
  :class:`~relprop._functions.InPlaceWrite`; an op with no rule then stays visible to the
  graph check instead of hiding in a ``CopySlices`` node.

Before any write, tensors that an op saved from the written storage get a copy
(:mod:`relprop._saved`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UnsupportedOperationError
from .apply import InPlaceWrite

if TYPE_CHECKING:
    from .session import Session

Dispatch = Callable[[Callable[..., Any], str, tuple[Any, ...], dict[str, Any]], Any]

#: augmented assignments and the op they apply
AUGMENTED = {
    "__iadd__": "add", "__isub__": "sub", "__imul__": "mul", "__itruediv__": "div",
    "__idiv__": "div", "__ifloordiv__": "floor_divide", "__imod__": "remainder",
    "__ipow__": "pow", "__imatmul__": "matmul",
}
#: in-place ops whose autograd node is linear in every operand (or a ReLU-like gate)
LINEAR = frozenset({
    "add_", "sub_", "__iadd__", "__isub__", "neg_", "zero_", "fill_", "copy_", "__setitem__",
    "masked_fill_", "index_put_", "index_add_", "index_copy_", "index_fill_", "scatter_",
    "scatter_add_", "masked_scatter_", "put_", "leaky_relu_", "squeeze_", "unsqueeze_",
    "transpose_", "t_", "swapdims_", "swapaxes_", "as_strided_",
})
#: linear when the second operand does not depend on the input (else a product/quotient)
ONE_SIDED = frozenset({"mul_", "div_", "__imul__", "__itruediv__", "__idiv__"})
#: in-place methods that change no values on the relevance path
METADATA = frozenset({
    "requires_grad_", "detach_", "share_memory_", "retain_grad", "resize_", "resize_as_",
    "set_", "record_stream", "_fix_weakref", "pin_memory", "normal_", "uniform_",
    "bernoulli_", "random_", "exponential_", "geometric_", "cauchy_", "log_normal_",
})
#: position of a positional ``inplace`` argument, for functions that take one
INPLACE_POSITION = {"relu": 1, "selu": 1, "elu": 2, "celu": 2, "leaky_relu": 2,
                    "hardtanh": 3, "threshold": 3, "dropout": 3, "rrelu": 4, "silu": 1,
                    "mish": 1, "hardswish": 1, "hardsigmoid": 1, "relu6": 1,
                    "alpha_dropout": 3, "feature_alpha_dropout": 3, "dropout1d": 3,
                    "dropout2d": 3, "dropout3d": 3}


def on_path(value: Any) -> bool:
    return isinstance(value, Tensor) and value.requires_grad


def writes_by_name(name: str) -> bool:
    """Whether every call of op ``name`` writes into an argument (``add_``, ``+=``)."""
    return name in AUGMENTED or name == "__setitem__" or (
        name.endswith("_") and not name.endswith("__") and "." not in name
        and name not in METADATA)  # not a dunder, nor a property's ``grad_fn.__get__``


def asks_in_place(name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                  by_name: bool | None = None) -> bool:
    """Whether the call writes into one of its arguments (``by_name``: what
    :func:`writes_by_name` says of ``name``, where the caller has it)."""
    if writes_by_name(name) if by_name is None else by_name:
        return True
    if kwargs and (isinstance(kwargs.get("out"), Tensor) or kwargs.get("inplace") is True):
        return True
    position = INPLACE_POSITION.get(name)
    return position is not None and len(args) > position and args[position] is True


def _out_of_place(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> tuple[Callable[..., Any] | None, str, tuple[Any, ...], dict[str, Any]]:
    """The same op without the write: (function, name, args, kwargs); ``None`` if unknown."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("out", "inplace")}
    position = INPLACE_POSITION.get(name)
    if position is not None and len(args) > position and args[position] is True:
        args = args[:position] + (False,) + args[position + 1:]
        return getattr(F, name, None), name, args, kwargs
    if name in AUGMENTED:
        plain = AUGMENTED[name]
    elif name.endswith("_"):
        plain = name[:-1]
    else:  # an ``inplace=`` keyword or an ``out=`` tensor: the function itself
        return getattr(F, name, None) or getattr(torch, name, None), name, args, kwargs
    for namespace in (torch.Tensor, F, torch):
        func = getattr(namespace, plain, None)
        if callable(func):
            return func, plain, args, kwargs
    return None, plain, args, kwargs


def run_in_place(session: Session, func: Callable[..., Any], name: str,
                 args: tuple[Any, ...], kwargs: dict[str, Any], dispatch: Dispatch) -> Any:
    """Run an in-place op of the model so that the graph holds what it did (module docstring)."""
    out_arg = kwargs.get("out")
    target = out_arg if isinstance(out_arg, Tensor) else args[0] if args else None
    if not isinstance(target, Tensor):
        return func(*args, **kwargs)
    session.written(target)
    involved = on_path(target) or any(on_path(v) for v in args[1:]) or any(
        on_path(v) for v in kwargs.values())
    linear = name in LINEAR or (name in ONE_SIDED and not any(on_path(v) for v in args[1:]))
    if not involved or (linear and out_arg is None):
        session.saved.protect(target)
        before = _nodes(target)
        out = func(*args, **kwargs)
        if involved:
            _approve_write(session, target, before)
        return out
    plain, plain_name, plain_args, plain_kwargs = _out_of_place(name, args, kwargs)
    if plain is None:  # unknown op: run as written; the graph check will name it
        session.saved.protect(target)
        return func(*args, **kwargs)
    result = dispatch(plain, plain_name, plain_args, plain_kwargs)
    if result is target or not isinstance(result, Tensor):
        return result
    if target.requires_grad and target.grad_fn is None:
        raise_leaf_write(session, name, target)
    session.saved.protect(target)  # also what the out-of-place op just saved of it
    before = _nodes(target)
    out = InPlaceWrite.apply(target, result)
    _approve_write(session, out, before)
    return out if out_arg is None else out_arg


def _nodes(target: Tensor) -> set[int]:
    return {id(t.grad_fn) for t in (target, target._base)
            if isinstance(t, Tensor) and t.grad_fn is not None}


def _approve_write(session: Session, target: Tensor, before: set[int]) -> None:
    """The nodes an in-place write made: the target's, and its base's ``CopySlices`` (not
    nodes the tensors had before the write, which other ops made)."""
    for t in (target, target._base):
        if isinstance(t, Tensor) and t.grad_fn is not None and id(t.grad_fn) not in before:
            session.approved.add(t.grad_fn)


def raise_leaf_write(session: Session, name: str, target: Tensor) -> None:
    path = session.where()[0] or "<model>"
    raise UnsupportedOperationError(
        f"'{path}': in-place op '{name}' writes into a tensor of shape {tuple(target.shape)} "
        "that requires grad and is not computed from the input (a parameter?): the model "
        "would change its own weights. Write it out of place.")
