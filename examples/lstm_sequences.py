"""LRP for an LSTM on generated sequences: does relevance land on the token that decides?

Each sequence holds random distractor tokens and one trigger token (0, 1 or 2) at a random
step; the class is the trigger. An LSTM is trained for a few seconds, then each sequence's
class is explained with ε on the linear maps and signal-take-all at the gates (Arras et al.
2017). The picture has one row per sequence and one cell per step (red = evidence for the
class); the trigger's step is framed in the row below it. The script prints how often the
most relevant step is the trigger.

    python examples/lstm_sequences.py --out out/lstm
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import relprop
from relprop import composites, rules, viz

TOKENS, STEPS = 6, 12


def make_sequences(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-hot sequences ``(n, STEPS, TOKENS)``, their class and the trigger's position."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, TOKENS, (n, STEPS), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    where = torch.randint(0, STEPS, (n,), generator=g)
    tokens[torch.arange(n), where] = labels
    return nn.functional.one_hot(tokens, TOKENS).float(), labels, where


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(TOKENS, 24, batch_first=True)
        self.fc = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.lstm(x)[0][:, -1])


def train(seed: int = 0, steps: int = 300) -> Classifier:
    torch.manual_seed(seed)
    model = Classifier()
    x, y, _ = make_sequences(2048, seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/lstm"))
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    args = parser.parse_args(argv)
    model = train(steps=args.steps)
    x, y, where = make_sequences(256, seed=1)
    accuracy = float((model(x).argmax(1) == y).float().mean())
    expl = relprop.explain(model, x, target=y, composite=composites.uniform(rules.Epsilon(1e-3)))
    per_step = expl.relevance.sum(dim=2)  # (sequences, steps)
    hits = float((per_step.argmax(dim=1) == where).float().mean())
    print(f"test accuracy {accuracy:.3f}; most relevant step is the trigger in {hits:.1%} "
          f"of sequences; relevance sum / logit = "
          f"{float(expl.relevance_sum().sum() / expl.explained.sum()):.3f}")
    rows = []
    for n in range(8):
        cells = viz.heatmap(per_step[n:n + 1])  # (1, STEPS, 3)
        marker = torch.full((1, STEPS, 3), 255, dtype=torch.uint8)
        marker[0, int(where[n])] = torch.tensor([60, 60, 60], dtype=torch.uint8)
        rows.append(viz.upscale(torch.cat([cells, marker]), 16))
    picture = viz.grid(rows, nrow=1, padding=4,
                       row_labels=[f"c{int(y[n])}" for n in range(8)])
    args.out.mkdir(parents=True, exist_ok=True)
    path = viz.save_png(args.out / "lstm_sequences.png", picture)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
