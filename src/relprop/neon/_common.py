"""Shared pieces of the NEON networks: input checks, estimator attributes, min-take-most."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidInputError

#: Largest number of elements of one ``(samples, units, features)`` temporary; explanations
#: run over slices of the batch so that memory stays bounded (about 32 MB in float64).
CHUNK_ELEMENTS = 1 << 22


def estimator_array(model: object, attribute: str, expected: str) -> Tensor:
    """Read a fitted estimator's array attribute (``cluster_centers_``, ...) as a tensor.

    Floating arrays keep their dtype (scikit-learn fits in float64); others become float64.
    """
    value = getattr(model, attribute, None)
    if value is None:
        raise InvalidInputError(
            f"{type(model).__name__} has no {attribute}: pass a fitted {expected} "
            f"(call fit(X) first) or the arrays themselves"
        )
    if hasattr(value, "toarray"):  # scipy sparse, from an estimator fitted on sparse data
        value = value.toarray()
    tensor = _as_tensor(value)
    return tensor if tensor.is_floating_point() else tensor.to(torch.float64)


_BUFFER_DTYPES = {"d": torch.float64, "f": torch.float32, "q": torch.int64, "l": torch.int64,
                  "i": torch.int32}


def _as_tensor(value: Any) -> Tensor:
    """A tensor from an array, or from a buffer such as a Cython memoryview (KD-tree arrays),
    which ``torch.as_tensor`` would read element by element as float32."""
    if isinstance(value, Tensor) or hasattr(value, "__array__"):
        return torch.as_tensor(value)
    try:
        view = memoryview(value)
    except TypeError:
        return torch.as_tensor(value)
    dtype = _BUFFER_DTYPES.get(view.format)
    if dtype is None:
        raise InvalidInputError(f"cannot read an array of buffer format {view.format!r}")
    flat = torch.frombuffer(bytearray(view.tobytes()), dtype=dtype)
    return flat.reshape(view.shape or ())


def as_matrix(value: Tensor, name: str) -> Tensor:
    """Check a fitted ``(units, features)`` parameter: 2-D, floating, finite, non-empty."""
    if not isinstance(value, Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 2 or value.shape[0] == 0 or value.shape[1] == 0:
        raise InvalidInputError(
            f"{name} must have shape (units, features) with both > 0, got {tuple(value.shape)}"
        )
    value = value if value.is_floating_point() else value.to(torch.float64)
    if not bool(torch.isfinite(value).all()):
        raise InvalidInputError(f"{name} contains NaN or inf")
    return value.detach()


def as_batch(x: object, reference: Tensor, owner: str) -> Tensor:
    """``x`` as a ``(N, D)`` batch in the dtype and on the device of ``reference`` (D, ...).

    ``x`` may be a tensor or anything with ``__array__`` (a NumPy array).
    """
    if not isinstance(x, Tensor):
        if not hasattr(x, "__array__"):
            raise InvalidInputError(f"x must be a torch.Tensor or an array, got {type(x).__name__}")
        x = torch.as_tensor(x)
    if x.dtype == torch.bool or x.is_complex():
        raise InvalidInputError(f"x must hold real numbers, got dtype {x.dtype}")
    features = reference.shape[-1]
    if x.dim() != 2:
        raise InvalidInputError(
            f"x must be a batch of shape (samples, features), got {tuple(x.shape)}; for one "
            "sample use x.reshape(1, -1)"
        )
    if x.shape[0] == 0:
        raise InvalidInputError("x is empty (0 samples): pass at least one sample")
    if x.shape[1] != features:
        raise InvalidInputError(
            f"x has {x.shape[1]} features, but the {owner} was fitted on {features}"
        )
    x = x.detach().to(device=reference.device, dtype=reference.dtype)
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise InvalidInputError(f"x contains NaN or inf (first at index {bad})")
    return x


def check_beta(beta: object, name: str = "beta") -> float:
    """A stiffness: a real number ``>= 0``; ``math.inf`` means the hard minimum."""
    if isinstance(beta, bool) or not isinstance(beta, Real):
        raise InvalidInputError(f"{name} must be a number >= 0, got {beta!r}")
    value = float(beta)
    if math.isnan(value) or value < 0:
        raise InvalidInputError(f"{name} must be >= 0 (0: uniform, inf: hard min), got {beta!r}")
    return value


def check_positive(value: object, name: str) -> float:
    """A finite real number ``> 0`` (a bandwidth, a kernel width)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidInputError(f"{name} must be a number > 0, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise InvalidInputError(f"{name} must be finite and > 0, got {value!r}")
    return number


def min_take_most(h: Tensor, beta: float) -> Tensor:
    """Min-take-most shares ``p_k = exp(−β h_k) / Σ_k' exp(−β h_k')`` along the last dim.

    Entries ``h_k = +inf`` are not in the pool and get ``p_k = 0``. ``β = 0`` shares equally,
    ``β = inf`` gives everything to the minimum (split equally between ties). The shares sum
    to 1, so ``R_k = p_k · f`` conserves any pooled value ``f`` (Montavon et al. 2019, §10.3.1;
    Kauffmann et al. 2024).
    """
    excluded = torch.isposinf(h)
    if math.isinf(beta):
        winners = h == h.amin(dim=-1, keepdim=True)
        return winners / winners.sum(dim=-1, keepdim=True)
    logits = (-beta * h).masked_fill(excluded, float("-inf"))
    return torch.softmax(logits, dim=-1)


def sample_slices(n: int, per_sample: int) -> list[slice]:
    """Slices of a batch of ``n`` such that a slice holds ``<= CHUNK_ELEMENTS`` elements."""
    step = max(1, CHUNK_ELEMENTS // max(per_sample, 1))
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def describe(value: Any) -> str:
    """``repr`` for error messages, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
