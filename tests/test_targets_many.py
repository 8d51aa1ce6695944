"""Several targets per sample in one explanation: one forward pass, K backward passes.

Every map of a K-target explanation must equal the single-target explanation of that class
(float64, its own fresh forward pass, so the two are computed independently), conserve as the
single one does, and the K = 1 and plain-int cases keep their shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import relprop
from relprop import composites, rules
from relprop.targets import Logit, TokenLogit
from tests.helpers.models import efficientnet, mlp, remove_biases, resnet, vgg
from tests.helpers.snapshots import assert_unchanged, snapshot

MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "resnet": lambda: resnet(),
    "vgg-bn": lambda: vgg(batch_norm=True),
    "efficientnet": lambda: efficientnet(),
}

COMPOSITES: dict[str, Callable[[], composites.Composite]] = {
    "epsilon": lambda: composites.uniform(rules.Epsilon(1e-6)),
    "epsilon_plus_flat": composites.epsilon_plus_flat,
    "epsilon_gamma_box": lambda: composites.epsilon_gamma_box(low=-3.0, high=3.0),
    "gamma": lambda: composites.uniform(rules.Gamma(0.25)),
    "alpha2_beta1": composites.epsilon_alpha2_beta1,
    "w2": lambda: composites.Composite([(composites.first_layers(), rules.WSquare()),
                                        (composites.kind("linear", "conv", "conv_transpose",
                                                         "norm"), rules.Epsilon(0.01))]),
    "default": composites.default,
}


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(3))


def _model(name: str) -> torch.nn.Module:
    return MODELS[name]().double().eval()


@pytest.mark.parametrize("composite", sorted(COMPOSITES))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_map_equals_its_single_target_explanation(name: str, composite: str) -> None:
    model, x = _model(name), _x()
    classes = torch.tensor([[1, 4, 0], [3, 3, 7]])  # a class repeated, classes of both signs
    many = relprop.explain(model, x, classes, COMPOSITES[composite]())
    assert many.relevance.shape == (2, 3, *x.shape[1:])
    assert many.explained.shape == (2, 3)
    assert many.output.shape == (2, 10)
    for k in range(3):
        single = relprop.explain(model, x, classes[:, k], COMPOSITES[composite]())
        scale = single.relevance.abs().max()
        assert scale > 0
        torch.testing.assert_close(many.relevance[:, k], single.relevance, rtol=1e-9,
                                   atol=1e-10 * float(scale))
        torch.testing.assert_close(many.explained[:, k], single.explained)
        torch.testing.assert_close(many.relevance_sum()[:, k], single.relevance_sum())


@pytest.mark.parametrize("name", ["resnet", "vgg-bn"])
def test_every_target_conserves(name: str) -> None:
    """Bias-free ReLU net, LRP-0 everywhere: each map sums to its own logit."""
    model = remove_biases(_model(name))
    comp = composites.uniform(rules.Epsilon(0.0))
    x = _x()
    expl = relprop.explain(model, x, [[0, 5, 9, 2]], comp)
    assert expl.relevance.shape == (2, 4, 3, 32, 32)
    torch.testing.assert_close(expl.relevance_sum(), expl.explained, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(expl.explained, model(x)[:, [0, 5, 9, 2]])


def test_one_target_per_sample_keeps_the_old_shape_and_k1_adds_a_dimension() -> None:
    model, x = _model("resnet"), _x()
    plain = relprop.explain(model, x, 4)
    per_sample = relprop.explain(model, x, [4, 4])
    k1 = relprop.explain(model, x, torch.tensor([[4], [4]]))
    assert plain.relevance.shape == per_sample.relevance.shape == x.shape
    assert plain.explained.shape == (2,)
    assert k1.relevance.shape == (2, 1, *x.shape[1:]) and k1.explained.shape == (2, 1)
    torch.testing.assert_close(k1.relevance[:, 0], plain.relevance, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(per_sample.relevance, plain.relevance, rtol=1e-9, atol=1e-12)


def test_same_classes_for_every_sample_broadcast_from_one_row() -> None:
    model, x = _model("vgg-bn"), _x(3)
    row = relprop.explain(model, x, [[2, 6]])
    full = relprop.explain(model, x, Logit(torch.tensor([[2, 6]] * 3)))
    assert row.relevance.shape == (3, 2, *x.shape[1:])
    torch.testing.assert_close(row.relevance, full.relevance, rtol=1e-9, atol=1e-12)


def test_the_model_is_left_as_it_was() -> None:
    model = _model("efficientnet")
    before = snapshot(model)
    relprop.explain(model, _x(), [[1, 2, 3]], composites.epsilon_gamma_box(-3.0, 3.0))
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("target, match", [
    (torch.tensor([[1, 2], [3, 4], [5, 6]]), r"one class index per sample.*got shape \(3, 2\)"),
    (torch.zeros(2, 0, dtype=torch.long), r"K per sample"),
    (torch.tensor([[1, 99]]), "out of range"),
])
def test_bad_many_targets_are_refused(target: Any, match: str) -> None:
    with pytest.raises(relprop.InvalidInputError, match=match):
        relprop.explain(_model("resnet"), _x(), target)


def test_record_takes_one_target_at_a_time() -> None:
    with pytest.raises(relprop.InvalidInputError, match="record=True.*3 per sample"):
        relprop.explain(_model("resnet"), _x(), [[1, 2, 3]], record=True)


class _Decoder(torch.nn.Module):
    """A small causal language model: embedding, one masked self-attention head written out
    (matmul, softmax), a gated MLP, a vocabulary head; no biases."""

    def __init__(self, vocab: int = 40, dim: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim, bias=False)
        self.up = torch.nn.Linear(dim, 32, bias=False)
        self.gate = torch.nn.Linear(dim, 32, bias=False)
        self.down = torch.nn.Linear(32, dim, bias=False)
        self.head = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        n = ids.shape[1]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / 4.0
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        h = h + torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v
        h = h + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))
        return self.head(h)


@pytest.mark.parametrize("preset", [composites.attnlrp, composites.cp_lrp])
def test_k_next_tokens_of_a_decoder(preset: Callable[[], composites.Composite]) -> None:
    """The K tokens of a continuation, each at its own position, in one explanation."""
    torch.manual_seed(0)
    model = _Decoder().double().eval()
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    tokens, positions = ids[:, 5:], torch.arange(4, 8)[None]  # token t+1 predicted at t
    many = relprop.explain(model, ids, TokenLogit(tokens, positions), preset())
    assert many.relevance.shape == (2, 4, 9) and many.explained.shape == (2, 4)
    for k in range(4):
        single = relprop.explain(model, ids, TokenLogit(tokens[:, k], int(positions[0, k])),
                                 preset())
        torch.testing.assert_close(many.relevance[:, k], single.relevance, rtol=1e-9,
                                   atol=1e-12)
        torch.testing.assert_close(many.explained[:, k], single.explained)
    # causal: the token predicted at position t gets no relevance from later tokens
    assert bool((many.relevance[:, 0, 5:] == 0).all())


def test_token_logit_parts_must_agree_on_k() -> None:
    model = _Decoder().double().eval()
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    with pytest.raises(relprop.InvalidInputError, match="different numbers of targets"):
        relprop.explain(model, ids, TokenLogit(torch.tensor([[1, 2]]), torch.tensor([[1, 2, 3]])))


def test_mlp_and_one_class_per_sample_token_logit_have_no_k() -> None:
    model = mlp().double().eval()
    x = torch.randn(3, 16, dtype=torch.float64)
    expl = relprop.explain(model, x, [[0, 1, 2, 3]], composites.uniform(rules.Epsilon(0.0)))
    for k in range(4):
        torch.testing.assert_close(expl.relevance[:, k],
                                   relprop.explain(model, x, k, composites.uniform(
                                       rules.Epsilon(0.0))).relevance)
