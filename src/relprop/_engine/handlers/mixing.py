"""Handlers of the mixing family: what real models mix their signals with beyond attention and
gated MLPs — squared ReLU, mixture-of-experts routing, ALiBi's ``baddbmm``, and products
(bilinear ops) the layer family does not see as products.

Every rule here is one relprop already has; this family only tells the engine which op is
which:

* **Squared ReLU** ``square(relu(x))`` (So et al. 2021, *Primer*; Hugging Face Persimmon,
  Nemotron ``ReLUSquaredActivation``, RWKV's channel mixing): ``torch.square`` and
  ``x ** 2`` / ``pow(x, 2)`` are elementwise activations (kind ``"activation"``), so the
  composite's activation rule applies — the identity rule by default, ``R_a = R_z``.
  Why not the product ``relu(x) · relu(x)``? For ``z = a · a`` the uniform product rule
  gives ``R/2`` to each factor, and both factors are the same tensor: ``R_a = R/2 + R/2 =
  R_z``, the identity rule again. The two agree on every composite that has both, but only
  the activation kind lets a gradient rule on activations (:class:`~relprop.rules.Gradient`,
  ``c = 2a · grad``) reproduce Gradient × Input, as it does for every other activation; the
  op is one elementwise function of one tensor, which is what the activation kind is.
  Other exponents stay refused (they are not used as activations, and a cube inside a
  hand-written GELU is taken with its module).
* **Mixture-of-experts routing** (Mixtral, Qwen2-MoE, Qwen3-MoE, Jamba, OLMoE, ...):
  ``y = Σ_e g_e(x) · E_e(x)`` with router weights ``g = renorm(topk(softmax(W_r x)))``. The
  router weights are *gates*: signal-take-all (Arras et al. 2017, the rule relprop applies
  to sigmoid gates): each weighted expert output ``g_e · E_e`` passes all of its relevance
  to ``E_e`` (``g_e`` acts as a weight), and the router gets none. The sum over experts
  (``index_add_``) is linear, so LRP-0 splits ``R_y`` over the experts in proportion to
  their weighted outputs and conservation is exact. So that the product handler sees the
  weights as gates: the ``topk`` values of a gate or of a softmax output are gates (top-k is
  a winner-take-all selection, linear in the values it keeps, like max pooling), and so is
  whatever is computed from gates and constants alone (a cast, a view, an index, a sum, a
  product or sum with a constant, ``scatter`` into a constant). The renormalisation
  ``g / Σ_k g_k`` divides a gate by a gate: it is computed with the sum held constant (the
  identity rule of a normalisation, as for ``F.normalize`` and RMSNorm), which is what makes
  the division linear for the graph check; no relevance reaches it anyway.
* **ALiBi** (Press et al. 2022; BLOOM: ``alibi.baddbmm(q, kᵀ, beta=β, alpha=α)``):
  ``z = β·bias + α·(q kᵀ)``. The product ``q kᵀ`` of two activations takes the product
  rule (uniform ``R/2`` each, AttnLRP; CP-LRP gives the scores nothing anyway) on the
  relevance of ``α·q kᵀ``; the bias term ``β·bias`` is a constant of the positions and the
  mask, not of the tokens, so — like a layer's bias, and like rotary positions — it absorbs
  its share ``β·bias·(R_z/z)`` (the ledger shows it); it is not a source, which relprop keeps
  for learned lookups and parameters that join the stream. If the added tensor itself
  depends on the input, LRP-0 passes its share back through it (the sum is linear). The
  same holds for ``addbmm``, ``addmv``, ``addr`` and ``addmm`` of two activations.
* **Bilinear ops the layer family misses**: ``torch.multiply`` (ConvBERT's
  ``key_conv · query``), ``Tensor.mm``/``torch.mm`` and ``addmm`` of two activations (they
  were taken as linear: the gradient, silently), ``mv``, ``dot``, ``inner``, ``outer``; and
  ``F.linear``/``F.conv*`` whose weight is computed from the input (a dynamic convolution,
  a hypernetwork): ``z = conv(a, W(x))`` is bilinear in ``(a, W)``, homogeneous of degree 1
  in each, so the uniform product rule gives each ``R/2`` and conserves (Achtibat et al.
  2024). ConvBERT's own dynamic convolution is ``unfold`` (linear) then ``matmul`` with
  the softmax kernel: a product the layer family already takes.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Number
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..apply import ShareFunction
from ..inplace import run_in_place
from ..paths import on_path
from . import layers

if TYPE_CHECKING:
    from ..session import Session

Handler = Callable[..., Any]

# -- squared ReLU -------------------------------------------------------------------------
#: ``pow`` spellings taken as an activation when the exponent is 2
POWERS = frozenset({"pow", "__pow__", "float_power"})


def _is_two(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool) and value == 2


def _squared(session: Session, func: Callable[..., Any], name: str,
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``x ** 2`` of an activation: an elementwise activation (see the module docstring)."""
    return layers._activation(session, func, name, args, kwargs)


# -- mixture-of-experts routing: gates ----------------------------------------------------
#: ops whose output is a gate when every input on the relevance path is one (computed from
#: the router alone): casts, views, indexing, sums, scaling, scatter into a constant
GATE_KEEPING = frozenset({
    "to", "type", "float", "double", "half", "bfloat16", "clone", "contiguous",
    "view", "reshape", "view_as", "reshape_as", "expand", "expand_as", "unsqueeze", "squeeze",
    "flatten", "unflatten", "permute", "transpose", "t", "__getitem__", "select", "narrow",
    "index_select", "gather", "take_along_dim", "repeat", "repeat_interleave", "split",
    "chunk", "unbind", "cat", "concat", "concatenate", "stack", "sum", "mul", "__mul__",
    "__rmul__", "multiply", "div", "__truediv__", "true_divide", "divide", "add", "__add__",
    "__radd__", "sub", "__sub__", "scatter", "masked_fill", "where", "topk", "clamp",
    "clamp_min", "clamp_max", "clip",
})
#: the largest value of a gate or softmax output: a winner-take-all selection, as top-k
MAXIMA = frozenset({"max", "amax"})
#: products with a constant (``weights * route_scale``)
SCALES = frozenset({"mul", "__mul__", "__rmul__", "multiply"})
#: selections by index: of a softmax output (by a router's top-k indices), a gate
GATHERS = frozenset({"gather", "take_along_dim"})
#: sums: a softmax output plus a constant (``softmax(s) + ε``) may still be renormalised
PLUS = frozenset({"add", "__add__", "__radd__"})
#: divisions: a gate divided by a gate (top-k renormalisation) holds the divisor constant
DIVISIONS = frozenset({"div", "__truediv__", "true_divide", "divide", "div_",
                       "__itruediv__", "__idiv__", "true_divide_", "divide_"})
#: in-place ops that keep a gate a gate when the other operand is a constant (or a gate,
#: held constant by :func:`prepare`); their write is linear, see ``inplace.ONE_SIDED``
GATE_IN_PLACE = frozenset({"mul_", "div_", "__imul__", "__itruediv__", "__idiv__"})


def _tensors(values: Any) -> list[Tensor]:
    out: list[Tensor] = []
    for value in values:
        if isinstance(value, Tensor):
            out.append(value)
        elif isinstance(value, list | tuple):
            out.extend(v for v in value if isinstance(v, Tensor))
    return out


def _gate_like(session: Session, t: Any) -> bool:
    """A gate, or the output of a softmax (router probabilities, attention weights)."""
    return session.is_gate(t) or session.weights_call(t) is not None


def _all_gates(session: Session, args: tuple[Any, ...]) -> bool:
    path = [t for t in _tensors(args) if on_path(t)]
    return bool(path) and all(session.is_gate(t) for t in path)


def _mark(session: Session, out: Any) -> None:
    for t in out if isinstance(out, list | tuple) else (out,):
        if isinstance(t, Tensor) and t.requires_grad:
            session.mark_gate(t)


def _topk_values(session: Session, out: Any) -> None:
    """The values of ``topk`` of a gate: a gate, their winner-take-all node approved."""
    values = out[0] if isinstance(out, tuple) else None
    if isinstance(values, Tensor) and values.grad_fn is not None:
        session.mark_gate(values)
        session.approved.add(values.grad_fn)


#: what routers turn their top-k raw scores into weights with
ROUTER_NORMALISERS = frozenset({"softmax", "sigmoid"})


def _router_scores(session: Session, out: Any) -> None:
    """``topk`` of a router's raw scores: the values are copies of the winners (a selection,
    like max pooling's winner-take-all: its node is approved); normalised by softmax or
    sigmoid they become gates (signal-take-all in the product with the experts)."""
    values = out[0] if isinstance(out, tuple) else None
    if isinstance(values, Tensor) and values.grad_fn is not None:
        session.approved.add(values.grad_fn)
        session.mark("router_scores", values)


def _softmax_derived(session: Session, t: Any) -> bool:
    """A softmax output, or one plus a constant (``softmax(s) + ε``: DeepSeek-V4's
    hyper-connection mixing matrix before its Sinkhorn normalisation)."""
    return session.weights_call(t) is not None or session.is_marked("softmax_plus", t)


def _renormalisable(session: Session, t: Any) -> bool:
    """What a division by its own sum turns into weights that sum to 1, a gate: a softmax
    output (plus a constant), or scores selected by index (a router's top-k scores,
    DeepSeek-V4's ``sqrt(softplus(·))`` router)."""
    return _softmax_derived(session, t) or type(t.grad_fn).__name__ == "GatherBackward0"


def _sum_of(divisor: Any, numerator: Tensor) -> bool:
    """Whether ``divisor`` is computed from ``numerator`` alone by sums, adds of constants,
    casts and clamps (``w.sum(-1, keepdim=True) + ε``): a renormalisation of ``numerator``."""
    node = getattr(divisor, "grad_fn", None)
    for _ in range(8):
        if node is None or type(node).__name__ not in _OWN_SUM_NODES:
            return False
        parents = [p for p, _ in node.next_functions if p is not None]
        if len(parents) != 1:
            return False
        node = parents[0]
        if node is numerator.grad_fn:
            return True
    return False


#: the nodes of a sum, an add of a constant, a cast or a clamp (an activation node)
_OWN_SUM_NODES = frozenset({"SumBackward0", "SumBackward1", "AddBackward0", "AddBackward1",
                            "ToCopyBackward0", "UnaryFunctionBackward", "ClampMinBackward0"})


#: the ops :func:`prepare` acts on
PREPARE_NAMES = ROUTER_NORMALISERS | GATE_KEEPING | DIVISIONS | MAXIMA | {"type_as"}


def prepare(session: Session, name: str, args: tuple[Any, ...]
            ) -> tuple[tuple[Any, ...], Callable[[Any], None] | None]:
    """Before a call: a gate divided by a gate holds the divisor constant; the outputs of
    ``topk`` of a gate or softmax output, and of ops computed from gates alone, are gates."""
    if name in ROUTER_NORMALISERS and args and session.is_marked("router_scores", args[0]):
        return args, lambda out: _mark(session, out)  # softmax of the top-k scores: gates
    if name not in GATE_KEEPING and name not in DIVISIONS and name not in MAXIMA \
            and name != "type_as":
        return args, None
    if name == "topk":
        if args and on_path(args[0]) and _gate_like(session, args[0]):
            return args, lambda out: _topk_values(session, out)
        if args and on_path(args[0]):  # a router's raw scores (gpt-oss, granitemoe, llama4)
            return args, lambda out: _router_scores(session, out)
        return args, None
    if name in MAXIMA and args and on_path(args[0]) and _gate_like(session, args[0]):
        # the top-1 router probability (Switch Transformers): top-k with k = 1
        return args, lambda out: (_topk_values(session, out) if isinstance(out, tuple)
                                  else _mark(session, out))
    if name in SCALES and len(args) == 2 and sum(on_path(a) for a in args) == 1:
        weights = next(session.weights_call(a) for a in args if on_path(a))
        if weights is not None:  # softmax weights times a constant: still its weights
            return args, lambda out: session.mark_weights(out, weights)
    if name == "type_as" and args and session.is_gate(args[0]):  # a cast: only its dtype
        return args, lambda out: _mark(session, out)  # is read from the other tensor
    if name in GATHERS and args and _softmax_derived(session, args[0]):
        # probabilities picked by index (a router's top-k indices: Ernie 4.5, Mistral 4)
        return args, lambda out: _mark(session, out)
    if name in PLUS and len(args) == 2 and sum(on_path(a) for a in args) == 1 \
            and any(session.weights_call(a) is not None for a in args):
        return args, lambda out: session.mark("softmax_plus", out)
    if name in DIVISIONS and len(args) >= 2 and on_path(args[0]) and on_path(args[1]) \
            and not session.is_gate(args[0]) and _renormalisable(session, args[0]) \
            and _sum_of(args[1], args[0]):
        # a softmax output renormalised by its own sum (Sinkhorn): a gate, the sum held
        return (args[0], args[1].detach(), *args[2:]), lambda out: _mark(session, out)
    if name in DIVISIONS and len(args) >= 2 and session.is_gate(args[0]) \
            and on_path(args[1]) and session.is_gate(args[1]):
        args = (args[0], args[1].detach(), *args[2:])
    if name in GATE_KEEPING and _all_gates(session, args):
        return args, lambda out: _mark(session, out)
    return args, None


def _gate_in_place(session: Session, func: Callable[..., Any], name: str,
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``g /= s``, ``g *= c`` as the in-place machinery runs them (a linear write), after
    which a gate is still a gate (the write would otherwise forget it)."""
    target = args[0]
    was_gate = session.is_gate(target)
    out = run_in_place(session, func, name, args, kwargs, session.interceptor._dispatch)
    if was_gate:
        session.mark_gate(target)
    return out


#: the ops :func:`claim` may take
CLAIM_NAMES = POWERS | GATE_IN_PLACE


def claim(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Handler | None:
    """``x ** 2`` (not in place) is an activation; an in-place scaling of a tensor on the
    relevance path by a constant keeps a gate a gate (``router_top_value /= sum``)."""
    if name in POWERS and len(args) >= 1 and isinstance(args[0], Tensor):
        exponent = args[1] if len(args) > 1 else kwargs.get("exponent")
        if _is_two(exponent) and not kwargs.keys() - {"exponent"}:
            return _squared
        return None
    if name in GATE_IN_PLACE and len(args) == 2 and not kwargs and on_path(args[0]) \
            and not on_path(args[1]):
        return _gate_in_place
    return None


# -- products the layer family does not take as products ----------------------------------
#: argument names of ops that add a term to a product of two factors: (names, factors)
BILINEAR: dict[str, tuple[tuple[str, ...], tuple[str, str]]] = {
    "baddbmm": (("input", "batch1", "batch2"), ("batch1", "batch2")),
    "addbmm": (("input", "batch1", "batch2"), ("batch1", "batch2")),
    "addmm": (("input", "mat1", "mat2"), ("mat1", "mat2")),
    "addmv": (("input", "mat", "vec"), ("mat", "vec")),
    "addr": (("input", "vec1", "vec2"), ("vec1", "vec2")),
    "linear": (("input", "weight", "bias"), ("input", "weight")),
    **{n: (("input", "weight", "bias"), ("input", "weight"))
       for n in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                 "conv_transpose3d")},
}
#: ops of two factors that the layer family's product handler takes as they are
PLAIN_PRODUCTS = frozenset({"multiply", "mv", "dot", "inner", "outer", "ger", "vdot"})


def _bilinear(session: Session, func: Callable[..., Any], name: str,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """An op ``z = c + f(a, b)`` bilinear in two activations ``a``, ``b`` (``c`` a constant
    or an input added linearly): the product rule on ``f(a, b)``; else the layer family's
    handler (a layer with a constant weight) or the op itself (linear in its one input)."""
    names, factors = BILINEAR[name]
    bound = dict(zip(names, args))
    if kwargs:
        bound.update({k: v for k, v in kwargs.items() if k in names})
    first, second = bound.get(factors[0]), bound.get(factors[1])
    if not (on_path(first) and on_path(second)):  # most calls: a layer, or linear
        if name in layers.HANDLERS:
            return layers.HANDLERS[name](session, func, name, args, kwargs)
        return func(*args, **kwargs)
    where = {n: ("args", i) if i < len(args) else ("kwargs", n) for i, n in enumerate(names)}
    call = session.new_call("product", name)
    call.gates = [session.is_gate(first), session.is_gate(second)]
    sources = [session.weights_call(first), session.weights_call(second)]
    if any(source is not None for source in sources):
        call.sources = sources
    new_args, new_kwargs = list(args), dict(kwargs)
    shares = []
    for position, (factor, value) in enumerate(zip(factors, (first, second))):
        share = ShareFunction.apply(value, call, position, session)
        shares.append(share)
        place, key = where[factor]
        if place == "args":
            new_args[int(key)] = share
        else:
            new_kwargs[str(key)] = share
    others = frozenset(id(t.grad_fn) for n, t in bound.items()
                       if n not in factors and on_path(t))
    out = func(*new_args, **new_kwargs)
    layers._approve_down_to_shares(session, out.grad_fn, others)
    session.log_output(call, out)
    return out


def _mm(session: Session, func: Callable[..., Any], name: str,
        args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``a.mm(b)``/``torch.mm``: a product of two activations, else ``a @ W`` (a dense layer
    when ``W`` is a parameter, as for ``matmul``)."""
    if len(args) == 2 and on_path(args[0]) and on_path(args[1]):
        return layers._product(session, func, "mm", args, kwargs)
    return layers._matmul_layer(session, func, "mm", args, kwargs)


HANDLERS: dict[str, Handler] = {
    "square": layers._activation,
    **{n: _bilinear for n in BILINEAR},
    **{n: layers._product for n in PLAIN_PRODUCTS},
    **{n: _mm for n in ("mm", "spmm")},
}

__all__ = ["HANDLERS", "claim", "prepare", "POWERS", "GATE_KEEPING", "BILINEAR"]
