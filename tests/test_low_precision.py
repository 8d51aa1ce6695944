"""bfloat16 and float16 models are explained in their own dtype: relevance finite, of that
dtype, its sum within a small share of the float32 explanation's relevance mass, and in
float16 the map the same as float32's up to rounding.

bfloat16 keeps 3 significant digits: the model's output already differs by 1-3 % from
float32's on these nets, and where relevance of both signs cancels (the split between a
residual block's two branches is a sum of ``value · signal`` terms of both signs) a
per-pixel map can move markedly although its total stays; bfloat16 maps are therefore only
required to agree in total and to point the same way (cosine > 0).

On a GPU the same code runs; the CPU kernels of both dtypes exist, so CI checks the rules'
arithmetic: a stabiliser of 1e-6 must not overflow float16 (``1 / 1e-6 > 65504``) nor turn a
bfloat16 denominator into float32, and αβ's ``z⁻`` must not come from ``z⁺ − z`` (two sums
of the size of ``P`` whose difference is rounding noise in 3 digits: the default composite's
map had 8x the relevance mass on a ResNet in bfloat16, and NaN in float16)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import relprop
from relprop import composites as C
from relprop import rules as R
from relprop.rules.base import stabilize
from tests.helpers import models as M

#: (largest |ΣR − ΣR_float32| as a share of Σ|R_float32|, smallest cosine with float32's map)
TOLERANCE = {torch.bfloat16: (0.05, 0.0), torch.float16: (0.01, 0.99)}
CNNS: dict[str, Callable[[], nn.Module]] = {
    "vgg_bn": lambda: M.vgg("A-tiny", batch_norm=True, num_classes=10),
    "resnet": lambda: M.resnet(num_classes=10),
    "efficientnet": lambda: M.efficientnet(num_classes=10),
    "densenet": lambda: M.densenet(num_classes=10),
}
COMPOSITES: dict[str, Callable[[], Any]] = {
    "epsilon": lambda: C.uniform(R.Epsilon(1e-6)),
    "epsilon_plus_flat": C.epsilon_plus_flat,
    "epsilon_gamma_box": lambda: C.epsilon_gamma_box(-3.0, 3.0),
    "default": C.default,  # α2β1 on the convolutions (γ on EfficientNet's)
}


def _compare(full: relprop.Explanation, low: relprop.Explanation, dtype: torch.dtype,
             relevance: Callable[[relprop.Explanation], torch.Tensor]) -> None:
    assert low.relevance.dtype == dtype
    assert bool(torch.isfinite(low.relevance).all())
    reference, ours = relevance(full).double().flatten(1), relevance(low).double().flatten(1)
    share, cosine = TOLERANCE[dtype]
    mass = reference.abs().sum(dim=1)
    assert bool(((ours.sum(dim=1) - reference.sum(dim=1)).abs() <= share * mass).all())
    assert float(nn.functional.cosine_similarity(ours, reference).min()) >= cosine


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("composite", sorted(COMPOSITES))
@pytest.mark.parametrize("net", sorted(CNNS))
def test_cnn_explained_in_its_own_dtype(net: str, composite: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = M.randomize_batchnorm(CNNS[net]()).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([1, 2])
    full = relprop.explain(model, x, target, COMPOSITES[composite]())
    low = relprop.explain(copy.deepcopy(model).to(dtype), x.to(dtype), target,
                          COMPOSITES[composite]())
    _compare(full, low, dtype, lambda e: e.relevance)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp"])
def test_pretrained_minilm_explained_in_its_own_dtype(composite: str, dtype: torch.dtype
                                                      ) -> None:
    from relprop_bench.minilm import load_minilm

    embedder, tokenizer = load_minilm()  # fails, not skips, without the test model
    encoded = tokenizer(["A man is playing a guitar.", "The stock market fell sharply."],
                        padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    rule = getattr(C, composite)

    def run(model: nn.Module) -> relprop.Explanation:
        return relprop.explain(model, ids, torch.tensor([5, 7]), rule(),
                               forward_kwargs={"attention_mask": mask})

    def per_token(e: relprop.Explanation) -> torch.Tensor:
        extra = [v for v in e.sources.values() if v.shape == ids.shape]
        return e.relevance.double() + sum(v.double() for v in extra)

    full = run(embedder)
    low = run(copy.deepcopy(embedder).to(dtype))
    _compare(full, low, dtype, per_token)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_stabiliser_keeps_the_dtype_and_the_epsilon_factor_stays_finite(dtype: torch.dtype
                                                                        ) -> None:
    from relprop.rules.base import epsilon_ratio as _epsilon_factor

    z = torch.tensor([-2.0, 0.0, 1e-3, 3.0], dtype=dtype)
    assert stabilize(z, 1e-6).dtype == dtype
    factor = _epsilon_factor(z, 1e-6)
    assert factor.dtype == dtype and bool(torch.isfinite(factor).all())
    expected = z.double().abs() / (z.double().abs() + 1e-6)
    torch.testing.assert_close(factor.double(), expected, rtol=1e-2, atol=1e-3)
