"""The result every attribution method returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ._engine import LedgerEntry
from .targets import Target

__all__ = ["Explanation"]


@dataclass
class Explanation:
    """The result of an attribution method: the same object for every method.

    ``relevance`` has the input's shape; ``explained`` is, per sample, the output quantity
    whose relevance was propagated (the logit for a class target), so that with a
    conservative composite ``relevance.sum(dims) ≈ explained``.

    With ``K`` targets per sample (class indices of shape ``(batch, K)``, see
    :func:`relprop.explain`) ``relevance`` has shape ``(batch, K, *input.shape[1:])``,
    ``explained`` shape ``(batch, K)`` and each source ``(batch, K, ...)``; ``output`` is the
    model's output, as for one target.
    """

    relevance: Tensor
    output: Tensor
    explained: Tensor
    target: Target
    method: str
    rules: dict[str, str] = field(default_factory=dict)
    #: with ``record=True``: relevance at each module output, by module path (``#1``, ``#2``…
    #: for its repeated calls), as the module returned it, before any in-place write of the model;
    #: a layer merged with the BatchNorm after it has no output of its own and no entry
    layers: dict[str, Tensor] = field(default_factory=dict)
    conservation: list[LedgerEntry] = field(default_factory=list)
    #: for token inputs: the token strings per sample (set by :mod:`relprop.text` helpers)
    tokens: list[list[str]] | None = None
    #: relevance that reached other embedding lookups (positions, token types), per sample
    #: and position, keyed by the module path of the lookup
    sources: dict[str, Tensor] = field(default_factory=dict)

    def relevance_sum(self) -> Tensor:
        """Total input relevance per sample (per sample and target: ``(batch, K)``)."""
        leading = max(self.explained.dim(), 1)
        return self.relevance.reshape(*self.relevance.shape[:leading], -1).sum(dim=-1)
