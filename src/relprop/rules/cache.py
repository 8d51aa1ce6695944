"""Modified weights ``rho(W)`` kept across explanations.

Explaining a dataset batch after batch applies the same rules to the same parameters: the
positive parts ``W⁺``, ``W⁻``, the weights merged with a BatchNorm, ``W + γW⁺``, ``W²`` are
computed on the first call and reused after. An entry is keyed on

* what was computed (the op kind, the transform and its parameters),
* the identity of every tensor it was made from (the parameter, and for merged weights the
  BatchNorm's running statistics and affine parameters), held by weak reference, and
* each one's version counter (``t._version``, bumped by every in-place write: an optimizer
  step, ``load_state_dict``, ``p.data.mul_``), data pointer, dtype, device and geometry,

so a training step invalidates it, a parameter that dies takes its entries with it (no leak)
and the model is never touched. The transforms made from one set of sources share one record,
checked once per op and backward step (:func:`kept_for`); a new version of a source replaces
the record, and the stale transforms go with it. Only weights that are ``nn.Parameter`` s are
cached (a weight computed in the forward pass is a new tensor every call). The cache is shared
by threads (a lock guards it); :func:`clear` empties it and :func:`disabled` turns it off for
a block.

What it keeps is memory held between calls, about one copy of the weights per transform a
composite uses (ResNet-50, 97 MB of weights, keeps 180 MB with ``epsilon_plus_flat``, 150 MB
with ``epsilon_gamma_box``). It keeps at most :func:`budget` bytes (1 GiB unless
:func:`set_budget` says otherwise); a transform that does not fit is computed afresh at each
call, as without the cache. :func:`nbytes` says how much is kept.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Kept", "budget", "cacheable", "clear", "detached_from", "disabled", "kept_for",
           "nbytes", "set_budget", "size"]

#: reentrant: a garbage collection while the lock is held may run a weak reference's callback
#: in the same thread (the callbacks themselves take no lock: one dict pop is atomic)
_LOCK = threading.RLock()
_STATE = {"enabled": True}
#: the most bytes kept (None: no limit)
_BUDGET: list[int | None] = [1 << 30]


class _Record:
    """What was made from one set of sources: weak references to the tensors, their
    descriptions, copies of the values compared by value, and the transforms (key -> kept
    tensor)."""

    __slots__ = ("refs", "described", "copies", "made")

    def __init__(self, refs: tuple[weakref.ref[Tensor], ...], described: tuple[Any, ...],
                 copies: tuple[Tensor, ...]) -> None:
        self.refs, self.described, self.copies = refs, described, copies
        self.made: dict[Hashable, Tensor] = {}

    def nbytes(self) -> int:
        return sum(map(_tensor_bytes, self.made.values())) + sum(map(_tensor_bytes, self.copies))


#: (source identities, the sources that are not tensors) -> the record made from them: a new
#: version of a source replaces the record, never adds one
_RECORDS: dict[tuple[Any, ...], _Record] = {}


#: detached parameters (the engine detaches parameters that require grad at each call):
#: id(detached) -> (it, the parameter); an entry goes with its detached tensor
_DETACHED: dict[int, tuple[weakref.ref[Tensor], weakref.ref[Tensor]]] = {}


def detached_from(detached: Tensor, parameter: Tensor) -> None:
    """Note that ``detached`` is ``parameter.detach()`` (same storage and version counter),
    so that what is made from it is kept under the parameter."""
    key = id(detached)

    def forget(_: object) -> None:
        entry = _DETACHED.get(key)
        if entry is not None and entry[0]() is None:
            _DETACHED.pop(key, None)

    with _LOCK:
        _DETACHED[key] = (weakref.ref(detached, forget), weakref.ref(parameter))


def _anchor(t: Tensor) -> Tensor:
    """The tensor whose identity lasts: a view's base (``W.t()`` of a parameter ``W``), the
    parameter a detached copy was made from."""
    t = t._base if t._base is not None else t
    entry = _DETACHED.get(id(t))
    if entry is not None and entry[0]() is t:
        parameter = entry[1]()
        if parameter is not None:
            return parameter
    return t


def _describe(t: Tensor) -> tuple[Any, ...]:
    anchor = _anchor(t)
    return (id(anchor), anchor._version, t.data_ptr(), t.dtype, t.device, tuple(t.shape),
            t.stride(), t.storage_offset())


def cacheable(weight: Tensor | None) -> bool:
    """Whether transforms of ``weight`` are worth keeping: a parameter (or a view of one)."""
    return (_STATE["enabled"] and isinstance(weight, Tensor)
            and isinstance(_anchor(weight), nn.Parameter) and not weight.is_inference())


class Kept:
    """The transforms kept for one set of sources, checked once (:func:`kept_for`): an op
    asks for several (``W⁺``, ``W⁻``, the merged weight, ``γ/2·|W|``) and checks its sources
    one time, not once per transform."""

    __slots__ = ("_slot", "_record", "_anchors", "_described", "_values")

    def __init__(self, slot: tuple[Any, ...], record: _Record | None, anchors: list[Tensor],
                 described: tuple[Any, ...], values: Sequence[Tensor]) -> None:
        self._slot, self._record = slot, record
        self._anchors, self._described, self._values = anchors, described, values

    def get(self, key: Hashable, make: Callable[[], Tensor]) -> Tensor:
        """``make()``, or what it gave before for ``key`` and these unchanged sources."""
        record = self._record
        if record is not None:
            value = record.made.get(key)
            if value is not None:
                return value
        with torch.no_grad():
            value = make().detach()
        if not _STATE["enabled"]:
            return value
        with _LOCK:
            if record is None or _RECORDS.get(self._slot) is not record:
                record = self._new_record()
            limit = _BUDGET[0]
            if limit is not None:
                others = sum(r.nbytes() for k, r in _RECORDS.items() if k != self._slot)
                if others + record.nbytes() + _tensor_bytes(value) > limit:
                    if _RECORDS.get(self._slot) is not record:  # the older version is stale
                        _RECORDS.pop(self._slot, None)
                    return value
            record.made[key] = value
            _RECORDS[self._slot] = record
        self._record = record
        return value

    def _new_record(self) -> _Record:
        with torch.no_grad():
            copies = tuple(v.detach().clone() for v in self._values)
        slot = self._slot

        def forget(_: object) -> None:
            _RECORDS.pop(slot, None)

        refs = tuple(weakref.ref(a, forget) for a in self._anchors)
        return _Record(refs, self._described, copies)


def kept_for(sources: Sequence[Tensor | float | None], values: Sequence[Tensor] = ()) -> Kept:
    """The transforms kept for ``sources`` (tensors by identity and version, other values by
    equality) and ``values`` (small tensors compared by value: a BatchNorm's running statistics
    are updated by its kernel without a version bump, so the merged ``scale`` and ``shift``
    are); none if any of them changed since they were made."""
    tensors = [s for s in sources if isinstance(s, Tensor)]
    anchors = [_anchor(t) for t in tensors]
    slot = (tuple(id(a) for a in anchors), tuple(s for s in sources if not isinstance(s, Tensor)))
    described = tuple(_describe(t) for t in tensors)
    with _LOCK:
        record = _RECORDS.get(slot)
    if record is not None and not (
            record.described == described
            and all(ref() is a for ref, a in zip(record.refs, anchors))
            and all(_same(v, kept) for v, kept in zip(values, record.copies, strict=True))):
        record = None
    return Kept(slot, record, anchors, described, values)


def _tensor_bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _same(value: Tensor, kept: Tensor) -> bool:
    return (value.shape == kept.shape and value.dtype == kept.dtype
            and value.device == kept.device and torch.equal(value, kept))


def clear() -> None:
    """Forget every kept ``rho(W)``."""
    with _LOCK:
        _RECORDS.clear()


def size() -> int:
    """How many ``rho(W)`` are kept."""
    with _LOCK:
        return sum(len(r.made) for r in _RECORDS.values())


def nbytes() -> int:
    """How many bytes the kept ``rho(W)`` (and the statistics they are checked against)
    hold."""
    with _LOCK:
        return sum(r.nbytes() for r in _RECORDS.values())


def budget() -> int | None:
    """The most bytes the cache keeps (``None``: no limit)."""
    return _BUDGET[0]


def set_budget(limit: int | None) -> None:
    """Keep at most ``limit`` bytes from now on (``None``: no limit; 0 keeps nothing); what
    is kept already stays until it is replaced or :func:`clear` is called."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"the cache budget must be a number of bytes >= 0 or None, "
                         f"got {limit!r}")
    _BUDGET[0] = limit


@contextmanager
def disabled() -> Iterator[None]:
    """Compute every ``rho(W)`` afresh inside the block (and keep none)."""
    before = _STATE["enabled"]
    _STATE["enabled"] = False
    try:
        yield
    finally:
        _STATE["enabled"] = before
