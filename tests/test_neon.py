"""Tests of relprop.neon: neuralized k-means, one-class SVM and KDE networks, their NEON rules."""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.neighbors import KernelDensity
from sklearn.svm import OneClassSVM

from relprop import Explanation, InvalidInputError, neon
from relprop.neon import _common
from relprop.targets import Logit
from tests.test_viz import read_png

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    x, _ = make_blobs(n_samples=300, centers=5, n_features=4, cluster_std=1.5, random_state=0)
    return x


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data


@pytest.fixture(scope="module")
def kmeans_fits(blobs: np.ndarray, digits: np.ndarray) -> dict[str, tuple[KMeans, np.ndarray]]:
    return {
        "blobs": (KMeans(5, n_init=3, random_state=0).fit(blobs), blobs),
        "digits": (KMeans(10, n_init=2, random_state=0).fit(digits), digits),
    }


@pytest.fixture(scope="module")
def svm_fits(blobs: np.ndarray, digits: np.ndarray) -> dict[str, tuple[OneClassSVM, np.ndarray]]:
    return {
        "blobs": (OneClassSVM(kernel="rbf", gamma=0.1, nu=0.1).fit(blobs), blobs),
        "digits": (OneClassSVM(kernel="rbf", gamma="scale", nu=0.05).fit(digits[:900]),
                   digits),
    }


def reference_scores(kmeans: KMeans, x: np.ndarray) -> np.ndarray:
    """``f_c = min_{k≠c} (d_k − d_c) / 2`` from scikit-learn's own distances."""
    d = kmeans.transform(x) ** 2
    diff = (d[:, None, :] - d[:, :, None]) / 2  # [n, c, k] = (d_k - d_c) / 2
    k = d.shape[1]
    diff[:, np.arange(k), np.arange(k)] = np.inf
    return diff.min(axis=2)


# ----------------------------------------------------------------------------- k-means network


@pytest.mark.parametrize("data", ["blobs", "digits"])
def test_kmeans_network_reproduces_predict_and_scores(kmeans_fits: dict, data: str) -> None:
    kmeans, x = kmeans_fits[data]
    network = neon.neuralize_kmeans(kmeans)
    assert network.centroids.dtype == torch.float64
    xt = torch.as_tensor(x)
    assert torch.equal(network.predict(xt), torch.as_tensor(kmeans.predict(x)).long())
    scores = network(xt)
    assert scores.shape == (len(x), kmeans.n_clusters)
    np.testing.assert_allclose(scores.numpy(), reference_scores(kmeans, x), rtol=1e-9, atol=1e-9)
    # f_c > 0 exactly for the assigned cluster
    assert torch.equal(scores > 0, torch.nn.functional.one_hot(scores.argmax(1)).bool())
    from_tensor = neon.neuralize_kmeans(torch.as_tensor(kmeans.cluster_centers_))
    assert torch.equal(from_tensor(xt), scores)


def test_kmeans_network_is_a_linear_layer_then_min(kmeans_fits: dict) -> None:
    kmeans, x = kmeans_fits["blobs"]
    network = neon.neuralize_kmeans(kmeans)
    mu = network.centroids
    c, k = 1, 3
    assert torch.equal(network.weight[c, k], mu[c] - mu[k])
    assert network.bias[c, k] == (mu[k].square().sum() - mu[c].square().sum()) / 2
    xt = torch.as_tensor(x[:20])
    h = network.discriminants(xt)
    d = torch.cdist(xt, mu).square()
    torch.testing.assert_close(h[:, c, k], (d[:, k] - d[:, c]) / 2, rtol=1e-9, atol=1e-9)
    assert torch.isposinf(h.diagonal(dim1=1, dim2=2)).all()
    assert torch.equal(network(xt), h.amin(dim=2))


# ------------------------------------------------------------------------- k-means explanation


@pytest.mark.parametrize("data", ["blobs", "digits"])
@pytest.mark.parametrize("beta", [None, 0.0, 1e-3, 0.5, math.inf])
def test_kmeans_relevance_conserves_the_score(kmeans_fits: dict, data: str,
                                              beta: float | None) -> None:
    kmeans, x = kmeans_fits[data]
    expl = neon.explain_kmeans(kmeans, x, beta=beta)
    assert isinstance(expl, Explanation) and expl.relevance.shape == x.shape
    assigned = torch.as_tensor(kmeans.predict(x)).long()
    assert isinstance(expl.target, Logit) and torch.equal(expl.target.classes, assigned)
    assert torch.equal(expl.explained, expl.output.gather(1, assigned[:, None])[:, 0])
    assert (expl.explained > 0).all()
    scale = expl.explained.abs().max()
    torch.testing.assert_close(expl.relevance_sum(), expl.explained, rtol=0, atol=1e-10 * scale)
    competitors = expl.layers["competitors"]
    torch.testing.assert_close(competitors.sum(1), expl.explained, rtol=0, atol=1e-10 * scale)
    assert (competitors.gather(1, assigned[:, None]) == 0).all()
    # the relevance the Target contract asks for: seed(output) gives back `explained`
    assert torch.equal(expl.target.seed(expl.output)[1], expl.explained)
    assert expl.method.startswith("neon_kmeans(beta=")


def test_kmeans_relevance_of_another_cluster_conserves_too(kmeans_fits: dict) -> None:
    kmeans, x = kmeans_fits["blobs"]
    expl = neon.explain_kmeans(kmeans, x, cluster=2)
    assert torch.equal(expl.explained, expl.output[:, 2])
    torch.testing.assert_close(expl.relevance_sum(), expl.explained, rtol=1e-9, atol=1e-9)
    per_sample = torch.arange(len(x)) % 5
    expl = neon.explain_kmeans(kmeans, x, cluster=per_sample)
    torch.testing.assert_close(expl.relevance_sum(), expl.explained, rtol=1e-9, atol=1e-9)


def dense_midpoint(mu: np.ndarray, x: np.ndarray, beta: float) -> np.ndarray:
    """The paper's two rules written out for one point, in plain NumPy."""
    d = ((x - mu) ** 2).sum(1)
    c = int(d.argmin())
    others = [k for k in range(len(mu)) if k != c]
    h = np.array([(d[k] - d[c]) / 2 for k in others])
    f = h.min()
    shares = np.exp(-beta * (h - f)) / np.exp(-beta * (h - f)).sum()
    relevance = np.zeros_like(x)
    for share, k in zip(shares, others):
        w, m = mu[c] - mu[k], (mu[c] + mu[k]) / 2
        z = (x - m) * w
        relevance += z / z.sum() * share * f
    return relevance


def test_kmeans_rules_match_a_dense_reimplementation(kmeans_fits: dict) -> None:
    kmeans, x = kmeans_fits["digits"]
    network = neon.neuralize_kmeans(kmeans, beta=0.01)
    expl = neon.explain_kmeans(network, x[:12])
    expected = np.stack([dense_midpoint(kmeans.cluster_centers_, p, 0.01) for p in x[:12]])
    np.testing.assert_allclose(expl.relevance.numpy(), expected, rtol=1e-8, atol=1e-8)


def test_kmeans_two_clusters_is_the_linear_function_around_the_midpoint() -> None:
    mu = torch.tensor([[0.0, 0.0, 1.0], [2.0, -1.0, 3.0]], dtype=torch.float64)
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expl = neon.explain_kmeans(mu, x)
    c = expl.target.classes  # type: ignore[attr-defined]
    w = mu[c] - mu[1 - c]
    expected = (x - (mu[0] + mu[1]) / 2) * w  # one competitor: R_i = (x_i - m_i) w_i
    torch.testing.assert_close(expl.relevance, expected, rtol=1e-12, atol=1e-12)


def test_kmeans_beta_defaults(kmeans_fits: dict) -> None:
    kmeans, x = kmeans_fits["blobs"]
    from_data = neon.neuralize_kmeans(kmeans, data=x)
    scores = from_data(torch.as_tensor(x)).amax(1)
    assert from_data.beta == pytest.approx(1.0 / float(scores.mean()))
    mu = torch.as_tensor(kmeans.cluster_centers_)
    gaps = torch.cdist(mu, mu).square().fill_diagonal_(math.inf).amin(1) / 2
    assert neon.neuralize_kmeans(kmeans).beta == pytest.approx(1.0 / float(gaps.mean()))
    assert neon.neuralize_kmeans(kmeans, data=x, beta=3.0).beta == 3.0
    expl = neon.explain_kmeans(from_data, x[:5])
    assert expl.method == f"neon_kmeans(beta={from_data.beta:.6g})"


def test_kmeans_batch_equals_per_sample(kmeans_fits: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    kmeans, x = kmeans_fits["digits"]
    network = neon.neuralize_kmeans(kmeans)
    batch = neon.explain_kmeans(network, x[:16])
    single = torch.cat([neon.explain_kmeans(network, x[i : i + 1]).relevance for i in range(16)])
    torch.testing.assert_close(batch.relevance, single, rtol=1e-12, atol=1e-10)
    monkeypatch.setattr(_common, "CHUNK_ELEMENTS", 1000)  # several slices of the batch
    torch.testing.assert_close(neon.explain_kmeans(network, x[:16]).relevance, batch.relevance,
                               rtol=1e-12, atol=1e-10)


def test_kmeans_network_in_float32_and_numpy_input(kmeans_fits: dict) -> None:
    kmeans, x = kmeans_fits["blobs"]
    network = neon.neuralize_kmeans(kmeans).to(torch.float32)
    expl = neon.explain_kmeans(network, x)  # NumPy float64 in, the network's float32 out
    assert expl.relevance.dtype == torch.float32
    assert torch.equal(expl.target.classes, torch.as_tensor(kmeans.predict(x)).long())  # type: ignore[attr-defined]
    torch.testing.assert_close(expl.relevance_sum(), expl.explained, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------- anomaly networks


@pytest.mark.parametrize("data", ["blobs", "digits"])
def test_ocsvm_network_reproduces_decision_function(svm_fits: dict, data: str) -> None:
    svm, x = svm_fits[data]
    network = neon.neuralize_ocsvm(svm)
    xt = torch.as_tensor(x)
    assert network.support.dtype == torch.float64 and network.rho == pytest.approx(svm.offset_[0])
    np.testing.assert_allclose(network.decision_function(xt).numpy(), svm.decision_function(x),
                               rtol=0, atol=1e-6)
    o = network(xt)
    np.testing.assert_allclose(network.rho * torch.exp(-o).numpy(), svm.score_samples(x),
                               rtol=1e-9)
    # o(x) > 0 exactly for the predicted outliers
    np.testing.assert_array_equal(np.where(o.numpy() > 0, -1, 1), svm.predict(x))


def test_ocsvm_network_reads_numeric_gamma(blobs: np.ndarray) -> None:
    svm = OneClassSVM(kernel="rbf", gamma=0.3, nu=0.2).fit(blobs)
    network = neon.neuralize_ocsvm(svm)
    assert network.gamma == 0.3
    np.testing.assert_allclose(network.decision_function(torch.as_tensor(blobs)).numpy(),
                               svm.decision_function(blobs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_kde_network_reproduces_score_samples(blobs: np.ndarray, weighted: bool) -> None:
    weights = np.linspace(0.5, 2.0, len(blobs)) if weighted else None
    kde = KernelDensity(kernel="gaussian", bandwidth=1.5).fit(blobs, sample_weight=weights)
    network = neon.neuralize_kde(kde)
    x = blobs[::7]  # near the data, where scikit-learn's tree sum is accurate
    log_density = -network(torch.as_tensor(x)) - x.shape[1] / 2 * math.log(2 * math.pi * 1.5**2)
    np.testing.assert_allclose(log_density.numpy(), kde.score_samples(x), rtol=1e-9)
    by_hand = neon.neuralize_kde(torch.as_tensor(blobs), 1.5,
                                 weights=None if weights is None else torch.as_tensor(weights))
    torch.testing.assert_close(by_hand(torch.as_tensor(x)), network(torch.as_tensor(x)))
    torch.testing.assert_close(neon.explain_anomaly(kde, x).explained, network(torch.as_tensor(x)))


@pytest.mark.parametrize("beta", [1.0, 0.0, 4.0, math.inf])
def test_anomaly_relevance_conserves_the_score(svm_fits: dict, beta: float) -> None:
    svm, x = svm_fits["digits"]
    expl = neon.explain_anomaly(svm, x, beta=beta)
    assert expl.relevance.shape == x.shape and expl.output.shape == (len(x),)
    # sums in another order than the score's: relative to its size, as for k-means above
    scale = max(1.0, float(expl.explained.abs().max()))
    torch.testing.assert_close(expl.relevance_sum(), expl.explained, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(expl.layers["support"].sum(1), expl.explained, rtol=0,
                               atol=1e-12 * scale)
    outliers = expl.explained > 0
    assert outliers.any() and (~outliers).any()
    assert (expl.relevance[outliers] >= 0).all() and (expl.relevance[~outliers] <= 0).all()
    assert torch.equal(expl.target.seed(expl.output)[1], expl.explained)


def dense_anomaly(u: np.ndarray, log_alpha: np.ndarray, gamma: float, x: np.ndarray,
                  beta: float) -> np.ndarray:
    """Kauffmann et al. 2020's rules written out for one point, in plain NumPy."""
    squares = (x - u) ** 2
    h = gamma * squares.sum(1) - log_alpha
    o = -np.log(np.exp(-h).sum())
    shares = np.exp(-beta * (h - h.min()))
    shares /= shares.sum()
    even = np.full_like(x, 1.0 / len(x))  # x on u_j: no feature differs, split evenly
    return sum((sq / sq.sum() if sq.sum() > 0 else even) * share * o
               for sq, share in zip(squares, shares))


def test_anomaly_rules_match_a_dense_reimplementation(svm_fits: dict) -> None:
    svm, x = svm_fits["blobs"]
    network = neon.neuralize_ocsvm(svm)
    expl = neon.explain_anomaly(network, x[:10], beta=2.0)
    u, log_alpha = network.support.numpy(), network.log_weight.numpy()
    expected = np.stack([dense_anomaly(u, log_alpha, network.gamma, p, 2.0) for p in x[:10]])
    np.testing.assert_allclose(expl.relevance.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_anomaly_one_support_point_is_the_squared_difference() -> None:
    u = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    network = neon.neuralize_kde(u, bandwidth=0.5)  # gamma = 2, alpha = 1
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]], dtype=torch.float64)
    expl = neon.explain_anomaly(network, x)
    torch.testing.assert_close(expl.relevance, 2.0 * (x - u).square())
    assert torch.equal(expl.relevance[1], torch.zeros(3, dtype=torch.float64))


def test_anomaly_point_on_a_support_point_splits_evenly() -> None:
    u = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    network = neon.AnomalyNetwork(u, torch.tensor([0.2, 0.3], dtype=torch.float64), gamma=0.1)
    expl = neon.explain_anomaly(network, u[:1])
    on_point, other = expl.layers["support"][0]
    expected = on_point / 2 + other * torch.tensor([9.0, 16.0], dtype=torch.float64) / 25
    torch.testing.assert_close(expl.relevance[0], expected)
    torch.testing.assert_close(expl.relevance_sum(), expl.explained)
    assert expl.explained[0] > 0 and (expl.relevance > 0).all()


def test_anomaly_batch_equals_per_sample(svm_fits: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    svm, x = svm_fits["digits"]
    network = neon.neuralize_ocsvm(svm)
    batch = neon.explain_anomaly(network, x[:16])
    single = torch.cat([neon.explain_anomaly(network, x[i : i + 1]).relevance for i in range(16)])
    torch.testing.assert_close(batch.relevance, single, rtol=1e-12, atol=1e-14)
    monkeypatch.setattr(_common, "CHUNK_ELEMENTS", 5000)
    torch.testing.assert_close(neon.explain_anomaly(network, x[:16]).relevance,
                               batch.relevance, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(network(torch.as_tensor(x[:16])), batch.explained)


# ---------------------------------------------------------------------------------- bad input


def test_unfitted_estimators_are_named(blobs: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match="KMeans has no cluster_centers_.*fit"):
        neon.neuralize_kmeans(KMeans(3))
    with pytest.raises(InvalidInputError, match="OneClassSVM has no support_vectors_.*fit"):
        neon.neuralize_ocsvm(OneClassSVM())
    with pytest.raises(InvalidInputError, match="KernelDensity is not fitted"):
        neon.neuralize_kde(KernelDensity())
    with pytest.raises(InvalidInputError, match="OneClassSVM has no cluster_centers_"):
        neon.explain_kmeans(OneClassSVM().fit(blobs), blobs)


def test_kernels_other_than_rbf_are_named(blobs: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match="OneClassSVM has kernel='poly'.*'rbf'"):
        neon.neuralize_ocsvm(OneClassSVM(kernel="poly").fit(blobs))
    with pytest.raises(InvalidInputError, match="KernelDensity has kernel='tophat'"):
        neon.neuralize_kde(KernelDensity(kernel="tophat").fit(blobs))


def test_feature_count_mismatch_names_both(kmeans_fits: dict, svm_fits: dict) -> None:
    kmeans, _ = kmeans_fits["blobs"]
    with pytest.raises(InvalidInputError, match="x has 3 features.*fitted on 4"):
        neon.explain_kmeans(kmeans, np.zeros((2, 3)))
    svm, _ = svm_fits["digits"]
    with pytest.raises(InvalidInputError, match="x has 4 features.*fitted on 64"):
        neon.explain_anomaly(svm, torch.zeros(2, 4))


@pytest.mark.parametrize("x, message", [
    (torch.zeros(0, 4), "empty"),
    (torch.zeros(4), r"shape \(samples, features\)"),
    (torch.full((1, 4), math.nan), "NaN"),
    (torch.zeros(1, 4, dtype=torch.bool), "real numbers"),
    ([[0.0] * 4], "torch.Tensor or an array"),
])
def test_bad_batches(kmeans_fits: dict, x: object, message: str) -> None:
    kmeans, _ = kmeans_fits["blobs"]
    with pytest.raises(InvalidInputError, match=message):
        neon.explain_kmeans(kmeans, x)
    with pytest.raises(InvalidInputError, match=message):
        neon.explain_anomaly(neon.neuralize_kde(torch.zeros(2, 4), 1.0), x)


def test_bad_parameters(kmeans_fits: dict) -> None:
    kmeans, x = kmeans_fits["blobs"]
    with pytest.raises(InvalidInputError, match="beta must be >= 0"):
        neon.explain_kmeans(kmeans, x, beta=-1.0)
    with pytest.raises(InvalidInputError, match="beta must be a number"):
        neon.explain_anomaly(neon.neuralize_kde(torch.zeros(2, 4), 1.0), x, beta="1")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"cluster \[7\] out of range.*5 clusters"):
        neon.explain_kmeans(kmeans, x, cluster=7)
    with pytest.raises(InvalidInputError, match="at least 2 clusters"):
        neon.neuralize_kmeans(torch.zeros(1, 4))
    with pytest.raises(InvalidInputError, match="centroids must have shape"):
        neon.neuralize_kmeans(torch.zeros(0, 4))
    with pytest.raises(InvalidInputError, match="bandwidth is required"):
        neon.neuralize_kde(torch.zeros(2, 4))
    with pytest.raises(InvalidInputError, match="bandwidth must be finite and > 0"):
        neon.neuralize_kde(torch.zeros(2, 4), -1.0)
    with pytest.raises(InvalidInputError, match="weights must be finite and > 0"):
        neon.neuralize_kde(torch.zeros(2, 4), 1.0, weights=torch.tensor([1.0, -1.0]))
    with pytest.raises(InvalidInputError, match="not built from a one-class SVM"):
        neon.neuralize_kde(torch.zeros(2, 4), 1.0).decision_function(torch.zeros(1, 4))


# ------------------------------------------------------------------------- packaging, examples


def test_neon_imports_nothing_but_torch() -> None:
    for path in (ROOT / "src" / "relprop" / "neon").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert all(n.split(".")[0] in {"torch", "__future__", "math", "numbers", "typing"}
                       for n in names), (path.name, names)


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, expected", [
    ("neon_kmeans", "assigns like KMeans.predict: 1797/1797"),
    ("neon_anomaly", "network vs decision_function"),
])
def test_examples_run(name: str, expected: str, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    assert load_example(name).main(["--out", str(tmp_path)]) == 0
    assert expected in capsys.readouterr().out
    image = read_png(tmp_path / f"{name}.png")
    assert image.shape[2] == 3 and image.shape[0] > 100 and image.shape[1] > 300
