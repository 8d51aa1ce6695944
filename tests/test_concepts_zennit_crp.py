"""Oracle comparison with zennit-crp 0.6.0 (test-only; `make test` installs it without its
dependencies, and without it these tests fail rather than skip).

On a plain VGG-style net (no branches, every layer a module) CRP's definition and zennit-crp's
coincide: the relevance of the logit, masked to the chosen channels at the layer's output,
propagated on with the same rules. Compared in float64: ``epsilon_plus`` against zennit's
``EpsilonPlus`` (ε on dense layers, z⁺ on convolutions), conditional heatmaps (zennit-crp
sums them over colour channels) and the relevance of every channel at the layer.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Iterator

import pytest
import torch

from relprop import composites, concepts
from tests.helpers import models as M
from tests.helpers.stand_ins import installed, torchvision_stand_in

TOLERANCE = 1e-9  # float64: max |relprop - zennit-crp| <= TOLERANCE * max |zennit-crp|
# ε and the z⁺ stabiliser are 1e-12 on both sides: at the default 1e-6 the two libraries,
# which stabilise denominators slightly differently, differ by ~3e-6 on small maps


@pytest.fixture(scope="module")
def crp() -> Iterator[types.SimpleNamespace]:
    """zennit-crp's ``CondAttribution`` and zennit's composites (torchvision stand-in)."""
    for package in ("zennit", "crp"):
        if not installed(package):
            raise ImportError(f"the test oracle {package} is not installed: run `make "
                              ".venv/.relprop-installed` or `pip install --no-deps "
                              "zennit==0.5.1 zennit-crp==0.6.0`")
    with torchvision_stand_in():
        zennit_composites = importlib.import_module("zennit.composites")
        attribution = importlib.import_module("crp.attribution")
    yield types.SimpleNamespace(CondAttribution=attribution.CondAttribution,
                                EpsilonPlus=zennit_composites.EpsilonPlus)


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = float(theirs.abs().max())
    assert scale > 0
    assert float((ours - theirs).abs().max()) <= TOLERANCE * scale


@pytest.mark.parametrize(("layer", "units"), [("features.3", [0, 5, 11]),
                                              ("features.6", [2, 3]),
                                              ("classifier.0", list(range(0, 32, 4)))])
@pytest.mark.parametrize("seed", [0, 1])
def test_conditional_heatmaps_agree_with_zennit_crp(crp: types.SimpleNamespace, layer: str,
                                                    units: list[int], seed: int) -> None:
    model = M.vgg("A-tiny", seed=seed).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    target = 3
    ours = concepts.explain(model, x, target, layer=layer, units=units,
                            composite=composites.epsilon_plus(1e-12, 1e-12))
    attribution = crp.CondAttribution(model, no_param_grad=False)
    maps, layer_relevance = [], []
    for b in range(2):
        conditions = [{"y": [target], layer: [u]} for u in units]
        theirs = attribution(x[b:b + 1].clone().requires_grad_(True), conditions,
                             crp.EpsilonPlus(epsilon=1e-12, stabilizer=1e-12), record_layer=[layer])
        maps.append(theirs.heatmap)
        full = attribution(x[b:b + 1].clone().requires_grad_(True), [{"y": [target]}],
                           crp.EpsilonPlus(epsilon=1e-12, stabilizer=1e-12), record_layer=[layer])
        at_layer = full.relevances[layer]
        per_unit = at_layer.sum((2, 3)) if at_layer.dim() == 4 else at_layer
        layer_relevance.append(per_unit[0])
    _close(ours.relevance.sum(2).flatten(0, 1), torch.cat(maps))
    _close(ours.unit_relevance, torch.stack(layer_relevance))
