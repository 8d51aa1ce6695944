"""The named errors of :mod:`relprop.concepts`."""

from __future__ import annotations

from ..errors import InvalidInputError


class UnknownLayerError(InvalidInputError):
    """The layer name is not one the engine records for this model (the message lists them)."""


class UnitIndexError(InvalidInputError, IndexError):
    """A unit index is out of range for the layer (or a unit set is empty)."""


class LayerNotOnPathError(InvalidInputError):
    """The layer is not on the path from the input to the explained output (or, for
    :func:`relprop.concepts.composition`, the lower layer is not below the upper one)."""
