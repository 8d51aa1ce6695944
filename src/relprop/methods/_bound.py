"""Attribution methods on token ids and with keyword arguments for the model.

:func:`relprop.explain` takes token ids and ``forward_kwargs`` (an attention mask...). The
other methods differentiate, perturb and copy a floating-point ``x``; :func:`bound_method`
gives them the same call by explaining the embeddings of the ids instead:

- the model is run once on the ids to find the ``nn.Embedding`` module that looks them up; its
  output ``e`` (batch, sequence, dims) is handed to the method *channels first*, as
  ``(batch, dims, sequence)``, so that occlusion slides its window over tokens and covers every
  embedding dimension, as it covers every colour channel of a pixel;
- every call of the model the method makes feeds the ids again and replaces that lookup's
  output by the method's (perturbed, copied) embeddings; keyword arguments with one row per
  sample (an attention mask) follow the copies, row by row;
- the relevance is summed over the embedding dimension, one value per token, as relprop's own
  token relevance (occlusion's is the drop of the score when the token's embedding is
  replaced by ``fill``), and positions whose ``attention_mask`` is 0 get none.

For a floating-point ``x``, ``forward_kwargs`` alone are bound the same way, without any
embedding step. Hugging Face outputs are explained through their ``logits``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from .._engine import check_model, check_token_ids, select_output
from ..errors import InvalidInputError
from ..explain import Explanation

#: per copy of a batched method, the sample it was made from (set by ``_common.copies``)
_SAMPLES: ContextVar[Tensor | None] = ContextVar("relprop_method_samples", default=None)


@contextmanager
def samples_of_copies(sample: Tensor) -> Iterator[None]:
    """While the model runs on copies, announce which sample each copy was made from."""
    token = _SAMPLES.set(sample)
    try:
        yield
    finally:
        try:
            _SAMPLES.reset(token)
        except ValueError:  # a generator closed from another context: nothing to undo here
            pass


class _Bound(nn.Module):
    """``model`` as a function of one floating-point tensor, for one batch of ids / kwargs."""

    def __init__(self, model: nn.Module, ids: Tensor | None, kwargs: dict[str, Any],
                 batch: int) -> None:
        super().__init__()
        self.training = False  # only this wrapper's own flag: the model's modes stay as they are
        self.model = model
        self.ids = ids
        self.kwargs = kwargs
        self.batch = batch
        self.lookup: nn.Embedding | None = None

    def _rows(self, n: int) -> Tensor:
        sample = _SAMPLES.get()
        if sample is None:
            if n != self.batch:
                raise InvalidInputError(
                    f"the model was called on {n} rows, not the batch of {self.batch}, "
                    "outside a batch of copies; the method cannot tell which sample's "
                    "token ids and keyword arguments belong to them")
            return torch.arange(n)
        return sample.cpu()

    def _kwargs(self, rows: Tensor) -> dict[str, Any]:
        return {k: v[rows.to(v.device)] if isinstance(v, Tensor) and v.dim() > 0
                and v.shape[0] == self.batch else v for k, v in self.kwargs.items()}

    def forward(self, x: Tensor) -> Tensor:
        rows = self._rows(x.shape[0])
        kwargs = self._kwargs(rows)
        if self.ids is None:
            return _tensor(self.model(x, **kwargs))
        ids = self.ids[rows.to(self.ids.device)]
        embeddings = x.transpose(1, 2)  # back to (batch, sequence, dims)

        def swap(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor | None:
            return embeddings.to(out.dtype) if _same(args[0], ids) else None

        assert self.lookup is not None
        handle = self.lookup.register_forward_hook(swap)
        try:
            return _tensor(self.model(ids, **kwargs))
        finally:
            handle.remove()

    def find_lookup(self) -> Tensor:
        """The embeddings of the ids, ``(batch, dims, sequence)``, from the module that looks
        them up (found by running the model once)."""
        assert self.ids is not None
        ids = self.ids
        found: list[tuple[nn.Embedding, Tensor]] = []

        def capture(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            if isinstance(module, nn.Embedding) and _same(args[0] if args else None, ids) \
                    and isinstance(out, Tensor):
                found.append((module, out.detach()))

        lookups = [m for m in self.model.modules() if isinstance(m, nn.Embedding)]
        if not lookups:
            raise InvalidInputError(
                f"x has dtype {ids.dtype}: integer x are token ids, but the model has no "
                "nn.Embedding module to look them up; x must be floating point (x.float())")
        handles = [m.register_forward_hook(capture) for m in lookups]
        try:
            with torch.no_grad():
                self.model(ids, **self.kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if not found:
            raise InvalidInputError(
                "no nn.Embedding module of the model looks up the token ids x; pass the "
                "embeddings as a floating-point x instead (e.g. a wrapper that calls the model "
                "with inputs_embeds)")
        self.lookup, embeddings = found[0]
        if embeddings.shape[:2] != ids.shape:
            raise InvalidInputError(
                f"the embedding lookup of the token ids returned shape "
                f"{tuple(embeddings.shape)}, expected (batch, sequence, dims) with (batch, "
                f"sequence) = {tuple(ids.shape)}")
        return embeddings.transpose(1, 2).contiguous()

    def finish(self, expl: Explanation) -> Explanation:
        """The method's result in terms of the caller's ``x``: one value per token for ids."""
        if self.ids is None:
            return expl
        # occlusion gives every channel its position's whole drop: one of them is the token's
        relevance = expl.relevance[:, 0] if expl.method.startswith("occlusion") \
            else expl.relevance.sum(dim=1)
        mask = self.kwargs.get("attention_mask")
        if isinstance(mask, Tensor) and mask.shape == self.ids.shape:
            relevance = relevance * (mask != 0).to(relevance.device, relevance.dtype)
        return replace(expl, relevance=relevance)


def _same(a: Any, b: Tensor) -> bool:
    """``a`` is ``b`` or a view of all of it (models reshape their ids before the lookup)."""
    return isinstance(a, Tensor) and (a is b or (
        a.numel() == b.numel() and a.data_ptr() == b.data_ptr() and a.dtype == b.dtype))


def _tensor(output: object) -> Tensor:
    selected = select_output(output)
    assert isinstance(selected, Tensor)
    return selected


def bound_method(method: Callable[..., Explanation]) -> Callable[..., Explanation]:
    """``method(model, x, target, **options)`` that also takes token ids as ``x`` and a
    ``forward_kwargs`` keyword for the model (see the module docstring)."""

    @functools.wraps(method)
    def run(model: nn.Module, x: Tensor, target: Any = None, *,
            forward_kwargs: dict[str, Any] | None = None, **options: Any) -> Explanation:
        tokens = isinstance(x, Tensor) and not x.is_floating_point() and not x.is_complex()
        if not tokens and not forward_kwargs:
            return method(model, x, target, **options)
        check_model(model)
        if forward_kwargs is not None and not isinstance(forward_kwargs, dict):
            raise InvalidInputError(
                f"forward_kwargs must be a dict, got {type(forward_kwargs).__name__}")
        if tokens:
            check_token_ids(x)
        bound = _Bound(model, x if tokens else None, dict(forward_kwargs or {}), x.shape[0])
        inputs = bound.find_lookup() if tokens else x
        return bound.finish(method(bound, inputs, target, **options))

    return run
