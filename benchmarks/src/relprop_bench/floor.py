"""The least an op-intercepting LRP-ε can cost: a floor for ``bench/engine.py``.

relprop sees each op call of the forward pass from Python (a ``TorchFunctionMode``) and runs
the ops that take a rule through autograd Functions of its own. Any engine built that way
pays, per op, the mode's call into Python and a Python autograd node, forward and backward.
This module is such an engine with nothing else: uniform ε on the convolutions and dense
layers of the benchmark's CNNs, and only what those nets need, written for speed.

* ``conv2d`` / ``linear``: ``z = W a + b``; backward ``s_in = Wᵀ (s · |z| / (|z| + ε))``,
  the ε rule in signal form (relevance ``R = a · s``, Montavon et al. 2019, eq. 5).
* ``batch_norm`` right after a convolution: merged into it (``z' = scale · z + shift``);
  the ratio is taken on ``z'`` and the signal scaled by ``scale`` before ``Wᵀ``.
* SiLU (identity rule): ``s_in = s · z / a`` (0 where ``a = 0``).
* ``x · sigmoid(·)`` (squeeze-and-excitation): the gate takes no relevance, the signal
  takes it all (Arras et al. 2017): the gate is held constant.
* a ReLU right after a layer: merged into it (the saved ``z`` is ``max(0, z)``, whose ratio
  ``z / (z + ε)`` is also the ReLU's mask); ReLUs and residual sums (``out += x``) written in
  place run out of place, so the saved ``z`` stays intact.
* other ReLUs, max pooling, average pooling, sums, flatten: their gradient is the LRP-0/ε
  signal (ReLU: the same mask; pooling and sums: linear).

It has no checks at all (an unknown nonlinear op is silently differentiated), records nothing
and protects nothing from in-place writes, so it is a floor, not an alternative: relprop
computes the same relevance (``tests/test_bench_floor.py``) with its checks and records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["explain_epsilon"]

_CONV_BACKWARD = torch.ops.aten.convolution_backward.default
_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
            "eps")
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
#: ReLUs, in place or not (merged into the layer before them, out of place)
_RELUS = frozenset({"relu", "relu_"})
#: in-place sums the ResNets write into a layer's output, run out of place
_IN_PLACE: dict[str, Callable[..., Tensor]] = {"__iadd__": torch.add, "add_": torch.add}
_CONV_DEFAULTS: dict[str, Any] = {"bias": None, "stride": 1, "padding": 0, "dilation": 1,
                                  "groups": 1}


class _Layer(torch.autograd.Function):
    """``z = compute()`` (a convolution or dense layer, possibly with a BatchNorm and a ReLU
    after it) of input ``a``; backward: the ε rule through ``weight`` (and the BatchNorm's
    ``scale``). Behind a merged ReLU ``z ≥ 0``, and ``z / (z + ε)`` is also the ReLU's mask."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, weight: Tensor, scale: Tensor | None,
                conv: tuple[Any, ...] | None, epsilon: float, clipped: bool,
                compute: Callable[[], Tensor]) -> Tensor:
        z = compute()
        ctx.save_for_backward(a, z)
        ctx.weight, ctx.scale, ctx.conv = weight, scale, conv
        ctx.epsilon, ctx.clipped = epsilon, clipped
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, z = ctx.saved_tensors
        if ctx.clipped:  # three elementwise passes
            signal = torch.mul(grad, z).div_(z + ctx.epsilon)
        else:  # four
            magnitude = z.abs()
            signal = torch.mul(grad, magnitude).div_(magnitude.add_(ctx.epsilon))
        if ctx.scale is not None:
            signal.mul_(ctx.scale)
        nothing = (None,) * 6
        if ctx.conv is None:
            return signal @ ctx.weight, *nothing
        stride, padding, dilation, groups = ctx.conv
        zeros = [0] * (a.dim() - 2)
        grad_a = _CONV_BACKWARD(signal, a, ctx.weight, None, stride, padding, dilation, False,
                                zeros, groups, [True, False, False])[0]
        return grad_a, *nothing


class _Identity(torch.autograd.Function):
    """``z = fn(a)`` under the identity rule: ``s_in = s · z / a``."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        z = fn(a)
        ctx.save_for_backward(a, z)
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, z = ctx.saved_tensors
        return torch.div(z, a).mul_(grad).nan_to_num_(0.0, 0.0, 0.0), None


class _Epsilon(TorchFunctionMode):
    """Routes ``conv2d``, ``linear``, ``batch_norm``, ``silu``, ``sigmoid`` and the gate's
    product to the functions above; every other op runs as it is."""

    def __init__(self, epsilon: float) -> None:
        super().__init__()
        self.epsilon = epsilon
        #: id(layer output) -> (output, input, weight, BatchNorm scale, conv options, kind)
        self.layers: dict[int, tuple[Tensor, Tensor, Tensor, Tensor | None,
                                     tuple[Any, ...] | None, str]] = {}
        self.gates: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d or func is torch.conv2d:
            return self._conv(func, args, kwargs)
        if func is F.batch_norm:
            return self._batch_norm(func, args, kwargs)
        if func is F.linear:
            a, weight = args[0], args[1].detach()
            bias = args[2].detach() if len(args) > 2 and args[2] is not None else None
            out = _Layer.apply(a, weight, None, None, self.epsilon, False,
                               lambda: F.linear(a.detach(), weight, bias))
            self.layers[id(out)] = (out, a, weight, None, None, "linear")
            return out
        if func is F.silu:
            return _Identity.apply(args[0], F.silu)
        if func is torch.sigmoid:
            gate = torch.sigmoid(*args)
            self.gates.add(id(gate))
            return gate
        name = getattr(func, "__name__", "")
        if name in ("mul", "__mul__") and len(args) == 2 and id(args[1]) in self.gates:
            return args[0] * args[1].detach()
        if name in _RELUS:
            return self._relu(args[0])
        if name in _IN_PLACE:  # the saved z stays intact; ``out += x`` rebinds ``out``
            return _IN_PLACE[name](*args)
        return func(*args, **kwargs)

    def _relu(self, x: Tensor) -> Tensor:
        """A ReLU: merged into the layer that made ``x``, else the plain (out-of-place) op."""
        layer = self.layers.pop(id(x), None)
        if layer is None or layer[0] is not x:
            return torch.relu(x)
        _, a, weight, scale, conv, _ = layer
        value = x.detach()
        out: Tensor = _Layer.apply(a, weight, scale, conv, self.epsilon, True,
                                   lambda: torch.relu(value))
        return out

    def _conv(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        bound = {**_CONV_DEFAULTS, **dict(zip(_CONV_ARGS, args)), **kwargs}
        a, weight = bound["input"], bound["weight"].detach()
        bias = None if bound["bias"] is None else bound["bias"].detach()
        nd = a.dim() - 2
        conv = tuple(_expand(bound[k], nd) for k in ("stride", "padding", "dilation")) \
            + (bound["groups"],)
        value = a.detach()
        out: Tensor = _Layer.apply(a, weight, None, conv, self.epsilon, False,
                                   lambda: func(value, weight, bias, *conv))
        self.layers[id(out)] = (out, a, weight, None, conv, "conv")
        return out

    def _batch_norm(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        bound = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5,
                 **dict(zip(_BN_ARGS, args)), **kwargs}
        x = bound["input"]
        layer = self.layers.pop(id(x), None)
        if layer is None or layer[0] is not x or layer[5] != "conv":
            raise NotImplementedError("the floor engine merges a BatchNorm only into the "
                                      "convolution right before it")
        _, a, weight, _, options, _ = layer
        scale = (bound["running_var"] + bound["eps"]).rsqrt()
        if bound["weight"] is not None:
            scale = scale * bound["weight"].detach()
        bias = None if bound["bias"] is None else bound["bias"].detach()
        value = x.detach()

        def compute() -> Tensor:
            return func(value, bound["running_mean"], bound["running_var"],
                        None if bound["weight"] is None else bound["weight"].detach(), bias,
                        False, 0.0, bound["eps"])
        view = scale.reshape(-1, *([1] * (x.dim() - 2)))
        out: Tensor = _Layer.apply(a, weight, view, options, self.epsilon, False, compute)
        self.layers[id(out)] = (out, a, weight, view, options, "norm")
        return out


def _expand(value: int | tuple[int, ...] | str, nd: int) -> tuple[int, ...]:
    if isinstance(value, str):
        raise NotImplementedError(f"the floor engine takes explicit paddings, not {value!r}")
    return (value,) * nd if isinstance(value, int) else tuple(value)


def explain_epsilon(model: nn.Module, x: Tensor, target: Tensor,
                    epsilon: float = 1e-6) -> Tensor:
    """Relevance of ``model(x)[i, target[i]]`` under uniform ε, by the floor engine."""
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad(), _Epsilon(epsilon):
        out = model(leaf)
    seed = torch.zeros_like(out)
    seed[torch.arange(len(x), device=x.device), target] = 1.0
    (signal,) = torch.autograd.grad(out, leaf, seed)
    return signal * x.detach()
