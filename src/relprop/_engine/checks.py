"""Checks of the model, input and output shared by every attribution method."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError, ProbabilityOutputWarning
from .aten import is_exported, is_program, training_ops
from .eager import walk


def check_model(model: nn.Module, purpose: str = "the explanation",
                eval_mode: bool = True) -> None:
    """Refuse anything but an ``nn.Module`` in eval mode, or a ``torch.export`` program
    (``ExportedProgram`` or its ``.module()``) exported in eval mode.

    An exported graph has no train/eval switch (its ``eval()`` raises): the mode it was
    exported in is in its ops, so those are checked instead (``batch_norm(training=True)``,
    ``dropout(train=True)``). ``eval_mode=False``: a module's eval mode is left to the
    caller, who walks its modules anyway (:func:`check_eval_mode`)."""
    if is_program(model):
        model = model.module()
    if _is_onnx(model):
        raise InvalidInputError(
            "model is an ONNX model: relprop follows the ops of a PyTorch forward pass. "
            "Explain the PyTorch module the ONNX file was exported from (or its "
            "torch.export program), or convert the ONNX model to an nn.Module with "
            "onnx2torch (onnx2torch.convert(path)) where torchvision is installed")
    if isinstance(model, str | os.PathLike):
        raise InvalidInputError(
            f"model is a path ({os.fspath(model)!r}), not a module: load it first "
            "(torch.export.load(path) for a .pt2 program, torch.load or from_pretrained for "
            "weights into the model's class)")
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if is_exported(model):
        ops = training_ops(model)
        if ops:
            raise InvalidInputError(
                f"the program was exported in training mode ({len(ops)} ops, e.g. {ops[:3]}): "
                f"dropout and batch statistics would make {purpose} random, and the graph "
                "updates its BatchNorm statistics. Call model.eval() before "
                "torch.export.export(model, ...) and export again.")
        return
    if eval_mode:
        check_eval_mode(model, walk(model), purpose)


def check_eval_mode(model: nn.Module, named: Sequence[tuple[str, nn.Module]],
                    purpose: str = "the explanation") -> None:
    """Refuse a module in training mode; ``named``: its modules by name (``walk(model)``).
    An exported graph is judged by its ops (:func:`check_model`) instead."""
    if not any(m.training for _, m in named) or is_exported(model):
        return
    training = [name or "<model>" for name, m in named if m.training]
    raise InvalidInputError(
        f"model is in training mode ({len(training)} modules, e.g. {training[:3]}): dropout "
        f"and batch statistics would make {purpose} random. Call model.eval() first."
    )


def _is_onnx(model: object) -> bool:
    """An ONNX file path or an ``onnx.ModelProto`` (found by type name: onnx need not be
    installed)."""
    if isinstance(model, str | os.PathLike):
        return os.fspath(model).lower().endswith(".onnx")
    return type(model).__name__ == "ModelProto" and "onnx" in type(model).__module__


def check_input(x: Tensor) -> None:
    """Refuse inputs that cannot carry relevance: not float, empty, NaN or inf."""
    if not isinstance(x, Tensor):
        raise InvalidInputError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() and x.dim() >= 3 and not x.is_complex():
        raise _integer_image(x)
    if not x.is_floating_point():
        raise InvalidInputError(
            f"x must be floating point to carry relevance, got dtype {x.dtype}; convert it "
            "(x.float()), or explain token ids through their embeddings"
        )
    if x.dim() == 0 or x.shape[0] == 0:
        raise InvalidInputError(f"x must be a non-empty batch, got shape {tuple(x.shape)}")
    # a finite sum has only finite terms (NaN and inf propagate): one reduction without a
    # mask of the input's size; a sum that overflows is looked at value by value
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise InvalidInputError(f"x contains NaN or inf (first at index {bad})")


def _integer_image(x: Tensor) -> InvalidInputError:
    return InvalidInputError(
        f"x is an integer image (dtype {str(x.dtype).removeprefix('torch.')}, shape "
        f"{tuple(x.shape)}): convert it to float and normalise it as the model expects, "
        "e.g. x.float() / 255"
    )


def check_token_ids(x: Tensor) -> None:
    """Refuse token-id inputs that are empty or not 2-D (batch, sequence).

    An integer tensor of three or more dimensions is not token ids but an integer image
    (uint8 pixels, say): it is refused with a message saying to convert it to float.
    """
    if x.dtype == torch.bool:
        raise InvalidInputError(
            f"x has dtype torch.bool (shape {tuple(x.shape)}): a mask carries no relevance; "
            "pass floating-point features (x.float()) or integer token ids")
    if x.dim() >= 3:
        raise _integer_image(x)
    if x.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise InvalidInputError(f"token ids must be an integer tensor, got dtype {x.dtype}")
    if x.dim() != 2 or x.numel() == 0:
        raise InvalidInputError(
            f"token ids must be a non-empty (batch, sequence) tensor, got shape {tuple(x.shape)}")


def select_output(output: object) -> object:
    """The tensor to explain from a model's output: itself, or the ``logits`` of a
    Hugging Face model output."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    keys = list(output.keys()) if hasattr(output, "keys") else None
    raise InvalidInputError(
        f"the model returned {type(output).__name__}"
        + (f" with fields {keys}" if keys else "")
        + ", not a tensor; wrap it so that it returns the output to explain (e.g. the logits "
        "or a pooled embedding)"
    )


def check_output(output: object) -> None:
    """Refuse model outputs that are not a finite tensor depending on the input."""
    if not isinstance(output, Tensor):
        raise InvalidInputError(
            f"the model returned {type(output).__name__}, not a tensor; wrap it so that it "
            "returns the output to explain (e.g. the logits)"
        )
    if not output.requires_grad:
        raise InvalidInputError("the model output does not depend on the input x")
    if output.numel() and not _all_finite(output):
        raise InvalidInputError("the model output contains NaN or inf")


def _all_finite(t: Tensor) -> bool:
    """One reduction instead of a boolean temporary the size of ``t`` (a vocabulary of logits
    per position): a NaN propagates into min/max and an inf shows there."""
    if not t.is_floating_point():
        return True
    low, high = torch.aminmax(t.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def warn_if_probabilities(output: Tensor, *, stacklevel: int = 3) -> None:
    """Warn with :class:`~relprop.errors.ProbabilityOutputWarning` when ``output`` looks like
    probabilities: every row along the last dimension non-negative and summing to 1.

    LRP of a probability explains the softmax's saturated output, not the evidence the
    logits carry; the warning points to the logits or :class:`relprop.targets.LogOdds`.
    Only outputs with ``dim >= 2`` and more than one class along the last dimension are
    looked at. The cost is one pass over the output (the row sums), plus a minimum taken
    only when every row sums to 1; logits rarely pass the first test. ``stacklevel`` 3
    points at the caller of the function that calls this one (the user's ``explain`` call).
    """
    if (not isinstance(output, Tensor) or output.dim() < 2 or output.shape[-1] < 2
            or not output.is_floating_point() or output.numel() == 0):
        return
    values = output.detach()
    tolerance = 1e-4 if values.dtype in (torch.float32, torch.float64) else 1e-2
    sums = values.sum(dim=-1, dtype=torch.float32)
    low, high = torch.aminmax(sums)
    if not (float(high) - 1.0 <= tolerance and 1.0 - float(low) <= tolerance):
        return
    if float(values.min()) < 0:
        return
    warnings.warn(
        f"the model output (shape {tuple(output.shape)}) looks like probabilities: every row "
        f"is non-negative and sums to 1 within {tolerance:g}. LRP then explains a saturated "
        "softmax, not the evidence for the class; explain the logits instead (remove the "
        "model's final softmax) or use target=relprop.targets.LogOdds(c) on the logits",
        ProbabilityOutputWarning, stacklevel=stacklevel)
