"""Deprecated: the benchmarks moved to the separate package ``relprop_bench`` (``benchmarks/``).

``import relprop.bench`` and ``import relprop.bench.<module>`` still work where
``relprop_bench`` is installed (``pip install -e benchmarks/``): each ``relprop.bench.<module>``
is the very module ``relprop_bench.<module>``. Import ``relprop_bench`` instead.
"""

from __future__ import annotations

import importlib
import sys
import warnings

warnings.warn(
    "relprop.bench is deprecated: the benchmarks moved to the package relprop_bench "
    "(pip install -e benchmarks/); import relprop_bench instead",
    DeprecationWarning,
    stacklevel=2,
)

try:
    import relprop_bench as _target
except ImportError as _error:
    raise ImportError(
        "relprop.bench moved to the separate package relprop_bench, which is not installed: "
        "pip install -e benchmarks/ (from a checkout of relprop)",
        name=__name__,
    ) from _error

_MODULES = ("cluttered", "localisation", "minilm", "models", "plot", "presets", "report",
            "sentiment", "stats", "token_deletion")

for _name in _MODULES:
    _module = importlib.import_module(f"relprop_bench.{_name}")
    sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module

__path__: list[str] = []  # a package in name, so that ``import relprop.bench.<module>`` works
__all__ = list(_MODULES)
del _name, _module, _target
