"""relprop.methods on token ids and with forward_kwargs: the embeddings of the ids are
explained, one relevance per token, keyword arguments follow the batched copies."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import relprop
from relprop import methods

OTHERS = sorted(name for name in methods.METHODS if name != "lrp")
OPTIONS: dict[str, dict[str, Any]] = {
    "smoothgrad": {"samples": 5, "batch_size": 4},  # chunks that cut through samples
    "integrated_gradients": {"steps": 7, "batch_size": 4},
    "occlusion": {"window": (1,), "stride": (1,), "batch_size": 4},
}


class MaskedTokens(nn.Module):
    """Word + learned position embeddings, a mixing layer, a masked mean, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(30, 6)
        self.positions = nn.Embedding(8, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.words(ids) + self.positions(torch.arange(ids.shape[1]))
        h = torch.tanh(self.mix(h)) * attention_mask.unsqueeze(-1)
        return self.head(h.sum(1) / attention_mask.sum(1, keepdim=True))


def _setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = MaskedTokens().double().eval()
    ids = torch.randint(0, 30, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return model, ids, mask


def _on_embeddings(model: MaskedTokens, mask: torch.Tensor) -> Any:
    """f(e) for embeddings e (batch, sequence, dims), written out by hand."""
    def f(e: torch.Tensor) -> torch.Tensor:
        h = e + model.positions.weight[: e.shape[1]]
        h = torch.tanh(model.mix(h)) * mask.unsqueeze(-1)
        return model.head(h.sum(1) / mask.sum(1, keepdim=True))
    return f


@pytest.mark.filterwarnings("ignore:.*applies no ReLU")  # guided backprop on a tanh model
@pytest.mark.parametrize("name", OTHERS)
def test_batched_result_is_each_sample_alone(name: str) -> None:
    """Per-sample masks must follow the copies of batched methods: the batch's relevance is
    each sample's relevance when explained alone; masked tokens get exactly 0."""
    model, ids, mask = _setup()
    method = methods.get_method(name)
    options = OPTIONS.get(name, {})
    batch = method(model, ids, 1, forward_kwargs={"attention_mask": mask}, **options)
    assert batch.relevance.shape == ids.shape
    assert torch.all(batch.relevance[mask == 0] == 0)
    if name == "random_baseline":
        return
    for n in range(3):
        alone = method(model, ids[n:n + 1], 1,
                       forward_kwargs={"attention_mask": mask[n:n + 1]}, **options)
        torch.testing.assert_close(batch.relevance[n:n + 1], alone.relevance)
    torch.testing.assert_close(batch.explained,
                               model(ids, mask)[:, 1].detach())


def test_gradient_x_input_on_ids_is_that_of_the_embeddings() -> None:
    model, ids, mask = _setup()
    expl = methods.gradient_x_input(model, ids, 2, forward_kwargs={"attention_mask": mask})
    e = model.words(ids).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_on_embeddings(model, mask)(e)[:, 2].sum(), e)
    torch.testing.assert_close(expl.relevance, (e * grad).sum(-1).detach() * mask)


def test_occlusion_of_one_token_zeroes_its_embedding() -> None:
    model, ids, mask = _setup()
    expl = methods.occlusion(model, ids, 0, forward_kwargs={"attention_mask": mask},
                             window=(1,), stride=(1,))
    f = _on_embeddings(model, mask)
    e = model.words(ids).detach()
    expected = torch.zeros(ids.shape, dtype=torch.float64)
    for t in range(ids.shape[1]):
        occluded = e.clone()
        occluded[:, t] = 0.0
        expected[:, t] = (f(e)[:, 0] - f(occluded)[:, 0]).detach()
    torch.testing.assert_close(expl.relevance, expected * mask)


def test_integrated_gradients_on_ids_is_nearly_complete() -> None:
    """Σ_t R_t ≈ f(e) − f(0) with many steps (the baseline is the zero embedding)."""
    model, ids, mask = _setup()
    expl = methods.integrated_gradients(model, ids, 1, forward_kwargs={"attention_mask": mask},
                                        steps=64)
    f = _on_embeddings(model, mask)
    e = model.words(ids).detach()
    gap = (f(e)[:, 1] - f(torch.zeros_like(e))[:, 1]).detach()
    torch.testing.assert_close(expl.relevance.sum(1), gap, rtol=1e-4, atol=1e-6)


def test_float_input_with_forward_kwargs() -> None:
    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return x * scale.unsqueeze(1)

    x = torch.randn(4, 3, dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    expl = methods.smoothgrad(Scaled().eval(), x, 2, forward_kwargs={"scale": scale},
                              samples=3, noise=0.0, batch_size=5)
    torch.testing.assert_close(expl.relevance[:, 2], scale)
    assert torch.all(expl.relevance[:, :2] == 0)


def test_lrp_takes_forward_kwargs() -> None:
    model, ids, mask = _setup()
    via_methods = methods.lrp(model, ids, 1, forward_kwargs={"attention_mask": mask})
    direct = relprop.explain(model, ids, 1, forward_kwargs={"attention_mask": mask})
    torch.testing.assert_close(via_methods.relevance, direct.relevance)


def test_no_embedding_module_is_a_clear_error_and_the_model_is_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 2)).double().eval()
    with pytest.raises(relprop.InvalidInputError, match="no nn.Embedding"):
        methods.gradient(model, torch.ones(2, 4, dtype=torch.long), 0)
    token_model, ids, mask = _setup()
    methods.smoothgrad(token_model, ids, 1, forward_kwargs={"attention_mask": mask},
                       samples=2)
    assert not any(m._forward_hooks for m in token_model.modules())
    assert not token_model.training and token_model.words.weight.grad is None


def test_hugging_face_bert_on_ids_with_padding() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval().double()
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    expl = methods.gradient_x_input(model, ids, 1, forward_kwargs={"attention_mask": mask})
    e = model.bert.embeddings.word_embeddings(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=e, attention_mask=mask).logits
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), e)
    torch.testing.assert_close(expl.relevance, (e * grad).sum(-1).detach() * mask)
    ig = methods.integrated_gradients(model, ids, 1, forward_kwargs={"attention_mask": mask},
                                      steps=4, batch_size=3)
    assert ig.relevance.shape == ids.shape and torch.all(ig.relevance[1, 4:] == 0)
