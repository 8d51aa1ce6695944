"""SpRAy (relprop.audit.spray): its pieces against independent formulas, and known groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relprop.audit import (
    SprayInputError,
    downsample,
    eigengap,
    knn_affinity,
    match_planted,
    spray,
    spray_class,
)


def blobs(groups: list[tuple[int, int, int]], n: int, size: int = 24, seed: int = 0
          ) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` noisy maps per group, each a Gaussian bump of relevance (σ = 1.5 pixels) centred
    within a pixel of the group's ``(row, column)``; the group of each map (in group order)."""
    gen = torch.Generator().manual_seed(seed)
    maps = 0.05 * torch.randn(n * len(groups), size, size, generator=gen)
    grid = torch.arange(size, dtype=torch.float32)
    for g, (row, col, _) in enumerate(groups):
        centre = torch.tensor([row, col], dtype=torch.float32) + 2 * torch.rand(n, 2,
                                                                                generator=gen) - 1
        for i in range(n):
            bump = (-((grid[:, None] - centre[i, 0]) ** 2 + (grid[None] - centre[i, 1]) ** 2)
                    / (2 * 1.5 ** 2)).exp()
            maps[g * n + i] += bump
    return maps, np.repeat(np.arange(len(groups)), n)


def test_downsample_is_area_pooling_to_unit_norm() -> None:
    maps = torch.randn(3, 12, 12, dtype=torch.float64)
    maps[2] = 0.0
    features = downsample(maps, 4)
    blocks = maps.reshape(3, 4, 3, 4, 3).mean(dim=(2, 4)).reshape(3, 16).numpy()  # oracle
    norms = np.linalg.norm(blocks, axis=1, keepdims=True)
    np.testing.assert_allclose(features[:2], blocks[:2] / norms[:2], rtol=1e-12)
    assert np.all(features[2] == 0.0)  # an all-zero map stays zero, no NaN
    assert downsample(maps, 32).shape == (3, 144)  # never larger than the maps


def test_eigenvalues_match_the_normalised_laplacian_formula() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 5))
    connect = knn_affinity(features, 4, weights="connectivity").toarray()
    assert np.array_equal(connect, connect.T) and set(np.unique(connect)) <= {0.0, 1.0}
    assert np.all(connect.sum(axis=1) >= 4)  # each point keeps its 4 neighbours
    graph = knn_affinity(features, 4)  # self-tuning weights
    dense = graph.toarray()
    assert np.array_equal(dense, dense.T) and np.array_equal(dense > 0, connect > 0)
    d = dense.sum(axis=1)
    lap = np.eye(30) - dense / np.sqrt(np.outer(d, d))  # I − D^-1/2 A D^-1/2
    oracle = np.sort(np.linalg.eigvalsh(lap))[:6]
    values, _, _ = eigengap(graph, 5)
    np.testing.assert_allclose(values, np.clip(oracle, 0, 2), atol=1e-10)


def test_self_tuning_weights_match_their_formula() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(12, 3))
    d = np.linalg.norm(features[:, None] - features[None], axis=2)  # oracle, dense
    order = np.sort(d, axis=1)  # column 0: the point itself
    sigma = order[:, 7]
    near = np.argsort(d, axis=1, kind="stable")[:, 1:4]
    edge = np.zeros_like(d, dtype=bool)
    edge[np.repeat(np.arange(12), 3), near.ravel()] = True
    edge |= edge.T
    expected = np.where(edge, np.exp(-d ** 2 / np.outer(sigma, sigma)), 0.0)
    np.testing.assert_allclose(knn_affinity(features, 3).toarray(), expected, rtol=1e-10)
    with pytest.raises(SprayInputError, match="weights"):
        knn_affinity(features, 3, weights="gauss")  # type: ignore[arg-type]


def test_eigengap_counts_disconnected_components() -> None:
    from scipy.sparse import block_diag, csr_matrix

    clique = csr_matrix(np.ones((6, 6)) - np.eye(6))
    values, k, gap = eigengap(block_diag([clique, clique, clique]).tocsr(), 6)
    assert k == 3  # three zero eigenvalues, then the clique's 6/5
    np.testing.assert_allclose(values[:3], 0.0, atol=1e-10)
    assert gap == pytest.approx(1.2, abs=1e-9)


def test_the_first_large_gap_sets_the_number_of_clusters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import scipy.sparse.csgraph as csgraph  # eigengap reads the graph through laplacian()
    from scipy.sparse import diags

    # a Laplacian with eigenvalues 0, 0, 0.4, 0.45, 0.5, 0.55, 1.0: gaps .4 at k=2, .45 at k=6
    values = np.array([0.0, 0.0, 0.4, 0.45, 0.5, 0.55, 1.0])
    monkeypatch.setattr(csgraph, "laplacian", lambda a, normed: diags(values))
    graph = diags(np.ones(7)).tocsr()
    assert eigengap(graph, 6)[1:] == (2, pytest.approx(0.4))
    assert eigengap(graph, 6, gap_ratio=1.0)[1:] == (6, pytest.approx(0.45))
    with pytest.raises(SprayInputError, match="gap_ratio"):
        eigengap(graph, 6, gap_ratio=0.0)


@pytest.mark.parametrize("n_groups", [1, 2, 3])
def test_spray_finds_the_number_of_strategies(n_groups: int) -> None:
    where = [(4, 4, 0), (12, 12, 0), (4, 19, 0)][:n_groups]
    maps, truth = blobs(where, 20)
    result = spray_class(maps, embedding="spectral")
    assert result.n_clusters == n_groups
    for g in range(n_groups):  # each group is one cluster exactly
        assert len(set(result.clusters[truth == g].tolist())) == 1
    assert len(set(result.clusters.tolist())) == n_groups
    assert result.embedding.shape == (len(maps), 2)
    assert result.prototypes.shape == (n_groups, 24, 24)
    assert result.sizes.sum() == len(maps)


def test_the_tight_small_cluster_ranks_first() -> None:
    # 30 maps with relevance spread over a shape in changing places, 10 with all of it on
    # one corner tag: the tag cluster is the one unlike the rest
    gen = torch.Generator().manual_seed(1)
    maps = 0.05 * torch.randn(40, 24, 24, generator=gen)
    for i in range(30):
        top, left = torch.randint(4, 14, (2,), generator=gen).tolist()
        maps[i, top:top + 8, left:left + 8] += 0.5
    maps[30:, 1:4, 1:4] += 2.0
    result = spray_class(maps, embedding="spectral")
    tag_cluster, purity, recall = match_planted(result, np.arange(30, 40))
    assert (purity, recall) == (1.0, 1.0)
    assert result.ranking[0] == tag_cluster
    # with k = 10 neighbours, each of the 10 tag maps has at least one outside: 0.1 at least
    assert result.conductance[tag_cluster] < 0.2
    # the prototype of the tag cluster is the mean normalised map: its mass is at the tag
    proto = result.prototypes[tag_cluster]
    assert proto[1:4, 1:4].sum() > 0.8 * proto.clip(0).sum()
    # nearest members belong to the cluster
    assert set(result.nearest[tag_cluster].tolist()) <= set(range(30, 40))


def test_spray_groups_by_label_and_keeps_input_rows() -> None:
    maps, truth = blobs([(4, 4, 0), (12, 12, 0)], 40)
    labels = np.tile([5, 7], 40)  # interleaved classes, 20 maps of each group in each
    result = spray(maps, labels, min_samples=5, embedding="spectral", seed=3)
    assert sorted(result.classes) == [5, 7]
    for label, c in result.classes.items():
        assert np.array_equal(c.indices, np.flatnonzero(labels == label))
        assert c.n_clusters == 2
        for k in range(2):  # clusters follow the planted groups, by input row
            assert len(set(truth[c.members(k)].tolist())) == 1
    again = spray(maps, labels, min_samples=5, embedding="spectral", seed=3)
    assert all(np.array_equal(again.classes[k].clusters, result.classes[k].clusters)
               for k in result.classes)
    assert {label for label, _, _ in result.candidates()} == {5, 7}
    assert set(result.class_ranking()) == {5, 7}


def test_small_classes_are_skipped_by_name() -> None:
    maps, _ = blobs([(4, 4, 0)], 12)
    labels = np.array([0] * 10 + [1] * 2)
    result = spray(maps, labels, min_samples=5, embedding="spectral")
    assert list(result.classes) == [0] and "2 samples" in result.skipped[1]


def test_tsne_embedding_is_finite_and_seeded() -> None:
    maps, _ = blobs([(4, 4, 0), (12, 12, 0)], 10)
    a = spray_class(maps, embedding="tsne", seed=0).embedding
    b = spray_class(maps, embedding="tsne", seed=0).embedding
    assert a.shape == (20, 2) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_match_planted_definitions() -> None:
    maps, _ = blobs([(4, 4, 0), (12, 12, 0)], 10)
    result = spray_class(maps, embedding="spectral")
    # planted: 8 of group 0 and 2 of group 1 → best cluster: group 0's (Jaccard 8/10)
    planted = np.r_[0:8, 10:12]
    cluster, purity, recall = match_planted(result, planted)
    assert set(result.members(cluster).tolist()) == set(range(10))
    assert purity == pytest.approx(8 / 10) and recall == pytest.approx(8 / 10)
    with pytest.raises(SprayInputError, match="no planted row"):
        match_planted(result, [99])


@pytest.mark.parametrize(("maps", "labels", "match"), [
    (torch.zeros(5, 4), [0] * 5, "must be"),
    (torch.zeros(4, 6, 6), [0, 1, 2], "4 heatmaps but 3 labels"),
    (torch.full((4, 6, 6), float("nan")), [0] * 4, "NaN or inf"),
])
def test_bad_input_is_named(maps: torch.Tensor, labels: list[int], match: str) -> None:
    with pytest.raises(SprayInputError, match=match):
        spray(maps, labels)


def test_bad_settings_are_named() -> None:
    maps, _ = blobs([(4, 4, 0)], 10)
    with pytest.raises(SprayInputError, match="at least 3"):
        spray_class(maps[:2])
    with pytest.raises(SprayInputError, match="embedding"):
        spray_class(maps, embedding="umap")  # type: ignore[arg-type]
    with pytest.raises(SprayInputError, match="n_clusters"):
        spray_class(maps, n_clusters=10)
    assert spray_class(maps, n_clusters=2, embedding="spectral").n_clusters == 2
    # channel maps are summed over channels
    four = spray(maps[:, None].expand(-1, 3, -1, -1), [0] * 10, embedding="spectral")
    assert four.classes[0].prototypes.shape == (1, 24, 24)
