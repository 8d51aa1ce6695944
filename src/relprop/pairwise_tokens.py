"""BiLRP for sentence embeddings: which token of one sentence matches which of the other.

A sentence embedder ``φ`` (a transformer, then pooling) maps token ids to a vector; BiLRP
(Eberle et al. 2020, "Building and interpreting deep similarity models") explains the
dot-product similarity ``s = Σ_m φ_m(s1) φ_m(s2)`` of two sentences as a token-token
interaction matrix

    R_ij = Σ_m R_i(φ_m; s1) · R_j(φ_m; s2)

where ``R_i(φ_m; s)`` is the LRP relevance of token ``i`` of ``s`` for embedding dimension
``m`` (:func:`relprop.pairwise.embedding_relevance` explains all dimensions, ``chunk`` of them
per batched pass). A token's relevance is that of its word embedding plus, by default, that of
its position and token-type embeddings: the network sees their sum at each position, and only
with them does the matrix conserve: with a conservative composite (``cp_lrp(epsilon=0)``) on
a model without biases, ``Σ_ij R_ij = s`` exactly. Biases (MiniLM has them) absorb some.

Cosine similarity is the dot product of L2-normalised embeddings. Let the embedder end with
:func:`l2_normalize` (:class:`MiniLMEmbedder` does by default): relprop gives ``F.normalize``
the identity rule, the norm held constant, like AttnLRP's LayerNorm. The cosine's matrix is
then the dot product's divided by ``‖φ(s1)‖ ‖φ(s2)‖``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .composites import Composite
from .errors import InvalidInputError
from .pairwise import PairwiseExplanation, embedding_relevance

__all__ = ["MiniLMEmbedder", "bilrp_tokens", "l2_normalize", "top_interactions"]


def l2_normalize(embedding: Tensor) -> Tensor:
    """``e / max(‖e‖, 1e-12)`` over the last dimension (``F.normalize``): relprop gives it the
    identity rule for normalisations, the norm held constant, as for RMSNorm."""
    return F.normalize(embedding, dim=-1)


class MiniLMEmbedder(nn.Module):
    """Sentence embedding as sentence-transformers' all-MiniLM-L6-v2 computes it: the mean of
    a transformer encoder's last hidden states over the tokens the attention mask keeps,
    L2-normalised when ``normalize``.

    ``encoder`` is any Hugging Face encoder (``BertModel``...) whose output has
    ``last_hidden_state``. ``forward`` takes token ids, or ``inputs_embeds`` (word embeddings,
    to which the encoder adds its position and token-type embeddings) for attribution methods
    that need a floating-point input.
    """

    def __init__(self, encoder: nn.Module, *, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize
        self.train(encoder.training)  # in the encoder's mode: wrapping an eval model is eval

    def forward(self, input_ids: Tensor | None, attention_mask: Tensor, *,
                inputs_embeds: Tensor | None = None) -> Tensor:
        output = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              inputs_embeds=inputs_embeds)
        hidden = output.last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return l2_normalize(pooled) if self.normalize else pooled


def _check_ids(ids: object, name: str) -> Tensor:
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point() \
            or ids.is_complex() or ids.dtype == torch.bool:
        raise InvalidInputError(
            f"{name} must be integer token ids of shape (batch, sequence), got "
            f"{getattr(ids, 'dtype', type(ids).__name__)} "
            f"{tuple(getattr(ids, 'shape', ()))}")
    return ids


def _check_mask(mask: Tensor | None, ids: Tensor, name: str) -> Tensor:
    if mask is None:
        return torch.ones_like(ids)
    if not isinstance(mask, Tensor) or mask.shape != ids.shape:
        raise InvalidInputError(f"{name} must have the shape of its ids {tuple(ids.shape)}, got "
                                f"{tuple(getattr(mask, 'shape', ()))}")
    return mask


def bilrp_tokens(model: nn.Module, ids1: Tensor, ids2: Tensor,
                 composite: Composite | None = None, *, mask1: Tensor | None = None,
                 mask2: Tensor | None = None, chunk: int = 64,
                 with_sources: bool = True) -> PairwiseExplanation:
    """Explain ``<model(ids1[n]), model(ids2[n])>`` per pair ``n`` as token interactions.

    ``relevance[n, i, j]`` is the interaction of token ``i`` of ``ids1[n]`` with token ``j``
    of ``ids2[n]``; padding (mask 0) gets exactly none.

    Args:
        model: called as ``model(ids, attention_mask=mask)``, returns ``(batch, dims)``
            embeddings, e.g. :class:`MiniLMEmbedder` (whose L2 normalisation makes the dot
            product the cosine similarity).
        ids1, ids2: integer token ids ``(pairs, length1)`` and ``(pairs, length2)``.
        composite: the LRP rules, e.g. :func:`relprop.composites.cp_lrp`; default as in
            :func:`relprop.explain` for token ids (AttnLRP).
        mask1, mask2: attention masks of ``ids1`` / ``ids2`` (1 = token, 0 = padding);
            all ones when not given.
        chunk: embedding dimensions explained per batched pass (memory vs. passes).
        with_sources: add each position's position and token-type embedding relevance to
            its token (needed for ``Σ_ij R_ij = s``); ``False``: word embeddings only.
    """
    ids1, ids2 = _check_ids(ids1, "ids1"), _check_ids(ids2, "ids2")
    if ids1.shape[0] != ids2.shape[0]:
        raise InvalidInputError(
            f"ids1 and ids2 must hold the same number of pairs, got {ids1.shape[0]} and "
            f"{ids2.shape[0]}")
    mask1, mask2 = _check_mask(mask1, ids1, "mask1"), _check_mask(mask2, ids2, "mask2")
    r1, e1 = embedding_relevance(model, ids1, composite, chunk=chunk, with_sources=with_sources,
                                 forward_kwargs={"attention_mask": mask1})
    r2, e2 = embedding_relevance(model, ids2, composite, chunk=chunk, with_sources=with_sources,
                                 forward_kwargs={"attention_mask": mask2})
    relevance = torch.einsum("nmi,nmj->nij", r1, r2)
    return PairwiseExplanation(relevance, (e1 * e2).sum(dim=1), e1, e2, "bilrp_tokens")


def top_interactions(relevance: Tensor, k: int = 5, *,
                     exclude: tuple[Tensor, Tensor] | None = None
                     ) -> list[tuple[int, int, float]]:
    """The ``k`` largest entries ``(i, j, R_ij)`` of one interaction matrix ``(L1, L2)``.

    ``exclude``: boolean masks over rows and columns to leave out ([CLS], [SEP], padding).
    """
    if relevance.dim() != 2:
        raise InvalidInputError(f"relevance must be one matrix (L1, L2), got "
                                f"{tuple(relevance.shape)}; pick a pair: relevance[n]")
    if k < 1:
        raise InvalidInputError(f"k must be >= 1, got {k}")
    values = relevance.detach().to(torch.float64).clone()
    if exclude is not None:
        rows, cols = exclude
        values[rows.bool(), :] = -torch.inf
        values[:, cols.bool()] = -torch.inf
    flat = values.flatten()
    order = flat.argsort(descending=True)[:k]
    width = values.shape[1]
    return [(int(o) // width, int(o) % width, float(flat[o])) for o in order
            if bool(torch.isfinite(flat[o]))]
