"""relprop.methods: every attribution method keeps relprop.explain's contract, and each one
computes what its paper defines."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop import composites as C
from relprop import methods
from relprop import rules as R
from relprop.methods.integrated import QUADRATURES, quadrature
from relprop.targets import Contrast, Logit
from tests.helpers import models as M
from tests.helpers.snapshots import assert_unchanged, snapshot
from tests.helpers.stand_ins import installed, torchvision_stand_in

# fast options for each method; the contract tests run every method in METHODS
FAST: dict[str, dict[str, Any]] = {
    "smoothgrad": {"samples": 4},
    "integrated_gradients": {"steps": 6},
    "occlusion": {"window": 4, "stride": 4},
}
ALL = sorted(methods.METHODS)
DETERMINISTIC = [name for name in ALL if name != "random_baseline"]




def _run(name: str, model: nn.Module, x: torch.Tensor, target: Any = None,
         **options: Any) -> relprop.Explanation:
    return methods.get_method(name)(model, x, target, **{**FAST.get(name, {}), **options})


def _vgg(dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor]:
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=dtype)
    return M.vgg().to(dtype), x


def _mlp(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return M.mlp(seed=seed).double(), x


def _logit(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[:, target]


# ------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ALL)
def test_explanation_contract(name: str, dtype: torch.dtype) -> None:
    model, x = _vgg(dtype)
    expl = _run(name, model, x, 2)
    assert expl.relevance.shape == x.shape
    assert expl.relevance.dtype == dtype and expl.relevance.device == x.device
    assert not expl.relevance.requires_grad and bool(torch.isfinite(expl.relevance).all())
    with torch.no_grad():
        output = model(x)
    torch.testing.assert_close(expl.output, output)
    torch.testing.assert_close(expl.explained, output[:, 2])
    assert isinstance(expl.target, Logit) and expl.method.startswith(name)
    if name != "lrp":
        assert expl.rules == {} and expl.layers == {} and expl.conservation == []


@pytest.mark.parametrize("name", ALL)
def test_default_target_is_the_top_class(name: str) -> None:
    model, x = _mlp()
    expl = _run(name, model, x)
    with torch.no_grad():
        output = model(x)
    assert torch.equal(expl.explained, output.max(dim=1).values)


@pytest.mark.parametrize("name", ALL)
def test_model_and_input_unchanged(name: str) -> None:
    model = M.resnet(layers=(1, 1)).double()
    next(model.parameters()).requires_grad_(False)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    x_before = x.clone()
    before = snapshot(model)
    _run(name, model, x, 1)
    after = snapshot(model)
    assert_unchanged(before, after)
    assert all(g is None for g in after["grads"])
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("name", ALL)
def test_in_place_op_on_the_input_leaves_x_alone(name: str) -> None:
    model = nn.Sequential(nn.ReLU(inplace=True), M.mlp()).double().eval()
    x = torch.randn(3, 16, dtype=torch.float64)
    x_before = x.clone()
    expl = _run(name, model, x, 1)
    assert torch.equal(x, x_before)
    torch.testing.assert_close(expl.explained, _logit(model, x.clone(), 1))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_batch_equals_per_sample(name: str) -> None:
    model, x = _vgg()
    target = torch.tensor([1, 4, 7])
    batch = _run(name, model, x, target)
    for i in range(3):
        alone = _run(name, model, x[i:i + 1], int(target[i]))
        torch.testing.assert_close(batch.relevance[i:i + 1], alone.relevance, rtol=1e-9,
                                   atol=1e-12)


@pytest.mark.parametrize("name", ["smoothgrad", "integrated_gradients", "occlusion"])
def test_batch_size_does_not_change_the_result(name: str) -> None:
    model, x = _vgg()
    reference = _run(name, model, x, 3)
    for batch_size in (1, 5):  # one copy per pass; chunks that straddle samples
        chunked = _run(name, model, x, 3, batch_size=batch_size)
        torch.testing.assert_close(chunked.relevance, reference.relevance, rtol=1e-9,
                                   atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu(name: str) -> None:
    model, x = _vgg()
    cpu = _run(name, model, x, 2)
    gpu = _run(name, model.cuda(), x.cuda(), 2)
    assert gpu.relevance.device.type == "cuda" and gpu.explained.device.type == "cuda"
    torch.testing.assert_close(gpu.relevance.cpu(), cpu.relevance, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ALL)
def test_model_and_input_are_checked(name: str) -> None:
    model, x = _mlp()
    with pytest.raises(relprop.InvalidInputError, match="training mode"):
        _run(name, model.train(), x, 0)
    with pytest.raises(relprop.InvalidInputError, match="floating point"):
        _run(name, model.eval(), x.long(), 0)
    with pytest.raises(relprop.InvalidInputError, match="out of range"):
        _run(name, model, x, 9)


@pytest.mark.parametrize("name, options, parameter", [
    ("gradient", {"mode": "sign"}, "mode"),
    ("smoothgrad", {"samples": 0}, "samples"),
    ("smoothgrad", {"noise": -0.1}, "noise"),
    ("smoothgrad", {"seed": 1.5}, "seed"),
    ("smoothgrad", {"batch_size": 0}, "batch_size"),
    ("integrated_gradients", {"steps": 0}, "steps"),
    ("integrated_gradients", {"method": "simpson"}, "method"),
    ("integrated_gradients", {"steps": 1, "method": "riemann_trapezoid"}, "steps"),
    ("integrated_gradients", {"baseline": torch.zeros(5)}, "baseline"),
    ("occlusion", {"window": 32}, "window"),
    ("occlusion", {"window": (2, 2, 2)}, "window"),
    ("occlusion", {"stride": 0}, "stride"),
    ("occlusion", {"fill": torch.zeros(2, 2)}, "fill"),
    ("random_baseline", {"seed": "0"}, "seed"),
])
def test_bad_options_are_named(name: str, options: dict[str, Any], parameter: str) -> None:
    model, x = _vgg()
    with pytest.raises(relprop.InvalidInputError, match=parameter):
        methods.get_method(name)(model, x, 0, **options)


# ------------------------------------------------------------------------------- registry
def test_registry_names_every_method() -> None:
    for name in ALL:
        assert methods.get_method(name) is methods.METHODS[name]
    assert set(ALL) >= {"lrp", "gradient", "gradient_x_input", "smoothgrad",
                        "integrated_gradients", "guided_backprop", "deconvnet", "occlusion",
                        "random_baseline"}


@pytest.mark.parametrize("name", ["smothgrad", "Gradient", "", 3])
def test_unknown_method_lists_the_valid_ones(name: Any) -> None:
    with pytest.raises(relprop.InvalidInputError) as info:
        methods.get_method(name)
    message = str(info.value)
    assert repr(name) in message and all(valid in message for valid in ALL)
    if name == "smothgrad":
        assert "did you mean 'smoothgrad'" in message


def test_lrp_is_explain() -> None:
    model, x = _vgg()
    composite = C.epsilon_plus_flat()
    ours = methods.lrp(model, x, 2, composite)
    theirs = relprop.explain(model, x, 2, composite)
    assert ours.method == theirs.method
    assert torch.equal(ours.relevance, theirs.relevance)


# ------------------------------------------------------------------------------ gradients
def _autograd(model: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    x_ = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((model(x_) * weights).sum(), x_)
    return grad


def test_gradient_modes() -> None:
    model, x = _vgg()
    grad = _autograd(model, x, F.one_hot(torch.tensor(5), 10).double())
    torch.testing.assert_close(methods.gradient(model, x, 5).relevance, grad)
    torch.testing.assert_close(methods.gradient(model, x, 5, mode="abs").relevance, grad.abs())
    torch.testing.assert_close(methods.gradient(model, x, 5, mode="square").relevance,
                               grad.square())


def test_gradient_of_a_contrast() -> None:
    model, x = _vgg()
    expl = methods.gradient(model, x, Contrast(2, 7))
    weights = torch.zeros(10, dtype=torch.float64)
    weights[2], weights[7] = 1.0, -1.0
    torch.testing.assert_close(expl.relevance, _autograd(model, x, weights))
    torch.testing.assert_close(expl.explained, _logit(model, x, 2) - _logit(model, x, 7))


@pytest.mark.parametrize("arch", ["vgg", "functional", "mlp"])
def test_gradient_x_input_equals_uniform_lrp0(arch: str) -> None:
    builders: dict[str, Callable[[], nn.Module]] = {"vgg": M.vgg, "mlp": M.mlp,
                                                    "functional": M.functional_net}
    model = builders[arch]().double()
    shape = (2, 16) if arch == "mlp" else (2, 3, 16, 16)
    x = torch.randn(*shape, dtype=torch.float64)
    lrp0 = relprop.explain(model, x, 3, C.uniform(R.Zero()))
    torch.testing.assert_close(methods.gradient_x_input(model, x, 3).relevance, lrp0.relevance,
                               rtol=1e-9, atol=1e-12)


def test_smoothgrad_without_noise_is_the_gradient() -> None:
    model, x = _vgg()
    smooth = methods.smoothgrad(model, x, 4, samples=3, noise=0.0)
    torch.testing.assert_close(smooth.relevance, methods.gradient(model, x, 4).relevance)


def test_smoothgrad_is_seeded() -> None:
    model, x = _vgg()
    first = methods.smoothgrad(model, x, 4, samples=4, seed=3).relevance
    assert torch.equal(first, methods.smoothgrad(model, x, 4, samples=4, seed=3).relevance)
    assert not torch.allclose(first, methods.smoothgrad(model, x, 4, samples=4, seed=4).relevance)


def test_smoothgrad_averages_gradients_at_noisy_points() -> None:
    model, x = _mlp()
    x = x[:1]
    noise, samples = 0.2, 5
    draws = torch.randn((samples, 16), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    sigma = noise * (x.max() - x.min())
    expected = torch.stack([_autograd(model, x + sigma * d, F.one_hot(torch.tensor(1), 4))
                            for d in draws]).mean(dim=0)
    expl = methods.smoothgrad(model, x, 1, samples=samples, noise=noise)
    torch.testing.assert_close(expl.relevance, expected)


# --------------------------------------------------------------------- integrated gradients
@pytest.mark.parametrize("method", QUADRATURES)
def test_quadrature_weights(method: str) -> None:
    nodes, weights = quadrature(method, 5)
    assert nodes.shape == weights.shape == (5,)
    assert float(nodes.min()) >= 0 and float(nodes.max()) <= 1
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    exact_degree = {"riemann_middle": 1, "riemann_trapezoid": 1, "gauss_legendre": 9}
    for degree in range(exact_degree.get(method, 0) + 1):
        torch.testing.assert_close((weights * nodes**degree).sum(),
                                   torch.tensor(1 / (degree + 1), dtype=torch.float64))


def _completeness_gap(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor | float,
                      target: Any, **options: Any) -> float:
    expl = methods.integrated_gradients(model, x, target, baseline=baseline, **options)
    start = torch.as_tensor(baseline, dtype=x.dtype).expand_as(x)
    with torch.no_grad():
        weights, _ = expl.target.seed(model(x))
        change = ((model(x) - model(start)) * weights).sum(dim=1)
    return float((expl.relevance_sum() - change).abs().max())


@pytest.mark.parametrize("method", QUADRATURES)
def test_integrated_gradients_completeness(method: str) -> None:
    """On a ReLU net the path gradient jumps at every kink, so each rule converges as 1/steps."""
    model, x = _mlp()
    baseline = torch.linspace(-1, 1, 16, dtype=torch.float64)  # one sample's shape
    gaps = [_completeness_gap(model, x, baseline, 2, steps=steps, method=method)
            for steps in (4, 32, 256)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < min(gaps[0] / 10, 1e-2), gaps


def _smooth() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.SiLU(),
                          nn.Linear(8, 3)).double().eval()
    return model, torch.randn(4, 5, dtype=torch.float64)


@pytest.mark.parametrize("target", [0, Contrast(1, 2)])
def test_integrated_gradients_completeness_on_a_smooth_net(target: Any) -> None:
    """A smooth path integrand: trapezoid converges as 1/steps², Gauss-Legendre spectrally."""
    model, x = _smooth()
    coarse, fine = (_completeness_gap(model, x, 0.0, target, steps=steps) for steps in (8, 64))
    assert fine < coarse / 40, (coarse, fine)
    assert _completeness_gap(model, x, 0.5, target, steps=16, method="gauss_legendre") < 1e-10


def test_integrated_gradients_of_a_linear_model_is_exact() -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 3).double().eval()
    x, baseline = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    expl = methods.integrated_gradients(model, x, 1, baseline=baseline, steps=2)
    torch.testing.assert_close(expl.relevance, (x - baseline) * model.weight[1].detach())


def test_integrated_gradients_at_the_baseline_is_zero() -> None:
    model, x = _vgg()
    expl = methods.integrated_gradients(model, x, 0, baseline=x, steps=4)
    assert torch.equal(expl.relevance, torch.zeros_like(x))
    assert "baseline=tensor" in expl.method


# --------------------------------------------------------------- guided backprop, deconvnet
class _Probe(nn.Module):
    """A ReLU MLP in every ReLU spelling that keeps the gradient arriving at each ReLU input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
        self.head = nn.Linear(8, 3)
        self.relu = nn.ReLU(inplace=True)
        self.arriving: list[torch.Tensor] = []

    def _keep(self, z: torch.Tensor) -> torch.Tensor:
        if z.requires_grad:
            z.register_hook(self.arriving.append)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self._keep(self.layers[0](x)))
        a = torch.relu(self._keep(self.layers[1](a)))
        a = self.relu(self._keep(self.layers[2](a)))
        z = self._keep(self.layers[3](a))
        z.relu_()  # the return value ignored: the model relies on the in-place update
        return self.head(z)


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet"])
def test_signal_arriving_at_every_relu_is_non_negative(name: str) -> None:
    model = _Probe().double().eval()
    x = torch.randn(6, 8, dtype=torch.float64)
    expl = _run(name, model, x, 1)
    torch.testing.assert_close(expl.explained, _logit(model, x, 1))
    assert len(model.arriving) == 4
    assert all(bool((g >= 0).all()) for g in model.arriving)
    model.arriving.clear()
    methods.gradient(model, x, 1)
    assert any(bool((g < 0).any()) for g in model.arriving)


def test_guided_backprop_and_deconvnet_at_an_input_relu() -> None:
    """With a ReLU on the input, both maps are non-negative; guided backprop is zero where
    ``x ≤ 0``, deconvnet is not, and neither is the gradient."""
    model = nn.Sequential(nn.ReLU(), M.mlp()).double().eval()
    x = torch.randn(8, 16, dtype=torch.float64)
    gradient = methods.gradient(model, x, 0).relevance
    guided = methods.guided_backprop(model, x, 0).relevance
    deconv = methods.deconvnet(model, x, 0).relevance
    assert bool((gradient < 0).any())
    assert bool((guided >= 0).all()) and bool((deconv >= 0).all())
    assert bool((guided[x <= 0] == 0).all()) and bool((deconv[x <= 0] > 0).any())
    assert not torch.allclose(guided, gradient) and not torch.allclose(deconv, guided)


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet"])
def test_modified_relus_on_resnet(name: str) -> None:
    model = M.randomize_batchnorm(M.resnet()).double()  # in-place ReLU after `out += x`
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expl = _run(name, model, x, 4)
    torch.testing.assert_close(expl.explained, _logit(model, x, 4))
    assert not torch.allclose(expl.relevance, methods.gradient(model, x, 4).relevance)


def test_relu_backward_is_scoped_to_the_call() -> None:
    class _Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            F.relu(x)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        methods.guided_backprop(_Fails().eval(), torch.randn(2, 3))
    assert torch.overrides._get_current_function_mode_stack() == []
    z = torch.tensor([-1.0, 2.0], requires_grad=True)
    (grad,) = torch.autograd.grad((F.relu(z) * torch.tensor([1.0, -1.0])).sum(), z)
    assert grad.tolist() == [0.0, -1.0]  # the plain ReLU gradient again


def test_no_relu_warns_and_gives_the_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.SiLU(), nn.Linear(5, 2)).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="no ReLU"):
        guided = methods.guided_backprop(model, x, 1)
    torch.testing.assert_close(guided.relevance, methods.gradient(model, x, 1).relevance)


# ------------------------------------------------------------------------------ occlusion
class _Corner(nn.Module):
    """Looks only at the top-left 4x4 patch of a 16x16 image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[:, :, :4, :4].flatten(1))


def test_occlusion_attributes_only_where_the_model_looks() -> None:
    model = _Corner().double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    relevance = methods.occlusion(model, x, 1, window=4, stride=4).relevance
    inside = torch.zeros_like(x, dtype=torch.bool)
    inside[:, :, :4, :4] = True
    assert float(relevance[~inside].abs().max()) < 1e-12
    assert float(relevance[inside].abs().min()) > 1e-6
    # with one window: the drop of the logit when the patch is filled, spread over it
    blanked = x.clone()
    blanked[:, :, :4, :4] = 0
    drop = _logit(model, x, 1) - _logit(model, blanked, 1)
    torch.testing.assert_close(relevance[:, 0, 0, 0], drop)


def _occlusion_loop(model: nn.Module, x: torch.Tensor, target: int, window: tuple[int, int],
                    stride: tuple[int, int], fill: torch.Tensor | float) -> torch.Tensor:
    """One occluded copy at a time, every window listed by hand."""
    height, width = x.shape[2:]

    def starts(size: int, w: int, s: int) -> list[int]:
        values = list(range(0, size - w + 1, s))
        return values + ([size - w] if values[-1] + w < size else [])

    drops = torch.zeros(x.shape[0], height, width, dtype=x.dtype)
    counts = torch.zeros(height, width, dtype=x.dtype)
    for top in starts(height, window[0], stride[0]):
        for left in starts(width, window[1], stride[1]):
            occluded = x.clone()
            patch = (slice(None), slice(None), slice(top, top + window[0]),
                     slice(left, left + window[1]))
            occluded[patch] = torch.as_tensor(fill, dtype=x.dtype).expand_as(x)[patch]
            drop = _logit(model, x, target) - _logit(model, occluded, target)
            drops[:, patch[2], patch[3]] += drop[:, None, None]
            counts[patch[2], patch[3]] += 1
    return (drops / counts).unsqueeze(1).expand_as(x)


@pytest.mark.parametrize("window, stride, fill", [
    ((4, 4), (4, 4), 0.0),
    ((5, 3), (3, 2), 0.5),  # windows that overlap and need a last flush window
    ((6, 6), (4, 4), "mean"),  # a per-channel fill of one sample's shape
])
def test_occlusion_matches_a_loop(window: tuple[int, int], stride: tuple[int, int],
                                  fill: Any) -> None:
    model, x = _vgg()
    fill_value = x.mean(dim=(0, 2, 3))[:, None, None] if fill == "mean" else fill
    expl = methods.occlusion(model, x, 6, window=window, stride=stride, fill=fill_value,
                             batch_size=7)
    torch.testing.assert_close(expl.relevance,
                               _occlusion_loop(model, x, 6, window, stride, fill_value))


def test_occlusion_of_features() -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 2).double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    expl = methods.occlusion(model, x, 0, window=1, stride=1)
    # one feature at a time on a linear model: the drop is the feature's contribution
    torch.testing.assert_close(expl.relevance, x * model.weight[0].detach())


# ----------------------------------------------------------------------- random baseline
def test_random_baseline() -> None:
    model, x = _vgg()
    first = methods.random_baseline(model, x, seed=1).relevance
    assert float(first.min()) >= 0 and float(first.max()) < 1
    assert torch.equal(first, methods.random_baseline(M.mlp(in_features=768).double(), x,
                                                      seed=1).relevance)
    assert not torch.equal(first, methods.random_baseline(model, x, seed=2).relevance)


# -------------------------------------------------------------------------------- interop
def test_quantus_adapter_with_numpy() -> None:
    import numpy as np

    from relprop.interop import quantus_explain_func
    model = M.vgg()  # float32
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16))  # float64 in, as numpy gives
    y = np.array([1, 2, 3])
    cases: list[tuple[str, dict[str, Any]]] = [
        ("lrp", {"composite": C.epsilon_plus_flat()}), ("gradient", {}),
        ("integrated_gradients", {"steps": 4})]
    for name, options in cases:
        attribution = quantus_explain_func(model=model, inputs=x, targets=y, method=name,
                                           device="cpu", **options)
        assert isinstance(attribution, np.ndarray) and attribution.shape == x.shape
        assert attribution.dtype == np.float32
        direct = methods.get_method(name)(model, torch.tensor(x, dtype=torch.float32),
                                          torch.tensor(y), **options)
        np.testing.assert_allclose(attribution, direct.relevance.numpy())
    partial = functools.partial(methods.integrated_gradients, steps=4, method="gauss_legendre")
    assert quantus_explain_func(model, x, 2, method=partial).shape == x.shape
    with pytest.raises(relprop.InvalidInputError, match="integer class indices"):
        quantus_explain_func(model, x, y.astype(float))
    with pytest.raises(relprop.InvalidInputError, match="choose one of"):
        quantus_explain_func(model, x, y, method="lrp_epsilon")


def test_quantus_metric_runs_on_relprop() -> None:
    # a missing oracle fails the test, it does not skip it (`make` installs quantus and the
    # dependencies its import needs)
    if not installed("quantus"):
        raise ImportError("the test oracle quantus is not installed: run `make .venv/"
                          ".relprop-installed` or `pip install --no-deps quantus==0.6.0`")
    with torchvision_stand_in():  # quantus imports zennit (when installed), zennit torchvision
        try:
            quantus = importlib.import_module("quantus")
        except ImportError as error:  # installed without its own dependencies (--no-deps)
            raise ImportError(
                f"quantus is installed but cannot be imported ({error}); `make .venv/"
                ".relprop-installed` installs pandas, scikit-image, opencv-python-headless "
                "and matplotlib for it") from error
    import numpy as np

    from relprop.interop import quantus_explain_func
    model = M.vgg()
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    metric = quantus.Sparseness(disable_warnings=True)
    explain: Callable[..., Any] = quantus_explain_func
    scores = metric(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=explain,
                    explain_func_kwargs={"method": "gradient_x_input"}, device="cpu")
    # Sparseness is the Gini index of |R| (Chalasani et al. 2020), written out here on
    # relprop's own Gradient x Input: Quantus must have received exactly these maps
    maps = quantus_explain_func(model, x, y, method="gradient_x_input")
    for score, a in zip(scores, maps):
        a = np.sort(np.abs(a.reshape(-1)).astype(np.float64) + 1e-7)
        n = a.shape[0]
        gini = float(np.sum((2 * np.arange(1, n + 1) - n - 1) * a) / (n * np.sum(a)))
        assert abs(score - gini) < 1e-5, (score, gini)
    assert len(set(np.round(scores, 6))) > 1  # four different maps, four different scores
