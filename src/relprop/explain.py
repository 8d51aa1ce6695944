"""``relprop.explain``: one forward pass, one modified backward pass, one relevance map."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ._engine import (
    MODULES,
    Interceptor,
    Session,
    check_eval_mode,
    collector_paused,
    eager,
    eager_module,
    find_unsupported,
    usable_input,
)
from ._engine import check_input as _check_input
from ._engine import check_model as _check_model
from ._engine import check_output as _check_output
from ._engine import check_relevance_changes as _check_relevance_changes
from ._engine import check_token_ids as _check_token_ids
from ._engine import select_output as _select_output
from ._engine import warn_if_probabilities as _warn_if_probabilities
from .composites import Composite, default
from .errors import (
    InvalidInputError,
    RelpropError,
    RuleAssumptionWarning,
    UnsupportedOperationError,
    UnsupportedOperationWarning,
)
from .explanation import Explanation
from .rules.ops import seeded_grad
from .targets import Target, as_target

__all__ = ["explain", "Explanation"]


def explain(model: nn.Module, x: Tensor, target: int | Tensor | Target | None = None,
            composite: Composite | None = None, *, record: bool = False,
            strict: bool = True, forward_kwargs: dict[str, Any] | None = None,
            verify: bool = False) -> Explanation:
    """Explain ``model(x)`` for ``target`` with Layer-wise Relevance Propagation.

    Args:
        model: any eager ``nn.Module`` in eval mode; it is not modified.
        x: a floating-point batch (first dimension = samples), or integer token ids of shape
            ``(batch, sequence)``: relevance is then collected where the model looks the ids
            up in an embedding and summed over the embedding dimension, giving one relevance
            per token; other lookups (positions, token types) go to ``sources``.
        target: a class index (Python or numpy integer), one index per sample (tensor, numpy
            array or list), ``K`` indices per sample (an integer tensor or array of shape
            ``(batch, K)``, or ``(1, K)``/``[[c1, ..., cK]]`` for the same K classes of every
            sample: see below), a float tensor of output relevance of the output's shape, or a
            :mod:`relprop.targets` object (``LogOdds``, ``Contrast``, ``TokenLogit``); ``None``
            explains each sample's top class, or, for a ``(batch,)`` output, that output.
        composite: which rule each op gets; default :func:`relprop.composites.default`
            (LRP_CMP:α2 for float inputs, AttnLRP for token ids).
        record: also keep the relevance at every module output (``layers``) and the
            per-op conservation ledger (``conservation``).
        strict: raise :class:`UnsupportedOperationError` on an op with no rule that is not
            linear; with ``False`` it keeps its gradient and a warning names it.
        forward_kwargs: further keyword arguments of the model call (``attention_mask``...).
            Positions where an ``attention_mask`` is 0 (padding) get no relevance.
        verify: also run the model plainly (one more forward pass) and raise
            :class:`~relprop.RelpropError` unless its output equals ``Explanation.output``:
            proof that the function explained is the model's.

    Several targets at once: with ``K`` targets per sample (class indices of shape
    ``(batch, K)``, or a :class:`~relprop.targets.TokenLogit` whose ``token`` or ``position``
    has that shape) the forward pass is run once and the ``K`` modified backward passes share
    it and every rule's seed-independent terms (modified forwards, denominators, ρ(W)).
    ``Explanation.relevance`` then has shape ``(batch, K, *x.shape[1:])``, ``explained`` shape
    ``(batch, K)`` (``relevance[:, k]`` is the map of target ``k`` alone) and ``output`` is the
    model's output as always; ``record=True`` takes one target at a time.

    Works inside ``torch.inference_mode()`` and on inputs made there; a ``torch.compile``d
    model is explained through the eager module it wraps (same function, eager speed).
    """
    model, named, x, tokens, composite, x_leaf = _checked_call(model, x, composite)
    kwargs = dict(forward_kwargs or {})
    session = Session(model, x_leaf, record, MODULES, named)
    with eager(model, (m for _, m in named)), collector_paused():
        output = None
        try:
            output = _forward(session, model, x, tokens, kwargs, composite)
            return _explain_output(session, model, x, output, target, composite, tokens,
                                   kwargs, strict, verify)
        finally:  # the graph (its nodes hold the op records) and the records go now, while
            del output  # the collector is paused: by reference counting, not a collection
            session.release()


def _forward(session: Session, model: nn.Module, x: Tensor, tokens: bool,
             kwargs: dict[str, Any], composite: Composite) -> Any:
    """``model(x)`` under the interceptor (the caller enters :func:`eager`): the output the
    model returns, its explained part selected; a forward error of the model's is raised
    again with what relprop knows about it."""
    session.keeps_dense_inputs = session.record or composite.reads_input("linear")
    session.gates_constant = not session.record and session.on_tensor is None \
        and composite.gates_take_nothing()
    try:
        with session.installed(Interceptor(session, composite.elementwise_ops())):
            return _select_output(model(session.model_input(), **kwargs))
    except (RuntimeError, TypeError) as error:
        _explain_forward_error(model, x, tokens, kwargs, error)
        raise


def _checked_call(model: nn.Module, x: Any, composite: Composite | None
                  ) -> tuple[nn.Module, list[tuple[str, nn.Module]], Tensor, bool, Composite,
                             Tensor]:
    """What every explanation checks before its forward pass: the eager model and its
    modules by name, the input (token ids or features), the composite (the default one for
    its kind of input) and the input leaf that collects relevance:
    ``(model, named, x, tokens, composite, x_leaf)``."""
    _check_model(model, eval_mode=False)  # what the model is; its eval mode over the walk
    model, named = eager_module(model)  # that eager_module makes of it
    check_eval_mode(model, named)
    x = usable_input(x)
    tokens = isinstance(x, Tensor) and not x.is_floating_point() and not x.is_complex()
    if tokens:
        _check_token_ids(x)
    else:
        _check_input(x)
    composite = default(tokens) if composite is None else composite
    if not isinstance(composite, Composite):
        raise InvalidInputError(
            f"composite must be a relprop Composite, got {type(composite).__name__}"
        )
    x_leaf = x if tokens else x.detach().requires_grad_(True)
    return model, named, x, tokens, composite, x_leaf


def _explain_output(session: Session, model: nn.Module, x: Tensor, output: Any, target: Any,
                    composite: Composite, tokens: bool, kwargs: dict[str, Any], strict: bool,
                    verify: bool) -> Explanation:
    """The steps after the forward pass: checks, rules, the modified backward pass."""
    _check_output(output)
    assert isinstance(output, Tensor)
    _warn_if_probabilities(output, stacklevel=4)
    if tokens and not any(reads for _, _, reads in session.sources) \
            and not session.source_positions:
        raise InvalidInputError(
            "the token ids were not looked up in an embedding (nn.Embedding / F.embedding) on "
            "the way to the output, so there is nowhere to collect token relevance")
    problems = find_unsupported(session, output.grad_fn)
    if problems:
        message = ("ops with no LRP rule that are not linear (their relevance would be wrong): "
                   + "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more"
                                                if len(problems) > 8 else ""))
        if strict:
            raise UnsupportedOperationError(message + ". Pass strict=False to keep their "
                                            "gradient instead.")
        warnings.warn(message, UnsupportedOperationWarning, stacklevel=3)
    if verify:
        _verify(model, x, kwargs, output.detach())
    session.forget_forward()  # the checks are done: let the graph own what it needs
    composite.assign(session.calls)
    _warn_input_rules_on_hidden_layers(session)
    detached = output.detach()
    resolved = as_target(target, detached)
    parts = resolved.split(detached)
    if parts is not None and session.record:
        raise InvalidInputError(
            f"record=True keeps the relevance of one target, but target has {len(parts)} per "
            "sample: explain them one at a time to record layers and the ledger")
    targets = parts or [resolved]
    maps, explained_each = [], []
    for i, part in enumerate(targets):
        # one seed at a time, in a box that the backward pass empties, so that nothing here
        # keeps it past the output's node (a language model's seed is its output's size)
        *box, explained = part.seed(detached)
        explained_each.append(explained)
        maps.append(_relevance_for(session, output, x, box, explained, tokens, kwargs, strict,
                                   again=i + 1 < len(targets)))
    if parts is None:
        (relevance, sources), explained = maps[0], explained_each[0]
    else:  # K targets: (batch, K, ...)
        relevance = torch.stack([r for r, _ in maps], dim=1)
        sources = {name: torch.stack([s[name] for _, s in maps], dim=1) for name in maps[0][1]}
        explained = torch.stack(explained_each, dim=1)
    return Explanation(
        relevance=relevance.detach(), output=detached, explained=explained.detach(),
        target=resolved, method=f"lrp:{composite.name}",
        rules=_rule_names(session),
        layers=session.layers, conservation=session.ledger, sources=sources,
    )


def _rule_names(session: Session) -> dict[str, str]:
    """Each call's rule by its repr, made once per rule (a composite has a few rules, a
    model hundreds of calls)."""
    reprs: dict[int, str] = {}
    names = {}
    for call in session.calls:
        key = id(call.rule)
        if key not in reprs:
            reprs[key] = repr(call.rule)
        names[call.name] = reprs[key]
    return names


def _relevance_for(session: Session, output: Tensor, x: Tensor, seed: list[Tensor],
                   explained: Tensor, tokens: bool, kwargs: dict[str, Any], strict: bool,
                   again: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """One modified backward pass from the seed in ``seed`` (taken out of it: see
    :func:`relprop.rules.ops.seeded_grad`), checked; ``again``: another pass over the same
    graph follows (the graph and the rules' seed-independent terms are kept)."""
    session.again, session.deposit = again, None
    relevance, sources = _backward(session, output, seed, tokens)
    mask = kwargs.get("attention_mask")
    if tokens and isinstance(mask, Tensor) and mask.shape == x.shape:
        relevance = relevance * (mask != 0)
        sources = {k: v * (mask != 0) if v.shape == x.shape else v for k, v in sources.items()}
    total = _total(relevance, sources)
    _check_finite(total, strict)
    _check_relevance_changes(session.calls, total, explained.detach())
    return relevance, sources


def _check_finite(total: Tensor, strict: bool) -> None:
    """A map with NaN or inf is never handed back silently (one reduction per sample)."""
    bad = ~torch.isfinite(total)
    if not bool(bad.any()):
        return
    message = (f"the relevance of samples {bad.nonzero()[:, 0].tolist()[:8]} contains NaN or "
               "inf although the model's output is finite: a rule divided by zero or met "
               "inf inside the model (e.g. -inf masks on positions the model pads itself). "
               "Run with record=True and look for the first non-finite entry of "
               "expl.conservation; please report the model")
    if strict:
        raise RelpropError(message + ". Pass strict=False to get the map anyway.")
    warnings.warn(message, UnsupportedOperationWarning, stacklevel=4)


def _total(relevance: Tensor, sources: dict[str, Tensor]) -> Tensor:
    """Per sample: the relevance at the input plus what reached the sources."""
    batch = relevance.shape[0]
    total = relevance.detach().reshape(batch, -1).sum(1)
    for value in sources.values():
        if value.dim() and value.shape[0] == batch:
            total = total + value.detach().reshape(batch, -1).sum(1).to(total.dtype)
    return total


def _warn_input_rules_on_hidden_layers(session: Session) -> None:
    """Flat, w² and z^B describe the input (its bounds, its receptive fields): given to a layer
    that does not read the explained input, relevance on units of value 0 stops there."""
    for call in session.calls:
        rule = call.rule
        if rule is not None and not rule.factorizes and not call.reads_input:
            warnings.warn(
                f"{rule!r} at {call.name}: a rule made for the input layer is given to a "
                "layer that does not read the explained input (something runs before it), so "
                "relevance reaching units whose value is 0 is absorbed. Select the layer that "
                "reads the input, or use Gamma/Epsilon here.", RuleAssumptionWarning,
                stacklevel=4)


def _explain_forward_error(model: nn.Module, x: Tensor, tokens: bool, kwargs: dict[str, Any],
                           error: Exception) -> None:
    """Raise a named error for the forward failures a newcomer meets (else return)."""
    if tokens and not any(isinstance(m, nn.Embedding) for m in model.modules()):
        raise InvalidInputError(
            f"x has dtype {x.dtype}, so it was taken for token ids, but the model failed "
            f"before looking them up in an embedding ({error}). Features must be floating "
            "point to carry relevance: convert them (x.float())") from error
    message = str(error)
    shape_error = any(w in message for w in ("shape", "size", "dimension", "Expected", "mat1"))
    if tokens or kwargs or "inplace" in message or not shape_error:
        return
    try:  # one sample without its batch dimension?
        with torch.no_grad():
            model(x.unsqueeze(0).clone())
    except Exception:  # noqa: BLE001 - the model fails either way: keep the original error
        return
    raise InvalidInputError(
        f"the model fails on x of shape {tuple(x.shape)} ({error}) but runs on "
        f"x.unsqueeze(0): x looks like one sample without its batch dimension. relprop "
        "explains batches (first dimension = samples): pass x.unsqueeze(0)") from error


def _verify(model: nn.Module, x: Tensor, kwargs: dict[str, Any], explained: Tensor) -> None:
    """Compare the plain forward with the output relprop explained (``verify=True``)."""
    with torch.no_grad():
        plain = _select_output(model(x.clone(), **kwargs))
    assert isinstance(plain, Tensor)
    if plain.shape == explained.shape and torch.allclose(
            plain, explained, rtol=1e-5 if plain.dtype != torch.float64 else 1e-10,
            atol=1e-6 * float(plain.abs().max()) if plain.numel() else 0.0):
        return
    difference = ((plain - explained).abs().max().item()
                  if plain.shape == explained.shape else "shape")
    raise RelpropError(
        f"verify: the output relprop explained differs from the model's plain output (max "
        f"|difference| {difference}, shapes {tuple(explained.shape)} and "
        f"{tuple(plain.shape)}): the explanation is of another function. Please report this "
        "with the model.")


def _backward(session: Session, output: Tensor, seed: list[Tensor], tokens: bool
              ) -> tuple[Tensor, dict[str, Tensor]]:
    """The modified backward pass: relevance at the input (or the token ids) and at the
    other embedding lookups."""
    x = session.x
    leaves = [t for _, t, _ in session.sources]
    inputs = leaves if tokens else [x, *leaves]
    grads = seeded_grad(output, inputs, seed, allow_unused=True, retain_graph=session.again)
    if tokens:
        relevance = torch.zeros(x.shape, dtype=output.dtype, device=output.device)
    else:
        grad = grads[0]
        relevance = torch.zeros_like(x) if grad is None else x.detach() * grad
        if session.deposit is not None:
            relevance = relevance + session.deposit
        grads = grads[1:]
    sources: dict[str, Tensor] = {}
    for (path, leaf, reads_input), grad in zip(session.sources, grads):
        per_position = (torch.zeros(leaf.shape[:-1], dtype=leaf.dtype, device=leaf.device)
                        if grad is None else (leaf.detach() * grad).sum(dim=-1))
        if tokens and reads_input and per_position.shape == x.shape:
            relevance = relevance + per_position.to(relevance.dtype)
            continue
        moved = session.source_positions.get(id(leaf)) if tokens else None
        if moved is not None:  # token ids the model moved before the lookup: back to them
            valid = moved >= 0
            flat = relevance.reshape(-1).index_add(0, moved[valid],
                                                   per_position[valid].to(relevance.dtype))
            relevance = flat.view(x.shape)
            if bool((~valid).any()):  # ids the model added (CPM-Ant's prompt, padding):
                sources[f"{path}:added ids"] = per_position * ~valid  # a source of their own
            continue
        name = path
        while name in sources:
            name += "'"
        sources[name] = per_position
    return relevance, sources
