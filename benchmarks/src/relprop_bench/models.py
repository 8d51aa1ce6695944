"""VGG-style ReLU networks for the cluttered-digits benchmark, their training and weight cache.

:func:`vgg_net` builds ``depth`` 3x3 convolutions in four stages, each closed by 2x2 max
pooling (``depth = 8``: two convolutions per stage, as in VGG), or in the stages that
``NetConfig.stages`` lists (``vgg13``: VGG-16's 2, 2, 3, 3, 3 in five stages), optionally with
BatchNorm after every convolution, and two dense layers on top. Deep enough (8 convolutions
and more) for the gradient of the output to shatter (Balduzzi et al. 2017), which is what
separates uniform LRP-0 (= Gradient x Input) from the composites in the benchmark.

:func:`trained_net` returns a trained model for ``(variant, seed)``, from the cache directory
when it was trained before with the same configuration, else trained now (a minute or two on
two CPU cores) and saved there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .cluttered import make_cluttered_digits
from .mobilenet import he_init, mobilenet_net

__all__ = [
    "VARIANTS",
    "NetConfig",
    "TrainConfig",
    "vgg_net",
    "build_net",
    "train_net",
    "trained_net",
    "accuracy",
    "default_cache_dir",
    "benchmark_images",
    "training_images",
    "data_init",
]

#: data seeds: test images are drawn from held-out source digits with this seed
TEST_SEED = 20_200_000
TRAIN_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class NetConfig:
    """Architecture: ``depth`` convolutions of ``width`` (first stage) and ``2*width`` channels.

    ``stages``: convolutions per pooling stage; ``None`` is four stages of ``depth // 4``
    (``depth`` a multiple of 4), otherwise they must add up to ``depth`` and the canvas must
    survive ``len(stages)`` halvings.

    ``arch="mobilenet"``: the MobileNetV2-style net of :func:`relprop_bench.mobilenet.
    mobilenet_net` instead, ``width`` channels in its stem and ``hidden`` in its 1x1 head
    convolution; ``depth`` is its count of inverted residual (depthwise-separable) blocks.
    """

    depth: int = 8
    batchnorm: bool = False
    width: int = 16
    hidden: int = 64
    canvas: int = 32
    classes: int = 10
    stages: tuple[int, ...] | None = None
    arch: str = "vgg"

    def __post_init__(self) -> None:
        if self.arch not in ("vgg", "mobilenet"):
            raise ValueError(f"arch must be 'vgg' or 'mobilenet', got {self.arch!r}")
        if self.arch == "mobilenet" and (self.depth != 7 or not self.batchnorm or self.stages):
            raise ValueError("the mobilenet arch has 7 blocks with BatchNorm and no stages")

    @property
    def name(self) -> str:
        wide = f"-w{self.width}" if self.width != 16 else ""
        if self.arch == "mobilenet":
            return f"mobilenet{wide}"
        return f"vgg{self.depth}{wide}{'-bn' if self.batchnorm else ''}"

    @property
    def convs_per_stage(self) -> tuple[int, ...]:
        """Convolutions in each stage, every stage closed by 2x2 max pooling."""
        if self.stages is None:
            if self.depth < 4 or self.depth % 4:
                raise ValueError(f"depth must be a positive multiple of 4, got {self.depth}")
            return (self.depth // 4,) * 4
        if sum(self.stages) != self.depth or min(self.stages, default=0) < 1:
            raise ValueError(
                f"stages must be positive and add up to depth={self.depth}, got {self.stages}"
            )
        return self.stages


#: the benchmark's depth variants by name; vgg13 has VGG-16's 13 convolutions (2, 2, 3, 3, 3;
#: its fifth pooling leaves 1x1 on the 32x32 canvas)
VARIANTS: dict[str, NetConfig] = {
    "vgg4": NetConfig(depth=4),
    "vgg8": NetConfig(depth=8),
    "vgg8-bn": NetConfig(depth=8, batchnorm=True),
    "vgg13": NetConfig(depth=13, stages=(2, 2, 3, 3, 3)),
    "vgg8-w32": NetConfig(depth=8, width=32),  # twice the channels (not in the default run)
    # depthwise-separable inverted residual blocks (not in the default run)
    "mobilenet": NetConfig(arch="mobilenet", depth=7, batchnorm=True, hidden=96),
}


@dataclass(frozen=True)
class TrainConfig:
    """Training: AdamW on ``n_train`` generated images, after a data-dependent initialisation.

    The learning rate stays at ``lr`` for the first half of the steps (no warm-up), then
    decays to 0 on a half cosine. ``easy_fraction`` of the images show the red digit alone
    (no distractors), mixed in with the cluttered ones. Without BatchNorm, an 8-conv net
    first sits at chance for several hundred steps; with a one-cycle schedule (warm-up) and
    batches of 64 it never left chance within 12 epochs for one seed out of two, hence
    small batches, no warm-up, and the initialisation of :func:`data_init`.
    """

    n_train: int = 10_000
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    easy_fraction: float = 0.2


def vgg_net(config: NetConfig = NetConfig(), seed: int = 0) -> nn.Sequential:
    """A VGG-style ReLU CNN for ``(N, 3, canvas, canvas)`` inputs, initialised from ``seed``.

    Stages of 3x3 convolutions (:attr:`NetConfig.convs_per_stage`; ``width`` channels in the
    first stage, ``2 * width`` after), each convolution followed by BatchNorm if asked and
    ReLU, each stage closed by 2x2 max pooling; then Flatten, Linear(·, hidden), ReLU,
    Linear(hidden, classes).
    """
    per_stage = config.convs_per_stage
    shrink = 2 ** len(per_stage)
    if config.canvas % shrink:
        raise ValueError(
            f"canvas must be a multiple of {shrink} ({len(per_stage)} poolings), "
            f"got {config.canvas}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        channels = 3
        for stage, convs in enumerate(per_stage):
            out = config.width if stage == 0 else 2 * config.width
            for _ in range(convs):
                layers.append(nn.Conv2d(channels, out, 3, padding=1))
                if config.batchnorm:
                    layers.append(nn.BatchNorm2d(out))
                layers.append(nn.ReLU())
                channels = out
            layers.append(nn.MaxPool2d(2))
        side = config.canvas // shrink
        layers += [
            nn.Flatten(),
            nn.Linear(channels * side * side, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.classes),
        ]
        model = nn.Sequential(*layers)
        he_init(model)
    return model.eval()


def build_net(config: NetConfig = NetConfig(), seed: int = 0) -> nn.Sequential:
    """The untrained net of ``config`` (VGG-style or MobileNet-style), initialised from ``seed``."""
    if config.arch == "mobilenet":
        return mobilenet_net(config.width, config.hidden, config.classes, config.canvas, seed)
    return vgg_net(config, seed)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``images``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in zip(images.split(batch_size), labels.split(batch_size)):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(labels), 1)


@torch.no_grad()
def data_init(model: nn.Sequential, x: Tensor) -> None:
    """Rescale every conv/linear layer so its outputs on ``x`` have zero mean and unit
    variance per channel, layer after layer (LSUV-style: Mishkin & Matas 2016, "All you need
    is a good init"): half of each ReLU's inputs are then positive, and the output depends
    on the image rather than on the mean brightness of its background."""
    h = x
    for layer in model:
        if isinstance(layer, nn.Conv2d | nn.Linear) and layer.bias is not None:
            z = layer(h)
            dims = (0, 2, 3) if z.dim() == 4 else (0,)
            mean, std = z.mean(dims), z.std(dims).clamp(min=1e-6)
            layer.weight.div_(std.reshape(-1, *([1] * (layer.weight.dim() - 1))))
            layer.bias.sub_(mean).div_(std)
        h = layer(h)


def benchmark_images(n: int, canvas: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    """The fixed test images (held-out source digits): ``(images, labels, boxes)``."""
    return make_cluttered_digits(n, TEST_SEED, canvas=canvas, split="test")


def training_images(train: TrainConfig, seed: int, canvas: int = 32) -> tuple[Tensor, Tensor]:
    """The training images of ``seed``: cluttered, and ``easy_fraction`` without distractors."""
    easy = round(train.easy_fraction * train.n_train)
    data_seed = TRAIN_SEED_OFFSET + seed
    images, labels, _ = make_cluttered_digits(
        train.n_train - easy, data_seed, canvas=canvas, split="train"
    )
    if easy:
        alone, alone_labels, _ = make_cluttered_digits(
            easy, data_seed + 5_000, canvas=canvas, distractors=0, split="train"
        )
        images, labels = torch.cat([images, alone]), torch.cat([labels, alone_labels])
    return images, labels


Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train_net(
    config: NetConfig,
    seed: int,
    train: TrainConfig = TrainConfig(),
    progress: Progress | None = _stderr,
) -> tuple[nn.Sequential, dict[str, Any]]:
    """Train :func:`build_net` on cluttered digits; returns the model (eval mode) and metadata."""
    start = time.perf_counter()
    images, labels = training_images(train, seed, config.canvas)
    test_images, test_labels, _ = benchmark_images(1000, config.canvas)
    model = build_net(config, seed)
    gen = torch.Generator().manual_seed(seed)
    data_init(model, images[torch.randperm(len(labels), generator=gen)[:256]])
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    half = train.epochs * -(-train.n_train // train.batch_size) / 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 1.0 if step < half else 0.5 + 0.5 * math.cos(math.pi * (step / half - 1))
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(train.epochs):
        model.train()
        total = 0.0
        for batch in torch.randperm(train.n_train, generator=gen).split(train.batch_size):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(images[batch]), labels[batch])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        if progress is not None:
            acc = accuracy(model, test_images[:500], test_labels[:500])
            progress(
                f"  {config.name} seed {seed}: epoch {epoch + 1}/{train.epochs} "
                f"loss {total / train.n_train:.3f} test acc {acc:.3f} "
                f"({time.perf_counter() - start:.0f}s)"
            )
    model.eval()
    meta = {
        "net": asdict(config),
        "train": asdict(train),
        "seed": seed,
        "train_accuracy": accuracy(model, images[:2000], labels[:2000]),
        "test_accuracy": accuracy(model, test_images, test_labels),
        "n_test": len(test_labels),
        "train_seconds": time.perf_counter() - start,
        "torch_version": str(torch.__version__),
        "threads": torch.get_num_threads(),
    }
    return model, meta


def default_cache_dir() -> Path:
    """``$RELPROP_CACHE`` or ``$XDG_CACHE_HOME/relprop`` (default ``~/.cache/relprop``)."""
    if os.environ.get("RELPROP_CACHE"):
        return Path(os.environ["RELPROP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relprop"


def _cache_file(cache: Path, config: NetConfig, seed: int, train: TrainConfig) -> Path:
    net = asdict(config)
    if net["stages"] is None:  # added later: the nets from before keep their cached weights
        del net["stages"]
    if net["arch"] == "vgg":  # likewise
        del net["arch"]
    key = json.dumps({"net": net, "train": asdict(train), "recipe": 2}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return cache / "localisation" / f"{config.name}-seed{seed}-{digest}.pt"


def trained_net(
    config: NetConfig,
    seed: int,
    train: TrainConfig = TrainConfig(),
    *,
    cache: Path | None = None,
    retrain: bool = False,
    progress: Progress | None = _stderr,
) -> tuple[nn.Sequential, dict[str, Any]]:
    """The trained model for ``(config, seed, train)``: from ``cache`` if there, else trained.

    ``cache``: a folder (default :func:`default_cache_dir`); weights go to
    ``cache/localisation/<name>-seed<seed>-<hash of the configuration>.pt``.
    """
    path = _cache_file(default_cache_dir() if cache is None else Path(cache), config, seed, train)
    model = build_net(config, seed)
    if path.is_file() and not retrain:
        blob = torch.load(path, weights_only=True)
        model.load_state_dict(blob["state_dict"])
        return model.eval(), dict(blob["meta"], cached=str(path))
    model, meta = train_net(config, seed, train, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, path)
    return model, dict(meta, cached=str(path))
