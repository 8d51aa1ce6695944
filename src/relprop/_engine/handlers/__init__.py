"""The op families the interceptor plugs in, each a module of handlers:

* :mod:`~relprop._engine.handlers.layers` — linear and convolution layers, BatchNorm, ReLU,
  other activations, max pooling, products of activations;
* :mod:`~relprop._engine.handlers.transformer` — embeddings (sources), softmax,
  LayerNorm/RMSNorm, fused attention, modules taken as one op (RMSNorm-like, GELU-like);
* :mod:`~relprop._engine.handlers.recurrent` — ``torch.lstm``/``torch.gru``, replayed step by
  step;
* :mod:`~relprop._engine.handlers.scan` — selective state-space scans and linear attention
  (their input-dependent parameters held constant, MambaLRP);
* :mod:`~relprop._engine.handlers.statistics` — normalisations and activations written op by
  op (a scale computed from a statistic of the stream, ``erf`` in GELU, xIELU-like modules).

A family contributes handlers by op name, and optionally *claims* (calls it takes before the
in-place machinery, such as an in-place ReLU merged into its layer), argument hooks run before
a call, and module kinds (whole modules taken as one op).
"""

from __future__ import annotations

from collections.abc import Container
from types import ModuleType
from typing import Any

from . import layers, mixing, norms, recurrent, scan, statistics, transformer

#: the op families, in order of precedence (a later family's handler of the same op name
#: wins). A family module may define ``HANDLERS`` (op name -> handler), ``claim(name, args,
#: kwargs)``, ``prepare(session, name, args)`` and, for whole modules taken as one op,
#: ``module_kind(module)`` with ``wrap_module_output(session, module, kind, args, output)``,
#: and ``observe(session, func, name, args, kwargs, out)`` after every call. A family whose
#: hook acts on a known set of op names says so (``PREPARE_NAMES``, ``CLAIM_NAMES``,
#: ``OBSERVE_NAMES``); the interceptor then skips it for other ops (see :func:`route`).
#: A new family is a new module here and one line in this tuple.
FAMILIES: tuple[ModuleType, ...] = (
    layers,
    recurrent,
    transformer,
    norms,
    mixing,
    scan,
    statistics,
)


class ModuleOps:
    """Whole modules taken as one op, over every family: ``kind(module)`` is ``None`` or an
    opaque claim, which ``wrap(session, module, claim, args, output)`` hands back to the
    family that made it (``None`` if the module turns out not to be one op)."""

    def __init__(self, families: tuple[ModuleType, ...]) -> None:
        self._families = [f for f in families if hasattr(f, "module_kind")]

    def kind(self, module: Any) -> tuple[ModuleType, str] | None:
        if type(module).__module__.startswith("torch."):  # PyTorch's own modules call
            return None  # functional ops, which have handlers: no family takes them whole
        for family in self._families:
            found = family.module_kind(module)
            if found is not None:
                return family, found
        return None

    def wrap(self, session: Any, module: Any, claim: tuple[ModuleType, str], args: Any,
             output: Any) -> Any:
        family, kind = claim
        return family.wrap_module_output(session, module, kind, args, output)


HANDLERS: dict[str, Any] = {}
for _family in FAMILIES:
    HANDLERS.update(getattr(_family, "HANDLERS", {}))
CLAIMS = tuple(f.claim for f in FAMILIES if hasattr(f, "claim"))
PREPARES = tuple(f.prepare for f in FAMILIES if hasattr(f, "prepare"))
OBSERVERS = tuple(f.observe for f in FAMILIES if hasattr(f, "observe"))
MODULES = ModuleOps(FAMILIES)


def _concerned(hook: str, names: str) -> tuple[tuple[Any, Container[str] | None], ...]:
    """Each family's ``hook`` with the op names it acts on (``names``; ``None``: any op)."""
    return tuple((getattr(f, hook), getattr(f, names, None)) for f in FAMILIES
                 if hasattr(f, hook))


_CONCERNED = (_concerned("prepare", "PREPARE_NAMES"), _concerned("claim", "CLAIM_NAMES"),
              _concerned("observe", "OBSERVE_NAMES"))
_ROUTES: dict[str, tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]] = {}


def route(name: str) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]:
    """The argument hooks, claims and observers that may act on a call of op ``name``, in
    family order: a family that declares the op names of its hook (``PREPARE_NAMES``,
    ``CLAIM_NAMES``, ``OBSERVE_NAMES``) is not asked about other ops (most calls of a forward
    pass concern no family's hook, and asking each costs a function call per op)."""
    found = _ROUTES.get(name)
    if found is None:
        found = _ROUTES[name] = tuple(  # type: ignore[assignment]
            tuple(hook for hook, names in hooks if names is None or name in names)
            for hooks in _CONCERNED)
    assert found is not None
    return found
elementwise = layers.elementwise
call_with = layers._call_with

__all__ = ["FAMILIES", "HANDLERS", "CLAIMS", "PREPARES", "MODULES", "ModuleOps",
           "elementwise", "call_with", "route"]
