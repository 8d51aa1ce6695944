"""NEON for k-means: the cluster assignment as a network, explained by relevance propagation.

Kauffmann, Esders, Ruff, Montavon, Samek, Müller, "From clustering to cluster explanations via
neural networks", IEEE TNNLS 35(2), 2024 (arXiv:1906.07633); Montavon et al. 2019, §10.4.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from ..explain import Explanation
from ..targets import Logit
from ._common import (
    as_batch,
    as_matrix,
    check_beta,
    estimator_array,
    min_take_most,
    sample_slices,
)

__all__ = ["KMeansNetwork", "neuralize_kmeans", "explain_kmeans"]


class KMeansNetwork(nn.Module):
    """The k-means assignment rewritten as a linear layer and a min-pooling (neuralized).

    With centroids ``μ_1 … μ_K``, for every cluster ``c`` and competitor ``k ≠ c``::

        h_ck(x) = w_ck · x + b_ck,   w_ck = μ_c − μ_k,   b_ck = (‖μ_k‖² − ‖μ_c‖²) / 2
                = (‖x − μ_k‖² − ‖x − μ_c‖²) / 2                      (layer 1, linear)
        f_c(x)  = min_{k≠c} h_ck(x)                                    (layer 2, min-pooling)

    ``f_c(x) > 0`` exactly when ``μ_c`` is the nearest centroid, so ``argmax_c f_c(x)`` is the
    k-means assignment (``KMeans.predict``) and ``f_c`` measures how far inside its cell ``x``
    lies. Kauffmann et al. use ``w = 2(μ_c − μ_k)``, ``b = ‖μ_k‖² − ‖μ_c‖²``: their scores are
    twice these, the explanations are the same up to that factor.

    Attributes:
        centroids: ``(K, D)`` buffer ``μ``.
        weight: ``(K, K, D)`` buffer ``w_ck`` (``w_cc = 0``, unused).
        bias: ``(K, K)`` buffer ``b_ck``.
        beta: the default stiffness of the min-take-most redistribution, ``1 / E[f_c]``
            (see :func:`neuralize_kmeans`).
    """

    centroids: Tensor
    weight: Tensor
    bias: Tensor

    def __init__(self, centroids: Tensor, beta: float | None = None) -> None:
        super().__init__()
        mu = as_matrix(centroids, "centroids")
        if mu.shape[0] < 2:
            raise InvalidInputError(
                f"k-means needs at least 2 clusters to explain an assignment, got {mu.shape[0]}"
            )
        squared = mu.square().sum(dim=1)
        self.register_buffer("centroids", mu.clone())
        self.register_buffer("weight", mu[:, None, :] - mu[None, :, :])
        self.register_buffer("bias", (squared[None, :] - squared[:, None]) / 2)
        if beta is None:
            # f_c at the centroid itself, min_k ‖μ_c − μ_k‖² / 2: the scale of the scores
            at_centroids = self(mu)[torch.arange(len(mu)), torch.arange(len(mu))]
            beta = 1.0 / float(at_centroids.mean())
        self.beta = check_beta(beta)

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.centroids.shape[1])

    def discriminants(self, x: Tensor) -> Tensor:
        """Layer 1: ``h[n, c, k] = w_ck · x_n + b_ck``, with ``+inf`` where ``k = c``."""
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise InvalidInputError(
                f"x must have shape (samples, {self.n_features}), got {tuple(x.shape)}"
            )
        k = self.n_clusters
        h = (x @ self.weight.reshape(k * k, -1).T).reshape(-1, k, k) + self.bias
        return h.masked_fill(torch.eye(k, dtype=torch.bool, device=h.device), float("inf"))

    def forward(self, x: Tensor) -> Tensor:
        """Cluster scores ``f_c(x)``, shape ``(N, K)``: layer 2, min-pooling over competitors."""
        return self.discriminants(x).amin(dim=2)

    def predict(self, x: Tensor) -> Tensor:
        """The assigned cluster ``argmax_c f_c(x)`` (equals ``KMeans.predict``)."""
        return self(x).argmax(dim=1)

    def extra_repr(self) -> str:
        return f"n_clusters={self.n_clusters}, n_features={self.n_features}, beta={self.beta:.6g}"


def neuralize_kmeans(model: object, *, data: object = None,
                     beta: float | None = None) -> KMeansNetwork:
    """Build the :class:`KMeansNetwork` of a fitted k-means model.

    Args:
        model: a fitted scikit-learn ``KMeans``/``MiniBatchKMeans`` (anything with
            ``cluster_centers_``), or a ``(K, D)`` tensor of centroids. Its dtype is kept
            (float64 for scikit-learn), so that the scores match to rounding.
        data: optional ``(N, D)`` points (e.g. the training set) for the paper's heuristic
            ``β = 1 / E[f_c(x)]``, the mean score of the assigned cluster over ``data``.
        beta: the stiffness of the min-take-most redistribution, overriding ``data``.
            Without either, ``E[f_c]`` is replaced by the mean score at the centroids,
            ``mean_c min_{k≠c} ‖μ_c − μ_k‖² / 2`` (a data-free scale of the scores).
    """
    if isinstance(model, KMeansNetwork):
        raise InvalidInputError("model is already a KMeansNetwork; use it directly")
    if isinstance(model, Tensor):
        centroids = model
    else:
        centroids = estimator_array(model, "cluster_centers_", "k-means model (KMeans, ...)")
    network = KMeansNetwork(centroids, beta=beta)
    if beta is None and data is not None:
        x = as_batch(data, network.centroids, f"k-means model ({network.n_clusters} clusters)")
        with torch.no_grad():
            typical = float(network(x).amax(dim=1).mean())
        if not typical > 0:
            raise InvalidInputError(
                "data lie on the cluster boundaries (mean score 0): pass beta explicitly"
            )
        network.beta = 1.0 / typical
    return network


def _clusters(cluster: int | Tensor | None, scores: Tensor) -> Tensor:
    """The cluster to explain per sample: the assigned one, or the ones given (checked)."""
    n, k = scores.shape
    if cluster is None:
        return scores.argmax(dim=1)
    if isinstance(cluster, bool) or not isinstance(cluster, (int, Tensor)):
        raise InvalidInputError(f"cluster must be an int or a tensor of ints, got {cluster!r}")
    index = torch.as_tensor(cluster, device=scores.device)
    if index.is_floating_point() or index.dtype == torch.bool:
        raise InvalidInputError(f"cluster must hold integer indices, got dtype {index.dtype}")
    index = index.long().expand(n) if index.dim() == 0 else index.long()
    if index.shape != (n,):
        raise InvalidInputError(
            f"cluster must be one index per sample, shape ({n},); got {tuple(index.shape)}"
        )
    bad = (index < 0) | (index >= k)
    if bool(bad.any()):
        raise InvalidInputError(
            f"cluster {index[bad].unique().tolist()} out of range: the model has {k} clusters "
            f"(0..{k - 1})"
        )
    return index


def _midpoint_relevance(network: KMeansNetwork, x: Tensor, c: Tensor, scores: Tensor,
                        beta: float) -> tuple[Tensor, Tensor]:
    """Min-take-most then the midpoint rule for one slice; ``(R_input, R_competitors)``."""
    rows = torch.arange(len(x), device=x.device)
    h = network.discriminants(x)[rows, c]                      # (n, K), +inf at k = c
    f = scores[rows, c]
    pooled = min_take_most(h, beta) * f[:, None]               # R_k
    mu = network.centroids
    midpoints = (mu[c][:, None, :] + mu[None, :, :]) / 2       # m_k, (n, K, D)
    contributions = (x[:, None, :] - midpoints) * network.weight[c]
    denominators = contributions.sum(dim=2)                    # = h_k up to rounding
    # x on the boundary with k (h_k = 0): only f = 0 or a non-assigned c reach it
    ratio = pooled / denominators.masked_fill(denominators == 0, float("inf"))
    return torch.einsum("nkd,nk->nd", contributions, ratio), pooled


def explain_kmeans(model: object, x: object, cluster: int | Tensor | None = None, *,
                   beta: float | None = None) -> Explanation:
    """Explain k-means cluster scores ``f_c(x)`` per input feature with NEON.

    Relevance is propagated through the :class:`KMeansNetwork` with the rules of Kauffmann
    et al. (TNNLS 2024, arXiv:1906.07633):

    * min-pooling, soft min-take-most: ``R_k = exp(−β h_k) / Σ_{k'≠c} exp(−β h_k') · f_c(x)``;
    * linear layer, midpoint rule: ``R_i = Σ_{k≠c} (x_i − m_ki) w_cki / Σ_i' (x_i' − m_ki')
      w_cki' · R_k`` with ``m_k = (μ_c + μ_k) / 2``, the midpoint between the centroids,
      which lies on the boundary ``h_k = 0``.

    Since ``(x − m_k) · w_ck = h_k(x)`` exactly and the shares of both steps sum to one,
    ``Σ_i R_i = f_c(x)`` holds exactly (to rounding), for every ``β``. ``β`` only decides
    how the score is shared among competitors: ``β → ∞`` hands it all to the nearest
    competitor (the exact min), ``β = 0`` spreads it evenly; the soft pooling is an
    approximation of the min for the redistribution only, never of the score.

    Args:
        model: a :class:`KMeansNetwork`, a fitted ``KMeans`` or a ``(K, D)`` centroid tensor.
        x: ``(N, D)`` points (tensor or NumPy array), converted to the network's dtype.
        cluster: the cluster to explain, an int or one per sample; ``None`` (default) the
            assigned one. For another cluster ``f_c < 0`` and the rule is ill-conditioned
            near its boundaries with the competitors (``h_ck → 0`` while ``f_c`` does not);
            exactly on one, that competitor's share ``R_k`` is dropped.
        beta: stiffness ``>= 0`` (``math.inf``: hard min); default ``model.beta``.

    Returns:
        An :class:`~relprop.Explanation`: ``relevance`` ``(N, D)``, ``output`` the scores
        ``(N, K)``, ``explained`` ``f_c(x)`` per sample, ``target`` ``Logit(c)``, and
        ``layers["competitors"]`` the relevance ``R_k`` ``(N, K)`` of the competitors.
    """
    network = model if isinstance(model, KMeansNetwork) else neuralize_kmeans(model)
    stiffness = network.beta if beta is None else check_beta(beta)
    points = as_batch(x, network.centroids, f"k-means model ({network.n_clusters} clusters)")
    with torch.no_grad():
        scores = network(points)
        c = _clusters(cluster, scores)
        parts = [_midpoint_relevance(network, points[s], c[s], scores[s], stiffness)
                 for s in sample_slices(len(points), network.n_clusters * network.n_features)]
    relevance = torch.cat([p[0] for p in parts])
    competitors = torch.cat([p[1] for p in parts])
    rows = torch.arange(len(points), device=points.device)
    beta_text = "inf" if math.isinf(stiffness) else f"{stiffness:.6g}"
    return Explanation(
        relevance=relevance, output=scores, explained=scores[rows, c], target=Logit(c),
        method=f"neon_kmeans(beta={beta_text})",
        rules={"competitors": f"min_take_most(beta={beta_text})", "input": "midpoint"},
        layers={"competitors": competitors},
    )
