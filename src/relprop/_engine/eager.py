"""What an explanation can be run on: eager modules, unwrapped from compilers, exported
programs (their aten graph, :mod:`relprop._engine.aten`), without hooks that would see the
relevance signals."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from .aten import as_module


def walk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``list(model.named_modules())``: the same names in the same order, each module once,
    by a loop over ``_modules`` instead of a generator per module (an explanation walks the
    model at every call; EfficientNet-B0's 264 modules: 0.1 ms instead of 0.13-0.3)."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        prefix, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        found.append((prefix, module))
        children = module._modules
        if children:
            stack.extend([(f"{prefix}.{name}" if prefix else name, child)
                          for name, child in reversed(children.items()) if child is not None])
    return found


def eager_module(model: nn.Module) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
    """The eager module to explain, and its modules by name (:func:`walk`):
    ``torch.compile(m)`` gives ``m`` back; a ``torch.export`` program (or its ``.module()``)
    runs its aten graph node by node (see :class:`relprop._engine.aten.ExportedModule`); a
    TorchScript module, a module with backward hooks, or parameters made in inference mode
    are refused with what to pass instead."""
    model = as_module(model)
    original = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
        model = original  # torch.compile: the module it wraps computes the same function
    named = walk(model)
    for path, module in named:  # one loop, no generator per module: this runs at every call
        if module._backward_hooks or module._backward_pre_hooks \
                or isinstance(module, torch.jit.ScriptModule):
            _refuse(module, path)
        for tensors in (module._parameters, module._buffers):
            for tensor in tensors.values():
                if tensor is not None and tensor.is_inference():
                    _refuse(module, path)
    for kind, table in (("backward", nn.modules.module._global_backward_hooks),
                        ("backward pre", nn.modules.module._global_backward_pre_hooks)):
        if table:
            raise InvalidInputError(
                f"a global module {kind} hook is registered "
                f"({getattr(next(iter(table.values())), '__name__', '?')!r}): it would see the "
                "relevance signals of every module. Remove it for the explanation.")
    return model, named


def _refuse(module: nn.Module, path: str) -> None:
    """Raise what is wrong with ``module`` (at ``path``): a TorchScript module, a backward
    hook, or a parameter or buffer made in inference mode."""
    where = path or "<model>"
    if isinstance(module, torch.jit.ScriptModule):
        raise InvalidInputError(
            f"module '{where}' is a TorchScript module ({type(module).__name__}): relprop "
            "follows the ops of an eager forward pass, which scripted code does not show. "
            "Explain the eager nn.Module you scripted (before torch.jit.script/trace).")
    hooks = {**module._backward_hooks, **module._backward_pre_hooks}
    if hooks:
        hook = next(iter(hooks.values()))
        raise InvalidInputError(
            f"module '{where}' has a backward hook ({getattr(hook, '__name__', hook)!r}, "
            "from register_full_backward_hook / register_full_backward_pre_hook): it would "
            "see, and could change, the relevance signals instead of gradients. Remove it "
            "for the explanation (handle.remove()) and register it again afterwards.")
    for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
        if tensor is not None and tensor.is_inference():
            full = f"{path}.{name}" if path else name
            raise InvalidInputError(
                f"'{full}' was created inside torch.inference_mode(): inference tensors "
                "cannot take part in a backward pass, which LRP is. Build or load the "
                "model outside inference mode (explaining inside inference mode is fine).")


def usable_input(x: Tensor) -> Tensor:
    """``x``, or a normal copy of it if it was created inside ``torch.inference_mode()``."""
    if isinstance(x, Tensor) and x.is_inference():
        with torch.inference_mode(False):
            return x.clone()
    return x


@contextmanager
def eager(model: nn.Module, modules: Iterable[nn.Module] | None = None) -> Iterator[None]:
    """Grad on and inference mode off for the block; submodules compiled with
    ``torch.compile`` run their eager code (dynamo's ``force_eager`` stance). ``modules``:
    the model's modules, where the caller has them."""
    with torch.inference_mode(False), torch.enable_grad():
        every = model.modules() if modules is None else modules
        if not any(type(m).__name__ == "OptimizedModule" for m in every):
            yield
            return
        with torch.compiler.set_stance("force_eager"):
            yield


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, and on again after it if it was
    (also when the block raises). An explanation makes tens of thousands of small objects
    (op records, saved-tensor slots, closures); the full collections they would trigger scan
    every object of the process, torch's included: a fifth of the time on a net of small
    layers. Nothing of the explanation needs the collector: its objects are freed by
    reference counting, or with the session's cycles afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
