"""Saving and loading :class:`~relprop.concepts.References`: plain tensors and a JSON header,
in safetensors (``*.safetensors``) or a ``torch.save`` file that ``torch.load(...,
weights_only=True)`` reads. Written to a temporary file and renamed: a file is whole or absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidInputError

FORMAT = "relprop.concepts.references/1"


def write(path: str | os.PathLike[str], tensors: dict[str, Tensor], header: dict[str, Any]
          ) -> None:
    """Write ``tensors`` and the JSON-able ``header`` to ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".partial")
    meta = json.dumps({"format": FORMAT, **header}, sort_keys=True)
    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    if target.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(plain, str(temporary), metadata={"relprop": meta})
    else:
        torch.save({"tensors": plain, "header": meta}, temporary)
    os.replace(temporary, target)


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and header that :func:`write` stored at ``path``."""
    source = Path(path)
    if not source.is_file():
        raise InvalidInputError(f"no references are stored at {str(source)!r}")
    if source.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(source), framework="pt") as handle:
            meta = (handle.metadata() or {}).get("relprop", "{}")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    else:
        stored = torch.load(source, weights_only=True)
        tensors, meta = stored["tensors"], stored["header"]
    header = json.loads(meta)
    if header.pop("format", None) != FORMAT:
        raise InvalidInputError(f"{str(source)!r} does not hold relprop concept references")
    return tensors, header
