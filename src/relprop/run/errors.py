"""The errors of a dataset run; each names the file or sample and what to do next."""

from __future__ import annotations

from ..errors import RelpropError


class RunError(RelpropError, ValueError):
    """Base class of the errors of ``relprop explain`` over a dataset."""


class ModelLoadError(RunError):
    """The model (``module:callable``, weights file, ``.pt2`` or Hugging Face folder) did not
    load."""


class UnsafePickleError(ModelLoadError):
    """A weights file is a pickle that would run code to load; refused without
    ``--trust-pickle``."""


class DataError(RunError):
    """The data cannot be read as given (missing, unknown format, no samples...)."""


class MixedSizesError(DataError):
    """Samples of different sizes and no ``--resize``/``--crop`` to make them equal."""


class LabelRangeError(DataError):
    """A label is not one of the model's classes."""
