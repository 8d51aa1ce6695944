"""Attribution methods with the call shape and the result of :func:`relprop.explain`.

Every method is ``method(model, x, target=None, **options) -> Explanation``: the same checks
of the model and the batch, the same targets (:mod:`relprop.targets`), and an
:class:`~relprop.Explanation` whose ``relevance`` has ``x``'s shape and whose ``explained`` is
the explained output per sample, so that evaluation code never special-cases a method. None
of them changes the model; all run on ``x``'s device and dtype.

>>> from relprop import methods
>>> expl = methods.get_method("integrated_gradients")(model, x, target=y)  # doctest: +SKIP

Methods that differentiate or evaluate the model away from ``x`` (SmoothGrad, Integrated
Gradients, occlusion) score an output ``y'`` as ``⟨G, y'⟩``, with ``G`` the target's seed at
the clean output: the logit ``y'_c`` for a class index, ``y'_c − y'_c'`` for a ``Contrast``;
for ``LogOdds`` the softmin weights of the clean output are held fixed.

Every method also takes integer token ids as ``x`` and ``forward_kwargs`` for the model (an
attention mask), like :func:`relprop.explain`: the others then explain the embeddings of the
ids and give one relevance per token (see :mod:`relprop.methods._bound`).

``Explanation.method`` names the method and the options that change its result, e.g.
``"integrated_gradients(steps=32, method='riemann_trapezoid', baseline=0.0)"``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..composites import Composite
from ..errors import InvalidInputError
from ..explain import Explanation, explain
from ..targets import Target
from .gradients import gradient, gradient_x_input, smoothgrad
from .guided import deconvnet, guided_backprop
from .integrated import integrated_gradients
from .perturbation import occlusion, random_baseline


def lrp(model: nn.Module, x: Tensor, target: int | Tensor | Target | None = None,
        composite: Composite | None = None, *, record: bool = False,
        strict: bool = True, forward_kwargs: dict[str, Any] | None = None) -> Explanation:
    """Layer-wise Relevance Propagation: :func:`relprop.explain` under its registry name.

    Bach, Binder, Montavon, Klauschen, Müller & Samek (2015), "On Pixel-Wise Explanations for
    Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation".
    """
    return explain(model, x, target, composite, record=record, strict=strict,
                   forward_kwargs=forward_kwargs)


#: every method by name; ``Explanation.method`` starts with the name
METHODS: dict[str, Callable[..., Explanation]] = {
    "lrp": lrp,
    "gradient": gradient,
    "gradient_x_input": gradient_x_input,
    "smoothgrad": smoothgrad,
    "integrated_gradients": integrated_gradients,
    "guided_backprop": guided_backprop,
    "deconvnet": deconvnet,
    "occlusion": occlusion,
    "random_baseline": random_baseline,
}


def get_method(name: str) -> Callable[..., Explanation]:
    """The attribution method called ``name`` in :data:`METHODS`."""
    method = METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        close = difflib.get_close_matches(name, list(METHODS), n=1) if isinstance(
            name, str) else []
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InvalidInputError(f"unknown attribution method {name!r}; {hint}choose one of: "
                                + ", ".join(sorted(METHODS)))
    return method


__all__ = [
    "METHODS", "get_method", "lrp", "gradient", "gradient_x_input", "smoothgrad",
    "integrated_gradients", "guided_backprop", "deconvnet", "occlusion", "random_baseline",
]
