"""Spectral Relevance Analysis (SpRAy): which strategies does a model use within a class?

Lapuschkin et al. (2019), "Unmasking Clever Hans predictors and assessing what machines
really learn", Nat. Commun. 10:1096. Per class:

1. every heatmap ``R_i`` (``(H, W)``, channels summed) is area-downsampled to ``size`` and
   scaled to unit L2 norm: ``f_i = pool(R_i) / ||pool(R_i)||``, so that the pattern, not the
   amount, of relevance is compared;
2. a symmetric k-nearest-neighbour graph ``A`` on the ``f_i`` (an edge where ``j`` is one of
   the k nearest of ``i`` or the reverse), weighted ``A_ij = exp(−d_ij² / (σ_i σ_j))`` with
   ``σ_i`` the distance to the 7th neighbour (self-tuning, Zelnik-Manor & Perona 2004), or 1;
3. the eigenvalues ``0 = λ_1 ≤ λ_2 ≤ …`` of its normalised Laplacian
   ``L = I − D^{-1/2} A D^{-1/2}``; the number of clusters is at the first large eigengap,
   ``k* = min {k ≤ max_clusters : λ_{k+1} − λ_k ≥ r · max_j (λ_{j+1} − λ_j)}`` with
   ``r = gap_ratio = 0.5`` (r = 1: the largest gap). Taking the first large gap, not always
   the largest, keeps a group that varies smoothly inside (an object in changing places)
   from being cut into pieces by its own low eigenvalues; k* = 1 means one strategy;
4. spectral clustering of ``A`` into ``k*`` groups (scikit-learn), a 2-D embedding (t-SNE or
   the spectral embedding) for the eye, and per cluster a prototype (the mean of its
   normalised heatmaps) and its members nearest to it;
5. a ranking of the clusters by how unlike the rest of their class they are, the candidates
   for a Clever Hans strategy: a tight cluster far from the other members,
   ``distinctness_c = mean_{i ∉ c} ||f_i − μ_c|| / (mean_{i ∈ c} ||f_i − μ_c|| + 0.1 s)``
   (μ_c: the cluster's mean feature vector; s: the class's mean distance to its own mean,
   which keeps a one-member cluster finite), next to the conductance of the cluster in the
   graph, ``cut(c, class∖c) / min(vol c, vol class∖c)`` (0: no edge leaves it).

The entry point works on in-memory maps: ``spray(heatmaps (N, H, W), labels (N,))``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import RelpropError

__all__ = [
    "ClassSpray",
    "SprayInputError",
    "SprayResult",
    "downsample",
    "eigengap",
    "knn_affinity",
    "match_planted",
    "spray",
    "spray_class",
]

Embedding = Literal["tsne", "spectral"]
Weights = Literal["self-tuning", "connectivity"]


class SprayInputError(RelpropError, ValueError):
    """Heatmaps, labels or SpRAy settings that cannot be analysed as given."""


@dataclass
class ClassSpray:
    """SpRAy of one class. Indices in ``indices``/``nearest`` refer to the rows of the input.

    Attributes:
        label: the class.
        indices: ``(n,)`` rows of the input that belong to the class, in input order.
        clusters: ``(n,)`` cluster of each member, ``0 .. n_clusters - 1``.
        eigenvalues: the smallest ``max_clusters + 1`` eigenvalues of the normalised Laplacian.
        n_clusters: chosen by the eigengap (or given).
        gap: the chosen eigengap ``λ_{k*+1} − λ_{k*}`` (large: clearly separate strategies).
        embedding: ``(n, 2)`` coordinates for a scatter plot.
        prototypes: ``(n_clusters, H, W)`` mean normalised heatmap of each cluster, full size.
        nearest: per cluster, input rows of its members nearest to its prototype, nearest first.
        sizes: ``(n_clusters,)`` members per cluster.
        distinctness: ``(n_clusters,)`` how far the rest lies from the cluster, relative to its
            own spread (module docstring; 0 when there is one cluster).
        conductance: ``(n_clusters,)`` share of the cluster's graph edges that leave it.
        ranking: cluster ids, most distinct first.
    """

    label: int
    indices: np.ndarray
    clusters: np.ndarray
    eigenvalues: np.ndarray
    n_clusters: int
    gap: float
    embedding: np.ndarray
    prototypes: np.ndarray
    nearest: list[np.ndarray]
    sizes: np.ndarray
    distinctness: np.ndarray
    conductance: np.ndarray
    ranking: list[int]

    def members(self, cluster: int) -> np.ndarray:
        """Input rows of the members of ``cluster``."""
        return self.indices[self.clusters == cluster]


@dataclass
class SprayResult:
    """SpRAy over every class: ``classes[label]``, plus the classes left out and why."""

    classes: dict[int, ClassSpray]
    skipped: dict[int, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def candidates(self) -> list[tuple[int, int, float]]:
        """``(label, cluster, distinctness)`` of every cluster of a class with more than one,
        most distinct first: where to look for a Clever Hans strategy."""
        out = [(c.label, k, float(c.distinctness[k]))
               for c in self.classes.values() if c.n_clusters > 1 for k in range(c.n_clusters)]
        return sorted(out, key=lambda t: -t[2])

    def class_ranking(self) -> list[int]:
        """Classes by their largest eigengap, largest first (the paper's class ranking)."""
        return sorted(self.classes, key=lambda lab: -self.classes[lab].gap)


def _as_maps(heatmaps: Tensor | np.ndarray) -> Tensor:
    maps = torch.as_tensor(heatmaps).detach().cpu()
    if maps.dim() == 4:  # (N, C, H, W): channels summed, as relprop.viz.channel_sum
        maps = maps.sum(dim=1)
    if maps.dim() != 3:
        raise SprayInputError(
            f"spray: heatmaps must be (N, H, W) or (N, C, H, W), got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        maps = maps.to(torch.float32)
    bad = ~torch.isfinite(maps).flatten(1).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:5].tolist()
        raise SprayInputError(f"spray: heatmaps hold NaN or inf (rows {rows}, ...)")
    return maps.to(torch.float64)


def downsample(heatmaps: Tensor | np.ndarray, size: int | tuple[int, int] = 16) -> np.ndarray:
    """``(N, H, W)`` maps → ``(N, h·w)`` unit-L2 feature vectors (area pooling to ``size``,
    never larger than the maps; an all-zero map stays zero)."""
    maps = _as_maps(heatmaps)
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise SprayInputError(f"spray: size must be positive, got {size!r}")
    h, w = min(h, maps.shape[1]), min(w, maps.shape[2])
    pooled = F.adaptive_avg_pool2d(maps[:, None], (h, w)).flatten(1)
    norm = pooled.norm(dim=1, keepdim=True)
    return (pooled / torch.where(norm > 0, norm, torch.ones_like(norm))).numpy()


def knn_affinity(features: np.ndarray, n_neighbors: int, *, weights: Weights = "self-tuning",
                 scale_neighbor: int = 7) -> Any:
    """The symmetric k-nearest-neighbour graph (scipy sparse): an edge ``i–j`` where ``j`` is
    one of the k nearest of ``i`` or the reverse.

    ``weights="self-tuning"`` (Zelnik-Manor & Perona 2004): ``A_ij = exp(−d_ij² / (σ_i σ_j))``
    with ``σ_i`` the distance from ``i`` to its ``scale_neighbor``-th nearest neighbour, so that
    an edge from a diffuse region into a tight group (a Clever Hans cluster) weighs little;
    ``"connectivity"``: ``A_ij = 1``.
    """
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    k = min(n_neighbors, n - 1)
    dist, near = NearestNeighbors(n_neighbors=max(k, min(scale_neighbor, n - 1)) + 1).fit(
        features).kneighbors(features)  # column 0: the point itself
    rows, cols, d = np.repeat(np.arange(n), k), near[:, 1:k + 1].ravel(), dist[:, 1:k + 1].ravel()
    if weights == "connectivity":
        w = np.ones_like(d)
    elif weights == "self-tuning":
        sigma = dist[:, min(scale_neighbor, n - 1)]
        sigma = np.where(sigma > 0, sigma, max(float(sigma.max()), 1e-12))
        w = np.exp(-(d ** 2) / (sigma[rows] * sigma[cols]))
    else:
        raise SprayInputError(
            f"spray: weights must be 'self-tuning' or 'connectivity', not {weights!r}")
    from scipy.sparse import csr_matrix

    graph = csr_matrix((w, (rows, cols)), shape=(n, n))
    return graph.maximum(graph.T).tocsr()


def eigengap(affinity: Any, max_clusters: int, gap_ratio: float = 0.5
             ) -> tuple[np.ndarray, int, float]:
    """Smallest ``max_clusters + 1`` eigenvalues of the normalised Laplacian of ``affinity``,
    the number of clusters (the first gap at least ``gap_ratio`` times the largest), and
    that gap."""
    if not 0.0 < gap_ratio <= 1.0:
        raise SprayInputError(f"spray: gap_ratio must lie in (0, 1], got {gap_ratio}")
    from scipy.sparse.csgraph import laplacian

    lap = laplacian(affinity.astype(np.float64), normed=True)
    n = lap.shape[0]
    m = min(max_clusters + 1, n)
    if n <= 2000:
        values = np.linalg.eigvalsh(lap.toarray())[:m]
    else:
        from scipy.sparse.linalg import eigsh

        values = np.sort(eigsh(lap, k=m, sigma=-1e-3, which="LM", return_eigenvectors=False))
    values = np.clip(values, 0.0, 2.0)
    if m < 2:
        return values, 1, 0.0
    gaps = np.diff(values)
    best = int(np.flatnonzero(gaps >= gap_ratio * gaps.max())[0])
    return values, best + 1, float(gaps[best])


def _embed(features: np.ndarray, affinity: Any, how: Embedding, seed: int) -> np.ndarray:
    n = len(features)
    if n < 4:
        return np.zeros((n, 2))
    if how == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (n - 1) / 3))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            features)
    from sklearn.manifold import spectral_embedding

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected"
        return np.asarray(spectral_embedding(affinity, n_components=2, random_state=seed))


def _cluster(affinity: Any, n_clusters: int, seed: int) -> np.ndarray:
    n = affinity.shape[0]
    if n_clusters <= 1:
        return np.zeros(n, dtype=np.int64)
    from sklearn.cluster import SpectralClustering

    model = SpectralClustering(n_clusters, affinity="precomputed", random_state=seed, n_init=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected"
        found = model.fit_predict(affinity)
    # relabel by first appearance, so that cluster ids do not depend on k-means' init
    _, first, inverse = np.unique(found, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def _scores(features: np.ndarray, affinity: Any, clusters: np.ndarray, k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    centre = features.mean(axis=0)
    spread = float(np.linalg.norm(features - centre, axis=1).mean()) or 1.0
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    distinct, conduct = np.zeros(k), np.zeros(k)
    for c in range(k):
        inside = clusters == c
        if k > 1 and inside.any() and (~inside).any():
            dist = np.linalg.norm(features - features[inside].mean(axis=0), axis=1)
            distinct[c] = float(dist[~inside].mean()) / (float(dist[inside].mean())
                                                         + 0.1 * spread)
            cut = float(affinity[inside][:, ~inside].sum())
            vol = min(float(degree[inside].sum()), float(degree[~inside].sum()))
            conduct[c] = cut / vol if vol > 0 else 0.0
    return distinct, conduct


def spray_class(heatmaps: Tensor | np.ndarray, *, label: int = 0,
                indices: np.ndarray | None = None, size: int | tuple[int, int] = 16,
                n_neighbors: int | None = None, weights: Weights = "self-tuning",
                max_clusters: int = 8, gap_ratio: float = 0.5,
                n_clusters: int | None = None, embedding: Embedding = "tsne",
                n_nearest: int = 6, seed: int = 0) -> ClassSpray:
    """SpRAy of the maps of one class (``(n, H, W)``, n ≥ 3); see the module docstring.

    Args:
        n_neighbors: k of the k-NN graph; default ``max(10, round(√n))``, at most n − 1.
        weights: ``"self-tuning"`` Gaussian edge weights or ``"connectivity"`` (0/1); see
            :func:`knn_affinity`.
        max_clusters: the largest number of clusters the eigengap may choose.
        gap_ratio: the first eigengap at least this share of the largest sets the number of
            clusters (1.0: the largest gap).
        n_clusters: skip the eigengap and use this many.
        embedding: ``"tsne"`` or ``"spectral"`` (the graph's first two nontrivial
            eigenvectors).
        n_nearest: members listed per cluster, nearest to its prototype first.
    """
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    # one BLAS/OpenMP thread: a class is a small problem, and t-SNE's threads spinning on
    # busy cores cost up to 10x (measured on a shared 2-core machine)
    with threadpool_limits(limits=1):
        return _spray_class(heatmaps, label=label, indices=indices, size=size,
                            n_neighbors=n_neighbors, weights=weights, max_clusters=max_clusters,
                            gap_ratio=gap_ratio, n_clusters=n_clusters, embedding=embedding,
                            n_nearest=n_nearest, seed=seed)


def _spray_class(heatmaps: Tensor | np.ndarray, *, label: int, indices: np.ndarray | None,
                 size: int | tuple[int, int], n_neighbors: int | None, weights: Weights,
                 max_clusters: int, gap_ratio: float, n_clusters: int | None,
                 embedding: Embedding, n_nearest: int, seed: int) -> ClassSpray:
    maps = _as_maps(heatmaps)
    n = maps.shape[0]
    if n < 3:
        raise SprayInputError(f"spray: class {label} has {n} heatmaps; SpRAy needs at least 3")
    if embedding not in ("tsne", "spectral"):
        raise SprayInputError(f"spray: embedding must be 'tsne' or 'spectral', not {embedding!r}")
    if max_clusters < 1 or (n_clusters is not None and not 1 <= n_clusters < n):
        raise SprayInputError(
            f"spray: need max_clusters >= 1 and 1 <= n_clusters < n = {n}, got "
            f"max_clusters={max_clusters}, n_clusters={n_clusters}")
    rows = np.arange(n) if indices is None else np.asarray(indices)
    features = downsample(maps, size)
    k_nn = n_neighbors if n_neighbors is not None else max(10, round(math.sqrt(n)))
    if k_nn < 1:
        raise SprayInputError(f"spray: n_neighbors must be positive, got {n_neighbors}")
    affinity = knn_affinity(features, k_nn, weights=weights)
    values, chosen, gap = eigengap(affinity, max_clusters, gap_ratio)
    k = n_clusters if n_clusters is not None else chosen
    clusters = _cluster(affinity, k, seed)
    full = maps.flatten(1)
    full = full / full.norm(dim=1, keepdim=True).clamp_min(1e-300)
    prototypes = np.stack([full[torch.as_tensor(clusters == c)].mean(dim=0).numpy()
                           for c in range(k)]).reshape(k, *maps.shape[1:])
    nearest = []
    for c in range(k):
        members = np.flatnonzero(clusters == c)
        dist = np.linalg.norm(features[members] - features[members].mean(axis=0), axis=1)
        nearest.append(rows[members[np.argsort(dist, kind="stable")[:n_nearest]]])
    distinct, conduct = _scores(features, affinity, clusters, k)
    return ClassSpray(
        label=int(label), indices=rows, clusters=clusters, eigenvalues=values, n_clusters=k,
        gap=gap, embedding=_embed(features, affinity, embedding, seed), prototypes=prototypes,
        nearest=nearest, sizes=np.bincount(clusters, minlength=k), distinctness=distinct,
        conductance=conduct, ranking=[int(c) for c in np.argsort(-distinct, kind="stable")])


def spray(heatmaps: Tensor | np.ndarray, labels: Tensor | np.ndarray | Sequence[int], *,
          min_samples: int = 10, **settings: Any) -> SprayResult:
    """SpRAy per class of ``heatmaps`` ``(N, H, W)`` (or ``(N, C, H, W)``: channels summed),
    grouped by ``labels`` ``(N,)`` (true labels, predictions or explained classes).

    Classes with fewer than ``min_samples`` maps are skipped (named in ``result.skipped``).
    ``settings`` go to :func:`spray_class` (``size``, ``n_neighbors``, ``weights``,
    ``max_clusters``, ``gap_ratio``, ``n_clusters``, ``embedding``, ``n_nearest``, ``seed``).
    """
    maps = _as_maps(heatmaps)
    labs = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64).ravel()
    if labs.shape[0] != maps.shape[0]:
        raise SprayInputError(
            f"spray: {maps.shape[0]} heatmaps but {labs.shape[0]} labels; give one per map")
    classes: dict[int, ClassSpray] = {}
    skipped: dict[int, str] = {}
    for label in np.unique(labs).tolist():
        rows = np.flatnonzero(labs == label)
        if len(rows) < max(3, min_samples):
            skipped[label] = f"{len(rows)} samples, fewer than min_samples={max(3, min_samples)}"
            continue
        classes[label] = spray_class(maps[torch.as_tensor(rows)], label=label, indices=rows,
                                     **settings)
    return SprayResult(classes, skipped, {"min_samples": min_samples, **settings})


def match_planted(result: ClassSpray, planted: np.ndarray | Sequence[int]
                  ) -> tuple[int, float, float]:
    """The cluster that best matches a known set of input rows (e.g. the tagged images).

    Best match: the cluster ``c`` with the largest Jaccard index ``|c ∩ T| / |c ∪ T|`` with
    the planted set ``T`` (restricted to the class). Returns ``(c, purity, recall)`` with
    ``purity = |c ∩ T| / |c|`` (how much of the cluster is planted) and
    ``recall = |c ∩ T| / |T|`` (how much of the planted set the cluster holds).
    """
    tagged = np.isin(result.indices, np.asarray(planted))
    if not tagged.any():
        raise SprayInputError(f"match_planted: no planted row belongs to class {result.label}")
    best, best_j, out = 0, -1.0, (0.0, 0.0)
    for c in range(result.n_clusters):
        inside = result.clusters == c
        both = float((inside & tagged).sum())
        jaccard = both / float((inside | tagged).sum())
        if jaccard > best_j:
            best, best_j = c, jaccard
            out = (both / float(inside.sum()), both / float(tagged.sum()))
    return best, out[0], out[1]
