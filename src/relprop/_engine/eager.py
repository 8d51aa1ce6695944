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


def eager_module(model: nn.Module) -> nn.Module:
    """The eager module to explain: ``torch.compile(m)`` gives ``m`` back; a
    ``torch.export`` program (or its ``.module()``) runs its aten graph node by node (see
    :class:`relprop._engine.aten.ExportedModule`); a TorchScript module, a module with
    backward hooks, or parameters made in inference mode are refused with what to pass
    instead."""
    model = as_module(model)
    original = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
        model = original  # torch.compile: the module it wraps computes the same function
    for module in model.modules():  # names are made only for an error (a walk per call)
        if not (isinstance(module, torch.jit.ScriptModule) or module._backward_hooks
                or module._backward_pre_hooks or _inference_tensors(module)):
            continue
        path = next(p for p, m in model.named_modules() if m is module)
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
    for kind, table in (("backward", nn.modules.module._global_backward_hooks),
                        ("backward pre", nn.modules.module._global_backward_pre_hooks)):
        if table:
            raise InvalidInputError(
                f"a global module {kind} hook is registered "
                f"({getattr(next(iter(table.values())), '__name__', '?')!r}): it would see the "
                "relevance signals of every module. Remove it for the explanation.")
    return model


def _inference_tensors(module: nn.Module) -> bool:
    """Whether one of ``module``'s own parameters or buffers was made in inference mode."""
    return any(t is not None and t.is_inference()
               for table in (module._parameters, module._buffers) for t in table.values())


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
        walk = model.modules() if modules is None else modules
        if not any(type(m).__name__ == "OptimizedModule" for m in walk):
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
