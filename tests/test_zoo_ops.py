"""Ops real models write by hand (the statistics family, router renormalisations), against
float64 oracles: each spelled-out op must give the relevance of the op relprop already has a
rule for (``F.rms_norm``, ``F.normalize``, ``F.gelu``, an elementwise activation, router
gates)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop.composites import attnlrp, cp_lrp

COMPOSITES = {"attnlrp": attnlrp, "cp_lrp": lambda: cp_lrp(epsilon=0.0)}


class Wrapped(nn.Module):
    """``head(f(layer(x)))`` with ``f`` the op under test."""

    def __init__(self, f: Callable[[Tensor], Tensor], width: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(5, width, bias=False)
        self.head = nn.Linear(width, 3, bias=False)
        self.f = f

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.f(self.layer(x)))


def _relevance(f: Callable[[Tensor], Tensor], composite: str, width: int = 6) -> Tensor:
    model = Wrapped(f, width).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expl = relprop.explain(model, x, 1, COMPOSITES[composite](), verify=True)
    if composite == "cp_lrp":  # ε = 0 on bias-free layers: conserves to rounding
        assert torch.allclose(expl.relevance.sum(1), expl.explained, rtol=1e-10, atol=1e-12)
    return expl.relevance


def _rms(x: Tensor) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _rms_cast(x: Tensor) -> Tensor:  # DeepSeek-V4's unweighted RMSNorm: statistic in float32
    return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + 1e-6).to(x.dtype)


def _layer(x: Tensor) -> Tensor:  # xLSTM's multi-head LayerNorm
    centred = x - x.mean(dim=-1, keepdim=True)
    return centred * torch.rsqrt(x.var(dim=-1, keepdim=True, unbiased=False) + 1e-5)


def _l2(x: Tensor) -> Tensor:  # ZAYA's q/k norm: a number over the clamped norm
    return x * (2.0 / x.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12))


def _l2_div(x: Tensor) -> Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize(("by_hand", "reference"), [
    (_rms, lambda x: F.rms_norm(x, (x.shape[-1],), eps=1e-6)),
    (_rms_cast, lambda x: F.rms_norm(x, (x.shape[-1],), eps=1e-6)),
    (_layer, lambda x: F.layer_norm(x, (x.shape[-1],), eps=1e-5)),
    (_l2, lambda x: 2.0 * F.normalize(x, dim=-1, eps=1e-12)),
    (_l2_div, lambda x: F.normalize(x, dim=-1, eps=0.0)),
])
def test_normalisation_by_hand_equals_the_norm_rule(
        by_hand: Callable[[Tensor], Tensor], reference: Callable[[Tensor], Tensor],
        composite: str) -> None:
    """A scale computed from a statistic of the stream is held constant: the identity rule of
    ``F.rms_norm``/``F.normalize``, to float64 rounding."""
    # the float32 statistic of ``_rms_cast`` is the model's own: its scale differs by ~1e-7;
    # AttnLRP's NormIdentity(1e-6) stabilises F.layer_norm's centring with its ε, which the
    # centring written out (``x − mean(x)``, LRP-0) does not: ~1e-5 apart
    tolerance = 1e-6 if by_hand is _rms_cast else 1e-10
    if by_hand is _layer and composite == "attnlrp":
        tolerance = 1e-4
    torch.testing.assert_close(_relevance(by_hand, composite), _relevance(reference, composite),
                               rtol=tolerance, atol=tolerance)


def test_normalisation_by_hand_is_one_layer_norm_call() -> None:
    model = Wrapped(_rms).double().eval()
    x = torch.randn(2, 5, dtype=torch.float64)
    expl = relprop.explain(model, x, 0, attnlrp(), record=True)
    assert expl.rules["<model>:mul"].startswith("NormIdentity"), expl.rules


def test_scale_of_another_tensor_is_not_a_normalisation() -> None:
    """``x ⊙ rsqrt(mean(y²))`` with ``y`` another activation is a product, not a norm."""
    def other(x: Tensor) -> Tensor:
        y = torch.tanh(x)
        return x * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)

    with pytest.raises(relprop.UnsupportedOperationError, match="rsqrt"):
        _relevance(other, "attnlrp")


def test_elementwise_scale_is_not_a_normalisation() -> None:
    """``x ⊙ rsqrt(x² + ε)`` (no reduction) is an elementwise function, not a norm."""
    with pytest.raises(relprop.UnsupportedOperationError, match="rsqrt"):
        _relevance(lambda x: x * torch.rsqrt(x.pow(2) + 1e-6), "attnlrp")


@pytest.mark.parametrize("composite", COMPOSITES)
def test_erf_gelu_equals_the_gelu_rule(composite: str) -> None:
    """GELU written with ``erf`` (ESM) is ``x · Φ(x)`` with ``Φ`` a gate: ``F.gelu``'s rule."""
    def by_hand(x: Tensor) -> Tensor:
        return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))

    torch.testing.assert_close(_relevance(by_hand, composite), _relevance(F.gelu, composite),
                               rtol=1e-10, atol=1e-12)


class XIELU(nn.Module):
    """Huang et al. 2024's xIELU as transformers writes it (``XIELUActivation``)."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha_p = nn.Parameter(torch.tensor([0.3]))
        self.alpha_n = nn.Parameter(torch.tensor([0.2]))
        self.register_buffer("beta", torch.tensor(0.5))
        self.register_buffer("eps", torch.tensor(-1e-6))

    def forward(self, x: Tensor) -> Tensor:
        alpha_p = F.softplus(self.alpha_p)
        alpha_n = self.beta + F.softplus(self.alpha_n)
        return torch.where(x > 0, alpha_p * x * x + self.beta * x,
                           (torch.expm1(torch.min(x, self.eps)) - x) * alpha_n + self.beta * x)


XIELUActivation = type("XIELUActivation", (XIELU,), {})


def test_xielu_module_is_an_activation_with_the_identity_rule() -> None:
    """An elementwise ``…Activation`` module with scalar parameters: ``R_x = R_y`` (the identity
    rule): the relevance at the activation's input equals the one at its output, computed
    here from the head by LRP-0 written out."""
    activation = XIELUActivation().double()
    model = Wrapped(activation).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expl = relprop.explain(model, x, 1, cp_lrp(epsilon=0.0), record=True)
    with torch.no_grad():
        h = model.layer(x)
        y = activation(h)
        relevance_y = y * model.head.weight[1]  # LRP-0 on the bias-free head, target 1
    relevance_h = expl.layers["f"]  # the activation's output relevance…
    torch.testing.assert_close(relevance_h, relevance_y, rtol=1e-10, atol=1e-12)
    # …and LRP-0 through the first layer: R_x = x ⊙ Wᵀ (R_h / h)
    oracle = x * ((relevance_y / h) @ model.layer.weight)
    torch.testing.assert_close(expl.relevance, oracle, rtol=1e-9, atol=1e-12)


def test_activation_module_that_is_not_elementwise_keeps_its_ops() -> None:
    class MixActivation(nn.Module):  # a name that says activation, but mixes positions
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(1.0))

        def forward(self, x: Tensor) -> Tensor:
            return x * torch.exp(x.mean(-1, keepdim=True)) * self.scale

    with pytest.raises(relprop.UnsupportedOperationError, match="exp"):
        _relevance(MixActivation().double(), "attnlrp")


def _router(renormalise: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Experts (two linear maps) weighted by router weights computed from the stream."""
    torch.manual_seed(3)
    experts = nn.Linear(6, 12, bias=False).double()
    router = nn.Linear(6, 4, bias=False).double()

    def moe(h: Tensor) -> Tensor:
        weights = renormalise(router(h))  # (B, 2): top-2 of 4
        outputs = experts(h).view(len(h), 2, 6)
        return (weights.unsqueeze(-1) * outputs).sum(1)

    return moe


def _gathered_softmax(logits: Tensor) -> Tensor:  # Ernie 4.5, Mistral 4
    probabilities = F.softmax(logits, dim=-1)
    index = torch.topk(probabilities, 2, dim=-1).indices
    picked = torch.gather(probabilities, dim=-1, index=index)
    return picked / torch.clamp(picked.sum(-1, keepdim=True), min=1e-12)


def _gathered_scores(logits: Tensor) -> Tensor:  # DeepSeek-V4: sqrt(softplus) scores
    scores = F.softplus(logits).sqrt()
    index = torch.topk(scores + 0.1, 2, dim=-1).indices
    picked = scores.gather(1, index)
    return picked / (picked.sum(-1, keepdim=True) + 1e-20)


def _sinkhorn(logits: Tensor) -> Tensor:  # DeepSeek-V4's hyper-connection mixing weights
    comb = torch.softmax(logits[:, :2], dim=-1) + 1e-6
    comb = comb / (comb.sum(-1, keepdim=True) + 1e-6)
    return comb / (comb.sum(-1, keepdim=True) + 1e-6)


class SqrtSoftplusActivation(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x).sqrt()


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("renormalise", [_gathered_softmax, _sinkhorn])
def test_renormalised_router_weights_are_gates(renormalise: Callable[[Tensor], Tensor],
                                               composite: str) -> None:
    """Router weights renormalised by their own sum are gates: the experts take all of the
    relevance, which equals the relevance with the weights held constant (detached)."""
    held = _router(lambda logits: renormalise(logits).detach())
    torch.testing.assert_close(_relevance(_router(renormalise), composite),
                               _relevance(held, composite), rtol=1e-10, atol=1e-12)


def test_sqrt_softplus_router_scores_are_gates() -> None:
    activation = SqrtSoftplusActivation()

    def scores(logits: Tensor) -> Tensor:
        s = activation(logits)
        picked = s.gather(1, torch.topk(s + 0.1, 2, dim=-1).indices)
        return picked / (picked.sum(-1, keepdim=True) + 1e-20)

    class Model(nn.Module):
        def __init__(self, renormalise: Callable[[Tensor], Tensor]) -> None:
            super().__init__()
            self.activation = activation
            self.inner = Wrapped(_router(renormalise))

        def forward(self, x: Tensor) -> Tensor:
            return self.inner(x)

    x = torch.randn(4, 5, dtype=torch.float64)
    got = relprop.explain(Model(scores).double().eval(), x, 1, attnlrp()).relevance
    held = relprop.explain(Model(lambda t: scores(t).detach()).double().eval(), x, 1,
                           attnlrp()).relevance
    torch.testing.assert_close(got, held, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_softmax_written_with_logsumexp_is_softmax(composite: str) -> None:
    """``exp(x − logsumexp(x))`` (Inkling's router) takes the softmax rule."""
    def by_hand(x: Tensor) -> Tensor:
        return x * torch.exp(x - torch.logsumexp(x, dim=-1, keepdim=True))

    def reference(x: Tensor) -> Tensor:
        return x * F.softmax(x, dim=-1)

    torch.testing.assert_close(_relevance(by_hand, composite), _relevance(reference, composite),
                               rtol=1e-10, atol=1e-12)


class MaskedAttention(nn.Module):
    """One head whose float mask is computed from the input (Inkling's token-conditioned
    position bias), fused (``F.scaled_dot_product_attention``) or spelled out."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.q, self.k, self.v, self.m = (nn.Linear(6, 6, bias=False) for _ in range(4))
        self.head = nn.Linear(6, 3, bias=False)
        self.fused = fused

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        mask = self.m(x) @ self.m.weight[:, :1].expand(6, x.shape[1])  # (B, T, T)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(6) + mask
            out = torch.softmax(scores, dim=-1) @ v
        return self.head(out.sum(1))


@pytest.mark.parametrize("composite", COMPOSITES)
def test_attention_mask_from_the_input_takes_the_scores_share(composite: str) -> None:
    """A float mask computed from the input is a third term of the scores: the fused call
    gives the relevance of the attention spelled out (product rules, softmax rule, LRP-0
    on the sum with the mask)."""
    x = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fused, plain = (MaskedAttention(f).double().eval() for f in (True, False))
    plain.load_state_dict(fused.state_dict())
    got = relprop.explain(fused, x, 1, COMPOSITES[composite](), verify=True)
    want = relprop.explain(plain, x, 1, COMPOSITES[composite]())
    torch.testing.assert_close(got.relevance, want.relevance, rtol=1e-9, atol=1e-12)


class Glu(nn.Module):
    """OpenAI's clamped SwiGLU, ``(up + 1) · gate·σ(α gate)`` (gpt-oss, MiniMax-M3), or the
    same written as the sum of its two terms."""

    def __init__(self, expanded: bool) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.gate_up = nn.Linear(5, 12, bias=False)
        self.head = nn.Linear(6, 3, bias=False)
        self.expanded = expanded

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        glu = gate * torch.sigmoid(gate * 1.702)
        return self.head(up * glu + glu if self.expanded else (up + 1.0) * glu)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_shifted_factor_of_a_product_is_distributed(composite: str) -> None:
    """``(a + 1) · b`` explains as ``a · b + b``: the constant absorbs nothing (conserves
    under CP-LRP on a bias-free model) and the relevance is the expanded form's."""
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    shifted, expanded = (Glu(e).double().eval() for e in (False, True))
    expanded.load_state_dict(shifted.state_dict())
    got = relprop.explain(shifted, x, 1, COMPOSITES[composite](), verify=True)
    want = relprop.explain(expanded, x, 1, COMPOSITES[composite]())
    torch.testing.assert_close(got.relevance, want.relevance, rtol=1e-10, atol=1e-12)
    if composite == "cp_lrp":
        torch.testing.assert_close(got.relevance.sum(1), got.explained, rtol=1e-10, atol=1e-12)


def test_softmax_row_of_minus_inf_overwritten_by_the_model_passes_no_signal() -> None:
    """LED pads its attention window with rows whose scores are all ``-inf`` (their softmax
    is NaN) and overwrites them with 0 after the softmax: the explanation stays finite and
    equals the one of the same model that never computes those rows."""
    class Padded(nn.Module):
        def __init__(self, skip: bool) -> None:
            super().__init__()
            torch.manual_seed(7)
            self.q, self.v = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
            self.head = nn.Linear(4, 2, bias=False)
            self.skip = skip

        def forward(self, x: Tensor) -> Tensor:
            scores = self.q(x) @ x.transpose(-1, -2)
            dead = torch.zeros_like(scores, dtype=torch.bool)
            dead[:, -1] = True  # the last query row: all of its keys masked
            if self.skip:
                probs = torch.softmax(scores.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0)
            else:  # LED adds the dtype's minimum twice: -inf by overflow, through an add
                low = torch.zeros_like(scores).masked_fill(dead, torch.finfo(x.dtype).min)
                probs = torch.softmax(scores + low + low, -1).masked_fill(dead, 0.0)
            return self.head((probs @ self.v(x)).sum(1))

    x = torch.randn(2, 3, 4, dtype=torch.float64)
    for composite in COMPOSITES.values():
        got = relprop.explain(Padded(False).double().eval(), x, 0, composite(), verify=True)
        want = relprop.explain(Padded(True).double().eval(), x, 0, composite())
        torch.testing.assert_close(got.relevance, want.relevance, rtol=1e-10, atol=1e-12)


class Sink(nn.Module):
    """Attention with a learned sink logit ``b``: Granite's ``softmax(s) v ⊙ σ(LSE(s) − b)``,
    or the softmax over ``[s, b]`` with a zero value for the sink, spelled out."""

    def __init__(self, granite: bool) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.q, self.k, self.v = (nn.Linear(4, 4, bias=False) for _ in range(3))
        self.sink = nn.Parameter(torch.tensor(0.3))
        self.head = nn.Linear(4, 2, bias=False)
        self.granite = granite

    def forward(self, x: Tensor) -> Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2)
        if self.granite:
            scale = torch.sigmoid(torch.logsumexp(scores, dim=-1) - self.sink)
            out = (torch.softmax(scores, -1) @ self.v(x)) * scale.unsqueeze(-1)
        else:
            sink = self.sink.expand(*scores.shape[:-1], 1)
            probs = torch.softmax(torch.cat([scores, sink], -1), -1)[..., :-1]
            out = probs @ self.v(x)
        return self.head(out.sum(1))


def test_attention_sink_scale_is_a_constant_gate() -> None:
    """Under CP-LRP (weights constant) Granite's sink scale, held constant, gives the
    relevance of the softmax over ``[s, b]`` written out, and conserves."""
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    granite, spelled = (Sink(g).double().eval() for g in (True, False))
    spelled.load_state_dict(granite.state_dict())
    got = relprop.explain(granite, x, 0, cp_lrp(epsilon=0.0), verify=True)
    want = relprop.explain(spelled, x, 0, cp_lrp(epsilon=0.0))
    torch.testing.assert_close(got.relevance, want.relevance, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.relevance.sum((1, 2)), got.explained, rtol=1e-10, atol=1e-12)
    relprop.explain(granite, x, 0, attnlrp(), verify=True)  # explained, not refused
