"""Ship scikit-learn's 1797 8x8 digits inside relprop_bench, so it never imports sklearn.

Writes ``benchmarks/src/relprop_bench/data/digits8x8.pt``: ``images`` (1797, 8, 8) uint8 in
0..16, ``labels`` (1797,) uint8 and ``meta``. :mod:`relprop_bench.cluttered` builds its data
sets from it. Run once (the file is committed)::

    .venv/bin/python scripts/make_digits_data.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sklearn
import torch
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "src" / "relprop_bench" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DATA / "digits8x8.pt")
    args = ap.parse_args(argv)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.uint8)
    labels = torch.tensor(digits.target, dtype=torch.uint8)
    assert images.shape == (1797, 8, 8) and int(images.max()) == 16
    meta = {
        "source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten "
        "digits, test part), pixel values 0..16",
        "sklearn_version": str(sklearn.__version__),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"images": images, "labels": labels, "meta": meta}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
