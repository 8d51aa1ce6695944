"""Token deletion curves for transformers on token ids: MoRF/LeRF, AOPC and ABPC.

A method's scores rank the deletable tokens of each sentence (not [CLS], [SEP] or padding);
they are deleted one at a time, most relevant first (MoRF) or least relevant first (LeRF),
and the explained logit is recorded after each step. Deleting takes the token out of the
attention mask (``"remove"``) or replaces it by [MASK] (``"mask_token"``). Per sentence with
``K`` deletable tokens and scores ``f_0 … f_K``: ``AOPC = mean_k (f_0 − f_k)`` over the
MoRF curve (Samek et al. 2017) and ``ABPC = mean_k (f_k^LeRF − f_k^MoRF)`` (Schulz et al.
2020), ``k = 0 … K``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from relprop.errors import InvalidInputError

__all__ = ["DELETIONS", "Batch", "encode", "deletion_curves", "aopc", "abpc"]

#: the ways of deleting a token
DELETIONS = ("remove", "mask_token")


@dataclass(frozen=True)
class Batch:
    """Tokenised sentences: ids and attention mask ``(N, T)``, which tokens may be deleted
    (not [CLS]/[SEP]/padding), the tokens, and the [MASK] id."""

    ids: Tensor
    mask: Tensor
    deletable: Tensor
    tokens: list[list[str]]
    mask_token_id: int

    def __len__(self) -> int:
        return self.ids.shape[0]

    def subset(self, rows: Tensor) -> Batch:
        """The sentences at ``rows``, cut to their longest length."""
        width = int(self.mask[rows].sum(dim=1).max())
        return Batch(self.ids[rows, :width], self.mask[rows, :width],
                     self.deletable[rows, :width], [self.tokens[int(r)] for r in rows],
                     self.mask_token_id)


def encode(tokenizer: Any, texts: list[str]) -> Batch:
    """Tokenise ``texts`` (padded to the longest) into a :class:`Batch`."""
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    special = torch.isin(ids, torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id]))
    tokens = [tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]
    return Batch(ids, mask, (mask != 0) & ~special, tokens, int(tokenizer.mask_token_id))


def deletion_curves(model: nn.Module, batch: Batch, scores: Tensor, target: Tensor, *,
                    most_relevant_first: bool = True, deletion: str = "remove",
                    batch_size: int = 256) -> Tensor:
    """``(N, K_max + 1)``: the target logit after deleting the ``k`` highest (MoRF) or
    lowest (LeRF) scored deletable tokens, ``k = 0 … K_n``; NaN past a sentence's ``K_n``.
    Ties keep the token order."""
    if deletion not in DELETIONS:
        raise InvalidInputError(f"deletion must be one of {DELETIONS}, got {deletion!r}")
    if scores.shape != batch.ids.shape:
        raise InvalidInputError(f"scores must have the ids' shape {tuple(batch.ids.shape)}, "
                                f"got {tuple(scores.shape)}")
    key = scores.detach().double() if most_relevant_first else -scores.detach().double()
    key = key.masked_fill(~batch.deletable, -torch.inf)
    order = key.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    counts = batch.deletable.sum(dim=1)
    steps = torch.arange(int(counts.max()) + 1)
    deleted = (rank[None] < steps[:, None, None]) & batch.deletable[None]  # (K+1, N, T)
    valid = steps[:, None] <= counts[None]  # (K+1, N)
    ids = batch.ids.expand_as(deleted)
    mask = batch.mask.expand_as(deleted)
    if deletion == "remove":
        mask = mask * ~deleted
    else:
        ids = torch.where(deleted, torch.full_like(ids, batch.mask_token_id), ids)
    rows = valid.nonzero()
    sample = rows[:, 1]
    flat_ids, flat_mask = ids[rows[:, 0], sample], mask[rows[:, 0], sample]
    logits = []
    with torch.no_grad():
        for i in range(0, rows.shape[0], batch_size):
            out = model(flat_ids[i:i + batch_size], flat_mask[i:i + batch_size])
            logits.append(out.gather(1, target[sample[i:i + batch_size], None])[:, 0])
    curves = torch.full(valid.shape, torch.nan, dtype=torch.float64)
    curves[rows[:, 0], sample] = torch.cat(logits).double()
    return curves.T.contiguous()


def aopc(morf: Tensor) -> Tensor:
    """Per sentence: ``mean_k (f_0 − f_k)`` over its MoRF curve ``(N, K+1)``, NaN-padded."""
    return torch.nanmean(morf[:, :1] - morf, dim=1)


def abpc(morf: Tensor, lerf: Tensor) -> Tensor:
    """Per sentence: ``mean_k (f_k^LeRF − f_k^MoRF)``."""
    return torch.nanmean(lerf - morf, dim=1)
