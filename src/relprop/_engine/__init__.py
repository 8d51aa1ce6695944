"""The engine behind :func:`relprop.explain`: one forward pass, one modified backward pass.

The pipeline, one module per step (this package's public face is what
:func:`relprop.explain` and the attribution methods use; everything else is private):

1. :mod:`~relprop._engine.checks`, :mod:`~relprop._engine.eager` — what can be explained: the
   model (eager, eval mode, no backward hooks), the input, the output;
2. :mod:`~relprop._engine.session` — the state of one explanation: module context, the
   records of the op calls that take a rule (:mod:`~relprop._engine.records`), the tensors kept
   for the backward pass (:mod:`~relprop._engine.saved`);
3. :mod:`~relprop._engine.intercept` — catch op calls during the forward pass and hand them to
   the op families of :mod:`~relprop._engine.handlers` (layers, transformer ops, recurrent
   ops); in-place calls go through :mod:`~relprop._engine.inplace`;
4. :mod:`~relprop._engine.graph` — check the graph: every op on the relevance path has a rule
   or is linear;
5. the composite assigns each record its rule (:mod:`relprop.composites`);
6. :mod:`~relprop._engine.apply` — the autograd functions that, on the way back, ask each
   call's rule for the signal at its input (:meth:`relprop.rules.Rule.propagate`);
7. :mod:`~relprop._engine.assumptions` — after the backward pass, warn by layer where a
   rule's assumption failed on this data.
"""

from .assumptions import check_relevance_changes
from .checks import (
    check_eval_mode,
    check_input,
    check_model,
    check_output,
    check_token_ids,
    select_output,
    warn_if_probabilities,
)
from .eager import collector_paused, eager, eager_module, usable_input
from .graph import find_unsupported
from .handlers import MODULES
from .intercept import Interceptor, short_name
from .records import LedgerEntry, OpCall
from .session import Session

__all__ = [
    "check_relevance_changes",
    "check_eval_mode", "check_input", "check_model", "check_output", "check_token_ids",
    "select_output",
    "warn_if_probabilities", "collector_paused", "eager", "eager_module", "usable_input",
    "find_unsupported",
    "MODULES", "Interceptor", "short_name", "LedgerEntry", "OpCall", "Session",
]
