"""Is the map about the model? Model-parameter randomisation (Adebayo et al. 2018).

The model's layers are re-initialised from the output down to the input, and the map of the
randomised model is compared with the original by Spearman rank correlation: a method whose
maps stay the same when the weights that produced the prediction are destroyed explains the
input, not the model. The user's model is never touched: everything happens on deep copies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from ..explain import Explanation, explain
from .maps import Pool, check_map, check_pool, pool_channels

Mode = Literal["cascading", "independent"]
Attribute = Callable[[nn.Module, Tensor, Any], Explanation]


@dataclass(frozen=True)
class RandomisationResult:
    """Spearman correlation ``(N,)`` between original and randomised maps, per layer name.

    ``correlations`` is ordered as the layers were randomised (top-down by default); in
    cascading mode the entry of a layer has it and every layer before it randomised.
    """

    correlations: dict[str, Tensor]
    protocol: dict[str, object]

    @property
    def mean(self) -> dict[str, float]:
        """Mean correlation over samples per layer (``NaN`` if any sample is undefined)."""
        return {name: float(c.mean()) for name, c in self.correlations.items()}

    def __repr__(self) -> str:
        """The mode, the sample count and the mean correlation over the defined samples per
        randomised layer, as many layers as fit in ~120 characters, not the tensors (no CI:
        one per layer would not fit; see ``correlations``)."""
        mode = self.protocol.get("mode", "?")
        if not self.correlations:
            return f"RandomisationResult({mode}, no layer)"
        n = next(iter(self.correlations.values())).numel()
        head = f"RandomisationResult({mode}, n={n}, mean rho: "
        parts = [f"{name} {float(c.nanmean()):.2f}" for name, c in self.correlations.items()]
        shown: list[str] = []
        for part in parts:
            if len(head) + len(", ".join([*shown, part])) > 100:
                break
            shown.append(part)
        rest = len(parts) - len(shown)
        return head + ", ".join(shown) + (f", … {rest} more" if rest else "") + ")"


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per sample of two batches of maps of the same shape.

    ``ρ = cov(rank(a), rank(b)) / (σ_rank(a) σ_rank(b))`` over the elements of each sample,
    with tied values given the average of the ranks they span (as ``scipy.stats.spearmanr``).
    ``NaN`` where either map is constant (its ranks have no spread: ``0 / 0``).
    Returns float64 ``(N,)``.
    """
    check_map_pair(a, b)
    ranks_a = _average_ranks(flat_finite(a, "a"))
    ranks_b = _average_ranks(flat_finite(b, "b"))
    ranks_a = ranks_a - ranks_a.mean(dim=1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(dim=1, keepdim=True)
    spread = (ranks_a.square().sum(dim=1) * ranks_b.square().sum(dim=1)).sqrt()
    covariance = (ranks_a * ranks_b).sum(dim=1)
    defined = spread > 0
    rho = covariance / torch.where(defined, spread, torch.ones_like(spread))
    return torch.where(defined, rho.clamp(-1.0, 1.0), torch.full_like(rho, float("nan")))


def check_map_pair(a: Tensor, b: Tensor) -> None:
    """Raise unless ``a`` and ``b`` are batches of maps ``(N, ...)`` of one shape."""
    for value, name in ((a, "a"), (b, "b")):
        if not isinstance(value, Tensor) or value.dim() < 2 or value.shape[0] == 0:
            raise InvalidInputError(f"{name} must be a batch of maps (N, ...), got "
                                    f"{tuple(value.shape) if isinstance(value, Tensor) else value}")
    if a.shape != b.shape:
        raise InvalidInputError(f"maps of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")


def flat_finite(values: Tensor, name: str) -> Tensor:
    """``values`` as ``(batch, -1)`` float64, refusing NaN or inf (``name`` in the error)."""
    flat = values.reshape(values.shape[0], -1).to(torch.float64)
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        raise InvalidInputError(f"{name} contains NaN or inf in sample(s) "
                                f"{(~finite).nonzero()[:, 0].tolist()[:10]}")
    return flat


def _average_ranks(values: Tensor) -> Tensor:
    """Ranks ``1..M`` along dim 1 of ``(N, M)``; tied values share their average rank."""
    n, m = values.shape
    ordered, order = values.sort(dim=1, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.cumsum(dim=1) - 1 + torch.arange(n, device=values.device)[:, None] * m
    positions = torch.arange(1, m + 1, dtype=torch.float64, device=values.device).expand(n, m)
    average = torch.zeros(n * m, dtype=torch.float64, device=values.device).scatter_reduce(
        0, group.reshape(-1), positions.reshape(-1), reduce="mean", include_self=False)
    return torch.empty_like(positions).scatter_(1, order, average[group])


def model_parameter_randomisation(
        model: nn.Module, x: Tensor, target: Any = None, attribute: Attribute = explain, *,
        layers: Sequence[str] | None = None, mode: Mode = "cascading",
        pool: Pool | None = "sum", seed: int = 0) -> RandomisationResult:
    """Cascading model-parameter randomisation test (Adebayo et al. 2018).

    On a deep copy of ``model``, the layers are re-initialised one after the other, from the
    output towards the input (``"cascading"``: cumulatively; ``"independent"``: one layer at
    a time on a fresh copy), and after each the map ``attribute(copy, x, target)`` is
    compared with the original map by :func:`spearman` ("Sanity checks for saliency maps",
    NeurIPS 2018, §3.1). Low correlation is what a model-sensitive method should show.

    A layer is re-initialised by its own ``reset_parameters()`` (its initialisation
    distribution, as in the paper; a BatchNorm's also resets its running statistics);
    a module without one has each of its own parameters redrawn i.i.d. from a normal
    distribution with the parameter's mean and standard deviation (1 if constant).
    Layer ``i`` is re-initialised under a forked RNG seeded with ``seed + i``, so results
    are reproducible and the global RNG is left as it was.

    Args:
        model: the model to test; it is deep-copied, never modified.
        x: the input batch.
        target: as for :func:`relprop.explain`; it is resolved once on the original model
            (``None``: its top class) and that resolved target is used for every map.
        attribute: ``attribute(model, x, target) -> Explanation``, e.g. ``relprop.explain``
            (default) or a method from :mod:`relprop.methods`; wrap it in a lambda to fix
            other arguments (composite, …).
        layers: names (as in ``named_modules()``) in the order to randomise; default every
            module that owns parameters, in reverse order of first execution.
        mode: ``"cascading"`` (default) or ``"independent"``.
        pool: channel pooling of image maps before ranking (``"abs_sum"`` is the paper's
            "absolute value" variant); ``None`` ranks all elements of maps of any shape.
        seed: seeds the re-initialisation.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(attribute):
        raise InvalidInputError(f"attribute must be callable as attribute(model, x, target), "
                                f"got {type(attribute).__name__}")
    if mode not in ("cascading", "independent"):
        raise InvalidInputError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    if pool is not None:
        check_pool(pool)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"seed must be an int ≥ 0, got {seed!r}")
    working = _copy(model)
    chosen = _layers(working, x, layers)
    original = _explain(attribute, working, x, target, "the original model")
    reference = _maps(original.relevance, pool, "the original model")
    correlations: dict[str, Tensor] = {}
    randomisation: dict[str, str] = {}
    for i, name in enumerate(chosen):
        if mode == "independent":
            working = _copy(model)
        randomisation[name] = _randomise(dict(working.named_modules())[name], seed + i)
        where = f"the model with {name!r} randomised"
        randomised = _explain(attribute, working, x, original.target, where)
        correlations[name] = spearman(reference, _maps(randomised.relevance, pool, where))
    protocol: dict[str, object] = {
        "metric": "model_parameter_randomisation", "mode": mode, "layers": list(chosen),
        "randomisation": randomisation, "seed": seed, "pool": pool,
        "correlation": "spearman (ties: average ranks)", "method": original.method,
        "target": repr(original.target), "undefined": "NaN: a map is constant (no ranking)",
    }
    return RandomisationResult(correlations=correlations, protocol=protocol)


def _copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as error:  # any failure to copy means we cannot work without touching it
        raise InvalidInputError(
            f"the model cannot be deep-copied ({type(error).__name__}: {error}); randomisation "
            "never modifies the user's model, so it needs a copy: make it copyable"
        ) from error


def _layers(model: nn.Module, x: Tensor, layers: Sequence[str] | None) -> list[str]:
    modules = dict(model.named_modules())
    if layers is not None:
        if isinstance(layers, str):
            raise InvalidInputError(f"layers must be a sequence of names, got the string "
                                    f"{layers!r}; wrap it in a list")
        chosen = list(layers)
        unknown = [n for n in chosen if n not in modules]
        if unknown:
            raise InvalidInputError(f"no module named {unknown[:5]} in the model; names are as "
                                    f"in model.named_modules(), e.g. {list(modules)[1:6]}")
        bare = [n for n in chosen if not list(modules[n].parameters(recurse=False))]
        if bare:
            raise InvalidInputError(f"module(s) {bare[:5]} own no parameters to randomise; "
                                    "name the modules that hold the weights")
        if len(set(chosen)) != len(chosen) or not chosen:
            raise InvalidInputError(f"layers must be distinct names, at least one; got {chosen}")
        return chosen
    executed: dict[str, None] = {}  # first calls, in order
    names = {id(m): n for n, m in modules.items()}
    hooks = [m.register_forward_pre_hook(lambda m, _: executed.setdefault(names[id(m)]))
             for m in modules.values() if list(m.parameters(recurse=False))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    if not executed:
        raise InvalidInputError("the model runs no module that owns parameters: nothing to "
                                "randomise")
    return list(executed)[::-1]


def _randomise(module: nn.Module, seed: int) -> str:
    """Re-initialise ``module``'s own parameters in place; say how."""
    own = list(module.parameters(recurse=False))
    cuda = sorted({p.device.index or 0 for p in own if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            return "reset_parameters()"
        for p in own:
            std = float(p.std()) if p.numel() > 1 else 0.0
            p.normal_(float(p.mean()), std if std > 0 else 1.0)
    return "normal(mean, std) of each own parameter"


def _explain(attribute: Attribute, model: nn.Module, x: Tensor, target: Any,
             where: str) -> Explanation:
    explanation = attribute(model, x, target)
    if not isinstance(explanation, Explanation):
        raise InvalidInputError(f"attribute must return a relprop.Explanation, got "
                                f"{type(explanation).__name__} for {where}")
    return explanation


def _maps(relevance: Tensor, pool: Pool | None, where: str) -> Tensor:
    try:
        if pool is None:
            return flat_finite(relevance, "the map")
        return pool_channels(check_map(relevance, "the map").to(torch.float64), pool)
    except InvalidInputError as error:
        raise InvalidInputError(f"{error} (of {where})") from None
