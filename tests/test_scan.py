"""The scan family (:mod:`relprop._engine.handlers.scan`) against float64 oracles.

The rule (MambaLRP, Jafari et al. 2024): a recurrence's parameters computed from the input
(Mamba's ``Δ, B, C``; a delta rule's ``q, k, g, β``; decays made from gates) are constants,
so the recurrence is linear in its value and LRP-0 through it is Gradient × Input. The
oracles are written here with autograd alone, on the model's maths with the MambaLRP
modifications spelled out as detaches:

* the parameters ``.detach()``ed;
* SiLU ``x σ(x)`` with ``σ(x)`` detached (the identity rule);
* the gate product ``y ⊙ silu(z)`` as ``½ y ⊙ silu(z)ᵀ + ½ yᵀ ⊙ silu(z)`` (``ᵀ``: detached;
  the uniform "half" rule: each factor's Gradient × Input is half the product);

then relevance = input × gradient of the explained logit, which is LRP-0 of the modified
network (bias-free, ε = 0: every remaining op is linear or the identity rule). relprop runs
the *unmodified* model under ``cp_lrp(epsilon=0)``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop.composites import attnlrp, cp_lrp

LRP0 = cp_lrp(epsilon=0.0)


def _x(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ Mamba's selective scan
def mamba_selective_scan(hidden_states: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Tensor | None = None, z: Tensor | None = None,
                         delta_softplus: bool = False) -> Tensor:
    """The selective scan, written as transformers' reference of ``selective_scan_fn``
    (same name and argument names): ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t``,
    ``y_t = C_t h_t + D x_t``, gated by ``silu(z)``. Shapes ``(b, d, L)``, ``B, C: (b, N, L)``.
    """
    if delta_softplus:
        dt = F.softplus(dt)
    B, C = B.transpose(1, 2), C.transpose(1, 2)
    decay = torch.exp(A[None, :, None, :] * dt[..., None])
    update = dt[..., None] * B[:, None] * hidden_states[..., None]
    state = hidden_states.new_zeros(hidden_states.shape[0], hidden_states.shape[1], A.shape[1])
    outputs = []
    for t in range(hidden_states.shape[-1]):
        state = decay[:, :, t] * state + update[:, :, t]
        outputs.append(torch.matmul(state, C[:, t, :].unsqueeze(-1))[..., 0])
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + hidden_states * D[None, :, None]
    if z is not None:
        y = y * F.silu(z)
    return y


class TinyMamba(nn.Module):
    """A Mamba block (Gu & Dao 2023) on a ``(b, L, d)`` stream, bias-free, and a linear
    read-out of its last token: in-projection to ``x, z``, a causal depthwise convolution
    and SiLU on ``x``, ``Δ, B, C`` projected from ``x``, the scan gated by ``silu(z)``."""

    def __init__(self, d: int = 6, inner: int = 8, state: int = 4, rank: int = 3,
                 classes: int = 3, modified: str = "") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner, self.state, self.rank = inner, state, rank
        self.in_proj = nn.Linear(d, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, 3, groups=inner, padding=2, bias=False)
        self.x_proj = nn.Linear(inner, rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(rank, inner, bias=False)
        # slow decays (|A| from 0.05 to 0.2): the state remembers the whole sequence
        self.A_log = nn.Parameter(torch.log(torch.linspace(0.05, 0.2, state)).repeat(inner, 1))
        self.D = nn.Parameter(torch.rand(inner))
        self.out_proj = nn.Linear(inner, d, bias=False)
        self.head = nn.Linear(d, classes, bias=False)
        #: "" the model; "mambalrp": the oracle's detaches; "products": only SiLU and the
        #: gate modified (Δ, B, C left as products: what the test must tell apart)
        self.modified = modified
        self.double().eval()

    def _silu(self, t: Tensor) -> Tensor:
        return t * torch.sigmoid(t).detach() if self.modified else F.silu(t)

    def forward(self, h: Tensor) -> Tensor:
        length = h.shape[1]
        x, z = self.in_proj(h).transpose(1, 2).chunk(2, dim=1)
        x = self._silu(self.conv(x)[..., :length])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split(
            [self.rank, self.state, self.state], dim=-1)
        dt = self.dt_proj(dt).transpose(1, 2)
        A = -torch.exp(self.A_log)
        if not self.modified:
            y = mamba_selective_scan(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D, z,
                                     delta_softplus=True)
        else:
            y = self._oracle_scan(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), z)
        return self.head(self.out_proj(y.transpose(1, 2))[:, -1])

    def _oracle_scan(self, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     z: Tensor) -> Tensor:
        if self.modified == "mambalrp":
            dt, B, C = dt.detach(), B.detach(), C.detach()
        dt = F.softplus(dt)
        decay = torch.exp(A[None, :, None, :] * dt[..., None]).detach()
        update = dt[..., None] * B.transpose(1, 2)[:, None] * x[..., None]
        state = x.new_zeros(x.shape[0], x.shape[1], A.shape[1])
        outputs = []
        for t in range(x.shape[-1]):
            state = decay[:, :, t] * state + update[:, :, t]
            outputs.append((state * C.transpose(1, 2)[:, None, t, :]).sum(-1))
        y = torch.stack(outputs, dim=-1) + x * self.D[None, :, None]
        gate = self._silu(z)
        return 0.5 * y * gate.detach() + 0.5 * y.detach() * gate


def _gradient_x_input(model: nn.Module, x: Tensor, target: int) -> Tensor:
    x = x.clone().requires_grad_(True)
    model(x)[:, target].sum().backward()
    assert x.grad is not None
    return (x * x.grad).detach()


def _oracle(make: Callable[[str], nn.Module], x: Tensor, target: int,
            modified: str = "mambalrp") -> Tensor:
    return _gradient_x_input(make(modified), x, target)


def test_mamba_block_is_mambalrp() -> None:
    x = _x(2, 7, 6)
    model = TinyMamba()
    expl = relprop.explain(model, x, 1, LRP0)
    expected = _oracle(lambda m: TinyMamba(modified=m), x, 1)
    assert torch.allclose(expl.relevance, expected, rtol=1e-9, atol=1e-12)
    # conservation: the block is bias-free and every op linear given its parameters
    assert torch.allclose(expl.relevance.sum((1, 2)), expl.explained, rtol=1e-10, atol=1e-12)
    # relevance reaches tokens out of the convolution's reach (the last 3) through the scan:
    # only the state carries it there
    assert bool(expl.relevance[:, :-3].abs().sum() > 1e-3 * expl.relevance.abs().sum())


def test_mamba_parameters_take_no_relevance() -> None:
    """Δ, B, C held constant is not the same map as Δ, B, C taking the product rule: the
    oracle tells the two apart, and relprop's map is the MambaLRP one."""
    x = _x(2, 7, 6, seed=1)
    expl = relprop.explain(TinyMamba(), x, 0, LRP0)
    as_products = _oracle(lambda m: TinyMamba(modified=m), x, 0, "products")
    assert not torch.allclose(expl.relevance, as_products, rtol=1e-2, atol=1e-6)


def test_mamba_explanation_leaves_the_model_and_output_alone() -> None:
    x = _x(2, 5, 6, seed=2)
    model = TinyMamba()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(x)
    expl = relprop.explain(model, x, 2, attnlrp(), verify=True)
    assert torch.allclose(expl.output, plain, rtol=1e-12, atol=1e-15)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------- gated delta rule (linear attention)
def _recurrent_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> Tensor:
    """The gated delta rule token by token (Yang et al. 2024), float64, ``(b, L, h, d)``:
    ``S ← exp(g) S``, ``S ← S + k (β (v − kᵀ S))ᵀ``, ``o = (q/√d)ᵀ S``, with ``q, k``
    L2-normalised."""
    q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
    q = q * q.shape[-1] ** -0.5
    b, length, heads, dk = k.shape
    state = v.new_zeros(b, heads, dk, v.shape[-1])
    outputs = []
    for t in range(length):
        state = state * g[:, t, :, None, None].exp()
        memory = (state * k[:, t, :, :, None]).sum(-2)
        delta = (v[:, t] - memory) * beta[:, t, :, None]
        state = state + k[:, t, :, :, None] * delta[:, :, None, :]
        outputs.append((state * q[:, t, :, :, None]).sum(-2))
    return torch.stack(outputs, dim=1)


class TinyGatedDeltaNet(nn.Module):
    """Qwen3-Next's linear attention, bias-free: ``q, k, v`` projections, ``g = −softplus``,
    ``β = σ``, the chunked kernel transformers ships (``torch_chunk_gated_delta_rule``: cumsum
    and exp of log-decays, a unit lower-triangular solve per chunk, a scan over chunks),
    then an output projection of the last token."""

    def __init__(self, d: int = 8, heads: int = 2, head_dim: int = 4, classes: int = 3,
                 oracle: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads, self.head_dim, self.oracle = heads, head_dim, oracle
        self.q = nn.Linear(d, heads * head_dim, bias=False)
        self.k = nn.Linear(d, heads * head_dim, bias=False)
        self.v = nn.Linear(d, heads * head_dim, bias=False)
        self.a = nn.Linear(d, heads, bias=False)
        self.b = nn.Linear(d, heads, bias=False)
        self.out = nn.Linear(heads * head_dim, classes, bias=False)
        self.double().eval()

    def forward(self, x: Tensor) -> Tensor:
        shape = (*x.shape[:2], self.heads, self.head_dim)
        q, k, v = (p(x).view(shape) for p in (self.q, self.k, self.v))
        g, beta = -F.softplus(self.a(x)), torch.sigmoid(self.b(x))
        if self.oracle:
            o = _recurrent_delta_rule(q.detach(), k.detach(), v, g.detach(), beta.detach())
        else:
            from transformers.models.qwen3_next.modeling_qwen3_next import (
                torch_chunk_gated_delta_rule,
            )

            o, _ = torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=4,
                                                use_qk_l2norm_in_kernel=True)
        return self.out(o.reshape(*x.shape[:2], -1)[:, -1])


def test_gated_delta_rule_is_linear_in_the_values() -> None:
    pytest.importorskip("transformers")
    x = _x(2, 10, 8, seed=3)  # 10 tokens: three chunks of 4, the last one padded
    expl = relprop.explain(TinyGatedDeltaNet(), x, 1, LRP0)
    expected = _gradient_x_input(TinyGatedDeltaNet(oracle=True), x, 1)
    # the kernel computes in float32 (as FLA does): agreement to float32's precision
    scale = float(expected.abs().max())
    assert torch.allclose(expl.relevance, expected, rtol=1e-4, atol=1e-5 * scale)
    assert torch.allclose(expl.relevance.sum((1, 2)), expl.explained, rtol=1e-5)


# ---------------------------------------------------------- decays made of gates (RG-LRU)
class TinyRGLRU(nn.Module):
    """RecurrentGemma's RG-LRU, bias-free: ``a_t = exp(−8 r_t softplus(Λ))`` with the gate
    ``r_t = σ(W_r x_t)``, ``h_t = a_t h_{t-1} + sqrt(1 − a_t²) (i_t ⊙ x_t)``, ``i_t = σ(W_i
    x_t)``: the decay and its normaliser are functions of gates (gates), the input gate a
    sigmoid gate — relevance follows ``x`` alone."""

    def __init__(self, d: int = 5, classes: int = 2, oracle: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.oracle = oracle
        self.w_r = nn.Linear(d, d, bias=False)
        self.w_i = nn.Linear(d, d, bias=False)
        self.w_x = nn.Linear(d, d, bias=False)
        self.param = nn.Parameter(torch.randn(d))
        self.out = nn.Linear(d, classes, bias=False)
        self.double().eval()

    def forward(self, x: Tensor) -> Tensor:
        r, i = torch.sigmoid(self.w_r(x)), torch.sigmoid(self.w_i(x))
        if self.oracle:
            r, i = r.detach(), i.detach()
        log_a = -8.0 * r * F.softplus(self.param)
        a = torch.exp(log_a)
        value = self.w_x(x) * i * torch.sqrt(1 - torch.exp(2 * log_a))
        h = torch.zeros_like(value[:, 0])
        for t in range(x.shape[1]):
            h = a[:, t] * h + value[:, t]
        return self.out(h)


def test_decays_made_of_gates_are_gates() -> None:
    x = _x(3, 6, 5, seed=4)
    expl = relprop.explain(TinyRGLRU(), x, 1, LRP0)
    expected = _gradient_x_input(TinyRGLRU(oracle=True), x, 1)
    assert torch.allclose(expl.relevance, expected, rtol=1e-9, atol=1e-12)
    assert torch.allclose(expl.relevance.sum((1, 2)), expl.explained, rtol=1e-10)


# ------------------------------------------------ a decay exp(A softplus(W x)) outside a kernel
class DynamicDecay(nn.Module):
    """Mamba's discretised decay ``exp(A Δ)``, ``Δ = softplus(W_Δ x)``, written in a module
    (as Doge's dynamic attention mask is): it weighs the value ``W_v x`` and the output sums
    over tokens — relevance goes to the value path alone."""

    def __init__(self, d: int = 5, oracle: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.oracle = oracle
        self.dt = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.A = nn.Parameter(-torch.rand(d))
        self.out = nn.Linear(d, 2, bias=False)
        self.double().eval()

    def forward(self, x: Tensor) -> Tensor:
        step = F.softplus(self.dt(x))
        decay = torch.exp(self.A * (step.detach() if self.oracle else step))
        return self.out((decay * self.value(x)).sum(1))


def test_a_discretised_decay_is_a_constant() -> None:
    x = _x(2, 4, 5, seed=6)
    expl = relprop.explain(DynamicDecay(), x, 0, LRP0)
    expected = _gradient_x_input(DynamicDecay(oracle=True), x, 0)
    assert torch.allclose(expl.relevance, expected, rtol=1e-10, atol=1e-13)
    assert torch.allclose(expl.relevance.sum((1, 2)), expl.explained, rtol=1e-10)


# ------------------------------------------------------------ what stays refused
class ExpOfSignal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3, bias=False).double()
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(self.lin(x)).cumsum(-1)


class SolveWithInputSystem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        system = torch.tril(x @ x.transpose(-1, -2)) + 4 * torch.eye(x.shape[1],
                                                                      dtype=x.dtype)
        return torch.linalg.solve_triangular(system, x, upper=False).sum(1)


def test_exp_of_a_signal_outside_a_scan_is_refused_by_name() -> None:
    with pytest.raises(relprop.UnsupportedOperationError, match="'exp'"):
        relprop.explain(ExpOfSignal(), _x(2, 4), 0, LRP0)


def test_triangular_solve_with_a_system_from_the_input_is_refused_by_name() -> None:
    with pytest.raises(relprop.UnsupportedOperationError, match="solve_triangular"):
        relprop.explain(SolveWithInputSystem(), _x(2, 3, 3), 0, LRP0)


def test_cumsum_of_an_activation_is_linear() -> None:
    model = _CumsumNet(nn.Linear(4, 5, bias=False).double())
    x = _x(2, 4, seed=5)
    expl = relprop.explain(model, x, 3, LRP0)
    assert torch.allclose(expl.relevance, _gradient_x_input(model, x, 3), rtol=1e-12,
                          atol=1e-14)


class _CumsumNet(nn.Module):
    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x).cumsum(-1)


class TiedKeyValue(nn.Module):
    """RWKV's WKV called with the same tensor as key (a parameter) and value."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(3, 3, bias=False)
        self.decay, self.first = nn.Parameter(torch.rand(3)), nn.Parameter(torch.rand(3))
        self.double().eval()

    def forward(self, x: Tensor) -> Tensor:
        from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

        kv = self.proj(x)
        out, _ = rwkv_linear_attention_cpu(self.decay, self.first, kv, kv)
        return out[:, -1]


def test_a_tensor_passed_as_the_value_is_never_held() -> None:
    """The value path is never cut: with ``key is value`` the key's ``exp`` is on the
    relevance path and refused by name (holding it would leave no path to the input)."""
    pytest.importorskip("transformers")
    with pytest.raises(relprop.UnsupportedOperationError, match="'exp'"):
        relprop.explain(TiedKeyValue(), _x(2, 4, 3, seed=7), 0, LRP0)


class _SigmoidStream(nn.Module):
    """A sigmoid whose output is the stream itself (not a gate of anything), then functions
    of it: outside a recurrent block they are activations and carry relevance."""

    def __init__(self, unsupported: bool) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4, bias=False)
        self.last = nn.Linear(4, 3, bias=False)
        self.unsupported = unsupported

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(torch.sigmoid(self.first(x)))
        if self.unsupported:
            h = torch.cumprod(h, dim=1)
        return self.last(h)


def test_functions_of_a_sigmoid_stream_are_not_held_outside_recurrent_blocks() -> None:
    """Found by the fuzzer: ``cumprod(tanh(sigmoid(x)))`` was held constant as a decay made of
    gates, so the output 'did not depend on the input' instead of naming ``cumprod``."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, dtype=torch.float64)
    model = _SigmoidStream(unsupported=False).double().eval()
    lrp0 = relprop.composites.uniform(relprop.rules.Zero())
    expl = relprop.explain(model, x, target=0, composite=lrp0)
    assert torch.allclose(expl.relevance.sum(1), expl.explained, rtol=1e-9, atol=1e-12)
    with pytest.raises(relprop.UnsupportedOperationError, match="cumprod"):
        relprop.explain(_SigmoidStream(unsupported=True).double().eval(), x, target=0)
