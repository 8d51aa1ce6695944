"""What every attribution method shares: argument checks, the clean forward pass, and the
score of perturbed copies.

Every method explains the same scalar per sample as :func:`relprop.explain`: the target's seed
``G = target.seed(y)`` of the clean output ``y`` is the derivative of the explained quantity
with respect to the output, so the score of any output ``y'`` is ``⟨G, y'⟩``. For a class
index this is the logit ``y'_c``; for a :class:`~relprop.targets.Contrast` it is
``y'_c − y'_c'``; for :class:`~relprop.targets.LogOdds` it is the competitor-weighted logit
difference with the softmin weights of the clean output held fixed. Gradient methods
differentiate this score, perturbation methods evaluate it on modified copies of ``x``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._engine import check_input as _check_input
from .._engine import check_model as _check_model
from .._engine import check_output as _check_output
from ..errors import InvalidInputError
from ..explain import Explanation
from ..rules.ops import seeded_grad
from ..targets import Target, as_target
from ._bound import samples_of_copies

TargetLike = int | Tensor | Target | None


@dataclass(frozen=True)
class Reference:
    """The clean forward pass: the output, the resolved target and its seed ``G``."""

    output: Tensor
    target: Target
    seed: Tensor
    explained: Tensor

    def explanation(self, relevance: Tensor, method: str) -> Explanation:
        """Wrap ``relevance`` in the :class:`~relprop.Explanation` every method returns."""
        return Explanation(relevance=relevance.detach(), output=self.output,
                           explained=self.explained.detach(), target=self.target,
                           method=method)


def check_call(model: nn.Module, x: Tensor) -> None:
    """The checks of :func:`relprop.explain`: an eval-mode module and a finite float batch."""
    _check_model(model)
    _check_input(x)


def resolve(output: Tensor, target: TargetLike, batch: int) -> Reference:
    """The clean pass from the model's output on ``x``: resolve the target, take its seed."""
    if output.dim() == 0 or output.shape[0] != batch:
        raise InvalidInputError(
            f"the model output has shape {tuple(output.shape)}, but x has {batch} samples; "
            "the output's first dimension must be the batch"
        )
    detached = output.detach()
    resolved = as_target(target, detached)
    seed, explained = resolved.seed(detached)
    return Reference(detached, resolved, seed.detach(), explained.detach())


def differentiable(x: Tensor) -> tuple[Tensor, Tensor]:
    """A leaf to differentiate by, and the copy of it to feed the model: an in-place op of
    the model on its input then neither fails on the leaf nor overwrites the caller's ``x``."""
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        return leaf, leaf.clone()


def clean_gradient(model: nn.Module, x: Tensor, target: TargetLike) -> tuple[Tensor, Reference]:
    """``∂⟨G, f(x)⟩/∂x`` and the clean pass, from one forward and one backward pass."""
    x_leaf, fed = differentiable(x)
    with torch.enable_grad():
        output = model(fed)
    _check_output(output)
    reference = resolve(output, target, x.shape[0])
    (grad,) = seeded_grad(output, [x_leaf], reference.seed, allow_unused=True)
    return (torch.zeros_like(x) if grad is None else grad), reference


def clean_pass(model: nn.Module, x: Tensor, target: TargetLike) -> Reference:
    """The clean forward pass without a graph (for methods that only evaluate the model)."""
    with torch.no_grad():  # on a copy: without a graph, an in-place op could overwrite x
        output = model(x.detach().clone())
    check_values(output)
    return resolve(output, target, x.shape[0])


def check_values(output: object) -> None:
    """The output checks that do not need a graph: a finite tensor."""
    if not isinstance(output, Tensor):
        raise InvalidInputError(
            f"the model returned {type(output).__name__}, not a tensor; wrap it so that it "
            "returns the output to explain (e.g. the logits)"
        )
    if not bool(torch.isfinite(output).all()):
        raise InvalidInputError("the model output contains NaN or inf")


def score(output: Tensor, seed: Tensor) -> Tensor:
    """``⟨G, y⟩`` per sample."""
    return (seed * output).reshape(output.shape[0], -1).sum(dim=1)


def score_gradient(model: nn.Module, points: Tensor, seed: Tensor) -> Tensor:
    """``∂⟨G_k, f(p_k)⟩/∂p_k`` for each row ``p_k`` of a batch of perturbed copies."""
    points, fed = differentiable(points)
    with torch.enable_grad():
        output = model(fed)
    _check_output(output)
    if output.shape != seed.shape:
        raise InvalidInputError(
            f"the model output for a batch of {points.shape[0]} copies has shape "
            f"{tuple(output.shape)}, expected {tuple(seed.shape)}: each sample's output must "
            "depend on that sample only"
        )
    (grad,) = seeded_grad(output, [points], seed, allow_unused=True)
    return torch.zeros_like(points) if grad is None else grad


def copies(batch: int, per_sample: int, batch_size: int, device: torch.device
           ) -> Iterator[tuple[Tensor, Tensor]]:
    """Chunks of ``batch · per_sample`` copies: ``(sample, index within sample)`` per copy."""
    total = batch * per_sample
    for start in range(0, total, batch_size):
        k = torch.arange(start, min(start + batch_size, total), device=device)
        sample = k // per_sample
        with samples_of_copies(sample):  # for models bound to per-sample ids and arguments
            yield sample, k % per_sample


def per_sample(values: Tensor, dims: int) -> Tensor:
    """Shape ``(n,)`` values to broadcast against ``(n, ...)`` with ``dims`` dimensions."""
    return values.reshape(-1, *([1] * (dims - 1)))


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidInputError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def one_of(value: object, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(map(repr, choices))}; "
                                f"got {value!r}")
    return value


def sample_tensor(value: float | Tensor, name: str, x: Tensor) -> Tensor:
    """A number or a tensor that broadcasts to ``x``, as a tensor of ``x``'s shape."""
    if isinstance(value, bool) or not isinstance(value, int | float | Tensor):
        raise InvalidInputError(f"{name} must be a number or a tensor, got "
                                f"{type(value).__name__}")
    tensor = torch.as_tensor(value).detach().to(device=x.device, dtype=x.dtype)
    try:
        shape = torch.broadcast_shapes(tensor.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise InvalidInputError(
            f"{name} of shape {tuple(tensor.shape)} does not broadcast to x's shape "
            f"{tuple(x.shape)}; give one value, one sample's shape {tuple(x.shape[1:])}, or "
            "x's shape"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise InvalidInputError(f"{name} contains NaN or inf")
    return tensor.expand(x.shape)


def cpu_generator(seed: object) -> torch.Generator:
    """Draws made on the CPU, so that a seed gives the same noise on every device."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInputError(f"seed must be an int, got {seed!r}")
    return torch.Generator().manual_seed(seed)
