"""target_correlation / map_correlation: the class-sensitivity check of a method's maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import relprop
from relprop import InvalidInputError, composites, rules
from relprop.methods import METHODS
from relprop.metrics import map_correlation, runner_up, spearman, target_correlation


def _gradient(model: nn.Module, x: torch.Tensor, target: object) -> relprop.Explanation:
    return METHODS["gradient"](model, x, target=target)


def test_pearson_matches_numpy_per_sample() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, 6, 7, generator=gen)
    b = 0.5 * a + torch.randn(5, 3, 6, 7, generator=gen)
    rho = map_correlation(a, b, pool="sum")
    pa, pb = a.sum(1).flatten(1).double().numpy(), b.sum(1).flatten(1).double().numpy()
    expected = [np.corrcoef(pa[i], pb[i])[0, 1] for i in range(5)]
    np.testing.assert_allclose(rho.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert rho.dtype == torch.float64
    # the correlation is not vacuous: it is neither 0 nor 1 here
    assert 0.1 < float(rho.min()) and float(rho.max()) < 0.99


def test_spearman_option_and_token_maps() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 9, generator=gen), torch.randn(4, 9, generator=gen)
    torch.testing.assert_close(map_correlation(a, b, pool=None, correlation="spearman"),
                               spearman(a, b))
    with pytest.raises(InvalidInputError, match="pool=None"):
        map_correlation(a, b, pool="sum")
    with pytest.raises(InvalidInputError, match="pearson"):
        map_correlation(a, b, pool=None, correlation="kendall")  # type: ignore[arg-type]


def test_constant_map_is_nan_and_signs_are_kept() -> None:
    a = torch.randn(3, 1, 4, 4)
    flat = torch.zeros_like(a)
    assert torch.isnan(map_correlation(a, flat)).all()
    minus_one = torch.full((3,), -1.0, dtype=torch.float64)
    torch.testing.assert_close(map_correlation(a, -2 * a), minus_one)
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        map_correlation(a, a.masked_fill(torch.ones_like(a, dtype=torch.bool), float("nan")))
    with pytest.raises(InvalidInputError, match="different shapes"):
        map_correlation(a, a[:2])


def test_runner_up_skips_the_target() -> None:
    out = torch.tensor([[0.0, 3.0, 2.0], [5.0, 1.0, 4.0], [1.0, 1.0, 0.0]])
    assert runner_up(out, torch.tensor([1, 2, 0])).tolist() == [2, 0, 1]
    with pytest.raises(InvalidInputError, match="C ≥ 2"):
        runner_up(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))


def test_linear_model_gradient_correlation_is_that_of_the_weight_rows() -> None:
    # the gradient map of class c is the weight row w_c: ρ = corr(w_t, w_c), known in closed form
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 4)).eval()
    x = torch.randn(6, 2, 5, 5)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    contrast = torch.tensor([1, 2, 3, 0, 3, 3])
    got = target_correlation(model, x, target, _gradient, contrast=contrast)
    w = model[1].weight.detach().double().reshape(4, 2, 25).sum(1).numpy()
    expected = [np.corrcoef(w[t], w[c])[0, 1] for t, c in zip(target.tolist(), contrast.tolist())]
    np.testing.assert_allclose(got.per_sample.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert got.protocol["contrast"] == contrast.tolist()
    assert got.protocol["contrast_rule"] == "given"


def test_proportional_heads_give_one_and_the_default_contrast_is_the_runner_up() -> None:
    # every class's logit is a positive multiple of one function: any map is class-blind
    torch.manual_seed(1)
    body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 36, 1, bias=False))
    head = nn.Linear(1, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [2.0], [0.5]]))
    model = nn.Sequential(body, head).eval()
    x = torch.randn(4, 1, 6, 6)
    lrp0 = lambda m, xx, t: relprop.explain(m, xx, t, composites.uniform(rules.Zero()))  # noqa: E731
    got = target_correlation(model, x, attribute=lrp0)
    torch.testing.assert_close(got.per_sample, torch.ones(4, dtype=torch.float64))
    out = model(x).detach()
    top = out.argmax(1)
    assert got.protocol["target"] == top.tolist()
    assert got.protocol["contrast"] == runner_up(out, top).tolist()


def test_bad_targets_raise_and_the_model_is_untouched() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 8)
    with pytest.raises(InvalidInputError, match="contrast equals target"):
        target_correlation(model, x, torch.tensor([0, 1]), _gradient, contrast=torch.tensor([0, 2]))
    with pytest.raises(InvalidInputError, match="not a class"):
        target_correlation(model, x, 3, _gradient)
    with pytest.raises(InvalidInputError, match="one class per sample"):
        target_correlation(model, x, torch.tensor([0, 1, 2]), _gradient)
    with pytest.raises(InvalidInputError, match="contrasting class"):
        target_correlation(model, x, relprop.targets.LogOdds(0), _gradient)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="class scores"):
        target_correlation(nn.Flatten(0), x, None, _gradient)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
