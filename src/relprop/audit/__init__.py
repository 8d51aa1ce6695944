"""Auditing a model over a dataset: Spectral Relevance Analysis (SpRAy) and its report.

>>> result = relprop.audit.spray(heatmaps, labels)   # doctest: +SKIP
>>> result.candidates()[:3]    # (class, cluster, distinctness), most distinct first
>>> relprop.audit.write_report("report/", result, relprop.audit.TensorSamples(heatmaps, x))

From a shell, over a stored run: ``relprop audit RUN_DIR --out REPORT_DIR``.
:mod:`relprop.audit.planted` makes a dataset with a planted Clever Hans to test it on.
"""

from __future__ import annotations

from .report import Samples, TensorSamples, write_report
from .spray import (
    ClassSpray,
    SprayInputError,
    SprayResult,
    downsample,
    eigengap,
    knn_affinity,
    match_planted,
    spray,
    spray_class,
)

__all__ = [
    "ClassSpray", "Samples", "SprayInputError", "SprayResult", "TensorSamples", "downsample",
    "eigengap", "knn_affinity", "match_planted", "spray", "spray_class", "write_report",
]
