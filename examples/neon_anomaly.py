"""Why is a handwritten digit an outlier? NEON on a one-class SVM and a kernel density.

Fits ``OneClassSVM(kernel="rbf")`` on the first 1000 of scikit-learn's 8×8 digits (scaled to
[0, 1]), rewrites its outlier score as a network (:mod:`relprop.neon`), checks it against
``decision_function``, and explains the most outlying of the other 797 digits per pixel; the
same points are also explained under a Gaussian kernel density of the 1000. Writes
``neon_anomaly.png`` to ``--out``: the digits, their SVM relevance and their KDE relevance
(red: pixels that make the point unusual).

    python examples/neon_anomaly.py --out neon-out
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.svm import OneClassSVM

from relprop import neon, viz

SCALE = 6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("neon-out"), help="output folder")
    parser.add_argument("--nu", type=float, default=0.05, help="OneClassSVM nu")
    parser.add_argument("--show", type=int, default=8, help="how many outliers to draw")
    parser.add_argument("--bandwidth", type=float, default=0.5, help="KDE bandwidth")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    images, labels = load_digits(return_X_y=True)
    data = torch.as_tensor(images / 16.0)
    train, x, labels = data[:1000], data[1000:], labels[1000:]
    svm = OneClassSVM(kernel="rbf", gamma="scale", nu=args.nu).fit(train.numpy())
    network = neon.neuralize_ocsvm(svm)
    mismatch = float((network.decision_function(x)
                      - torch.as_tensor(svm.decision_function(x.numpy()))).abs().max())
    expl = neon.explain_anomaly(network, x)
    outliers = int((expl.explained > 0).sum())
    top = expl.explained.argsort(descending=True)[: args.show]

    kde = neon.neuralize_kde(train, bandwidth=args.bandwidth)
    kde_expl = neon.explain_anomaly(kde, x[top])
    gap = max(float((e.relevance_sum() - e.explained).abs().max()) for e in (expl, kde_expl))

    rows = [
        [viz.to_rgb(x[i].reshape(8, 8)) for i in top],
        [viz.heatmap(expl.relevance[i].reshape(8, 8)) for i in top],
        [viz.heatmap(r.reshape(8, 8)) for r in kde_expl.relevance],
    ]
    cells = [viz.upscale(image, SCALE) for row in rows for image in row]
    names = [f"{int(labels[i])}" for i in top]
    picture = viz.grid(cells, nrow=len(top), labels=names, row_labels=["DIGIT", "SVM R", "KDE R"])
    args.out.mkdir(parents=True, exist_ok=True)
    path = viz.save_png(args.out / "neon_anomaly.png", picture)

    print(f"OneClassSVM(rbf, nu={args.nu}) fitted on {len(train)} digits: "
          f"{network.support.shape[0]} support vectors; {outliers} of {len(x)} new digits are "
          "outliers (o(x) > 0)")
    print(f"network vs decision_function: max abs difference {mismatch:.2e}")
    print(f"{expl.method}: max |sum_i R_i - o(x)| = {gap:.2e} (SVM and KDE)")
    for rank, i in enumerate(top[:3].tolist()):
        pixels = expl.relevance[i].argsort(descending=True)[:3].tolist()
        print(f"  outlier {rank + 1}: digit {int(labels[i])}, o = {float(expl.explained[i]):.2f}, "
              f"most relevant pixels (row, col): {[divmod(p, 8) for p in pixels]}")
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
