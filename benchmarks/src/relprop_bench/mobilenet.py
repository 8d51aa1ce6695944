"""A small MobileNetV2-style net for the cluttered-digits benchmark (Sandler et al. 2018).

Depthwise-separable inverted residual blocks: a 1x1 expanding convolution, a depthwise 3x3
convolution (``groups`` = channels), a 1x1 projecting convolution, each followed by
BatchNorm, ReLU6 after the first two; a skip connection where the block keeps its shape.
This is the family where αβ on the depthwise convolutions fails to conserve (each output sees
nine inputs, often of one sign), so the localisation benchmark can compare the rules of the
default composite on grouped convolutions (bench/LOCALISATION.md).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BLOCKS", "InvertedResidual", "mobilenet_net"]

#: MobileNetV2's table, shrunk for 32x32 inputs: (expansion t, channels c, blocks n, stride s)
#: of the first block of each stage; channels are multiplied by ``width / 16``
BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 2),  # 32 -> 16 px; no expansion, as MobileNetV2's first block
    (4, 24, 2, 1),
    (4, 32, 2, 2),  # -> 8 px
    (4, 48, 2, 2),  # -> 4 px
)


class InvertedResidual(nn.Module):
    """``[1x1 conv, BN, ReLU6,] depthwise 3x3 conv, BN, ReLU6, 1x1 conv, BN`` (+ input).

    The expanding 1x1 convolution is left out when ``expansion == 1``; the input is added
    back when ``stride == 1`` and the channel count is kept.
    """

    def __init__(self, channels_in: int, channels_out: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = channels_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [
                nn.Conv2d(channels_in, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, channels_out, 1, bias=False),
            nn.BatchNorm2d(channels_out),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and channels_in == channels_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def mobilenet_net(
    width: int = 16, head: int = 96, classes: int = 10, canvas: int = 32, seed: int = 0
) -> nn.Sequential:
    """The MobileNetV2-style CNN for ``(N, 3, canvas, canvas)`` inputs, in eval mode.

    A 3x3 stem convolution (``width`` channels, stride 1), the inverted residual blocks of
    :data:`BLOCKS` (7 blocks, 7 depthwise convolutions, 3 skip connections), a 1x1 head
    convolution to ``head`` channels with BatchNorm and ReLU6, global average pooling and one
    linear layer. Kaiming-normal weights drawn from ``seed``.
    """
    shrink = 2 ** sum(s == 2 for *_, s in BLOCKS)
    if canvas % shrink:
        raise ValueError(f"canvas must be a multiple of {shrink}, got {canvas}")
    scale = width / 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = [
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU6(),
        ]
        channels = width
        for expansion, out, n, stride in BLOCKS:
            out = max(8, round(out * scale))
            for k in range(n):
                layers.append(InvertedResidual(channels, out, expansion, stride if k == 0 else 1))
                channels = out
        layers += [
            nn.Conv2d(channels, head, 1, bias=False),
            nn.BatchNorm2d(head),
            nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(head, classes),
        ]
        model = nn.Sequential(*layers)
        he_init(model)
    return model.eval()


def he_init(model: nn.Module) -> None:
    """He-normal weights (for ReLU) and zero biases on every conv and linear layer."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
