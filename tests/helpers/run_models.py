"""Small models for the dataset-run tests, importable as ``tests.helpers.run_models:NAME``
(also from a subprocess or torchrun with the repository root on PYTHONPATH)."""

from __future__ import annotations

import os
import time

import torch
from torch import Tensor, nn


def tiny_cnn(classes: int = 3, channels: int = 3) -> nn.Module:
    """A seeded two-conv CNN for ``(N, channels, H, W)`` inputs, in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, classes))
    return model.eval()


def tiny_cnn_gray() -> nn.Module:
    """:func:`tiny_cnn` for one-channel images."""
    return tiny_cnn(channels=1)


class _Slow(nn.Module):
    """Sleeps ``RELPROP_TEST_SLEEP`` seconds per forward pass, so that a test can kill the
    run in the middle."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        time.sleep(float(os.environ.get("RELPROP_TEST_SLEEP", "0.2")))
        out: Tensor = self.inner(x)
        return out


def slow_cnn() -> nn.Module:
    """:func:`tiny_cnn`, slowed down."""
    return _Slow(tiny_cnn()).eval()


class _Picky(nn.Module):
    """Fails on inputs whose first pixel is exactly 0.5 (a sample that cannot be explained)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        if bool((x[:, 0, 0, 0] == 0.5).any()):
            raise RuntimeError("picky model: first pixel is 0.5")
        out: Tensor = self.inner(x)
        return out


def picky_cnn() -> nn.Module:
    """:func:`tiny_cnn` that refuses some samples."""
    return _Picky(tiny_cnn()).eval()
