"""Sliding-window (banded) self-attention, as Longformer and LED compute it, against a float64
oracle.

The attention of a token ``i`` to the ``2w + 1`` keys ``i - w .. i + w`` is computed in
chunks of ``w`` queries: the band probabilities ``P[b, i, k]`` (weight of key ``i - w + k``)
are padded with zeros and re-viewed so that each chunk's rows are shifted diagonals
(``F.pad`` then views and slices), the values are padded and viewed as overlapping windows of
``3w`` rows (``as_strided``), and one ``einsum`` multiplies the two. Rows of padded queries
attend to nothing (all ``-inf``: NaN after the softmax) and are set to 0 (``masked_fill``).

Under CP-LRP the attention weights are constants (Ali et al. 2022), so the value path is
linear in the input: with bias-free projections and ε = 0, LRP-0 equals Gradient × Input of
the same network with its probabilities detached (Montavon et al. 2019, §10.2.3), computed
here by autograd alone. The relevance must match that oracle per element and conserve.
Before ``pad`` kept the attention-weights mark, the padded probabilities were a second signal
factor of the einsum: half the local relevance went into the softmax and was lost (the zoo's
Longformer and LED lost 2e-5 and 6e-5 of the explained logit).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop.composites import cp_lrp

B, T, D, W = 2, 12, 6, 2  # batch, tokens (a multiple of W), features, one-sided window


def _x(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _band_scores(q: Tensor, k: Tensor, w: int) -> Tensor:
    """``S[b, i, m] = q_i · k_(i - w + m)``, keys outside the sequence -inf: (B, T, 2w + 1)."""
    t = q.shape[1]
    windows = F.pad(k, (0, 0, w, w)).unfold(1, 2 * w + 1, 1)  # (B, T, D, 2w + 1)
    scores = torch.einsum("btd,btdm->btm", q, windows) / q.shape[-1] ** 0.5
    key = torch.arange(t).unsqueeze(1) - w + torch.arange(2 * w + 1)  # (T, 2w + 1)
    return scores.masked_fill((key < 0) | (key >= t), float("-inf"))


def _diagonalize(probs: Tensor, w: int) -> Tensor:
    """Band probabilities per chunk (B, C, w, 2w + 1) -> (B, C, w, 3w): row ``r`` shifted
    right by ``r``, zeros elsewhere (pad, view, slice, as Longformer does)."""
    b, c, _, _ = probs.shape
    padded = F.pad(probs, (0, w + 1))  # (B, C, w, 3w + 2)
    flat = padded.view(b, c, -1)[:, :, :-w]  # w (3w + 2) - w = w (3w + 1)
    return flat.view(b, c, w, 3 * w + 1)[..., :-1]


def _windowed_values(v: Tensor, w: int) -> Tensor:
    """Values (B, T, D) -> overlapping windows (B, T / w, 3w, D), chunk ``c`` holding the
    values of tokens ``cw - w .. cw + 2w`` (padding rows -1: they meet zero weights)."""
    b, t, d = v.shape
    padded = F.pad(v, (0, 0, w, w), value=-1.0).contiguous()
    s0, s1, s2 = padded.stride()
    return padded.as_strided((b, t // w, 3 * w, d), (s0, w * s1, s1, s2))


class SlidingWindowNet(nn.Module):
    """One banded self-attention layer with a residual, summed over tokens, a linear head."""

    def __init__(self, w: int = W) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w = w
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.head = nn.Linear(D, 3, bias=False)
        self.detach_probs = False
        self.padded: Tensor | None = None  # (B, T) bool: tokens that attend to nothing

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        scores = _band_scores(self.q(x), self.k(x), self.w)
        if self.padded is not None:  # whole rows -inf: NaN after the softmax
            scores = scores.masked_fill(self.padded[:, :, None], float("-inf"))
        probs = F.softmax(scores, dim=-1)
        if self.padded is not None:
            probs = probs.masked_fill(self.padded[:, :, None], 0.0)
        if self.detach_probs:
            probs = probs.detach()
        chunks = _diagonalize(probs.view(b, t // self.w, self.w, 2 * self.w + 1), self.w)
        context = torch.einsum("bcwd,bcdh->bcwh", chunks, _windowed_values(self.v(x), self.w))
        out = x + self.o(context.reshape(b, t, d))
        return self.head(out.sum(dim=1))


def _dense_reference(net: SlidingWindowNet, x: Tensor) -> Tensor:
    """The same layer with full attention masked to the band: checks the chunked maths."""
    q, k, v = net.q(x), net.k(x), net.v(x)
    scores = q @ k.transpose(1, 2) / D ** 0.5
    i = torch.arange(x.shape[1])
    scores = scores.masked_fill((i[:, None] - i[None, :]).abs() > net.w, float("-inf"))
    out = x + net.o(F.softmax(scores, dim=-1) @ v)
    return net.head(out.sum(dim=1))


def test_the_chunked_band_is_banded_attention() -> None:
    net = SlidingWindowNet().double().eval()
    x = _x(B, T, D)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _dense_reference(net, x))


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded_rows"])
def test_cp_lrp_equals_gradient_x_input_with_detached_probabilities(padded: bool) -> None:
    net = SlidingWindowNet().double().eval()
    x = _x(B, T, D, seed=1)
    if padded:  # the last two tokens of sample 1 attend to nothing (LED pads so)
        net.padded = torch.zeros(B, T, dtype=torch.bool)
        net.padded[1, -2:] = True
    target = 1
    expl = relprop.explain(net, x, target, cp_lrp(epsilon=0.0), record=True)
    assert torch.isfinite(expl.relevance).all()

    net.detach_probs = True
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(leaf)[:, target].sum(), leaf)
    oracle = (leaf * grad).detach()
    torch.testing.assert_close(expl.relevance, oracle, rtol=1e-9, atol=1e-12)
    explained = expl.explained.reshape(B)
    torch.testing.assert_close(expl.relevance.sum(dim=(1, 2)), explained, rtol=1e-12,
                               atol=1e-14)
    # the softmax takes no relevance (it is a constant under CP-LRP): nothing reaches it
    softmax = [e for e in expl.conservation if e.name.endswith("softmax")]
    assert softmax and all(sum(e.relevance_in) == 0.0 for e in softmax), softmax
