"""Tensors kept for the backward pass, protected against the model's in-place writes.

A model may write into a tensor after an op has kept it for the backward pass
(``out += identity`` on a layer output whose rule needs ``z``, ``h.relu_()`` on an activation
a sigmoid rule kept). Plain autograd refuses such a backward with a version-counter error.
relprop keeps every saved tensor in a :class:`Held` slot, indexed by storage: before an
in-place write, :meth:`SavedTensors.protect` gives the slots that share the written storage a
copy of the values they saw, so each rule still reads what its op computed. Copies are made
only when a write happens, only of the storage written.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor


class Held:
    """One saved tensor. ``stale`` marks a layer output that the slot no longer has right: it
    was overwritten by its own in-place ReLU, or let go (:meth:`drop`); the rule computes
    it again if it ever needs it."""

    __slots__ = ("tensor", "owner", "stale", "__weakref__")

    def __init__(self, tensor: Tensor, owner: object = None) -> None:
        self.tensor: Tensor | None = tensor
        self.owner = owner
        self.stale = False

    def take(self, keep: bool = False) -> Tensor:
        """The tensor, released from the slot (each backward step reads it once) unless
        ``keep`` (another backward pass over the same graph will read it again)."""
        tensor = self.tensor
        assert tensor is not None, "a saved tensor was read twice"
        if not keep:
            self.tensor = None
        return tensor

    def drop(self) -> None:
        """Let the tensor go now (its memory with it, once nothing else holds it): the op that
        kept it will most likely never run backward; if it does, it computes it again."""
        self.tensor = None
        self.stale = True


def storage_key(t: Tensor) -> int:
    """The address of ``t``'s storage (0 for tensors without a plain one)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse, meta, ... have no plain storage
        return 0


class SavedTensors:
    """The saved tensors of one forward pass, by storage (see module docstring)."""

    def __init__(self) -> None:
        self._by_storage: dict[int, list[weakref.ref[Held]]] = {}

    def hold(self, tensor: Tensor, owner: object = None, detach: bool = True) -> Held:
        """Keep ``tensor``; detached unless asked (an op's output must be, or the slot would
        keep the op's own graph node alive; an input may keep its history)."""
        held = Held(tensor.detach() if detach else tensor, owner)
        key = storage_key(tensor)
        if key:
            self._by_storage.setdefault(key, []).append(weakref.ref(held))
        return held

    def protect(self, tensor: Tensor, overwritten_by: object = None) -> None:
        """Before ``tensor``'s storage is written: every slot sharing it gets a private copy,
        except slots owned by ``overwritten_by``, which are marked stale instead."""
        key = storage_key(tensor)
        refs = self._by_storage.pop(key, None) if key else None
        for ref in refs or ():
            held = ref()
            if held is None or held.tensor is None:
                continue
            if overwritten_by is not None and held.owner is overwritten_by:
                held.stale = True
            else:
                held.tensor = held.tensor.clone()

    @contextmanager
    def hooks(self) -> Iterator[None]:
        """Route the tensors autograd saves during the block through :meth:`hold`."""
        def pack(tensor: Tensor) -> Any:
            return self.hold(tensor)

        def unpack(held: Any) -> Tensor:
            assert isinstance(held, Held) and held.tensor is not None
            return held.tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
