"""Adapters to evaluation toolkits: relprop's methods as their explanation functions.

``quantus_explain_func`` plugs any method of :data:`relprop.methods.METHODS` into Quantus
(Hedström et al. 2023), which calls ``explain_func(model=..., inputs=..., targets=...,
**explain_func_kwargs)`` with numpy batches and expects a numpy array back:

>>> import quantus, relprop                                           # doctest: +SKIP
>>> from relprop.interop import quantus_explain_func                  # doctest: +SKIP
>>> metric = quantus.PixelFlipping()                                  # doctest: +SKIP
>>> metric(model=model, x_batch=x, y_batch=y, explain_func=quantus_explain_func,
...        explain_func_kwargs={"method": "lrp",
...                             "composite": relprop.composites.epsilon_plus_flat()})
...                                                                   # doctest: +SKIP

numpy is imported only when an adapter runs; relprop itself needs torch only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .errors import InvalidInputError
from .explain import Explanation
from .methods import get_method

if TYPE_CHECKING:
    import numpy


def quantus_explain_func(model: nn.Module, inputs: Any, targets: Any, *,
                         method: str | Callable[..., Explanation] = "lrp",
                         device: str | torch.device | None = None,
                         **kwargs: Any) -> numpy.ndarray:
    """Explain ``model(inputs)`` for ``targets`` and return the relevance as a numpy array.

    Args:
        model: the ``nn.Module`` (Quantus passes ``model.get_model()``), in eval mode.
        inputs: a numpy array or tensor of shape ``(batch, ...)``, channels first; it is
            converted to the dtype of the model's parameters (float32 if it has none).
        targets: class indices: an int, or one per sample (numpy array, list or tensor);
            ``None`` explains each sample's top class.
        method: a name in :data:`relprop.methods.METHODS`, or an attribution function with
            their call shape (e.g. a ``functools.partial`` of one, to set an option whose
            name collides with this adapter's, such as integrated gradients' ``method``).
        device: where to run (Quantus passes its ``device``); default: the device of the
            model's parameters, else the CPU. The model is not moved.
        kwargs: options of the method, e.g. ``composite=`` for ``"lrp"``, ``steps=`` for
            ``"integrated_gradients"``.

    Returns:
        The relevance, of the inputs' shape, as a numpy array on the CPU.
    """
    explain = method if callable(method) else get_method(method)
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    where = torch.device(device) if device is not None else (
        parameter.device if parameter is not None else torch.device("cpu"))
    x = torch.as_tensor(inputs).to(device=where, dtype=dtype)
    expl = explain(model, x, _class_indices(targets, where), **kwargs)
    return expl.relevance.detach().cpu().numpy()


def _class_indices(targets: Any, device: torch.device) -> Tensor | int | None:
    if targets is None or isinstance(targets, int) and not isinstance(targets, bool):
        return targets
    index = torch.as_tensor(targets)
    if index.is_floating_point() or index.dtype == torch.bool:
        raise InvalidInputError(f"targets must be integer class indices, got dtype "
                                f"{index.dtype}; convert them (e.g. y.astype(int))")
    index = index.to(device=device, dtype=torch.long)
    return index if index.dim() == 0 else index.reshape(-1)  # (batch, 1) labels as well
