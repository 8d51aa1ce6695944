#!/usr/bin/env python
"""Σ R / f(x) of the grouped-convolution rows on the trained nets, as is and bias-free.

A thin wrapper of :mod:`relprop_bench.conservation` (in ``benchmarks/``)::

    python bench/conservation.py --variants mobilenet --seeds 0-4 --n 256 --threads 1
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks" / "src")]

from relprop_bench.conservation import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
