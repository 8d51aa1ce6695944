"""Explain a whole dataset and store the result: ``relprop explain`` and its Python API.

>>> from relprop.run import RunConfig, explain_dataset
>>> explain_dataset(RunConfig(model="mypkg.models:build", data="images/",
...                           out="run1/"))                      # doctest: +SKIP

Inputs (:mod:`~relprop.run.model`, :mod:`~relprop.run.data`,
:mod:`~relprop.run.preprocess`), the loop (:mod:`~relprop.run.loop`,
:mod:`~relprop.run.worker`), torchrun (:mod:`~relprop.run.dist`); what is written is read
back with :func:`relprop.store.open`.
"""

from __future__ import annotations

from .config import RunConfig
from .errors import (
    DataError,
    LabelRangeError,
    MixedSizesError,
    ModelLoadError,
    RunError,
    UnsafePickleError,
)
from .loop import RunSummary, explain_dataset
from .preprocess import Preprocess

__all__ = ["explain_dataset", "RunConfig", "RunSummary", "Preprocess", "RunError",
           "ModelLoadError", "UnsafePickleError", "DataError", "MixedSizesError",
           "LabelRangeError"]
