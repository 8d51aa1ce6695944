"""What to explain: which output, turned into the relevance that starts the backward pass.

The engine starts from ``G = R / y`` at the model output ``y``. A class index ``c`` means
``R = y_c`` (the logit); :class:`LogOdds` explains ``η_c = log P(c) / (1 − P(c))`` through the
reverse log-sum-exp with the min-take-most rule (Montavon et al. 2019, §10.3.1);
:class:`Contrast` explains ``y_c − y_c'``; a float tensor of the output's shape is the output
relevance itself (regression, dense outputs).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, SupportsIndex, cast

import torch
from torch import Tensor

from .errors import InvalidInputError


class Target:
    """Base class: ``seed(output)`` gives ``(G, explained)`` with ``explained`` per sample.

    A target of ``K`` quantities per sample (class indices of shape ``(batch, K)``) answers
    :meth:`split` with ``K`` single targets; the engine then shares the forward pass and runs
    one backward pass per target over it, returning relevance of shape ``(batch, K, ...)``.
    """

    def seed(self, output: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def split(self, output: Tensor) -> list[Target] | None:
        """The ``K`` single targets this one stands for, or ``None`` for one target."""
        return None


def _columns(value: object, batch: int, what: str) -> list[Tensor] | None:
    """``value`` of shape ``(batch, K)`` or ``(1, K)`` (integers): its ``K`` columns, each of
    shape ``(batch,)``; ``None`` for anything else (one value, or one per sample)."""
    if isinstance(value, int | float) or value is None:
        return None
    index = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if index.dim() != 2:
        return None
    if index.shape[0] not in (1, batch) or index.shape[1] == 0:
        raise InvalidInputError(
            f"{what} must hold one class index per sample (shape ({batch},)) or K per sample "
            f"(shape ({batch}, K), or (1, K) for the same K of every sample); got shape "
            f"{tuple(index.shape)}")
    index = index.expand(batch, index.shape[1])
    return [index[:, k] for k in range(index.shape[1])]


def class_indices(classes: int | Tensor, output: Tensor, what: str) -> Tensor:
    """``classes`` (one class, or one per sample) as a ``(batch,)`` long tensor, checked against
    an output of shape ``(batch, classes)``; ``what`` names the argument in errors."""
    if output.dim() != 2:
        raise InvalidInputError(
            f"a class {what} needs a model output of shape (batch, classes), got "
            f"{tuple(output.shape)}; pass the output relevance as a float tensor of that "
            "shape instead"
        )
    batch, n = output.shape
    index = torch.as_tensor(classes, device=output.device)
    if index.is_floating_point() or index.dtype == torch.bool:
        raise InvalidInputError(f"{what} must hold integer class indices, got dtype {index.dtype}")
    index = index.long()
    if index.dim() == 0:
        index = index.expand(batch)
    if index.shape != (batch,):
        raise InvalidInputError(
            f"{what} must hold one class index per sample (shape ({batch},), one class per "
            f"sample) or K per sample (shape ({batch}, K), or (1, K) for the same K classes "
            f"of every sample); got shape {tuple(index.shape)}"
        )
    bad = (index < 0) | (index >= n)
    if bool(bad.any()):
        raise InvalidInputError(
            f"{what} {index[bad].tolist()} out of range: not a class of the model's {n} outputs "
            f"(0..{n - 1})"
        )
    return index


@dataclass(frozen=True)
class Logit(Target):
    """Explain the score ``y_c`` of class ``c`` (one index, or one per sample)."""

    classes: int | Tensor

    def seed(self, output: Tensor) -> tuple[Tensor, Tensor]:
        index = class_indices(self.classes, output, "target")
        grad = torch.zeros_like(output).scatter_(1, index[:, None], 1.0)
        return grad, output.gather(1, index[:, None])[:, 0]

    def split(self, output: Tensor) -> list[Target] | None:
        """Classes of shape ``(batch, K)`` (or ``(1, K)``): one :class:`Logit` per column."""
        columns = _columns(self.classes, output.shape[0] if output.dim() else 1, "target")
        return None if columns is None else [Logit(c) for c in columns]


@dataclass(frozen=True)
class Contrast(Target):
    """Explain ``y_c − y_c'``: evidence for ``c`` against ``against``."""

    classes: int | Tensor
    against: int | Tensor

    def seed(self, output: Tensor) -> tuple[Tensor, Tensor]:
        c = class_indices(self.classes, output, "target")
        other = class_indices(self.against, output, "against")
        if bool((c == other).any()):
            raise InvalidInputError("Contrast needs two different classes per sample")
        grad = torch.zeros_like(output)
        grad.scatter_(1, c[:, None], 1.0).scatter_(1, other[:, None], -1.0)
        return grad, (output.gather(1, c[:, None]) - output.gather(1, other[:, None]))[:, 0]


@dataclass(frozen=True)
class LogOdds(Target):
    """Explain ``η_c = −log sum_{c'≠c} exp(−(y_c − y_c'))`` (Montavon et al. 2019, §10.3.1).

    The reverse log-sum-exp is redistributed min-take-most:
    ``R_{c,c'} = (y_c − y_c') · softmin_{c'}(y_c − y_c')``; ``explained`` is their sum, which
    approximates ``η_c`` (exactly so when one competitor dominates).
    """

    classes: int | Tensor

    def seed(self, output: Tensor) -> tuple[Tensor, Tensor]:
        c = class_indices(self.classes, output, "target")
        if output.shape[1] < 2:
            raise InvalidInputError("LogOdds needs at least two classes")
        diff = output.gather(1, c[:, None]) - output  # y_c - y_c'
        mask = torch.zeros_like(output, dtype=torch.bool).scatter_(1, c[:, None], True)
        weights = torch.softmax((-diff).masked_fill(mask, float("-inf")), dim=1)
        grad = (-weights).scatter(1, c[:, None], 1.0)
        return grad, (diff * weights).sum(dim=1)


@dataclass(frozen=True)
class OutputRelevance(Target):
    """Start from a given relevance ``R`` of the output's shape (``G = R / y``)."""

    relevance: Tensor

    def seed(self, output: Tensor) -> tuple[Tensor, Tensor]:
        r = self.relevance.to(output.device, output.dtype)
        if r.shape != output.shape:
            raise InvalidInputError(
                f"output relevance has shape {tuple(r.shape)}, the model output "
                f"{tuple(output.shape)}"
            )
        zero = output == 0
        if bool((zero & (r != 0)).any()):
            raise InvalidInputError(
                "output relevance is non-zero where the model output is exactly 0; relevance "
                "must be carried by a non-zero output (R = y · G)"
            )
        grad = r / torch.where(zero, torch.ones_like(output), output)
        return grad, r.reshape(r.shape[0], -1).sum(dim=1)


@dataclass(frozen=True)
class TokenLogit(Target):
    """Explain a language model's logit of ``token`` at ``position`` (default: the last, i.e.
    the next-token prediction), or with ``against`` the contrast ``y_token − y_against``.

    For outputs of shape ``(batch, sequence, vocabulary)``; ``token``, ``against`` and
    ``position`` are one value or one per sample (left-padded batches: position -1 is the
    last token of every sample).
    """

    token: int | Tensor
    position: int | Tensor = -1
    against: int | Tensor | None = None

    def split(self, output: Tensor) -> list[Target] | None:
        """Several tokens per sample: ``token``, ``position`` or ``against`` of shape
        ``(batch, K)`` or ``(1, K)`` (the others one value or one per sample, broadcast):
        one :class:`TokenLogit` per column, e.g. the K generated tokens of a continuation
        (``token=ids[:, n:]``, ``position=torch.arange(n - 1, n - 1 + K)[None]``)."""
        batch = output.shape[0] if output.dim() else 1
        parts = {name: _columns(getattr(self, name), batch, name)
                 for name in ("token", "position", "against")}
        counts = {len(c) for c in parts.values() if c is not None}
        if not counts:
            return None
        if len(counts) > 1:
            raise InvalidInputError(
                f"TokenLogit: token, position and against give different numbers of targets "
                f"per sample ({sorted(counts)}); give each one value, one per sample, or the "
                "same K per sample")
        k = counts.pop()

        def column(name: str, i: int) -> Any:
            columns = parts[name]
            return getattr(self, name) if columns is None else columns[i]

        return [TokenLogit(column("token", i), column("position", i), column("against", i))
                for i in range(k)]

    def seed(self, output: Tensor) -> tuple[Tensor, Tensor]:
        if output.dim() != 3:
            raise InvalidInputError(
                f"TokenLogit needs an output of shape (batch, sequence, vocabulary), got "
                f"{tuple(output.shape)}")
        batch, length, _ = output.shape
        position = torch.as_tensor(self.position, device=output.device).long()
        if position.dim() == 0:
            position = position.expand(batch)
        if position.shape != (batch,) or bool(((position < -length)
                                                | (position >= length)).any()):
            raise InvalidInputError(
                f"position {self.position!r} must be one index per sample within the "
                f"sequence of length {length}")
        position = position % length
        rows = torch.arange(batch, device=output.device)
        at = output[rows, position]  # (batch, vocabulary)
        grad_at, explained = (Logit(self.token) if self.against is None
                              else Contrast(self.token, self.against)).seed(at)
        grad = torch.zeros_like(output)
        grad[rows, position] = grad_at
        return grad, explained


def as_target(target: object, output: Tensor) -> Target:
    """Interpret ``target`` as given to :func:`relprop.explain`.

    - a :class:`Target` is used as it is;
    - an integer class index (``int``, a numpy integer such as ``np.int64`` from ``argmax``,
      a 0-d integer tensor) explains that class for every sample; one index per sample (a
      1-D integer tensor, numpy array or list of ints) explains each sample's own class;
    - a float tensor (or numpy array) of the output's shape is the output relevance itself,
      for regression and dense outputs, including a ``(batch,)`` output of a regression head;
    - ``None`` explains each sample's top class for an output ``(batch, classes)``, and for a
      ``(batch,)`` output, which has no classes, the output itself (each sample's value: the
      seed is ``R = y``, so ``explained`` is the model's prediction).

    Booleans (``True``, a bool tensor or mask) are refused: they are not class indices.
    """
    if isinstance(target, Target):
        return target
    if target is None:
        if output.dim() == 1:
            return OutputRelevance(output)
        if output.dim() != 2:
            raise InvalidInputError(
                f"target=None explains the top class, which needs an output of shape "
                f"(batch, classes); got {tuple(output.shape)}. Pass a relprop.targets object "
                "or the output relevance as a float tensor of the output's shape"
            )
        return Logit(output.argmax(dim=1))
    if _is_bool(target):
        raise InvalidInputError(
            f"target is boolean ({_describe(target)}), not a class index: pass the class index "
            "as an int, one int per sample, or a float tensor of output relevance "
            "(e.g. mask.float() * output for a masked output)"
        )
    if isinstance(target, float):
        raise InvalidInputError(
            f"target must be an int class index, got the float {target!r}; a float target is "
            "output relevance and must be a tensor of the output's shape"
        )
    if isinstance(target, int):
        return Logit(target)
    if _is_integer_scalar(target):
        return Logit(operator.index(cast(SupportsIndex, target)))
    if not isinstance(target, Tensor):
        target = _array_like(target)
    if target.is_floating_point() and target.shape == output.shape:
        return OutputRelevance(target)
    if target.is_floating_point():
        raise InvalidInputError(
            f"a float target is output relevance and must have the output's shape "
            f"{tuple(output.shape)}; got {tuple(target.shape)} (class indices must be "
            "integers)"
        )
    return Logit(target)


def _is_bool(target: object) -> bool:
    if isinstance(target, bool):
        return True
    if isinstance(target, Tensor):
        return target.dtype == torch.bool
    dtype = getattr(target, "dtype", None)
    if dtype is not None:  # numpy bool scalars and arrays
        return getattr(dtype, "kind", None) == "b"
    if isinstance(target, (list, tuple)) and target:
        return all(isinstance(t, bool) for t in target)
    return False


def _is_integer_scalar(target: object) -> bool:
    """A numpy integer scalar (``np.int64`` from ``argmax``...) without importing numpy."""
    dtype = getattr(target, "dtype", None)
    return (dtype is not None and getattr(dtype, "kind", None) in ("i", "u")
            and getattr(target, "ndim", None) == 0 and hasattr(target, "__index__"))


def _describe(target: object) -> str:
    dtype = getattr(target, "dtype", None)
    if dtype is not None:
        return f"dtype {dtype}, shape {tuple(getattr(target, 'shape', ()))}"
    return repr(target) if not isinstance(target, (list, tuple)) else f"a list of {len(target)}"


def _array_like(target: object) -> Tensor:
    """A numpy array or a (nested) list of numbers as a tensor, or a clear refusal."""
    if isinstance(target, (list, tuple)) or hasattr(target, "__array__"):
        try:
            tensor = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InvalidInputError(
                f"target {type(target).__name__} could not be read as class indices ({error}); "
                "pass an int, one int per sample, or a tensor") from error
        if tensor.dtype == torch.bool:
            raise InvalidInputError(f"target is boolean ({_describe(target)}), not class "
                                    "indices")
        return tensor
    raise InvalidInputError(
        f"target must be an int, one int per sample (tensor, numpy array or list), a float "
        f"tensor of output relevance, or a relprop Target; got {type(target).__name__}")
