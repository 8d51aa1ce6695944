"""Conservation of the grouped-convolution rows on the benchmark's trained nets: Σ R / f(x).

For each trained ``(variant, seed)`` model of the localisation benchmark (from the cache;
``scripts/train_localisation.py`` trains them) and each LRP row of ``--methods grouped``
(:func:`relprop_bench.presets.grouped_methods`), the relevance sum over the explained logit,
per image, on two models:

* the trained model as it is: each bias (BatchNorm's shift, folded into its convolution)
  takes a share, so even LRP-0 does not sum to the logit;
* a bias-free copy (every BatchNorm's ``running_mean`` and ``bias``, and the linear bias, set
  to 0; ReLU6's cap stays): here LRP-0, γ and z⁺ conserve exactly where their denominators
  do not vanish, and what is left is the rule's own gain or loss, e.g. α2β1 taking α·R at an
  output whose contributions all have one sign. The copy explains its own top class.

Prints a markdown table (mean, median, 5th and 95th percentile over seeds × images)::

    python bench/conservation.py --variants mobilenet --seeds 0-4 --n 256 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings

import torch
from torch import Tensor, nn

from .cli import _seeds
from .models import VARIANTS, benchmark_images, trained_net
from .presets import MethodSpec, grouped_methods

__all__ = ["bias_free", "ratios", "main"]


def bias_free(model: nn.Module) -> nn.Module:
    """A copy with every additive constant removed (BatchNorm shift and mean, biases)."""
    copy_ = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m in copy_.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.zero_()
            if isinstance(m, nn.BatchNorm2d | nn.Conv2d | nn.Linear) and m.bias is not None:
                m.bias.zero_()
    return copy_


def ratios(model: nn.Module, spec: MethodSpec, x: Tensor, target: Tensor) -> Tensor:
    """Σ R / f(x)_target per image, in batches of 64."""
    out = []
    for xb, tb in zip(x.split(64), target.split(64)):
        with torch.no_grad():
            logit = model(xb).gather(1, tb[:, None])[:, 0].double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RuleAssumptionWarning: the point of the table
            relevance = spec.explain(model, xb, tb).double().flatten(1).sum(1)
        out.append(relevance / logit)
    return torch.cat(out)


def _row(values: list[Tensor]) -> str:
    v = torch.cat(values)
    q = torch.quantile(v, torch.tensor([0.05, 0.5, 0.95], dtype=v.dtype))
    return f"{float(v.mean()):.3f} | {float(q[1]):.3f} | {float(q[0]):.3f} … {float(q[2]):.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["mobilenet"], choices=list(VARIANTS))
    ap.add_argument("--seeds", type=_seeds, default=(0, 1, 2))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    specs = [s for s in grouped_methods() if s.family == "lrp"]
    for variant in args.variants:
        x, labels, _ = benchmark_images(args.n, VARIANTS[variant].canvas)
        trained: dict[str, list[Tensor]] = {s.name: [] for s in specs}
        free: dict[str, list[Tensor]] = {s.name: [] for s in specs}
        for seed in args.seeds:
            model, _ = trained_net(VARIANTS[variant], seed, progress=None)
            plain = bias_free(model)
            with torch.no_grad():
                top = plain(x).argmax(1)
            for spec in specs:
                trained[spec.name].append(ratios(model, spec, x, labels))
                free[spec.name].append(ratios(plain, spec, x, top))
            print(f"{variant} seed {seed} done", file=sys.stderr, flush=True)
        print(f"\n{variant}, seeds {list(args.seeds)}, {args.n} images each: Σ R / f(x)\n")
        print("| rows | trained: mean | median | 5 % … 95 % | bias-free: mean | median "
              "| 5 % … 95 % |")
        print("|---|---|---|---|---|---|---|")
        for spec in specs:
            print(f"| {spec.label} | {_row(trained[spec.name])} | "
                  f"{_row(free[spec.name])} |")
    return 0
