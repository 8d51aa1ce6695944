"""Import helpers for test-only oracles whose imports reach torchvision (not installable here).

zennit's top-level package imports ``torchvision.models.resnet`` (for its ResNet canonizer),
and quantus imports zennit when it is installed. A minimal stand-in with the two classes
zennit names is put into ``sys.modules`` for the import only, and removed afterwards.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """``torchvision.models.resnet`` with the two classes ``zennit.torchvision`` imports."""
    root = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")

    class BasicBlock(nn.Module):
        """Stand-in for torchvision's ResNet BasicBlock (never instantiated)."""

    class Bottleneck(nn.Module):
        """Stand-in for torchvision's ResNet Bottleneck (never instantiated)."""

    resnet.BasicBlock = BasicBlock  # type: ignore[attr-defined]
    resnet.Bottleneck = Bottleneck  # type: ignore[attr-defined]
    models.resnet = resnet  # type: ignore[attr-defined]
    root.models = models  # type: ignore[attr-defined]
    return {"torchvision": root, "torchvision.models": models,
            "torchvision.models.resnet": resnet}


@contextmanager
def torchvision_stand_in() -> Iterator[None]:
    """A torchvision stand-in in ``sys.modules`` for the block, when torchvision is absent."""
    stand_in = {} if "torchvision" in sys.modules or installed("torchvision") else (
        _torchvision_stand_in())
    added = {name: module for name, module in stand_in.items() if name not in sys.modules}
    sys.modules.update(added)
    try:
        yield
    finally:
        for name, module in added.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
