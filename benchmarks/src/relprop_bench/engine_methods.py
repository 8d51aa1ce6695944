"""relprop's rows of the engine benchmark (``bench/engine.py``): one closure per method.

* ``relprop epsilon`` — uniform LRP-ε (``Epsilon(1e-6)`` on every layer, the default rules
  of the other ops);
* ``relprop epsilon_plus_flat`` / ``relprop epsilon_gamma_box`` — the z⁺ and γ composites;
* ``relprop attnlrp`` — :func:`relprop.composites.attnlrp` (transformers);
* ``relprop default`` — :func:`relprop.composites.default`, what ``explain`` uses without a
  composite (LRP_CMP:α2, α2β1 on a CNN's convolutions);
* ``relprop K targets`` — one call explaining ``k`` classes per sample (``k`` next tokens,
  each at its own position, for a decoder), with the model's main composite;
* ``relprop K calls`` — the same ``k`` maps by ``k`` separate calls.

Classification targets are the logits of classes ``(7 i + 13 j) % classes``; for a decoder
(token ids in, ``(batch, sequence, vocabulary)`` out) the next-token logit of the token
``target[i]`` at the last position, and for ``k`` tokens the last ``k`` positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["relprop_method", "main_composite"]


def main_composite(model_is_transformer: bool) -> Any:
    from relprop import composites

    return composites.attnlrp() if model_is_transformer else composites.epsilon_plus_flat()


def _composite(method: str, transformer: bool, tokens: bool = False) -> Any:
    from relprop import composites, rules

    name = method.split(" ", 1)[1]
    if name == "epsilon":
        return composites.uniform(rules.Epsilon(1e-6))
    if name == "epsilon_plus_flat":
        return composites.epsilon_plus_flat()
    if name == "epsilon_gamma_box":
        return composites.epsilon_gamma_box(low=-3.0, high=3.0)
    if name == "attnlrp":
        return composites.attnlrp()
    if name == "default":  # what explain uses without a composite (α2β1 on CNN convs)
        return composites.default(tokens)
    if name in ("K targets", "K calls"):
        return main_composite(transformer)
    raise ValueError(f"unknown relprop method {method!r}")


def _targets(x: Tensor, target: Tensor, num_classes: int, k: int) -> tuple[Any, list[Any]]:
    """The K-target argument of one call, and the K single targets of separate calls."""
    from relprop.targets import TokenLogit

    batch = target.shape[0]
    if not x.is_floating_point():  # a decoder: the last k positions, their next tokens
        length = x.shape[1]
        tokens = (target[:, None] + 13 * torch.arange(k, device=x.device)[None]) % num_classes
        positions = torch.arange(length - k, length, device=x.device)[None].expand(batch, k)
        return (TokenLogit(tokens, positions),
                [TokenLogit(tokens[:, j], length - k + j) for j in range(k)])
    classes = (target[:, None] + 13 * torch.arange(k, device=x.device)[None]) % num_classes
    return classes, [classes[:, j] for j in range(k)]


def relprop_method(method: str, model: Any, x: Tensor, target: Tensor, num_classes: int,
                   k: int = 10) -> tuple[Callable[[], None], str]:
    """The closure that runs ``method`` once, and a note for the table."""
    import relprop
    from relprop.targets import TokenLogit

    transformer = not x.is_floating_point() or any(
        type(m).__name__ in ("Block", "DecoderLayer") for m in model.modules())
    composite = _composite(method, transformer, not x.is_floating_point())
    single: Any = target if x.is_floating_point() else TokenLogit(target)
    if method == "relprop K targets":
        many, _ = _targets(x, target, num_classes, k)

        def run_many() -> None:
            relprop.explain(model, x, many, composite)
        return run_many, f"K = {k}, {composite.name}"
    if method == "relprop K calls":
        _, parts = _targets(x, target, num_classes, k)

        def run_calls() -> None:
            for part in parts:
                relprop.explain(model, x, part, composite)
        return run_calls, f"{k} separate calls, {composite.name}"
    def run() -> None:
        relprop.explain(model, x, single, composite)
    return run, ""
