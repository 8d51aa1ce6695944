"""Train the VGG-style nets of the localisation benchmark on cluttered digits, into the cache.

Every ``(variant, seed)`` model is trained by :func:`relprop_bench.models.trained_net` (the
same code ``relprop-bench localisation`` calls, so the benchmark then finds them cached) and
its test accuracy on 1000 held-out images is printed. A model already in the cache with the
same configuration is loaded, not retrained (``--retrain`` forces it). About a minute or two
per model on two idle CPU cores::

    .venv/bin/python scripts/train_localisation.py    # the default run: vgg4 ... vgg13 x 0,1,2
    .venv/bin/python scripts/train_localisation.py --variants vgg8 --seeds 0
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks" / "src")]

from relprop_bench.localisation import BenchConfig  # noqa: E402
from relprop_bench.models import VARIANTS, TrainConfig, trained_net  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--variants", nargs="+", default=list(BenchConfig().variants), choices=list(VARIANTS)
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--train-images", type=int, default=None, help="default 10000")
    ap.add_argument("--epochs", type=int, default=None, help="default 10")
    ap.add_argument("--cache", type=Path, default=None, help="default ~/.cache/relprop")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    train = TrainConfig()
    if args.train_images is not None:
        train = replace(train, n_train=args.train_images)
    if args.epochs is not None:
        train = replace(train, epochs=args.epochs)
    rows = []
    start = time.perf_counter()
    for variant in args.variants:
        for seed in args.seeds:
            t0 = time.perf_counter()
            _, meta = trained_net(
                VARIANTS[variant], seed, train, cache=args.cache, retrain=args.retrain
            )
            rows.append((variant, seed, meta, time.perf_counter() - t0))
            print(
                f"{variant:8s} seed {seed}: test accuracy {meta['test_accuracy']:.3f} "
                f"(train {meta['train_accuracy']:.3f}), trained in "
                f"{meta['train_seconds']:.0f}s; {meta['cached']}",
                flush=True,
            )
    print("\n| variant | seed | test accuracy | train accuracy | training time |")
    print("|---|---|---|---|---|")
    for variant, seed, meta, _ in rows:
        print(
            f"| {variant} | {seed} | {meta['test_accuracy']:.1%} | "
            f"{meta['train_accuracy']:.1%} | {meta['train_seconds']:.0f} s |"
        )
    print(f"\n{train}; total {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
