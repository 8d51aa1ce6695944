"""Handlers of the statistics family: normalisations and activations that models write with
elementary ops, and that no module name gives away.

* **A scale computed from a statistic of the stream, held constant** (a normalisation written
  op by op): ``y = x ⊙ s(x)`` or ``y = x / n(x)``, where ``s`` is computed from a *reduction*
  of second moments or norms of ``x`` — ``rsqrt(mean(x²) + ε)`` (nGPT/Dory's L2 norm,
  DeepSeek-V4's and HunYuan-V4's unweighted RMSNorm), ``c / max(‖x‖₂, ε)`` (ZAYA's q/k
  norm), ``1 / std(x)`` — through elementwise maths with constants (``+ ε``, ``sqrt``,
  ``rsqrt``, ``reciprocal``, ``clamp``, casts, scaling, a number divided by it). Such a call
  is one op of kind ``layer_norm`` (:class:`~relprop.rules.NormOp` ``"scaled"``, the
  multiplier ``s`` held at its value), so the composite's normalisation rule applies —
  AttnLRP's identity rule by default (Achtibat et al. 2024, §3.3.2: the normalising factor
  is held constant, which makes the op linear in ``x``): ``R_x = R_y``, exactly as for
  ``F.rms_norm``. The statistic's own ops then carry no relevance (they are off the path).
  The statistic must be of the tensor it scales (the same values, up to a cast) or of the
  input of the constant-weight layer that made it (``W x ⊙ s(x) = W (x ⊙ s(x))``:
  HunYuan-V4 normalises its hyper-connection logits that way); anything else is a product
  of two activations, as before. A LayerNorm written out, ``(x − μ(x)) ⊙ rsqrt(var(x) + ε)``
  (xLSTM's multi-head norm), is the same with the centring left to LRP-0 (it is linear):
  ``F.layer_norm``'s identity rule. Recognised by what the ops compute, not by names: the
  statistic is followed from its reduction (``mean``/``sum`` of a square, ``norm``,
  ``vector_norm``, ``var``, ``std``) through each op to the product.
* **The Gaussian CDF is a gate**: ``erf`` is an elementwise activation whose output is a
  gate, as ``sigmoid``'s is. GELU written by hand, ``x · ½(1 + erf(x/√2)) = x · Φ(x)``
  (Hendrycks & Gimpel 2016; ESM's ``gelu``), is then ``x`` times a gate computed from
  ``x`` alone, which takes all of the relevance (signal-take-all, Arras et al. 2017): the
  identity rule that :func:`torch.nn.functional.gelu` gets by default, ``R_x = R_y``.
* **A softmax written with ``logsumexp``**: ``exp(x − logsumexp(x, d, keepdim=True))``
  (Inkling's router) *is* ``softmax(x, d)``: one op of kind ``softmax`` on ``x`` (its value
  the model's own), so the composite's softmax rule applies, and the output counts as
  softmax weights (gates once a router selects them, as for ``F.softmax``).
* **A product with a shifted factor**: ``(a + c) · b`` with ``c`` a number and ``a``, ``b``
  activations (OpenAI's clamped SwiGLU, ``(up + 1) · glu``: gpt-oss, MiniMax-M3) is
  ``a · b + c · b``. The second term is linear in ``b`` (LRP-0 gives ``b`` all of its
  relevance); only ``a · b`` takes the product rule. Taken as written, the constant ``c``
  would absorb its share of the factor ``a + c`` like a bias, although ``c · b`` is
  relevance of ``b``. The output keeps the model's value (the two spellings differ by
  rounding, which a detached correction of ~1e-16 carries). Not where a factor is a gate
  (``x · ½(1 + erf(·))``: the gate takes no relevance either way).
* **A gate computed from a statistic is a constant**: ``σ(logsumexp(s) − b)``, the share of
  attention mass that an attention sink ``b`` leaves to the tokens (Granite's sliding-window
  attention: ``softmax(s) v ⊙ σ(LSE(s) − b)`` is softmax over ``[s, b]`` with a zero value
  for the sink). A gate takes no relevance (signal-take-all); computed from a statistic of
  the scores (their log-partition function, followed like the norms' statistics), it is
  held at its value, as a normalisation's statistic is, so its ops need no rule.
* **Activation modules** with scalar parameters or none (``…Activation`` classes such as
  xIELU, Huang et al. 2024: ``α_p x² + βx`` for ``x > 0``, ``α_n (e^{min(x, ε)} − 1 − x) +
  βx`` below; ``sqrt(softplus(x))``): one elementwise op of kind ``activation`` (the
  identity rule by default, the usual LRP choice for elementwise activations), after
  checking that the module *is* elementwise on the data at hand — its output on the input
  taken one value at a time equals its output.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...rules.ops import NormOp, SoftmaxOp
from ..apply import UnaryFunction
from ..paths import on_path
from . import layers, transformer

if TYPE_CHECKING:
    from ..session import Session

Handler = Callable[..., Any]

#: reductions that make a statistic of the tensor they reduce
NORMS = frozenset({"norm", "linalg.vector_norm", "linalg.norm", "var", "std", "logsumexp"})
#: gates computed from a statistic: held constant (the sink scale of Granite's attention)
GATES_OF_STATISTICS = frozenset({"sigmoid"})
#: reductions that make a statistic when they reduce a square (``mean(x²)``)
SUMS = frozenset({"mean", "sum", "nansum", "nanmean"})
#: how a square is spelled (``x.pow(2)`` is an activation node of one of these names)
SQUARES = frozenset({"pow", "__pow__", "square", "float_power"})
#: elementwise maths with constants, casts and views: a statistic stays a statistic
CHAIN = frozenset({
    "add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "mul", "__mul__", "__rmul__",
    "div", "__truediv__", "__rtruediv__", "true_divide", "divide", "rsqrt", "sqrt",
    "reciprocal", "clamp", "clamp_min", "clamp_max", "clip", "pow", "__pow__", "abs", "neg",
    "__neg__", "to", "float", "double", "half", "bfloat16", "type", "type_as", "expand",
    "expand_as", "unsqueeze", "squeeze", "view", "reshape", "contiguous", "clone",
    "maximum", "minimum",
})
#: a tensor scaled by a statistic (``div``: divided by it)
SCALINGS = frozenset({"mul", "__mul__", "__rmul__", "multiply"})
DIVISIONS = frozenset({"div", "__truediv__", "true_divide", "divide"})
#: nodes that only cast or copy: the tensor they make has the values of their input (a dense
#: layer's input stand-in, :class:`relprop._engine.apply.InputStandIn`, stands for it)
_CASTS = frozenset({"ToCopyBackward0", "CloneBackward0", "AliasBackward0",
                    "InputStandInBackward"})


@dataclass(frozen=True)
class Statistic:
    """A tensor computed from a reduction of ``base`` (a graph node) by ``fn`` (a function
    of a tensor with ``base``'s values, in ``dtype``)."""

    base: Any
    dtype: torch.dtype
    fn: Callable[[Tensor], Tensor]


def _root(node: Any) -> Any:
    """``node`` with the casts and copies above it stripped."""
    while node is not None and type(node).__name__ in _CASTS:
        node = node.next_functions[0][0]
    return node


def _statistic(session: Session, t: Any) -> Statistic | None:
    found = session.noted("statistic", t)
    return found if isinstance(found, Statistic) else None


def _remember(session: Session, out: Any, statistic: Statistic) -> None:
    if isinstance(out, Tensor) and on_path(out):
        session.note("statistic", out, statistic)


def _squared_base(session: Session, t: Any) -> Any:
    """If ``t`` is ``b²`` (the activation node of ``pow(b, 2)``/``square(b)``), ``b``'s node."""
    node = getattr(t, "grad_fn", None)
    if node is None or type(node).__name__ != "UnaryFunctionBackward":
        return None
    if session.node_info.get(node, ("", ""))[1] not in SQUARES:
        return None
    return node.next_functions[0][0]


def _replace(values: tuple[Any, ...], position: int, value: Tensor) -> list[Any]:
    out = list(values)
    out[position] = value
    return out


def observe(session: Session, func: Callable[..., Any], name: str, args: tuple[Any, ...],
            kwargs: dict[str, Any], out: Any) -> None:
    """After a call: remember the statistics it made (see the module docstring)."""
    if not isinstance(out, Tensor) or not on_path(out) or not args:
        return
    _log_softmax(session, name, args, kwargs, out)
    _note_shift(session, name, args, kwargs, out)
    first = args[0]
    if name in NORMS and on_path(first) and out.numel() < first.numel() \
            and first.grad_fn is not None:
        rest, options = args[1:], dict(kwargs)
        _remember(session, out, Statistic(first.grad_fn, first.dtype,
                                          lambda t: func(t, *rest, **options)))
        return
    if name in SUMS and on_path(first) and out.numel() < first.numel():
        base = _squared_base(session, first)
        if base is not None:
            rest, options = args[1:], dict(kwargs)
            _remember(session, out, Statistic(base, first.dtype,
                                              lambda t: func(t.square(), *rest, **options)))
        return
    if name not in CHAIN:
        return
    found = [(i, _statistic(session, a)) for i, a in enumerate(args) if on_path(a)]
    if len(found) != 1 or found[0][1] is None or any(on_path(v) for v in kwargs.values()):
        return
    position, inner = found[0]
    assert inner is not None
    rest, options = tuple(args), dict(kwargs)

    def chained(t: Tensor) -> Tensor:
        return func(*_replace(rest, position, inner.fn(t)), **options)

    _remember(session, out, Statistic(inner.base, inner.dtype, chained))


def _log_softmax(session: Session, name: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], out: Tensor) -> None:
    """Remember ``logsumexp(x, d, keepdim=True)`` and ``x − logsumexp(x, …)``."""
    if name == "logsumexp" and on_path(args[0]):
        bound = dict(zip(("input", "dim", "keepdim"), args))
        bound.update(kwargs)
        dim = bound.get("dim")
        dim = dim[0] if isinstance(dim, list | tuple) and len(dim) == 1 else dim
        if bound.get("keepdim") and isinstance(dim, int):
            session.note("logsumexp", out, (args[0], dim))
    elif name in ("sub", "__sub__") and len(args) == 2 and not kwargs:
        found = session.noted("logsumexp", args[1])
        if found is not None and found[0] is args[0]:
            session.note("log_softmax", out, found)


def _exp(session: Session, func: Callable[..., Any], name: str,
         args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``exp(x − logsumexp(x, d))``: ``softmax(x, d)`` as one op (see the module docstring);
    any other ``exp`` runs as it is, for the graph check to judge."""
    found = session.noted("log_softmax", args[0]) if len(args) == 1 and not kwargs else None
    if found is None:
        return session.unvouched(func(*args, **kwargs))
    x, dim = found
    with torch.no_grad():
        value = func(args[0].detach())
    call = session.new_call("softmax", "softmax")
    out: Tensor = UnaryFunction.apply(x, SoftmaxOp(dim), call, session, lambda _: value)
    session.mark_weights(out, call)
    return out


def prepare(session: Session, name: str, args: tuple[Any, ...]
            ) -> tuple[tuple[Any, ...], None]:
    """Before a call: a gate function of a statistic runs on the statistic held constant."""
    if name in GATES_OF_STATISTICS and args and on_path(args[0]) \
            and _statistic(session, args[0]) is not None:
        return (args[0].detach(), *args[1:]), None
    return args, None


def _of(session: Session, a: Tensor, statistic: Statistic) -> str | None:
    """``"same"`` if ``statistic`` is of ``a`` (up to a cast), ``"layer"`` if of the input of
    the constant-weight layer that made ``a``, ``"centred"`` if ``a = x − mean(x)`` and the
    statistic is of ``x`` (``var``); ``None`` otherwise."""
    base, node = _root(statistic.base), _root(a.grad_fn)
    if node is None or base is None:
        return None
    if node is base:
        return "same"
    if type(node).__name__ == "LayerFunctionBackward" and _root(node.next_functions[0][0]) \
            is base:
        return "layer"
    if type(node).__name__ == "SubBackward0":  # x − mean(x): a LayerNorm's centring
        first, second = (p for p, _ in node.next_functions)
        if _root(first) is base and type(second).__name__ == "MeanBackward1" \
                and _root(second.next_functions[0][0]) is base:
            return "centred"
    return None


def _scaled(session: Session, func: Callable[..., Any], name: str,
            args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """``a ⊙ s`` or ``a / s`` with ``s`` a statistic of ``a``: one ``layer_norm`` op with the
    multiplier held constant; ``None`` if the call is not that."""
    if len(args) != 2 or kwargs or not (on_path(args[0]) and on_path(args[1])):
        return None
    positions = (1,) if name in DIVISIONS else (1, 0)
    for position in positions:
        s, a = args[position], args[1 - position]
        statistic = _statistic(session, s)
        if statistic is None or not isinstance(a, Tensor):
            continue
        relation = _of(session, a, statistic)
        try:
            fits = torch.broadcast_shapes(a.shape, s.shape) == a.shape
        except RuntimeError:
            fits = False
        if relation is None or not fits:
            continue
        held = s.detach()
        multiplier = held.reciprocal() if name in DIVISIONS else held

        def compute(t: Tensor, held: Tensor = held, position: int = position) -> Tensor:
            return func(*_replace((t, t), position, held))

        gradient: Callable[[Tensor], Tensor] = compute
        if relation == "same":
            def gradient(t: Tensor, statistic: Statistic = statistic,
                         position: int = position) -> Tensor:
                return func(*_replace((t, t), position, statistic.fn(t.to(statistic.dtype))))
        op = NormOp("scaled", gradient, multiplier=multiplier, bias=False)
        call = session.new_call("layer_norm", name)
        out: Tensor = UnaryFunction.apply(a, op, call, session, compute)
        return out
    return None


#: additions of a number: the sum is a shifted activation
SHIFTS = frozenset({"add", "__add__", "__radd__"})
#: the ops :func:`observe` looks at (``logsumexp`` and the ``x − logsumexp`` after it, shifts,
#: reductions and the elementwise chain of a statistic)
OBSERVE_NAMES = frozenset({"logsumexp", "sub", "__sub__"}) | SHIFTS | NORMS | SUMS | CHAIN
#: the ops :func:`prepare` acts on
PREPARE_NAMES = GATES_OF_STATISTICS


def _note_shift(session: Session, name: str, args: tuple[Any, ...],
                kwargs: dict[str, Any], out: Tensor) -> None:
    """Remember ``a + c`` (``c`` a number, ``a`` an activation) as ``(a, c)``."""
    if name in SHIFTS and len(args) == 2 and not kwargs:
        for a, c in (args, args[::-1]):
            if on_path(a) and isinstance(c, int | float) and not isinstance(c, bool) \
                    and not session.is_gate(a):
                session.note("shift", out, (a, c))


def _shifted_product(session: Session, func: Callable[..., Any], name: str,
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    """``(a + c) · b`` as ``a · b + c · b`` (see the module docstring); ``None`` if the call
    is not that."""
    if name not in SCALINGS or name == "multiply" or len(args) != 2 or kwargs \
            or not (on_path(args[0]) and on_path(args[1])) \
            or any(session.is_gate(t) for t in args):
        return None
    for position in (0, 1):
        shift = session.noted("shift", args[position])
        if shift is None:
            continue
        a, c = shift
        other = args[1 - position]
        product = layers._product(session, func, name, tuple(_replace(args, position, a)), {})
        expanded = product + other * c
        with torch.no_grad():
            correction = func(*args) - expanded
        out: Tensor = expanded + correction
        return out
    return None


def _scaling(session: Session, func: Callable[..., Any], name: str,
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A product or quotient: a tensor scaled by its own statistic (:func:`_scaled`), a
    product with a shifted factor (:func:`_shifted_product`), else what the other families
    do with it (a product of activations, or the plain op, which the graph check judges)."""
    out = _scaled(session, func, name, args, kwargs)
    if out is None:
        out = _shifted_product(session, func, name, args, kwargs)
    if out is not None:
        return out
    previous = _PREVIOUS.get(name)
    if previous is not None:
        return previous(session, func, name, args, kwargs)
    return session.unvouched(func(*args, **kwargs))


def _erf(session: Session, func: Callable[..., Any], name: str,
         args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``erf``: an elementwise activation whose output is a gate (see the module docstring)."""
    out = layers._activation(session, func, name, args, kwargs)
    if isinstance(out, Tensor) and on_path(out):
        session.mark_gate(out)
    return out


# -- activation modules with scalar parameters ---------------------------------------------
_ACTIVATION_MODULE = re.compile(r"Activation$")


def module_kind(module: nn.Module) -> str | None:
    """``"activation"`` for a leaf ``…Activation`` module whose parameters and buffers (if
    any) are all scalars (xIELU, DeepSeek-V4's ``SqrtSoftplusActivation``, Nemotron's
    ``ReLUSquaredActivation``), checked to be elementwise in :func:`wrap_module_output`
    (GELU/SiLU-like modules are the transformer family's, which comes first)."""
    cls = type(module)
    if cls.__module__.startswith("torch.") or next(module.children(), None) is not None \
            or not _ACTIVATION_MODULE.search(cls.__name__):
        return None
    if any(t.numel() != 1 for t in [*module.parameters(), *module.buffers()]):
        return None
    return "activation"


def wrap_module_output(session: Session, module: nn.Module, kind: str, args: Any,
                       output: Any) -> Any:
    """The module's output as one elementwise op, if it is elementwise on this input (its
    output on the input's values one at a time is its output); ``None`` otherwise."""
    a = args[0] if isinstance(args, tuple) and args else None
    if not (on_path(a) and isinstance(output, Tensor)) or len(args) != 1:
        return output
    assert isinstance(a, Tensor)
    if output.shape != a.shape:
        return None
    with torch.no_grad():
        try:
            alone = module.forward(a.detach().reshape(-1, 1)).reshape(a.shape)
        except (RuntimeError, ValueError):
            return None
    if not torch.equal(alone, output.detach()):
        return None
    return transformer.wrap_module_output(session, module, kind, args, output)


_PREVIOUS: dict[str, Handler] = {n: layers.HANDLERS[n] for n in SCALINGS | DIVISIONS
                                 if n in layers.HANDLERS}
_PREVIOUS["multiply"] = layers._product

HANDLERS: dict[str, Handler] = {
    **{n: _scaling for n in SCALINGS | DIVISIONS},
    "erf": _erf,
    "special.erf": _erf,
    "exp": _exp,
}

__all__ = ["HANDLERS", "observe", "prepare", "module_kind", "wrap_module_output", "Statistic"]
