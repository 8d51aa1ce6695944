"""The MobileNet variant of the localisation benchmark and its grouped-convolution rows.

No training here: the variant's structure and cache name, the composites of the
``--methods grouped`` rows rule for rule, and the conservation score (ΣR / logit).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import relprop
from relprop import composites, rules
from relprop_bench.cli import build_parser
from relprop_bench.conservation import bias_free, ratios
from relprop_bench.localisation import BenchConfig, MethodSpec, evaluate_model
from relprop_bench.mobilenet import InvertedResidual
from relprop_bench.models import (
    VARIANTS,
    NetConfig,
    TrainConfig,
    _cache_file,
    benchmark_images,
    build_net,
    data_init,
    trained_net,
    vgg_net,
)
from relprop_bench.presets import METHOD_SETS, _dense_convs_and, grouped_methods


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm with non-trivial statistics, as after training (no training here)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
    return model.eval()


def test_mobilenet_variant_is_depthwise_separable() -> None:
    config = VARIANTS["mobilenet"]
    model = build_net(config, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == config.depth == 7
    assert all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert all(c.kernel_size == (3, 3) for c in depthwise)
    pointwise = [c for c in convs if c.groups == 1 and c.kernel_size == (1, 1)]
    assert len(pointwise) == 6 + 7 + 1  # 6 expansions, 7 projections, the head
    blocks = [m for m in model if isinstance(m, InvertedResidual)]
    assert [b.residual for b in blocks] == [False, False, True, False, True, False, True]
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert not model.training
    again = build_net(config, seed=0)  # seeded, and the global RNG is left alone
    state = torch.random.get_rng_state()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                   again.state_dict().values()))
    build_net(config, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    data_init(model, torch.rand(8, 3, 32, 32))  # the training's initialisation runs on it


def test_mobilenet_cache_name_is_stable(tmp_path: Path) -> None:
    # keyed by its configuration like the VGG nets, whose names must not change (arch="vgg"
    # is left out of their key; tests/test_localisation_bench.py pins them)
    name = _cache_file(tmp_path, VARIANTS["mobilenet"], 0, TrainConfig()).name
    assert name == "mobilenet-seed0-9762609c89.pt"
    assert VARIANTS["mobilenet"].name == "mobilenet"
    vgg = _cache_file(tmp_path, VARIANTS["vgg8"], 0, TrainConfig()).name
    assert vgg == "vgg8-seed0-7cc677bd46.pt"


def test_net_config_checks_arch() -> None:
    with pytest.raises(ValueError, match="arch must be"):
        NetConfig(arch="resnet")
    with pytest.raises(ValueError, match="7 blocks"):
        NetConfig(arch="mobilenet", depth=8, batchnorm=True)
    with pytest.raises(ValueError, match="multiple of 4"):
        vgg_net(VARIANTS["mobilenet"])  # not a VGG configuration


def test_method_sets_and_cli() -> None:
    assert set(METHOD_SETS) == {"all", "grouped"}
    names = [s.name for s in grouped_methods()]
    assert len(set(names)) == len(names)
    for needed in ("default", "old_default", "dw_gamma", "dw_zero", "dw_epsilon",
                   "montavon2019", "lrp_0", "gradient", "gradient_x_input", "random_baseline"):
        assert needed in names
    with pytest.raises(ValueError, match="unknown method set"):
        BenchConfig(method_set="some")
    args = build_parser().parse_args(["localisation", "--methods", "grouped",
                                      "--variants", "mobilenet"])
    assert args.methods == "grouped" and args.variants == ["mobilenet"]


def _relevance(model: nn.Module, composite: composites.Composite, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
    return relprop.explain(model, x, y, composite).relevance


@pytest.mark.filterwarnings("ignore::relprop.RuleAssumptionWarning")  # the old default
def test_default_is_gamma_on_every_conv_of_depthwise_nets_only() -> None:
    x, y, _ = benchmark_images(4)
    vgg = _trained_like(vgg_net(VARIANTS["vgg8-bn"], seed=1))
    # no grouped convolution: old default, default and every dw_* row are one composite,
    # Zennit's EpsilonAlpha2Beta1 (ε dense, α2β1 on every conv)
    default = _relevance(vgg, composites.epsilon_alpha2_beta1(), x, y)
    for rule in (rules.AlphaBeta(2.0, 1.0), rules.Gamma(0.25), rules.ZPlus()):
        torch.testing.assert_close(_relevance(vgg, _dense_convs_and(rule), x, y), default)
    torch.testing.assert_close(_relevance(vgg, composites.lrp_cmp(2.0), x, y), default)
    mobile = _trained_like(build_net(VARIANTS["mobilenet"], seed=1))
    # with depthwise convolutions: γ0.25 on every conv, the dense 1x1 and 3x3 ones included
    gamma_all = _relevance(mobile, _dense_convs_and(rules.Gamma(0.25), rules.Gamma(0.25)), x, y)
    expl = relprop.explain(mobile, x, y, composites.epsilon_alpha2_beta1())
    torch.testing.assert_close(expl.relevance, gamma_all)
    conv_rules = [r for name, r in expl.rules.items() if "conv2d" in name]
    assert len(conv_rules) == 22 and all(r.startswith("Gamma(") for r in conv_rules)
    assert not torch.allclose(_relevance(mobile, composites.default(), x, y),
                              _relevance(mobile, composites.lrp_cmp(2.0), x, y))
    # lrp_cmp, the paper's composite, keeps αβ on the dense convs (γ on the depthwise ones)
    torch.testing.assert_close(_relevance(mobile, composites.lrp_cmp(2.0), x, y),
                               _relevance(mobile, _dense_convs_and(rules.Gamma(0.25)), x, y))


def test_conservation_score_is_sum_over_logit() -> None:
    # bias-free ReLU net: LRP-0 = Gradient x Input sums to the logit exactly (homogeneity)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 32 * 32, 10, bias=False),
    ).eval()
    images, labels, boxes = benchmark_images(6)

    def lrp0(m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return relprop.explain(m, x, t, composites.uniform(rules.Zero())).relevance

    def half(m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 * lrp0(m, x, t)

    specs = [MethodSpec("lrp0", "LRP-0", "LRP0", "lrp", lrp0),
             MethodSpec("half", "half", "HALF", "lrp", half),
             MethodSpec("ones", "ones", "ONES", "control", lambda m, x, t: torch.ones_like(x))]
    scores, _, _ = evaluate_model(model, images, labels, boxes, specs, steps=2)
    ones = torch.ones(6, dtype=torch.float64)
    torch.testing.assert_close(scores["lrp0"]["conservation"], ones, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores["half"]["conservation"], 0.5 * ones, atol=1e-5, rtol=1e-5)
    assert bool(scores["ones"]["conservation"].isnan().all())  # a control's sum means nothing


def test_bias_free_copy_conserves_under_lrp0() -> None:
    model = _trained_like(build_net(VARIANTS["mobilenet"], seed=2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = bias_free(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # a copy
    zero = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        assert float(model(zero).abs().max()) > 0  # the trained-like net has constants...
        assert float(plain(zero).abs().max()) == 0.0  # ...the copy none
    x, _, _ = benchmark_images(4)
    with torch.no_grad():
        top = plain(x).argmax(1)
    lrp0 = next(s for s in grouped_methods() if s.name == "lrp_0")
    torch.testing.assert_close(ratios(plain, lrp0, x, top),
                               torch.ones(4, dtype=torch.float64), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_trained_mobilenet_is_accurate(tmp_path: Path) -> None:
    """Seed 0 trains to > 90 % (94.2 % measured; about 6 min on one thread). Seeds 1-3 reached
    81-90 % and seed 4 stayed near chance in the 10 epochs (bench/LOCALISATION.md)."""
    _, meta = trained_net(VARIANTS["mobilenet"], 0, cache=tmp_path, progress=None)
    assert meta["test_accuracy"] > 0.9
