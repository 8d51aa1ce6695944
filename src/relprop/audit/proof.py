"""Does SpRAy find the planted Clever Hans? One training seed of the proof.

For a seed: generate the planted data (:mod:`relprop.audit.planted`), train the CNN, take the
test images of the tagged class and cluster four kinds of maps of them with the same SpRAy
pipeline (:func:`relprop.audit.spray_class`): LRP heatmaps (the default composite), the
signed gradient and its absolute value (sensitivity), each summed over channels, and the raw
inputs (channel sum). The cluster that best matches the tagged images
(:func:`relprop.audit.match_planted`) gives, per image, the indicators that purity and recall
average:

* purity: for each member of the best cluster, 1 if it carries the tag;
* recall: for each tagged image, 1 if it is in the best cluster.

``scripts/clever_hans.py`` runs several seeds and prints means with bootstrap CIs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .planted import TAGGED_CLASS, make_planted, tag_reliance, train_planted
from .spray import match_planted, spray_class

__all__ = ["MAPS", "MapOutcome", "evaluate_seed"]

#: the kinds of maps compared, in table order
MAPS: tuple[str, ...] = ("LRP", "gradient", "gradient (abs)", "raw input")


@dataclass
class MapOutcome:
    """SpRAy on one kind of map for one seed."""

    n_clusters: int
    cluster: int  #: the best-matching cluster
    purity: float
    recall: float
    top_ranked: bool  #: whether the best-matching cluster is the class's most distinct one
    purity_items: Tensor  #: per member of the best cluster: tagged (1.0) or not
    recall_items: Tensor  #: per tagged image: in the best cluster (1.0) or not


def _maps(model: torch.nn.Module, x: Tensor) -> dict[str, Tensor]:
    import relprop
    from relprop.methods import gradient

    grad = gradient(model, x, target=TAGGED_CLASS).relevance.detach().sum(dim=1)
    return {
        "LRP": relprop.explain(model, x, target=TAGGED_CLASS).relevance.detach().sum(dim=1),
        "gradient": grad,
        "gradient (abs)": gradient(model, x, target=TAGGED_CLASS, mode="abs").relevance.detach()
        .sum(dim=1),
        "raw input": x.sum(dim=1),
    }


def evaluate_seed(seed: int, *, n_train: int = 400, n_test: int = 100, epochs: int = 10,
                  **spray_settings: Any) -> tuple[dict[str, MapOutcome], dict[str, float]]:
    """The outcome per kind of map (:data:`MAPS`) and the model's tag reliance
    (:func:`relprop.audit.planted.tag_reliance`) for training seed ``seed``."""
    model = train_planted(make_planted(n_train, seed=seed), seed=seed, epochs=epochs)
    test = make_planted(n_test, seed=seed + 10_000)
    rows = (test.labels == TAGGED_CLASS).nonzero().flatten()
    x, tagged = test.images[rows], test.tagged[rows].numpy()
    settings = {"embedding": "spectral", "seed": seed, **spray_settings}
    out = {}
    for name, maps in _maps(model, x).items():
        result = spray_class(maps, label=TAGGED_CLASS, **settings)
        cluster, purity, recall = match_planted(result, np.flatnonzero(tagged))
        inside = result.clusters == cluster
        out[name] = MapOutcome(
            n_clusters=result.n_clusters, cluster=cluster, purity=purity, recall=recall,
            top_ranked=result.n_clusters > 1 and result.ranking[0] == cluster,
            purity_items=torch.as_tensor(tagged[inside], dtype=torch.float64),
            recall_items=torch.as_tensor(inside[tagged], dtype=torch.float64))
    return out, tag_reliance(model, test)
