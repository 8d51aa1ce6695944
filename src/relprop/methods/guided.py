"""Guided backpropagation and DeconvNet: the gradient with a modified ReLU backward.

Both replace the backward pass of each ReLU and keep every other gradient. The replacement is
scoped to the call: a torch-function mode, active only while the model runs, routes the ReLU
calls on the input's path (``F.relu``, ``torch.relu``, ``Tensor.relu``, ``nn.ReLU`` and their
in-place forms) through an autograd function with the same forward. Nothing is patched, the
model is not touched, and leaving the call (exceptions included) removes the mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .._engine import check_output as _check_output
from .._engine import short_name
from ..explain import Explanation
from ..rules.ops import seeded_grad
from ._bound import bound_method
from ._common import TargetLike, check_call, differentiable, resolve


class _GuidedReLU(torch.autograd.Function):
    """``max(0, a)``; backward ``g · [a > 0] · [g > 0]`` (Springenberg et al. 2015)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor) -> Tensor:
        out = torch.relu(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


class _GuidedReLUInPlace(torch.autograd.Function):
    """:class:`_GuidedReLU` overwriting its input, as the model's in-place ReLU would."""

    @staticmethod
    def forward(ctx: Any, a: Tensor) -> Tensor:
        a.relu_()
        ctx.mark_dirty(a)
        ctx.save_for_backward(a)
        return a

    backward = _GuidedReLU.backward


class _DeconvReLU(torch.autograd.Function):
    """``max(0, a)``; backward ``max(0, g)``, the ReLU applied to the signal going back
    (Zeiler & Fergus 2014)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor) -> Tensor:
        return torch.relu(a)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


class _DeconvReLUInPlace(torch.autograd.Function):
    """:class:`_DeconvReLU` overwriting its input, as the model's in-place ReLU would."""

    @staticmethod
    def forward(ctx: Any, a: Tensor) -> Tensor:
        a.relu_()
        ctx.mark_dirty(a)
        return a

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


_FUNCTIONS: dict[str, tuple[type[torch.autograd.Function], type[torch.autograd.Function]]] = {
    "guided_backprop": (_GuidedReLU, _GuidedReLUInPlace),
    "deconvnet": (_DeconvReLU, _DeconvReLUInPlace),
}


class ReLUBackward(TorchFunctionMode):
    """While active, ReLU calls on tensors that require grad use a modified backward.

    ``kind`` is ``"guided_backprop"`` or ``"deconvnet"``; ``relus`` counts the calls routed.
    An in-place ReLU stays in place (the model may rely on its input being overwritten).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.out_of_place, self.in_place = _FUNCTIONS[kind]
        self.relus = 0
        self._names: dict[Any, str] = {}

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        kwargs = kwargs or {}
        name = self._names.get(func)
        if name is None:
            name = self._names[func] = short_name(func)
        if name in ("relu", "relu_"):
            a = args[0] if args else kwargs.get("input")
            if isinstance(a, Tensor) and a.requires_grad:
                inplace = name == "relu_" or kwargs.get("inplace") is True or (
                    len(args) > 1 and args[1] is True)
                self.relus += 1
                return (self.in_place if inplace else self.out_of_place).apply(a)
        return func(*args, **kwargs)


def _modified_gradient(kind: str, model: nn.Module, x: Tensor,
                       target: TargetLike) -> Explanation:
    check_call(model, x)
    x_leaf, fed = differentiable(x)
    mode = ReLUBackward(kind)
    with torch.enable_grad(), mode:
        output = model(fed)
    _check_output(output)
    reference = resolve(output, target, x.shape[0])  # the forward pass is the model's own
    if mode.relus == 0:
        warnings.warn(f"{kind}: the model applies no ReLU to anything computed from x, so "
                      "the result is the plain gradient", stacklevel=3)
    (grad,) = seeded_grad(output, [x_leaf], reference.seed, allow_unused=True)
    return reference.explanation(torch.zeros_like(x) if grad is None else grad, kind)


@bound_method
def guided_backprop(model: nn.Module, x: Tensor, target: TargetLike = None) -> Explanation:
    """Guided backpropagation: the gradient, with each ReLU passing back only positive signal
    where its input was positive: ``g_in = g_out · [a > 0] · [g_out > 0]``.

    Springenberg, Dosovitskiy, Brox & Riedmiller (2015), "Striving for Simplicity: The All
    Convolutional Net". The signal arriving at every ReLU input is non-negative; other ops
    (layers, pooling, other activations) keep their gradient.
    """
    return _modified_gradient("guided_backprop", model, x, target)


@bound_method
def deconvnet(model: nn.Module, x: Tensor, target: TargetLike = None) -> Explanation:
    """DeconvNet: the gradient, with each ReLU applied to the signal going back instead of
    gated by its forward input: ``g_in = max(0, g_out)``.

    Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks". Max
    pooling keeps its gradient (the paper's switches); other ops keep their gradient.
    """
    return _modified_gradient("deconvnet", model, x, target)
