#!/usr/bin/env python
"""Time K conditional heatmaps (``concepts.explain``) against one heatmap (``relprop.explain``)
on a ResNet-50-style net, and the floor that FLOPs put under that ratio.

One heatmap costs a forward pass F and a backward pass B = B_shared + B_signal: what the
rules compute from the activations alone (αβ, γ: the modified forward passes z⁺, z⁻ and
weights) and what they compute from the incoming relevance (one vjp per layer for ε, two for
αβ). K concepts at a layer L cost the same forward pass, one full backward pass, and K
backward passes from L down to the input that share B_shared (kept from pass to pass, computed
once per vmapped chunk) and repeat B_signal below L. With ``f`` the share of the forward
FLOPs below L, ``v = B_signal / F`` and ``h = (F + B) / F``:

    ratio ≥ 1 + K · f · v / h         (ε: v = 1, h ≈ 2;  α2β1: v = 2, h ≈ 5)

so "32 units in at most 2x one heatmap" holds by FLOPs only where f ≤ h / (v · K): layers
within the first ~6% (ε) or ~8% (αβ) of the network's FLOPs. Small inputs are not FLOP-bound
(a 32x32 ResNet-50 is 0.1 GMAC; the engine's per-op work dominates), and there vmapping the
K passes amortises that work and goes below the FLOP floor.

    PYTHONPATH=src:. python bench/concepts_timing.py [--size 112] [--device cpu]

Rounds are interleaved (heatmap, then each layer) and medians reported. ``--clock cpu``
(default) measures the process's CPU time on one thread: on a shared machine other processes
take wall time, not CPU time, so the ratios stay readable; ``--clock wall`` for GPUs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "src"):  # tests.helpers.models, and relprop from the checkout
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import relprop  # noqa: E402
from relprop import composites, concepts  # noqa: E402
from relprop.rules import Epsilon  # noqa: E402


def conv_flops(model: nn.Module, x: Tensor) -> list[tuple[str, int]]:
    """Multiply-adds of every conv/linear call, in execution order."""
    counted: list[tuple[str, int]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: nn.Module, _: object, out: Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] \
                * module.kernel_size[1]
            counted.append((names[module], out.numel() * per_output))
        elif isinstance(module, nn.Linear):
            counted.append((names[module], out.numel() * module.in_features))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return counted


def share_below(flops: list[tuple[str, int]], layer: str) -> float:
    """The share of the forward FLOPs spent in layers that run before ``layer``'s output."""
    total = sum(f for _, f in flops)
    below = sum(f for name, f in flops if name.startswith(layer + ".") or _before(name, layer))
    return below / total


def _before(name: str, layer: str) -> bool:
    """Whether module ``name`` runs before ``layer`` (ResNet names: stem, layers.i.j...)."""
    if not name.startswith("layers."):
        return name.startswith(("conv1", "bn1"))
    stage, block = (int(p) for p in name.split(".")[1:3])
    parts = layer.split(".")
    top_stage = int(parts[1])
    top_block = int(parts[2]) if len(parts) > 2 else 10**9
    return (stage, block) < (top_stage, top_block) or (stage == top_stage and block
                                                        < top_block)


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time


def _time(fn: Callable[..., object], samples: list[float], *args: object,
          **kwargs: object) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = clock()
    fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    samples.append(clock() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=112, help="input side (224 = ImageNet)")
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", default="cpu", choices=sorted(CLOCKS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["vmap", "loop"],
                        choices=["vmap", "loop"])
    parser.add_argument("--layers", nargs="+", default=["layers.0", "layers.1", "layers.2",
                                                         "layers.3"])
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    from tests.helpers.models import resnet50

    model = resnet50().to(args.device)
    x = torch.randn(1, 3, args.size, args.size, device=args.device)
    flops = conv_flops(model, x)
    units = list(range(args.units))
    for name, composite, v, h in (("epsilon", composites.uniform(Epsilon(1e-6)), 1.0, 2.0),
                                  ("default (αβ)", composites.default(), 2.0, 5.0)):
        times: dict[str, list[float]] = {"heatmap": []}
        warnings.simplefilter("ignore")
        relprop.explain(model, x, 1, composite)  # warm-up: lazy imports, first-call costs
        concepts.explain(model, x, 1, layer=args.layers[0], units=units[:2],
                         composite=composite)
        for _ in range(args.rounds):
            _time(relprop.explain, times["heatmap"], model, x, 1, composite)
            for layer in args.layers:
                for mode, chunk in (("vmap", 32), ("loop", 1)):
                    if mode not in args.modes:
                        continue
                    _time(concepts.explain, times.setdefault(f"{layer} {mode}", []), model, x,
                          1, layer=layer, units=units, composite=composite, batch_units=chunk)
        base = statistics.median(times["heatmap"])
        print(f"\n## {name}: ResNet-50-style, 1x3x{args.size}x{args.size}, {args.device}, "
              f"{torch.get_num_threads()} threads, {args.clock} time, median of {args.rounds} "
              "interleaved rounds\n")
        print(f"one heatmap: {base * 1e3:.0f} ms\n")
        print(f"| layer | FLOPs below | FLOP floor for {args.units} units (v={v}, h={h}) | "
              "vmapped: time, ratio | looped: time, ratio |")
        print("|---|---|---|---|---|")
        for layer in args.layers:
            f = share_below(flops, layer)
            floor = 1 + args.units * f * v / h
            cells = [f"{statistics.median(times[f'{layer} {m}']) * 1e3:.0f} ms, "
                     f"{statistics.median(times[f'{layer} {m}']) / base:.1f}x"
                     if m in args.modes else "" for m in ("vmap", "loop")]
            print(f"| {layer} | {100 * f:.0f}% | {floor:.1f}x | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
