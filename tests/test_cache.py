"""rho(W) kept across explanations (relprop.rules.cache): same maps as computed afresh,
refreshed by a training step or new BatchNorm statistics, never a leak, the model untouched."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
import torch

import relprop
from relprop import composites, rules
from relprop.rules import cache
from tests.helpers.models import randomize_batchnorm, resnet, vgg
from tests.helpers.snapshots import assert_unchanged, snapshot

COMPOSITES: dict[str, Callable[[], composites.Composite]] = {
    "epsilon_plus_flat": composites.epsilon_plus_flat,
    "epsilon_gamma_box": lambda: composites.epsilon_gamma_box(low=-3.0, high=3.0),
    "gamma": lambda: composites.uniform(rules.Gamma(0.25)),
    "alpha2_beta1": composites.epsilon_alpha2_beta1,
    "w2": lambda: composites.Composite([(composites.first_layers(), rules.WSquare()),
                                        (composites.kind("linear", "conv", "norm"),
                                         rules.ZPlus())]),
}


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    cache.clear()


def _model() -> torch.nn.Module:
    return randomize_batchnorm(resnet()).double().eval()


def _x(seed: int = 3) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


def _fresh(model: torch.nn.Module, x: torch.Tensor, composite: str) -> torch.Tensor:
    with cache.disabled():
        return relprop.explain(model, x, 1, COMPOSITES[composite]()).relevance


@pytest.mark.parametrize("composite", sorted(COMPOSITES))
def test_kept_weights_give_the_maps_computed_afresh(composite: str) -> None:
    model = _model()
    first = relprop.explain(model, _x(), 1, COMPOSITES[composite]()).relevance
    assert cache.size() > 0
    kept = {(slot, key): value for slot, record in cache._RECORDS.items()
            for key, value in record.made.items()}
    second = relprop.explain(model, _x(4), 1, COMPOSITES[composite]()).relevance
    # the second call computed no weight again: every kept value is the same tensor
    assert cache.size() == len(kept)
    assert all(cache._RECORDS[slot].made[key] is value for (slot, key), value in kept.items())
    torch.testing.assert_close(first, _fresh(model, _x(), composite), rtol=0, atol=0)
    torch.testing.assert_close(second, _fresh(model, _x(4), composite), rtol=0, atol=0)


def test_an_optimizer_step_brings_the_new_weights() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    results, sizes, records = [], [], []
    for step in range(3):
        results.append(relprop.explain(model, _x(), 1, COMPOSITES["gamma"]()).relevance)
        torch.testing.assert_close(results[-1], _fresh(model, _x(), "gamma"), rtol=0, atol=0)
        sizes.append(cache.size())
        records.append(len(cache._RECORDS))
        optimizer.zero_grad()
        model(_x(5 + step))[:, 1].sum().backward()
        optimizer.step()
    assert not torch.allclose(results[0], results[1])
    assert not torch.allclose(results[1], results[2])
    # new versions replace the old values, never add: one record per layer, whose stale
    # transforms go with it (a step may need one transform fewer, for outputs that changed sign)
    assert records[0] == records[1] == records[2] > 0
    assert sizes[2] <= sizes[1] <= sizes[0] + records[0]


def test_new_batchnorm_statistics_and_loaded_weights_are_used() -> None:
    model = _model()
    relprop.explain(model, _x(), 1, COMPOSITES["epsilon_gamma_box"]())
    model.train()
    with torch.no_grad():
        model(_x(6) * 3)  # running statistics move (in place: their versions change)
    model.eval()
    after = relprop.explain(model, _x(), 1, COMPOSITES["epsilon_gamma_box"]()).relevance
    torch.testing.assert_close(after, _fresh(model, _x(), "epsilon_gamma_box"), rtol=0, atol=0)
    other = _model()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.0)
    model.load_state_dict(other.state_dict())
    loaded = relprop.explain(model, _x(), 1, COMPOSITES["epsilon_gamma_box"]()).relevance
    torch.testing.assert_close(loaded, _fresh(other, _x(), "epsilon_gamma_box"), rtol=0, atol=0)


def test_a_dtype_change_is_a_new_entry() -> None:
    model = vgg(batch_norm=True).eval()
    x = _x().float()
    single = relprop.explain(model, x, 1, COMPOSITES["gamma"]()).relevance
    model.double()
    double = relprop.explain(model, x.double(), 1, COMPOSITES["gamma"]()).relevance
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-6)


def test_the_model_is_left_as_it_was_and_nothing_leaks() -> None:
    model = _model()
    state = snapshot(model)
    relprop.explain(model, _x(), 1, COMPOSITES["epsilon_gamma_box"]())
    relprop.explain(model, _x(), [[1, 2]], COMPOSITES["gamma"]())
    assert_unchanged(state, snapshot(model))
    assert cache.size() > 0
    del model
    gc.collect()
    assert cache.size() == 0


def test_weights_computed_in_the_forward_pass_are_not_kept() -> None:
    class Computed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 6, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, self.w * 2.0)

    relprop.explain(Computed().eval(), torch.randn(3, 6, dtype=torch.float64), 1,
                    composites.uniform(rules.ZPlus()))
    assert cache.size() == 0


def test_a_parameter_dying_while_the_cache_is_locked_does_not_hang() -> None:
    """A garbage collection inside the cache's lock runs the weak references' callbacks in
    the same thread (the fuzz run hung on exactly this with a plain lock)."""
    model = _model()
    relprop.explain(model, _x(), 1, COMPOSITES["gamma"]())
    assert cache.size() > 0
    with cache._LOCK:
        del model
        gc.collect()
    assert cache.size() == 0


def test_the_budget_bounds_what_is_kept_and_not_the_maps() -> None:
    model = _model()
    before = cache.budget()
    try:
        relprop.explain(model, _x(), 1, COMPOSITES["epsilon_gamma_box"]())
        full = cache.nbytes()
        assert full > 0 and cache.size() > 0
        cache.clear()
        cache.set_budget(full // 3)
        third = relprop.explain(model, _x(), 1, COMPOSITES["epsilon_gamma_box"]()).relevance
        assert 0 < cache.nbytes() <= full // 3
        cache.clear()
        cache.set_budget(0)
        none = relprop.explain(model, _x(), 1, COMPOSITES["epsilon_gamma_box"]()).relevance
        assert cache.size() == 0 and cache.nbytes() == 0
        fresh = _fresh(model, _x(), "epsilon_gamma_box")
        torch.testing.assert_close(third, fresh, rtol=0, atol=0)
        torch.testing.assert_close(none, fresh, rtol=0, atol=0)
        with pytest.raises(ValueError, match="budget"):
            cache.set_budget(-1)
    finally:
        cache.set_budget(before)
