#!/usr/bin/env python
"""relprop's fixed cost per call, split into forward pass, backward pass and the rest.

At a tiny input side (8² by default) a CNN's convolutions cost little, and what an
explanation adds to a plain gradient is the Python it runs per op and per call. This script
times, in interleaved rounds in one process (minimum over rounds, wall clock), the plain input
gradient, the floor engine (``relprop_bench.floor``: op interception with nothing else) and
relprop's uniform ε, each split into its forward pass, its backward pass and (relprop) the
set-up, checks and teardown around them. ``--against DIR`` also times another checkout's
relprop (``DIR/src/relprop``, copied to a temporary package ``relprop_base``) in the same
rounds, and checks that both give the same relevance to the bit.

Usage::

    python bench/fixed_cost.py --models efficientnet_b0,resnet50
    git worktree add --detach /tmp/base <commit>
    python bench/fixed_cost.py --against /tmp/base --rounds 60
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "src", ROOT / "benchmarks" / "src", ROOT / "bench"):
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.append(str(_path))


def _timed_stages(explain_module: Any) -> dict[str, float]:
    """Wrap ``_forward`` and ``_relevance_for`` of an ``explain`` module so that each call
    leaves its duration in the returned dict."""
    last: dict[str, float] = {}
    for name in ("_forward", "_relevance_for"):
        original = getattr(explain_module, name)

        def timed(*args: Any, _original: Callable[..., Any] = original, _name: str = name,
                  **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                last[_name] = time.perf_counter() - start
        setattr(explain_module, name, timed)
    return last


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--models", default="efficientnet_b0")
    p.add_argument("--side", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--against", type=Path, default=None,
                   help="another checkout whose relprop is timed beside this one")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import relprop
    versions: dict[str, Any] = {"relprop": relprop}
    if args.against is not None:
        copy = Path(tempfile.mkdtemp(prefix="relprop_base_"))
        atexit.register(shutil.rmtree, copy, ignore_errors=True)
        shutil.copytree(args.against / "src" / "relprop", copy / "relprop_base")
        sys.path.insert(0, str(copy))
        import relprop_base
        versions["relprop (against)"] = relprop_base
    stages = {label: _timed_stages(sys.modules[f"{module.__name__}.explain"])
              for label, module in versions.items()}
    print(f"min over {args.rounds} interleaved rounds, one process, {args.threads} thread(s), "
          f"batch {args.batch}, {args.side}², torch {torch.__version__}\n")
    print("| model | method | forward | backward | set-up, checks, teardown | whole call | "
          "/ gradient |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        _rows(name, args.side, args.batch, args.rounds, versions, stages)
    return 0


def _rows(name: str, side: int, batch: int, rounds: int, versions: dict[str, Any],
          stages: dict[str, dict[str, float]]) -> None:
    """Print the table's rows for model ``name``."""
    import torch
    from engine import _inputs, build_model

    from relprop_bench import floor
    model, _, classes = build_model(name, False, False)
    model = model.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1234)
    x, target = _inputs(name, batch, side, classes, "cpu", torch.float32, gen)
    composites = {label: module.composites.uniform(module.rules.Epsilon(1e-6))
                  for label, module in versions.items()}
    maps = [module.explain(model, x, target, composites[label]).relevance
            for label, module in versions.items()]
    assert all(torch.equal(maps[0], m) for m in maps[1:]), "the versions disagree"

    def gradient() -> tuple[float, float, float]:
        start = time.perf_counter()
        leaf = x.detach().requires_grad_(True)
        out = model(leaf)
        middle = time.perf_counter()
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), leaf)
        end = time.perf_counter()
        return middle - start, end - middle, end - start

    def floor_engine() -> tuple[float, float, float]:
        start = time.perf_counter()
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad(), floor._Epsilon(1e-6):
            out = model(leaf)
        middle = time.perf_counter()
        seed = torch.zeros_like(out)
        seed[torch.arange(len(x)), target] = 1.0
        torch.autograd.grad(out, leaf, seed)
        end = time.perf_counter()
        return middle - start, end - middle, end - start

    def version(label: str) -> Callable[[], tuple[float, float, float]]:
        module, composite, last = versions[label], composites[label], stages[label]

        def run() -> tuple[float, float, float]:
            start = time.perf_counter()
            module.explain(model, x, target, composite)
            whole = time.perf_counter() - start
            return last["_forward"], last["_relevance_for"], whole
        return run

    methods = {"gradient": gradient, "floor engine": floor_engine,
               **{f"{label} ε": version(label) for label in versions}}
    best = {m: [float("inf")] * 3 for m in methods}
    for _ in range(2):
        for run in methods.values():
            run()
    for _ in range(rounds):
        for m, run in methods.items():
            best[m] = [min(b, t) for b, t in zip(best[m], run())]
    for m, (forward, backward, whole) in best.items():
        rest = whole - forward - backward if m.startswith("relprop") else None
        print(f"| {name} | {m} | {forward * 1e3:.2f} ms | {backward * 1e3:.2f} ms | "
              f"{'–' if rest is None else f'{rest * 1e3:.2f} ms'} | {whole * 1e3:.2f} ms | "
              f"{whole / best['gradient'][2]:.2f}x |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
