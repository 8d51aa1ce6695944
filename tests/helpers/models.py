"""Builders of test architectures for relprop, written from scratch with ``torch.nn``.

Every builder takes a ``seed``, is deterministic given it (the global RNG is left untouched),
and returns the model in ``eval()`` mode with random weights. Small variants run a forward pass
on a tiny batch in milliseconds; :func:`vgg16` and :func:`resnet50` have the real layer shapes
and are meant for benchmarks.

The architectures deliberately use the spellings LRP engines must cope with: in-place ReLU,
``out += identity`` / ``out + identity`` / ``torch.add(out, identity)`` residuals, ``torch.cat``
of feature lists, functional ``F.relu`` / ``F.silu``, gating ``x * gate``, slicing, ``view``,
a module called twice, pooling and dropout.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VGG_CFGS", "BasicBlock", "Bottleneck", "FunctionalNet", "MBConv", "SqueezeExcite",
           "densenet", "efficientnet", "functional_net", "mlp", "randomize_batchnorm",
           "remove_biases", "resnet", "resnet50", "vgg", "vgg16"]

_BN = nn.modules.batchnorm._BatchNorm

# Conv widths, "M" = 2x2 max pool. "A"/"D"/"E" are VGG-11/16/19; "*-tiny" are for tests
# ("A-tiny": 16x16 inputs -> 2x2 maps, "D-tiny": 32x32 inputs -> 2x2 maps).
VGG_CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    "A-tiny": [8, "M", 16, "M", 16, "M"],
    "D-tiny": [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"],
}


def _build(seed: int, factory: Callable[[], nn.Module], bias_scale: float = 0.1) -> nn.Module:
    """Construct ``factory()`` under a forked RNG seeded with ``seed`` and initialise it.

    Conv/linear weights get Kaiming-normal (fan-in, ReLU gain) so activations keep their scale
    through deep stacks; existing biases get U(-bias_scale, bias_scale) so they matter.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.uniform_(m.bias, -bias_scale, bias_scale)
    return model.eval()


# ----------------------------------------------------------------------------------- VGG
class VGG(nn.Module):
    """Conv3x3-[BN]-ReLU(inplace) blocks with max pools, adaptive avg pool, MLP classifier."""

    def __init__(self, features: nn.Sequential, pool_size: int, channels: int,
                 hidden: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool_size * pool_size, hidden), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg(cfg: str | Sequence[int | str] = "A-tiny", batch_norm: bool = False,
        num_classes: int = 10, in_channels: int = 3, width: int | None = None,
        pool_size: int | None = None, seed: int = 0) -> nn.Module:
    """VGG-style network.

    ``cfg`` is a key of :data:`VGG_CFGS` or a list of widths/"M". ``width`` is the hidden width
    of the classifier (default 4096 for the full configs, 32 for the tiny ones); ``pool_size``
    the adaptive avg-pool output side (default 7, or 2 for tiny configs).
    """
    name = cfg if isinstance(cfg, str) else ""
    layers_cfg = VGG_CFGS[cfg] if isinstance(cfg, str) else list(cfg)
    tiny = name.endswith("tiny") or not name
    hidden = width if width is not None else (32 if tiny else 4096)
    side = pool_size if pool_size is not None else (2 if tiny else 7)

    def factory() -> nn.Module:
        layers: list[nn.Module] = []
        c = in_channels
        for v in layers_cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            assert isinstance(v, int)
            layers.append(nn.Conv2d(c, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c = v
        return VGG(nn.Sequential(*layers), side, c, hidden, num_classes)

    return _build(seed, factory)


def vgg16(batch_norm: bool = False, num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """Full-size VGG-16 (13 convs 64..512, classifier 25088-4096-4096-classes), 224x224 input."""
    return vgg("D", batch_norm=batch_norm, num_classes=num_classes, seed=seed)


# -------------------------------------------------------------------------------- ResNet
def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, residual ``out += identity``, ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN; residual ``torch.add(out, identity)`` when
    the block downsamples, ``out = out + identity`` otherwise; ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            out = torch.add(out, self.downsample(x))
        else:
            out = out + x
        return self.relu(out)


class ResNet(nn.Module):
    """Stem conv7x7/2-BN-ReLU-maxpool, residual stages, adaptive avg pool, linear."""

    def __init__(self, stages: nn.Sequential, width: int, channels: int, num_classes: int,
                 in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layers = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layers(x))
        return self.fc(torch.flatten(x, 1))


def resnet(layers: Sequence[int] = (1, 2, 1), block: str = "mixed", width: int = 8,
           num_classes: int = 10, in_channels: int = 3, seed: int = 0) -> nn.Module:
    """ResNet-style network; stage ``i`` has ``layers[i]`` blocks of ``width * 2**i`` planes,
    stride 2 from the second stage on.

    ``block`` is ``"basic"``, ``"bottleneck"`` or ``"mixed"`` (basic blocks in even stages,
    bottlenecks in odd ones). The default (32x32 input) has all three residual spellings:
    ``+=`` (stage 0), ``torch.add`` and ``+`` (stage 1), and a downsampling basic block.
    """
    if block not in ("basic", "bottleneck", "mixed"):
        raise ValueError(f"unknown block type {block!r}")

    def factory() -> nn.Module:
        stages: list[nn.Module] = []
        c = width
        for i, n in enumerate(layers):
            kind: type[BasicBlock] | type[Bottleneck]
            if block == "mixed":
                kind = BasicBlock if i % 2 == 0 else Bottleneck
            else:
                kind = BasicBlock if block == "basic" else Bottleneck
            planes = width * 2**i
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(kind(c, planes, stride=2 if (i > 0 and j == 0) else 1))
                c = planes * kind.expansion
            stages.append(nn.Sequential(*blocks))
        return ResNet(nn.Sequential(*stages), width, c, num_classes, in_channels)

    return _build(seed, factory)


def resnet50(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """Full-size ResNet-50 ([3, 4, 6, 3] bottlenecks, 64..2048 channels), 224x224 input."""
    return resnet((3, 4, 6, 3), block="bottleneck", width=64, num_classes=num_classes, seed=seed)


# ------------------------------------------------------------------------------ DenseNet
class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3 on ``torch.cat`` of all previous feature maps."""

    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleList):
    """Dense layers each fed the concatenation of the block input and all earlier outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self:
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    """Stem conv7x7/2-BN-ReLU-maxpool, dense blocks with transitions, BN-F.relu-pool-linear."""

    def __init__(self, growth: int, block_config: Sequence[int], init_features: int,
                 bn_size: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        mods: list[nn.Module] = [
            nn.Conv2d(in_channels, init_features, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(init_features), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        ]
        c = init_features
        for i, n in enumerate(block_config):
            mods.append(DenseBlock(DenseLayer(c + k * growth, growth, bn_size) for k in range(n)))
            c += n * growth
            if i != len(block_config) - 1:  # transition: BN-ReLU-conv1x1-avgpool
                mods += [nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                         nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, stride=2)]
                c //= 2
        mods.append(nn.BatchNorm2d(c))
        self.features = nn.Sequential(*mods)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x), inplace=True)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def densenet(growth_rate: int = 4, block_config: Sequence[int] = (2, 2),
             num_init_features: int = 8, bn_size: int = 2, num_classes: int = 10,
             in_channels: int = 3, seed: int = 0) -> nn.Module:
    """Small DenseNet-style network (32x32 input -> 4x4 maps in the last block)."""
    return _build(seed, lambda: DenseNet(growth_rate, block_config, num_init_features,
                                         bn_size, num_classes, in_channels))


# -------------------------------------------------------------------------- EfficientNet
class SqueezeExcite(nn.Module):
    """Avg pool, conv1x1, ``F.silu``, conv1x1, sigmoid; returns ``x * gate``."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.silu(self.fc1(self.avgpool(x)))))
        return x * gate


class MBConv(nn.Module):
    """[expand conv1x1-BN-SiLU], depthwise conv-BN-SiLU, SE, project conv1x1-BN, [+ input]."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU()]
        layers += [nn.Conv2d(mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid,
                             bias=False), nn.BatchNorm2d(mid), nn.SiLU(),
                   SqueezeExcite(mid, max(1, cin // 4)),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


# (expand ratio, kernel, stride, out channels, repeats)
_EFFNET_SMALL: list[tuple[int, int, int, int, int]] = [
    (1, 3, 1, 8, 1), (4, 3, 2, 12, 2), (4, 3, 2, 16, 2),
]


def efficientnet(stages: Sequence[tuple[int, int, int, int, int]] = tuple(_EFFNET_SMALL),
                 stem: int = 8, head: int = 32, num_classes: int = 10, in_channels: int = 3,
                 seed: int = 0) -> nn.Module:
    """Small EfficientNet-style network: stem conv3x3/2-BN-SiLU, MBConv stages given as
    ``(expand, kernel, stride, channels, repeats)``, head conv1x1-BN-SiLU, pool, dropout,
    linear. The default maps 32x32 inputs to 4x4 and has residual and non-residual blocks."""

    def factory() -> nn.Module:
        mods: list[nn.Module] = [nn.Conv2d(in_channels, stem, 3, stride=2, padding=1,
                                           bias=False), nn.BatchNorm2d(stem), nn.SiLU()]
        c = stem
        for expand, kernel, stride, cout, repeats in stages:
            for r in range(repeats):
                mods.append(MBConv(c, cout, expand, kernel, stride if r == 0 else 1))
                c = cout
        mods += [nn.Conv2d(c, head, 1, bias=False), nn.BatchNorm2d(head), nn.SiLU()]
        return nn.Sequential(nn.Sequential(*mods), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                             nn.Dropout(0.2), nn.Linear(head, num_classes))

    return _build(seed, factory)


# ---------------------------------------------------------------------- MLP / functional
def mlp(in_features: int = 16, hidden: Sequence[int] = (32, 32), num_classes: int = 4,
        seed: int = 0) -> nn.Module:
    """Plain ``Flatten, (Linear, ReLU)*, Linear`` MLP; accepts (N, in_features) or images
    whose flattened size is ``in_features``."""

    def factory() -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten(1)]
        c = in_features
        for h in hidden:
            layers += [nn.Linear(c, h), nn.ReLU()]
            c = h
        layers.append(nn.Linear(c, num_classes))
        return nn.Sequential(*layers)

    return _build(seed, factory)


class FunctionalNet(nn.Module):
    """Uses ``F.relu``, a conv called twice, channel slicing, ``torch.cat``, ``nn.AvgPool2d``
    and ``F.avg_pool2d``, ``view``, ``reshape`` and ``Dropout``. Input (N, C, 16, 16)."""

    def __init__(self, in_channels: int = 3, width: int = 8, hidden: int = 32,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.shared = nn.Conv2d(width, width, 3, padding=1)
        self.branch = nn.Conv2d(width // 2, width - width // 2, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(width * 16, hidden)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))  # same module, second call
        half = self.width // 2
        a, b = x[:, :half], x[:, half:]
        b = F.relu(self.branch(a)) + b
        x = torch.cat([a, b], dim=1)
        x = F.avg_pool2d(self.pool(x), 2)  # 16 -> 8 -> 4
        x = x.view(x.size(0), -1)
        x = self.drop(F.relu(self.fc1(x)))
        return self.fc2(x.reshape(x.shape[0], -1))


def functional_net(in_channels: int = 3, width: int = 8, hidden: int = 32,
                   num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Small :class:`FunctionalNet` (16x16 input)."""
    return _build(seed, lambda: FunctionalNet(in_channels, width, hidden, num_classes))


# --------------------------------------------------------------------------- utilities
@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random statistics and affine parameters, in place.

    running_mean ~ N(0, 0.5^2), running_var ~ U(0.5, 2), weight ~ U(0.5, 1.5),
    bias ~ N(0, 0.2^2) so that no BN is the identity. Returns ``model``.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor | None, lo: float, hi: float) -> None:
        if t is not None:
            t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen))

    def normal(t: torch.Tensor | None, std: float) -> None:
        if t is not None:
            t.copy_(std * torch.randn(t.shape, generator=gen))

    for m in model.modules():
        if isinstance(m, _BN):
            normal(m.running_mean, 0.5)
            uniform(m.running_var, 0.5, 2.0)
            uniform(m.weight, 0.5, 1.5)
            normal(m.bias, 0.2)
    return model


@torch.no_grad()
def remove_biases(model: nn.Module) -> nn.Module:
    """Return a deep copy whose conv/linear biases are zero and whose BatchNorms are pure
    per-channel scales (running_mean = 0, bias = 0); weights and running_var are kept.

    Such a ReLU network is positively homogeneous, so conservative LRP rules must give input
    relevance that sums to the explained output.
    """
    clone = copy.deepcopy(model)
    for m in clone.modules():
        if isinstance(m, _BN):
            if m.running_mean is not None:
                m.running_mean.zero_()
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and m.bias is not None:
            m.bias.zero_()
    return clone.eval()
