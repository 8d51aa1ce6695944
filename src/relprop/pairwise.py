"""Second-order explanations of similarity: BiLRP and product neurons.

BiLRP (Eberle et al. 2020, "Building and interpreting deep similarity models") explains the
dot-product similarity of two embeddings, ``s(x, x') = sum_m φ_m(x) ψ_m(x')``, as an
interaction matrix between the features of both inputs:

    R_{ii'} = sum_m R_i(φ_m; x) · R_{i'}(ψ_m; x')

where ``R(φ_m; x)`` is the LRP explanation of embedding dimension ``m``. If each first-order
explanation conserves (``sum_i R_i(φ_m; x) = φ_m(x)``), then ``sum_{ii'} R_{ii'} = s``.

For one layer of product neurons ``a_k = relu(sum_i x_i w_ik) · relu(sum_j y_j v_jk)`` with
LRP-0 this is exactly the rule of Montavon et al. (2019, §10.4):
``R_ij = sum_k x_i y_j w_ik v_jk / (sum_ij x_i y_j w_ik v_jk) · a_k``.

All embedding dimensions are explained in batched passes: the input is repeated once per
dimension (in chunks of ``chunk`` dimensions) and each copy starts from its own dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .composites import Composite
from .errors import InvalidInputError
from .explain import Explanation, explain
from .targets import Logit

Pool = Callable[[Tensor], Tensor]


@dataclass
class PairwiseExplanation:
    """``relevance[n, i, i']``: how feature ``i`` of ``x1[n]`` and ``i'`` of ``x2[n]`` interact."""

    relevance: Tensor
    similarity: Tensor
    embedding1: Tensor
    embedding2: Tensor
    method: str

    def relevance_sum(self) -> Tensor:
        """Total interaction relevance per pair (equals ``similarity`` when it conserves)."""
        return self.relevance.sum(dim=(1, 2))


def sum_channels(relevance: Tensor) -> Tensor:
    """Pool ``(B, C, *spatial)`` relevance to ``(B, prod(spatial))`` by summing channels."""
    return relevance.sum(dim=1).reshape(relevance.shape[0], -1)


def sum_last(relevance: Tensor) -> Tensor:
    """Pool ``(B, T, E)`` token relevance to ``(B, T)`` by summing the embedding dimensions."""
    return relevance.sum(dim=-1).reshape(relevance.shape[0], -1)


def _flatten(relevance: Tensor) -> Tensor:
    return relevance.reshape(relevance.shape[0], -1)


def _with_sources(expl: Explanation) -> Tensor:
    relevance = expl.relevance
    for name, source in expl.sources.items():
        if source.shape != relevance.shape:
            raise InvalidInputError(
                f"the embedding lookup {name!r} got relevance of shape {tuple(source.shape)}, "
                f"not one per token {tuple(relevance.shape)}; pass with_sources=False")
        relevance = relevance + source
    return relevance


def embedding_relevance(model: nn.Module, x: Tensor, composite: Composite | None = None,
                        *, pool: Pool | None = None, chunk: int = 64,
                        forward_kwargs: dict[str, Tensor] | None = None,
                        with_sources: bool = False) -> tuple[Tensor, Tensor]:
    """First-order LRP of every embedding dimension: ``(R, φ(x))`` with ``R`` of shape
    ``(batch, dims, features)`` (features after ``pool``; all input entries by default).

    ``x`` may be token ids (see :func:`relprop.explain`); ``forward_kwargs`` (an
    ``attention_mask``...) are per-sample tensors of the model call, repeated with ``x``;
    ``with_sources`` adds the relevance of the other embedding lookups (positions, token
    types: ``Explanation.sources``) to the token at the same position."""
    if chunk < 1:
        raise InvalidInputError(f"chunk must be >= 1, got {chunk}")
    kwargs = dict(forward_kwargs or {})
    for key, value in kwargs.items():
        if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != x.shape[0]:
            raise InvalidInputError(
                f"forward_kwargs[{key!r}] must be a tensor with x's {x.shape[0]} samples "
                f"first, got {getattr(value, 'shape', type(value).__name__)}")
    with torch.no_grad():
        embedding = model(x, **kwargs)
    if not isinstance(embedding, Tensor) or embedding.dim() != 2:
        raise InvalidInputError(
            "BiLRP needs a model that maps a batch to embeddings of shape (batch, dims); got "
            f"{getattr(embedding, 'shape', type(embedding).__name__)}"
        )
    batch, dims = embedding.shape
    pool = _flatten if pool is None else pool
    parts = []
    for start in range(0, dims, chunk):
        stop = min(start + chunk, dims)
        k = stop - start
        repeated = x.repeat_interleave(k, dim=0)  # sample-major: copies of x[0], then x[1] ...
        classes = torch.arange(start, stop, device=x.device).repeat(batch)
        repeated_kwargs = {key: v.repeat_interleave(k, dim=0) for key, v in kwargs.items()}
        expl = explain(model, repeated, target=Logit(classes), composite=composite,
                       forward_kwargs=repeated_kwargs)
        pooled = pool(_with_sources(expl) if with_sources else expl.relevance)
        parts.append(pooled.reshape(batch, k, -1))
    return torch.cat(parts, dim=1), embedding


def bilrp(model: nn.Module, x1: Tensor, x2: Tensor, composite: Composite | None = None, *,
          model2: nn.Module | None = None, pool: Pool | None = None, pool2: Pool | None = None,
          chunk: int = 64) -> PairwiseExplanation:
    """Explain ``<model(x1[n]), model2(x2[n])>`` per pair ``n`` as a feature interaction matrix.

    Args:
        model: the embedding network for ``x1`` (and for ``x2`` unless ``model2`` is given).
        x1, x2: batches of equal length; pair ``n`` is ``(x1[n], x2[n])``.
        composite: LRP rules for the embedding networks (default as in :func:`relprop.explain`).
        pool, pool2: reduce each input's relevance to features, e.g. :func:`sum_channels`
            for images or :func:`sum_last` for token embeddings; default: every input entry.
        chunk: embedding dimensions explained per pass (memory vs. number of passes).
    """
    if x1.shape[0] != x2.shape[0]:
        raise InvalidInputError(
            f"x1 and x2 must hold the same number of pairs, got {x1.shape[0]} and {x2.shape[0]}"
        )
    other = model if model2 is None else model2
    r1, e1 = embedding_relevance(model, x1, composite, pool=pool, chunk=chunk)
    r2, e2 = embedding_relevance(other, x2, composite, pool=pool2 if pool2 else pool, chunk=chunk)
    if e1.shape[1] != e2.shape[1]:
        raise InvalidInputError(
            f"the two embeddings have {e1.shape[1]} and {e2.shape[1]} dimensions; a dot "
            "product needs the same number"
        )
    relevance = torch.einsum("nmi,nmj->nij", r1, r2)
    return PairwiseExplanation(relevance, (e1 * e2).sum(dim=1), e1, e2, "bilrp")


__all__ = ["PairwiseExplanation", "bilrp", "embedding_relevance", "sum_channels", "sum_last"]
