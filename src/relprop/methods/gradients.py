"""Gradient-based attributions: sensitivity, gradient × input and SmoothGrad."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..explain import Explanation
from ._bound import bound_method
from ._common import (
    TargetLike,
    check_call,
    clean_gradient,
    clean_pass,
    copies,
    cpu_generator,
    non_negative_float,
    one_of,
    per_sample,
    positive_int,
    score_gradient,
)

GRADIENT_MODES = ("raw", "abs", "square")


@bound_method
def gradient(model: nn.Module, x: Tensor, target: TargetLike = None, *,
             mode: str = "raw") -> Explanation:
    """Sensitivity analysis: ``R_i = ∂f(x)/∂x_i``, or its absolute value or square.

    Simonyan, Vedaldi & Zisserman (2014), "Deep Inside Convolutional Networks: Visualising
    Image Classification Models and Saliency Maps". ``f`` is the explained output (the target
    logit for a class index; see :mod:`relprop.targets`).

    Args:
        mode: ``"raw"`` (signed gradient), ``"abs"`` (``|∂f/∂x_i|``, the saliency map of the
            paper before the maximum over channels) or ``"square"`` (``(∂f/∂x_i)²``).
    """
    check_call(model, x)
    one_of(mode, "mode", GRADIENT_MODES)
    grad, reference = clean_gradient(model, x, target)
    if mode == "abs":
        grad = grad.abs()
    elif mode == "square":
        grad = grad.square()
    return reference.explanation(grad, f"gradient(mode={mode!r})")


@bound_method
def gradient_x_input(model: nn.Module, x: Tensor, target: TargetLike = None) -> Explanation:
    """Gradient × input: ``R_i = x_i · ∂f(x)/∂x_i``.

    Shrikumar, Greenside, Shcherbina & Kundaje (2016), "Not Just a Black Box: Learning
    Important Features Through Propagating Activation Differences". On a ReLU network it
    equals LRP-0 in every layer (``relprop.composites.uniform(relprop.rules.Zero())``).
    """
    check_call(model, x)
    grad, reference = clean_gradient(model, x, target)
    return reference.explanation(x.detach() * grad, "gradient_x_input")


@bound_method
def smoothgrad(model: nn.Module, x: Tensor, target: TargetLike = None, *, samples: int = 16,
               noise: float = 0.15, seed: int = 0, batch_size: int = 64) -> Explanation:
    """SmoothGrad: ``R_i = (1/n) Σ_k ∂f(x + ε_k)/∂x_i`` with ``ε_k ~ N(0, σ²)``.

    Smilkov, Thorat, Kim, Viégas & Wattenberg (2017), "SmoothGrad: removing noise by adding
    noise". ``σ = noise · (max(x) − min(x))`` per sample, as in the paper.

    The noise draws depend on ``seed`` only: every sample of the batch gets the same standard
    normal draws (scaled by its own ``σ``), made on the CPU, so a sample's result does not
    depend on the rest of its batch, on ``batch_size``, or on the device.

    Args:
        samples: number of noisy copies ``n`` per sample.
        noise: noise level relative to each sample's value range ``max − min``.
        seed: seed of the noise draws.
        batch_size: noisy copies per forward pass; lower it if memory runs out.
    """
    check_call(model, x)
    samples = positive_int(samples, "samples")
    noise = non_negative_float(noise, "noise")
    batch_size = positive_int(batch_size, "batch_size")
    reference = clean_pass(model, x, target)
    x = x.detach()
    flat = x.reshape(x.shape[0], -1)
    sigma = noise * (flat.amax(dim=1) - flat.amin(dim=1))
    draws = torch.randn((samples, *x.shape[1:]), generator=cpu_generator(seed),
                        dtype=x.dtype).to(x.device)
    total = torch.zeros_like(x)
    for sample, k in copies(x.shape[0], samples, batch_size, x.device):
        points = x[sample] + per_sample(sigma[sample], x.dim()) * draws[k]
        total.index_add_(0, sample, score_gradient(model, points, reference.seed[sample]))
    return reference.explanation(total / samples,
                                 f"smoothgrad(samples={samples}, noise={noise}, seed={seed})")
