#!/usr/bin/env python
"""Unit deletion on the cluttered-digits nets: do the units CRP ranks first carry the logit?

For each test image, the units (channels) of a layer are ranked three ways for the predicted
class: by their relevance (CRP: ``concepts.top_units``, the relevance that flows through each
unit), by their activation (summed over positions), and at random. The top ``k`` units are
then set to zero in a forward pass and the drop of the predicted logit is recorded. A ranking
that finds the units the prediction uses drops the logit faster. Printed: the mean drop (in
units of the original logit) with 95% bootstrap intervals over images, and the paired
difference relevance − activation.

    PYTHONPATH=src:benchmarks/src python bench/concepts_deletion.py [--variant vgg4] [--n 300]

The nets are the trained cluttered-digits VGGs of ``relprop_bench.models`` (cached after the
first training, a minute or two on two cores).
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import Tensor, nn

from relprop import composites, concepts
from relprop_bench.models import VARIANTS, TrainConfig, benchmark_images, trained_net
from relprop_bench.stats import bootstrap_mean, paired_difference


def _logit_without(model: nn.Sequential, layer: str, x: Tensor, classes: Tensor,
                   removed: Tensor) -> Tensor:
    """The explained logit with the units ``removed`` (``(B, k)``) of ``layer`` set to 0."""
    def hook(_: nn.Module, __: object, out: Tensor) -> Tensor:
        keep = torch.ones(out.shape[:2], dtype=out.dtype)
        keep.scatter_(1, removed, 0.0)
        return out * keep.view(*out.shape[:2], *([1] * (out.dim() - 2)))

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x).gather(1, classes[:, None])[:, 0]
    finally:
        handle.remove()


#: training budgets: the benchmark's full one, and the quick one of the localisation preset
TRAINING = {"full": TrainConfig(), "quick": TrainConfig(n_train=4000, epochs=5)}


def run(variant: str, n: int, layers: list[str], ks: list[int], composite_name: str,
        seed: int, training: str) -> None:
    model, meta = trained_net(VARIANTS[variant], seed, TRAINING[training])
    x, _, _ = benchmark_images(n)
    with torch.no_grad():
        logits = model(x)
    classes = logits.argmax(1)
    original = logits.gather(1, classes[:, None])[:, 0]
    composite = getattr(composites, composite_name)()
    print(f"## {variant} seed {seed}, {training} training (test accuracy "
          f"{meta['test_accuracy']:.3f}), {n} images, predicted class, composite "
          f"{composite.name}\n")
    print("| layer | k | relevance (CRP) | activation | random | relevance − activation |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for layer in layers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranking = concepts.top_units(model, x, classes, layer, k=10_000,
                                         composite=composite)
        activation = _activations(model, layer, x)
        by = {"relevance": ranking.units, "activation": activation.argsort(1, descending=True),
              "random": torch.stack([torch.randperm(activation.shape[1], generator=gen)
                                     for _ in range(n)])}
        for k in ks:
            drops = {name: (original - _logit_without(model, layer, x, classes,
                                                      order[:, :k])) / original.abs()
                     for name, order in by.items()}
            cells = [bootstrap_mean([drops[m]]).format(2) for m in by]
            diff = paired_difference([drops["relevance"]], [drops["activation"]]).format(2)
            print(f"| {layer} ({activation.shape[1]} units) | {k} | " + " | ".join(cells)
                  + f" | {diff} |")


def _activations(model: nn.Sequential, layer: str, x: Tensor) -> Tensor:
    kept: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _, __, out: kept.append(out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return kept[0].flatten(2).sum(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="vgg4", choices=sorted(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--layers", nargs="+", default=["4", "7", "10"],
                        help="module names (ReLU outputs of vgg4's 2nd-4th convolutions)")
    parser.add_argument("--k", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--composite", default="default")
    parser.add_argument("--training", default="quick", choices=sorted(TRAINING))
    args = parser.parse_args()
    torch.manual_seed(0)
    run(args.variant, args.n, args.layers, args.k, args.composite, args.seed, args.training)


if __name__ == "__main__":
    main()
