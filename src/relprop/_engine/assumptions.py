"""After the backward pass: warn, by layer, where a rule's assumption failed on this data."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import RuleAssumptionWarning
from .records import OpCall

#: a total this far from the explained value (as a fraction) is worth naming the culprits
TOTAL_TOLERANCE = 0.5


def check_relevance_changes(calls: Sequence[OpCall], total: Tensor, explained: Tensor) -> None:
    """Warn for each call whose rule reported that it changed some sample's relevance by more
    than its ``Rule.relevance_tolerance`` (biases aside); and where the total relevance is
    more than 50 % off the explained value, name the reporting layers that changed it most.
    The reports are small per-sample tensors; this reads them once, after the backward pass."""
    changes: list[tuple[float, OpCall]] = []
    for call in calls:
        if call.relevance_change is None or call.rule is None:
            continue
        change = float(call.relevance_change.abs().max()) if call.relevance_change.numel() \
            else 0.0
        call.relevance_change = None
        changes.append((change, call))
        tolerance = call.rule.relevance_tolerance
        if tolerance is not None and change > tolerance:
            warnings.warn(
                f"{call.rule!r} at {call.name}: the rule changed the relevance of some samples "
                f"by more than {tolerance:.0%} at this layer: outputs whose contributions all "
                "have one sign take alpha*R or -beta*R instead of R. Give this layer a "
                "sign-aware rule (Gamma, or ZPlus) in the composite.",
                RuleAssumptionWarning, stacklevel=4)
    if not changes or total.shape != explained.shape:
        return
    judged = explained.abs() > 1e-3 * explained.abs().max()
    gap = ((total / torch.where(judged, explained, torch.ones_like(explained)) - 1).abs()
           * judged)
    off = gap > TOTAL_TOLERANCE
    culprits = sorted((c for c in changes if c[0] > 0.05), key=lambda c: -c[0])[:3]
    # only where the rules' own changes can account for much of the gap (not the biases)
    if bool(off.any()) and culprits and sum(c for c, _ in culprits) >= 0.5 * float(gap.max()):
        named = ", ".join(f"{call.name} (by {change:.0%})" for change, call in culprits)
        warnings.warn(
            f"the relevance of samples {off.nonzero()[:, 0].tolist()[:8]} is more than "
            f"{TOTAL_TOLERANCE:.0%} away from the explained value; the layers whose rule "
            f"changed it most: {named}. Give them a sign-aware rule (Gamma, or ZPlus).",
            RuleAssumptionWarning, stacklevel=4)
