"""Fast sanity checks of the test-architecture builders in tests/helpers/models.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from tests.helpers import models as M

# (name, builder(seed) -> model, input shape, number of classes)
SMALL: list[tuple[str, Callable[[int], nn.Module], tuple[int, ...], int]] = [
    ("vgg-A-tiny", lambda s: M.vgg("A-tiny", seed=s), (2, 3, 16, 16), 10),
    ("vgg-D-tiny-bn", lambda s: M.vgg("D-tiny", batch_norm=True, num_classes=5, seed=s),
     (2, 3, 32, 32), 5),
    ("vgg-1ch", lambda s: M.vgg("A-tiny", in_channels=1, width=16, seed=s), (2, 1, 16, 16), 10),
    ("resnet-mixed", lambda s: M.resnet(seed=s), (2, 3, 32, 32), 10),
    ("resnet-basic", lambda s: M.resnet((1, 1), block="basic", seed=s), (2, 3, 32, 32), 10),
    ("resnet-bottleneck", lambda s: M.resnet((2, 1), block="bottleneck", width=4, seed=s),
     (2, 3, 32, 32), 10),
    ("densenet", lambda s: M.densenet(seed=s), (2, 3, 32, 32), 10),
    ("efficientnet", lambda s: M.efficientnet(seed=s), (2, 3, 32, 32), 10),
    ("mlp", lambda s: M.mlp(seed=s), (3, 16), 4),
    ("functional", lambda s: M.functional_net(seed=s), (2, 3, 16, 16), 10),
]
IDS = [case[0] for case in SMALL]
BN_MODELS = {"vgg-D-tiny-bn", "resnet-mixed", "resnet-basic", "resnet-bottleneck", "densenet",
             "efficientnet"}


def _input(shape: tuple[int, ...], seed: int = 123) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,build,shape,classes", SMALL, ids=IDS)
def test_forward_shape_and_eval(name: str, build: Callable[[int], nn.Module],
                                shape: tuple[int, ...], classes: int) -> None:
    model = build(0)
    assert not model.training
    assert all(not m.training for m in model.modules())
    out = model(_input(shape))
    assert out.shape == (shape[0], classes)
    assert torch.isfinite(out).all()
    assert out.std() > 0


@pytest.mark.parametrize("name,build,shape,classes", SMALL, ids=IDS)
def test_deterministic_per_seed(name: str, build: Callable[[int], nn.Module],
                                shape: tuple[int, ...], classes: int) -> None:
    rng_before = torch.get_rng_state()
    a, b, c = build(0), build(0), build(1)
    assert torch.equal(torch.get_rng_state(), rng_before), "builder touched the global RNG"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    x = _input(shape)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name,build,shape,classes",
                         [c for c in SMALL if c[0] in BN_MODELS],
                         ids=[i for i in IDS if i in BN_MODELS])
def test_randomize_batchnorm(name: str, build: Callable[[int], nn.Module],
                             shape: tuple[int, ...], classes: int) -> None:
    model = build(0)
    x = _input(shape)
    before = model(x)
    assert M.randomize_batchnorm(model, seed=3) is model
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        mean, var = bn.running_mean, bn.running_var
        assert mean is not None and var is not None
        assert not torch.allclose(mean, torch.zeros_like(mean))
        assert not torch.allclose(var, torch.ones_like(var))
        assert bool((var > 0).all())
    assert not torch.allclose(model(x), before)
    other = M.randomize_batchnorm(build(0), seed=3)
    assert torch.equal(other(x), model(x))
    assert not model.training


@pytest.mark.parametrize("name,build,shape,classes", SMALL, ids=IDS)
def test_remove_biases(name: str, build: Callable[[int], nn.Module],
                       shape: tuple[int, ...], classes: int) -> None:
    model = M.randomize_batchnorm(build(0), seed=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    clean = M.remove_biases(model)
    assert clean is not model and not clean.training
    for k, v in model.state_dict().items():  # original untouched
        assert torch.equal(v, state[k])
    for m in clean.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None
            assert torch.count_nonzero(m.running_mean) == 0
            assert torch.count_nonzero(m.bias) == 0
            assert torch.count_nonzero(m.weight) == m.num_features
    x = _input(shape)
    assert torch.count_nonzero(clean(torch.zeros_like(x))) == 0  # no bias anywhere


def test_remove_biases_homogeneous() -> None:
    """ReLU nets without biases are positively homogeneous: f(2x) == 2 f(x)."""
    for model, shape in [(M.vgg("D-tiny", batch_norm=True), (2, 3, 32, 32)),
                         (M.resnet(), (2, 3, 32, 32)), (M.densenet(), (2, 3, 32, 32)),
                         (M.functional_net(), (2, 3, 16, 16))]:
        clean = M.remove_biases(M.randomize_batchnorm(model, seed=2))
        x = _input(shape)
        torch.testing.assert_close(clean(2 * x), 2 * clean(x), rtol=1e-4, atol=1e-5)


def test_residual_spellings_present() -> None:
    """The default small ResNet uses every residual spelling and both downsampling kinds."""
    model = M.resnet()
    blocks = [m for m in model.modules() if isinstance(m, (M.BasicBlock, M.Bottleneck))]
    kinds = {(type(b).__name__, b.downsample is not None) for b in blocks}
    assert kinds == {("BasicBlock", False), ("BasicBlock", True), ("Bottleneck", True),
                     ("Bottleneck", False)}


def test_functional_net_calls_shared_twice() -> None:
    model = M.functional_net()
    assert isinstance(model, M.FunctionalNet)
    calls: list[int] = []
    model.shared.register_forward_hook(lambda *_: calls.append(1))
    model(_input((1, 3, 16, 16)))
    assert len(calls) == 2


def test_efficientnet_has_depthwise_and_se() -> None:
    model = M.efficientnet()
    assert any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1
               for m in model.modules())
    assert any(isinstance(m, M.SqueezeExcite) for m in model.modules())
    assert any(isinstance(m, M.MBConv) and m.use_residual for m in model.modules())
    assert any(isinstance(m, M.MBConv) and not m.use_residual for m in model.modules())


@pytest.mark.parametrize("build,params", [(M.vgg16, 138_357_544), (M.resnet50, 25_557_032)])
def test_full_size_layouts(build: Callable[..., nn.Module], params: int) -> None:
    """vgg16/resnet50 have the parameter counts of the reference architectures."""
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build()
    assert sum(p.numel() for p in model.parameters()) == params
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == (13 if build is M.vgg16 else 53)
    if build is M.vgg16:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [
            (25088, 4096), (4096, 4096), (4096, 1000)]


@pytest.mark.slow
@pytest.mark.parametrize("build", [M.vgg16, M.resnet50])
def test_full_size_forward(build: Callable[..., nn.Module]) -> None:
    with torch.no_grad():
        out = build()(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
