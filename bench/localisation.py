#!/usr/bin/env python
"""Localisation benchmark: μ, μ_w, μ<0.25 and AOPC of every LRP preset and attribution method.

A thin wrapper of ``relprop-bench localisation`` (the code lives in
:mod:`relprop_bench.localisation`, in ``benchmarks/``); every flag is the same. Trains (or
loads from the cache) VGG-style nets on cluttered digits, writes ``localisation.md``,
``aopc_curves.png`` and ``results.pt`` under ``--out``, shows progress on stderr and prints
the table::

    python bench/localisation.py --smoke --out /tmp/loc          # seconds
    python bench/localisation.py --out bench-out                 # vgg4, vgg8, vgg8-bn x 3 seeds
    python bench/localisation.py --variants vgg8 --seeds 0-4 --n 512
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks" / "src")]

from relprop_bench.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["localisation", *sys.argv[1:]]))
