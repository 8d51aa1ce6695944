"""One shared forward pass under relprop's engine, with the graph kept for many backward passes.

The forward pass is :func:`relprop.explain`'s (same checks, same rules); what differs is that
the session keeps what the backward pass reads (``Session.again``) and names the graph node
of every module output (``Session.on_tensor``), so that relevance can be started, stopped and
masked at any layer the engine records.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from .._engine import (
    MODULES,
    Session,
    check_output,
    eager,
    find_unsupported,
    warn_if_probabilities,
)
from ..composites import Composite
from ..errors import UnsupportedOperationError, UnsupportedOperationWarning
from ..explain import _checked_call, _forward
from ..targets import Target, as_target
from ._errors import LayerNotOnPathError, UnknownLayerError


@dataclass
class Site:
    """A module output as the forward pass saw it: its graph edge and, when watched, a copy
    of its value taken before the model could write into it in place."""

    name: str
    module: nn.Module
    edge: GradientEdge
    shape: tuple[int, ...]
    value: Tensor | None = None


@dataclass
class Layer:
    """A recorded layer resolved to where relevance passes it: a live graph edge and the
    activations ``a`` there (relevance at the layer is ``a * G``)."""

    name: str
    edge: GradientEdge
    activations: Tensor


@dataclass
class Forward:
    """The shared forward pass: output, seed of the explained quantity, recorded layers."""

    session: Session
    x: Tensor
    tokens: bool
    output: Tensor
    seed: Tensor
    explained: Tensor
    target: Target
    composite: Composite
    sites: dict[str, Site] = field(default_factory=dict)
    #: token ids: 1 where the ``attention_mask`` keeps a position (padding gets no relevance)
    keep: Tensor | None = None
    _live: dict[Any, None] | None = None

    @property
    def inputs(self) -> list[Tensor]:
        """Where relevance is collected: the input (float inputs) and the embedding lookups."""
        leaves = [t for _, t, _ in self.session.sources]
        return leaves if self.tokens else [self.x, *leaves]

    def live_nodes(self) -> dict[Any, None]:
        """The graph nodes the explained output depends on (insertion-ordered set)."""
        if self._live is None:
            live: dict[Any, None] = {}
            stack = [self.output.grad_fn]
            while stack:
                node = stack.pop()
                if node is None or node in live:
                    continue
                live[node] = None
                stack.extend(parent for parent, _ in node.next_functions)
            self._live = live
        return self._live

    def layer(self, name: str) -> Layer:
        """The layer ``name`` (a key of ``Explanation.layers``), resolved to a live edge."""
        site = self.sites.get(name)
        if site is None:
            raise UnknownLayerError(
                f"no recorded layer is called {name!r}; the layers relprop records for this "
                f"model are the module outputs: {_listing(self.sites)}")
        node, nr = site.edge.node, site.edge.output_nr
        call = getattr(node, "call", None)
        live = self.live_nodes()
        if call is not None:  # the engine may have merged the layer into a later node
            node = _latest(node, [n for n in live if getattr(n, "call", None) is call])
        if node is None or node not in live:
            raise LayerNotOnPathError(
                f"layer {name!r} ({type(site.module).__name__}, output of shape "
                f"{site.shape}) is not on the path from the input to the explained output: "
                "no relevance reaches it. Pick a layer the output depends on")
        if node is not site.edge.node:  # merged (BatchNorm, ReLU): the merged node's output
            held = getattr(node, "z", None)
            value = getattr(held, "tensor", None)
            if not isinstance(value, Tensor) or tuple(value.shape) != site.shape:
                raise LayerNotOnPathError(
                    f"layer {name!r} was merged by the engine into the next op "
                    f"({type(node).__name__}) and its output is not available: condition on "
                    "the module that follows it")
            return Layer(name, GradientEdge(node, 0), value.detach())
        assert site.value is not None, f"layer {name!r} was not watched during the forward"
        return Layer(name, GradientEdge(node, nr), site.value)


def _latest(node: Any, candidates: list[Any]) -> Any:
    """Of the live nodes of one op call, the last one (none of the others reads it)."""
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    read = {parent for c in candidates for parent, _ in c.next_functions}
    last = [c for c in candidates if c not in read]
    return last[0] if len(last) == 1 else node


def _listing(sites: dict[str, Site], limit: int = 40) -> str:
    names = [n for n in sites if not n.endswith(":input")]
    if not names:
        return "(none: no module output depends on the input)"
    text = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    inputs = [n for n in sites if n.endswith(":input")]
    example = f", e.g. {inputs[len(inputs) // 2]!r}" if inputs else ""
    return (f"{text}{more} (the input of a module, e.g. a residual sum read by an "
            f"activation, is '<module path>:input'{example})")


@contextmanager
def shared_forward(model: nn.Module, x: Tensor, target: Any, composite: Composite | None,
                   watch: Collection[str], *, strict: bool = True,
                   forward_kwargs: dict[str, Any] | None = None) -> Iterator[Forward]:
    """Run ``model(x)`` under the engine and keep the graph for the block's backward passes.

    ``watch``: layer names whose values are copied as they are made (cheap: only those).
    """
    model, named, x, tokens, composite, x_leaf = _checked_call(model, x, composite)
    kwargs = dict(forward_kwargs or {})
    session = Session(model, x_leaf, False, MODULES, named)
    session.again = True
    sites: dict[str, Site] = {}
    wanted = set(watch)

    def capture(name: str, module: nn.Module, tensor: Tensor) -> None:
        if tensor.grad_fn is None:
            return
        value = tensor.detach().clone() if name in wanted else None
        sites[name] = Site(name, module, get_gradient_edge(tensor), tuple(tensor.shape), value)

    session.on_tensor = capture
    with eager(model, (m for _, m in named)):
        output = _forward(session, model, x, tokens, kwargs, composite)
        session.on_tensor = None
        check_output(output)
        assert isinstance(output, Tensor)
        warn_if_probabilities(output, stacklevel=5)
        _check_supported(session, output, strict)
        session.forget_forward()
        composite.assign(session.calls)
        detached = output.detach()
        resolved = as_target(target, detached)
        seed, explained = resolved.seed(detached)
        mask = kwargs.get("attention_mask")
        keep = (mask != 0) if tokens and isinstance(mask, Tensor) and mask.shape == x.shape \
            else None
        yield Forward(session, x_leaf, tokens, output, seed, explained.detach(), resolved,
                      composite, sites, keep=keep)


def _check_supported(session: Session, output: Tensor, strict: bool) -> None:
    problems = find_unsupported(session, output.grad_fn)
    if not problems:
        return
    message = ("ops with no LRP rule that are not linear (their relevance would be wrong): "
               + "; ".join(problems[:8]))
    if strict:
        raise UnsupportedOperationError(message + ". Pass strict=False to keep their "
                                        "gradient instead.")
    warnings.warn(message, UnsupportedOperationWarning, stacklevel=5)


def to_inputs(forward: Forward, grads: tuple[Tensor | None, ...], batch_shape: tuple[int, ...]
              ) -> Tensor:
    """Relevance at the explained input from the signals at ``forward.inputs``: ``x * G`` plus
    what input-layer rules deposited (float inputs), or summed embedding relevance (token ids).

    ``batch_shape``: leading dimensions of the signals beyond the input's (concepts)."""
    session, x = forward.session, forward.x
    lead = len(batch_shape)
    if forward.tokens:
        relevance = torch.zeros((*batch_shape, *x.shape), dtype=forward.output.dtype,
                                device=x.device)
        start = 0
    else:
        grad = grads[0]
        relevance = (torch.zeros((*batch_shape, *x.shape), dtype=x.dtype, device=x.device)
                     if grad is None else x.detach() * grad)
        start = 1
    for (_, leaf, reads_input), grad in zip(session.sources, grads[start:]):
        if grad is None or not reads_input:
            continue
        per_position = (leaf.detach() * grad).sum(dim=-1)
        if tuple(per_position.shape[lead:]) == tuple(x.shape):
            relevance = relevance + per_position.to(relevance.dtype)
    return relevance if forward.keep is None else relevance * forward.keep
