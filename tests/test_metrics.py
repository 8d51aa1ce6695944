"""relprop.metrics: each score computes what its paper defines, and bad input is refused."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import relprop
from relprop import composites, metrics
from relprop.targets import Logit
from tests.helpers import models as M


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class LinearImage(nn.Module):
    """``f_k(x) = Σ w_k ⊙ x``: its exact relevance for class ``k`` is ``w_k ⊙ x``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kchw->nk", x, self.weight)

    def relevance(self, x: torch.Tensor, target: int) -> torch.Tensor:
        return x * self.weight[target].detach()


def _linear(classes: int = 3, shape: tuple[int, ...] = (3, 8, 8), seed: int = 0,
            positive: bool = False) -> LinearImage:
    weight = torch.randn(classes, *shape, generator=_gen(seed), dtype=torch.float64)
    return LinearImage(weight.abs() if positive else weight).eval()


# ------------------------------------------------------------------------------ pooling
def test_pool_channels_variants() -> None:
    r = torch.randn(2, 3, 4, 5, generator=_gen(), dtype=torch.float64)
    expected = {
        "sum": r.sum(1), "pos_sum": r.clamp(min=0).sum(1), "abs_sum": r.abs().sum(1),
        "l2": r.norm(dim=1), "max_abs": r.abs().max(1).values,
    }
    assert set(expected) == set(metrics.POOLS)
    for pool, value in expected.items():
        torch.testing.assert_close(metrics.pool_channels(r, pool), value)  # type: ignore[arg-type]


def test_pool_channels_of_a_one_channel_map() -> None:
    r = torch.randn(2, 4, 5, generator=_gen(), dtype=torch.float64)
    assert torch.equal(metrics.pool_channels(r, "sum"), r)
    assert torch.equal(metrics.pool_channels(r, "pos_sum"), r.clamp(min=0))
    for pool in ("abs_sum", "l2", "max_abs"):
        torch.testing.assert_close(metrics.pool_channels(r, pool), r.abs())


def test_pooling_changes_localisation() -> None:
    # channel 0 positive inside the box, channel 1 negative inside: sum cancels, abs does not
    r = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    r[0, 0, :2, :2], r[0, 1, :2, :2] = 1.0, -1.0
    r[0, 0, 3, 3] = 1.0
    box = torch.tensor([[0, 0, 2, 2]])
    assert metrics.attribution_localisation(r, box, pool="sum").mu.item() == 0.0
    assert metrics.attribution_localisation(r, box, pool="abs_sum").mu.item() == pytest.approx(
        8 / 9)
    assert metrics.attribution_localisation(r, box, pool="pos_sum").mu.item() == pytest.approx(
        4 / 5)


# ------------------------------------------------------------------------------ regions
def test_integer_boxes_are_half_open_slices_and_fractional_boxes_use_pixel_centres() -> None:
    # column centres 0.5, 1.5 lie in [0.4, 2.5), 2.5 does not; row centres 0.5, 1.5 in [0.4, 1.6)
    masks = metrics.region_masks(torch.tensor([[1, 2, 4, 5], [0.4, 0.4, 2.5, 1.6]]), 2, 6, 7)
    expected = torch.zeros(2, 6, 7, dtype=torch.bool)
    expected[0, 2:5, 1:4] = True
    expected[1, 0:2, 0:2] = True
    assert torch.equal(masks, expected)
    # no row centre in [0.6, 1.5): the box covers no pixel
    with pytest.raises(relprop.InvalidInputError, match=r"sample\(s\) \[1\] is empty"):
        metrics.region_masks(torch.tensor([[1, 2, 4, 5], [0.4, 0.6, 2.5, 1.5]]), 2, 6, 7)


# ---------------------------------------------------------------- attribution localisation
def test_mu_w_of_a_uniform_map_is_exactly_one_for_any_box() -> None:
    h, w = 13, 17
    g = _gen(1)
    x0 = torch.randint(0, w - 1, (64,), generator=g)
    y0 = torch.randint(0, h - 1, (64,), generator=g)
    x1 = x0 + 1 + (torch.rand(64, generator=g) * (w - x0 - 1)).long()
    y1 = y0 + 1 + (torch.rand(64, generator=g) * (h - y0 - 1)).long()
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    for value in (1.0, 0.5, 3.0, 0.3, 1e-3):
        result = metrics.attribution_localisation(torch.full((64, 3, h, w), value), boxes)
        assert torch.equal(result.mu_w, torch.ones(64, dtype=torch.float64)), value
        torch.testing.assert_close(result.mu, result.area_fraction)


def test_mu_of_a_map_concentrated_in_the_box_is_one() -> None:
    r = torch.zeros(3, 2, 8, 8)
    boxes = torch.tensor([[0, 0, 8, 8], [2, 2, 5, 6], [7, 7, 8, 8]])
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        r[i, :, y0:y1, x0:x1] = torch.rand(2, y1 - y0, x1 - x0, generator=_gen(i))
    r[:, :, 0, 0] -= 5.0  # negative relevance outside does not count
    r[0, :, 0, 0] = 0.0
    result = metrics.attribution_localisation(r, boxes)
    assert torch.equal(result.mu, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(result.mu_w, 64 / torch.tensor([64.0, 12.0, 1.0],
                                                              dtype=torch.float64))


def test_masks_and_boxes_agree() -> None:
    r = torch.randn(4, 3, 9, 9, generator=_gen())
    boxes = torch.tensor([[0, 0, 3, 3], [1, 2, 9, 9], [4, 4, 5, 6], [0, 0, 9, 9]])
    masks = metrics.region_masks(boxes, 4, 9, 9)
    a = metrics.attribution_localisation(r, boxes)
    b = metrics.attribution_localisation(r, masks)
    assert torch.equal(a.mu, b.mu) and torch.equal(a.mu_w, b.mu_w)
    assert a.protocol["region"] == "boxes" and b.protocol["region"] == "masks"
    mass = metrics.relevance_mass_accuracy(r, masks)
    assert torch.equal(mass.per_sample, a.mu) and mass.protocol["metric"] == (
        "relevance_mass_accuracy")


def test_no_positive_relevance_gives_nan_that_averages_propagate() -> None:
    r = torch.rand(3, 6, 6, generator=_gen())
    r[1] = 0.0
    r[2] = -r[2]
    boxes = torch.tensor([[0, 0, 3, 3]] * 3)
    result = metrics.attribution_localisation(r, boxes)
    assert result.defined.tolist() == [True, False, False]
    assert math.isnan(result.mu[1]) and math.isnan(result.mu_w[2])
    assert "no positive relevance" in str(result.protocol["undefined"])
    summary = metrics.localisation_summary(result)
    assert math.isnan(summary["mu"]) and math.isnan(summary["mu_w"]) and summary["undefined"] == 2
    kept = metrics.localisation_summary(result, skip_undefined=True)
    assert kept["mu"] == pytest.approx(float(result.mu[0])) and kept["n"] == 1


def test_localisation_summary_restricts_to_small_objects() -> None:
    r = torch.rand(4, 10, 10, generator=_gen())
    boxes = torch.tensor([[0, 0, 4, 5], [0, 0, 6, 6], [0, 0, 10, 7], [0, 0, 5, 5]])  # 20/36/70/25%
    result = metrics.attribution_localisation(r, boxes)
    summary = metrics.localisation_summary(result)
    mu = result.mu
    assert summary["n<0.25"] == 1 and summary["n<0.5"] == 3 and summary["n"] == 4
    assert summary["mu<0.25"] == pytest.approx(float(mu[0]))
    assert summary["mu<0.5"] == pytest.approx(float(mu[[0, 1, 3]].mean()))
    assert summary["mu"] == pytest.approx(float(mu.mean()))
    assert summary["mu_w"] == pytest.approx(float(result.mu_w.mean()))
    assert math.isnan(metrics.localisation_summary(result, (0.1,))["mu<0.1"])
    with pytest.raises(relprop.InvalidInputError, match="thresholds"):
        metrics.localisation_summary(result, (1.5,))


# --------------------------------------------------------------------------- pointing game
def test_pointing_game_hit_miss_tolerance_ties_and_constant() -> None:
    r = torch.zeros(5, 10, 10)
    r[0, 2, 3] = 1.0          # inside the box [2:5, 2:5]
    r[1, 8, 8] = 1.0          # far outside
    r[2, 2, 6] = 1.0          # one column right of the box: distance 2 from the last centre
    r[3, 3, 3] = r[3, 9, 9] = 1.0  # tie: one in, one out
    boxes = torch.tensor([[2, 2, 5, 5]] * 5)
    exact = metrics.pointing_game(r, boxes).per_sample
    assert exact[:4].tolist() == [1.0, 0.0, 0.0, 0.5] and math.isnan(exact[4])
    assert metrics.pointing_game(r, boxes, tolerance=1.9).per_sample[2].item() == 0.0
    near = metrics.pointing_game(r, boxes, tolerance=2.0)
    assert near.per_sample[:4].tolist() == [1.0, 0.0, 1.0, 0.5]
    assert near.protocol["tolerance"] == 2.0
    # diagonal distance: (8,8) to the corner centre (4,4) is √32 ≈ 5.66 px
    assert metrics.pointing_game(r[1:2], boxes[:1], tolerance=5.6).per_sample.item() == 0.0
    assert metrics.pointing_game(r[1:2], boxes[:1], tolerance=5.7).per_sample.item() == 1.0
    with pytest.raises(relprop.InvalidInputError, match="tolerance"):
        metrics.pointing_game(r, boxes, tolerance=-1.0)


# -------------------------------------------------------------------------- rank accuracy
def test_relevance_rank_accuracy() -> None:
    masks = torch.zeros(4, 4, 4, dtype=torch.bool)
    masks[:, 0, :] = True  # K = 4
    base = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    r = torch.stack([base.flip(0), base, base.flip(0), torch.zeros(4, 4)])
    r[2, 0, :2] = -1.0  # two mask pixels drop out of the top 4, replaced by row 1's best
    r[2, 1, 2:] = 20.0
    scores = metrics.relevance_rank_accuracy(r, masks).per_sample
    assert scores[:3].tolist() == [1.0, 0.0, 0.5] and math.isnan(scores[3])


def test_relevance_rank_accuracy_ties_are_an_expectation() -> None:
    masks = torch.zeros(1, 2, 4, dtype=torch.bool)
    masks[0, 0, :2] = True  # K = 2
    r = torch.tensor([[[2.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]]])
    # 2.0 is in the mask; the 2nd place goes to one of four tied 1.0s, one of them in the mask
    assert metrics.relevance_rank_accuracy(r, masks).per_sample.item() == pytest.approx(
        (1 + 1 / 4) / 2)


# ------------------------------------------------------------------------------- spearman
def test_spearman_of_a_map_with_itself_and_its_negation() -> None:
    r = torch.randn(3, 2, 5, 5, generator=_gen())
    assert torch.equal(metrics.spearman(r, r), torch.ones(3, dtype=torch.float64))
    assert torch.equal(metrics.spearman(r, -r), -torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(metrics.spearman(r, r.exp() * 3), torch.ones(3, dtype=torch.float64))
    constant = metrics.spearman(torch.ones(1, 9), torch.arange(9.0)[None])
    assert math.isnan(constant.item())


def test_spearman_with_ties_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    g = _gen(3)
    a = torch.randint(0, 5, (4, 30), generator=g).double()
    b = torch.randint(0, 4, (4, 30), generator=g).double() + 0.1 * a
    ours = metrics.spearman(a, b)
    for i in range(4):
        expected = stats.spearmanr(a[i].numpy(), b[i].numpy()).statistic
        assert ours[i].item() == pytest.approx(expected, abs=1e-12)


# -------------------------------------------------------------------- region perturbation
def _aopc(model: nn.Module, x: torch.Tensor, relevance: torch.Tensor | None, order: str,
          **options: Any) -> metrics.PerturbationResult:
    return metrics.region_perturbation(model, x, relevance, 0, order=order,  # type: ignore[arg-type]
                                       **{"region_size": 2, **options})


def test_morf_with_the_true_relevance_of_a_linear_model_beats_random_and_lerf() -> None:
    # x ∈ [-1, 1] so that the noise has mean ~0 and w ⊙ x is the expected effect of replacing
    # a pixel; the noise still scatters single samples, so the claim is about the averages
    model = _linear()
    x = 2 * torch.rand(16, 3, 8, 8, generator=_gen(1), dtype=torch.float64) - 1
    relevance = model.relevance(x, 0)
    morf = _aopc(model, x, relevance, "morf")
    lerf = _aopc(model, x, relevance, "lerf")
    rand = _aopc(model, x, None, "random")
    assert morf.aopc > rand.aopc + 1.0 > lerf.aopc + 2.0
    between = metrics.abpc(morf, lerf)
    torch.testing.assert_close(between.per_sample, morf.aopc_per_sample - lerf.aopc_per_sample)
    assert between.abpc > 0 and between.protocol["metric"] == "abpc:region_perturbation"


def test_aopc_of_shuffled_relevance_matches_the_random_order() -> None:
    # Both rank the regions in a random order, so the per-sample difference d of their AOPCs
    # has mean 0; with N samples the sample mean of d has standard error std(d)/√N, and
    # |mean d| < 4 standard errors fails for a correct implementation with p ≈ 6e-5 (normal
    # approximation; the seeds are fixed, so the test is deterministic). The same bound must
    # separate the true relevance from random, or the test would have no power.
    # Replacing with 0 (noise_range (0, 0)) makes w ⊙ x the exact effect of each pixel, so
    # the order is the only source of variation.
    n = 96
    model = _linear(shape=(1, 8, 8))
    x = torch.rand(n, 1, 8, 8, generator=_gen(2), dtype=torch.float64)
    relevance = model.relevance(x, 0)
    shuffle = torch.rand(n, 64, generator=_gen(4)).argsort(dim=1)
    shuffled = relevance.reshape(n, -1).gather(1, shuffle).reshape(relevance.shape)
    options: dict[str, Any] = {"seed": 5, "noise_range": (0.0, 0.0)}
    rand = _aopc(model, x, None, "random", **options).aopc_per_sample
    d = _aopc(model, x, shuffled, "morf", **options).aopc_per_sample - rand
    bound = 4 * d.std() / math.sqrt(n)
    assert d.mean().abs() < bound
    true = _aopc(model, x, relevance, "morf", **options).aopc_per_sample - rand
    assert true.mean() > 5 * bound


def test_a_constant_map_ranks_like_the_random_order() -> None:
    model = M.vgg(seed=0)
    x = torch.randn(3, 3, 16, 16, generator=_gen())
    flat = metrics.region_perturbation(model, x, torch.zeros(3, 16, 16), 1, region_size=4)
    rand = metrics.region_perturbation(model, x, None, 1, region_size=4, order="random")
    assert torch.equal(flat.curves, rand.curves)


def test_curves_start_clean_end_on_noise_and_do_not_depend_on_batching() -> None:
    model = _linear()
    x = torch.rand(5, 3, 8, 8, generator=_gen(), dtype=torch.float64)
    relevance = model.relevance(x, 1)
    kwargs: dict[str, Any] = {"region_size": 3, "noise_range": (-1.0, 2.0), "seed": 7}
    result = metrics.region_perturbation(model, x, relevance, 1, batch_size=4, **kwargs)
    assert result.curves.shape == (5, 10) and result.protocol["regions"] == 9  # 3x3 tiles of 8
    with torch.no_grad():
        torch.testing.assert_close(result.curves[:, 0], model(x)[:, 1])
    noise = -1.0 + 3.0 * torch.rand(x.shape, generator=_gen(7), dtype=x.dtype)
    with torch.no_grad():
        torch.testing.assert_close(result.curves[:, -1], model(noise)[:, 1])
    other = metrics.region_perturbation(model, x, relevance, 1, batch_size=1000, **kwargs)
    torch.testing.assert_close(result.curves, other.curves)  # up to the model's batch numerics
    short = metrics.region_perturbation(model, x, relevance, 1, steps=4, **kwargs)
    # the same perturbed inputs, but through the model in other batch shapes (steps=4 and the
    # default batch size against batch_size=4): equal up to the model's batch numerics
    torch.testing.assert_close(short.curves, result.curves[:, :5])
    reseeded = metrics.region_perturbation(model, x, relevance, 1, **{**kwargs, "seed": 8})
    assert not torch.equal(reseeded.curves, result.curves)
    expected = (result.curves[:, :1] - result.curves).mean(dim=1)
    torch.testing.assert_close(result.aopc_per_sample, expected)
    torch.testing.assert_close(result.aopc, expected.mean())


def test_protocol_records_the_recipe() -> None:
    model = _linear()
    x = torch.rand(2, 3, 8, 8, generator=_gen(), dtype=torch.float64)
    result = metrics.region_perturbation(model, x, model.relevance(x, 0), None, order="lerf",
                                         region_size=4, steps=2, pool="abs_sum", seed=3,
                                         score="probability")
    p = result.protocol
    assert (p["metric"], p["order"], p["region_size"], p["steps"], p["pool"], p["seed"],
            p["score"]) == ("region_perturbation", "lerf", 4, 2, "abs_sum", 3, "probability")
    assert p["noise_range"] == "per-sample, per-channel min and max of x"
    with torch.no_grad():
        assert p["target"] == model(x).argmax(1).tolist()
        torch.testing.assert_close(result.curves[:, 0],
                                   model(x).softmax(1).max(1).values)
    given = metrics.region_perturbation(model, x, None, 0, order="random", region_size=4,
                                        noise_range=(0.0, torch.tensor([1.0, 2.0, 3.0])[:, None,
                                                                                          None]))
    assert given.protocol["noise_range"][0] == 0.0 and given.protocol["pool"] is None  # type: ignore[index]


# --------------------------------------------------------------------------- pixel flipping
def test_pixel_flipping_is_monotone_for_a_linear_model_with_morf() -> None:
    # f(x) = Σ w⊙x with w, x ≥ 0 and flipped pixels set to 0: each step removes the next
    # largest pixel relevance Σ_c w_c x_c, so the MoRF curve falls, by decreasing amounts
    model = _linear(shape=(3, 6, 6), positive=True)
    x = torch.rand(4, 3, 6, 6, generator=_gen(), dtype=torch.float64)
    relevance = model.relevance(x, 2)
    morf = metrics.pixel_flipping(model, x, relevance, 2, noise_range=(0.0, 0.0))
    drops = morf.curves[:, :-1] - morf.curves[:, 1:]
    assert morf.curves.shape == (4, 37)
    assert (drops >= -1e-12).all()
    expected = relevance.sum(1).reshape(4, -1).sort(dim=1, descending=True).values
    torch.testing.assert_close(drops, expected)
    assert morf.curves[:, -1].abs().max() < 1e-12
    lerf = metrics.pixel_flipping(model, x, relevance, 2, order="lerf", noise_range=(0.0, 0.0))
    torch.testing.assert_close(lerf.curves[:, :-1] - lerf.curves[:, 1:], expected.flip(1))


def test_pixel_flipping_by_fraction() -> None:
    model = _linear()
    x = torch.rand(2, 3, 8, 8, generator=_gen(), dtype=torch.float64)
    result = metrics.pixel_flipping(model, x, model.relevance(x, 0), 0, fraction_per_step=0.25)
    assert result.curves.shape == (2, 5) and result.protocol["pixels_per_step"] == 16
    by_count = metrics.pixel_flipping(model, x, model.relevance(x, 0), 0, pixels_per_step=16)
    assert torch.equal(result.curves, by_count.curves)
    with pytest.raises(relprop.InvalidInputError, match="not both"):
        metrics.pixel_flipping(model, x, None, 0, order="random", pixels_per_step=2,
                               fraction_per_step=0.5)


# ------------------------------------------------------------------------ randomisation
def _epsilon(model: nn.Module, x: torch.Tensor, target: Any) -> relprop.Explanation:
    # not the default composite: its flat first layer makes every map of an MLP constant
    return relprop.explain(model, x, target, composite=composites.epsilon_plus())


def _mlp_image() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 16),
                         nn.ReLU(), nn.Linear(16, 4)).double().eval()


def test_randomisation_leaves_the_users_model_unchanged() -> None:
    torch.manual_seed(0)
    model = _mlp_image()
    x = torch.rand(3, 3, 4, 4, generator=_gen(), dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    rng = torch.get_rng_state()
    result = metrics.model_parameter_randomisation(model, x, 1, _epsilon)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [id(p) for p in model.parameters()] == params and not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert list(result.correlations) == ["5", "3", "1"]  # top-down in execution order
    assert result.protocol["layers"] == ["5", "3", "1"]
    assert all(c.shape == (3,) and (c.abs() <= 1).all() for c in result.correlations.values())
    assert result.protocol["randomisation"] == dict.fromkeys(["5", "3", "1"], "reset_parameters()")
    assert result.protocol["method"] == "lrp:epsilon_plus"
    again = metrics.model_parameter_randomisation(model, x, 1, _epsilon)
    assert all(torch.equal(again.correlations[k], v) for k, v in result.correlations.items())


def test_a_map_that_ignores_the_model_stays_perfectly_correlated() -> None:
    def edge_detector(model: nn.Module, x: torch.Tensor, target: Any) -> relprop.Explanation:
        output = model(x).detach()
        return relprop.Explanation(relevance=x.diff(dim=-1), output=output,
                                   explained=output[:, 0], target=Logit(0), method="edges")

    model = _mlp_image()
    x = torch.rand(2, 3, 4, 4, generator=_gen(), dtype=torch.float64)
    result = metrics.model_parameter_randomisation(model, x, 0, edge_detector, pool=None)
    assert all(torch.equal(c, torch.ones(2, dtype=torch.float64))
               for c in result.correlations.values())
    lrp = metrics.model_parameter_randomisation(model, x, 0, _epsilon)
    assert lrp.mean["1"] < 0.9


def test_independent_randomisation_and_explicit_layers() -> None:
    model = M.vgg(seed=0)
    x = torch.randn(2, 3, 16, 16, generator=_gen())
    result = metrics.model_parameter_randomisation(model, x, None, layers=["features.0"],
                                                   mode="independent", pool="abs_sum")
    assert list(result.correlations) == ["features.0"] and result.protocol["mode"] == "independent"
    with pytest.raises(relprop.InvalidInputError, match="no module named"):
        metrics.model_parameter_randomisation(model, x, layers=["nope"])
    with pytest.raises(relprop.InvalidInputError, match="own no parameters"):
        metrics.model_parameter_randomisation(model, x, layers=["features"])


def test_a_module_without_reset_parameters_is_redrawn_from_a_gaussian() -> None:
    model = LinearImage(torch.randn(2, 1, 3, 3, generator=_gen())).eval()
    x = torch.rand(2, 1, 3, 3, generator=_gen(1))
    result = metrics.model_parameter_randomisation(model, x, 0, pool=None)
    assert result.protocol["randomisation"] == {"": "normal(mean, std) of each own parameter"}


# ------------------------------------------------------------------------------- bad input
def test_bad_regions_are_refused() -> None:
    r = torch.rand(2, 3, 8, 8)
    cases = [
        (torch.tensor([[0, 0, 4, 4]]), r"boxes must have shape \(N, 4\)"),
        (torch.tensor([[0, 0, 4, 4, 1], [0, 0, 4, 4, 1]]), r"shape \(N, 4\)"),
        (torch.zeros(2, 8, 9, dtype=torch.bool), r"masks must have shape"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.bool), r"masks must have shape"),
        (torch.tensor([[0, 0, 4, 4], [-1, 0, 4, 4]]), r"sample\(s\) \[1\] lie outside"),
        (torch.tensor([[0, 0, 9, 4], [0, 0, 4, 4]]), r"sample\(s\) \[0\] lie outside"),
        (torch.tensor([[2, 2, 2, 5], [0, 0, 4, 4]]), r"sample\(s\) \[0\] is empty"),
        (torch.tensor([[3, 2, 1, 5], [0, 0, 4, 4]]), r"is empty"),
        (torch.tensor([[0, 0, 4, 4], [0, 0, float("nan"), 4]]), r"NaN"),
        (torch.zeros(2, 8, 8, dtype=torch.bool), r"sample\(s\) \[0, 1\] is empty"),
    ]
    for region, message in cases:
        for fn in (metrics.attribution_localisation, metrics.pointing_game,
                   metrics.relevance_mass_accuracy, metrics.relevance_rank_accuracy):
            with pytest.raises(relprop.InvalidInputError, match=message):
                fn(r, region)


def test_bad_maps_are_refused_naming_the_sample() -> None:
    r = torch.rand(4, 3, 8, 8)
    r[2, 1, 3, 3] = float("nan")
    box = torch.tensor([[0, 0, 4, 4]] * 4)
    for fn in (metrics.attribution_localisation, metrics.pointing_game,
               metrics.relevance_mass_accuracy, metrics.relevance_rank_accuracy):
        with pytest.raises(relprop.InvalidInputError, match=r"NaN or inf in sample\(s\) \[2\]"):
            fn(r, box)
    with pytest.raises(relprop.InvalidInputError, match=r"sample\(s\) \[2\]"):
        metrics.spearman(r, r)
    with pytest.raises(relprop.InvalidInputError, match=r"pool must be one of"):
        metrics.pool_channels(r.nan_to_num(), "mean")  # type: ignore[arg-type]
    with pytest.raises(relprop.InvalidInputError, match=r"\(N, C, H, W\) or \(N, H, W\)"):
        metrics.attribution_localisation(torch.rand(8, 8), torch.tensor([[0, 0, 4, 4]]))
    model = _linear()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(relprop.InvalidInputError, match=r"sample\(s\) \[2\]"):
        metrics.region_perturbation(model, x, r.double(), 0, region_size=4)


def test_a_model_returning_probabilities_is_refused_in_logit_space() -> None:
    linear = _linear()
    model = nn.Sequential(linear, nn.Softmax(dim=1)).eval()
    x = torch.rand(3, 3, 8, 8, generator=_gen(), dtype=torch.float64)
    relevance = linear.relevance(x, 0)
    with pytest.raises(relprop.InvalidInputError, match=r"pass .*logits.*score='probability'"):
        metrics.region_perturbation(model, x, relevance, 0, region_size=4)
    with pytest.raises(relprop.InvalidInputError, match=r"score='output'"):
        metrics.pixel_flipping(model, x, relevance, 0, score="probability")
    probability = metrics.region_perturbation(model, x, relevance, 0, region_size=4,
                                              score="output")
    logit = metrics.region_perturbation(linear, x, relevance, 0, region_size=4,
                                        score="probability")
    torch.testing.assert_close(probability.curves, logit.curves)


def test_bad_perturbation_arguments_are_refused() -> None:
    model = _linear()
    x = torch.rand(2, 3, 8, 8, generator=_gen(), dtype=torch.float64)
    relevance = model.relevance(x, 0)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"order": "random"}, "pass relevance=None"),
        ({"relevance": None}, "only allowed with order='random'"),
        ({"relevance": relevance[:, :, :4]}, "must have the input's shape"),
        ({"order": "best"}, "order must be one of"),
        ({"score": "log"}, "score must be one of"),
        ({"pool": "mean"}, "pool must be one of"),
        ({"region_size": 0}, "region_size must be an int ≥ 1"),
        ({"steps": 0}, r"steps must be an int in \[1, 4\]"),
        ({"steps": 5}, r"steps must be an int in \[1, 4\]"),
        ({"batch_size": 0}, "batch_size"),
        ({"noise_range": (1.0, 0.0)}, "low ≤ high"),
        ({"noise_range": (0.0, torch.ones(5))}, "does not broadcast"),
        ({"target": 3}, r"out of range"),
        ({"x": x.float()[:, :, :, :4]}, r"relevance must have the input's shape"),
        ({"x": x[0]}, r"x must be a non-empty image batch"),
    ]
    for change, message in cases:
        args = {"relevance": relevance, "target": 0, "x": x, "region_size": 4, **change}
        with pytest.raises(relprop.InvalidInputError, match=message):
            metrics.region_perturbation(model, **args)
    model.train()
    with pytest.raises(relprop.InvalidInputError, match="model.eval()"):
        metrics.region_perturbation(model, x, relevance, 0)


def test_abpc_refuses_mismatched_results() -> None:
    model = _linear()
    x = torch.rand(2, 3, 8, 8, generator=_gen(), dtype=torch.float64)
    relevance = model.relevance(x, 0)
    morf = metrics.region_perturbation(model, x, relevance, 0, region_size=4)
    lerf = metrics.region_perturbation(model, x, relevance, 0, region_size=4, order="lerf")
    other = metrics.region_perturbation(model, x, relevance, 0, region_size=4, order="lerf",
                                        seed=1)
    with pytest.raises(relprop.InvalidInputError, match=r"differ in \['seed'\]"):
        metrics.abpc(morf, other)
    with pytest.raises(relprop.InvalidInputError, match="order='morf'"):
        metrics.abpc(lerf, morf)


def test_bad_randomisation_arguments_are_refused() -> None:
    model = _mlp_image()
    x = torch.rand(2, 3, 4, 4, generator=_gen(), dtype=torch.float64)

    def not_an_explanation(model: nn.Module, x: torch.Tensor, target: Any) -> Any:
        return x

    with pytest.raises(relprop.InvalidInputError, match="must return a relprop.Explanation"):
        metrics.model_parameter_randomisation(model, x, 0, not_an_explanation)
    with pytest.raises(relprop.InvalidInputError, match="mode must be"):
        metrics.model_parameter_randomisation(model, x, 0, mode="all")  # type: ignore[arg-type]
    with pytest.raises(relprop.InvalidInputError, match="wrap it in a list"):
        metrics.model_parameter_randomisation(model, x, 0, layers="1")


def test_region_perturbation_refuses_a_region_that_does_not_fit() -> None:
    model = _linear()
    x = torch.rand(2, 3, 8, 8, generator=_gen(), dtype=torch.float64)
    relevance = model.relevance(x, 0)
    with pytest.raises(relprop.InvalidInputError,
                       match=r"region_size 9 is larger than the image \(8×8 pixels\)"):
        metrics.region_perturbation(model, x, relevance, 0)  # the default region_size is 9
    with pytest.raises(relprop.InvalidInputError, match=r"region_size 8 is as large as the image"):
        metrics.region_perturbation(model, x, relevance, 0, region_size=8)
    wide = torch.rand(2, 3, 4, 16, generator=_gen(), dtype=torch.float64)
    with pytest.raises(relprop.InvalidInputError, match=r"larger than the image \(4×16"):
        metrics.region_perturbation(_linear(shape=(3, 4, 16)), wide, None, 0, region_size=5,
                                    order="random")
    assert metrics.region_perturbation(model, x, relevance, 0, region_size=7).protocol[
        "regions"] == 4


def _short(text: str) -> None:
    assert len(text) <= 120 and "tensor(" not in text, text


def test_result_reprs_are_short_with_mean_and_ci() -> None:
    values = torch.linspace(0, 1, 100, dtype=torch.float64)
    scores = metrics.Scores(per_sample=values, protocol={"metric": "pointing_game"})
    half = 1.959963984540054 * float(values.std()) / 10
    text = repr(scores)
    _short(text)
    assert text == (f"Scores(pointing_game: mean 0.5, 95% CI [{0.5 - half:.3g}, "
                    f"{0.5 + half:.3g}], n=100)")
    with_nan = values.clone()
    with_nan[:3] = float("nan")
    assert "n=97 (+3 NaN)" in repr(metrics.Scores(per_sample=with_nan, protocol={}))
    one = repr(metrics.Scores(per_sample=torch.tensor([0.25]), protocol={"metric": "m"}))
    assert one == "Scores(m: mean 0.25, n=1, no CI)"
    assert "no defined sample of 2" in repr(metrics.Scores(
        per_sample=torch.full((2,), float("nan")), protocol={}))

    model = _linear()
    x = torch.rand(100, 3, 8, 8, generator=_gen(), dtype=torch.float64)
    relevance = model.relevance(x, 0)
    morf = metrics.region_perturbation(model, x, relevance, 0, region_size=4, steps=3)
    lerf = metrics.region_perturbation(model, x, relevance, 0, region_size=4, steps=3,
                                       order="lerf")
    result = metrics.abpc(morf, lerf)
    for text in (repr(morf), repr(result), str(result)):
        _short(text)
    assert repr(morf).startswith("PerturbationResult(region_perturbation morf, AOPC ")
    assert f"AOPC {float(morf.aopc):.3g}, 95% CI [" in repr(morf) and "n=100" in repr(morf)
    assert f"ABPC {float(result.abpc):.3g}, 95% CI [" in repr(result)

    box = torch.tensor([[0, 0, 4, 4]] * 100)
    localisation = metrics.attribution_localisation(relevance, box)
    _short(repr(localisation))
    assert f"mu {float(localisation.mu.mean()):.3g} [" in repr(localisation)
    _short(repr(metrics.pointing_game(relevance, box)))


def test_randomisation_repr_is_short() -> None:
    correlations = {f"features.{i}.conv": torch.rand(100) for i in range(12)}
    result = metrics.RandomisationResult(correlations=correlations,
                                         protocol={"mode": "cascading"})
    text = repr(result)
    _short(text)
    assert text.startswith("RandomisationResult(cascading, n=100, mean rho: features.0.conv ")
    assert "more)" in text
