"""The engine benchmark's floor row (``relprop_bench.floor``, a minimal op-intercepting ε)
computes the relevance relprop's uniform ε computes: the row times the same explanation,
and relprop's ε is checked against an implementation written apart from its engine."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from relprop import composites, explain, rules
from relprop_bench import engine_models
from relprop_bench.floor import explain_epsilon
from tests.helpers import models

NETS: dict[str, Callable[[], nn.Module]] = {
    "efficientnet_b0": lambda: engine_models.efficientnet_b0(num_classes=10),
    "resnet": models.resnet,  # +=, torch.add and + residuals, in-place ReLUs
    "vgg_bn": lambda: models.vgg("A-tiny", batch_norm=True),  # conv bias before BatchNorm
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_the_floor_engine_computes_relprops_epsilon(name: str) -> None:
    model = NETS[name]().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([3, 5])
    expected = explain(model, x, target, composites.uniform(rules.Epsilon(1e-6))).relevance
    got = explain_epsilon(model, x, target, epsilon=1e-6)
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=2e-5)
    # the nets differ in where relevance goes: the comparison is not of two zero maps
    assert (got - got.mean()).abs().max() / scale > 0.1


def test_the_floor_engine_refuses_what_it_cannot_merge() -> None:
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    with pytest.raises(NotImplementedError, match="BatchNorm"):
        explain_epsilon(model, torch.randn(1, 3, 4, 4), torch.tensor([0]))


def test_the_fixed_cost_script_times_two_checkouts_side_by_side() -> None:
    """``bench/fixed_cost.py --against`` imports another checkout's relprop beside this one,
    checks that both give the same relevance to the bit, and prints one row per method."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "fixed_cost.py"), "--models", "efficientnet_b0",
         "--rounds", "1", "--against", str(root)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| efficientnet_b0")]
    assert [row.split(" | ")[1] for row in rows] == [
        "gradient", "floor engine", "relprop ε", "relprop (against) ε"]
