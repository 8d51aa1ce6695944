"""Handlers of the scan family: selective state-space scans (Mamba, Mamba2/SSD), linear
attention with a gated delta rule (Qwen3-Next, Kimi, OLMo-hybrid, ...), RWKV's WKV and xLSTM's
mLSTM — recurrences that are *linear in their value* once the quantities they compute from
the input to steer themselves are fixed.

**The rule: the recurrence's parameters are constants** (MambaLRP, Jafari et al., NeurIPS
2024, Sec. 4). A selective SSM computes, per token ``t``,

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t B_t) x_t,        y_t = C_t · h_t + D x_t,

where ``Δ_t = softplus(W_Δ x_t)``, ``B_t = W_B x_t`` and ``C_t = W_C x_t`` are computed from
the input. Gradient × Input through this recurrence does not conserve (``exp``, the products
``Δ B x`` and ``C h`` are not linear), and the plain gradient splits relevance over ``x`` and
the parameters in proportions that have nothing to do with how ``x`` is carried to ``y``.
MambaLRP *detaches* ``A``, ``B``, ``C`` and ``Δ``: given them, ``y`` is a linear function of
the value sequence ``x``, ``y = M(θ) x``, and LRP-0 on a linear map is its gradient × input,
which conserves exactly (``Σ_s R_{x_s} = Σ_t R_{y_t}`` without a bias; ``D x`` is linear
too). The parameters take no relevance: their influence is in *how* relevance is routed
(the decay and the read-out weigh each past token), as a gate's is (signal-take-all, Arras
et al. 2017). The same holds for every recurrence of this family:

* Mamba2 / SSD (Dao & Gu 2024): ``exp`` of segment sums (``cumsum``) of ``Δ A`` are the
  decays, ``C Bᵀ`` the mixing weights; the value is ``x``;
* gated delta rule / linear attention (Yang et al. 2024; Qwen3-Next, Qwen3.5, OLMo-hybrid,
  Lara, Kimi delta attention, Bailing): ``S_t = S_{t-1}(exp(g_t)(I − β_t k_t k_tᵀ)) + β_t v_t
  k_tᵀ``, ``o_t = S_t q_t``: queries, keys, log-decays ``g`` and the step sizes ``β`` are the
  parameters, the value ``v`` the signal — the chunked form solves a unit lower-triangular
  system built from keys and decays (``linalg.solve_triangular``), linear in its right-hand
  side once the system is fixed; this is CP-LRP's treatment of attention (Ali et al. 2022:
  the weights are constants, relevance flows through the values);
* RWKV's WKV (Peng et al. 2023): ``Σ_s e^{w(t-s)+k_s} v_s / Σ_s e^{w(t-s)+k_s}``: keys and
  decays are parameters, the quotient is linear in ``v``;
* xLSTM's mLSTM (Beck et al. 2024): queries, keys, input and forget gates are parameters,
  the normaliser ``max(|qᵀn|, e^{-m})`` a constant of them.

How the engine finds them: the PyTorch reference implementations Hugging Face falls back to
when ``mamba_ssm``/``flash-linear-attention`` kernels are absent take the parameters as named
arguments with the kernels' own names (``selective_scan_fn(u, delta, A, B, C, D, z, ...)``,
``chunk_gated_delta_rule(q, k, v, g, beta)``). :data:`KERNELS` lists these functions and
which arguments are parameters; while one runs, each op it calls gets those arguments
detached (a view: nothing of the model changes), so everything computed from them is a
constant and the rest of the engine sees a linear recurrence (products with one activation
factor, sums, index writes). What relevance reaches the value stays on the value path.

Around the scans, four more ops:

* a decay or gate computed *outside* a kernel from gates only (RecurrentGemma's RG-LRU:
  ``a = exp(−8 σ(W x) softplus(Λ))``, ``sqrt(1 − a²)``): ``exp``, ``log``, ``sqrt``, ... of a
  gate are gates, held constant the same way (:data:`GATE_FUNCTIONS`), inside a recurrent
  block only (its class name says so: ``…Rglru``, ``…SSM``, ``…Mamba…``); elsewhere a
  sigmoid's output may be the stream itself, and its functions are activations;
* Mamba's discretised decay ``exp(A Δ)`` with ``Δ = softplus(·)`` and a constant ``A``,
  written outside a kernel (Doge's dynamic attention mask ``exp(A softplus(W v))``): held
  constant, as MambaLRP holds ``Δ`` and ``A`` (an additive mask then is a constant term of
  the scores, like ALiBi's bias);
* ``cumsum`` of an activation is linear (a lower-triangular matrix of ones): its gradient is
  LRP-0;
* ``linalg.solve_triangular(A, B)`` with a constant system ``A`` is linear in ``B``
  (``A⁻¹ B``); with ``A`` computed from the input it stays refused.

The multiplicative gate of a Mamba block, ``y ⊙ silu(z)``, is a product of two activations:
the layer family's product rule, uniform (the "half" rule MambaLRP proposes: ``R/2`` to
each factor); its gated RMSNorm takes the norm rule (``…RMSNormGated``, norms family).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
import torch.overrides
from torch import Tensor, nn

from ..paths import on_path

if TYPE_CHECKING:
    from ..session import Session

Handler = Callable[..., Any]

#: functions that run a linear recurrence, by the name of their code object, with the
#: names of their arguments that are the recurrence's parameters (held constant while they
#: run); the other tensor arguments are the value (and an optional initial state)
_MAMBA = frozenset({"dt", "delta", "A", "B", "C", "dt_bias", "delta_bias"})
_DELTA_RULE = frozenset({"query", "key", "g", "beta"})
_MLSTM = frozenset({"query", "key", "igate", "fgate"})
KERNELS: dict[str, frozenset[str]] = {
    # mamba_ssm: selective_scan_fn, selective_state_update, mamba_chunk_scan_combined, as
    # transformers writes them (mamba, falcon_mamba, jamba, zamba; mamba2, bamba, falcon_h1,
    # granitemoehybrid, nemotron_h, zamba2), and mamba_ssm's own reference
    "mamba_selective_scan": _MAMBA,
    "mamba_selective_state_update": _MAMBA,
    "mamba2_selective_state_update": _MAMBA,
    "mamba2_chunk_scan": _MAMBA,
    "selective_scan_ref": _MAMBA,
    # flash-linear-attention: chunk/fused_recurrent gated delta rule and Kimi delta attention
    "torch_chunk_gated_delta_rule": _DELTA_RULE,
    "torch_recurrent_gated_delta_rule": _DELTA_RULE,
    "chunk_kimi_delta_attention": _DELTA_RULE,
    "recurrent_kimi_delta_attention": _DELTA_RULE,
    # RWKV's WKV (CPU path)
    "rwkv_linear_attention_cpu": frozenset({"time_decay", "time_first", "key"}),
    # xLSTM's mLSTM kernels
    "mlstm_chunkwise_native_autograd": _MLSTM,
    "mlstm_recurrent_sequence_native": _MLSTM,
    "mlstm_recurrent_step_native": _MLSTM,
    "mlstm_chunkwise_fw": _MLSTM,
    "wrap_chunkwise_pad_zeros": _MLSTM,
    "wrap_chunkwise_arbitrary_sequence_length": _MLSTM,
}
#: how far above an op call a kernel's frame is looked for (helpers inside kernels: a
#: ``segment_sum``, an ``l2norm``, a list comprehension, ``F.pad``'s Python wrapper)
_DEPTH = 8
#: elementwise functions whose output is a gate (held constant) when their input is one
GATE_FUNCTIONS = frozenset({
    "exp", "exp2", "expm1", "log", "log1p", "log2", "sqrt", "rsqrt", "reciprocal",
    "softplus", "logsigmoid", "sigmoid", "tanh", "cumsum", "cumprod", "pow", "__pow__",
    "__rpow__", "square", "abs", "neg", "__neg__", "__rsub__", "sub", "__sub__",
})


def _module_call_codes() -> frozenset[CodeType]:
    call = nn.Module._call_impl.__code__
    inner = [c for c in call.co_consts if isinstance(c, CodeType) and c.co_name == "inner"]
    return frozenset({call, nn.Module._wrapped_call_impl.__code__, *inner})


#: a module call: the kernels run inside a module's forward, never around one, so the search
#: for a kernel's frame stops there
_MODULE_CALLS = _module_call_codes()
#: code run by a module call directly (``forward`` methods): no kernel above their ops
_FORWARDS: set[CodeType] = set()
#: files of torch's Python wrappers between a functional call and the interceptor
_TORCH_WRAPPERS = frozenset({torch.overrides.__file__, F.__file__})


def _kernel_frame() -> FrameType | None:
    """The innermost frame of a function of :data:`KERNELS` above the current op call."""
    caller: FrameType | None = sys._getframe(3)  # _kernel_frame <- prepare <- interceptor
    # past torch's own Python wrappers (F.relu -> handle_torch_function) to the op's caller
    while caller is not None and caller.f_code.co_filename in _TORCH_WRAPPERS:
        caller = caller.f_back
    if caller is None or caller.f_code in _FORWARDS:  # most ops: called by a module's forward
        return None
    parent = caller.f_back  # or by a helper of one (``Conv2d._conv_forward``) that is no kernel
    if parent is not None and parent.f_code in _FORWARDS and caller.f_code.co_name not in KERNELS:
        return None
    frame: FrameType | None = caller
    for _ in range(_DEPTH):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_name in KERNELS:
            return frame
        parent = frame.f_back
        if parent is not None and parent.f_code in _MODULE_CALLS:
            _FORWARDS.add(code)
            return None
        frame = parent
    return None


def _parameters(frame: FrameType) -> frozenset[int]:
    """The ids of the tensors ``frame``'s kernel holds under its parameters' names now.

    Read at every op (a frame cannot be remembered without keeping its tensors alive): when
    a kernel rebinds a name (``dt = softplus(dt)``, ``B = B.float()``) the new tensor is
    computed from the held ones, a constant already; no kernel of :data:`KERNELS` rebinds a
    parameter's name to anything computed from its value."""
    code = frame.f_code
    names = KERNELS[code.co_name]
    values = frame.f_locals
    held = {id(v) for n in names if isinstance(v := values.get(n), Tensor)}
    # a tensor passed as the value too (``key=value``) stays the value: it is not held
    arguments = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    held -= {id(v) for n in arguments if n not in names and isinstance(v := values.get(n), Tensor)}
    return frozenset(held)


def _hold(value: Any, held: Callable[[Tensor], bool]) -> Any:
    """``value`` with the tensors that ``held`` picks detached (also inside a list/tuple)."""
    if isinstance(value, Tensor):
        return value.detach() if held(value) else value
    if isinstance(value, list | tuple) and any(isinstance(v, Tensor) for v in value):
        return type(value)(_hold(v, held) for v in value)
    return value


def _any_on_path(args: tuple[Any, ...]) -> bool:
    for value in args:
        if on_path(value):
            return True
        if isinstance(value, list | tuple) and any(on_path(v) for v in value):
            return True
    return False


def _path_tensors(args: tuple[Any, ...]) -> list[Tensor]:
    out: list[Tensor] = []
    for value in args:
        for v in value if isinstance(value, list | tuple) else (value,):
            if on_path(v):
                out.append(v)
    return out


#: products: ``A · Δ`` with ``A`` a constant and ``Δ = softplus(·)`` is a log-decay
_PRODUCTS = frozenset({"mul", "__mul__", "__rmul__", "multiply"})


def _mark_all(session: Session, label: str) -> Callable[[Any], None]:
    def mark(out: Any) -> None:
        if on_path(out):
            session.mark(label, out)
    return mark


def _discretisation(session: Session, name: str, args: tuple[Any, ...]
                    ) -> tuple[tuple[Any, ...], Callable[[Any], None] | None]:
    """Mamba's zero-order-hold decay ``exp(A Δ)`` written outside a kernel (Doge's dynamic
    attention mask ``exp(A softplus(W v))``): the step ``Δ = softplus(·)``, ``A Δ`` with a
    constant ``A``, and its ``exp`` is a constant of what it steers (MambaLRP's ``Δ``, ``A``)."""
    if name == "softplus":
        return args, _mark_all(session, "scan_step")
    path = [t for t in _path_tensors(args) if not isinstance(t, nn.Parameter)]
    if name in _PRODUCTS and len(path) == 1 and session.is_marked("scan_step", path[0]):
        return args, _mark_all(session, "scan_log_decay")
    if name == "exp" and len(path) == 1 and session.is_marked("scan_log_decay", path[0]):
        return tuple(_hold(v, lambda t: t is path[0]) for v in args), None
    return args, None


#: modules whose gates steer a recurrence (RecurrentGemma's ``…Rglru``, linear recurrent
#: units, state-space and Mamba blocks), by class name
_RECURRENT_BLOCK = re.compile(r"rglru|recurrent|lru|ssm|mamba|scan", re.IGNORECASE)


def _in_recurrent_block(session: Session) -> bool:
    """Whether the op runs inside a recurrent block. Only there is a function of gates a
    gate (a decay steering the recurrence); elsewhere a sigmoid's output may be the stream
    itself (``tanh(sigmoid(x))`` as activations), and holding its functions constant would
    cut the relevance of everything after them."""
    return any(module is not None and _RECURRENT_BLOCK.search(type(module).__name__)
               for _, module, _ in session.stack)


class _AllBut:
    """Every op name but ``excluded`` (``name in _AllBut(...)``)."""

    def __init__(self, excluded: frozenset[str]) -> None:
        self.excluded = excluded

    def __contains__(self, name: object) -> bool:
        return name not in self.excluded


#: :func:`prepare` looks at every op but the layers no scan kernel applies to its
#: parameters (a convolution, normalisation, pooling, dropout or lookup runs in a block's
#: forward around the kernel, on the value path): their calls, most of a CNN's, skip the
#: kernel-frame search (≈ 1 ms per ResNet-50 call)
PREPARE_NAMES = _AllBut(frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "batch_norm", "instance_norm", "group_norm", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "dropout", "dropout1d", "dropout2d", "dropout3d", "embedding"}))


def prepare(session: Session, name: str, args: tuple[Any, ...]
            ) -> tuple[tuple[Any, ...], Callable[[Any], None] | None]:
    """Before a call: inside a scan kernel its parameters are detached; a gate function of
    gates alone, and a decay ``exp(A softplus(·))``, are computed from them detached (a
    constant)."""
    if not _any_on_path(args):
        return args, None
    frame = _kernel_frame()
    if frame is not None:
        parameters = _parameters(frame)
        if parameters:
            args = tuple(_hold(v, lambda t: id(t) in parameters) for v in args)
    if name in GATE_FUNCTIONS and _in_recurrent_block(session):
        path = _path_tensors(args)
        if path and all(session.is_gate(t) for t in path):
            return tuple(_hold(v, session.is_gate) for v in args), None
    if name == "softplus" or name == "exp" or name in _PRODUCTS:
        return _discretisation(session, name, args)
    return args, None


def _cumsum(session: Session, func: Callable[..., Any], name: str,
            args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``cumsum`` of an activation: linear (a triangular matrix of ones), its gradient is
    LRP-0."""
    return func(*args, **kwargs)


def _solve_triangular(session: Session, func: Callable[..., Any], name: str,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``linalg.solve_triangular(A, B)``: ``A⁻¹ B``, linear in ``B`` when the system ``A`` is
    a constant (a scan kernel's, built from its parameters); else left to the graph check."""
    system = args[0] if args else kwargs.get("input", kwargs.get("A"))
    out = func(*args, **kwargs)
    return session.unvouched(out) if on_path(system) else out


HANDLERS: dict[str, Handler] = {
    "cumsum": _cumsum,
    "linalg.solve_triangular": _solve_triangular,
}

__all__ = ["HANDLERS", "prepare", "PREPARE_NAMES", "KERNELS", "GATE_FUNCTIONS"]
