"""relprop.concepts: CRP's identities in float64 on ResNet-, DenseNet- and EfficientNet-style
nets, an independent plain-autograd oracle for conditioning inside a branch, rankings,
composition graphs, batched against looped passes, bad input, and the model left alone.

The oracle: on a bias-free ReLU net (BatchNorm a pure scale, max pooling) LRP-0 is gradient ×
input at every layer, so R(x | layer, units) = x · ∂/∂x ⟨mask · G, z_layer⟩ with
G = ∂ logit / ∂ z_layer, both by plain autograd on the plain model: relevance that goes around
the layer (a shortcut) has no gradient path from z_layer and stays out by construction.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import composites, concepts
from relprop.rules import Epsilon, Zero
from tests.helpers.models import (
    densenet,
    efficientnet,
    mlp,
    randomize_batchnorm,
    remove_biases,
    resnet,
)
from tests.helpers.snapshots import assert_unchanged, snapshot

LRP0 = composites.uniform(Zero())
TOL = 1e-6


def _net(build: Callable[[], nn.Module]) -> nn.Module:
    return remove_biases(randomize_batchnorm(build())).double()


def _x(seed: int = 0, batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, 32, 32, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


def _close(a: Tensor, b: Tensor, tol: float = TOL) -> None:
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max()) / scale


NETS = {
    "resnet": lambda: _net(resnet),
    "densenet": lambda: _net(densenet),
    "efficientnet": lambda: _net(efficientnet),
}
# layers every path to the output passes through: a stage, a block after its residual join,
# the residual sum itself (the input of the ReLU that reads it), a dense block's concatenation
CUTS = {
    "resnet": ["layers.1", "layers.0.0", "layers.1.0.relu#2:input", "maxpool"],
    "densenet": ["features.4", "features.5", "features.6"],
    "efficientnet": ["0.3", "0.4:input", "0.5"],
}
# layers inside a branch: a shortcut or a concatenated input goes around them
BRANCHES = {
    "resnet": ["layers.1.0.bn3", "layers.1.0.downsample", "layers.0.0.bn1",
               "layers.1.1.conv2"],
    "densenet": ["features.4.0", "features.4.1.conv1"],
    "efficientnet": ["0.3.block.4", "0.3.block.3"],
}


def _all_units(model: nn.Module, x: Tensor, layer: str, composite: composites.Composite
               ) -> concepts.ConceptExplanation:
    first = concepts.explain(model, x, 1, layer=layer, units=[0], composite=composite)
    return concepts.explain(model, x, 1, layer=layer,
                            units=range(first.unit_relevance.shape[1]), composite=composite)


@pytest.mark.parametrize("net", sorted(NETS))
def test_maps_of_all_units_of_a_cut_sum_to_the_heatmap(net: str) -> None:
    model, x = NETS[net](), _x()
    plain = relprop.explain(model, x, 1, LRP0).relevance
    for layer in CUTS[net]:
        c = _all_units(model, x, layer, LRP0)
        _close(c.heatmap, plain, 1e-12)
        _close(c.relevance.sum(1), plain)
        # a unit's map sums to its relevance at the layer (LRP-0, bias-free: conservation)
        _close(c.relevance_sum(), c.concept_relevance)
        _close(c.unit_relevance.sum(1), c.explained)


@pytest.mark.parametrize("net", sorted(NETS))
def test_inside_a_branch_the_shortcut_share_stays_out(net: str) -> None:
    """zennit-crp #16: conditioned on every unit of a layer inside a residual branch, the input
    gets the relevance that flows through the branch, not the block's."""
    model, x = NETS[net](), _x(1)
    for layer in BRANCHES[net]:
        c = _all_units(model, x, layer, LRP0)
        _close(c.relevance_sum(), c.concept_relevance)
        branch, total = c.unit_relevance.sum(1), c.explained
        assert float((branch - total).abs().max()) > 1e-3, layer  # the shortcut carries some
        _close(c.relevance.sum(1).flatten(1).sum(1), branch)


def _gradient_crp(model: nn.Module, x: Tensor, target: int, module: nn.Module,
                  units: list[int]) -> Tensor:
    """The oracle of the module docstring, with plain autograd (no relprop)."""
    kept: list[Tensor] = []

    def hook(_: nn.Module, __: object, output: Tensor) -> Tensor:
        kept.append(output)
        return output.clone()  # the model's in-place writes go to the copy

    handle = module.register_forward_hook(hook)
    try:
        leaf = x.clone().requires_grad_(True)
        logit = model(leaf)[:, target].sum()
    finally:
        handle.remove()
    (z,) = kept
    (signal,) = torch.autograd.grad(logit, z, retain_graph=True)
    maps = []
    for unit in units:
        mask = torch.zeros_like(signal)
        mask[:, unit] = 1
        (g,) = torch.autograd.grad(z, leaf, signal * mask, retain_graph=True)
        maps.append(leaf.detach() * g)
    return torch.stack(maps, 1)


@pytest.mark.parametrize(("build", "layer"), [
    (lambda: resnet(block="bottleneck"), "layers.1.0.bn3"),
    (lambda: resnet(block="bottleneck"), "layers.1.0.downsample.1"),
    (lambda: resnet(block="bottleneck"), "layers.0.0.bn2"),
    (lambda: resnet(block="bottleneck"), "layers.1"),
    (densenet, "features.4.1"),
    (densenet, "features.4.0.norm2"),
])
def test_conditional_maps_match_plain_autograd_oracle(build: Callable[[], nn.Module],
                                                      layer: str) -> None:
    model, x = _net(build), _x(2)
    units = [0, 3, 1]
    c = concepts.explain(model, x, 1, layer=layer, units=units, composite=LRP0)
    oracle = _gradient_crp(model, x, 1, model.get_submodule(layer), units)
    _close(c.relevance, oracle)


def test_default_composite_and_box_rule_keep_the_cut_identity() -> None:
    """Any composite: the rules are linear in the relevance they pass on; z^B's input-layer
    relevance (handed straight to the pixels) is collected per concept."""
    model, x = NETS["resnet"](), _x(3)
    for composite in (None, composites.epsilon_gamma_box(-3.0, 3.0),
                      composites.uniform(Epsilon(0.1))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = relprop.explain(model, x, 1, composite).relevance
            c = _all_units(model, x, "layers.1", composite)  # type: ignore[arg-type]
        _close(c.relevance.sum(1), plain)


def test_batched_passes_equal_looped_ones() -> None:
    for net, layer in (("resnet", "layers.1"), ("efficientnet", "0.3"),
                       ("densenet", "features.4.0")):
        model, x = NETS[net](), _x(4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batched = concepts.explain(model, x, 2, layer=layer, units=[0, 2, 3],
                                       batch_units=None)
            looped = concepts.explain(model, x, 2, layer=layer, units=[0, 2, 3], batch_units=1)
        _close(batched.relevance, looped.relevance, 1e-12)


def test_unit_sets_are_sums_of_units() -> None:
    model, x = NETS["resnet"](), _x(5)
    c = concepts.explain(model, x, 0, layer="layers.1", units=[4, 9, (4, 9)], composite=LRP0)
    _close(c.relevance[:, 2], c.relevance[:, 0] + c.relevance[:, 1], 1e-12)
    assert c.units == [(4,), (9,), (4, 9)]
    assert c.relevance.shape == (2, 3, 3, 32, 32)


def test_dense_layer_units_are_neurons() -> None:
    model = mlp().double()
    x = torch.randn(3, 16, dtype=torch.float64)
    c = concepts.explain(model, x, 1, layer="2", units=range(32), composite=LRP0)
    assert c.unit_dim == 1 and c.unit_relevance.shape == (3, 32)
    _close(c.relevance.sum(1), relprop.explain(model, x, 1, LRP0).relevance)


def test_top_units_rank_the_layer_relevance_the_engine_records() -> None:
    model, x = NETS["resnet"](), _x(6)
    ranking = concepts.top_units(model, x, 1, "layers.1", k=5, composite=LRP0)
    recorded = relprop.explain(model, x, 1, LRP0, record=True).layers["layers.1"]
    per_channel = recorded.sum((2, 3))
    expected = per_channel.sort(dim=1, descending=True)
    # the units picked carry the 5 largest relevances (compared by value: the two paths
    # round differently, so near-ties may swap indices)
    _close(per_channel.gather(1, ranking.units), expected.values[:, :5])
    _close(ranking.relevance, expected.values[:, :5])
    _close(ranking.total, per_channel.sum(1))
    by_abs = concepts.top_units(model, x, 1, "layers.1", k=3, composite=LRP0, by="abs")
    _close(per_channel.abs().gather(1, by_abs.units), per_channel.abs().topk(3, dim=1).values)


def test_composition_splits_an_upper_unit_over_lower_units() -> None:
    model, x = NETS["resnet"](), _x(7)
    graph = concepts.composition(model, x, 1, upper=("layers.2", 3),
                                 lower=["layers.1", "layers.0"], k=64, composite=LRP0)
    conditional = concepts.explain(model, x, 1, layer="layers.2", units=[3], composite=LRP0)
    _close(graph.root_relevance, conditional.concept_relevance[:, 0])
    for sample in range(2):
        children = graph.children(sample)
        assert len(children) == 64 and children[0].relevance >= children[-1].relevance
        total = sum(e.relevance for e in children)
        assert abs(total - float(graph.root_relevance[sample])) <= TOL * abs(total) + 1e-12
        child = children[0]
        grandchildren = graph.children(sample, (*child.path, child.lower))
        assert len(grandchildren) == 8  # layers.0 has 8 units: k is capped
        below = sum(e.relevance for e in grandchildren)
        assert abs(below - child.relevance) <= TOL * abs(below) + 1e-12


def test_bad_input_gets_named_errors() -> None:
    model, x = NETS["resnet"](), _x()
    before = snapshot(model)
    with pytest.raises(concepts.UnknownLayerError, match="'layers.1'.*:input"):
        concepts.explain(model, x, 1, layer="layer3", units=[0])
    with pytest.raises(concepts.UnitIndexError, match="unit 64 is out of range.*64 units"):
        concepts.explain(model, x, 1, layer="layers.1", units=[1, 64], composite=LRP0)
    with pytest.raises(concepts.UnitIndexError, match="empty"):
        concepts.explain(model, x, 1, layer="layers.1", units=[()], composite=LRP0)
    with pytest.raises(concepts.LayerNotOnPathError, match="not below"):
        concepts.composition(model, x, 1, upper=("layers.0", 1), lower="layers.2")
    with pytest.raises(relprop.InvalidInputError, match="k must"):
        concepts.top_units(model, x, 1, "layers.1", k=0)
    assert_unchanged(before, snapshot(model))


class _Unused(nn.Module):
    """A head that is computed but not used for the output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.aux = nn.Linear(8, 2)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.body(x))
        self.aux(h)
        return self.head(h)


def test_a_layer_off_the_path_to_the_output_is_named() -> None:
    model = _Unused().double().eval()
    with pytest.raises(concepts.LayerNotOnPathError, match="'aux'.*not on the path"):
        concepts.explain(model, torch.randn(2, 4, dtype=torch.float64), 0, layer="aux",
                         units=[0])


def test_explaining_leaves_the_model_unchanged() -> None:
    model, x = NETS["efficientnet"](), _x()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        concepts.explain(model, x, 1, layer="0.3", units=[0, 1])
        concepts.top_units(model, x, 1, "0.3")
        concepts.composition(model, x, 1, upper=("0.5", 0), lower="0.3", k=2)
    assert_unchanged(before, snapshot(model))
