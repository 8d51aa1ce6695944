#!/usr/bin/env python
"""Throughput of ``relprop explain`` over a dataset against a plain batched gradient loop.

The data: ``--n`` random RGB PNGs of ``--size`` pixels in class folders (written once to a
temporary folder), resized (shorter side ``--resize``) and centre-cropped (``--crop``) and
normalised with the ImageNet mean/std by every pipeline. The model (``--model``): a 5-conv
CNN, or ResNet-50 / EfficientNet-B0 at 1000 classes (random weights, seeded; the builders of
``bench/engine.py``). Every pipeline reads the same files with the same DataLoader settings
(``--workers``, ``--batch-size``):

* ``plain gradient loop``: what a user writes. PIL → resize, crop, normalise in the loader's
  workers; per batch ``model(x)``, the gradient of each sample's top logit w.r.t. ``x``
  (``torch.autograd.grad``), its channel sum written as one float16 ``.npy`` per batch.
  The reference of every ratio.
* ``relprop explain, METHOD``: the whole ``relprop.run.explain_dataset`` (model fingerprint,
  listing, reading, preprocessing, explaining, float16 shards written atomically with
  checksums, the index) with ``methods=gradient``, or LRP with uniform ε (``--composite
  epsilon``), the default composite (α2β1 on convolutions) and ``epsilon_plus_flat``.
* ``engine only, METHOD``: the same method on batches already read and preprocessed into
  memory (``--engine-n`` samples): no reading, no storing. ``run / engine`` is then the
  runner's own share: ≥ 0.83 means the runner adds ≤ 20 % to the engine.

``floor`` is the method's cost in FLOPs over a gradient (forward + backward): ε rescales the
gradient (≈ 1.0×); z⁺ and flat need a second forward and backward of the convolutions with
modified weights (≈ 1.5×); αβ needs the positive and negative parts (≈ 2×, more where inputs
have both signs). ``best`` = 1 / floor is the most its ratio to the gradient loop can reach
however fast the runner is: only composites with floor ≤ 1.25 can reach 0.8×.

Rounds are interleaved (every pipeline once per round). ``samples/s`` and every ratio are by
the main process's CPU time, the minimum over ``--rounds``: on a shared machine it does not
count the time other jobs hold the core, and the main process (explaining, storing) is the
critical path while the loader workers (their CPU time is the next column: reaped children)
decode on another core. The median wall time is beside it; on a GPU read that instead (CPU
time does not see the device). Prints a table; never fails.

    PYTHONPATH=src python bench/dataset.py [--n 512] [--size 64] [--device cuda]
    PYTHONPATH=src python bench/dataset.py --model resnet50 --n 256 --size 256 \\
        --resize 256 --crop 224 --batch-size 16 --workers 2 --threads 1 --engine-n 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "src", ROOT / "benchmarks" / "src"):
    if _path.is_dir() and str(_path) not in sys.path:
        sys.path.append(str(_path))

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: (row name, relprop method, --composite, FLOP floor over a gradient)
RUNS = (("gradient", "gradient", None, 1.0), ("lrp ε", "lrp", "epsilon", 1.0),
        ("lrp default (α2β1)", "lrp", "default", 2.0),
        ("lrp epsilon_plus_flat", "lrp", "epsilon_plus_flat", 1.5))


def small_cnn() -> nn.Module:
    """A seeded 5-conv CNN with 10 classes (the benchmark's small model)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, 10)).eval()


def resnet50() -> nn.Module:
    """ResNet-50 (1000 classes, seeded weights and BatchNorm statistics)."""
    from tests.helpers.models import resnet50 as build

    return build().eval()


def efficientnet_b0() -> nn.Module:
    """EfficientNet-B0 (1000 classes, seeded)."""
    from relprop_bench.engine_models import efficientnet_b0 as build

    return build().eval()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "small_cnn": small_cnn, "resnet50": resnet50, "efficientnet_b0": efficientnet_b0}


def make_data(root: Path, n: int, size: int) -> list[Path]:
    """``n`` PNGs of smooth random colour fields (compress like photos, unlike pure noise)."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.png"
        coarse = rng.integers(0, 256, (size // 16 + 1, size // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        noise = rng.integers(-8, 9, (size, size, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)
        files.append(path)
    return sorted(files)


class Plain(Dataset[Tensor]):
    """What a user's own loop reads: RGB, resized, centre-cropped, normalised, (3, H, W)."""

    def __init__(self, files: list[Path], resize: int | None, crop: int | None) -> None:
        self.files, self.resize, self.crop = files, resize, crop
        self.mean = torch.tensor(MEAN).reshape(3, 1, 1)
        self.std = torch.tensor(STD).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        with Image.open(self.files[i]) as image:
            image = image.convert("RGB")
            if self.resize:
                scale = self.resize / min(image.size)
                image = image.resize((round(image.width * scale), round(image.height * scale)),
                                     Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
        x = x.permute(2, 0, 1).float().div_(255)
        if self.crop:
            top, left = (x.shape[1] - self.crop) // 2, (x.shape[2] - self.crop) // 2
            x = x[:, top:top + self.crop, left:left + self.crop]
        return (x - self.mean) / self.std


Times = tuple[float, float, float]


def _clock() -> Times:
    """Wall seconds, this process's CPU seconds, and those of its reaped children (the
    DataLoader workers, joined at the end of each pass)."""
    t = os.times()
    return time.perf_counter(), t.user + t.system, t.children_user + t.children_system


def _since(start: Times) -> Times:
    now = _clock()
    return now[0] - start[0], now[1] - start[1], now[2] - start[2]


def _gradient(model: nn.Module, x: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    out = model(x)
    top = out.gather(1, out.argmax(1, keepdim=True)).sum()
    (grad,) = torch.autograd.grad(top, x)
    return grad


def plain_loop(files: list[Path], out: Path, args: argparse.Namespace) -> Times:
    """The reference: read, preprocess, forward, input gradient, store (float16 .npy)."""
    model = MODELS[args.model]().to(args.device)
    loader = DataLoader(Plain(files, args.resize, args.crop), batch_size=args.batch_size,
                        num_workers=args.workers, pin_memory=args.device != "cpu")
    out.mkdir(parents=True, exist_ok=True)
    start = _clock()
    for n, x in enumerate(loader):
        grad = _gradient(model, x.to(args.device))
        np.save(out / f"{n:06d}.npy", grad.sum(1).to(torch.float16).cpu().numpy())
    return _since(start)


def relprop_run(data: Path, out: Path, method: str, composite: str | None,
                args: argparse.Namespace) -> Times:
    from relprop.run import RunConfig, explain_dataset
    from relprop.run.preprocess import Preprocess

    config = RunConfig(model=f"__main__:{args.model}", data=data, out=out, methods=(method,),
                       composite=composite, batch_size=args.batch_size, workers=args.workers,
                       device=args.device, quiet=True,
                       preprocess=Preprocess(resize=args.resize, crop=args.crop, mean=MEAN,
                                             std=STD))
    start = _clock()
    explain_dataset(config)
    return _since(start)


def engine_only(batches: list[Tensor], method: str, composite: str | None,
                args: argparse.Namespace) -> Times:
    """The method alone on preloaded batches: no reading, preprocessing or storing."""
    import relprop
    from relprop.run.config import resolve_composite

    model = MODELS[args.model]().to(args.device)
    resolved = None if composite is None else resolve_composite(composite, False)
    start = _clock()
    for x in batches:
        x = x.to(args.device)
        if method == "gradient":
            maps = _gradient(model, x)
        else:
            maps = relprop.explain(model, x, composite=resolved).relevance
        maps.sum(1).cpu()
    return _since(start)


def loader_only(files: list[Path], data: Path, runner: bool, args: argparse.Namespace) -> Times:
    """Reading and preprocessing alone (the DataLoader, no model): the plain ``Dataset`` or
    the runner's source and collate (which also makes the thumbnails). On a GPU this, not
    the explaining, bounds the throughput of both pipelines."""
    from relprop.run.batches import Collate
    from relprop.run.data import open_source
    from relprop.run.preprocess import Preprocess

    if runner:
        source = open_source(data, Preprocess(resize=args.resize, crop=args.crop, mean=MEAN,
                                              std=STD))
        shape = tuple(source[0]["x"].shape)
        loader: Any = DataLoader(source, batch_size=args.batch_size, num_workers=args.workers,
                                 collate_fn=Collate(shape))
    else:
        loader = DataLoader(Plain(files, args.resize, args.crop), batch_size=args.batch_size,
                            num_workers=args.workers)
    start = _clock()
    for _ in loader:
        pass
    return _since(start)


def _loader_table(files: list[Path], data: Path, args: argparse.Namespace) -> None:
    times: dict[str, list[Times]] = {"plain Dataset": [], "relprop source + collate": []}
    loader_only(files, data, False, args)
    loader_only(files, data, True, args)
    for _ in range(args.rounds):
        times["plain Dataset"].append(loader_only(files, data, False, args))
        times["relprop source + collate"].append(loader_only(files, data, True, args))
    print(f"reading and preprocessing only, {args.n} samples, {args.workers} workers, CPU "
          f"seconds of the main process and the workers together, min of {args.rounds}:")
    print("| loader | CPU s | ms per sample | wall s (median) |\n|---|---:|---:|---:|")
    for name, values in times.items():
        cpu = min(t[1] + t[2] for t in values)
        wall = statistics.median(t[0] for t in values)
        print(f"| {name} | {cpu:.2f} | {1000 * cpu / args.n:.1f} | {wall:.2f} |")


def _table(times: dict[str, list[Times]], counts: dict[str, int]) -> None:
    def rate(name: str) -> float:  # samples per main-process CPU second, best round
        return counts[name] / min(t[1] for t in times[name])

    reference = rate("plain gradient loop")
    print("| pipeline | main CPU s | workers CPU s | wall s (median) | samples/s | vs plain "
          "loop | floor | best | run / engine |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    floors = {f"relprop explain, {row}": floor for row, _, _, floor in RUNS}
    floors.update({f"engine only, {row}": floor for row, _, _, floor in RUNS})
    for name, values in times.items():
        floor = floors.get(name, 1.0)
        engine = name.replace("relprop explain", "engine only")
        share = f"{rate(name) / rate(engine):.2f}" if engine != name and engine in times else ""
        main_cpu = min(t[1] for t in values)
        workers = min(t[2] for t in values)
        wall = statistics.median(t[0] for t in values)
        print(f"| {name} | {main_cpu:.1f} | {workers:.1f} | {wall:.1f} | {rate(name):.2f} | "
              f"{rate(name) / reference:.2f}× | {floor:.1f}× | {1 / floor:.2f}× | {share} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="small_cnn")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--engine-n", type=int, help="samples of the engine-only rows "
                        "(default --n)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--resize", type=int)
    parser.add_argument("--crop", type=int)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default torch's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", default=",".join(str(i) for i in range(len(RUNS))),
                        help="which of the relprop rows (indices into RUNS)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--loader-only", action="store_true", help="time only reading and "
                        "preprocessing: the plain Dataset against the runner's source")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")  # αβ on a random net warns about its assumptions
    runs = [RUNS[int(i)] for i in args.runs.split(",")]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_data(root / "data", args.n, args.size)
        if args.loader_only:
            _loader_table(files, root / "data", args)
            return
        plain = Plain(files[: args.engine_n or args.n], args.resize, args.crop)
        stacked = torch.stack([plain[i] for i in range(len(plain))])
        batches = list(stacked.split(args.batch_size))
        counts = {"plain gradient loop": args.n}
        # one untimed pass of each: lazy imports and first-use set-up are not a run's cost
        plain_loop(files[: args.batch_size], root / "warm-plain", args)
        for row, method, composite, _ in runs:
            counts[f"relprop explain, {row}"] = args.n
            counts[f"engine only, {row}"] = len(plain)
            engine_only(batches[:1], method, composite, args)
        make_data(root / "warm", min(args.n, args.batch_size), args.size)
        relprop_run(root / "warm", root / "warm-run", "gradient", None, args)
        times: dict[str, list[Times]] = {name: [] for name in counts}
        for r in range(args.rounds):
            times["plain gradient loop"].append(plain_loop(files, root / f"r{r}-plain", args))
            for k, (row, method, composite, _) in enumerate(runs):
                seconds = relprop_run(root / "data", root / f"r{r}-{k}", method, composite, args)
                times[f"relprop explain, {row}"].append(seconds)
                seconds = engine_only(batches, method, composite, args)
                times[f"engine only, {row}"].append(seconds)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        shards = sorted((root / "r0-0" / "shards").glob("*.safetensors"))
        stored = sum(p.stat().st_size for p in shards)
        from safetensors import safe_open

        with safe_open(str(shards[0]), "pt") as fh:
            shapes = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}
    print(f"{args.model}, {args.n} PNGs {args.size}x{args.size} → resize {args.resize}, crop "
          f"{args.crop}; batch {args.batch_size}, {args.workers} workers, {args.device}, torch "
          f"threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average at start "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, after {os.getloadavg()[0]:.1f}; "
          f"{args.rounds} interleaved rounds: CPU seconds are the minimum, wall the median\n")
    _table(times, counts)
    heatmap = shapes["relevance"]
    print(f"\nstored: {stored / args.n / 1024:.1f} KiB per sample in the default format; "
          f"relevance {heatmap[1:]} float16 = {np.prod(heatmap[1:]) * 2 / 1024:.1f} KiB, "
          f"thumbnail {shapes.get('thumbnail', (0,))[1:]} uint8; shards {shapes}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
