"""The mixing family (:mod:`relprop._engine.handlers.mixing`) against float64 oracles, and the
Hugging Face models that need it, from tiny random configurations.

Each op gets an independent re-implementation of the rule on the model's maths:

* squared ReLU, the identity rule: LRP-0 written out with the weight matrices;
* mixture-of-experts routing, signal-take-all gates: with piecewise-linear bias-free experts
  and the router weights held constant, LRP-0 is Gradient × Input of the network with the
  router detached (Montavon et al. 2019, §10.2.3), computed here with autograd alone;
* ALiBi's ``baddbmm``, bilinear ops (``mm``, ``addmm``, ``multiply``, a dynamic convolution):
  the uniform product rule on a bilinear ``f(Ax, Bx)`` read out by its sum gives
  ``R = ½ x ⊙ ∇_x f`` (each factor gets half, and LRP-0 through the linear maps is exact);
* Fourier mixing: LRP-0 through the real DFT matrix ``cos(2π(kt/T + ld/D))`` written out.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop import composites, rules
from relprop.composites import attnlrp, cp_lrp, uniform
from relprop.rules import Gradient, Product, Zero
from relprop.targets import TokenLogit

ZERO = uniform(Zero())


def _x(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------- squared ReLU
class SquaredReLUNet(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.first, self.last = nn.Linear(5, 7, bias=False), nn.Linear(7, 3, bias=False)
        self.spelling = spelling

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.first(x))
        if self.spelling == "square":
            h = torch.square(h)
        elif self.spelling == "pow":
            h = torch.pow(h, 2)
        elif self.spelling == "method":
            h = h.pow(2)
        else:
            h = h ** 2
        return self.last(h)


def _lrp0(a: Tensor, w: Tensor, relevance: Tensor) -> Tensor:
    """LRP-0 through ``z = a Wᵀ``: ``R_j = Σ_k a_j w_kj / z_k · R_k``."""
    z = a @ w.t()
    return a * ((relevance / torch.where(z == 0, torch.ones_like(z), z) * (z != 0)) @ w)


@pytest.mark.parametrize("spelling", ["square", "pow", "method", "operator"])
def test_squared_relu_takes_the_identity_rule(spelling: str) -> None:
    net = SquaredReLUNet(spelling).double().eval()
    x = _x(4, 5)
    expl = relprop.explain(net, x, 1, ZERO, verify=True)
    assert any(name.endswith(":square") or name.endswith(":pow") or name.endswith(":__pow__")
               for name in expl.rules)
    with torch.no_grad():
        h = torch.relu(x @ net.first.weight.t())
        out = (h * h) @ net.last.weight.t()
        relevance = torch.zeros_like(out)
        relevance[:, 1] = out[:, 1]
        r_h = _lrp0(h * h, net.last.weight, relevance)  # the identity rule: R_h = R_{h²}
        expected = _lrp0(x, net.first.weight, r_h)
    torch.testing.assert_close(expl.relevance, expected, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(expl.relevance.sum(1), expl.explained)


def test_squared_relu_is_an_activation_so_the_gradient_rule_gives_gradient_times_input() -> None:
    net = SquaredReLUNet("square").double().eval()
    x = _x(4, 5).requires_grad_(True)
    composite = composites.Composite([(composites.kind("activation"), Gradient()),
                                      (composites.kind("linear"), Zero())])
    expl = relprop.explain(net, x.detach(), 0, composite)
    (grad,) = torch.autograd.grad(net(x)[:, 0].sum(), x)
    torch.testing.assert_close(expl.relevance, (x * grad).detach())


def test_other_powers_stay_refused() -> None:
    class Cube(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return (x ** 3).sum(1, keepdim=True)

    with pytest.raises(relprop.UnsupportedOperationError, match="pow"):
        relprop.explain(Cube().eval(), _x(2, 3), 0)


def test_a_rule_declaring_square_in_elementwise_ops_still_explains() -> None:
    """The user-side example of docs/guide/writing-rules.md: the built-in handler wins (the
    op is an activation), the maths is the same identity rule."""

    class SquareIdentity(rules.Rule):
        kinds = frozenset({"square"})
        elementwise_ops = frozenset({"square"})

        def propagate(self, op: Any, a: Tensor, z: Tensor, grad: Tensor) -> Tensor:
            return torch.where(a == 0, torch.zeros_like(a), z / a) * grad

    net = SquaredReLUNet("square").double().eval()
    composite = composites.Composite([(composites.kind("square"), SquareIdentity()),
                                      *composites.epsilon_plus(epsilon=1e-12).rules])
    expl = relprop.explain(net, _x(3, 5), 0, composite)
    assert "<model>:square" in expl.rules
    torch.testing.assert_close(expl.relevance_sum(), expl.explained)


# ------------------------------------------------------------------ mixture of experts
class TinyMoE(nn.Module):
    """Mixtral's routing written out: softmax router, top-k, in-place renormalisation,
    bias-free ReLU experts, ``index_add_`` dispatch; a linear readout."""

    def __init__(self, renormalise: bool = True, experts: int = 4, top_k: int = 2) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.router = nn.Linear(6, experts, bias=False)
        self.up = nn.ModuleList(nn.Linear(6, 8, bias=False) for _ in range(experts))
        self.down = nn.ModuleList(nn.Linear(8, 6, bias=False) for _ in range(experts))
        self.readout = nn.Linear(6, 3, bias=False)
        self.renormalise, self.top_k = renormalise, top_k
        self.detach_router = False

    def forward(self, x: Tensor) -> Tensor:
        probs = F.softmax(self.router(x).float(), dim=-1)
        if self.detach_router:
            probs = probs.detach()
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalise:
            weights /= weights.sum(dim=-1, keepdim=True)
        return self.readout(self.experts(x, chosen, weights.to(x.dtype)))

    def experts(self, x: Tensor, chosen: Tensor, weights: Tensor) -> Tensor:
        """``Σ_e g_e E_e(x)`` over the chosen experts, dispatched with ``index_add_``."""
        out = torch.zeros_like(x)
        for e in range(len(self.up)):
            token, slot = torch.where(chosen == e)
            if token.numel() == 0:
                continue
            h = self.down[e](torch.relu(self.up[e](x[token])))
            out.index_add_(0, token, h * weights[token, slot, None])
        return out


@pytest.mark.parametrize("renormalise", [True, False])
@pytest.mark.parametrize("preset", ["zero", "cp_lrp", "attnlrp"])
def test_moe_router_weights_are_gates(renormalise: bool, preset: str) -> None:
    model = TinyMoE(renormalise).double().eval()
    x = _x(10, 6, seed=1)
    composite = {"zero": ZERO, "cp_lrp": cp_lrp(epsilon=0.0), "attnlrp": attnlrp(0.0)}[preset]
    expl = relprop.explain(model, x, 2, composite, verify=True)
    # the oracle: router weights held constant, experts piecewise linear: LRP-0 = G × I
    model.detach_router = True
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, 2].sum(), leaf)
    torch.testing.assert_close(expl.relevance, leaf.detach() * grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(expl.relevance.sum(1), expl.explained, rtol=1e-6, atol=1e-9)


class TopKFirstMoE(TinyMoE):
    """gpt-oss' and granitemoe's routing: top-k of the raw router scores, then softmax (or
    llama4's sigmoid) of the winners."""

    def __init__(self, normaliser: str) -> None:
        super().__init__(renormalise=False)
        self.normaliser = normaliser

    def forward(self, x: Tensor) -> Tensor:
        scores, chosen = torch.topk(self.router(x), self.top_k, dim=-1)
        weights = torch.softmax(scores, dim=-1) if self.normaliser == "softmax" \
            else torch.sigmoid(scores)
        if self.detach_router:
            weights = weights.detach()
        return self.readout(self.experts(x, chosen, weights))


@pytest.mark.parametrize("normaliser", ["softmax", "sigmoid"])
def test_moe_top_k_of_raw_router_scores_are_gates(normaliser: str) -> None:
    model = TopKFirstMoE(normaliser).double().eval()
    x = _x(10, 6, seed=2)
    expl = relprop.explain(model, x, 1, ZERO, verify=True)
    model.detach_router = True
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, 1].sum(), leaf)
    torch.testing.assert_close(expl.relevance, leaf.detach() * grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(expl.relevance.sum(1), expl.explained, rtol=1e-6, atol=1e-9)


def test_moe_gates_take_relevance_when_asked() -> None:
    model = TinyMoE().double().eval()
    x = _x(10, 6, seed=1)
    gated = relprop.explain(model, x, 2, ZERO)
    composite = composites.Composite([(composites.kind("product"),
                                       Product(gates_take_none=False)), *ZERO.rules])
    uniform_split = relprop.explain(model, x, 2, composite, strict=False)
    assert not torch.allclose(gated.relevance, uniform_split.relevance)


def test_division_by_an_activation_that_is_not_a_gate_is_still_refused() -> None:
    class Ratio(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            h /= self.b(x)
            return h

    with pytest.raises(relprop.UnsupportedOperationError, match="div"):
        relprop.explain(Ratio().double().eval(), _x(2, 3), 0)


def test_topk_of_an_activation_is_a_winner_take_all_selection() -> None:
    """k-max pooling: the values are copies of the k winners, so like max pooling each takes
    its output's relevance (LRP-0 = Gradient x Input; the losers take none)."""
    class KMax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(8)
            self.fc, self.head = nn.Linear(5, 6, bias=False), nn.Linear(2, 1, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(torch.topk(self.fc(x), 2, dim=-1).values)

    model = KMax().double().eval()
    x = _x(3, 5)
    expl = relprop.explain(model, x, 0, ZERO, verify=True)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
    torch.testing.assert_close(expl.relevance, leaf.detach() * grad)


# ---------------------------------------------------- ALiBi and other bilinear products
class Bilinear(nn.Module):
    """A product of two linear maps of the input, spelled in several ways; read out by sum."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.a, self.b = nn.Linear(6, 12, bias=False), nn.Linear(6, 12, bias=False)
        self.spelling = spelling
        self.register_buffer("bias", torch.randn(3, 4, 4))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.a(x), self.b(x)
        s = self.spelling
        if s in ("baddbmm", "baddbmm_method", "matmul"):  # (B=3, 4, 3) @ (3, 3, 4): scores
            q, k = a.reshape(3, 4, 3), b.reshape(3, 4, 3).transpose(1, 2)
            if s == "baddbmm":
                z = torch.baddbmm(self.bias, q, k, beta=0.0, alpha=0.5)
            elif s == "baddbmm_method":
                z = self.bias.mul(0.0).baddbmm(batch1=q, batch2=k, beta=1.0, alpha=0.5)
            else:
                z = 0.5 * (q @ k)
        elif s == "mm":
            z = a.mm(b.t())
        elif s == "torch.mm":
            z = torch.mm(a, b.t())
        elif s == "addmm":
            z = torch.addmm(torch.zeros(1, dtype=a.dtype), a, b.t())
        elif s == "multiply":
            z = torch.multiply(a, b)
        elif s == "linear":  # a weight computed from the input (a hypernetwork)
            z = F.linear(a, b.reshape(-1, 12)[:1].expand(5, 12))
        elif s == "conv":  # a dynamic convolution: the kernel computed from the input
            kernel = b.reshape(-1, 12)[:1].reshape(2, 2, 3)
            z = F.conv1d(a.reshape(1, 2, -1), kernel)
        else:
            raise ValueError(s)
        return z.reshape(1, -1).sum(1, keepdim=True)


SPELLINGS = ["baddbmm", "baddbmm_method", "matmul", "mm", "torch.mm", "addmm", "multiply",
             "linear", "conv"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_bilinear_ops_take_the_uniform_product_rule(spelling: str) -> None:
    """``R = ½ x ⊙ ∇_x f`` for a bilinear ``f(Ax, Bx)`` read out by its sum: each factor takes
    half (Euler: ``Σ R = ½ · 2 f = f``). Before, ``a.mm(b)`` and ``addmm`` of two activations
    were taken as linear (the gradient, ``x ⊙ ∇f``, twice the relevance) without a word."""
    model = _Rows(Bilinear(spelling)).double().eval()
    rows = 3 if spelling in ("baddbmm", "baddbmm_method", "matmul") else 4
    x = _x(1, rows * 6, seed=2)
    expl = relprop.explain(model, x, 0, ZERO, verify=True)
    assert any(rule.startswith("Product") for rule in expl.rules.values())
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf).sum(), leaf)
    torch.testing.assert_close(expl.relevance, 0.5 * leaf.detach() * grad,
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(expl.relevance.sum(1), expl.explained)


class _Rows(nn.Module):
    """The explained sample is one flat vector; the model sees it as rows."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, flat: Tensor) -> Tensor:
        return self.inner(flat.reshape(-1, 6))


def test_baddbmm_with_a_bias_that_depends_on_the_input_passes_it_its_share() -> None:
    class Scores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(8)
            self.q, self.k, self.c = (nn.Linear(3, 3, bias=False) for _ in range(3))

        def forward(self, flat: Tensor) -> Tensor:
            x = flat.reshape(1, 4, 3)
            q, k, c = self.q(x), self.k(x), self.c(x)
            return torch.baddbmm(c[..., :1].expand(1, 4, 4), q, k.transpose(1, 2),
                                 beta=2.0, alpha=0.5).reshape(1, -1).sum(1, keepdim=True)

    x = _x(1, 12, seed=4)
    expl = relprop.explain(Scores().double().eval(), x, 0, ZERO, verify=True)
    # the product's half-shares plus LRP-0 through the added term: R = x ⊙ ∇(½ f + g)
    model = Scores().double().eval()
    leaf = x.clone().requires_grad_(True)
    xr = leaf.reshape(1, 4, 3)
    f = 0.5 * (model.q(xr) @ model.k(xr).transpose(1, 2)).sum()
    g = 2.0 * (model.c(xr)[..., :1].expand(1, 4, 4)).sum()
    (grad,) = torch.autograd.grad(0.5 * f + g, leaf)
    torch.testing.assert_close(expl.relevance, leaf.detach() * grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(expl.relevance.sum(1), expl.explained)


# ----------------------------------------------------------------------- Fourier mixing
class Fourier(nn.Module):
    def __init__(self, spelling: str) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.proj = nn.Linear(4, 4, bias=False)
        self.readout = nn.Linear(4, 2, bias=False)
        self.spelling = spelling

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x)  # (B, T=5, D=4)
        if self.spelling == "fftn":
            h = torch.fft.fftn(h, dim=(1, 2)).real
        else:  # FNet's TPU-free fallback: one fft per axis
            h = torch.fft.fft(torch.fft.fft(h, dim=-1), dim=-2).real
        return self.readout(h.mean(1))


@pytest.mark.parametrize("spelling", ["fftn", "fft"])
def test_fourier_mixing_is_exact_lrp_0(spelling: str) -> None:
    model = Fourier(spelling).double().eval()
    x = _x(3, 5, 4, seed=6)
    expl = relprop.explain(model, x, 1, ZERO, verify=True)
    t, d = 5, 4
    k, ti = torch.arange(t).double(), torch.arange(t).double()
    l_, di = torch.arange(d).double(), torch.arange(d).double()
    angle = 2 * math.pi * (k[:, None, None, None] * ti[None, None, :, None] / t
                           + l_[None, :, None, None] * di[None, None, None, :] / d)
    dft = torch.cos(angle).reshape(t * d, t * d)  # Re of the 2-D DFT, (kl) x (td)
    with torch.no_grad():
        h = x @ model.proj.weight.t()  # (B, T, D)
        y = (h.reshape(3, -1) @ dft.t()).reshape(3, t, d)
        pooled = y.mean(1)
        out = pooled @ model.readout.weight.t()
        relevance = torch.zeros_like(out)
        relevance[:, 1] = out[:, 1]
        r_pooled = _lrp0(pooled, model.readout.weight, relevance)
        r_y = y / (t * pooled[:, None, :]) * r_pooled[:, None, :]  # mean pooling, LRP-0
        r_h = _lrp0(h.reshape(3, -1), dft, r_y.reshape(3, -1)).reshape(3, t, d)
        expected = _lrp0(x.reshape(-1, 4), model.proj.weight, r_h.reshape(-1, 4)).reshape(x.shape)
    torch.testing.assert_close(expl.relevance, expected, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(expl.relevance.sum((1, 2)), expl.explained)


# ------------------------------------------------------------- Hugging Face, tiny configs
transformers = pytest.importorskip("transformers")
COMMON = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=40)


def _hf(name: str) -> nn.Module:
    t = transformers
    moe = dict(COMMON, intermediate_size=64, num_key_value_heads=2, num_experts_per_tok=2)
    configs: dict[str, tuple[Any, Any]] = {
        "persimmon": (t.PersimmonForCausalLM, t.PersimmonConfig(**COMMON, intermediate_size=64)),
        "nemotron": (t.NemotronForCausalLM,
                     t.NemotronConfig(**COMMON, intermediate_size=64, num_key_value_heads=2)),
        "mixtral": (t.MixtralForCausalLM, t.MixtralConfig(**moe, num_local_experts=4)),
        "qwen2_moe": (t.Qwen2MoeForCausalLM, t.Qwen2MoeConfig(
            **moe, num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=32,
            norm_topk_prob=True)),
        "qwen2_moe_plain": (t.Qwen2MoeForCausalLM, t.Qwen2MoeConfig(
            **moe, num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=32,
            norm_topk_prob=False)),
        "qwen3_moe": (t.Qwen3MoeForCausalLM, t.Qwen3MoeConfig(
            **moe, num_experts=4, moe_intermediate_size=16, head_dim=8, norm_topk_prob=True)),
        "bloom": (t.BloomForCausalLM, t.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2,
                                                    n_head=4)),
        "fnet": (t.FNetForSequenceClassification, t.FNetConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
            max_position_embeddings=40, num_labels=3, use_tpu_fourier_optimizations=False)),
        "convbert": (t.ConvBertForSequenceClassification, t.ConvBertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=40, num_labels=3, embedding_size=32)),
    }
    cls, config = configs[name]
    extra = {"experts_implementation": "eager"} if hasattr(config, "num_experts_per_tok") else {}
    torch.manual_seed(0)
    model = cls._from_config(config, attn_implementation="eager", **extra).eval().double()
    with torch.no_grad():  # random weights everywhere (the initialisers zero some)
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return model


def _bias_free(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for n, parameter in model.named_parameters():
            if n.endswith("bias"):
                parameter.zero_()
    return model


def _total(expl: relprop.Explanation) -> Tensor:
    total = expl.relevance.reshape(expl.relevance.shape[0], -1).sum(dim=1)
    return total + sum((v.reshape(v.shape[0], -1).sum(dim=1) for v in expl.sources.values()),
                       torch.zeros_like(total))


HF = ["persimmon", "nemotron", "mixtral", "qwen2_moe", "qwen2_moe_plain", "qwen3_moe", "bloom",
      "fnet", "convbert"]


def _ids() -> Tensor:
    return torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(1))


def _target(model: nn.Module) -> Any:
    return 1 if "Sequence" in type(model).__name__ else TokenLogit(7)


@pytest.mark.parametrize("name", HF)
def test_hugging_face_models_explain_and_conserve(name: str) -> None:
    model = _hf(name)
    ids = _ids()
    expl = relprop.explain(model, ids, _target(model), verify=True)
    assert bool(torch.isfinite(expl.relevance).all()) and bool(expl.relevance.ne(0).any())
    bias_free = _bias_free(_hf(name))
    expl = relprop.explain(bias_free, ids, _target(bias_free), cp_lrp(epsilon=0.0), verify=True)
    torch.testing.assert_close(_total(expl), expl.explained, rtol=0, atol=1e-6)


def test_moe_experts_as_grouped_mm_give_the_eager_relevance() -> None:
    """Hugging Face's default experts implementation (``torch._grouped_mm``, float32): a
    matmul of the routed rows with constant expert weights, linear, so LRP-0."""
    config = transformers.MixtralConfig(**dict(COMMON, num_hidden_layers=1), intermediate_size=64,
                                        num_key_value_heads=2, num_local_experts=4,
                                        num_experts_per_tok=2)
    results = []
    for impl in ("grouped_mm", "eager"):
        torch.manual_seed(0)
        model = transformers.MixtralForCausalLM._from_config(config, experts_implementation=impl)
        results.append(relprop.explain(model.eval(), _ids(), TokenLogit(7), cp_lrp(epsilon=0.0),
                                       verify=True))
    grouped, eager = results
    scale = float(eager.relevance.abs().max())
    torch.testing.assert_close(grouped.relevance, eager.relevance, rtol=0, atol=1e-4 * scale)
