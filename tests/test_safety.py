"""Bad input is refused clearly, unsupported ops are named, and the model is never changed."""

from __future__ import annotations

import threading
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import relprop
from relprop import composites as C
from tests.helpers import models as M
from tests.helpers.snapshots import assert_unchanged, snapshot


class _Exp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


class _Normalise(nn.Module):
    """A division by a sum of the activations (``x / ‖x‖`` is an L2 normalisation, which
    relprop recognises: tests/test_zoo_ops.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.sum(dim=1, keepdim=True)


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * 2


class _Custom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Double.apply(x)


def _mlp_with(block: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), block, nn.Linear(6, 3)).eval()


@pytest.mark.parametrize("block, op", [(_Exp(), "exp"), (_Normalise(), "div"),
                                       (_Custom(), "_DoubleBackward")])
def test_unsupported_op_names_module_and_op(block: nn.Module, op: str) -> None:
    model = _mlp_with(block)
    with pytest.raises(relprop.UnsupportedOperationError) as info:
        relprop.explain(model, torch.randn(2, 4), target=0)
    message = str(info.value)
    assert "'1'" in message and op in message


def test_strict_false_warns_and_explains() -> None:
    model = _mlp_with(_Exp())
    with pytest.warns(relprop.UnsupportedOperationWarning, match="exp"):
        expl = relprop.explain(model, torch.randn(2, 4), target=0, strict=False)
    assert expl.relevance.shape == (2, 4)


def test_model_is_unchanged_after_explaining() -> None:
    model = M.randomize_batchnorm(M.resnet())
    before = snapshot(model)
    relprop.explain(model, torch.randn(2, 3, 32, 32), target=1, record=True)
    assert_unchanged(before, snapshot(model))


def test_model_is_unchanged_when_explain_raises() -> None:
    model = _mlp_with(_Exp())
    before = snapshot(model)
    with pytest.raises(relprop.UnsupportedOperationError):
        relprop.explain(model, torch.randn(2, 4), target=0)
    with pytest.raises(relprop.InvalidInputError), warnings.catch_warnings():
        warnings.simplefilter("ignore", relprop.UnsupportedOperationWarning)
        relprop.explain(model, torch.randn(2, 4), target=7, strict=False)
    assert_unchanged(before, snapshot(model))
    # and the model still runs plainly, with no relprop machinery attached
    out = model(torch.randn(2, 4))
    assert out.grad_fn is not None and "Layer" not in type(out.grad_fn).__name__


def test_two_threads_get_the_same_results_as_one_after_the_other() -> None:
    model = M.randomize_batchnorm(M.resnet())
    xs = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    comps = [C.epsilon_gamma_box(-3.0, 3.0), C.epsilon_plus_flat()]
    expected = [relprop.explain(model, x, target=1, composite=c).relevance
                for x, c in zip(xs, comps)]
    results: list[torch.Tensor | None] = [None, None]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                results[i] = relprop.explain(model, xs[i], target=1, composite=comps[i]).relevance
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        assert got is not None
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("x, match", [
    (torch.tensor([[1.0, float("nan"), 0.0, 0.0]]), "NaN or inf"),
    (torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, float("-inf"), 1.0]]), r"NaN or inf.*\[1, 2\]"),
    (torch.ones(2, 4, dtype=torch.long), "floating point"),
    (torch.ones(0, 4), "non-empty"),
])
def test_bad_inputs_are_refused(x: torch.Tensor, match: str) -> None:
    with pytest.raises(relprop.InvalidInputError, match=match):
        relprop.explain(_mlp_with(nn.ReLU()), x, target=0)


def test_an_input_whose_sum_overflows_is_finite() -> None:
    """The input check sums the input first: a sum that overflows (every value finite) is
    not taken for an inf in the input, and an inf beside it is still found."""
    from relprop._engine import check_input

    big = torch.full((2, 4), 3e38)
    assert not torch.isfinite(big.sum())
    check_input(big)  # no error
    big[1, 3] = float("inf")
    with pytest.raises(relprop.InvalidInputError, match=r"first at index \[1, 3\]"):
        check_input(big)


@pytest.mark.parametrize("target, match", [
    (3, r"out of range.*3 outputs"),
    (-1, "out of range"),
    (torch.tensor([0, 1, 2]), "one class index per sample"),
    (torch.ones(2, 5), "output's shape"),
    (1.5, "must be an int"),
])
def test_bad_targets_are_refused(target: Any, match: str) -> None:
    with pytest.raises(relprop.InvalidInputError, match=match):
        relprop.explain(_mlp_with(nn.ReLU()), torch.randn(2, 4), target=target)


def test_training_mode_is_refused_and_left_alone() -> None:
    model = _mlp_with(nn.Dropout(0.5)).train()
    with pytest.raises(relprop.InvalidInputError, match=r"training mode.*model.eval\(\)"):
        relprop.explain(model, torch.randn(2, 4), target=0)
    assert all(m.training for m in model.modules())


def test_batch_statistics_batchnorm_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False),
                          nn.ReLU(), nn.Linear(6, 2)).eval()
    with pytest.raises(relprop.UnsupportedOperationError, match="batch statistics"):
        relprop.explain(model, torch.randn(3, 4), target=0)


def test_output_must_be_a_tensor() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    with pytest.raises(relprop.InvalidInputError, match="returned tuple"):
        relprop.explain(Pair().eval(), torch.randn(2, 4), target=0)


def test_no_warning_on_a_clean_model() -> None:
    """Nothing to warn about: every op has a rule. (Where αβ's assumption fails on a layer of
    this tiny net for a random input, ``RuleAssumptionWarning`` says so: tests/test_assumptions.)"""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", relprop.RuleAssumptionWarning)
        relprop.explain(M.randomize_batchnorm(M.efficientnet()), torch.randn(1, 3, 32, 32))
