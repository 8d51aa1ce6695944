"""Records of the rule-bearing op calls of one forward pass, in execution order."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..rules import Rule


@dataclass(eq=False)
class OpCall:
    """One call of an op that takes a rule (a layer, activation, max pooling or product).

    ``index`` is the position in execution order among all such calls; ``call`` counts how
    often ``module`` had already run before (a module called twice has two records).
    """

    index: int
    kind: str
    op_name: str
    path: str
    module: nn.Module | None
    call: int = 0
    fused: str | None = None
    reads_input: bool = False
    #: how many calls of the same op the same module call made before this one
    repeat: int = 0
    #: a convolution's groups (depthwise and grouped convolutions have more than one)
    groups: int = 1
    #: per sample, the relevance the rule created or destroyed at this call, as a fraction
    #: of what arrived (reported by rules that check their assumption, e.g. αβ)
    relevance_change: Tensor | None = field(default=None, repr=False)
    rule: Rule | None = None
    gates: list[bool] = field(default_factory=list, repr=False)
    #: per factor of a product: the softmax call that made it (attention weights), or None
    sources: list[OpCall | None] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        """``path#k:op[j]``, e.g. ``features.0:conv2d`` (``#k`` marks the k-th repeated call of
        the module, ``[j]`` the j-th repeated op inside one call, as in a functional net)."""
        where = self.path or "<model>"
        if self.call:
            where += f"#{self.call}"
        op = self.op_name if self.fused is None else f"{self.op_name}+batch_norm"
        return f"{where}:{op}" + (f"[{self.repeat}]" if self.repeat else "")

    @property
    def module_type(self) -> type[nn.Module] | None:
        return None if self.module is None else type(self.module)


@dataclass
class LedgerEntry:
    """Relevance bookkeeping of one op call, summed per sample (shape ``(batch,)``)."""

    name: str
    rule: str
    relevance_in: list[float]
    relevance_out: list[float]

    @property
    def absorbed(self) -> list[float]:
        """What the bias, the stabiliser or dropped inputs took: ``in − out`` per sample."""
        return [i - o for i, o in zip(self.relevance_in, self.relevance_out)]
