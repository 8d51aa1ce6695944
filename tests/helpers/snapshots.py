"""Everything about a model that explaining must leave as it was."""

from __future__ import annotations

import gc
from typing import Any

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Parameters and buffers, their versions and flags, modes, hooks and global torch state."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "versions": [p._version for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for m in model.modules()],
        "grad_mode": torch.is_grad_enabled(),
        "function_modes": len(torch.overrides._get_current_function_mode_stack()),
        "global_module_hooks": (len(nn.modules.module._global_forward_hooks),
                                len(nn.modules.module._global_forward_pre_hooks)),
        "garbage_collector": gc.isenabled(),
    }


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Fail naming the first thing that differs between two snapshots."""
    assert before.keys() == after.keys()
    for key in before:
        if key == "state":
            for name, value in before[key].items():
                assert torch.equal(value, after[key][name]), name
        else:
            assert before[key] == after[key], key
