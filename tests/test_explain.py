"""End-to-end properties of relprop.explain on whole architectures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop import composites as C
from relprop import rules as R
from relprop.rules import stabilize
from relprop.targets import Contrast, LogOdds
from tests.helpers import models as M

ARCHS = {
    "vgg": lambda: M.vgg(),
    "vgg_bn": lambda: M.randomize_batchnorm(M.vgg(batch_norm=True)),
    "resnet": lambda: M.randomize_batchnorm(M.resnet()),
    "densenet": lambda: M.randomize_batchnorm(M.densenet()),
    "efficientnet": lambda: M.randomize_batchnorm(M.efficientnet()),
    "functional": lambda: M.functional_net(),
}
SHAPES = {"functional": (2, 3, 16, 16)}


def _net(arch: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = M.remove_biases(ARCHS[arch]()).double()
    x = torch.randn(*SHAPES.get(arch, (2, 3, 32, 32)), dtype=torch.float64)
    return model, x


def _relative_gap(expl: relprop.Explanation) -> float:
    gap = (expl.relevance_sum() - expl.explained).abs().max()
    return float(gap / expl.explained.abs().max())


# every rule here conserves on any bias-free net; z⁺/αβ lose relevance where an output has
# no contribution of one sign, which happens once outputs can be negative (residual nets)
CONSERVATIVE = {
    "zero": C.uniform(R.Zero()),
    "epsilon": C.uniform(R.Epsilon(1e-12)),
    "gamma": C.uniform(R.Gamma(0.25, stabilizer=1e-12)),
    "epsilon_gamma_box": C.epsilon_gamma_box(-4.0, 4.0, epsilon=1e-12, stabilizer=1e-12),
    "montavon2019": C.montavon2019(-4.0, 4.0, epsilon=1e-12),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("composite", sorted(CONSERVATIVE))
def test_conservation_on_bias_free_nets(arch: str, composite: str) -> None:
    model, x = _net(arch)
    comp = CONSERVATIVE[composite]
    if composite == "montavon2019":  # ε relative to std is not small: use a tiny factor
        comp = C.montavon2019(-4.0, 4.0, epsilon=1e-12)
    expl = relprop.explain(model, x, target=1, composite=comp)
    assert _relative_gap(expl) < 1e-5


@pytest.mark.parametrize("composite", [
    C.epsilon_plus_flat(1e-12, 1e-12), C.epsilon_alpha2_beta1(1e-12, 1e-12),
    C.lrp_cmp(alpha=1, flat_layers=1, epsilon=1e-12), C.uniform(R.ZPlus(1e-12)),
])
def test_positive_rules_conserve_on_relu_vgg(composite: C.Composite) -> None:
    model, x = _net("vgg")
    assert _relative_gap(relprop.explain(model, x, target=2, composite=composite)) < 1e-5


@pytest.mark.parametrize("arch", ["vgg", "vgg_bn", "resnet", "densenet", "functional"])
def test_uniform_lrp0_equals_gradient_times_input(arch: str) -> None:
    torch.manual_seed(1)
    model = ARCHS[arch]().double()  # with biases
    x = torch.randn(*SHAPES.get(arch, (2, 3, 32, 32)), dtype=torch.float64)
    expl = relprop.explain(model, x, target=3, composite=C.uniform(R.Zero()))
    x_ = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x_)[:, 3].sum(), x_)
    torch.testing.assert_close(expl.relevance, grad * x, rtol=1e-9, atol=1e-12)


def test_silu_gets_the_identity_rule_not_its_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.SiLU(), nn.Linear(8, 3, bias=False))
    model = model.double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    expl = relprop.explain(model, x, target=0, composite=C.uniform(R.Zero()))
    torch.testing.assert_close(expl.relevance_sum(), expl.explained)


class _TwiceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(5, 5, bias=False)
        self.head = nn.Linear(5, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.shared(F.relu(self.shared(x)))))


def test_a_module_called_twice_gets_a_rule_at_each_call() -> None:
    model = _TwiceNet().double().eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    comp = C.Composite([(C.first_layers(1), R.Epsilon(0.5))], "first-eps")
    expl = relprop.explain(model, x, target=1, composite=comp)
    assert expl.rules["shared:linear"].startswith("Epsilon(")
    assert expl.rules["shared#1:linear"].startswith("Zero(")
    # and conservation holds through both calls (ε absorbs only at the first)
    lrp0 = relprop.explain(model, x, target=1, composite=C.uniform(R.Zero()))
    torch.testing.assert_close(lrp0.relevance_sum(), lrp0.explained)


def test_batch_rows_are_independent() -> None:
    model, x = _net("resnet")
    comp = C.montavon2019(-4.0, 4.0)  # ε relative to each sample's std
    batch = relprop.explain(model, x, target=torch.tensor([1, 2]), composite=comp)
    for i in range(2):
        single = relprop.explain(model, x[i:i + 1], target=[1, 2][i], composite=comp)
        torch.testing.assert_close(single.relevance[0], batch.relevance[i])


def test_contrast_is_the_difference_of_two_explanations() -> None:
    model, x = _net("vgg_bn")
    comp = C.epsilon_gamma_box(-4.0, 4.0)
    both = relprop.explain(model, x, target=Contrast(1, 4), composite=comp)
    one = relprop.explain(model, x, target=1, composite=comp)
    other = relprop.explain(model, x, target=4, composite=comp)
    torch.testing.assert_close(both.relevance, one.relevance - other.relevance)
    torch.testing.assert_close(both.explained, one.explained - other.explained)


def test_log_odds_min_take_most() -> None:
    model, x = _net("vgg")
    expl = relprop.explain(model, x, target=LogOdds(2), composite=C.uniform(R.Zero()))
    out = expl.output
    diff = out[:, 2:3] - out
    others = torch.cat([diff[:, :2], diff[:, 3:]], dim=1)
    weights = torch.softmax(-others, dim=1)
    torch.testing.assert_close(expl.explained, (others * weights).sum(1))
    torch.testing.assert_close(expl.relevance_sum(), expl.explained)
    # the explained quantity approximates η = log P/(1-P) from below... and is near it
    eta = -torch.logsumexp(-others, dim=1)
    assert torch.all(expl.explained >= eta - 1e-9)


def test_record_gives_layers_and_a_conserving_ledger() -> None:
    model, x = _net("resnet")
    expl = relprop.explain(model, x, target=0, composite=C.uniform(R.Epsilon(1e-12)),
                           record=True)
    assert "layer1.0" in expl.layers or any(k.startswith("layer") for k in expl.layers)
    assert all(v.shape[0] == 2 for v in expl.layers.values())
    assert expl.conservation
    for entry in expl.conservation:  # bias-free: each op passes on what it receives
        scale = max(1e-12, max(abs(v) for v in entry.relevance_in))
        assert max(abs(a) for a in entry.absorbed) <= 1e-6 * scale, entry
    fc = [k for k in expl.layers if k.endswith("fc")]
    assert fc and torch.allclose(expl.layers[fc[0]].sum(1), expl.explained)


def test_batchnorm_is_merged_into_the_conv_before_gamma() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    bn = M.randomize_batchnorm(nn.Sequential(nn.BatchNorm2d(4)))[0]
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3)).eval()
    merged_conv = nn.Conv2d(3, 4, 3, padding=1)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        merged_conv.weight.copy_(conv.weight * scale[:, None, None, None])
        merged_conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
    merged = nn.Sequential(merged_conv, nn.ReLU(), nn.Flatten(), model[4]).eval()
    x = torch.randn(2, 3, 5, 5)
    comp = C.uniform(R.Gamma(0.5))
    a = relprop.explain(model.double(), x.double(), target=1, composite=comp)
    b = relprop.explain(merged.double(), x.double(), target=1, composite=comp)
    torch.testing.assert_close(a.relevance, b.relevance)
    assert a.rules == {"0:conv2d+batch_norm": repr(R.Gamma(0.5)),
                       "4:linear": repr(R.Gamma(0.5))}


def _conv_vjp(weight: torch.Tensor, x: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """``sum_k w_jk s_k`` of the model's first conv (3x3, padding 1) with any weights."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.conv2d(x, weight, padding=1), x, signal)
    return g


def test_flat_and_zbox_give_zero_pixels_their_relevance() -> None:
    """Black pixels cannot carry ``R / a``; the engine keeps flat's and z^B's relevance on
    the input as is, so the map equals the rule written out from the conv's relevance."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 16, 2)).double().eval()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    x[..., :2, :] = 0.0  # black pixels
    w = model[0].weight.detach()
    for comp in (C.epsilon_plus_flat(stabilizer=0.0), C.epsilon_gamma_box(0.0, 1.0)):
        expl = relprop.explain(model, x, target=0, composite=comp, record=True)
        r_conv = expl.layers["1"]  # at the ReLU merged into the conv: its relevance
        if comp.name.startswith("epsilon_plus_flat"):
            ones = torch.ones_like(w)
            count = F.conv2d(torch.ones_like(x), ones, padding=1)
            expected = _conv_vjp(ones, x, r_conv / count)
        else:  # z^B with l = 0, h = 1
            w_neg = w.clamp(max=0)
            z_box = (F.conv2d(x, w, padding=1) - F.conv2d(torch.ones_like(x), w_neg, padding=1))
            s = r_conv / stabilize(z_box, 1e-6)
            expected = x * _conv_vjp(w, x, s) - _conv_vjp(w_neg, x, s)
        torch.testing.assert_close(expl.relevance, expected, rtol=1e-9, atol=1e-12)
        assert expl.relevance[..., :2, :].abs().sum() > 0.05 * expl.relevance.abs().sum()


def test_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model, x = _net("resnet")
    comp = C.epsilon_gamma_box(-4.0, 4.0)
    cpu = relprop.explain(model, x, target=1, composite=comp)
    gpu = relprop.explain(model.cuda(), x.cuda(), target=1, composite=comp)
    torch.testing.assert_close(gpu.relevance.cpu(), cpu.relevance)
