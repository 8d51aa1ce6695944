"""``relprop.explain``: one forward pass, one modified backward pass, one relevance map."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._calls import LedgerEntry
from ._checks import check_input as _check_input
from ._checks import check_model as _check_model
from ._checks import check_output as _check_output
from ._graph import find_unsupported
from ._intercept import Interceptor
from ._session import Session
from .composites import Composite, default
from .errors import InvalidInputError, UnsupportedOperationError, UnsupportedOperationWarning
from .targets import Target, as_target


@dataclass
class Explanation:
    """The result of an attribution method: the same object for every method.

    ``relevance`` has the input's shape; ``explained`` is, per sample, the output quantity
    whose relevance was propagated (the logit for a class target), so that with a
    conservative composite ``relevance.sum(dims) ≈ explained``.
    """

    relevance: Tensor
    output: Tensor
    explained: Tensor
    target: Target
    method: str
    rules: dict[str, str] = field(default_factory=dict)
    layers: dict[str, Tensor] = field(default_factory=dict)
    conservation: list[LedgerEntry] = field(default_factory=list)

    def relevance_sum(self) -> Tensor:
        """Total input relevance per sample."""
        return self.relevance.reshape(self.relevance.shape[0], -1).sum(dim=1)


def explain(model: nn.Module, x: Tensor, target: int | Tensor | Target | None = None,
            composite: Composite | None = None, *, record: bool = False,
            strict: bool = True) -> Explanation:
    """Explain ``model(x)`` for ``target`` with Layer-wise Relevance Propagation.

    Args:
        model: any eager ``nn.Module`` in eval mode; it is not modified.
        x: a floating-point batch (first dimension = samples).
        target: a class index, one index per sample, a float tensor of output relevance of the
            output's shape, or a :mod:`relprop.targets` object (``LogOdds``, ``Contrast``);
            ``None`` explains each sample's top class.
        composite: which rule each op gets; default :func:`relprop.composites.default`.
        record: also keep the relevance at every module output (``layers``) and the
            per-op conservation ledger (``conservation``).
        strict: raise :class:`UnsupportedOperationError` on an op with no rule that is not
            linear; with ``False`` it keeps its gradient and a warning names it.
    """
    _check_model(model)
    _check_input(x)
    composite = default() if composite is None else composite
    if not isinstance(composite, Composite):
        raise InvalidInputError(
            f"composite must be a relprop Composite, got {type(composite).__name__}"
        )
    x_leaf = x.detach().requires_grad_(True)
    session = Session(model, x_leaf, record)
    with torch.enable_grad(), session.installed(Interceptor(session)):
        output = model(x_leaf)
    _check_output(output)
    problems = find_unsupported(session, output.grad_fn)
    if problems:
        message = ("ops with no LRP rule that are not linear (their relevance would be wrong): "
                   + "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more"
                                                if len(problems) > 8 else ""))
        if strict:
            raise UnsupportedOperationError(message + ". Pass strict=False to keep their "
                                            "gradient instead.")
        warnings.warn(message, UnsupportedOperationWarning, stacklevel=2)
    session.forget_forward()  # the checks are done: let the graph own what it needs
    composite.assign(session.calls)
    detached = output.detach()
    resolved = as_target(target, detached)
    seed, explained = resolved.seed(detached)
    (grad,) = torch.autograd.grad(output, x_leaf, seed, allow_unused=True)
    relevance = torch.zeros_like(x_leaf) if grad is None else x_leaf.detach() * grad
    if session.deposit is not None:
        relevance = relevance + session.deposit
    return Explanation(
        relevance=relevance.detach(), output=detached, explained=explained.detach(),
        target=resolved, method=f"lrp:{composite.name}",
        rules={call.name: repr(call.rule) for call in session.calls},
        layers=session.layers, conservation=session.ledger,
    )
