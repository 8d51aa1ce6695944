"""BiLRP on the shipped digits CNN: which pixels of one digit match which pixels of another.

The embedding is the CNN's 64-unit hidden layer; the similarity of two digits is the dot
product of their embeddings. BiLRP (Eberle et al. 2020) explains it as a 64 x 64 interaction
matrix between the pixels of both digits; its row and column sums are shown as heatmaps next
to the digits, and the matrix itself on the right.

    python examples/bilrp_digits.py --out out/bilrp
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from relprop import composites, viz
from relprop.demo import load_digit_samples, load_digits_cnn
from relprop.pairwise import bilrp, sum_channels


def embedding_network() -> nn.Module:
    """The digits CNN cut after its hidden dense layer (64 ReLU units)."""
    cnn = load_digits_cnn()
    return nn.Sequential(cnn.features, *list(cnn.classifier)[:3]).eval()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/bilrp"))
    args = parser.parse_args(argv)
    images, labels = load_digit_samples()
    # pairs: two different samples of the same class, and one mixed pair
    pairs = [(3, 13), (7, 17), (3, 8)]
    x1 = torch.stack([images[i] for i, _ in pairs])
    x2 = torch.stack([images[j] for _, j in pairs])
    expl = bilrp(embedding_network(), x1, x2, composites.epsilon_plus(), pool=sum_channels)
    cells, row_labels = [], []
    for n, (i, j) in enumerate(pairs):
        matrix = expl.relevance[n]
        cells += [viz.upscale(viz.to_rgb(x1[n, 0], low=1.0, high=0.0), 8),
                  viz.upscale(viz.heatmap(matrix.sum(1).reshape(8, 8)), 8),
                  viz.upscale(viz.to_rgb(x2[n, 0], low=1.0, high=0.0), 8),
                  viz.upscale(viz.heatmap(matrix.sum(0).reshape(8, 8)), 8),
                  viz.upscale(viz.heatmap(matrix), 1)]
        row_labels.append(f"{int(labels[i])}-{int(labels[j])}")
        print(f"pair {int(labels[i])}/{int(labels[j])}: similarity {float(expl.similarity[n]):.3f}"
              f", sum of interactions {float(expl.relevance_sum()[n]):.3f}")
    picture = viz.grid(cells, nrow=5, padding=4,
                       labels=["A", "R(A)", "B", "R(B)", "A X B"], row_labels=row_labels)
    args.out.mkdir(parents=True, exist_ok=True)
    path = viz.save_png(args.out / "bilrp_digits.png", picture)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
