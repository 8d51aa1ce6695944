"""LSTM and GRU, unrolled over time so that relprop's rules apply to every step.

``nn.LSTM``/``nn.GRU`` call one fused op (``torch.lstm``/``torch.gru``). Under relprop it is
replayed step by step with the same maths, through the interception mode, so the usual
rules apply: the linear maps take the composite's rule (ε in Arras et al. 2017, "Explaining
recurrent neural network predictions in sentiment analysis"), tanh the identity rule, and
every product with a gate (sigmoid output, or ``1 − z`` in the GRU) is signal-take-all: the
gate gets no relevance, it flows through the cell input and the cell state in proportion.
For the LSTM the input and recurrent maps are one linear op over ``[x_t, h_{t−1}]``, so ε
sees the whole pre-activation as in Arras et al. Works for several layers, both directions,
batch-first and packed sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InvalidInputError, UnsupportedOperationError
from ..paths import on_path

if TYPE_CHECKING:
    from ..session import Session

Step = Callable[[Tensor, tuple[Tensor, ...], Sequence[Tensor]], tuple[Tensor, ...]]


def _lstm_step(x: Tensor, state: tuple[Tensor, ...], weights: Sequence[Tensor]
               ) -> tuple[Tensor, ...]:
    h, c = state
    w_ih, w_hh = weights[0], weights[1]
    bias = weights[2] + weights[3] if len(weights) == 4 else None
    gates = F.linear(torch.cat([x, h], dim=1), torch.cat([w_ih, w_hh], dim=1), bias)
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
    c = f * c + i * torch.tanh(g)
    return o * torch.tanh(c), c


def _gru_step(mark_gate: Callable[[Tensor], None]) -> Step:
    def step(x: Tensor, state: tuple[Tensor, ...], weights: Sequence[Tensor]
             ) -> tuple[Tensor, ...]:
        (h,) = state
        b_ih, b_hh = (weights[2], weights[3]) if len(weights) == 4 else (None, None)
        gi = F.linear(x, weights[0], b_ih)
        gh = F.linear(h, weights[1], b_hh)
        gi_r, gi_z, gi_n = gi.chunk(3, dim=1)
        gh_r, gh_z, gh_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(gi_r + gh_r)
        z = torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + r * gh_n)
        keep = 1.0 - z
        mark_gate(keep)
        return (keep * n + z * h,)
    return step


def _run_direction(step: Step, inputs: list[Tensor], state: tuple[Tensor, ...],
                   weights: Sequence[Tensor], batch_sizes: list[int] | None,
                   reverse: bool) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    """Run one direction of one layer; ``inputs[t]`` is ``(batch_t, features)``."""
    outputs: list[Tensor] = [inputs[0]] * len(inputs)
    for t in (reversed(range(len(inputs))) if reverse else range(len(inputs))):
        active = inputs[t].shape[0] if batch_sizes is None else batch_sizes[t]
        if active == state[0].shape[0]:
            state = step(inputs[t], state, weights)
        else:  # packed: only the first ``active`` sequences run at this step
            new = step(inputs[t], tuple(s[:active] for s in state), weights)
            state = tuple(torch.cat([n, s[active:]]) for n, s in zip(new, state))
        outputs[t] = state[0][:active]
    return outputs, state


def replay(kind: str, args: tuple[Any, ...], mark_gate: Callable[[Tensor], None]) -> Any:
    """Compute ``torch.lstm``/``torch.gru`` from its arguments, step by step."""
    packed = isinstance(args[1], Tensor) and (kind == "lstm" or isinstance(args[2], Tensor))
    if packed:
        data, batch_sizes_t, hx, params, has_biases, layers, _, _, bidirectional = args[:9]
        batch_sizes = [int(b) for b in batch_sizes_t]
        offsets = [0]
        for b in batch_sizes:
            offsets.append(offsets[-1] + b)
        inputs = [data[offsets[t]:offsets[t + 1]] for t in range(len(batch_sizes))]
        batch_first = False
    else:
        sequence, hx, params, has_biases, layers, _, _, bidirectional, batch_first = args[:9]
        if batch_first:
            sequence = sequence.transpose(0, 1)
        inputs, batch_sizes = list(sequence.unbind(0)), None
    if not inputs or inputs[0].shape[0] == 0:
        raise InvalidInputError(
            f"torch.{kind} got an empty sequence ({len(inputs)} steps, "
            f"{inputs[0].shape[0] if inputs else 0} sequences): nothing to explain"
        )
    states = tuple(hx) if kind == "lstm" else (hx,)
    per_direction = 4 if has_biases else 2
    directions = 2 if bidirectional else 1
    if len(params) != layers * directions * per_direction:
        raise UnsupportedOperationError(
            f"torch.{kind} with {len(params)} weight tensors for {layers} layers: projections "
            "(proj_size > 0) are not supported"
        )
    step: Step = _lstm_step if kind == "lstm" else _gru_step(mark_gate)
    finals: list[list[Tensor]] = [[] for _ in states]
    for layer in range(layers):
        results = []
        for direction in range(directions):
            index = layer * directions + direction
            weights = params[index * per_direction:(index + 1) * per_direction]
            start = tuple(s[index] for s in states)
            outs, final = _run_direction(step, inputs, start, weights, batch_sizes,
                                         reverse=direction == 1)
            results.append(outs)
            for slot, value in zip(finals, final):
                slot.append(value)
        inputs = [torch.cat([r[t] for r in results], dim=1) for t in range(len(inputs))]
    if packed:
        output = torch.cat(inputs, dim=0)
    else:
        output = torch.stack(inputs, dim=1 if batch_first else 0)
    return (output, *(torch.stack(f, dim=0) for f in finals))


def recurrent(session: Session, func: Callable[..., Any], name: str,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``torch.lstm``/``torch.gru``: replayed step by step under the interception mode."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    tensors += [t for a in args if isinstance(a, list | tuple) for t in a if isinstance(t, Tensor)]
    if kwargs or not any(on_path(t) for t in tensors):
        return func(*args, **kwargs)
    with session.interceptor:
        return replay(name, args, session.mark_gate)


HANDLERS = {"lstm": recurrent, "gru": recurrent}
