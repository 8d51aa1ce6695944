"""Integrated Gradients, with the quadrature rules that approximate its path integral."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from ..explain import Explanation
from ._bound import bound_method
from ._common import (
    TargetLike,
    check_call,
    clean_pass,
    copies,
    one_of,
    per_sample,
    positive_int,
    sample_tensor,
    score_gradient,
)

QUADRATURES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
               "gauss_legendre")


def quadrature(method: str, steps: int) -> tuple[Tensor, Tensor]:
    """Nodes ``α_k`` in ``[0, 1]`` and weights ``w_k`` with ``∫₀¹ g ≈ Σ_k w_k g(α_k)``.

    Returned in float64 on the CPU. ``riemann_trapezoid`` includes both ends and needs
    ``steps ≥ 2``; ``gauss_legendre`` is exact for polynomials of degree ``2·steps − 1``
    (nodes from the Golub–Welsch eigenvalue problem).
    """
    one_of(method, "method", QUADRATURES)
    n = positive_int(steps, "steps")
    k = torch.arange(n, dtype=torch.float64)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if method == "riemann_left":
        return k / n, weights
    if method == "riemann_right":
        return (k + 1) / n, weights
    if method == "riemann_middle":
        return (k + 0.5) / n, weights
    if method == "riemann_trapezoid":
        if n < 2:
            raise InvalidInputError("method='riemann_trapezoid' needs steps >= 2 (both ends of "
                                    f"the path), got steps={n}")
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / (n - 1)
        return k / (n - 1), weights
    # Gauss–Legendre: eigenvalues of the Jacobi matrix of the Legendre recurrence are the
    # nodes on [-1, 1]; the first components of its eigenvectors give the weights
    off = (k[1:] / torch.sqrt(4 * k[1:] ** 2 - 1))
    nodes, vectors = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    return (nodes + 1) / 2, vectors[0] ** 2


@bound_method
def integrated_gradients(model: nn.Module, x: Tensor, target: TargetLike = None, *,
                         baseline: float | Tensor = 0.0, steps: int = 32,
                         method: str = "riemann_trapezoid",
                         batch_size: int = 64) -> Explanation:
    """Integrated Gradients: ``R_i = (x_i − x̄_i) ∫₀¹ ∂f(x̄ + α(x − x̄))/∂x_i dα``.

    Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks". The
    attributions are complete, ``Σ_i R_i = f(x) − f(x̄)``, up to the quadrature error, which
    shrinks as ``steps`` grows. Note that ``explained`` is ``f(x)``, as for every method; the
    sum of the relevance approximates ``f(x) − f(x̄)``.

    Args:
        baseline: the reference input ``x̄``: a number, one sample's shape, or ``x``'s shape.
        steps: number of points on the path (gradient evaluations per sample).
        method: the quadrature: ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``,
            ``"riemann_trapezoid"`` or ``"gauss_legendre"``.
        batch_size: path points per forward pass; lower it if memory runs out.
    """
    check_call(model, x)
    alphas, weights = quadrature(method, steps)
    batch_size = positive_int(batch_size, "batch_size")
    x = x.detach()
    start = sample_tensor(baseline, "baseline", x)
    reference = clean_pass(model, x, target)
    alphas, weights = alphas.to(x.device, x.dtype), weights.to(x.device, x.dtype)
    delta = x - start
    total = torch.zeros_like(x)
    for sample, k in copies(x.shape[0], steps, batch_size, x.device):
        points = start[sample] + per_sample(alphas[k], x.dim()) * delta[sample]
        grad = score_gradient(model, points, reference.seed[sample])
        total.index_add_(0, sample, per_sample(weights[k], x.dim()) * grad)
    baseline_name = repr(float(baseline)) if not isinstance(baseline, Tensor) else "tensor"
    return reference.explanation(
        delta * total,
        f"integrated_gradients(steps={steps}, method={method!r}, baseline={baseline_name})",
    )
