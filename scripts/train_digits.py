"""Train the small CNN of ``relprop.demo`` on scikit-learn's 8x8 digits and ship its weights.

Writes ``src/relprop/data/digits_cnn.pt`` (state_dict plus metadata, test accuracy included) and
``src/relprop/data/digits_samples.pt`` (test digits with labels), so that ``relprop demo`` needs
neither scikit-learn nor the network. Runs in seconds on a CPU::

    .venv/bin/python scripts/train_digits.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import sklearn
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "relprop" / "data"


def _digits_cnn() -> type[nn.Module]:
    sys.path.insert(0, str(ROOT / "src"))
    from relprop.demo import DigitsCNN

    return DigitsCNN


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to one pixel (zero fill): cheap augmentation for 8x8 digits."""
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    out = torch.empty_like(x)
    offsets = torch.randint(0, 3, (len(x), 2), generator=gen).tolist()
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, :, dy : dy + 8, dx : dx + 8]
    return out


def _pick_samples(y: torch.Tensor, per_class: int) -> torch.Tensor:
    """Test indices: one digit of each class first (0..9), then round-robin up to per_class each."""
    by_class = [torch.nonzero(y == c).flatten().tolist() for c in range(10)]
    return torch.tensor([idx[r] for r in range(per_class) for idx in by_class if r < len(idx)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=10, help="shipped test digits per class")
    ap.add_argument("--out", type=Path, default=DATA)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.25, random_state=args.seed, stratify=y.numpy()
    )
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    x_train, y_train, x_test, y_test = x[idx_train], y[idx_train], x[idx_test], y[idx_test]

    model = _digits_cnn()()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(y_train), generator=gen)
        total = 0.0
        for b in perm.split(64):
            opt.zero_grad()
            loss = loss_fn(model(_shift(x_train[b], gen)), y_train[b])
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        sched.step()
        model.eval()
        if (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
            acc = _accuracy(model, x_test, y_test)
            print(f"epoch {epoch + 1:3d}  loss {total / len(y_train):.4f}  test acc {acc:.4f}")
    model.eval()
    train_acc, test_acc = _accuracy(model, x_train, y_train), _accuracy(model, x_test, y_test)
    print(
        f"trained in {time.perf_counter() - start:.1f}s: train acc {train_acc:.4f}, "
        f"test acc {test_acc:.4f} ({len(y_test)} test digits)"
    )

    pick = _pick_samples(y_test, args.per_class)
    samples = {
        "images": x_test[pick].clone(),
        "labels": y_test[pick].clone(),
        "dataset_indices": idx_test[pick].clone(),
    }
    sample_acc = _accuracy(model, samples["images"], samples["labels"])
    meta = {
        "dataset": "sklearn.datasets.load_digits, 8x8, pixels / 16 -> [0, 1]",
        "split": f"train_test_split(test_size=0.25, stratify=y, random_state={args.seed})",
        "epochs": args.epochs,
        "seed": args.seed,
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "n_test": len(y_test),
        "torch_version": str(torch.__version__),
        "sklearn_version": str(sklearn.__version__),
    }
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta}, args.out / "digits_cnn.pt")
    torch.save(
        {**samples, "meta": {**meta, "sample_accuracy": sample_acc}}, args.out / "digits_samples.pt"
    )
    for name in ("digits_cnn.pt", "digits_samples.pt"):
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size / 1024:.1f} KiB)")
    print(f"accuracy on the {len(pick)} shipped samples: {sample_acc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
