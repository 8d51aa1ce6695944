"""Every LRP rule against an independent float64 dense-matrix oracle.

A linear layer (linear, conv, transposed conv, optionally followed by an eval BatchNorm) is an
affine map ``z = W a + b`` over the flattened input. We recover ``W`` (outputs x inputs) with
``torch.autograd.functional.jacobian`` and ``b`` as ``f(0)``, then evaluate each rule's formula
from Montavon et al. (2019), Appendix 10.A, directly with numpy matrices, one sample at a time.
``relprop.explain`` on ``nn.Sequential(layer)`` with ``OutputRelevance(R_out)`` must agree.

Notation of the oracles: ``a`` (D,) the layer input, ``W`` (K, D), ``b`` (K,), ``R`` (K,) the
output relevance; ``Z[k, j] = a_j w_jk`` are the contributions and ``z = Z.sum(1) + b``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop import rules
from relprop.composites import Composite, epsilon_gamma_box, kind, montavon2019, uniform
from relprop.targets import OutputRelevance

S = 1e-12  # stabilizer for the rules that take one: small enough not to matter at 1e-9
RTOL = 1e-9

Oracle = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]




# ------------------------------------------------------------------------------ oracles
def sign0(x: np.ndarray) -> np.ndarray:
    """``sign(x)`` with ``sign(0) = +1``."""
    return np.where(x >= 0, 1.0, -1.0)


def stab(d: np.ndarray, s: float | np.ndarray = S) -> np.ndarray:
    """The rules' stabilised denominator ``d + s * sign0(d)``."""
    return d + s * sign0(d)


def pos(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def neg(x: np.ndarray) -> np.ndarray:
    return np.minimum(x, 0.0)


def spread(num: np.ndarray, den: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``R_j = sum_k num[k, j] / den[k] * R_k``, where a row with ``R_k = 0`` or ``den[k] = 0``
    gives 0 (an exactly-0 output carries no relevance; a denominator that is a sum of terms of
    one sign is 0 only if every term, i.e. every numerator of the row, is 0)."""
    ratio = np.divide(R, den, out=np.zeros_like(R), where=(R != 0) & (den != 0))
    return (num * ratio[:, None]).sum(axis=0)


def oracle_zero(a, W, b, R):
    """LRP-0: ``R_j = sum_k a_j w_jk / (sum_j a_j w_jk + b_k) R_k``."""
    Z = W * a
    return spread(Z, Z.sum(1) + b, R)


def oracle_epsilon(eps: float, relative: bool = False) -> Oracle:
    """LRP-ε: ``R_j = sum_k a_j w_jk / (z_k + ε' sign0(z_k)) R_k`` with ``ε' = ε``, or with
    ``relative``: ``ε' = ε · std(z)`` over this sample's outputs (population std)."""
    def oracle(a, W, b, R):
        Z = W * a
        z = Z.sum(1) + b
        e = eps * np.std(z) if relative else eps
        return spread(Z, stab(z, e), R)
    return oracle


def oracle_gamma(gamma: float, s: float = S) -> Oracle:
    """LRP-γ, sign-aware. For ``z_k >= 0``:
    ``R_j = sum_k (Z_kj + γ Z_kj^+) / (z_k + γ (sum_j Z_kj^+ + b_k^+)) R_k``;
    for ``z_k < 0`` the same with the negative parts ``Z^-``, ``b^-``."""
    def oracle(a, W, b, R):
        Z = W * a
        z = Z.sum(1) + b
        part = np.where((z >= 0)[:, None], pos(Z), neg(Z))
        b_part = np.where(z >= 0, pos(b), neg(b))
        return spread(Z + gamma * part, stab(z + gamma * (part.sum(1) + b_part), s), R)
    return oracle


def oracle_alpha_beta(alpha: float, beta: float, s: float = S) -> Oracle:
    """LRP-αβ: ``R_j = sum_k (α Z_kj^+ / z_k^+ − β Z_kj^- / z_k^-) R_k`` with
    ``z_k^± = sum_j Z_kj^± + b_k^±``."""
    def oracle(a, W, b, R):
        Z = W * a
        Zp, Zn = pos(Z), neg(Z)
        return (alpha * spread(Zp, stab(Zp.sum(1) + pos(b), s), R)
                - beta * spread(Zn, stab(Zn.sum(1) + neg(b), s), R))
    return oracle


def oracle_flat(a, W, b, R):
    """Flat: ``R_j = sum_k 1[j ∈ field(k)] / |field(k)| R_k``; the receptive field of ``k`` is
    every input connected to it (``w_jk != 0``; random weights are never exactly 0)."""
    M = (W != 0).astype(np.float64)
    return spread(M, stab(M.sum(1)), R)


def oracle_wsquare(a, W, b, R):
    """w²: ``R_i = sum_j w_ij² / (sum_i w_ij²) R_j``; bias ignored."""
    W2 = W * W
    return spread(W2, stab(W2.sum(1)), R)


def oracle_zbox(low: np.ndarray, high: np.ndarray) -> Oracle:
    """z^B: ``R_i = sum_j (x_i w_ij − l_i w_ij^+ − h_i w_ij^-) / sum_i (same) R_j``; bias
    ignored. ``low``/``high`` hold one bound per flattened input."""
    def oracle(a, W, b, R):
        num = W * a - pos(W) * low - neg(W) * high
        return spread(num, stab(num.sum(1)), R)
    return oracle


def per_input(values: list[float], shape: tuple[int, ...]) -> np.ndarray:
    """Per-channel bounds (channel = dim 1) broadcast to one value per flattened input."""
    v = np.asarray(values, dtype=np.float64).reshape([-1] + [1] * (len(shape) - 2))
    return np.broadcast_to(v, shape[1:]).reshape(-1)


# ------------------------------------------------------------------------------- layers
# name -> (layer factory, input shape); every factory takes ``bias``
LAYERS: dict[str, tuple[Callable[[bool], nn.Module], tuple[int, ...]]] = {
    "linear": (lambda b: nn.Linear(6, 5, bias=b), (3, 6)),
    "conv1d": (lambda b: nn.Conv1d(2, 3, 3, bias=b), (2, 2, 7)),
    "conv1d-s2-p1-g2": (lambda b: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, bias=b),
                        (2, 4, 8)),
    "conv1d-d2-same": (lambda b: nn.Conv1d(2, 3, 3, dilation=2, padding="same", bias=b),
                       (2, 2, 9)),
    "conv2d": (lambda b: nn.Conv2d(2, 3, 3, bias=b), (2, 2, 5, 5)),
    "conv2d-s2-p1": (lambda b: nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=b), (2, 2, 6, 6)),
    "conv2d-g2-d2": (lambda b: nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, bias=b),
                     (2, 4, 5, 5)),
    "conv2d-depthwise": (lambda b: nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=b),
                         (2, 3, 4, 4)),
    "conv3d": (lambda b: nn.Conv3d(2, 2, 2, stride=(1, 2, 1), bias=b), (2, 2, 3, 4, 3)),
    "convT1d": (lambda b: nn.ConvTranspose1d(2, 3, 3, stride=2, bias=b), (2, 2, 4)),
    "convT1d-p1-op1-g2": (lambda b: nn.ConvTranspose1d(4, 2, 3, stride=2, padding=1,
                                                       output_padding=1, groups=2, bias=b),
                          (2, 4, 4)),
    "convT2d": (lambda b: nn.ConvTranspose2d(2, 3, 3, bias=b), (2, 2, 3, 3)),
    "convT2d-s2-p1-op1-g2-d2": (lambda b: nn.ConvTranspose2d(
        4, 4, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2, bias=b),
        (2, 4, 3, 3)),
    # an eval BatchNorm after the layer is merged into it: the oracle is the composed map
    "conv2d+bn": (lambda b: nn.Sequential(nn.Conv2d(2, 3, 3, bias=b), nn.BatchNorm2d(3)),
                  (2, 2, 4, 4)),
    "convT2d-g2+bn": (lambda b: nn.Sequential(
        nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2, bias=b), nn.BatchNorm2d(4)),
        (2, 4, 2, 2)),
    "linear+bn": (lambda b: nn.Sequential(nn.Linear(5, 4, bias=b), nn.BatchNorm1d(4)), (3, 5)),
}
SEEDS = (0, 1, 2)


@functools.cache
def dense_layer(name: str, bias: bool, seed: int
                ) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """The model ``nn.Sequential(layer)`` in float64 and eval mode, its ``W`` and ``b``."""
    factory, shape = LAYERS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = factory(bias).double()
        with torch.no_grad():
            for m in layer.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.normal_(0.0, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(-1.5, 1.5)  # negative scales flip signs of W and b
                    m.bias.normal_(0.0, 0.5)
                elif getattr(m, "bias", None) is not None:
                    m.bias.normal_(0.0, 0.5)  # biases large enough to matter
    model = nn.Sequential(layer).eval()
    in_shape = (1,) + shape[1:]

    def f(v: torch.Tensor) -> torch.Tensor:
        return model(v.reshape(in_shape)).reshape(-1)

    zero = torch.zeros(math.prod(in_shape), dtype=torch.float64)
    with torch.no_grad():
        b = f(zero).numpy()
    W = torch.autograd.functional.jacobian(f, zero, vectorize=True).numpy()
    return model, W, b


def make_input(shape: tuple[int, ...], mode: str, seed: int) -> torch.Tensor:
    """``signed``: N(0, 1) with every 5th entry exactly 0; ``nonneg``: ReLU of N(0, 1)."""
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if mode == "signed":
        x.view(-1)[::5] = 0.0
        return x
    return x.clamp(min=0)


def output_relevance(y: torch.Tensor, mode: str, seed: int) -> torch.Tensor:
    """Random relevance of both signs on every non-zero output (an output that is exactly 0
    cannot carry relevance); for ``pos-out`` only on outputs > 0 (as behind a ReLU: the γ
    rule's single-vjp fast path)."""
    g = torch.Generator().manual_seed(2000 + seed)
    R = torch.randn(y.shape, generator=g, dtype=torch.float64)
    return R * (y > 0) if mode == "pos-out" else R * (y != 0)


def run_oracle(oracle: Oracle, x: torch.Tensor, W: np.ndarray, b: np.ndarray,
               R: torch.Tensor) -> np.ndarray:
    xs = x.reshape(x.shape[0], -1).numpy()
    Rs = R.reshape(R.shape[0], -1).numpy()
    return np.stack([oracle(xs[n], W, b, Rs[n]) for n in range(len(xs))]).reshape(x.shape)


def assert_matches(actual: torch.Tensor, expected: np.ndarray, what: str) -> None:
    exp = torch.from_numpy(np.ascontiguousarray(expected))
    scale = float(exp.abs().max()) or 1.0
    torch.testing.assert_close(actual, exp, rtol=RTOL, atol=RTOL * scale,
                               msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------- rule vs oracle
CH_LOW, CH_HIGH = [-1.0, -1.5, -0.5, -2.0], [1.0, 2.0, 1.5, 0.5]


def pixel_bounds(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element bounds ``low < 0 < high`` of the given shape, different at every element."""
    g = torch.Generator().manual_seed(3000 + seed)
    low = -0.5 - 2 * torch.rand(shape, generator=g, dtype=torch.float64)
    return low, 0.5 + 2 * torch.rand(shape, generator=g, dtype=torch.float64)


def rule_cases(channels: int, shape: tuple[int, ...]) -> dict[str, tuple[rules.Rule, Oracle]]:
    low, high = CH_LOW * channels, CH_HIGH * channels  # cycled, cut to the channel count
    low, high = low[:channels], high[:channels]
    p_low, p_high = pixel_bounds(shape[1:])  # one bound per input element, shared by the batch
    return {
        "zero": (rules.Zero(), oracle_zero),
        "epsilon": (rules.Epsilon(0.5), oracle_epsilon(0.5)),
        "epsilon-std": (rules.Epsilon(0.25, relative_to_std=True), oracle_epsilon(0.25, True)),
        "gamma": (rules.Gamma(0.25, stabilizer=S), oracle_gamma(0.25)),
        "gamma-2": (rules.Gamma(2.0, stabilizer=S), oracle_gamma(2.0)),
        "alpha2beta1": (rules.AlphaBeta(2.0, 1.0, stabilizer=S), oracle_alpha_beta(2.0, 1.0)),
        "alpha1beta0": (rules.AlphaBeta(1.0, 0.0, stabilizer=S), oracle_alpha_beta(1.0, 0.0)),
        "zplus": (rules.ZPlus(stabilizer=S), oracle_alpha_beta(1.0, 0.0)),
        "flat": (rules.Flat(stabilizer=S), oracle_flat),
        "wsquare": (rules.WSquare(stabilizer=S), oracle_wsquare),
        "zbox": (rules.ZBox(-2.0, 2.5, stabilizer=S),
                 oracle_zbox(np.full(1, -2.0), np.full(1, 2.5))),
        "zbox-channel": (rules.ZBox(low, high, stabilizer=S),
                         oracle_zbox(per_input(low, shape), per_input(high, shape))),
        "zbox-pixel": (rules.ZBox(p_low, p_high, stabilizer=S),
                       oracle_zbox(p_low.reshape(-1).numpy(), p_high.reshape(-1).numpy())),
    }


RULE_NAMES = list(rule_cases(1, (1, 1)))
MODES = [("signed", "all"), ("nonneg", "all"), ("nonneg", "pos-out")]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule_name", RULE_NAMES)
def test_rule_matches_dense_oracle(rule_name: str, layer_name: str, bias: bool,
                                   seed: int) -> None:
    model, W, b = dense_layer(layer_name, bias, seed)
    shape = LAYERS[layer_name][1]
    rule, oracle = rule_cases(shape[1], shape)[rule_name]
    for input_mode, relevance_mode in MODES:
        x = make_input(shape, input_mode, seed)
        with torch.no_grad():
            y = model(x)
        R_out = output_relevance(y, relevance_mode, seed)
        if input_mode == "signed":  # the cases must exercise both branches of signed rules
            assert bool((y > 0).any()) and bool((y < 0).any())
        expl = relprop.explain(model, x, target=OutputRelevance(R_out), composite=uniform(rule))
        assert set(expl.rules.values()) == {repr(rule)}, expl.rules
        assert_matches(expl.relevance, run_oracle(oracle, x, W, b, R_out),
                       f"{rule_name} on {layer_name} ({input_mode} input, {relevance_mode})")


@pytest.mark.parametrize("live", [[3], [0, 5], []], ids=["one-row", "two-rows", "none"])
@pytest.mark.parametrize("rule_name", ["zero", "epsilon", "epsilon-std", "gamma", "alpha2beta1"])
def test_linear_over_positions_with_few_live_rows(rule_name: str, live: list[int]) -> None:
    """A linear layer over (batch, position, feature) with relevance on a few positions only
    (a language-model head explaining one next token): ε skips the dead rows, and the
    result must still be the per-position oracle, with exact zeros elsewhere."""
    torch.manual_seed(7)
    layer = nn.Linear(5, 41).double().eval()  # 8x wider output: the row-skipping path
    W, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    rule, oracle = rule_cases(1, (1, 1))[rule_name]
    x = torch.randn(2, 8, 5, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    R_out = torch.zeros_like(y)
    R_out[:, live] = torch.randn(2, len(live), 41, dtype=torch.float64)
    expl = relprop.explain(layer, x, target=OutputRelevance(R_out), composite=uniform(rule))
    expected = np.zeros(x.shape)
    for n in range(2):
        for t in live:
            if rule_name == "epsilon-std":  # ε' = 0.25 std of z over the whole sample
                oracle = oracle_epsilon(0.25 * float(y[n].std(unbiased=False)))
            expected[n, t] = oracle(x[n, t].numpy(), W, b, R_out[n, t].numpy())
    assert_matches(expl.relevance, expected, f"{rule_name}, live positions {live}")


def test_oracle_layers_are_affine_maps() -> None:
    """Sanity of the oracle itself: ``W x + b`` reproduces the layer output."""
    for name in LAYERS:
        model, W, b = dense_layer(name, True, 0)
        x = make_input(LAYERS[name][1], "signed", 0)
        with torch.no_grad():
            y = model(x).reshape(x.shape[0], -1).numpy()
        np.testing.assert_allclose(x.reshape(x.shape[0], -1).numpy() @ W.T + b, y,
                                   rtol=1e-12, atol=1e-12, err_msg=name)


def test_stabilize_uses_sign_of_zero_as_plus() -> None:
    z = torch.tensor([0.0, -0.0, 2.0, -2.0], dtype=torch.float64)
    assert rules.stabilize(z, 0.5).tolist() == [0.5, 0.5, 2.5, -2.5]


ZERO_STABILIZER = {
    "epsilon-0": (rules.Epsilon(0.0), oracle_epsilon(0.0)),
    "gamma-s0": (rules.Gamma(0.25, stabilizer=0.0), oracle_gamma(0.25, s=0.0)),
    "alpha2beta1-s0": (rules.AlphaBeta(2.0, 1.0, stabilizer=0.0), oracle_alpha_beta(2, 1, 0.0)),
    "zplus-s0": (rules.ZPlus(stabilizer=0.0), oracle_alpha_beta(1.0, 0.0, s=0.0)),
    "flat-s0": (rules.Flat(stabilizer=0.0), oracle_flat),
}


@pytest.mark.parametrize("rule_name", list(ZERO_STABILIZER))
def test_zero_stabilizer_on_exactly_zero_denominators(rule_name: str) -> None:
    """ε = 0 and stabilizer = 0 are accepted; a denominator that is exactly 0 (a bias-free conv
    over a black image corner: ``z_k = 0``; non-negative inputs: ``z_k^- = 0``) has all-zero
    numerators, so its row must contribute 0, not 0/0 = NaN spread over the receptive field.
    """
    rule, oracle = ZERO_STABILIZER[rule_name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False)).double().eval()
    W = torch.autograd.functional.jacobian(
        lambda v: model(v.reshape(1, 1, 4, 4)).reshape(-1), torch.zeros(16).double()).numpy()
    x = make_input((2, 1, 4, 4), "nonneg", 0) + 0.1
    x[:, :, :2, :2] = 0.0  # the black corner: outputs there are exactly 0
    with torch.no_grad():
        y = model(x)
    R = output_relevance(y, "all", 0)
    expl = relprop.explain(model, x, target=OutputRelevance(R), composite=uniform(rule))
    assert_matches(expl.relevance, run_oracle(oracle, x, W, np.zeros(W.shape[0]), R), rule_name)


# ------------------------------------------------- a first layer that reads x indirectly
class Indirect(nn.Module):
    """A layer fed by an index-only transform of the input: ``layer(transform(x))``."""

    def __init__(self, layer: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.layer = layer
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.transform(x))


def _reflect_conv() -> tuple[nn.Module, Callable, Callable]:
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")
    pad = lambda v: F.pad(v, conv._reversed_padding_repeated_twice, mode="reflect")
    return nn.Sequential(conv), pad, lambda p: F.conv2d(p, conv.weight, conv.bias)


def _channels_last() -> tuple[nn.Module, Callable, Callable]:
    conv = nn.Conv2d(2, 3, 3)
    transform = lambda v: v.permute(0, 3, 1, 2)
    return Indirect(conv, transform), transform, conv


def _channel_slice() -> tuple[nn.Module, Callable, Callable]:
    conv = nn.Conv2d(2, 3, 3)
    transform = lambda v: v[:, :2]
    return Indirect(conv, transform), transform, conv


# name -> (builder of (model, transform T, layer L with model = L ∘ T), input shape)
INDIRECT = {
    "conv-reflect-padding": (_reflect_conv, (2, 2, 4, 5)),
    "channels-last-permute": (_channels_last, (2, 4, 5, 2)),
    "channel-slice": (_channel_slice, (2, 3, 4, 4)),
}


@pytest.mark.parametrize("rule_name", RULE_NAMES)
@pytest.mark.parametrize("case", list(INDIRECT))
def test_rule_on_layer_reading_transformed_input(case: str, rule_name: str) -> None:
    """``model = L ∘ T`` with ``T`` an index-only map (reflect padding, permute, slice): the
    rule acts on ``L`` with input ``a = T x`` (per tap: a padded copy of a pixel is an input of
    its own) and ``T``'s transpose sums the relevance of the copies, ``R_x = P^T R_a``.

    Flat, w² and z^B give relevance also to inputs that are exactly 0. Where the first layer
    reads ``x`` itself the engine deposits it; here it divides by ``a`` and drops it.
    """
    build, shape = INDIRECT[case]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model, transform, layer = build()
    model = model.double().eval()
    in_shape = (1,) + shape[1:]
    a_shape = transform(torch.zeros(in_shape, dtype=torch.float64)).shape
    T_ = lambda v: transform(v.reshape(in_shape)).reshape(-1)
    L_ = lambda v: layer(v.reshape(a_shape)).reshape(-1)
    P = torch.autograd.functional.jacobian(T_, torch.zeros(math.prod(in_shape)).double()).numpy()
    a0 = torch.zeros(math.prod(a_shape), dtype=torch.float64)
    W = torch.autograd.functional.jacobian(L_, a0, vectorize=True).detach().numpy()
    with torch.no_grad():
        b = L_(a0).numpy()
    rule, oracle = rule_cases(a_shape[1], a_shape)[rule_name]
    for input_mode in ("no zeros", "signed", "nonneg"):
        x = make_input(shape, "nonneg" if input_mode == "nonneg" else "signed", 0)
        if input_mode == "no zeros":
            x[x == 0] = 0.5
        with torch.no_grad():
            y = model(x)
        R = output_relevance(y, "all", 0)
        xs, Rs = x.reshape(shape[0], -1).numpy(), R.reshape(shape[0], -1).numpy()
        expected = np.stack([P.T @ oracle(P @ xs[n], W, b, Rs[n]) for n in range(shape[0])])
        expl = relprop.explain(model, x, target=OutputRelevance(R), composite=uniform(rule))
        assert_matches(expl.relevance, expected.reshape(shape),
                       f"{rule_name} on {case} ({input_mode} input)")


# ------------------------------------------------------------------ identities on nets
def relu_net(seed: int) -> nn.Module:
    """conv-ReLU-maxpool-conv-ReLU-avgpool-linear-ReLU-linear, with biases, float64."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3),
        ).double()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def mlp_net(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(),
                              nn.Linear(8, 3)).double()
        with torch.no_grad():
            model[-1].bias.uniform_(0.0, 0.3)  # some logits > 0 for the γ → ∞ check
    return model.eval()


NETS = {"conv": (relu_net, (3, 2, 8, 8)), "mlp": (mlp_net, (4, 6))}


def net_and_input(name: str, seed: int) -> tuple[nn.Module, torch.Tensor]:
    build, shape = NETS[name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return build(seed), x


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("net", list(NETS))
def test_uniform_zero_is_gradient_times_input(net: str, seed: int) -> None:
    model, x = net_and_input(net, seed)
    x_ = x.clone().requires_grad_(True)
    model(x_)[:, 1].sum().backward()
    expl = relprop.explain(model, x, target=1, composite=uniform(rules.Zero()))
    assert torch.equal(expl.relevance, x * x_.grad)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("net", list(NETS))
def test_large_gamma_is_zplus_is_alpha1_beta0(net: str, seed: int) -> None:
    model, x = net_and_input(net, seed)
    with torch.no_grad():
        y = model(x)
    R = y.clamp(min=0)  # γ → ∞ is z⁺ only on outputs z > 0 (on z < 0 it favours z⁻)
    assert bool((R > 0).any())

    def explain(rule: rules.Rule) -> torch.Tensor:
        return relprop.explain(model, x, target=OutputRelevance(R),
                               composite=uniform(rule)).relevance

    zplus = explain(rules.ZPlus(stabilizer=S))
    scale = float(zplus.abs().max())
    torch.testing.assert_close(explain(rules.AlphaBeta(1.0, 0.0, stabilizer=S)), zplus,
                               rtol=1e-12, atol=1e-12 * scale)
    torch.testing.assert_close(explain(rules.Gamma(1e8, stabilizer=S)), zplus,
                               rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("net", list(NETS))
def test_epsilon_tends_to_zero_rule(net: str) -> None:
    model, x = net_and_input(net, 0)

    def explain(rule: rules.Rule) -> torch.Tensor:
        return relprop.explain(model, x, target=0, composite=uniform(rule)).relevance

    lrp0 = explain(rules.Zero())
    errors = [float((explain(rules.Epsilon(e)) - lrp0).abs().max()) for e in (1e-1, 1e-3, 1e-5)]
    assert errors[0] > errors[1] > errors[2]
    scale = float(lrp0.abs().max())
    torch.testing.assert_close(explain(rules.Epsilon(1e-12)), lrp0, rtol=1e-8, atol=1e-8 * scale)
    torch.testing.assert_close(explain(rules.Epsilon(0.0)), lrp0, rtol=1e-12, atol=1e-12 * scale)


# ------------------------------------------------------------- z^B with per-pixel bounds
@pytest.mark.parametrize("layout", ["batch-of-1", "per-sample"])
def test_zbox_with_per_sample_bounds_matches_dense_oracle(layout: str) -> None:
    """Bounds of shape ``(1, C, H, W)`` or the input's full ``(B, C, H, W)``: each sample is
    checked against the dense oracle with its own bounds."""
    model, W, b = dense_layer("conv2d-s2-p1", True, 0)
    shape = LAYERS["conv2d-s2-p1"][1]
    x = make_input(shape, "signed", 0)
    low, high = pixel_bounds((1 if layout == "batch-of-1" else shape[0],) + shape[1:])
    with torch.no_grad():
        R = output_relevance(model(x), "all", 0)
    expl = relprop.explain(model, x, target=OutputRelevance(R),
                           composite=uniform(rules.ZBox(low, high, stabilizer=S)))
    expected = np.stack([
        oracle_zbox(low[n % len(low)].reshape(-1).numpy(), high[n % len(high)].reshape(-1).numpy())(
            x[n].reshape(-1).numpy(), W, b, R[n].reshape(-1).numpy())
        for n in range(shape[0])]).reshape(shape)
    assert_matches(expl.relevance, expected, f"zbox {layout}")


def test_epsilon_gamma_box_takes_per_pixel_bounds() -> None:
    """The composite with ``(C, H, W)`` bounds (it raised in the backward pass when they were
    flattened and read per channel): the first layer gets z^B with those bounds, equal to
    the same bounds given per sample, and to per-channel bounds when they are constant per
    channel."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).double().eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    low, high = pixel_bounds((3, 6, 6))
    low, high = torch.minimum(low, x.amin(0)), torch.maximum(high, x.amax(0))
    pixel = relprop.explain(model, x, 2, composite=epsilon_gamma_box(low, high))
    assert bool(torch.isfinite(pixel.relevance).all())
    rule = rules.ZBox(low, high)
    assert pixel.rules["0:conv2d"] == repr(rule) and len(repr(rule)) <= 120
    batched = relprop.explain(model, x, 2, composite=epsilon_gamma_box(
        low.expand(2, 3, 6, 6), high[None]))
    torch.testing.assert_close(batched.relevance, pixel.relevance, rtol=1e-12, atol=1e-14)
    ch_low, ch_high = torch.tensor([-3.0, -2.0, -4.0]), torch.tensor([3.0, 2.5, 4.0])
    per_channel = relprop.explain(model, x, 2, composite=epsilon_gamma_box(ch_low, ch_high))
    as_pixels = relprop.explain(model, x, 2, composite=epsilon_gamma_box(
        ch_low[:, None, None].expand(3, 6, 6), ch_high[:, None, None].expand(3, 6, 6)))
    torch.testing.assert_close(as_pixels.relevance, per_channel.relevance, rtol=1e-12,
                               atol=1e-14)
    assert not torch.allclose(per_channel.relevance, pixel.relevance)


@pytest.mark.parametrize("bound_shape", [(4,), (3, 6, 5), (4, 3, 6, 6), (2, 3, 6, 6)])
def test_zbox_bounds_of_the_wrong_shape_raise_naming_the_shapes(
        bound_shape: tuple[int, ...]) -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()).double().eval()
    x = torch.rand(3, 3, 6, 6, dtype=torch.float64)
    rule = rules.ZBox(-torch.ones(bound_shape), torch.ones(bound_shape))
    with pytest.raises(ValueError, match=re.escape(f"shape {bound_shape}") + ".*"
                       + re.escape("input of shape (3, 3, 6, 6)")):
        relprop.explain(model, x, 0, composite=uniform(rule))


def test_zbox_stores_bounds_as_given() -> None:
    low = torch.zeros(3, 224, 224)
    rule = rules.ZBox(low, 1.0)
    assert isinstance(rule.low, torch.Tensor) and rule.low.shape == (3, 224, 224)
    assert rule.high == 1.0 and isinstance(rule.high, float)
    assert isinstance(rules.ZBox([0.0, 1.0], [2, 3]).low, torch.Tensor)
    with pytest.raises(ValueError, match="finite"):
        rules.ZBox(-math.inf, 1.0)


# ------------------------------------------------------------- repr, equality and hash
def every_rule(big: torch.Tensor) -> list[rules.Rule]:
    return [rules.Zero(), rules.Epsilon(0.25, relative_to_std=True), rules.Gamma(0.25),
            rules.AlphaBeta(2.0, 1.0), rules.ZPlus(), rules.Flat(), rules.WSquare(),
            rules.ZBox(-big, big), rules.ZBox([-1.0, -2.0, -3.0], 3.0), rules.Pass(),
            rules.Gradient(), rules.WinnerTakeAll(), rules.SumPooling(), rules.Product(),
            rules.SoftmaxTaylor(), rules.Constant(), rules.NormIdentity(),
            rules.Attention(through_scores=False)]


def test_every_rule_has_a_short_repr() -> None:
    big = torch.ones(3, 224, 224)
    made = every_rule(big)
    every_rule_class = {name for name in rules.__all__
                        if isinstance(getattr(rules, name), type)
                        and issubclass(getattr(rules, name), rules.Rule)}
    assert {type(r).__name__ for r in made} >= every_rule_class - {"Rule", "LayerRule"}
    for rule in made:
        assert len(repr(rule)) <= 120, repr(rule)
    assert "low=tensor(shape=(3, 224, 224))" in repr(rules.ZBox(-big, big))
    assert "tensor([-1.0, -2.0, -3.0])" in repr(rules.ZBox([-1.0, -2.0, -3.0], 3.0))


def test_rules_compare_and_hash_by_their_parameters() -> None:
    big = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0))
    for a, b in zip(every_rule(big), every_rule(big.clone())):
        assert a == b and hash(a) == hash(b), repr(a)
    assert rules.Gamma(0.25) != rules.Gamma(0.5) and rules.ZPlus() != rules.AlphaBeta(1.0, 0.0)
    assert rules.ZBox(0, 1) == rules.ZBox(0.0, 1.0)
    other = big.clone()
    other[2, 100, 7] += 1.0
    assert rules.ZBox(big, 1.0) != rules.ZBox(other, 1.0)  # the same shape, another value
    assert rules.ZBox(big, 1.0) != rules.ZBox(1.0, 1.0)
    assert rules.ZBox([0.0, 1.0], 2.0) == rules.ZBox(torch.tensor([0.0, 1.0]), 2.0)
    assert len({rules.Gamma(0.25), rules.Gamma(0.25), rules.ZBox(big, 1.0),
                rules.ZBox(big.clone(), 1.0)}) == 2


# ------------------------------------------------- ε relative to std where std = 0
def test_epsilon_relative_to_std_on_a_blank_image_is_finite() -> None:
    """A blank image through bias-free convolutions: every output of every layer is 0, std 0;
    ε falls back to its absolute value, the map is finite (and 0: nothing was there)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 2 * 2, 3)).double().eval()
    x = torch.zeros(2, 3, 6, 6, dtype=torch.float64)
    x[1] = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for composite in (uniform(rules.Epsilon(0.25, relative_to_std=True)),
                      montavon2019(0.0, 1.0)):
        expl = relprop.explain(model, x, 1, composite=composite)
        assert bool(torch.isfinite(expl.relevance).all()), composite
        assert bool((expl.relevance[0] == 0).all())
        assert bool((expl.relevance[1] != 0).any())


def test_epsilon_relative_to_std_after_all_dead_relus_is_finite_and_matches_oracle() -> None:
    """A layer whose inputs are all-dead ReLUs gets ``z = 0`` everywhere (std 0): ε' falls back
    to the absolute ε, which the dense oracle with that ε confirms."""
    torch.manual_seed(0)
    first = nn.Linear(4, 6)
    with torch.no_grad():
        first.bias.fill_(-100.0)  # every ReLU dead for these inputs
    model = nn.Sequential(first, nn.ReLU(), nn.Linear(6, 5, bias=False), nn.ReLU(),
                          nn.Linear(5, 3)).double().eval()
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expl = relprop.explain(model, x, 0, composite=uniform(rules.Epsilon(0.25, True)),
                           record=True)
    assert bool(torch.isfinite(expl.relevance).all())
    for name, relevance in expl.layers.items():
        assert bool(torch.isfinite(relevance).all()), name
    assert bool((expl.relevance == 0).all())  # all of it absorbed by the last layer's bias
    # the rule itself, on a bias-free dense layer whose output is 0 (std 0) for one sample:
    # that sample gets 0 (its outputs carry no relevance), the others the oracle's ε·std
    model, W, b = dense_layer("linear", False, 0)
    x = make_input(LAYERS["linear"][1], "signed", 0)
    x[1] = 0.0
    with torch.no_grad():
        R = output_relevance(model(x), "all", 0)
    expl = relprop.explain(model, x, target=OutputRelevance(R),
                           composite=uniform(rules.Epsilon(0.25, relative_to_std=True)))
    assert bool(torch.isfinite(expl.relevance).all())
    expected = run_oracle(oracle_epsilon(0.25, True), x, W, b, R)
    assert_matches(expl.relevance, expected, "epsilon-std with a constant-output sample")


# ------------------------------------------------------------------- parameter checks
@pytest.mark.parametrize("alpha,beta", [(2.0, 2.0), (1.5, 0.25), (3.0, 1.0), (1.0, 1.0)])
def test_alpha_beta_needs_alpha_minus_beta_one(alpha: float, beta: float) -> None:
    with pytest.raises(ValueError, match=rf"alpha={alpha!r}.*beta={beta!r}"):
        rules.AlphaBeta(alpha, beta)


@pytest.mark.parametrize("make", [
    lambda: rules.AlphaBeta(-1.0, -2.0),
    lambda: rules.Gamma(-0.25),
    lambda: rules.Gamma(float("nan")),
    lambda: rules.Epsilon(-1e-6),
    lambda: rules.Epsilon(float("nan")),
    lambda: rules.Gamma(0.25, stabilizer=-1.0),
    lambda: rules.ZPlus(stabilizer=-1e-6),
    lambda: rules.Flat(stabilizer=-1e-6),
], ids=["alphabeta-negative", "gamma-negative", "gamma-nan", "epsilon-negative",
        "epsilon-nan", "gamma-stabilizer", "zplus-stabilizer", "flat-stabilizer"])
def test_negative_parameters_raise(make: Callable[[], rules.Rule]) -> None:
    with pytest.raises(ValueError):
        make()


# ----------------------------------------------------------------------- max pooling
POOLS = {
    "2d-k2": (lambda: nn.MaxPool2d(2), (2, 2, 6, 6)),
    "2d-k3-s2-p1": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 7, 7)),
    "2d-ceil": (lambda: nn.MaxPool2d(2, ceil_mode=True), (2, 2, 5, 5)),
    "1d-k3-s2": (lambda: nn.MaxPool1d(3, stride=2), (2, 3, 9)),
    "3d-k2": (lambda: nn.MaxPool3d(2), (2, 2, 4, 4, 4)),
    "3d-k3-s2-p1-ceil": (lambda: nn.MaxPool3d(3, stride=2, padding=1, ceil_mode=True),
                         (1, 2, 5, 6, 5)),
}


class _FunctionalPool(nn.Module):
    """``F.max_pool2d(x, 3)``: no stride given (it is the kernel's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3)


#: poolings only winner-take-all reads (sum pooling refuses dilation)
WINNER_POOLS = {
    **POOLS,
    "2d-k3-d2": (lambda: nn.MaxPool2d(3, stride=1, dilation=2), (2, 2, 8, 8)),
    "2d-k2x3-s1x2": (lambda: nn.MaxPool2d((2, 3), stride=(1, 2)), (2, 2, 5, 7)),
    "2d-functional-no-stride": (_FunctionalPool, (2, 2, 7, 7)),
}


def pool_windows(pool: nn.Module, shape: tuple[int, ...]) -> np.ndarray:
    """Window membership ``M[c, k, j]``: per channel, output ``k`` pools input ``j``.

    Found by pooling one-hot inputs: input ``j`` is in window ``k`` iff raising ``j`` far
    above all others makes it output ``k``'s value (padding is -inf, so never chosen)."""
    spatial = shape[2:]
    d = math.prod(spatial)
    probes = torch.eye(d, dtype=torch.float64).reshape(d, 1, *spatial) * 10.0 - 1.0
    with torch.no_grad():
        out = pool(probes).reshape(d, -1)  # (j, k)
    return (out == 9.0).T.double().numpy()  # (k, j), the same for every channel


def pooled_inputs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) + 0.1  # positive, no ties


@pytest.mark.parametrize("pool_name", list(WINNER_POOLS))
def test_max_pool_winner_take_all(pool_name: str) -> None:
    """All of ``R_k`` goes to the arg-max of window ``k`` (summed if it wins several)."""
    factory, shape = WINNER_POOLS[pool_name]
    model = nn.Sequential(factory()).eval()
    x = pooled_inputs(shape, 0)
    M = pool_windows(model[0], shape)
    with torch.no_grad():
        y = model(x)
    R = output_relevance(y, "all", 0)
    xs, Rs = x.reshape(*shape[:2], -1).numpy(), R.reshape(*shape[:2], -1).numpy()
    expected = np.zeros_like(xs)
    for n in range(shape[0]):
        for c in range(shape[1]):
            for k in range(M.shape[0]):
                window = np.flatnonzero(M[k])
                expected[n, c, window[np.argmax(xs[n, c, window])]] += Rs[n, c, k]
    expl = relprop.explain(model, x, target=OutputRelevance(R))
    assert_matches(expl.relevance, expected.reshape(shape), f"winner-take-all {pool_name}")


@pytest.mark.parametrize("pool_name", list(POOLS))
def test_max_pool_as_sum_pooling(pool_name: str) -> None:
    """``R_j = sum_k a_j / (sum_{i in window k} a_i) R_k``."""
    factory, shape = POOLS[pool_name]
    model = nn.Sequential(factory()).eval()
    x = pooled_inputs(shape, 1)
    M = pool_windows(model[0], shape)
    with torch.no_grad():
        y = model(x)
    R = output_relevance(y, "all", 1)
    xs, Rs = x.reshape(*shape[:2], -1).numpy(), R.reshape(*shape[:2], -1).numpy()
    expected = np.zeros_like(xs)
    for n in range(shape[0]):
        for c in range(shape[1]):
            num = M * xs[n, c]
            expected[n, c] = spread(num, num.sum(1), Rs[n, c])
    composite = Composite([(kind("max_pool"), rules.SumPooling(stabilizer=S))], "sum")
    expl = relprop.explain(model, x, target=OutputRelevance(R), composite=composite)
    assert_matches(expl.relevance, expected.reshape(shape), f"sum pooling {pool_name}")


# ----------------------------------------------------------------------- activations
class Elementwise(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def signed_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("fn", [F.silu, F.gelu, torch.tanh], ids=["silu", "gelu", "tanh"])
def test_identity_rule_passes_relevance_elementwise(fn: Callable[[torch.Tensor], torch.Tensor]
                                                    ) -> None:
    model = Elementwise(fn).eval()
    x = signed_input((3, 7))
    R = output_relevance(fn(x), "all", 0)
    expl = relprop.explain(model, x, target=OutputRelevance(R))
    assert set(expl.rules.values()) == {repr(rules.Pass())}
    torch.testing.assert_close(expl.relevance, R, rtol=1e-12, atol=1e-14)


def test_identity_rule_after_linear_layer() -> None:
    """Linear (LRP-0) then SiLU (identity rule): the oracle is LRP-0 applied to ``R_out``."""
    model, W, b = dense_layer("linear", True, 0)
    model = nn.Sequential(model[0], nn.SiLU()).eval()
    x = make_input((3, 6), "signed", 0)
    with torch.no_grad():
        y = model(x)
    R = output_relevance(y, "all", 0)
    expl = relprop.explain(model, x, target=OutputRelevance(R), composite=uniform(rules.Zero()))
    assert_matches(expl.relevance, run_oracle(oracle_zero, x, W, b, R), "linear + silu")


DERIVATIVES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor],
                             Callable[[torch.Tensor], torch.Tensor]]] = {
    "silu": (F.silu, lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x)))),
    "tanh": (torch.tanh, lambda x: 1 - torch.tanh(x) ** 2),
    "sigmoid": (torch.sigmoid, lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x))),
    "softplus": (F.softplus, torch.sigmoid),
}


@pytest.mark.parametrize("name", list(DERIVATIVES))
def test_gradient_rule_on_activation(name: str) -> None:
    """``c = f'(a) · grad`` with ``grad = R_out / f(a)``, so ``R_in = a f'(a) R_out / f(a)``."""
    fn, derivative = DERIVATIVES[name]
    model = Elementwise(fn).eval()
    x = signed_input((3, 7), 1)
    y = fn(x)
    R = output_relevance(y, "all", 1)
    composite = Composite([(kind("activation"), rules.Gradient())], "grad")
    expl = relprop.explain(model, x, target=OutputRelevance(R), composite=composite)
    assert set(expl.rules.values()) == {repr(rules.Gradient())}
    torch.testing.assert_close(expl.relevance, x * derivative(x) * R / y, rtol=1e-12,
                               atol=1e-14)


# --------------------------------------------------------------------------- products
class HalvesProduct(nn.Module):
    """``y = x[:, :n] * x[:, n:]`` (optionally with a sigmoid on the first half: a gate)."""

    def __init__(self, gate: bool = False) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1] // 2
        first = torch.sigmoid(x[:, :n]) if self.gate else x[:, :n]
        return first * x[:, n:]


def test_product_splits_relevance_in_halves() -> None:
    x = signed_input((3, 8), 2)
    y = x[:, :4] * x[:, 4:]
    R = output_relevance(y, "all", 2)
    expl = relprop.explain(HalvesProduct().eval(), x, target=OutputRelevance(R))
    torch.testing.assert_close(expl.relevance, torch.cat([R / 2, R / 2], dim=1), rtol=1e-12,
                               atol=1e-14)


class LinearProduct(nn.Module):
    """``y = A(x) * B(x)``: both factors depend on the whole input."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.A = nn.Linear(5, 4).double()
            self.B = nn.Linear(5, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x) * self.B(x)


def test_product_of_two_layers_halves_and_matches_oracle() -> None:
    model = LinearProduct(3).eval()
    x = signed_input((3, 5), 3)
    with torch.no_grad():
        y = model(x)
    R = output_relevance(y, "all", 3)
    expl = relprop.explain(model, x, target=OutputRelevance(R), composite=uniform(rules.Zero()),
                           record=True)
    ledger = {e.name: e for e in expl.conservation}
    half = (R.sum(dim=1) / 2).tolist()
    for layer in ("A:linear", "B:linear"):
        np.testing.assert_allclose(ledger[layer].relevance_in, half, rtol=1e-12)
    expected = sum(run_oracle(oracle_zero, x, layer.weight.detach().numpy(),
                              layer.bias.detach().numpy(), R / 2) for layer in (model.A, model.B))
    assert_matches(expl.relevance, expected, "LRP-0 through A(x) * B(x)")


@pytest.mark.parametrize("gates_take_none", [True, False])
def test_sigmoid_gate_takes_no_relevance(gates_take_none: bool) -> None:
    x = signed_input((3, 8), 4)
    y = torch.sigmoid(x[:, :4]) * x[:, 4:]
    R = output_relevance(y, "all", 4)
    composite = Composite([(kind("product"), rules.Product(gates_take_none))], "product")
    expl = relprop.explain(HalvesProduct(gate=True).eval(), x, target=OutputRelevance(R),
                           composite=composite)
    gate_share = 0.0 if gates_take_none else 0.5
    # the gate's share passes the sigmoid under the identity rule
    expected = torch.cat([gate_share * R, (1 - gate_share) * R], dim=1)
    torch.testing.assert_close(expl.relevance, expected, rtol=1e-12, atol=1e-14)


MATMULS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bmm": torch.bmm,
    "matmul-3d": torch.matmul,
    "einsum": lambda A, B: torch.einsum("nik,nkj->nij", A, B),
    "matmul-4d": lambda A, B: (A[:, None] @ B[:, None])[:, 0],  # attention's q @ k^T spelling
}


class MatmulProduct(nn.Module):
    """``y = A @ B`` with ``A``, ``B`` (2 x 2) matrices read from the two halves of ``x``."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MATMULS[self.spelling](x[:, :4].reshape(-1, 2, 2), x[:, 4:].reshape(-1, 2, 2))


@pytest.mark.parametrize("spelling", list(MATMULS))
def test_matmul_of_two_activations_halves_relevance(spelling: str) -> None:
    """Each factor gets half, spread LRP-0-style over the terms ``A_ik B_kj`` of ``y_ij``:
    ``R_A[i, k] = sum_j A_ik B_kj / (2 y_ij) R_ij`` and ``R_B[k, j] = sum_i (same)``."""
    x = signed_input((3, 8), 5)
    A, B = x[:, :4].reshape(-1, 2, 2), x[:, 4:].reshape(-1, 2, 2)
    y = A @ B
    R = output_relevance(y, "all", 5)
    terms = A[:, :, :, None] * B[:, None, :, :] * (R / (2 * y))[:, :, None, :]  # [n, i, k, j]
    expected = torch.cat([terms.sum(3).reshape(3, 4), terms.sum(1).reshape(3, 4)], dim=1)
    expl = relprop.explain(MatmulProduct(spelling).eval(), x, target=OutputRelevance(R))
    torch.testing.assert_close(expl.relevance, expected, rtol=1e-12, atol=1e-12)
