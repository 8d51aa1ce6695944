#!/usr/bin/env python
"""Concepts on a cluttered-digits net: a glocal figure of one prediction and a concept atlas.

The cluttered-digits images (``relprop_bench.cluttered``) show one red target digit among
grey distractors; the net must read the red one. Its units can be checked by eye: a unit that
carries the prediction should have reference patches on red strokes, not on grey ones.

    PYTHONPATH=src:benchmarks/src python bench/concepts_example.py [--out concepts-out]

Writes ``glocal.png`` (the heatmap of one test image, its top units by relevance with their
conditional heatmaps and RelMax reference patches), ``atlas.html`` (each unit's references by
relevance and by activation) and ``references.safetensors`` (the stored scan, resumable).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from relprop import concepts, plot
from relprop_bench.models import VARIANTS, TrainConfig, benchmark_images, trained_net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="concepts-out")
    parser.add_argument("--layer", default="7", help="vgg4: the ReLU of the third conv")
    parser.add_argument("--n", type=int, default=500, help="images scanned for references")
    parser.add_argument("--units", type=int, default=4, help="top units shown")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    model, meta = trained_net(VARIANTS["vgg4"], 0, TrainConfig(n_train=4000, epochs=5))
    images, labels, boxes = benchmark_images(args.n)
    x = images[:1]
    ranking = concepts.top_units(model, x, None, args.layer, k=args.units)
    units = ranking.units[0].tolist()
    print(f"vgg4 (test accuracy {meta['test_accuracy']:.2f}), layer {args.layer}: top units "
          f"{units}, {100 * float(ranking.relevance[0].sum() / ranking.total[0]):.0f}% of "
          "the layer's relevance")
    refs = concepts.references((images, labels), model, args.layer, k=6, target="label",
                               store=out / "references.safetensors")
    c = concepts.explain(model, x, None, layer=args.layer, units=units)
    plot.save(concepts.figures.glocal(c, x, refs, patches=6), out / "glocal.png")
    concepts.figures.atlas(refs, out / "atlas.html")
    on_target = _on_target(refs, model, args.layer, boxes)
    print("share of each unit's references whose peak lies on the red target digit, by "
          "relevance (peak of the conditional heatmap) vs by activation (peak activation):")
    for unit in units:
        print(f"  unit {unit}: {on_target[unit][0]:.2f} vs {on_target[unit][1]:.2f}")
    mean = [sum(v[i] for v in on_target.values()) / len(on_target) for i in (0, 1)]
    print(f"  all {len(on_target)} units: {mean[0]:.2f} vs {mean[1]:.2f}")
    print(f"wrote {out / 'glocal.png'}, {out / 'atlas.html'}")


def _on_target(refs: concepts.References, model: torch.nn.Module, layer: str,
               boxes: torch.Tensor) -> dict[int, tuple[float, float]]:
    """Per unit: the share of its references whose peak lies in the target digit's box, for
    the relevance references (peak of the conditional heatmap) and the activation ones (the
    unit's most active position, scaled to the input)."""
    assert refs.maps is not None
    kept: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _, __, out: kept.append(out.detach()))
    shares = {}
    try:
        for row, unit in enumerate(refs.units):
            hits = []
            for j, index in enumerate(refs.relevance_indices[row].tolist()):
                peak = int(refs.maps[row, j].argmax())
                hits.append(_inside(boxes[index], peak // 32, peak % 32))
            kept.clear()
            with torch.no_grad():
                model(refs.reference_samples(unit, by="activation"))
            maps = kept[0][:, unit]
            side = 32 // maps.shape[-1]
            active = []
            for j, index in enumerate(refs.activation_indices[row].tolist()):
                peak = int(maps[j].argmax())
                active.append(_inside(boxes[index], (peak // maps.shape[-1] + 0.5) * side,
                                      (peak % maps.shape[-1] + 0.5) * side))
            shares[unit] = (sum(hits) / len(hits), sum(active) / len(active))
    finally:
        handle.remove()
    return shares


def _inside(box: torch.Tensor, row: float, column: float) -> bool:
    x0, y0, x1, y1 = box.tolist()
    return bool(x0 <= column < x1 and y0 <= row < y1)


if __name__ == "__main__":
    main()
