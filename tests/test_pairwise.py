"""BiLRP and product neurons against closed forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import relprop
from relprop import composites as C
from relprop import rules as R
from relprop.pairwise import bilrp, embedding_relevance, sum_channels
from tests.helpers import models as M

LRP0 = C.uniform(R.Zero())


def test_linear_embedding_matches_the_closed_form() -> None:
    torch.manual_seed(0)
    w = torch.randn(5, 7, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(7, 5, bias=False)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(w)
    x, y = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    expl = bilrp(model, x, y, LRP0, chunk=2)
    expected = torch.einsum("mi,ni,mj,nj->nij", w, x, w, y)
    torch.testing.assert_close(expl.relevance, expected)
    torch.testing.assert_close(expl.relevance_sum(), expl.similarity)


def test_product_neurons_follow_the_overview_rule() -> None:
    torch.manual_seed(1)
    f = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU()).double().eval()
    g = nn.Sequential(nn.Linear(3, 6, bias=False), nn.ReLU()).double().eval()
    x, y = torch.rand(2, 4, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64)
    expl = bilrp(f, x, y, LRP0, model2=g)
    w, v = f[0].weight.T, g[0].weight.T  # (inputs, neurons)
    zx, zy = x @ w, y @ v
    a = torch.relu(zx) * torch.relu(zy)  # product neurons
    # R_ij = sum_k x_i y_j w_ik v_jk / (sum_ij x_i y_j w_ik v_jk) a_k, sum_ij(...) = zx_k zy_k
    share = torch.where(a > 0, a / (zx * zy), torch.zeros_like(a))
    expected = torch.einsum("ni,nj,ik,jk,nk->nij", x, y, w, v, share)
    torch.testing.assert_close(expl.relevance, expected)
    torch.testing.assert_close(expl.relevance_sum(), a.sum(1))


def test_conv_embedding_conserves_and_batches() -> None:
    torch.manual_seed(2)
    net = M.remove_biases(M.vgg(num_classes=6)).double()
    x1 = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    x2 = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expl = bilrp(net, x1, x2, LRP0, pool=sum_channels, chunk=4)
    assert expl.relevance.shape == (2, 32 * 32, 32 * 32)
    torch.testing.assert_close(expl.relevance_sum(), expl.similarity, rtol=1e-8, atol=1e-10)
    single = bilrp(net, x1[1:], x2[1:], LRP0, pool=sum_channels, chunk=6)
    torch.testing.assert_close(single.relevance[0], expl.relevance[1])


def test_embedding_relevance_rows_explain_each_dimension() -> None:
    torch.manual_seed(3)
    net = M.mlp().double()
    x = torch.randn(3, 16, dtype=torch.float64)
    rel, emb = embedding_relevance(net, x, LRP0, chunk=3)
    for m in range(emb.shape[1]):
        one = relprop.explain(net, x, target=m, composite=LRP0).relevance
        torch.testing.assert_close(rel[:, m], one)


def test_bad_pairs_are_refused() -> None:
    net = M.mlp()
    with pytest.raises(relprop.InvalidInputError, match="same number of pairs"):
        bilrp(net, torch.randn(2, 16), torch.randn(3, 16))
    other = nn.Sequential(nn.Linear(16, 3)).eval()
    with pytest.raises(relprop.InvalidInputError, match="dimensions"):
        bilrp(net, torch.randn(2, 16), torch.randn(2, 16), model2=other)
