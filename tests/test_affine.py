"""BatchNorm scales and shifts made for a whole forward pass at once
(:mod:`relprop._engine.affine`) are the op-by-op ones (the same arithmetic, compared at float
round-off), and a model that writes its BatchNorm statistics after using them is explained
with the values its BatchNorm used."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import relprop
from relprop import composites as C
from relprop import rules as R
from relprop._engine.affine import AffineBatch, affine_of

EPSILON = C.uniform(R.Epsilon(1e-6))


def _statistics(channels: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    var = torch.rand(channels, generator=g, dtype=torch.float64).add_(0.1).to(dtype)
    mean = torch.randn(channels, generator=g, dtype=torch.float64).to(dtype)
    weight = torch.randn(channels, generator=g, dtype=torch.float64).to(dtype)
    bias = torch.randn(channels, generator=g, dtype=torch.float64).to(dtype)
    return var, mean, weight, bias


def test_batched_scales_and_shifts_are_the_op_by_op_ones() -> None:
    """Several groups (dtype, eps, with and without affine parameters), a BatchNorm whose
    weight is wider than its statistics (made op by op: torch promotes), and a layer in
    another dtype than the BatchNorm."""
    batch = AffineBatch()
    cases = []
    for i, (channels, dtype, eps, weight, bias, layer_dtype) in enumerate([
            (3, torch.float32, 1e-5, True, True, torch.float32),
            (5, torch.float32, 1e-5, True, True, torch.float32),
            (4, torch.float32, 1e-3, True, True, torch.float32),
            (2, torch.float32, 1e-5, False, False, torch.float32),
            (6, torch.float64, 1e-5, True, True, torch.float64),
            (3, torch.float32, 1e-5, True, True, torch.float64),
            (7, torch.float16, 1e-5, True, True, torch.float16)]):
        var, mean, w, b = _statistics(channels, dtype, i)
        sources = (var, mean, w if weight else None, b if bias else None, eps)
        cases.append((batch.defer(*sources, layer_dtype, f"bn{i}"), sources, layer_dtype))
    var, mean, w, b = _statistics(3, torch.float32, 99)
    wide = (var, mean, w.double(), b, 1e-5)  # scale · weight promotes to float64
    cases.append((batch.defer(*wide, torch.float64, "wide"), wide, torch.float64))
    assert batch.pending
    for affine, sources, layer_dtype in cases:
        scale, shift = affine_of(*sources)
        tight = {torch.float16: 1e-3, torch.float32: 1e-6, torch.float64: 1e-12}[layer_dtype]
        torch.testing.assert_close(affine.scale, scale.to(layer_dtype), rtol=tight, atol=0.0)
        torch.testing.assert_close(affine.shift, shift.to(layer_dtype), rtol=tight, atol=0.0)
        # and the formula itself, independently of the op order
        var, mean, w, b, eps = (s.double() if isinstance(s, torch.Tensor) else s
                                for s in sources)
        expected = (w if w is not None else 1.0) / torch.sqrt(var + eps)
        tolerance = 1e-2 if var.dtype == torch.float16 or sources[0].dtype == torch.float16 \
            else 1e-6
        torch.testing.assert_close(affine.scale.double(), expected, rtol=tolerance, atol=0.0)
    assert not batch.pending


class _Net(nn.Module):
    def __init__(self, write: str | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 5 * 5, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.bn.running_mean.copy_(torch.randn(4, generator=g))
            self.bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
        self.write = write

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        if self.write == "through the interceptor":  # seen by relprop as an in-place op
            self.bn.running_var.mul_(4.0)
        elif self.write == "past the interceptor":
            with torch._C.DisableTorchFunction():
                self.bn.running_var.mul_(4.0)
        return self.head(h.flatten(1))


def test_statistics_written_after_their_use_are_explained_as_used() -> None:
    """The model scales its BatchNorm's running variance after normalising with it: the
    explanation uses the variance the BatchNorm used (the write makes the pending scales
    first), as the same net without the write does."""
    x = torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(4))
    plain = _Net().eval()
    writing = _Net("through the interceptor").eval()
    writing.load_state_dict(plain.state_dict())
    expected = relprop.explain(plain, x, 1, EPSILON).relevance
    got = relprop.explain(copy.deepcopy(writing), x, 1, EPSILON).relevance
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_statistics_written_past_the_interceptor_are_refused_by_name() -> None:
    writing = _Net("past the interceptor").eval()
    x = torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(4))
    with pytest.raises(relprop.RelpropError, match="BatchNorm at 'bn'"):
        relprop.explain(writing, x, 1, EPSILON)
