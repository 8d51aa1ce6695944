"""NEON for kernel outlier scores: one-class SVM and kernel density, explained per feature.

Kauffmann, Müller, Montavon, "Towards explaining anomalies: a deep Taylor decomposition of
one-class models", Pattern Recognition 101, 107198, 2020; Montavon et al. 2019, §10.4.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from ..explain import Explanation
from ..targets import OutputRelevance
from ._common import (
    as_batch,
    as_matrix,
    check_beta,
    check_positive,
    describe,
    estimator_array,
    min_take_most,
    sample_slices,
)

__all__ = ["AnomalyNetwork", "neuralize_ocsvm", "neuralize_kde", "explain_anomaly"]


class AnomalyNetwork(nn.Module):
    """A Gaussian-kernel outlier score rewritten as a distance layer and a soft min-pooling.

    With support points ``u_j``, positive weights ``α_j`` and kernel width ``γ``::

        h_j(x) = γ ‖x − u_j‖² − log α_j                                  (layer 1, distances)
        o(x)   = −log Σ_j exp(−h_j(x)) = −log Σ_j α_j exp(−γ ‖x − u_j‖²)  (layer 2, soft min)

    ``o`` is a soft minimum of the (scaled, shifted) squared distances to the support: large
    far from all of it. For a one-class SVM with dual coefficients ``a_j`` and offset ``ρ``
    the weights are ``α_j = a_j / ρ``, so that ``o(x) = −log(score_samples(x) / ρ)``, i.e.
    ``decision_function(x) = ρ (exp(−o(x)) − 1)``: ``o(x) > 0`` exactly for the points the SVM
    calls outliers, ``o = 0`` on its boundary. For a kernel density the weights sum to 1 and
    ``o(x) >= 0`` everywhere (see :func:`neuralize_kde`).

    Attributes:
        support: ``(M, D)`` buffer ``u``.
        log_weight: ``(M,)`` buffer ``log α``.
        gamma: the kernel width ``γ`` of ``exp(−γ ‖x − u‖²)``.
        rho: a one-class SVM's offset ``ρ`` (for :meth:`decision_function`), else ``None``.
    """

    support: Tensor
    log_weight: Tensor

    def __init__(self, support: Tensor, weights: Tensor, gamma: float,
                 rho: float | None = None) -> None:
        super().__init__()
        u = as_matrix(support, "support")
        if not isinstance(weights, Tensor):
            raise InvalidInputError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
        alpha = weights.detach().to(u.dtype).reshape(-1)
        if alpha.shape[0] != u.shape[0]:
            raise InvalidInputError(
                f"weights has {alpha.shape[0]} entries, support has {u.shape[0]} points"
            )
        if not bool(torch.isfinite(alpha).all() & (alpha > 0).all()):
            raise InvalidInputError(
                "weights must be finite and > 0 (drop the support points of weight 0), got "
                f"min {float(alpha.min()):.6g}"
            )
        self.register_buffer("support", u.clone())
        self.register_buffer("log_weight", alpha.log())
        self.gamma = check_positive(gamma, "gamma")
        self.rho = None if rho is None else check_positive(rho, "rho")

    @property
    def n_features(self) -> int:
        return int(self.support.shape[1])

    def distances(self, x: Tensor) -> Tensor:
        """Squared distances ``‖x − u_j‖²``, ``(N, M)``, summed from exact differences."""
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise InvalidInputError(
                f"x must have shape (samples, {self.n_features}), got {tuple(x.shape)}"
            )
        slices = sample_slices(len(x), self.support.numel())
        return torch.cat([(x[s, None, :] - self.support).square().sum(dim=2) for s in slices])

    def forward(self, x: Tensor) -> Tensor:
        """Outlier scores ``o(x)``, shape ``(N,)``."""
        h = self.gamma * self.distances(x) - self.log_weight
        return -torch.logsumexp(-h, dim=1)

    def decision_function(self, x: Tensor) -> Tensor:
        """``ρ (exp(−o(x)) − 1)``: the one-class SVM's ``decision_function`` (> 0: inlier)."""
        if self.rho is None:
            raise InvalidInputError(
                "this network was not built from a one-class SVM (rho is None): it has no "
                "decision function; use its outlier score network(x)"
            )
        return self.rho * torch.expm1(-self(x))

    def extra_repr(self) -> str:
        return (f"n_support={self.support.shape[0]}, n_features={self.n_features}, "
                f"gamma={self.gamma:.6g}, rho={self.rho}")


def _rbf_gamma(model: object) -> float:
    """The fitted ``γ`` of an SVM: ``_gamma`` (resolves 'scale'/'auto') or a numeric ``gamma``."""
    name = type(model).__name__
    kernel = getattr(model, "kernel", "rbf")
    if kernel != "rbf":
        raise InvalidInputError(
            f"{name} has kernel={describe(kernel)}; the NEON anomaly network needs "
            "kernel='rbf' (the Gaussian kernel exp(-gamma ||x - u||^2))"
        )
    gamma = getattr(model, "_gamma", getattr(model, "gamma", None))
    if isinstance(gamma, str) or gamma is None:
        raise InvalidInputError(f"{name} has gamma={describe(gamma)} and is not fitted")
    return check_positive(gamma, f"{name}.gamma")


def neuralize_ocsvm(model: object) -> AnomalyNetwork:
    """Build the :class:`AnomalyNetwork` of a fitted scikit-learn ``OneClassSVM(kernel="rbf")``.

    Reads ``support_vectors_`` (``u``), ``dual_coef_`` (``a``), the fitted ``γ`` and
    ``intercept_ = −ρ``, and sets ``α_j = a_j / ρ``. Then
    ``model.score_samples(x) = ρ exp(−o(x))`` and
    ``model.decision_function(x) = ρ (exp(−o(x)) − 1)``: ``o(x) > 0`` for predicted outliers.
    """
    name = type(model).__name__
    support = estimator_array(model, "support_vectors_", "OneClassSVM(kernel='rbf')")
    gamma = _rbf_gamma(model)
    alpha = estimator_array(model, "dual_coef_", "OneClassSVM(kernel='rbf')").reshape(-1)
    intercept = estimator_array(model, "intercept_", "OneClassSVM(kernel='rbf')").reshape(-1)
    if len(intercept) != 1:
        raise InvalidInputError(
            f"{name} has {len(intercept)} intercepts; a one-class model has exactly 1"
        )
    if len(alpha) != len(support):
        raise InvalidInputError(
            f"{name} has {len(alpha)} dual coefficients for {len(support)} support vectors"
        )
    rho = -float(intercept[0])
    if not rho > 0:
        raise InvalidInputError(
            f"{name} has intercept_ = {-rho:.6g} >= 0: with rho = -intercept_ <= 0 every point "
            "is an inlier and there is no outlier score to explain"
        )
    keep = alpha != 0  # a support vector of weight 0 adds nothing to the kernel sum
    return AnomalyNetwork(support[keep], alpha[keep] / rho, gamma, rho=rho)


def neuralize_kde(model: object, bandwidth: float | None = None, *,
                  weights: Tensor | None = None) -> AnomalyNetwork:
    """Build the :class:`AnomalyNetwork` of a Gaussian kernel density estimate.

    ``o(x) = −log Σ_j α_j exp(−‖x − u_j‖² / (2h²))`` with ``α_j = w_j / Σ_j' w_j'`` (uniform
    without ``weights``), i.e. ``γ = 1 / (2h²)``; the log density is
    ``log p(x) = −o(x) − (D/2) log(2π h²)``, which is scikit-learn's
    ``KernelDensity(kernel="gaussian").score_samples(x)``.

    Args:
        model: a ``(M, D)`` tensor of support points with ``bandwidth`` ``h``, or a fitted
            scikit-learn ``KernelDensity(kernel="gaussian")`` (its points, sample weights
            and ``bandwidth_``; ``bandwidth`` must then be left out).
        bandwidth: ``h > 0``, for a tensor of points.
        weights: optional ``(M,)`` positive weights of the points, for a tensor of points.
    """
    if isinstance(model, Tensor):
        if bandwidth is None:
            raise InvalidInputError("bandwidth is required with a tensor of support points")
        support, h = model, check_positive(bandwidth, "bandwidth")
        w = torch.ones(len(model), dtype=torch.float64) if weights is None else weights
    else:
        name = type(model).__name__
        if bandwidth is not None or weights is not None:
            raise InvalidInputError(
                f"bandwidth and weights are read from the fitted {name}; leave them out"
            )
        kernel = getattr(model, "kernel", None)
        if kernel != "gaussian":
            raise InvalidInputError(
                f"{name} has kernel={describe(kernel)}; the NEON anomaly network needs "
                "kernel='gaussian'"
            )
        metric = getattr(model, "metric", "euclidean")
        if metric != "euclidean":
            raise InvalidInputError(f"{name} has metric={describe(metric)}; needs 'euclidean'")
        tree, fitted_bandwidth = getattr(model, "tree_", None), getattr(model, "bandwidth_", None)
        if tree is None or fitted_bandwidth is None:
            raise InvalidInputError(f"{name} is not fitted (no tree_); call fit(X) first")
        support = estimator_array(tree, "data", "KernelDensity")
        h = check_positive(fitted_bandwidth, f"{name}.bandwidth_")
        w = (torch.ones(len(support), dtype=support.dtype)
             if getattr(tree, "sample_weight", None) is None
             else estimator_array(tree, "sample_weight", "KernelDensity"))
    if not isinstance(w, Tensor) or w.dim() != 1 or not w.is_floating_point():
        raise InvalidInputError("weights must be a 1-D floating tensor, one weight per point")
    return AnomalyNetwork(support, w / w.sum(), 1.0 / (2.0 * h * h))


def _distance_relevance(network: AnomalyNetwork, x: Tensor,
                        beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Soft min-take-most then the squared-difference split for one slice."""
    squares = (x[:, None, :] - network.support).square()         # (x_i − u_ji)², (n, M, D)
    distances = squares.sum(dim=2)
    h = network.gamma * distances - network.log_weight
    score = -torch.logsumexp(-h, dim=1)
    pooled = min_take_most(h, beta) * score[:, None]              # R_j
    # where x = u_j no feature differs: that share is split evenly over the features
    at_support = distances == 0
    ratio = pooled / distances.masked_fill(at_support, float("inf"))
    relevance = torch.einsum("nmd,nm->nd", squares, ratio)
    even = (pooled * at_support).sum(dim=1, keepdim=True) / network.n_features
    return relevance + even, pooled, score


def explain_anomaly(model: object, x: object, *, beta: float = 1.0) -> Explanation:
    """Explain the outlier score ``o(x)`` per input feature with NEON.

    Relevance is propagated through the :class:`AnomalyNetwork` (Kauffmann et al. 2020):

    * soft min-pooling, min-take-most: ``R_j = exp(−β h_j) / Σ_j' exp(−β h_j') · o(x)``;
      ``β = 1`` (default) shares ``o`` in proportion to each support point's part
      ``α_j exp(−γ ‖x − u_j‖²)`` of the kernel score, larger ``β`` favours the nearest;
    * distance layer: the squared distance is a sum over features,
      ``‖x − u_j‖² = Σ_i (x_i − u_ji)²``, so ``R_i = Σ_j (x_i − u_ji)² / ‖x − u_j‖² · R_j``
      (the constant ``−log α_j`` travels with its distance).

    ``Σ_i R_i = o(x)`` holds exactly (to rounding) for every ``β``: both steps split a
    quantity into shares that sum to one. Where ``o(x) > 0`` (the outliers of a one-class
    SVM, every point of a KDE) all ``R_i >= 0``; an SVM's inliers (``o < 0``) get
    ``R_i <= 0``.

    Args:
        model: an :class:`AnomalyNetwork`, a fitted ``OneClassSVM(kernel="rbf")`` or a fitted
            ``KernelDensity(kernel="gaussian")``; build a kernel density network from points
            and a bandwidth with :func:`neuralize_kde`.
        x: ``(N, D)`` points (tensor or NumPy array), converted to the network's dtype.
        beta: stiffness ``>= 0`` of the redistribution (``math.inf``: nearest point only).

    Returns:
        An :class:`~relprop.Explanation`: ``relevance`` ``(N, D)``, ``output`` and
        ``explained`` ``o(x)`` ``(N,)``, and ``layers["support"]`` the relevance ``R_j``
        ``(N, M)`` of the support points.
    """
    if isinstance(model, AnomalyNetwork):
        network = model
    elif hasattr(model, "bandwidth"):  # scikit-learn's KernelDensity
        network = neuralize_kde(model)
    else:
        network = neuralize_ocsvm(model)
    stiffness = check_beta(beta)
    points = as_batch(x, network.support, f"anomaly model ({network.support.shape[0]} "
                      "support points)")
    with torch.no_grad():
        parts = [_distance_relevance(network, points[s], stiffness)
                 for s in sample_slices(len(points), network.support.numel())]
    relevance, pooled, score = (torch.cat([p[i] for p in parts]) for i in range(3))
    beta_text = "inf" if math.isinf(stiffness) else f"{stiffness:.6g}"
    return Explanation(
        relevance=relevance, output=score, explained=score, target=OutputRelevance(score),
        method=f"neon_anomaly(beta={beta_text})",
        rules={"support": f"min_take_most(beta={beta_text})", "input": "squared_difference"},
        layers={"support": pooled},
    )
