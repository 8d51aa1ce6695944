#!/usr/bin/env python
"""Throughput of ``relprop explain`` over a dataset against a plain batched gradient loop.

The data: ``--n`` random RGB PNGs of ``--size`` pixels in class folders (written once to a
temporary folder). The model: a 5-conv CNN (random weights, seeded). Three pipelines read the
same files with the same DataLoader settings (``--workers``, ``--batch-size``):

* ``plain gradient loop``  PIL → tensor in the loader's workers; per batch ``model(x)``, the
  gradient of each sample's top logit w.r.t. ``x`` (``torch.autograd.grad``), its channel sum
  moved to the CPU. Nothing is written. This is the reference of every ratio.
* ``relprop run, gradient`` the whole ``relprop.run.explain_dataset`` with ``methods=gradient``:
  model fingerprint, listing, reading, preprocessing, explaining, float16 shards written
  atomically with checksums, the index — the runner's own cost over the same maths.
* ``relprop run, lrp``     the same with LRP (the default composite), the default run.
* ``plain relprop.explain loop`` the plain loop with ``relprop.explain`` (default composite)
  instead of the gradient: what LRP itself costs, so that ``relprop run, lrp`` against it is
  the runner's overhead for LRP.

Rounds are interleaved (plain, gradient run, lrp run, plain, ...) and the median of
``--rounds`` is reported, since the machine may be shared. Prints a table; never fails.

    PYTHONPATH=src python bench/dataset.py [--n 512] [--size 64] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


def small_cnn() -> nn.Module:
    """A seeded 5-conv CNN with 10 classes (the benchmark's model)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, 10)).eval()


def make_data(root: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return sorted(files)


class Plain(Dataset[Tensor]):
    """What a user's own loop reads: RGB in [0, 1], (3, H, W)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        with Image.open(self.files[i]) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def plain_loop(files: list[Path], args: argparse.Namespace, lrp: bool = False) -> float:
    import relprop

    model = small_cnn().to(args.device)
    loader = DataLoader(Plain(files), batch_size=args.batch_size, num_workers=args.workers,
                        pin_memory=args.device != "cpu")
    start = time.perf_counter()
    kept = []
    for x in loader:
        x = x.to(args.device)
        if lrp:
            kept.append(relprop.explain(model, x).relevance.sum(1).cpu())
            continue
        x.requires_grad_(True)
        out = model(x)
        top = out.gather(1, out.argmax(1, keepdim=True)).sum()
        (grad,) = torch.autograd.grad(top, x)
        kept.append(grad.sum(1).cpu())
    return time.perf_counter() - start


def relprop_run(data: Path, out: Path, method: str, args: argparse.Namespace) -> float:
    from relprop.run import RunConfig, explain_dataset

    config = RunConfig(model="__main__:small_cnn", data=data, out=out, methods=(method,),
                       batch_size=args.batch_size, workers=args.workers, device=args.device,
                       quiet=True)
    start = time.perf_counter()
    explain_dataset(config)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")  # αβ on a random net warns about its assumptions
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_data(root / "data", args.n, args.size)
        # one untimed pass of each: lazy imports and first-use set-up are not a run's cost
        plain_loop(files[: args.batch_size], args)
        plain_loop(files[: args.batch_size], args, lrp=True)
        for method in ("gradient", "lrp"):
            relprop_run(root / "data", root / f"warm-{method}", method, args)
        times: dict[str, list[float]] = {"plain gradient loop": [], "relprop run, gradient": [],
                                         "relprop run, lrp": [],
                                         "plain relprop.explain loop": []}
        for r in range(args.rounds):
            times["plain gradient loop"].append(plain_loop(files, args))
            for method in ("gradient", "lrp"):
                seconds = relprop_run(root / "data", root / f"r{r}-{method}", method, args)
                times[f"relprop run, {method}"].append(seconds)
            times["plain relprop.explain loop"].append(plain_loop(files, args, lrp=True))
        stored = sum(p.stat().st_size for p in (root / "r0-lrp" / "shards").glob("*.safetensors"))
    reference = statistics.median(times["plain gradient loop"])
    print(f"{args.n} PNGs {args.size}x{args.size}, batch {args.batch_size}, {args.workers} "
          f"workers, {args.device}, torch threads {torch.get_num_threads()}, median of "
          f"{args.rounds} interleaved rounds")
    print(f"{'pipeline':<28} {'seconds':>8} {'samples/s':>10} {'vs plain':>9}")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"{name:<28} {seconds:>8.2f} {args.n / seconds:>10.1f} {reference / seconds:>8.2f}x")
    ratio = statistics.median(times["plain relprop.explain loop"]) / statistics.median(
        times["relprop run, lrp"])
    print(f"relprop run, lrp vs plain relprop.explain loop: {ratio:.2f}x")
    print(f"stored: {stored / args.n / 1024:.1f} KiB per sample (float16 channel sum + "
          "64 px thumbnail)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
