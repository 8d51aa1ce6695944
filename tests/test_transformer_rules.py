"""relprop's transformer rules against an independent float64 oracle.

The oracle (:mod:`tests.helpers.attnlrp_reference`) is the AttnLRP / CP-LRP formulas written
out term by term; here the same network is built the way a user would (``nn.Embedding``,
``nn.Linear``, ``nn.LayerNorm``, ``nn.GELU``, softmax + matmul or
``F.scaled_dot_product_attention``), loaded with the oracle's weights and explained by
:func:`relprop.explain`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop.composites import Composite, attnlrp, cp_lrp, kind
from relprop.rules import Gradient, SoftmaxTaylor, Zero

from .helpers.attnlrp_reference import (
    Params,
    forward,
    layer_norm_jacobian,
    linear_relevance,
    matmul_relevance,
    random_params,
    reference_relevance,
    softmax_relevance,
    sum_relevance,
)

PRESETS = {"attnlrp": attnlrp, "cp": cp_lrp}
EPSILONS = [1e-9, 0.1]
MASKINGS = ["none", "causal", "padding", "causal+padding"]
BATCH, SEQ = 3, 5
TARGET = torch.tensor([0, 2, 1])
RTOL, ATOL = 1e-9, 1e-12  # measured: worst 1e-12 relative, 4e-15 absolute


# ------------------------------------------------------------------------- the module
class SelfAttention(nn.Module):
    """Multi-head self-attention; ``fused`` uses ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, bias: bool, fused: bool) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim, bias=bias)
        self.key = nn.Linear(dim, dim, bias=bias)
        self.value = nn.Linear(dim, dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)
        self.heads, self.fused = heads, fused

    def _split(self, x: Tensor) -> Tensor:
        batch, seq, dim = x.shape
        return x.view(batch, seq, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, keep: Tensor | None, causal: bool) -> Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                                 is_causal=causal and keep is None)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            if keep is not None:  # the Hugging Face spelling: add the dtype's minimum
                scores = scores + torch.zeros_like(keep, dtype=scores.dtype).masked_fill(
                    ~keep, torch.finfo(scores.dtype).min)
            out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(out.transpose(1, 2).flatten(2))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, bias: bool, fused: bool,
                 norm: Callable[[], nn.Module], pre_norm: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = norm(), norm()
        self.attention = SelfAttention(dim, heads, bias, fused)
        self.up, self.down = nn.Linear(dim, hidden, bias=bias), nn.Linear(hidden, dim, bias=bias)
        self.mlp = nn.Sequential(self.up, nn.GELU(), self.down)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, keep: Tensor | None, causal: bool) -> Tensor:
        if self.pre_norm:
            x = x + self.attention(self.norm1(x), keep, causal)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attention(x, keep, causal))
        return self.norm2(x + self.mlp(x))


class TinyTransformer(nn.Module):
    """The oracle's network as ``nn.Module``s, with the oracle's weights."""

    def __init__(self, params: Params, attention: str, expand_positions: bool = True) -> None:
        super().__init__()
        vocab, dim = params.token.shape
        bias = params.head_bias is not None
        if params.norm == "rms":
            def norm() -> nn.Module:
                return nn.RMSNorm(dim, eps=params.norm_eps, dtype=torch.float64)
        else:
            def norm() -> nn.Module:
                return nn.LayerNorm(dim, eps=params.norm_eps, bias=params.final_bias is not None,
                                    dtype=torch.float64)
        self.token = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(params.position.shape[0], dim)
        hidden = params.blocks[0].up_weight.shape[0]
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, params.heads, hidden, bias, attention == "sdpa", norm,
                             params.pre_norm) for _ in params.blocks)
        self.norm = norm() if params.pre_norm else nn.Identity()
        self.head = nn.Linear(dim, params.head_weight.shape[0], bias=bias)
        self.causal, self.pooling = params.causal, params.pooling
        self.expand_positions, self.fused = expand_positions, attention == "sdpa"
        self.double().eval()
        self._load(params)

    def _load(self, params: Params) -> None:
        def put(module: Any, weight: Tensor, bias: Tensor | None) -> None:
            module.weight.data.copy_(weight)
            if bias is not None:
                module.bias.data.copy_(bias)

        self.token.weight.data.copy_(params.token)
        self.position.weight.data.copy_(params.position)
        for module, block in zip(self.blocks, params.blocks):
            assert isinstance(module, TransformerBlock)
            put(module.norm1, block.norm1_weight, block.norm1_bias)
            put(module.norm2, block.norm2_weight, block.norm2_bias)
            put(module.attention.query, block.query_weight, block.query_bias)
            put(module.attention.key, block.key_weight, block.key_bias)
            put(module.attention.value, block.value_weight, block.value_bias)
            put(module.attention.out, block.out_weight, block.out_bias)
            put(module.up, block.up_weight, block.up_bias)
            put(module.down, block.down_weight, block.down_bias)
        if params.pre_norm:
            put(self.norm, params.final_weight, params.final_bias)
        put(self.head, params.head_weight, params.head_bias)

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        batch, seq = ids.shape
        positions = torch.arange(seq)
        if self.expand_positions:
            positions = positions.expand(batch, seq)
        h = self.token(ids) + self.position(positions)
        keep = None
        if attention_mask is not None:
            keep = (attention_mask != 0)[:, None, None, :]
            if self.causal:
                keep = keep & torch.ones(seq, seq, dtype=torch.bool).tril()
        elif self.causal and not self.fused:
            keep = torch.ones(1, 1, seq, seq, dtype=torch.bool).tril()
        for block in self.blocks:
            h = block(h, keep, self.causal)
        h = self.norm(h)
        if self.pooling == "first":
            return self.head(h[:, 0])
        weights = torch.ones(batch, seq, dtype=h.dtype) if attention_mask is None \
            else attention_mask.to(h.dtype)
        return self.head((h * weights[..., None]).sum(1) / weights.sum(1, keepdim=True))


# ------------------------------------------------------------------------- inputs
def _setup(seed: int, masking: str, **options: Any) -> tuple[Params, Tensor, Tensor | None]:
    causal = masking.startswith("causal")
    # a causal net's first position sees only itself: pool over all positions there
    params = random_params(seed, causal=causal, pooling="mean" if causal else "first",
                           **options)
    generator = torch.Generator().manual_seed(100 + seed)
    ids = torch.randint(1, params.token.shape[0], (BATCH, SEQ), generator=generator)
    mask = None
    if masking.endswith("padding"):
        lengths = torch.tensor([SEQ, 3, 4])
        mask = (torch.arange(SEQ) < lengths[:, None]).long()
        ids = ids * mask  # id 0 is the padding token
    return params, ids, mask


def _explain(model: nn.Module, ids: Tensor, mask: Tensor | None, composite: Composite
             ) -> relprop.Explanation:
    kwargs = None if mask is None else {"attention_mask": mask}
    return relprop.explain(model, ids, TARGET, composite, forward_kwargs=kwargs)


def _check(params: Params, ids: Tensor, mask: Tensor | None, preset: str, epsilon: float,
           attention: str) -> None:
    model = TinyTransformer(params, attention)
    expl = _explain(model, ids, mask, PRESETS[preset](epsilon))
    tokens, positions, logits = reference_relevance(params, ids, TARGET, epsilon, preset, mask)
    torch.testing.assert_close(expl.output, logits, rtol=1e-12, atol=1e-12)
    if mask is not None:  # padding reaches the output through no path of the oracle
        assert not tokens[mask == 0].any() and not positions[mask == 0].any()
    torch.testing.assert_close(expl.relevance, tokens, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(expl.sources["position"], positions, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------- the oracle itself
def test_reference_rules_on_hand_computed_toys() -> None:
    """The oracle's rules on 2×2 numbers worked out by hand from the papers' formulas."""
    # O = A V with A = [[.25, .75], [.5, .25]], V = [[2, 4], [−2, 8]]: O = [[−1, 7], [.5, 4]];
    # R_O = [[1, 2], [3, 4]]. R_A_ij = ½ Σ_d A_ij V_jd / O_id R_O_id, e.g.
    # R_A_10 = ½ (.5·2/.5·3 + .5·4/4·4) = 4; R_V_jd = ½ Σ_i A_ij V_jd / O_id R_O_id, e.g.
    # R_V_10 = ½ (.75·(−2)/(−1)·1 + .25·(−2)/.5·3) = −.75
    a = torch.tensor([[0.25, 0.75], [0.5, 0.25]], dtype=torch.float64)
    v = torch.tensor([[2.0, 4.0], [-2.0, 8.0]], dtype=torch.float64)
    r_out = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    r_a, r_v = matmul_relevance(a, v, r_out, 0.5, 0.5)
    by_hand_a = [[0.5 * (-0.5 + 2 / 7), 0.5 * (1.5 + 12 / 7)], [4.0, -0.5]]
    by_hand_v = [[2.75, 0.5 * (2 / 7 + 2)], [-0.75, 0.5 * (12 / 7 + 2)]]
    torch.testing.assert_close(r_a, torch.tensor(by_hand_a, dtype=torch.float64))
    torch.testing.assert_close(r_v, torch.tensor(by_hand_v, dtype=torch.float64))
    # CP-LRP: A is a weight, V takes every term's whole share
    r_a, r_v = matmul_relevance(a, v, r_out, 0.0, 1.0)
    assert not r_a.any()
    torch.testing.assert_close(r_v, 2 * torch.tensor(by_hand_v, dtype=torch.float64))
    # softmax x = [0, ln 3]: s = [.25, .75]; R = [1, 2]: R_in = x ⊙ (R − s·3) = [0, ln3·(−.25)]
    x = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)
    r_in = softmax_relevance(x, torch.softmax(x, -1), torch.tensor([1.0, 2.0], dtype=x.dtype))
    assert torch.allclose(r_in, torch.tensor([0.0, -0.25 * math.log(3.0)], dtype=x.dtype))
    # ε-LRP: a = [1, 2], w = [[1, −1], [3, 1]] (out, in): z = [−1, 5], ε = 1, R = [2, 12]:
    # R_0 = 1·1/(−2)·2 + 1·3/6·12 = 5, R_1 = 2·(−1)/(−2)·2 + 2·1/6·12 = 6
    r = linear_relevance(torch.tensor([1.0, 2.0], dtype=x.dtype),
                         torch.tensor([[1.0, -1.0], [3.0, 1.0]], dtype=x.dtype),
                         torch.tensor([-1.0, 5.0], dtype=x.dtype),
                         torch.tensor([2.0, 12.0], dtype=x.dtype), 1.0)
    assert torch.allclose(r, torch.tensor([5.0, 6.0], dtype=x.dtype))
    # residual 3 + (−1) = 2 with R = 4: R = [6, −2]
    parts = sum_relevance((torch.tensor(3.0), torch.tensor(-1.0)), torch.tensor(4.0))
    assert [p.item() for p in parts] == [6.0, -2.0]


def test_reference_layer_norm_jacobian_is_the_frozen_sigma_map() -> None:
    """``J x + b`` is LayerNorm's output; ``J`` is its derivative with σ held constant."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, generator=generator)
    weight = torch.randn(6, dtype=torch.float64, generator=generator)
    bias = torch.randn(6, dtype=torch.float64, generator=generator)
    jacobian = layer_norm_jacobian(x, weight, 1e-5)
    expected = F.layer_norm(x, (6,), weight, bias, 1e-5)
    torch.testing.assert_close(torch.einsum("bkj,bj->bk", jacobian, x) + bias, expected)
    sigma = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    frozen = torch.func.jacrev(lambda t: weight * (t - t.mean()) / sigma[0] + bias)(x[0])
    torch.testing.assert_close(jacobian[0], frozen)


def test_reference_presets_and_epsilons_differ() -> None:
    """The comparisons below can tell the presets and the epsilons apart."""
    params, ids, mask = _setup(0, "padding")
    results = [reference_relevance(params, ids, TARGET, epsilon, mode, mask)[0]
               for mode in ("attnlrp", "cp") for epsilon in EPSILONS]
    for i, first in enumerate(results):
        for second in results[i + 1:]:
            assert (first - second).abs().max() > 1e-3


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("masking", MASKINGS)
def test_reference_forward_is_the_module(attention: str, masking: str) -> None:
    params, ids, mask = _setup(0, masking)
    model = TinyTransformer(params, attention)
    logits, _, _ = forward(params, ids, mask)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask), logits,
                                   rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------- relprop vs oracle
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("masking", MASKINGS)
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("preset", ["attnlrp", "cp"])
def test_matches_reference(preset: str, epsilon: float, attention: str, masking: str,
                           seed: int) -> None:
    params, ids, mask = _setup(seed, masking)
    _check(params, ids, mask, preset, epsilon, attention)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("preset", ["attnlrp", "cp"])
def test_post_norm_matches_reference(preset: str, epsilon: float, attention: str) -> None:
    params, ids, mask = _setup(3, "padding", pre_norm=False)
    _check(params, ids, mask, preset, epsilon, attention)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("preset", ["attnlrp", "cp"])
def test_rms_norm_matches_reference(preset: str, epsilon: float) -> None:
    """RMSNorm takes the identity rule exactly, whatever ε the linear layers get."""
    params, ids, mask = _setup(4, "causal", norm="rms", norm_bias=False)
    _check(params, ids, mask, preset, epsilon, "eager")


@pytest.mark.parametrize("preset", ["attnlrp", "cp"])
def test_positions_broadcast_over_the_batch_sum_their_relevance(preset: str) -> None:
    """``position(arange(seq))`` is one lookup shared by the batch: its relevance is summed."""
    params, ids, mask = _setup(5, "none")
    model = TinyTransformer(params, "eager", expand_positions=False)
    expl = _explain(model, ids, mask, PRESETS[preset](0.1))
    tokens, positions, _ = reference_relevance(params, ids, TARGET, 0.1, preset, mask)
    torch.testing.assert_close(expl.relevance, tokens, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(expl.sources["position"], positions.sum(0), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------- identities
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_cp_lrp_conserves_without_biases(norm: str, attention: str) -> None:
    params, ids, mask = _setup(6, "padding", bias=False, norm_bias=False, norm=norm)
    expl = _explain(TinyTransformer(params, attention), ids, mask, cp_lrp(0.0))
    total = expl.relevance.sum(1) + expl.sources["position"].sum(1)
    torch.testing.assert_close(total, expl.explained, rtol=0, atol=1e-10)
    tokens, positions, _ = reference_relevance(params, ids, TARGET, 0.0, "cp", mask)
    torch.testing.assert_close(tokens.sum(1) + positions.sum(1), expl.explained,
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("masking", MASKINGS)
@pytest.mark.parametrize("preset", ["attnlrp", "cp"])
def test_eager_and_sdpa_agree(preset: str, masking: str) -> None:
    params, ids, mask = _setup(7, masking)
    eager = _explain(TinyTransformer(params, "eager"), ids, mask, PRESETS[preset](0.1))
    fused = _explain(TinyTransformer(params, "sdpa"), ids, mask, PRESETS[preset](0.1))
    # fused and eager attention sum in different orders: a tolerance relative to the map's size
    scale = max(1.0, float(eager.relevance.abs().max()))
    torch.testing.assert_close(fused.relevance, eager.relevance, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(fused.sources["position"], eager.sources["position"],
                               rtol=0, atol=1e-12 * scale)


class SoftmaxReadout(nn.Module):
    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.readout = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
        self.readout.weight.data.copy_(weight)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(torch.softmax(x, dim=-1))


SOFTMAX_COMPOSITES = {
    "attnlrp": attnlrp(0.0),
    "default": Composite([(kind("linear"), Zero())]),  # softmax takes its kind's default
    "taylor": Composite([(kind("linear"), Zero()), (kind("softmax"), SoftmaxTaylor())]),
    "gradient": Composite([(kind("linear"), Zero()), (kind("softmax"), Gradient())]),
}


@pytest.mark.parametrize("composite", SOFTMAX_COMPOSITES)
def test_softmax_rule_alone(composite: str) -> None:
    """Softmax then a fixed linear readout: ``R_in_i = x_i (R_i − s_i Σ_j R_j)``, by hand.

    Gradient × Input through a softmax is the same rule, so ``Gradient()`` gives it too.
    """
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(4, 6, dtype=torch.float64, generator=generator) * 2
    weight = torch.randn(3, 6, dtype=torch.float64, generator=generator)
    target = torch.tensor([0, 1, 2, 1])
    expl = relprop.explain(SoftmaxReadout(weight), x, target, SOFTMAX_COMPOSITES[composite])
    s = torch.softmax(x, -1)
    relevance = s * weight[target]  # LRP-0 on a bias-free readout: R_i = s_i w_ti
    by_hand = x * (relevance - s * relevance.sum(-1, keepdim=True))
    torch.testing.assert_close(expl.relevance, by_hand, rtol=1e-12, atol=1e-14)


class _SoftmaxHead(nn.Module):
    """``w · softmax(x)``, the softmax optionally computed in another dtype than ``x``."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.dtype = dtype
        self.head = nn.Linear(6, 3, bias=False, dtype=dtype or torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.softmax(x, dim=-1, dtype=self.dtype))


@pytest.mark.parametrize("dtype", [None, torch.float64], ids=["same-dtype", "upcast"])
def test_softmax_rule_in_its_own_dtype_or_upcast(dtype: torch.dtype | None) -> None:
    """The softmax rule through PyTorch's fused softmax backward (input and output share a
    dtype) and spelled out (``softmax(x, dtype=...)`` upcasts) against the oracle."""
    torch.manual_seed(3)
    model = _SoftmaxHead(dtype).eval()
    x = torch.randn(4, 5, 6, dtype=torch.float64 if dtype is None else torch.float32)
    r_z = torch.randn(4, 5, 3, dtype=torch.float64)
    target = r_z if dtype is None else r_z.float()
    expl = relprop.explain(model, x, target=target, composite=attnlrp(epsilon=1e-6))
    s = torch.softmax(x.double(), dim=-1)
    w = model.head.weight.detach().double()
    z = s @ w.T
    expected = softmax_relevance(x.double(), s, linear_relevance(s, w, z, r_z, 1e-6))
    tol = 1e-9 if dtype is None else 1e-5
    torch.testing.assert_close(expl.relevance.double(), expected, rtol=tol, atol=tol)
