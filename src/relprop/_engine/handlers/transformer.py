"""Handlers for the ops of transformers: embeddings, softmax, LayerNorm/RMSNorm, attention.

Registered in :mod:`relprop._intercept` next to the handlers of layers and activations.
Whole modules that compute a normalisation or an activation from elementary ops (Llama's
``LlamaRMSNorm``, GPT-2's ``NewGELUActivation``) are recognised by :func:`module_kind` and
treated as one op by the session's module hooks.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...errors import UnsupportedOperationError
from ...rules.ops import ElementwiseOp, NormOp, SoftmaxOp
from ..apply import ShareFunction, UnaryFunction, again_by_call
from ..paths import graph_nodes, on_path
from . import layers

if TYPE_CHECKING:
    from ..session import Session


def _bind(names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any],
          defaults: dict[str, Any]) -> dict[str, Any]:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def embedding(session: Session, func: Callable[..., Any], name: str,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A lookup table: its output is where relevance ends (a *source* of the explanation).

    The lookup of the explained token ids gives the tokens' relevance; other lookups
    (positions, token types) are reported separately under their module path.
    """
    out = func(*args, **kwargs)
    ids = args[0] if args else kwargs.get("input")
    if not isinstance(out, Tensor) or not out.is_floating_point() or on_path(out):
        return out
    batch = session.x.shape[0]
    if out.dim() >= 3 and out.shape[0] == 1 and batch > 1:
        # shared by the batch (position ids of shape (1, T)): one copy per sample, so that
        # each sample's relevance stays its own instead of being summed over the batch
        out = out.expand(batch, *out.shape[1:])
    source = out.detach().clone().requires_grad_(True)
    path = session.where()[0] or "<model>"
    reads = session.is_input_ids(ids)
    session.add_source(path, source, reads_input=reads)
    moved = None if reads else session.id_map(ids)
    if moved is not None and tuple(moved.shape) == tuple(source.shape[:-1]):
        session.source_positions[id(source)] = moved  # ids the model moved: map them back
    # a copy for the model: it may write into it in place (``h += self.pos``), which a
    # leaf that collects relevance cannot take
    return source.clone()


def softmax(session: Session, func: Callable[..., Any], name: str,
            args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    bound = _bind(("input", "dim"), args, kwargs, {"dim": None})
    a = bound["input"]
    if not on_path(a):
        return func(*args, **kwargs)
    dim = bound["dim"]
    if not isinstance(dim, int):
        raise UnsupportedOperationError(
            f"{name} at '{session.where()[0] or '<model>'}' has no explicit dim; pass dim=")
    rest = {k: v for k, v in kwargs.items() if k not in ("input",)}
    call = session.new_call("softmax", name)
    out = UnaryFunction.apply(a, SoftmaxOp(dim), call, session,
                              lambda t: func(t, *args[1:], **rest))
    session.mark_weights(out, call)
    return out


def layer_norm(session: Session, func: Callable[..., Any], name: str,
               args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.layer_norm`` and ``F.rms_norm``: one op with the ``layer_norm`` kind."""
    names = ("input", "normalized_shape", "weight", "bias", "eps") if name == "layer_norm" \
        else ("input", "normalized_shape", "weight", "eps")
    bound = _bind(names, args, kwargs, {"weight": None, "bias": None, "eps": None})
    a = bound["input"]
    if not on_path(a) or on_path(bound["weight"]) or on_path(bound["bias"]):
        # a weight computed from the input (adaptive norms) has no rule: the check sees it
        return session.unvouched(func(*args, **kwargs))
    eps = bound["eps"]
    if eps is None:
        eps = 1e-5 if name == "layer_norm" else torch.finfo(a.dtype).eps
    dims = len(bound["normalized_shape"])
    call = session.new_call("layer_norm", name)
    norm = "layer" if name == "layer_norm" else "rms"
    plain: Callable[[Tensor], Tensor] = lambda t: func(t, *args[1:], **kwargs)  # noqa: E731
    op = NormOp(norm, plain, bound["weight"], dims, float(eps))
    compute = plain
    if name == "layer_norm" and a.dtype in (torch.float32, torch.float64):
        # the kernel F.layer_norm runs, also returning 1/σ for the backward step
        shape, weight, bias = list(a.shape[a.dim() - dims:]), bound["weight"], bound["bias"]

        def compute(t: Tensor) -> Tensor:
            z, _, scale = torch.native_layer_norm(t, shape, weight, bias, float(eps))
            op.scale = scale
            return z
    return UnaryFunction.apply(a, op, call, session, compute, compute)


def normalize(session: Session, func: Callable[..., Any], name: str,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.normalize``: ``x / ‖x‖_p`` with the norm held constant, so the identity rule
    (``layer_norm`` kind, :class:`~relprop.rules.NormIdentity`), as for RMSNorm."""
    a = args[0] if args else kwargs.get("input")
    if not on_path(a):
        return func(*args, **kwargs)
    rest = {k: v for k, v in kwargs.items() if k != "input"}
    call = session.new_call("layer_norm", name)
    plain: Callable[[Tensor], Tensor] = lambda t: func(t, *args[1:], **rest)  # noqa: E731
    return UnaryFunction.apply(a, NormOp("module", plain), call, session, plain)


def _reaches_input(session: Session, t: Tensor) -> bool:
    """Whether ``t`` is computed from the explained input (or its token lookups), not only
    from sources such as position embeddings."""
    inputs = {id(session.x)} | {id(s) for _, s, reads in session.sources if reads}
    return any(id(getattr(node, "variable", None)) in inputs for node in graph_nodes(t))


def _with_mask(args: tuple[Any, ...], kwargs: dict[str, Any], mask: Tensor
               ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if len(args) > 3:
        return (*args[:3], mask, *args[4:]), kwargs
    return args, {**kwargs, "attn_mask": mask}


def attention(session: Session, func: Callable[..., Any], name: str,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.scaled_dot_product_attention``, kept fused: its inputs' gradients are scaled by
    the rule (see :class:`relprop.rules.Attention`) and PyTorch's own backward does the rest."""
    bound = _bind(("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale"),
                  args, kwargs, {"attn_mask": None, "dropout_p": 0.0})
    q, k, v = bound["query"], bound["key"], bound["value"]
    if not any(on_path(t) for t in (q, k, v)):
        return func(*args, **kwargs)
    path = session.where()[0] or "<model>"
    if bound["dropout_p"]:
        raise UnsupportedOperationError(
            f"scaled_dot_product_attention at '{path}' has dropout_p={bound['dropout_p']}: "
            "attention dropout makes the explanation random; run the model in eval mode")
    mask = bound["attn_mask"]
    call = session.new_call("attention", name)
    mask_of_input = on_path(mask) and _reaches_input(session, mask)
    if on_path(mask):
        if mask_of_input:
            # a float mask computed from the input is a third term of the scores
            # (q kᵀ · scale + m(x): Inkling's token-conditioned position bias, Doge's dynamic
            # mask): it takes its share of the scores' relevance (LRP-0 on the sum), see
            # rules.Attention, and passes it back through the ops that made it
            args, kwargs = _with_mask(args, kwargs, ShareFunction.apply(mask, call, 3, session))
        else:
            # a position bias added to the scores (T5's relative attention bias: a lookup of
            # positions, not tokens) is held constant, like a bias: its share is absorbed
            args, kwargs = _with_mask(args, kwargs, mask.detach())
    qkv = [ShareFunction.apply(t, call, i, session) if on_path(t) else t
           for i, t in enumerate((q, k, v))]
    for t in qkv:
        if on_path(t):
            session.approved.add(t.grad_fn)
    rest = {key: value for key, value in kwargs.items() if key not in ("query", "key", "value")}
    out = func(*qkv, *args[3:], **rest)
    if mask_of_input:  # a mask with a gradient runs the unfused maths: its nodes are ours
        layers._approve_down_to_shares(session, out.grad_fn)
    session.log_output(call, out)
    return out


ADDITIVE = frozenset({"add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "add_",
                      "__iadd__", "sub_", "__isub__"})
IN_PLACE_ADDITIVE = frozenset({"add_", "__iadd__", "sub_", "__isub__"})


def parameter_source(session: Session, value: Any, operands: tuple[Any, ...]) -> Any:
    """A constant added to the relevance path that varies along the sequence becomes a source
    reported under its name, so that its share of the relevance is kept instead of absorbed
    (``Σ relevance + Σ sources = explained`` on a bias-free model under a conservative
    composite); other constants (biases) absorb their share as before.

    * a parameter with a leading batch dimension of 1 (a learned position embedding,
      ``x + self.pos``) broadcast along the batch alone: ``(1, T, C)`` added to ``(B, T, C)``;
      a ``(1, 1, C)`` bias added to a time-major ``(L, B, C)`` stream stays a constant;
    * any other constant — a buffer, a view of a parameter, a table computed in the forward
      pass (sinusoidal positions: CTRL's ``pos_encoding[position_ids]``, XGLM's sinusoidal
      embedding, PVT's positions joined to its class token's) — of shape ``(T, C)``,
      ``(1, T, C)`` or ``(B, T, C)`` with ``T > 1`` added to a ``(B, T, C)`` stream. Masks
      (entries at the dtype's minimum, or not finite) are not sources.

    A source is named after the parameter or buffer it is, else ``"<module path>:constant"``.
    """
    if not isinstance(value, Tensor) or not value.is_floating_point() \
            or (value.requires_grad and not isinstance(value, nn.Parameter)):
        return value
    batch = session.x.shape[0]
    streams = [o for o in operands if on_path(o) and not isinstance(o, nn.Parameter)]
    if _batch_parameter(value):
        shape = (batch, *value.shape[1:])
        if not any(tuple(o.shape) == shape for o in streams):
            return value
        name = session.parameter_name(value)
    elif len(streams) == 1 and _of_sources_only(session, streams[0]):
        # a constant joining a stream made of sources alone (ProphetNet's n-gram embedding
        # added to the positions of its predicting stream): part of that learned input
        name = session.parameter_name(value) if isinstance(value, nn.Parameter) \
            else f"{session.where()[0] or '<model>'}:constant"
        try:
            shape = torch.broadcast_shapes(value.shape, streams[0].shape)
        except RuntimeError:
            return value
    else:
        stream = next((o for o in streams if o.dim() == 3 and o.shape[0] == batch), None)
        if stream is None or not _table_of(value, stream, batch):
            return value
        name = _buffer_name(session, value) or (
            session.parameter_name(value) if isinstance(value, nn.Parameter)
            else f"{session.where()[0] or '<model>'}:constant")
        shape = tuple(stream.shape)
    source = value.detach().expand(*shape).clone().requires_grad_(True)
    session.add_source(name, source, reads_input=False)
    return source


def _of_sources_only(session: Session, stream: Tensor, limit: int = 32) -> bool:
    """Whether ``stream`` is computed from sources that do not read the input (position
    lookups, not token lookups) within ``limit`` graph nodes; ``False`` where the walk goes
    further (a deep stream: most likely the input's)."""
    sources = {id(s) for _, s, reads in session.sources if not reads}  # not token lookups
    walked = 0
    for walked, node in enumerate(graph_nodes(stream), start=1):
        if walked > limit:
            return False
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in sources:
            return False  # the input, or a leaf that is not a source
    return walked > 0


def _table_of(value: Tensor, stream: Tensor, batch: int) -> bool:
    """Whether ``value`` is a per-position table for the ``(B, T, C)`` ``stream``: ``(T, C)``,
    ``(1, T, C)`` or ``(B, T, C)``, ``T > 1``, finite and without mask entries."""
    if value.dim() not in (2, 3) or tuple(value.shape[-2:]) != tuple(stream.shape[-2:]) \
            or value.shape[-2] < 2 or (value.dim() == 3 and value.shape[0] not in (1, batch)):
        return False
    with torch.no_grad():
        return bool(torch.isfinite(value).all()) and \
            not bool((value == torch.finfo(value.dtype).min).any())


def _buffer_name(session: Session, value: Tensor) -> str | None:
    return next((n for n, b in session.model.named_buffers() if b is value), None)


def _batch_parameter(value: Any) -> bool:
    return isinstance(value, nn.Parameter) and value.dim() >= 3 and value.shape[0] == 1


def remember_expanded(session: Session, parameter: Any, out: Any) -> None:
    """Note ``out = parameter.expand(batch, ...)`` of a parameter shaped like one sample (a
    class token: ``(1, 1, C)``, or CLIP's ``(C,)`` expanded to ``(B, 1, C)``), so that
    :func:`joined_source` can recognise it when it is concatenated."""
    one_sample = isinstance(parameter, nn.Parameter) and isinstance(out, Tensor) \
        and out.dim() >= 2 and parameter.numel() == out[0].numel()
    if (_batch_parameter(parameter) or one_sample) and isinstance(out, Tensor):
        session.expanded[id(out)] = (weakref.ref(out), parameter)


def joined_source(session: Session, value: Any) -> Any:
    """A class token (a parameter expanded to the batch and concatenated to the relevance
    path, ``cat([cls.expand(B, -1, -1), patches], 1)``) becomes a source reported under the
    parameter's name, so its share of the relevance is kept instead of absorbed."""
    if not isinstance(value, Tensor) or value.requires_grad:
        return value
    entry = session.expanded.get(id(value))
    if entry is None or entry[0]() is not value:
        return value
    source = value.detach().clone().requires_grad_(True)
    session.add_source(session.parameter_name(entry[1]), source, reads_input=False)
    return source


HANDLERS = {
    "embedding": embedding, "softmax": softmax, "layer_norm": layer_norm,
    "rms_norm": layer_norm, "scaled_dot_product_attention": attention, "normalize": normalize,
}

# -- whole modules treated as one op ------------------------------------------------------
_NORM_MODULE = re.compile(r"(RMSNorm|T5LayerNorm)$")
#: the class name ends with the activation's name (``NewGELUActivation``, ``GELUTanh``), so
#: that ``SiluAndMul`` (a gated product) is not taken for one
_ACTIVATION_MODULE = re.compile(r"(gelu|silu|swish|mish)(activation|tanh)?$", re.IGNORECASE)


def module_kind(module: nn.Module) -> str | None:
    """``"layer_norm"`` for RMSNorm-like modules, ``"activation"`` for parameter-free
    GELU/SiLU-like modules that are written with elementary ops; ``None`` otherwise.

    PyTorch's own modules call functional ops that have handlers, so they are left alone.
    """
    cls = type(module)
    if cls.__module__.startswith("torch.") or next(module.children(), None) is not None:
        return None
    if _NORM_MODULE.search(cls.__name__):
        return "layer_norm"
    if _ACTIVATION_MODULE.search(cls.__name__) and next(module.parameters(), None) is None:
        return "activation"
    return None


def wrap_module_output(session: Session, module: nn.Module, kind: str, args: Any,
                       output: Any) -> Any:
    """The output of a module of :func:`module_kind` ``kind`` as one op of that kind;
    ``None`` if the module turns out not to be elementwise (its output has another shape)."""
    a = args[0] if isinstance(args, tuple) and args else None
    if not (on_path(a) and isinstance(output, Tensor)):
        return output
    assert isinstance(a, Tensor)
    path = session.where()[0] or "<model>"
    if output.shape != a.shape:  # not elementwise after all: run its ops one by one
        return None
    value = output.detach()
    call = session.new_call(kind, type(module).__name__)
    forward = module.forward
    op = ElementwiseOp(kind, forward) if kind == "activation" else NormOp("module", forward)
    out = UnaryFunction.apply(a, op, call, session, lambda _: value, again_by_call(module, args))
    session.approved.add(out.grad_fn)
    session.node_info[out.grad_fn] = (path, type(module).__name__)
    return out


#: ops that join a list of tensors (a class token concatenated to the patches)
JOINS = frozenset({"cat", "concat", "concatenate"})


#: the ops :func:`prepare` acts on
PREPARE_NAMES = ADDITIVE | JOINS | {"expand"}


def prepare(session: Session, name: str, args: tuple[Any, ...]
            ) -> tuple[tuple[Any, ...], Callable[[Any], None] | None]:
    """Before an op call (its arguments as the model gave them): parameters that are
    sources (learned positions, a class token) become source leaves; an ``expand`` of a
    one-sample parameter is remembered for when it is concatenated. Returns the arguments
    and what to do with the call's output (or ``None``)."""
    if name in ADDITIVE and any(on_path(v) for v in args):
        keep = 1 if name in IN_PLACE_ADDITIVE else 0  # the target of ``h += pos`` stays
        return (*args[:keep], *(parameter_source(session, v, args) for v in args[keep:])), None
    if name in JOINS and args and isinstance(args[0], list | tuple) \
            and any(on_path(v) for v in args[0]):
        return (type(args[0])(joined_source(session, v) for v in args[0]), *args[1:]), None
    if name == "expand" and args:
        parameter = args[0]
        return args, lambda out: remember_expanded(session, parameter, out)
    return args, None


# -- token ids that the model moves before the lookup ----------------------------------------
#: ops that move integer values without changing them (XLNet transposes the ids, Longformer
#: pads them to its window, encoder-decoders shift them right with ``cat``)
ID_MOVES = frozenset({
    "transpose", "permute", "t", "contiguous", "clone", "view", "reshape", "flatten",
    "__getitem__", "unsqueeze", "squeeze", "expand", "expand_as", "repeat", "to", "long",
    "int", "flip", "roll", "narrow", "select", "index_select", "movedim", "swapaxes",
    "swapdims", "view_as", "reshape_as",
})
#: elementwise integer maths on the ids (CANINE's hash buckets): the same positions
ID_MAPS_ELEMENTWISE = frozenset({
    "add", "__add__", "__radd__", "sub", "__sub__", "mul", "__mul__", "__rmul__",
    "remainder", "__mod__", "fmod", "floor_divide", "__floordiv__", "bitwise_xor",
    "__xor__", "bitwise_and", "__and__", "masked_fill", "clamp", "where",
})


#: the ops :func:`observe` follows token ids through
OBSERVE_NAMES = JOINS | {"pad"} | ID_MAPS_ELEMENTWISE | ID_MOVES


def observe(session: Session, func: Callable[..., Any], name: str, args: tuple[Any, ...],
            kwargs: dict[str, Any], out: Any) -> None:
    """After an op call: if it moved the token ids, follow where each input token went, so
    that a lookup of the moved ids still gives relevance per input token."""
    if len(session.id_maps) == 0 or not isinstance(out, Tensor) or out.is_floating_point():
        return
    if name in ("cat", "concat", "concatenate") and args and isinstance(args[0], list | tuple):
        parts = [session.id_map(t) for t in args[0]]
        if not any(p is not None for p in parts):
            return
        moved = torch.cat([p if p is not None else torch.full_like(t, -1)
                           for p, t in zip(parts, args[0])], *args[1:], **kwargs)
    else:
        position = session.id_map(args[0]) if args else None
        if position is None:
            return
        if name == "pad":
            moved = torch.nn.functional.pad(position, args[1] if len(args) > 1 else kwargs["pad"],
                                            value=-1)
        elif name in ID_MAPS_ELEMENTWISE:
            moved = position.expand(out.shape) if position.shape != out.shape else position
        elif name in ID_MOVES:
            rest = [session.id_map(a) if session.id_map(a) is not None else a for a in args[1:]]
            moved = func(position, *rest, **{k: v for k, v in kwargs.items() if k != "dtype"})
            if isinstance(moved, Tensor) and moved.dtype != torch.long:
                moved = moved.long()
        else:
            return
    if isinstance(moved, Tensor) and moved.shape == out.shape:
        session.id_maps[id(out)] = (weakref.ref(out), moved)
