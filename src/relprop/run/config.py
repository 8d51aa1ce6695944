"""The settings of a dataset run, checked at once, and what the manifest records of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import composites as _composites
from ..composites import Composite
from ..methods import METHODS
from .errors import RunError
from .metrics import METRICS
from .preprocess import Preprocess

__all__ = ["RunConfig", "COMPOSITES", "resolve_composite", "parse_target"]

#: composites that need no argument, by name (``--composite NAME``); ``epsilon`` is
#: ``uniform(Epsilon())``, ε = 1e-6 on every layer
COMPOSITES = ("default", "epsilon", "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat",
              "epsilon_plus", "epsilon_plus_flat", "montavon2019", "lrp_cmp", "attnlrp", "cp_lrp")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_composite(name: str | None, tokens: bool) -> Composite:
    """The composite called ``name`` (or ``module:callable`` returning one); ``None`` →
    the default for the input kind."""
    if name is None or name == "default":
        return _composites.default(tokens)
    if name == "epsilon":
        from ..rules import Epsilon

        return _composites.uniform(Epsilon())
    if ":" in name:
        from .model import load_callable

        made = load_callable(name, "composite")
        made = made() if callable(made) and not isinstance(made, Composite) else made
    elif name in COMPOSITES:
        made = getattr(_composites, name)()
    else:
        raise RunError(f"--composite {name!r}: choose one of {', '.join(COMPOSITES)}, or "
                       "give 'module:callable' returning a relprop Composite")
    if not isinstance(made, Composite):
        raise RunError(f"--composite {name!r} gave a {type(made).__name__}, not a Composite")
    return made


def parse_target(text: str | int) -> str | int:
    """``"true"``, ``"predicted"`` or a class index."""
    if isinstance(text, int) or str(text).lstrip("-").isdigit():
        value = int(text)
        if value < 0:
            raise RunError(f"--target {text}: a class index is at least 0")
        return value
    if text not in ("true", "predicted"):
        raise RunError(f"--target {text!r}: give true, predicted or a class index")
    return str(text)


@dataclass
class RunConfig:
    """Everything ``relprop explain`` over a dataset is told (see ``relprop explain -h``)."""

    model: str
    data: str | Path
    out: str | Path
    weights: str | Path | None = None
    trust_pickle: bool = False
    labels: str | Path | None = None
    resume: bool = False
    batch_size: int = 32
    workers: int = 2
    device: str | None = None
    composite: str | None = None
    target: str | int = "predicted"
    methods: tuple[str, ...] = ("lrp",)
    metrics: tuple[str, ...] = ()
    preprocess: Preprocess = field(default_factory=Preprocess)
    max_length: int = 128
    full: bool = False
    resolution: int | None = 112
    dtype: str = "float16"
    thumbnails: bool = True
    strict: bool = True
    quiet: bool = False

    def check(self) -> None:
        """Named errors for settings that cannot work, before anything is loaded."""
        if self.batch_size < 1:
            raise RunError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise RunError(f"--workers must be at least 0, got {self.workers}")
        self.target = parse_target(self.target)
        self.methods = tuple(self.methods)
        if not self.methods:
            raise RunError("--methods: give at least one method")
        for method in self.methods:
            if method not in METHODS:
                raise RunError(f"--methods: unknown method {method!r}; choose from "
                               + ", ".join(sorted(METHODS)))
        for metric in self.metrics:
            if metric not in METRICS:
                raise RunError(f"--metrics: unknown metric {metric!r}; choose from "
                               + ", ".join(sorted(METRICS)))
        if self.dtype not in DTYPES:
            raise RunError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.resolution is not None and self.resolution < 0:
            raise RunError(f"--resolution must be at least 0, got {self.resolution}")

    def settings(self) -> dict[str, Any]:
        """What changes the stored result; a resume must have the same."""
        return {"batch_size": self.batch_size, "composite": self.composite or "default",
                "target": self.target, "methods": list(self.methods),
                "metrics": list(self.metrics), "preprocess": self.preprocess.settings(),
                "max_length": self.max_length, "labels": str(self.labels) if self.labels
                else None, "strict": self.strict,
                "storage": {"full": self.full, "resolution": self.resolution or None,
                            "dtype": self.dtype, "thumbnails": self.thumbnails}}

    def torch_dtype(self) -> torch.dtype:
        """The storage dtype."""
        return DTYPES[self.dtype]

