"""The op families the interceptor plugs in, each a module of handlers:

* :mod:`~relprop._engine.handlers.layers` — linear and convolution layers, BatchNorm, ReLU,
  other activations, max pooling, products of activations;
* :mod:`~relprop._engine.handlers.transformer` — embeddings (sources), softmax,
  LayerNorm/RMSNorm, fused attention, modules taken as one op (RMSNorm-like, GELU-like);
* :mod:`~relprop._engine.handlers.recurrent` — ``torch.lstm``/``torch.gru``, replayed step by
  step.

A family contributes handlers by op name, and optionally *claims* (calls it takes before the
in-place machinery, such as an in-place ReLU merged into its layer), argument hooks run before
a call, and module kinds (whole modules taken as one op).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import layers, recurrent, transformer


@dataclass(frozen=True)
class ModuleOps:
    """Whole modules taken as one op: ``kind(module)`` names the op kind or ``None``;
    ``wrap(session, module, kind, args, output)`` gives the output as that op (``None`` if
    the module turns out not to be one)."""

    kind: Any
    wrap: Any


HANDLERS = {**layers.HANDLERS, **recurrent.HANDLERS, **transformer.HANDLERS}
CLAIMS = (layers.claim,)
PREPARES = (transformer.prepare,)
MODULES = ModuleOps(transformer.module_kind, transformer.wrap_module_output)
elementwise = layers.elementwise
call_with = layers._call_with

__all__ = ["HANDLERS", "CLAIMS", "PREPARES", "MODULES", "ModuleOps", "elementwise",
           "call_with"]
