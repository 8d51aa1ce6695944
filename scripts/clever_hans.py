"""The proof table: does SpRAy isolate a planted Clever Hans, on LRP heatmaps and on others?

For each training seed, :func:`relprop.audit.proof.evaluate_seed` trains the planted CNN
(:mod:`relprop.audit.planted`: a corner tag on half of the ``ring`` images) and clusters the
ring test images with SpRAy on four kinds of maps. Purity (share of the best-matching cluster
that is tagged) and recall (share of the tagged images in it) are means over seeds of the
per-seed means over images, with 95% hierarchical bootstrap CIs (seeds, then images;
``relprop_bench.stats``). Prints a markdown table (the README's)::

    .venv/bin/python scripts/clever_hans.py --seeds 5
"""

from __future__ import annotations

import argparse
import time

import torch

from relprop.audit.proof import MAPS, evaluate_seed
from relprop_bench.stats import bootstrap_mean


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1 (default 5)")
    ap.add_argument("--n-train", type=int, default=400, help="training images per class")
    ap.add_argument("--n-test", type=int, default=100, help="test images per class")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    torch.set_num_threads(1)  # small nets: one thread is as fast, and steady on busy cores
    start = time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        outcome, reliance = evaluate_seed(seed, n_train=args.n_train, n_test=args.n_test)
        runs.append(outcome)
        print(f"seed {seed}: accuracy {reliance['accuracy']:.3f}, untagged "
              f"{reliance['accuracy_untagged']:.3f}, tag flips {reliance['tag_flip']:.3f}; "
              + ", ".join(f"{m}: k={o.n_clusters} purity {o.purity:.2f} recall {o.recall:.2f}"
                          for m, o in outcome.items()), flush=True)
    print(f"\n{args.seeds} seeds, {args.n_test} test images per class "
          f"({time.perf_counter() - start:.0f}s)\n")
    print("| maps clustered | purity | recall | seeds with both ≥ 0.9 | found first |")
    print("|---|---|---|---|---|")
    for m in MAPS:
        purity = bootstrap_mean([r[m].purity_items for r in runs])
        recall = bootstrap_mean([r[m].recall_items for r in runs])
        both = sum(r[m].purity >= 0.9 and r[m].recall >= 0.9 for r in runs)
        first = sum(r[m].top_ranked for r in runs)
        print(f"| {m} | {purity.format(2)} | {recall.format(2)} | {both} / {len(runs)} "
              f"| {first} / {len(runs)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
