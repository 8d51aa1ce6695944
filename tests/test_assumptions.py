"""Rules whose assumptions fail on the data are named by layer, and the default composite
holds on depthwise convolutions."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import relprop
from relprop import composites as C
from relprop import rules as R
from tests.helpers import models as M


def _depthwise_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return M.remove_biases(M.randomize_batchnorm(M.efficientnet())).double().eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_composite_on_depthwise_convolutions_conserves_or_names_layers(
        seed: int) -> None:
    """Within ±50 % of the logit, or a warning naming the layers that moved it."""
    model = _depthwise_net(seed)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", relprop.RuleAssumptionWarning)
        expl = relprop.explain(model, x)
    ratio = expl.relevance_sum() / expl.explained
    off = [i for i, r in enumerate(ratio.tolist()) if not 0.5 < r < 1.5]
    named = [str(w.message) for w in caught if issubclass(w.category,
                                                          relprop.RuleAssumptionWarning)]
    assert not off or any(f"samples {off}"[:-1] in m and ":conv2d" in m for m in named), (
        ratio.tolist(), named)
    assert bool(((ratio > 0.1) & (ratio < 2.0)).all()), ratio.tolist()  # not −21x any more
    grouped = [name for name, rule in expl.rules.items() if rule.startswith("Gamma")]
    assert grouped and all("conv2d" in name for name in grouped)


def test_alpha_beta_on_depthwise_convolutions_warns_by_layer() -> None:
    model = _depthwise_net(0)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    composite = C.Composite([(C.kind("conv"), R.AlphaBeta(2.0, 1.0)),
                             (C.kind("linear"), R.Epsilon())])
    with pytest.warns(relprop.RuleAssumptionWarning, match=r"AlphaBeta.* at \S+:conv2d"):
        expl = relprop.explain(model, x, composite=composite)
    ratio = expl.relevance_sum() / expl.explained
    assert bool(((ratio < 0.5) | (ratio > 1.5)).any())  # the warning was about something real


def test_no_warning_where_the_assumptions_hold() -> None:
    torch.manual_seed(0)
    model = M.vgg().eval()
    x = torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", relprop.RuleAssumptionWarning)
        relprop.explain(model, x, composite=C.epsilon_gamma_box(0.0, 1.0))
        relprop.explain(model, x, composite=C.epsilon_plus_flat())


def test_a_rule_for_the_input_on_a_hidden_layer_warns() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    composite = C.Composite([(C.first_layers(1), R.ZBox(-1.0, 1.0)),
                             (C.kind("linear"), R.Epsilon())])
    with pytest.warns(relprop.RuleAssumptionWarning, match=r"ZBox.* at 1:linear"):
        relprop.explain(model, torch.randn(2, 4), target=0, composite=composite)
