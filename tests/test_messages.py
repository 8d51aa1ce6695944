"""What relprop accepts and how it refuses: regression heads, integer images, numpy and list
targets, boolean targets, and the warning for models that return probabilities."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import relprop
from relprop._engine import check_input, check_token_ids, warn_if_probabilities
from relprop.targets import Logit, OutputRelevance, as_target


def _regressor() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1), nn.Flatten(0)).eval()


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def _lrp0() -> relprop.composites.Composite:
    return relprop.composites.uniform(relprop.rules.Zero())


# 1. regression heads: a (batch,) output

def test_a_float_target_of_a_batch_output_is_its_output_relevance() -> None:
    model, x = _regressor(), torch.randn(4, 5)
    seed = torch.tensor([1.0, -2.0, 0.5, 3.0])
    expl = relprop.explain(model, x, target=seed, composite=_lrp0())
    assert isinstance(expl.target, OutputRelevance)
    torch.testing.assert_close(expl.explained, seed)
    # LRP-0 through a biased net: relevance is the gradient × input for the seed R / y
    x_leaf = x.clone().requires_grad_(True)
    y = model(x_leaf)
    (grad,) = torch.autograd.grad(y, x_leaf, seed / y)
    torch.testing.assert_close(expl.relevance, x * grad)


def test_no_target_for_a_batch_output_explains_each_sample_value() -> None:
    model, x = _regressor(), torch.randn(4, 5)
    expl = relprop.explain(model, x, composite=_lrp0())
    with torch.no_grad():
        torch.testing.assert_close(expl.explained, model(x))
    x_leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x_leaf).sum(), x_leaf)
    torch.testing.assert_close(expl.relevance, x * grad)


def test_a_class_index_for_a_batch_output_is_refused() -> None:
    with pytest.raises(relprop.InvalidInputError, match=r"\(batch, classes\).*float tensor"):
        relprop.explain(_regressor(), torch.randn(4, 5), target=0)


def test_a_float_target_of_another_shape_is_still_refused() -> None:
    with pytest.raises(relprop.InvalidInputError, match=r"output's shape \(4,\); got \(3,\)"):
        relprop.explain(_regressor(), torch.randn(4, 5), target=torch.ones(3))


# 2. integer images

@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_an_integer_image_is_refused_with_the_conversion(dtype: torch.dtype) -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 2)).eval()
    x = torch.randint(0, 256, (2, 3, 8, 8)).to(dtype)
    name = str(dtype).removeprefix("torch.")
    message = (rf"x is an integer image \(dtype {name}, shape \(2, 3, 8, 8\)\): convert it to "
               r"float and normalise it as the model expects, e.g. x.float\(\) / 255")
    with pytest.raises(relprop.InvalidInputError, match=message):
        relprop.explain(model, x)
    with pytest.raises(relprop.InvalidInputError, match=message):
        check_token_ids(x)
    with pytest.raises(relprop.InvalidInputError, match=message):
        check_input(x)  # the path of relprop.methods


def test_two_dimensional_integers_are_still_token_ids() -> None:
    check_token_ids(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(relprop.InvalidInputError, match="token ids"):
        check_token_ids(torch.zeros(5, dtype=torch.long))
    with pytest.raises(relprop.InvalidInputError, match="taken for token ids"):
        relprop.explain(_classifier(), torch.ones(2, 5, dtype=torch.long))


def test_a_boolean_input_is_refused() -> None:
    with pytest.raises(relprop.InvalidInputError, match="torch.bool.*x.float"):
        check_token_ids(torch.ones(2, 5, dtype=torch.bool))


# 3. numpy and list targets, booleans refused

@pytest.mark.parametrize("target", [
    np.int64(2), np.int32(2), np.uint8(2), np.array(2), np.array([2, 0, 1, 2]),
    np.array([2, 0, 1, 2], dtype=np.int32), [2, 0, 1, 2], (2, 0, 1, 2),
])
def test_numpy_and_list_targets_are_class_indices(target: Any) -> None:
    model, x = _classifier(), torch.randn(4, 5)
    classes = torch.as_tensor(np.broadcast_to(np.asarray(target), (4,)).copy()).long()
    expl = relprop.explain(model, x, target=target)
    want = relprop.explain(model, x, target=classes)
    with torch.no_grad():
        torch.testing.assert_close(expl.explained, model(x).gather(1, classes[:, None])[:, 0])
    torch.testing.assert_close(expl.relevance, want.relevance)


def test_a_numpy_float_array_of_the_output_shape_is_output_relevance() -> None:
    output = torch.randn(4, 3)
    target = as_target(np.ones((4, 3), dtype=np.float32), output)
    assert isinstance(target, OutputRelevance)
    torch.testing.assert_close(target.seed(output)[1], torch.full((4,), 3.0))


@pytest.mark.parametrize("target", [
    True, np.bool_(True), torch.tensor([True, False, True, True]),
    np.array([True, False, True, True]), [True, False, True, True],
])
def test_boolean_targets_are_refused(target: Any) -> None:
    with pytest.raises(relprop.InvalidInputError, match="target is boolean.*not a class index"):
        relprop.explain(_classifier(), torch.randn(4, 5), target=target)


@pytest.mark.parametrize("target, match", [
    (1.5, "must be an int class index, got the float 1.5"),
    (np.float64(1.0), "must be an int class index"),
    ("cat", "got str"),
    ([0.5, 0.5, 0.5, 0.5], r"output's shape \(4, 3\); got \(4,\)"),
    (np.array([[1, 2], [0, 1]]), "one class index per sample"),
])
def test_other_targets_are_refused(target: Any, match: str) -> None:
    with pytest.raises(relprop.InvalidInputError, match=match):
        relprop.explain(_classifier(), torch.randn(4, 5), target=target)


def test_a_numpy_integer_reaches_logit() -> None:
    target = as_target(np.argmax(np.array([0.1, 0.9, 0.0])), torch.zeros(2, 3))
    assert isinstance(target, Logit) and target.classes == 1


def test_target_correlation_takes_numpy_classes() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3)).eval()
    x = torch.rand(2, 1, 4, 4)
    a = relprop.metrics.target_correlation(model, x, np.int64(0), contrast=np.array([1, 2]))
    b = relprop.metrics.target_correlation(model, x, 0, contrast=torch.tensor([1, 2]))
    torch.testing.assert_close(a.per_sample, b.per_sample, equal_nan=True)
    with pytest.raises(relprop.InvalidInputError, match="class index"):
        relprop.metrics.target_correlation(model, x, np.float64(0.0))


# 4. outputs that look like probabilities

def _caught(output: torch.Tensor) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_probabilities(output)
    return [w for w in caught if issubclass(w.category, relprop.ProbabilityOutputWarning)]


@pytest.mark.parametrize("shape", [(4, 10), (2, 3, 7)])
def test_a_softmax_output_warns_pointing_to_logits(shape: tuple[int, ...]) -> None:
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    caught = _caught(logits.softmax(dim=-1))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "looks like probabilities" in message and "logits" in message
    assert "remove the model's final softmax" in message and "LogOdds" in message
    assert issubclass(relprop.ProbabilityOutputWarning, UserWarning)
    assert caught[0].filename == __file__  # points at the caller's caller (here: _caught)


@pytest.mark.parametrize("output", [
    torch.randn(4, 10),                                  # logits
    torch.rand(4, 10),                                   # non-negative, rows do not sum to 1
    torch.tensor([[1.5, -0.5], [0.5, 0.5]]),             # rows sum to 1, one negative
    torch.softmax(torch.randn(4, 10), dim=0),            # columns sum to 1, rows do not
    torch.ones(4, 1),                                    # one class
    torch.full((4,), 1.0),                               # (batch,): a regression head
    torch.tensor([[0.5, 0.5]], dtype=torch.float64).log(),
])
def test_other_outputs_do_not_warn(output: torch.Tensor) -> None:
    assert not _caught(output)


def test_half_precision_probabilities_warn() -> None:
    probabilities = torch.randn(8, 1000).softmax(dim=-1).to(torch.bfloat16)
    assert len(_caught(probabilities)) == 1
