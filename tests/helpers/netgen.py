"""Random small float64 networks from a grammar, for property-based tests of ``relprop.explain``.

A net is a :class:`FuzzNet`: a list of blocks (each an ``nn.Module`` with its own ``forward``)
and a linear head. The grammar draws each block from what fits the current activation shape
(``1d``: ``(B, C, L)``, ``2d``: ``(B, C, H, W)``, ``flat``: ``(B, F)``):

* layers: ``Conv1d``/``Conv2d`` with every padding mode (zeros, reflect, replicate, circular),
  stride 1 or 2, with or without bias; ``F.conv1d``/``F.conv2d`` with parameters; ``Linear``;
  ``F.linear`` with parameters; ``BatchNorm`` in eval mode with random running statistics;
* nonlinearities: ``ReLU``, ``LeakyReLU``, ``ReLU6``, ``F.relu``, ``ReLU(inplace=True)``,
  ``SiLU``, ``GELU``, ``torch.tanh``, ``torch.sigmoid``;
* pooling: ``MaxPool`` (module and ``F.max_pool1d/2d``), ``AvgPool``, ``AdaptiveAvgPool``;
* graph structure: residual ``x + y`` / ``torch.add``, ``torch.cat`` of two branches or of
  the input and a branch, a module used twice, squeeze-excitation (sigmoid gate × signal),
  ``chunk``, slicing (channels or a spatial crop), ``permute``/``transpose``, ``flatten`` /
  ``reshape`` / ``view`` / ``nn.Flatten``;
* ops with no LRP rule (``exp``, ``abs``, ``sort``, ``logsumexp``, ``cumprod``, a custom
  ``torch.autograd.Function``), which ``relprop.explain`` must refuse by name.

The cases the engine is still being fixed for are separate options, off unless named in
``new`` (see :data:`NEW_OPTIONS`): ``"inplace"`` (``h.add_(x)``, ``h.mul_(g)``, ``h.relu_()``
on its own line, ``h[:, :k].relu_()``, ``h[:, :1].tanh_()``), ``"clamp"`` (``x.clamp(min=0)``
as a ReLU), ``"matmul"`` (``x @ W.t() + b`` with parameters), ``"channels_last"`` (model and
input in ``channels_last``, and a block that converts an activation) and ``"permuted_pool"``
(adaptive average pooling of a permuted, non-contiguous activation).

Each :class:`GeneratedNet` records which properties must hold: ``bias_free`` (no bias, no
BatchNorm shift: conservation), ``relu_only`` (only ReLU-like nonlinearities, linear ops and
max pooling: LRP-0 equals Gradient × Input) and ``unsupported`` (module path and op of each
op with no rule: ``UnsupportedOperationError`` naming them).

Use :func:`nets` as a hypothesis strategy (structure shrinks), :func:`build` to rebuild the net
of one integer seed, and ``python -m tests.helpers.netgen SEED`` to print one.
"""

from __future__ import annotations

import copy
import math
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn

T = TypeVar("T")

#: grammar options for the cases relprop's engine is being fixed for (off by default)
NEW_OPTIONS = ("inplace", "clamp", "matmul", "channels_last", "permuted_pool")
#: the ops with no LRP rule the grammar can insert
UNSUPPORTED_OPS = ("exp", "abs", "sort", "logsumexp", "cumprod", "custom")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# -- choices: one interface over hypothesis draws and a seeded random.Random -----------------
class Chooser(Protocol):
    def integer(self, low: int, high: int) -> int: ...
    def choice(self, options: Sequence[T]) -> T: ...
    def boolean(self) -> bool: ...


class RandomChooser:
    """Choices from ``random.Random(seed)`` (for :func:`build`)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def boolean(self) -> bool:
        return self.rng.random() < 0.5


class DrawChooser:
    """Choices drawn by hypothesis (for :func:`nets`): failing nets shrink structurally."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        return int(self.draw(st.integers(low, high)))

    def choice(self, options: Sequence[T]) -> T:
        return options[int(self.draw(st.integers(0, len(options) - 1)))]

    def boolean(self) -> bool:
        return bool(self.draw(st.booleans()))


# -- blocks ------------------------------------------------------------------------------------
class Fn(nn.Module):
    """A functional nonlinearity or reshaping op, by name."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def extra_repr(self) -> str:
        return self.name

    def forward(self, x: Tensor) -> Tensor:
        n = self.name
        if n == "relu":
            return F.relu(x)
        if n == "tanh":
            return torch.tanh(x)
        if n == "sigmoid":
            return torch.sigmoid(x)
        if n == "silu":
            return F.silu(x)
        if n == "clamp":
            return x.clamp(min=0)
        if n == "max_pool1d":
            return F.max_pool1d(x, 2)
        if n == "max_pool2d":
            return F.max_pool2d(x, 2)
        if n == "flatten":
            return x.flatten(1)
        if n == "torch_flatten":
            return torch.flatten(x, 1)
        if n == "reshape":
            return x.reshape(x.shape[0], -1)
        if n == "view":
            return x.view(x.size(0), -1)
        if n == "flatten_spatial":
            return x.flatten(2)
        if n == "swap_hw":
            return x.permute(0, 1, 3, 2)
        if n == "swap_hw_contiguous":
            return x.transpose(2, 3).contiguous()
        if n == "transpose_cl":
            return x.transpose(1, 2)
        if n == "channels_last":
            return x.contiguous(memory_format=torch.channels_last)
        if n == "identity":
            return x
        raise ValueError(n)


class FConv(nn.Module):
    """``F.conv1d``/``F.conv2d`` with parameters of its own (zero padding)."""

    def __init__(self, dim: int, cin: int, cout: int, k: int, stride: int, pad: int,
                 bias: bool) -> None:
        super().__init__()
        self.dim, self.stride, self.pad = dim, stride, pad
        self.weight = nn.Parameter(torch.empty(cout, cin, *([k] * dim), dtype=torch.float64))
        self.bias = nn.Parameter(torch.empty(cout, dtype=torch.float64)) if bias else None

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, weight={tuple(self.weight.shape)}, stride={self.stride}, "
                f"pad={self.pad}, bias={self.bias is not None}")

    def forward(self, x: Tensor) -> Tensor:
        conv = F.conv1d if self.dim == 1 else F.conv2d
        return conv(x, self.weight, self.bias, stride=self.stride, padding=self.pad)


class FLinear(nn.Module):
    """``F.linear`` (or, with ``matmul``, ``x @ W.t() + b``) with parameters of its own."""

    def __init__(self, fin: int, fout: int, bias: bool, matmul: bool = False) -> None:
        super().__init__()
        self.matmul = matmul
        self.weight = nn.Parameter(torch.empty(fout, fin, dtype=torch.float64))
        self.bias = nn.Parameter(torch.empty(fout, dtype=torch.float64)) if bias else None

    def extra_repr(self) -> str:
        return (f"{tuple(self.weight.shape)}, bias={self.bias is not None}, "
                f"matmul={self.matmul}")

    def forward(self, x: Tensor) -> Tensor:
        if not self.matmul:
            return F.linear(x, self.weight, self.bias)
        out = x @ self.weight.t()
        return out + self.bias if self.bias is not None else out


class Residual(nn.Module):
    """``x + body(x)``, ``torch.add(body(x), x)`` or (``inplace``) ``h = body(x); h.add_(x)``."""

    def __init__(self, body: nn.Module, how: str) -> None:
        super().__init__()
        self.body, self.how = body, how

    def extra_repr(self) -> str:
        return self.how

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "plus":
            return x + self.body(x)
        if self.how == "torch_add":
            return torch.add(self.body(x), x)
        h = self.body(x)
        h.add_(x)  # "iadd"
        return h


class Reuse(nn.Module):
    """The same layer twice: ``layer(act(layer(x)))``."""

    def __init__(self, layer: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.layer, self.act = layer, act

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(self.act(self.layer(x)))


class Cat(nn.Module):
    """``torch.cat([a(x), b(x)], 1)``, or ``torch.cat([x, a(x)], 1)`` when ``b`` is None."""

    def __init__(self, a: nn.Module, b: nn.Module | None) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: Tensor) -> Tensor:
        first = x if self.b is None else self.b(x)
        return torch.cat([first, self.a(x)], dim=1)


class SqueezeExcite(nn.Module):
    """``x * sigmoid(fc2(relu(fc1(mean(x)))))``; with ``inplace``: ``h = conv(x); h.mul_(g)``."""

    def __init__(self, channels: int, hidden: int, bias: bool, conv: nn.Module | None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, channels, bias=bias)
        self.conv = conv
        self.out_of_place = False  # ``h * g`` instead of ``h.mul_(g)``

    def gate(self, x: Tensor) -> Tensor:
        s = x.mean(dim=tuple(range(2, x.dim())))
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return g.reshape(*g.shape, *([1] * (x.dim() - 2)))

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return x * self.gate(x)
        h = self.conv(x)
        if self.out_of_place:
            return h * self.gate(h)
        h.mul_(self.gate(h))
        return h


class Chunk(nn.Module):
    """``a, b = x.chunk(2, 1)``, then ``a + b`` or ``torch.cat([b, a], 1)``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def extra_repr(self) -> str:
        return self.how

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return a + b if self.how == "add" else torch.cat([b, a], dim=1)


class Slice(nn.Module):
    """``x[:, :k]`` (channels or features) or ``x[..., 1:]`` (a spatial crop)."""

    def __init__(self, keep: int | None) -> None:
        super().__init__()
        self.keep = keep

    def extra_repr(self) -> str:
        return f"[:, :{self.keep}]" if self.keep is not None else "[..., 1:]"

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :self.keep] if self.keep is not None else x[..., 1:]


class InPlace(nn.Module):
    """A layer, then an in-place statement whose effect lives only in the mutation:
    ``h.relu_()``, ``h[:, :k].relu_()`` or ``h[:, :1].tanh_()``."""

    def __init__(self, layer: nn.Module, how: str, keep: int) -> None:
        super().__init__()
        self.layer, self.how, self.keep = layer, how, keep
        self.out_of_place = False  # the same function without the in-place statement

    def extra_repr(self) -> str:
        return f"{self.how}, keep={self.keep}, out_of_place={self.out_of_place}"

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer(x)
        if self.out_of_place:
            if self.how == "relu_":
                return torch.relu(h)
            k = self.keep if self.how == "slice_relu_" else 1
            head = torch.relu(h[:, :k]) if self.how == "slice_relu_" else torch.tanh(h[:, :k])
            return torch.cat([head, h[:, k:]], dim=1)
        if self.how == "relu_":
            h.relu_()
        elif self.how == "slice_relu_":
            h[:, :self.keep].relu_()
        else:
            h[:, :1].tanh_()
        return h


class PermutedPool(nn.Module):
    """Adaptive average pooling of a permuted (non-contiguous) activation."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.dim, self.size = dim, size

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"

    def forward(self, x: Tensor) -> Tensor:
        if self.dim == 2:
            return F.adaptive_avg_pool2d(x.permute(0, 1, 3, 2), self.size)
        return F.adaptive_avg_pool1d(x.transpose(1, 2), self.size)


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad * 2


class Unsupported(nn.Module):
    """An op with no LRP rule on the relevance path (``op`` names it as relprop reports it)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def extra_repr(self) -> str:
        return self.op

    def forward(self, x: Tensor) -> Tensor:
        if self.op == "exp":
            return x + torch.exp(torch.tanh(x))  # bounded: chained exps must not overflow
        if self.op == "abs":
            return x.abs()
        if self.op == "sort":
            return torch.sort(x, dim=1).values
        if self.op == "logsumexp":
            return x - torch.logsumexp(x, dim=1, keepdim=True)
        if self.op == "cumprod":  # products of activations along a dimension
            return torch.cumprod(torch.tanh(x), dim=1)
        if self.op == "custom":
            return _Double.apply(x)
        raise ValueError(self.op)


class FuzzNet(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


# -- the generated net and its properties ------------------------------------------------------
@dataclass
class GeneratedNet:
    model: nn.Module
    x: Tensor
    target: Tensor
    bias_free: bool
    relu_only: bool
    #: a ReLU-like op runs before the first layer, whose input then has exact zeros: rules that
    #: give such inputs relevance (z^B at the first layer) cannot conserve
    zeros_before_first_layer: bool
    #: (module path, op name) of every op with no rule
    unsupported_ops: list[tuple[str, str]]
    #: grammar options used, in order (for counts and failure reports)
    features: list[str]
    new: frozenset[str]
    seed: int | None = None

    @property
    def unsupported(self) -> bool:
        return bool(self.unsupported_ops)

    def describe(self) -> str:
        props = (f"bias_free={self.bias_free} relu_only={self.relu_only} "
                 f"zeros_before_first_layer={self.zeros_before_first_layer} "
                 f"unsupported={self.unsupported_ops} x={tuple(self.x.shape)} "
                 f"channels_last={self.x.dim() == 4 and not self.x.is_contiguous()}")
        seed = f"build({self.seed}, new={sorted(self.new)})\n" if self.seed is not None else ""
        return f"{seed}{props}\nfeatures={self.features}\n{self.model}"

    def __repr__(self) -> str:
        return self.describe()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(self.describe())


@dataclass
class _State:
    """The activation shape and what the blocks so far imply."""

    kind: str  # "1d", "2d" or "flat"
    channels: int
    spatial: list[int]
    fresh: bool = False  # the last op made a new tensor that no backward needs (in-place ok)
    biasless: bool = False
    bias_free: bool = True
    relu_only: bool = True
    permuted: bool = False  # the activation may be a permuted (non-contiguous) view
    layers_seen: bool = False
    zeros_before_first_layer: bool = False  # a ReLU-like op ran before the first layer
    features: list[str] = field(default_factory=list)


class _Grammar:
    def __init__(self, ch: Chooser, new: frozenset[str], unsupported: bool) -> None:
        self.ch, self.new, self.allow_unsupported = ch, new, unsupported

    # - helpers -
    def bias(self, s: _State) -> bool:
        if s.biasless:
            return False
        b = self.ch.boolean()
        s.bias_free &= not b
        return b

    def conv(self, s: _State, cout: int | None = None, same: bool = False) -> nn.Module:
        """A convolution; ``same`` keeps the spatial size (k = 1, or k = 3 with padding 1)."""
        ch, dim = self.ch, 1 if s.kind == "1d" else 2
        cout = ch.integer(1, 4) if cout is None else cout
        smallest = min(s.spatial)
        if same:
            k = ch.choice((1, 3)) if smallest >= 2 else 1
            stride, pad = 1, (k - 1) // 2
        else:
            pad = ch.integer(0, min(1, smallest - 1))
            k = ch.integer(1, min(3, smallest + 2 * pad))
            stride = ch.choice((1, 2)) if smallest >= 6 else 1
        bias = self.bias(s)
        functional = ch.integer(0, 4) == 0
        if functional:
            layer: nn.Module = FConv(dim, s.channels, cout, k, stride, pad, bias)
            s.features.append(f"F.conv{dim}d")
        else:
            mode = ch.choice(PADDING_MODES) if pad else "zeros"
            cls = nn.Conv1d if dim == 1 else nn.Conv2d
            layer = cls(s.channels, cout, k, stride=stride, padding=pad, bias=bias,
                        padding_mode=mode)  # type: ignore[arg-type]
            s.features.append(f"conv{dim}d:{mode}")
        s.channels = cout
        s.spatial = [(n + 2 * pad - k) // stride + 1 for n in s.spatial]
        s.fresh, s.permuted, s.layers_seen = True, False, True
        return layer

    def linear(self, s: _State, fout: int | None = None) -> nn.Module:
        fout = self.ch.integer(2, 8) if fout is None else fout
        bias = self.bias(s)
        how = self.ch.choice(("module", "module", "functional", "matmul")
                             if "matmul" in self.new else ("module", "module", "functional"))
        layer: nn.Module = (nn.Linear(s.channels, fout, bias=bias) if how == "module"
                            else FLinear(s.channels, fout, bias, matmul=how == "matmul"))
        s.features.append({"module": "linear", "functional": "F.linear",
                           "matmul": "matmul_linear"}[how])
        s.channels, s.fresh, s.permuted, s.layers_seen = fout, True, False, True
        return layer

    def activation(self, s: _State) -> nn.Module:
        options = ["relu", "leaky_relu", "relu6", "F.relu", "silu", "gelu", "tanh", "sigmoid",
                   "F.silu"]
        if s.fresh:
            options.append("relu_inplace")
        if "clamp" in self.new:
            options.append("clamp")
        name = self.ch.choice(options)
        s.features.append(name)
        if name not in ("relu", "leaky_relu", "F.relu", "relu_inplace", "clamp"):
            s.relu_only = False
        if name in ("relu", "relu6", "F.relu", "relu_inplace", "clamp"):
            s.zeros_before_first_layer |= not s.layers_seen
        if name == "sigmoid":
            # sigmoid(0) = 1/2 is an offset like a bias: relevance of an output whose input is
            # exactly 0 (after a ReLU, a zero-padded border) cannot be carried back
            s.bias_free = False
        s.fresh = False
        return {
            "relu": lambda: nn.ReLU(), "leaky_relu": lambda: nn.LeakyReLU(0.1),
            "relu6": lambda: nn.ReLU6(), "F.relu": lambda: Fn("relu"),
            "silu": lambda: nn.SiLU(), "gelu": lambda: nn.GELU(), "tanh": lambda: Fn("tanh"),
            "sigmoid": lambda: Fn("sigmoid"), "F.silu": lambda: Fn("silu"),
            "relu_inplace": lambda: nn.ReLU(inplace=True), "clamp": lambda: Fn("clamp"),
        }[name]()

    def batchnorm(self, s: _State) -> nn.Module:
        bn = nn.BatchNorm2d(s.channels) if s.kind == "2d" else nn.BatchNorm1d(s.channels)
        bn.shifted = not s.biasless and self.ch.boolean()  # type: ignore[assignment]
        s.bias_free &= not bn.shifted
        s.features.append("batchnorm")
        s.fresh = True
        return bn

    # - blocks -
    def block(self, s: _State) -> nn.Module:
        ch = self.ch
        spatial = s.kind != "flat"
        smallest = min(s.spatial) if spatial else 0
        options = ["layer", "layer", "act", "act", "bn", "residual", "reuse", "cat", "slice"]
        if spatial:
            options += ["se", "permute"]
            if smallest >= 2:
                options += ["pool", "pool"]
        if s.channels >= 2 and s.channels % 2 == 0:
            options.append("chunk")
        if s.kind == "2d":
            options.append("flatten_spatial")
        if "inplace" in self.new:
            options += ["inplace", "inplace"]
        if "channels_last" in self.new and s.kind == "2d":
            options.append("to_channels_last")
        if "permuted_pool" in self.new and spatial:
            options.append("permuted_pool")
        if self.allow_unsupported and ch.integer(0, 9) == 0:
            return self.unsupported(s)
        what = ch.choice(options)
        if what == "layer":
            return self.conv(s) if spatial else self.linear(s)
        if what == "act":
            return self.activation(s)
        if what == "bn":
            return self.batchnorm(s)
        if what == "pool":
            return self.pool(s)
        if what == "residual":
            return self.residual(s)
        if what == "reuse":
            same = self.conv(s, s.channels, same=True) if spatial else self.linear(s, s.channels)
            s.features.append("reuse")
            return Reuse(same, self.activation(s))
        if what == "cat":
            return self.cat(s)
        if what == "slice":
            return self.slice(s)
        if what == "se":
            return self.squeeze_excite(s, inplace=False)
        if what == "chunk":
            how = ch.choice(("add", "swap"))
            s.features.append(f"chunk:{how}")
            if how == "add":
                s.channels //= 2
            s.fresh = how == "add"
            return Chunk(how)
        if what == "permute":
            return self.permute(s)
        if what == "flatten_spatial":
            s.features.append("flatten_spatial")
            s.kind, s.spatial, s.fresh = "1d", [math.prod(s.spatial)], False
            return Fn("flatten_spatial")
        if what == "inplace":
            return self.inplace(s)
        if what == "to_channels_last":
            s.features.append("to_channels_last")
            s.fresh, s.permuted = False, True
            return Fn("channels_last")
        if what == "permuted_pool":
            return self.permuted_pool(s)
        raise AssertionError(what)

    def pool(self, s: _State) -> nn.Module:
        dim = 1 if s.kind == "1d" else 2
        hows: tuple[str, ...] = ("max", "F.max", "avg", "adaptive")
        if s.permuted and "permuted_pool" not in self.new:
            hows = hows[:3]  # adaptive pooling of a permuted activation: a case being fixed
        how = self.ch.choice(hows)
        s.features.append(f"{how}_pool{dim}d")
        s.fresh = True
        if how == "adaptive":
            size = self.ch.integer(1, min(s.spatial))
            s.spatial = [size] * len(s.spatial)
            return nn.AdaptiveAvgPool1d(size) if dim == 1 else nn.AdaptiveAvgPool2d(size)
        s.spatial = [n // 2 for n in s.spatial]
        if how == "F.max":
            return Fn(f"max_pool{dim}d")
        cls = {("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d, ("avg", 1): nn.AvgPool1d,
               ("avg", 2): nn.AvgPool2d}[how, dim]
        return cls(2)

    def body(self, s: _State, may_end_in_activation: bool = True) -> nn.Module:
        """A shape-preserving branch: a layer, maybe BatchNorm, maybe an activation."""
        spatial, permuted = s.kind != "flat", s.permuted
        parts = [self.conv(s, s.channels, same=True) if spatial else self.linear(s, s.channels)]
        if self.ch.boolean():
            parts.append(self.batchnorm(s))
        if may_end_in_activation and self.ch.boolean():
            parts.append(self.activation(s))
        s.permuted = permuted  # the branch is added to its (maybe permuted) input
        return parts[0] if len(parts) == 1 else nn.Sequential(*parts)

    def residual(self, s: _State) -> nn.Module:
        hows = ("plus", "torch_add", "iadd") if "inplace" in self.new else ("plus", "torch_add")
        how = self.ch.choice(hows)
        # ``h.add_(x)`` needs an ``h`` that no backward keeps (a layer's or BatchNorm's output)
        body = self.body(s, may_end_in_activation=how != "iadd")
        s.features.append(f"residual:{how}")
        s.fresh = True
        return Residual(body, how)

    def cat(self, s: _State) -> nn.Module:
        spatial, channels, permuted = s.kind != "flat", s.channels, s.permuted
        dense = self.ch.boolean()
        widths = []
        branches = []
        for _ in range(1 if dense else 2):
            s.channels = channels
            cout = self.ch.integer(1, 3)
            branches.append(self.conv(s, cout, same=True) if spatial else self.linear(s, cout))
            widths.append(cout)
        s.channels = sum(widths) + (channels if dense else 0)
        s.features.append("cat:dense" if dense else "cat:branches")
        s.permuted = permuted and dense
        s.fresh = True
        return Cat(branches[0], None if dense else branches[1])

    def slice(self, s: _State) -> nn.Module:
        spatial = s.kind != "flat"
        s.fresh = False
        if spatial and min(s.spatial) >= 3 and self.ch.boolean():
            s.spatial[-1] -= 1
            s.features.append("slice:spatial")
            return Slice(None)
        if s.channels < 2:
            s.features.append("slice:all")
            return Slice(s.channels)
        s.channels = self.ch.integer(1, s.channels - 1)
        s.features.append("slice:channels")
        return Slice(s.channels)

    def squeeze_excite(self, s: _State, inplace: bool) -> nn.Module:
        conv = self.conv(s, s.channels, same=True) if inplace else None
        hidden = self.ch.integer(1, 3)
        bias = self.bias(s)
        s.relu_only = False
        s.features.append("se:mul_" if inplace else "se")
        s.fresh = True
        return SqueezeExcite(s.channels, hidden, bias, conv)

    def permute(self, s: _State) -> nn.Module:
        s.fresh, s.permuted = False, True
        if s.kind == "1d":
            s.features.append("transpose_cl")
            s.channels, s.spatial = s.spatial[0], [s.channels]
            return Fn("transpose_cl")
        how = self.ch.choice(("swap_hw", "swap_hw_contiguous"))
        s.features.append(how)
        s.spatial = s.spatial[::-1]
        return Fn(how)

    def inplace(self, s: _State) -> nn.Module:
        how = self.ch.choice(("iadd", "mul_", "relu_", "slice_relu_", "slice_tanh_"))
        if how == "iadd":
            body = self.body(s, may_end_in_activation=False)
            s.features.append("residual:iadd")
            s.fresh = True
            return Residual(body, "iadd")
        if how == "mul_":
            if s.kind == "flat":
                how = "relu_"
            else:
                return self.squeeze_excite(s, inplace=True)
        layer = (self.conv(s, s.channels, same=True) if s.kind != "flat"
                 else self.linear(s, s.channels))
        keep = self.ch.integer(1, s.channels)
        s.features.append(how)
        if how == "slice_tanh_":
            s.relu_only = False
        s.fresh = False
        return InPlace(layer, how, keep)

    def permuted_pool(self, s: _State) -> nn.Module:
        dim = 1 if s.kind == "1d" else 2
        if dim == 1:
            s.channels, s.spatial = s.spatial[0], [s.channels]
        size = self.ch.integer(1, min(s.spatial))
        s.spatial = [size] * len(s.spatial)
        s.features.append(f"permuted_adaptive_pool{dim}d")
        s.fresh = True
        return PermutedPool(dim, size)

    def unsupported(self, s: _State) -> nn.Module:
        op = self.ch.choice(UNSUPPORTED_OPS)
        s.features.append(f"unsupported:{op}")
        s.fresh = False
        if op == "group_norm":
            groups = self.ch.choice([g for g in (1, 2) if s.channels % g == 0])
            gn = nn.GroupNorm(groups, s.channels)
            gn.op = "group_norm"  # type: ignore[assignment]
            return gn
        return Unsupported(op)

    def head(self, s: _State) -> nn.Module:
        blocks: list[nn.Module] = []
        if s.kind != "flat":
            if self.ch.boolean() and (not s.permuted or "permuted_pool" in self.new):
                pool = self.ch.choice(("adaptive", "mean"))
                if pool == "adaptive":
                    blocks.append(nn.AdaptiveAvgPool1d(1) if s.kind == "1d"
                                  else nn.AdaptiveAvgPool2d(1))
                    s.spatial = [1] * len(s.spatial)
                    s.features.append("head:adaptive_pool")
            flat = ["flatten", "torch_flatten", "reshape", "nn.Flatten"]
            strided = ("swap_hw", "transpose", "slice:spatial", "channels_last", "permuted")
            if not any(k in f for f in s.features for k in strided):
                flat.append("view")  # only where the activation is surely contiguous
            how = self.ch.choice(flat)
            s.features.append(f"head:{how}")
            blocks.append(nn.Flatten() if how == "nn.Flatten" else Fn(how))
            s.channels, s.spatial, s.kind = s.channels * math.prod(s.spatial), [], "flat"
        blocks.append(self.linear(s, self.ch.integer(2, 4)))
        return nn.Sequential(*blocks)


def _initialise(model: nn.Module, seed: int) -> None:
    """Random weights and BatchNorm statistics from ``seed`` (the global RNG is untouched)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                assert module.bias is not None and module.running_mean is not None
                assert module.running_var is not None
                c = module.num_features
                module.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64) + 0.5)
                module.running_var.copy_(
                    torch.rand(c, generator=g, dtype=torch.float64) * 1.5 + 0.5)
                if getattr(module, "shifted", False):
                    module.running_mean.copy_(
                        torch.randn(c, generator=g, dtype=torch.float64) * 0.5)
                    module.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.5)
                else:
                    module.running_mean.zero_()
                    module.bias.zero_()
                continue
            weight = getattr(module, "weight", None)
            if isinstance(weight, Tensor) and weight.dim() >= 2:
                fan_in = weight[0].numel()
                weight.copy_(torch.randn(weight.shape, generator=g, dtype=torch.float64)
                             * math.sqrt(2.0 / fan_in))
                bias = getattr(module, "bias", None)
                if isinstance(bias, Tensor):
                    bias.copy_(torch.randn(bias.shape, generator=g, dtype=torch.float64) * 0.3)
            elif isinstance(module, nn.GroupNorm):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g,
                                                dtype=torch.float64))


def generate(ch: Chooser, new: Iterable[str] = (), unsupported: bool = True,
             max_blocks: int = 5, seed: int | None = None) -> GeneratedNet:
    """Draw one net (structure, weights, batch and targets) with the choices of ``ch``."""
    new = frozenset(new)
    unknown = new - set(NEW_OPTIONS)
    if unknown:
        raise ValueError(f"unknown grammar options {sorted(unknown)}; known: {NEW_OPTIONS}")
    grammar = _Grammar(ch, new, unsupported)
    kind = ch.choice(("1d", "2d", "2d"))
    channels = ch.integer(1, 4)
    spatial = [ch.integer(6, 12)] if kind == "1d" else [ch.integer(6, 10), ch.integer(6, 10)]
    s = _State(kind, channels, list(spatial), biasless=ch.boolean())
    if "channels_last" in new and kind == "2d" and ch.boolean():
        s.features.append("model:channels_last")
    input_shape = [channels, *spatial]
    blocks = [grammar.block(s) for _ in range(ch.integer(1, max_blocks))]
    head = grammar.head(s)
    model = FuzzNet(blocks, head).double().eval()
    weight_seed = ch.integer(0, 2**31 - 1)
    _initialise(model, weight_seed)
    for p in model.parameters():
        p.requires_grad_(True)
    batch = ch.integer(2, 3)
    g = torch.Generator().manual_seed(weight_seed + 1)
    x = torch.randn(batch, *input_shape, generator=g, dtype=torch.float64).clamp(-2.5, 2.5)
    n_out = head[-1].weight.shape[0]  # type: ignore[index]
    target = torch.randint(0, n_out, (batch,), generator=g)
    if "model:channels_last" in s.features:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    ops = [(path, str(m.op)) for path, m in model.named_modules() if hasattr(m, "op")]
    return GeneratedNet(model, x, target, s.bias_free, s.relu_only, s.zeros_before_first_layer,
                        ops, s.features, new, seed)


def respell(net: GeneratedNet) -> GeneratedNet | None:
    """The same function with canonical spellings (``F.linear`` for ``x @ W.t() + b``,
    ``torch.relu`` for ``clamp(min=0)`` and ``ReLU(inplace=True)``, out-of-place ops for
    in-place statements, contiguous memory for ``channels_last``), or None if there is
    nothing to respell. Its explanation must be the same under every composite."""
    twin = copy.deepcopy(net.model)
    x = net.x
    changed = []
    for module in twin.modules():
        if isinstance(module, FLinear) and module.matmul:
            module.matmul = False
            changed.append("matmul")
        elif isinstance(module, Fn) and module.name in ("clamp", "channels_last"):
            changed.append(module.name)
            module.name = "relu" if module.name == "clamp" else "identity"
        elif isinstance(module, nn.ReLU) and module.inplace:
            module.inplace = False
            changed.append("relu_inplace")
        elif isinstance(module, Residual) and module.how == "iadd":
            module.how = "torch_add"
            changed.append("iadd")
        elif isinstance(module, InPlace | SqueezeExcite) and (
                isinstance(module, InPlace) or module.conv is not None):
            module.out_of_place = True
            changed.append("in_place")
    if "model:channels_last" in net.features:
        twin = twin.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        x = x.contiguous()
        changed.append("model:channels_last")
    if not changed:
        return None
    return GeneratedNet(twin, x, net.target, net.bias_free, net.relu_only,
                        net.zeros_before_first_layer, net.unsupported_ops,
                        net.features + [f"respelled:{c}" for c in changed], net.new, net.seed)


def build(seed: int, new: Iterable[str] = (), unsupported: bool = True,
          max_blocks: int = 5) -> GeneratedNet:
    """The net of one integer seed (the same on every run): for reproducing a failure."""
    return generate(RandomChooser(seed), new, unsupported, max_blocks, seed=seed)


def nets(new: Iterable[str] = (), unsupported: bool = True,
         max_blocks: int = 5) -> st.SearchStrategy[GeneratedNet]:
    """A hypothesis strategy of generated nets; ``new`` switches on :data:`NEW_OPTIONS`."""
    new = frozenset(new)

    @st.composite
    def strategy(draw: Callable[[st.SearchStrategy[Any]], Any]) -> GeneratedNet:
        return generate(DrawChooser(draw), new, unsupported, max_blocks)

    return strategy()


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["0"]:
        print(build(int(arg), new=NEW_OPTIONS).describe())
