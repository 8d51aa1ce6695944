"""relprop.concepts.references (Relevance Maximization) and the concept figures: top-k by
relevance and by activation against brute force, storage, resuming, crops, pictures."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from relprop import composites, concepts
from relprop.rules import Zero
from tests.helpers.models import vgg

LRP0 = composites.uniform(Zero())
LAYER, UNITS, K = "features.3", [0, 3, 5, 9], 3


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return vgg("A-tiny", seed=1).double()


@pytest.fixture(scope="module")
def data() -> Tensor:
    return torch.rand(22, 3, 16, 16, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def refs(model: nn.Module, data: Tensor) -> concepts.References:
    return concepts.references(data, model, LAYER, UNITS, k=K, composite=LRP0, batch_size=5,
                               progress=False)


def test_references_are_the_top_samples_by_relevance_and_by_activation(
        model: nn.Module, data: Tensor, refs: concepts.References) -> None:
    """Brute force: every sample's unit relevance in one batch, for its top class."""
    c = concepts.explain(model, data, None, layer=LAYER, units=UNITS, composite=LRP0)
    relevance = c.concept_relevance.T  # (units, samples)
    # the batched run and the one-batch run round differently: compare the relevance of the
    # samples picked, not their indices (near-ties may swap)
    torch.testing.assert_close(relevance.gather(1, refs.relevance_indices),
                               relevance.topk(K, dim=1).values)
    torch.testing.assert_close(refs.relevance_values, relevance.topk(K, dim=1).values)
    kept: list[Tensor] = []
    handle = model.get_submodule("features.4").register_forward_hook(  # the ReLU after it
        lambda _, __, out: kept.append(out.detach().clone()))
    with torch.no_grad():
        model(data)
    handle.remove()
    activation = kept[0].amax((2, 3))[:, UNITS].T
    torch.testing.assert_close(activation.gather(1, refs.activation_indices),
                               activation.topk(K, dim=1).values)
    assert not torch.equal(refs.activation_indices, refs.relevance_indices)  # integers
    for unit in UNITS:
        row = UNITS.index(unit)
        assert torch.equal(refs.reference_samples(unit), data[refs.relevance_indices[row]])


def test_patches_are_cropped_to_the_conditional_relevance(refs: concepts.References) -> None:
    assert refs.boxes is not None and refs.maps is not None
    assert refs.maps.shape == (len(UNITS), K, 16, 16)
    for row, unit in enumerate(UNITS):
        for j, patch in enumerate(refs.patches(unit)):
            top, bottom, left, right = refs.boxes[row, j].tolist()
            assert patch.shape == (3, bottom - top, right - left)
            peak = int(refs.maps[row, j].argmax())
            assert top <= peak // 16 < bottom and left <= peak % 16 < right


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_stored_references_load_back(refs: concepts.References, tmp_path: Path,
                                     suffix: str) -> None:
    path = tmp_path / f"refs{suffix}"
    refs.save(path)
    loaded = concepts.References.load(path)
    assert loaded.settings() == refs.settings() and loaded.seen == refs.seen == 22
    for name in ("relevance_indices", "relevance_values", "activation_indices", "boxes",
                 "maps"):
        assert torch.equal(getattr(loaded, name), getattr(refs, name)), name
    assert loaded.samples.keys() == refs.samples.keys()


def test_an_interrupted_scan_resumes_to_the_same_result(model: nn.Module, data: Tensor,
                                                        refs: concepts.References,
                                                        tmp_path: Path) -> None:
    store = tmp_path / "scan.pt"

    def interrupted() -> Iterator[Tensor]:
        for i, batch in enumerate(data.split(4)):
            if i == 3:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        concepts.references(interrupted(), model, LAYER, UNITS, k=K, composite=LRP0,
                            store=store, progress=False)
    assert concepts.References.load(store).seen == 12
    resumed = concepts.references(list(data.split(7)), model, LAYER, UNITS, k=K,
                                  composite=LRP0, store=store, progress=False)
    assert torch.equal(resumed.relevance_indices, refs.relevance_indices)
    assert torch.equal(resumed.boxes, refs.boxes)  # type: ignore[arg-type]
    with pytest.raises(concepts.InvalidInputError, match="other settings"):
        concepts.references(data, model, LAYER, [1], k=K, composite=LRP0, store=store)


def test_labels_as_targets_and_bad_arguments(model: nn.Module, data: Tensor) -> None:
    labels = torch.arange(22) % 10
    refs = concepts.references((data, labels), model, LAYER, [0], k=2, target="label",
                               composite=LRP0, progress=False, crop=False)
    assert set(refs.targets.values()) <= set(labels.tolist())
    assert all(refs.targets[i] == int(labels[i]) for i in refs.targets)
    with pytest.raises(concepts.InvalidInputError, match="needs batches of"):
        concepts.references(data, model, LAYER, [0], target="label", progress=False)
    with pytest.raises(concepts.UnitIndexError):
        concepts.references(data, model, LAYER, [99], progress=False)
    with pytest.raises(concepts.InvalidInputError, match="reduce"):
        concepts.references(data, model, LAYER, [0], reduce="mean")


def test_glocal_figure_and_atlas_page(model: nn.Module, data: Tensor,
                                      refs: concepts.References, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = concepts.explain(model, data[:2], None, layer=LAYER, units=UNITS[:2],
                             composite=LRP0)
    fig = concepts.figures.glocal(c, data[:2], refs, sample=1, patches=2)
    assert len([ax for ax in fig.axes if ax.images]) == 2 + 2 * (1 + 2)
    fig.savefig(tmp_path / "glocal.png")
    page = concepts.figures.atlas(refs, tmp_path / "atlas.html").read_text()
    assert page.count("<section>") == len(UNITS) and page.count("data:image/png") >= 2 * K
