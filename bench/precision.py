#!/usr/bin/env python
"""Explanations in bfloat16 and float16 against float32, on the benchmark's models.

For each model, composite and dtype: whether the relevance is finite and of that dtype, how far
its total moves from the float32 explanation's (as a share of the float32 relevance mass
Σ|R|, and as a share of |ΣR|), the cosine of the two maps, and how far the model's own output
moves. Issue 14 asks that bfloat16 stay finite with sums within 1 % of float32's on a GPU;
``--device cuda`` runs it there (CPU kernels of both dtypes exist, so it also runs here).

The weights are random: where little of the explained output reaches the input in float32
(the last column, the relevance mass against the output: on the random EfficientNet-B0 its
biases and BatchNorm shifts absorb nearly all of it, leaving 1e-5 to 1e-13) the relevance
underflows float16 and the other columns say nothing about the rules (the trained test nets
of ``tests/test_low_precision.py`` check those).

Usage::

    python bench/precision.py --small                 # CPU, small variants (~1 min)
    python bench/precision.py --device cuda           # full size on a GPU
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "src", ROOT / "benchmarks" / "src"):
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.append(str(_path))

from engine import TRANSFORMERS, _inputs, build_model  # noqa: E402

COMPOSITES = {"cnn": ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "default"],
              "transformer": ["epsilon", "attnlrp", "cp_lrp"]}


def _composite(name: str) -> Any:
    from relprop import composites, rules

    if name == "epsilon":
        return composites.uniform(rules.Epsilon(1e-6))
    if name == "epsilon_gamma_box":
        return composites.epsilon_gamma_box(low=-3.0, high=3.0)
    return getattr(composites, name)()


def _total(expl: Any) -> Any:
    """Per sample: the relevance at the input plus what reached the sources, and its mass."""
    import torch

    parts = [expl.relevance, *expl.sources.values()]
    flat = [p.double().reshape(p.shape[0], -1) for p in parts if p.dim()]
    total = sum((f.sum(1) for f in flat), torch.zeros(flat[0].shape[0], dtype=torch.float64))
    mass = sum((f.abs().sum(1) for f in flat), torch.zeros_like(total))
    return total, mass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--models", default="resnet50,efficientnet_b0,vit_b16,llama")
    p.add_argument("--dtypes", default="bfloat16,float16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--small", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    import relprop
    from relprop.targets import TokenLogit

    torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch {torch.__version__}, batch {args.batch}, random "
          f"weights{' (--small)' if args.small else ''}\n")
    print("| model | composite | dtype | finite | ΔΣR / Σ|R| | ΔΣR / |ΣR| | cosine | "
          "output Δ | Σ|R| / |f(x)| float32 |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        model, side, classes = build_model(name, False, args.small)
        model = model.eval().to(args.device)
        gen = torch.Generator().manual_seed(0)
        x, target = _inputs(name, args.batch, side, classes, args.device, torch.float32, gen)
        if not x.is_floating_point():
            target = TokenLogit(target)
        kind = "transformer" if name in TRANSFORMERS else "cnn"
        for cname in COMPOSITES[kind]:
            full = relprop.explain(model, x, target, _composite(cname))
            total, mass = _total(full)
            for dname in args.dtypes.split(","):
                dtype = getattr(torch, dname)
                low_model = copy.deepcopy(model).to(dtype)
                low_x = x.to(dtype) if x.is_floating_point() else x
                try:
                    low = relprop.explain(low_model, low_x, target, _composite(cname))
                except Exception as error:  # noqa: BLE001 - reported in the table
                    print(f"| {name} | {cname} | {dname} | error: "
                          f"{type(error).__name__}: {str(error)[:80]} | | | | | |", flush=True)
                    continue
                low_total, _ = _total(low)
                moved = (low_total - total).abs()
                cosine = torch.nn.functional.cosine_similarity(
                    low.relevance.double().flatten(1), full.relevance.double().flatten(1))
                out = ((low.explained.double() - full.explained.double()).abs().max()
                       / full.explained.double().abs().max().clamp_min(1e-12))
                finite = bool(torch.isfinite(low.relevance).all()) \
                    and low.relevance.dtype == dtype
                print(f"| {name} | {cname} | {dname} | {finite} | "
                      f"{float((moved / mass).max()):.4f} | "
                      f"{float((moved / total.abs().clamp_min(1e-12)).max()):.4f} | "
                      f"{float(cosine.min()):.4f} | {float(out):.4f} | "
                      f"{float((mass / full.explained.double().abs()).min()):.3g} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
