"""The exceptions relprop raises; each message says what is wrong, where, and what to do."""

from __future__ import annotations


class RelpropError(Exception):
    """Base class of every error relprop raises on purpose."""


class UnsupportedOperationError(RelpropError):
    """An op on the relevance path has no LRP rule and is not linear.

    Raised with ``strict=True`` (the default); with ``strict=False`` the op keeps its plain
    gradient and a :class:`UnsupportedOperationWarning` names it instead.
    """


class UnsupportedOperationWarning(UserWarning):
    """Issued instead of :class:`UnsupportedOperationError` when ``strict=False``."""


class ProbabilityOutputWarning(UserWarning):
    """The model output looks like probabilities (rows non-negative, summing to 1).

    LRP should start from logits: remove the final softmax, or explain
    :class:`relprop.targets.LogOdds` of the logits.
    """


class RuleAssumptionWarning(UserWarning):
    """A rule's assumption fails on the data at hand, named by layer: αβ returning far more or
    less relevance than it received (outputs whose contributions all have one sign), or a
    rule made for the input (flat, w², z^B) given to a hidden layer."""


class InvalidInputError(RelpropError, ValueError):
    """The model, the input batch or the target cannot be explained as given."""


class RuleAssignmentError(RelpropError, ValueError):
    """A composite gave an op a rule that cannot apply to it."""
