"""Why is a handwritten digit in its k-means cluster? NEON on scikit-learn's digits.

Fits ``KMeans(10)`` on the 8×8 digits, rewrites it as a network (:mod:`relprop.neon`), checks
that the network assigns every point as ``KMeans.predict`` does, and explains each point's
cluster score ``f_c(x)`` per pixel. Writes ``neon_kmeans.png`` to ``--out``: per cluster,
its centroid, its most typical member, that member's relevance and the mean relevance over
the cluster (red: pixels that place the point in its cluster, blue: pixels against it).

    python examples/neon_kmeans.py --out neon-out
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from relprop import neon, viz

SCALE = 6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("neon-out"), help="output folder")
    parser.add_argument("--clusters", type=int, default=10, help="number of k-means clusters")
    parser.add_argument("--seed", type=int, default=0, help="k-means random state")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    images, labels = load_digits(return_X_y=True)
    kmeans = KMeans(n_clusters=args.clusters, n_init=4, random_state=args.seed).fit(images)
    network = neon.neuralize_kmeans(kmeans, data=images)
    x = torch.as_tensor(images)
    agree = int((network.predict(x) == torch.as_tensor(kmeans.predict(images))).sum())
    expl = neon.explain_kmeans(network, x)
    assigned = expl.target.classes  # type: ignore[attr-defined]
    gap = float((expl.relevance_sum() - expl.explained).abs().max())

    columns: list[list[torch.Tensor]] = []
    names = []
    for c in range(args.clusters):
        members = (assigned == c).nonzero()[:, 0]
        typical = members[expl.explained[members].argmax()]
        majority = int(torch.as_tensor(labels)[members].mode().values)
        names.append(f"C{c}:{majority}")
        columns.append([
            viz.to_rgb(network.centroids[c].reshape(8, 8), high=16.0),
            viz.to_rgb(x[typical].reshape(8, 8), high=16.0),
            viz.heatmap(expl.relevance[typical].reshape(8, 8)),
            viz.heatmap(expl.relevance[members].mean(0).reshape(8, 8)),
        ])
    cells = [viz.upscale(col[row], SCALE) for row in range(4) for col in columns]
    picture = viz.grid(cells, nrow=args.clusters, labels=names,
                       row_labels=["CENTROID", "POINT", "R POINT", "MEAN R"])
    args.out.mkdir(parents=True, exist_ok=True)
    path = viz.save_png(args.out / "neon_kmeans.png", picture)

    print(f"k-means on digits: {len(images)} points, {args.clusters} clusters "
          f"(C<cluster>:<majority digit>)")
    print(f"network assigns like KMeans.predict: {agree}/{len(images)}")
    print(f"{expl.method}: max |sum_i R_i - f_c(x)| = {gap:.2e}, "
          f"mean f_c = {float(expl.explained.mean()):.2f}")
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
