"""Loading the model to explain: ``module:callable`` (+ weights), a ``.pt2`` program, or a
Hugging Face folder; weights only in ways that cannot run code unless the user says so."""

from __future__ import annotations

import hashlib
import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelLoadError, UnsafePickleError

__all__ = ["LoadedModel", "load_model", "load_callable", "load_weights", "model_fingerprint"]


@dataclass
class LoadedModel:
    """The model in eval mode, its tokenizer (Hugging Face text models), and where it came
    from: ``kind`` is ``"callable"``, ``"export"`` or ``"huggingface"``."""

    module: nn.Module
    kind: str
    fingerprint: str
    tokenizer: Any = None


def load_callable(spec: str, what: str = "model") -> Any:
    """The object ``spec`` = ``"package.module:attribute"`` names (dots for nested attributes)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ModelLoadError(f"--{what} {spec!r} must be 'package.module:callable' (or, for the "
                             "model, a .pt2 file or a Hugging Face model folder)")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelLoadError(f"--{what} {spec!r}: cannot import {module_name!r} ({error}); "
                             "is its folder on PYTHONPATH?") from error
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"--{what} {spec!r}: {module_name!r} has no {attribute!r}")
        obj = getattr(obj, part)
    return obj


def load_weights(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file loaded with ``weights_only=True``.

    A pickle that needs code to load is refused with :class:`UnsafePickleError` unless
    ``trust_pickle`` (which runs it: only for files you trust). A ``{"state_dict": ...}`` or
    ``{"model": ...}`` checkpoint gives its inner dict.
    """
    if not path.is_file():
        raise ModelLoadError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own types
            raise ModelLoadError(f"--weights {path}: not a readable safetensors file "
                                 f"({error})") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            raise UnsafePickleError(
                f"--weights {path}: this pickle needs to run code to load (torch.load with "
                f"weights_only=True refused it: {str(error).splitlines()[0][:200]}). A pickle "
                "can run any program on your machine: convert it to .safetensors, or pass "
                "--trust-pickle if you trust its source") from error
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - zip/EOF errors of a damaged file
        raise ModelLoadError(f"--weights {path}: not a torch file that loads ({error})") from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise ModelLoadError(f"--weights {path}: holds a {type(state).__name__}, not a state "
                             "dict of tensors")
    return state


def model_fingerprint(module: nn.Module, kind: str) -> str:
    """sha256 of the class name and every parameter and buffer (name, dtype, shape, values)."""
    digest = hashlib.sha256(f"{kind}:{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
                      .tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _load_callable_model(spec: str, weights: Path | None, trust_pickle: bool) -> nn.Module:
    factory = load_callable(spec)
    try:
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) \
            else factory
    except Exception as error:  # noqa: BLE001 - the user's code
        raise ModelLoadError(f"--model {spec}: calling it raised {type(error).__name__}: "
                             f"{error}") from error
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--model {spec} returned a {type(model).__name__}, not an "
                             "nn.Module")
    if weights is not None:
        state = load_weights(weights, trust_pickle)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ModelLoadError(f"--weights {weights} does not fit --model {spec}: "
                                 f"{str(error).splitlines()[0]} ...") from error
    return model.eval()


def _load_program(path: Path) -> nn.Module:
    try:
        program = torch.export.load(str(path))
    except Exception as error:  # noqa: BLE001 - export raises many types
        raise ModelLoadError(f"--model {path}: not a torch.export program that loads "
                             f"({error})") from error
    return program.module()


def _load_huggingface(path: Path) -> tuple[nn.Module, Any]:
    try:
        import transformers
    except ImportError as error:
        raise ModelLoadError(f"--model {path} is a Hugging Face folder: install transformers "
                             "(pip install transformers)") from error
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        names = list(getattr(config, "architectures", None) or [])
        cls = getattr(transformers, names[0], None) if names else None
        if cls is None:
            cls = transformers.AutoModelForSequenceClassification
        model = cls.from_pretrained(str(path), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - transformers raises many types
        raise ModelLoadError(f"--model {path}: the Hugging Face model did not load "
                             f"({error})") from error
    tokenizer = None
    if any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json",
                                                "vocab.txt")):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path),
                                                                   local_files_only=True)
        except Exception as error:  # noqa: BLE001
            raise ModelLoadError(f"--model {path}: its tokenizer did not load "
                                 f"({error})") from error
    return model.eval(), tokenizer


def load_model(spec: str, weights: str | Path | None = None, *, trust_pickle: bool = False,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load ``spec``: ``package.module:callable``, a ``.pt2`` file, or a Hugging Face folder
    (with ``config.json``); ``weights`` (a state dict file) only with a callable."""
    path = Path(spec)
    weights_path = Path(weights) if weights is not None else None
    tokenizer = None
    if path.suffix == ".pt2" or (path.is_dir() and (path / "config.json").is_file()):
        if not path.exists():
            raise ModelLoadError(f"--model {path}: no such file")
        if weights_path is not None:
            raise ModelLoadError(f"--weights is for a module:callable model; {path} holds its "
                                 "own weights")
        if path.suffix == ".pt2":
            module, kind = _load_program(path), "export"
        else:
            (module, tokenizer), kind = _load_huggingface(path), "huggingface"
    elif path.suffix in (".pt", ".pth", ".bin", ".safetensors") or path.is_dir():
        raise ModelLoadError(f"--model {spec}: give the model as 'package.module:callable' "
                             "and this file as --weights (or a .pt2 program, or a Hugging "
                             "Face folder with config.json)")
    else:
        module, kind = _load_callable_model(spec, weights_path, trust_pickle), "callable"
    fingerprint = model_fingerprint(module, kind)
    return LoadedModel(module.to(device), kind, fingerprint, tokenizer)
