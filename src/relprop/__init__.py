"""relprop: Layer-wise Relevance Propagation for any eager PyTorch model, in one backward pass.

>>> import relprop
>>> expl = relprop.explain(model, x, target=y)      # doctest: +SKIP
>>> expl.relevance                                   # doctest: +SKIP
"""

from . import composites, concepts, methods, metrics, neon, pairwise, rules, targets, text
from .errors import (
    InvalidInputError,
    ProbabilityOutputWarning,
    RelpropError,
    RuleAssignmentError,
    RuleAssumptionWarning,
    UnsupportedOperationError,
    UnsupportedOperationWarning,
)
from .explain import Explanation, explain

__version__ = "0.1.0"

__all__ = [
    "explain", "Explanation", "composites", "concepts", "methods", "metrics", "neon",
    "pairwise", "rules", "targets", "text", "RelpropError",
    "UnsupportedOperationError", "UnsupportedOperationWarning", "InvalidInputError",
    "RuleAssignmentError", "ProbabilityOutputWarning", "RuleAssumptionWarning",
]
