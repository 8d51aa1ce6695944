"""Normalisations beyond ``F.layer_norm``/``F.rms_norm``: GroupNorm and normalisations written
by hand, all of op kind ``layer_norm`` (so :class:`~relprop.rules.NormIdentity`, AttnLRP's
identity rule on the normalisation, applies to them).

* ``F.group_norm`` (PoolFormer, BiT): one op, statistics per group of channels.
* Modules that compute a LayerNorm or RMSNorm from elementary ops (``mean``, ``pow``,
  ``sqrt``/``rsqrt``, a division by the norm): DeBERTa's and Cohere's ``…LayerNorm``,
  I-BERT's ``IntLayerNorm``. Recognised by their class name (``…LayerNorm``) *and* by what
  they compute: the module's output is compared with ``F.layer_norm`` (then RMSNorm) of its
  input, with the module's ``weight``, ``bias`` and ``eps``; a module that computes something
  else keeps its ops, one by one, for the graph check.
* Gated RMSNorm (``…RMSNormGated``, Mamba2: ``w ⊙ rms-normalised(x ⊙ silu(gate))``): one op on
  ``x``; the gate is held constant and takes no relevance (signal-take-all).
* Global response normalisation (``…GRN``, ``GlobalResponseNorm``, ConvNeXt V2:
  ``x + γ (x ⊙ N(x)) + β``): the multiplier ``1 + γ N(x)`` held constant, checked against the
  module's output like the LayerNorms.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...rules.ops import NormOp
from ..apply import UnaryFunction, again_by_call
from ..paths import on_path

if TYPE_CHECKING:
    from ..session import Session


def group_norm(session: Session, func: Callable[..., Any], name: str,
               args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``F.group_norm(input, num_groups, weight, bias, eps)``: one op of kind ``layer_norm``."""
    bound = dict(zip(("input", "num_groups", "weight", "bias", "eps"), args))
    bound.update(kwargs)
    a = bound.get("input")
    if not on_path(a) or on_path(bound.get("weight")) or on_path(bound.get("bias")):
        return func(*args, **kwargs)
    assert isinstance(a, Tensor)
    groups, eps = int(bound["num_groups"]), float(bound.get("eps", 1e-5))
    weight, bias = bound.get("weight"), bound.get("bias")
    rest = {k: v for k, v in kwargs.items() if k != "input"}
    plain: Callable[[Tensor], Tensor] = lambda t: func(t, *args[1:], **rest)  # noqa: E731
    op = NormOp("group", plain, weight, eps=eps, groups=groups, bias=bias is not None)
    compute = plain
    if a.dtype in (torch.float32, torch.float64) and a.dim() >= 2:
        # the kernel F.group_norm runs, also returning 1/σ per (sample, group)
        batch, channels = a.shape[0], a.shape[1]

        def compute(t: Tensor) -> Tensor:
            z, _, scale = torch.native_group_norm(t, weight, bias, batch, channels,
                                                  t[0, 0].numel(), groups, eps)
            op.scale = scale
            return z
    call = session.new_call("layer_norm", name)
    return UnaryFunction.apply(a, op, call, session, compute)


HANDLERS = {"group_norm": group_norm}

# -- normalisations written by hand, taken as one op -------------------------------------
_LAYER_NORM = re.compile(r"LayerNorm$")
_GATED = re.compile(r"RMSNormGated$")
_RESPONSE = re.compile(r"(GRN|GlobalResponseNorm)$")
#: the normalisations PyTorch ships call functional ops that have handlers
_TORCH_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_EPS_NAMES = ("eps", "variance_epsilon", "epsilon", "layer_norm_eps")


def module_kind(module: nn.Module) -> str | None:
    """``"layer"`` for ``…LayerNorm`` modules written by hand (checked against the maths in
    :func:`wrap_module_output`), ``"gated"`` for gated RMSNorms, ``"response"`` for global
    response normalisations; ``None`` otherwise."""
    cls = type(module)
    if cls.__module__.startswith("torch.") or isinstance(module, _TORCH_NORMS):
        return None
    name = cls.__name__
    if _GATED.search(name):
        return "gated"
    if _RESPONSE.search(name) and next(module.children(), None) is None:
        return "response"
    if _LAYER_NORM.search(name) and isinstance(getattr(module, "weight", None), Tensor):
        return "layer"
    return None


def _first(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def _close(reference: Tensor, out: Tensor) -> bool:
    """Whether ``out`` is ``reference`` up to the rounding of the dtypes it was computed in
    (the modules compute in float32 even in a float64 model)."""
    if reference.shape != out.shape:
        return False
    tolerance = max(1e-4, 64 * torch.finfo(out.dtype).eps)
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return bool(torch.allclose(out.double(), reference, rtol=tolerance,
                               atol=tolerance * max(scale, 1e-12)))


def _parameter(module: nn.Module, name: str) -> Tensor | None:
    value = getattr(module, name, None)
    return value.detach() if isinstance(value, Tensor) and value.is_floating_point() else None


def _layer_op(module: nn.Module, a: Tensor, out: Tensor,
              forward: Callable[[Tensor], Tensor]) -> NormOp | None:
    """The LayerNorm (or RMSNorm) over the last dim that the module computes, or ``None``."""
    weight, bias = _parameter(module, "weight"), _parameter(module, "bias")
    if weight is None or weight.shape != a.shape[-1:] or \
            (bias is not None and bias.shape != a.shape[-1:]):
        return None
    eps = next((float(v) for v in (getattr(module, n, None) for n in _EPS_NAMES)
                if isinstance(v, int | float)), 1e-5)
    x = a.detach().double()
    shift = 0.0 if bias is None else bias.double()
    for centred in (True, False):
        second = x.var(dim=-1, unbiased=False, keepdim=True) if centred \
            else x.pow(2).mean(dim=-1, keepdim=True)
        scale = torch.rsqrt(second + eps)
        centre = x - x.mean(dim=-1, keepdim=True) if centred else x
        if _close(weight.double() * centre * scale + shift, out):
            return NormOp("layer" if centred else "rms", forward, weight.to(a.dtype), 1, eps,
                          scale.to(a.dtype), bias=bias is not None)
    return None


def _response_op(module: nn.Module, a: Tensor, out: Tensor,
                 forward: Callable[[Tensor], Tensor]) -> NormOp | None:
    """Global response normalisation ``x + γ (x ⊙ N(x)) + β``, channels last (Hugging Face,
    ``(B, H, W, C)``) or first (``(B, C, H, W)``); ``None`` if the module is neither."""
    weight, bias = _parameter(module, "weight"), _parameter(module, "bias")
    eps = getattr(module, "eps", 1e-6)
    if weight is None or a.dim() != 4 or not isinstance(eps, int | float):
        return None
    x = a.detach().double()
    for spatial, channel in (((1, 2), -1), ((2, 3), 1)):
        shape = [1, 1, 1, 1]
        shape[channel] = -1
        if weight.numel() != a.shape[channel]:
            continue
        gamma = weight.double().reshape(shape)
        beta = 0.0 if bias is None else bias.double().reshape(shape)
        norms = torch.linalg.vector_norm(x, ord=2, dim=spatial, keepdim=True)
        ratio = norms / (norms.mean(dim=channel, keepdim=True) + eps)
        multiplier = 1.0 + gamma * ratio
        if _close(multiplier * x + beta, out):
            return NormOp("scaled", forward, multiplier=multiplier.to(a.dtype),
                          bias=bias is not None)
    return None


def wrap_module_output(session: Session, module: nn.Module, kind: str, args: Any,
                       output: Any) -> Any:
    """The output of a normalisation module as one op of kind ``layer_norm``; ``None`` if the
    module does not compute the normalisation its name suggests (its ops then run one by one).
    A tuple output (I-BERT's ``(x, scaling_factor)``) keeps its other items."""
    a = args[0] if isinstance(args, tuple) and args else None
    out = _first(output)
    if not on_path(a) or out is None:
        return output
    assert isinstance(a, Tensor)
    if out.shape != a.shape:
        return None
    rest = args[1:]

    def forward(t: Tensor) -> Tensor:
        result = _first(module.forward(t, *rest))
        assert result is not None
        return result

    with torch.no_grad():
        if kind == "gated":
            op: NormOp | None = NormOp("module", forward)
        elif kind == "response":
            op = _response_op(module, a, out, forward)
        else:
            op = _layer_op(module, a, out, forward)
    if op is None:
        return None
    value = out.detach()
    call = session.new_call("layer_norm", type(module).__name__)
    again = again_by_call(module, args) if isinstance(output, Tensor) else None
    wrapped = UnaryFunction.apply(a, op, call, session, lambda _: value, again)
    session.approved.add(wrapped.grad_fn)
    session.node_info[wrapped.grad_fn] = (session.where()[0] or "<model>", type(module).__name__)
    return wrapped if isinstance(output, Tensor) else (wrapped, *output[1:])
