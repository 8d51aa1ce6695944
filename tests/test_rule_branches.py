"""The branches the αβ and γ rules take by the signs of their inputs and outputs, and αβ's
relevance-change report, against float64 references computed from the dense matrix.

``tests/test_rules.py`` runs each rule through ``relprop.explain`` on a lone layer; here
``rule.propagate`` gets the op view directly, so that the branches the engine reaches only
inside larger nets are pinned down too: a merged ReLU (``op.clipped``: ``z = max(0, z)``,
relevance only on open outputs) on inputs ``≥ 0`` and of both signs, and unclipped outputs of
both signs whose negative ones carry no signal (a ReLU the engine did not merge).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relprop import rules
from relprop.rules.ops import LinearOp
from tests.test_rules import (
    LAYERS,
    S,
    assert_matches,
    dense_layer,
    make_input,
    neg,
    oracle_alpha_beta,
    oracle_gamma,
    pos,
    run_oracle,
)

CASES = {
    "gamma": (rules.Gamma(0.25, stabilizer=S), oracle_gamma(0.25)),
    "gamma-3": (rules.Gamma(3.0, stabilizer=S), oracle_gamma(3.0)),
    "gamma-s0": (rules.Gamma(0.25, stabilizer=0.0), oracle_gamma(0.25, s=0.0)),
    "alpha2beta1": (rules.AlphaBeta(2.0, 1.0, stabilizer=S), oracle_alpha_beta(2.0, 1.0)),
    "alpha1.5beta0.5": (rules.AlphaBeta(1.5, 0.5, stabilizer=S), oracle_alpha_beta(1.5, 0.5)),
    "alpha2beta1-s0": (rules.AlphaBeta(2.0, 1.0, stabilizer=0.0),
                       oracle_alpha_beta(2.0, 1.0, s=0.0)),
    "zplus": (rules.ZPlus(stabilizer=S), oracle_alpha_beta(1.0, 0.0)),
}
LAYER_NAMES = ["linear", "conv2d", "conv2d-depthwise", "convT2d", "conv2d+bn", "linear+bn"]


def op_view(model: nn.Module) -> LinearOp:
    """The engine's view of ``model`` (a layer, optionally followed by an eval BatchNorm)."""
    layer, *rest = list(model[0]) if isinstance(model[0], nn.Sequential) else [model[0]]
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, nn.Linear):
        op = LinearOp("linear", weight, bias, {})
    else:
        transposed = isinstance(layer, nn.ConvTranspose2d)
        options = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
                   "groups": layer.groups,
                   "fn": F.conv_transpose2d if transposed else F.conv2d}
        if transposed:
            options["output_padding"] = layer.output_padding
        op = LinearOp("conv_transpose" if transposed else "conv", weight, bias, options)
    for bn in rest:
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        op = op.fuse_affine(scale, (bn.bias - bn.running_mean * scale).detach())
    return op


def relevance_and_signal(y: torch.Tensor, live: torch.Tensor, seed: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random relevance on the ``live`` outputs and the signal ``R / z`` the engine carries
    (0 where ``z`` is)."""
    g = torch.Generator().manual_seed(4000 + seed)
    R = torch.randn(y.shape, generator=g, dtype=torch.float64) * live
    return R, torch.where(y != 0, R / torch.where(y != 0, y, 1.0), 0.0)


@pytest.mark.parametrize("outputs", ["clipped", "positive-signal", "all"])
@pytest.mark.parametrize("inputs", ["nonneg", "signed"])
@pytest.mark.parametrize("layer_name", LAYER_NAMES)
@pytest.mark.parametrize("rule_name", list(CASES))
def test_rule_branch_matches_dense_oracle(rule_name: str, layer_name: str, inputs: str,
                                          outputs: str) -> None:
    """``clipped``: a merged ReLU, ``z = max(0, z)`` and relevance on open outputs only;
    ``positive-signal``: the layer's own ``z`` of both signs, relevance on ``z > 0`` only;
    ``all``: relevance on every non-zero output."""
    rule, oracle = CASES[rule_name]
    negative_outputs = False
    for seed in (0, 1, 2):
        model, W, b = dense_layer(layer_name, True, seed)
        shape = LAYERS[layer_name][1]
        a = make_input(shape, inputs, seed)
        with torch.no_grad():
            y = model(a)
        negative_outputs |= bool((y < 0).any())
        op = op_view(model)
        op.clipped = outputs == "clipped"
        z = y.clamp(min=0) if op.clipped else y
        R, grad = relevance_and_signal(z, (y > 0) if outputs != "all" else (y != 0), seed)
        c = rule.propagate(op, a, z, grad)
        assert_matches(a * c, run_oracle(oracle, a, W, b, R),
                       f"{rule_name} on {layer_name} ({inputs} inputs, {outputs})")
    assert negative_outputs, "the cases must have negative outputs"


def dyadic_linear(seed: int, signed: bool) -> tuple[nn.Linear, torch.Tensor]:
    """A linear layer and inputs whose sums are exact in float64 (small dyadic values), with
    rows of every kind: all weights > 0, all < 0, mixed, all 0; and inputs with zeros, so
    that ``P_k = 0`` and ``N_k = 0`` occur exactly and no test of them is a rounding tie."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randint(-4, 5, (12, 8), generator=g).double() / 4
    W[0].abs_().add_(0.25)
    W[1].abs_().add_(0.25).neg_()
    W[2] = 0.0
    layer = nn.Linear(8, 12).double()
    with torch.no_grad():
        layer.weight.copy_(W)
        layer.bias.copy_(torch.randint(-2, 3, (12,), generator=g).double() / 2)
        layer.bias[3] = 0.0
    x = torch.randint(0 if not signed else -3, 4, (5, 8), generator=g).double() / 2
    x[0].abs_()  # rows of one sign give outputs of one sign here, whatever the mode
    x[4] = 0.0  # a sample whose outputs are all biases
    return layer, x


@pytest.mark.parametrize("clipped", [False, True], ids=["own-z", "merged-relu"])
@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
@pytest.mark.parametrize("alpha,beta", [(2.0, 1.0), (1.5, 0.5), (3.0, 2.0)])
@pytest.mark.parametrize("stabilizer", [2.0 ** -20, 0.0])
def test_alpha_beta_reports_its_relevance_change(alpha: float, beta: float, signed: bool,
                                                 clipped: bool, stabilizer: float) -> None:
    """Per sample ``Σ_k (α[P_k > 0] − β[N_k < 0] − 1) R_k / Σ_k R_k`` (0 where the relevance
    that arrived is below 1e-3 of the largest sample's), from the dense contributions."""
    layer, x = dyadic_linear(int(alpha * 10 + beta), signed)
    op = LinearOp("linear", layer.weight.detach(), layer.bias.detach(), {})
    op.clipped = clipped
    with torch.no_grad():
        y = layer(x)
    z = y.clamp(min=0) if clipped else y
    R, grad = relevance_and_signal(z, z != 0, 7)
    R[3], grad[3] = 0.0, 0.0  # nothing arrives: no change reported
    rules.AlphaBeta(alpha, beta, stabilizer).propagate(op, x, z, grad)
    contributions = x.numpy()[:, None, :] * layer.weight.detach().numpy()[None]
    P, N = pos(contributions).sum(-1), neg(contributions).sum(-1)
    factor = alpha * (P > 0) - beta * (N < 0)
    Rn = R.numpy()
    arrived = Rn.sum(1)
    judged = np.abs(arrived) > 1e-3 * np.abs(arrived).max()
    expected = np.where(judged, ((factor - 1) * Rn).sum(1) / np.where(judged, arrived, 1), 0)
    assert len(set(factor.ravel().tolist())) >= 3  # rows of several kinds really occur
    torch.testing.assert_close(op.reports["relevance_change"],
                               torch.from_numpy(expected), rtol=1e-12, atol=1e-12)


def test_alpha_beta_report_on_a_conv_over_a_dead_corner() -> None:
    """Outputs over inputs that are all 0 pass ``α·0 − β·0 = 0`` of their relevance (their
    bias takes it): the report counts them so, without a rounding tie at the threshold."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        conv = nn.Conv2d(2, 3, 3, padding=1).double()
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.3, -0.2, 0.7], dtype=torch.float64))
    x = make_input((2, 2, 6, 6), "nonneg", 0) + 0.25
    x[:, :, :3, :3] = 0.0
    options = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
               "groups": 1, "fn": F.conv2d}
    op = LinearOp("conv", conv.weight.detach(), conv.bias.detach(), options)
    with torch.no_grad():
        y = conv(x)
    R, grad = relevance_and_signal(y, y != 0, 1)
    rule = rules.AlphaBeta(2.0, 1.0, stabilizer=1e-6)
    rule.propagate(op, x, y, grad)
    with torch.no_grad():  # x ≥ 0: the sums of positive and of negative contributions
        P = F.conv2d(x, conv.weight.clamp(min=0), padding=1)
        N = F.conv2d(x, conv.weight.clamp(max=0), padding=1)
    factor = 2.0 * (P > 0) - 1.0 * (N < 0)
    assert bool((factor == 0).any())  # the dead corner
    expected = ((factor - 1) * R).sum((1, 2, 3)) / R.sum((1, 2, 3))
    torch.testing.assert_close(op.reports["relevance_change"], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("stabilizer", [2.0 ** -20, 0.0])
def test_alpha_beta_where_the_models_z_rounds_above_its_positive_part(stabilizer: float
                                                                    ) -> None:
    """``−z⁻ = z⁺ − z`` is a difference of two sums rounded in different orders: where an
    output has no negative contribution it is noise, 0 or of the wrong sign (here made
    exact: the model's ``z`` one stabiliser above ``P + b``). The rule must stay finite and
    give the oracle's relevance (that output's ``W⁻`` column is 0)."""
    W = torch.tensor([[0.5, 0.25, 1.0, 0.75], [0.5, -0.25, 1.0, -0.75],
                      [-0.5, 0.25, -1.0, 0.75]], dtype=torch.float64)
    b = torch.tensor([0.5, -0.25, 0.25], dtype=torch.float64)
    op = LinearOp("linear", W, b, {})
    a = torch.tensor([[1.0, 0.5, 0.25, 2.0], [0.0, 1.5, 0.5, 0.25]], dtype=torch.float64)
    z = a @ W.T + b
    z[:, 0] += 2.0 ** -20  # above P + b⁺ + ε (ε = 0) or onto it (ε = 2⁻²⁰)
    R, grad = relevance_and_signal(z, z != 0, 3)
    rule = rules.AlphaBeta(2.0, 1.0, stabilizer)
    relevance = a * rule.propagate(op, a, z, grad)
    assert bool(torch.isfinite(relevance).all())
    expected = run_oracle(oracle_alpha_beta(2.0, 1.0, stabilizer), a, W.numpy(), b.numpy(), R)
    torch.testing.assert_close(relevance, torch.from_numpy(expected), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("inputs", ["nonneg", "signed"])
@pytest.mark.parametrize("layer_name", ["linear", "conv2d", "conv2d+bn"])
@pytest.mark.parametrize("rule_name", ["alpha2beta1", "alpha1.5beta0.5", "alpha2beta1-s0"])
def test_alpha_beta_terms_kept_for_further_targets_match_the_oracle(
        rule_name: str, layer_name: str, inputs: str) -> None:
    """With another target's pass to follow (``op.again``) αβ keeps its denominators and
    runs the stacked vjps from them (``[W⁺; W⁻]``, and the block on inputs of both signs):
    each of two signals through the kept terms matches the oracle, and reports its change
    as the single-pass rule does."""
    rule, oracle = CASES[rule_name]
    model, W, b = dense_layer(layer_name, True, 5)
    a = make_input(LAYERS[layer_name][1], inputs, 5)
    with torch.no_grad():
        z = model(a)
    op = op_view(model)
    op.again = True
    for seed in (0, 1):
        R, grad = relevance_and_signal(z, z != 0, seed)
        c = rule.propagate(op, a, z, grad)
        assert_matches(a * c, run_oracle(oracle, a, W, b, R),
                       f"{rule_name} on {layer_name} ({inputs} inputs, kept terms, {seed})")
        single = op_view(model)
        rule.propagate(single, a, z, grad)
        torch.testing.assert_close(op.reports["relevance_change"],
                                   single.reports["relevance_change"], rtol=1e-9, atol=1e-12)
    op.release()


@pytest.mark.parametrize("inputs", ["nonneg", "signed"])
@pytest.mark.parametrize("layer_name", ["conv2d", "conv2d+bn"])
def test_alpha_beta_in_chunks_of_the_batch_matches_the_oracle(
        layer_name: str, inputs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose signal exceeds ``_CHUNK_BYTES`` runs in chunks (here one sample each):
    the same relevance as the oracle, and the same report as in one piece."""
    from relprop.rules import alphabeta

    rule, oracle = CASES["alpha2beta1"]
    model, W, b = dense_layer(layer_name, True, 6)
    a = make_input(LAYERS[layer_name][1], inputs, 6)
    assert a.shape[0] >= 2
    with torch.no_grad():
        z = model(a)
    R, grad = relevance_and_signal(z, z != 0, 2)
    whole = op_view(model)
    rule.propagate(whole, a, z, grad)
    monkeypatch.setattr(alphabeta, "_CHUNK_BYTES", 1)
    op = op_view(model)
    c = rule.propagate(op, a, z, grad)
    assert_matches(a * c, run_oracle(oracle, a, W, b, R), f"chunked on {layer_name}")
    torch.testing.assert_close(op.reports["relevance_change"],
                               whole.reports["relevance_change"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
def test_alpha_beta_with_beta_not_one_in_a_coarse_dtype(dtype: torch.dtype, signed: bool
                                                       ) -> None:
    """bfloat16/float16 make ``z⁻`` from its own forward (:func:`_negative_denominator`);
    β ≠ 1 scales that branch as in float32: on dyadic values, exact in 8 bits, the
    relevance matches the float64 oracle to the dtype's rounding."""
    layer, x = dyadic_linear(11, signed)
    W, b = layer.weight.detach(), layer.bias.detach()
    op = LinearOp("linear", W.to(dtype), b.to(dtype), {})
    with torch.no_grad():
        y = layer(x)
    R, grad = relevance_and_signal(y, y != 0, 5)
    a, z = x.to(dtype), y.to(dtype)
    c = rules.AlphaBeta(1.5, 0.5, stabilizer=2.0 ** -20).propagate(op, a, z, grad.to(dtype))
    relevance = (a * c).double()
    carried = (z * grad.to(dtype)).double()  # the relevance the rule got, rounded
    expected = run_oracle(oracle_alpha_beta(1.5, 0.5, 2.0 ** -20), x, W.numpy(), b.numpy(),
                          carried)
    torch.testing.assert_close(relevance, torch.from_numpy(expected), rtol=3e-2,
                               atol=3e-2 * float(np.abs(expected).max()))
