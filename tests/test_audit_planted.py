"""The planted Clever Hans data (relprop.audit.planted) and, behind -m slow, the proof."""

from __future__ import annotations

import pytest
import torch

from relprop.audit.planted import (
    CLASSES,
    TAG,
    TAGGED_CLASS,
    PlantedCNN,
    add_tag,
    build_model,
    make_planted,
)


def test_planted_data_is_deterministic_and_tags_half_of_one_class() -> None:
    data = make_planted(20, seed=3)
    assert data.images.shape == (80, 3, 32, 32) and data.images.dtype == torch.float32
    assert 0.0 <= float(data.images.min()) and float(data.images.max()) <= 1.0
    assert torch.bincount(data.labels).tolist() == [20] * len(CLASSES)
    assert int(data.tagged.sum()) == 10 and bool((data.labels[data.tagged] == TAGGED_CLASS).all())
    again = make_planted(20, seed=3)
    assert torch.equal(again.images, data.images) and torch.equal(again.tagged, data.tagged)
    assert not torch.equal(make_planted(20, seed=4).images, data.images)
    # the tag is the checker in the corner, exactly where it is planted
    corner = data.images[:, :, 1:1 + TAG, 1:1 + TAG]
    checker = add_tag(torch.zeros(1, 3, 32, 32))[0, :, 1:1 + TAG, 1:1 + TAG]
    assert bool((corner[data.tagged] == checker).all())
    assert not bool((corner[~data.tagged] == checker).flatten(1).all(dim=1).any())


def test_class_names_are_in_image_folder_order() -> None:
    # an image folder labels its sub-folders in sorted order: the model's classes must agree
    assert list(CLASSES) == sorted(CLASSES) and CLASSES[TAGGED_CLASS] == "ring"


def test_build_model_is_an_eval_mode_cnn() -> None:
    model = build_model()
    assert isinstance(model, PlantedCNN) and not model.training
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, len(CLASSES))


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="tag_fraction"):
        make_planted(10, tag_fraction=1.5)


@pytest.mark.slow
def test_spray_on_lrp_isolates_the_planted_tag_over_three_seeds() -> None:
    """The proof (README's table, scripts/clever_hans.py): purity and recall ≥ 0.9 on every
    seed with LRP; clustering the raw inputs does not find the tag."""
    from relprop.audit.proof import evaluate_seed

    for seed in range(3):
        outcome, reliance = evaluate_seed(seed)
        assert reliance["tag_flip"] > 0.5  # the model uses the tag
        lrp = outcome["LRP"]
        assert lrp.purity >= 0.9 and lrp.recall >= 0.9, (seed, lrp)
        assert lrp.top_ranked, seed  # the tag cluster is the class's most distinct one
        raw = outcome["raw input"]
        assert min(raw.purity, raw.recall) < 0.9, (seed, raw)
